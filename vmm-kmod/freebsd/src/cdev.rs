//! Character devices: `struct cdevsw`, `struct make_dev_args`, `make_dev_s(9)`,
//! `destroy_dev(9)` and the prefix of `struct cdev` that drivers read
//! (FreeBSD 15.0 `sys/sys/conf.h`).
//!
//! vmm creates `/dev/vmmctl` (VM creation) and one `/dev/vmm/NAME` per VM, each with
//! `si_drv1` pointing at its softc (sys/dev/vmm/vmm_dev.c). Guest memory reaches
//! bhyve through `d_mmap_single`, which returns a referenced VM object and rewrites the
//! offset into it.

use super::types::{Gid, Mode, Uid, VmMemattr, VmOoffset, VmPaddr, VmSize};
use super::vm::VmObject;
use core::ffi::{c_char, c_int, c_long, c_uint, c_ulong, c_void};

/// `D_VERSION` = `D_VERSION_04` (`0x5c48c353`, "SPECNAMELEN bumped to MAXNAMLEN"): the
/// only value a FreeBSD 13+ kernel accepts in `d_version`.
pub const D_VERSION: c_int = 0x5c48_c353;
/// `D_TRACKCLOSE`: call `d_close` on every close, not only the last.
pub const D_TRACKCLOSE: c_uint = 0x0008_0000;
/// `D_MMAP_ANON`: special treatment in vm_mmap.c.
pub const D_MMAP_ANON: c_uint = 0x0010_0000;
/// `D_NEEDGIANT`: the driver wants Giant (vmm does not).
pub const D_NEEDGIANT: c_uint = 0x0040_0000;

/// `MAKEDEV_*` flags for `make_dev_args.mda_flags` / `make_dev_p`.
pub const MAKEDEV_REF: c_int = 0x01;
pub const MAKEDEV_WHTOUT: c_int = 0x02;
pub const MAKEDEV_NOWAIT: c_int = 0x04;
pub const MAKEDEV_WAITOK: c_int = 0x08;
pub const MAKEDEV_ETERNAL: c_int = 0x10;
pub const MAKEDEV_CHECKNAME: c_int = 0x20;

/// `UID_ROOT`, `GID_WHEEL` (`sys/sys/conf.h`).
pub const UID_ROOT: Uid = 0;
pub const GID_WHEEL: Gid = 0;
/// `GID_VMM` (978): the group FreeBSD 15 adds for unprivileged vmm access.
pub const GID_VMM: Gid = 978;

/// `FREAD` / `FWRITE` (`sys/sys/fcntl.h`): the `oflags`/`fflag` bits of `d_open` and
/// `d_ioctl`. `/dev/vmmctl` refuses opens without `FWRITE`.
pub const FREAD: c_int = 0x0001;
pub const FWRITE: c_int = 0x0002;

/// `PROT_READ` / `PROT_WRITE` / `PROT_EXEC` (`sys/sys/mman.h`): `nprot` of
/// `d_mmap_single`. vmm refuses `PROT_EXEC` mappings of guest memory.
pub const PROT_READ: c_int = 0x01;
pub const PROT_WRITE: c_int = 0x02;
pub const PROT_EXEC: c_int = 0x04;

/// Opaque `struct thread`.
#[repr(C)]
pub struct Thread {
    _private: [u8; 0],
}
/// Opaque `struct ucred`.
#[repr(C)]
pub struct Ucred {
    _private: [u8; 0],
}
/// Opaque `struct uio`.
#[repr(C)]
pub struct Uio {
    _private: [u8; 0],
}

/// `struct timespec` on LP64 (`sys/sys/_timespec.h`): `time_t` and `long`.
#[repr(C)]
pub struct Timespec {
    pub tv_sec: i64,
    pub tv_nsec: c_long,
}

/// Two-pointer `LIST_ENTRY` / `LIST_HEAD`-sized slots (`sys/sys/queue.h`).
#[repr(C)]
pub struct ListEntry {
    pub le_next: *mut c_void,
    pub le_prev: *mut *mut c_void,
}

/// `SPECNAMELEN` (`sys/sys/param.h`, 13.0 and later: `MAXNAMLEN`, 255).
pub const SPECNAMELEN: usize = 255;

/// `struct cdev` (`sys/sys/conf.h`, FreeBSD 15.0). Drivers never allocate it (devfs
/// does); vmm only reads `si_drv1`. The whole layout is given so that the offset of
/// `si_drv1` (168) is checked against every field before it.
#[repr(C)]
pub struct Cdev {
    pub si_spare0: *mut c_void,
    pub si_flags: c_uint,
    pub si_atime: Timespec,
    pub si_ctime: Timespec,
    pub si_mtime: Timespec,
    pub si_uid: Uid,
    pub si_gid: Gid,
    pub si_mode: Mode,
    pub si_cred: *mut Ucred,
    pub si_drv0: c_int,
    pub si_refcount: c_int,
    pub si_list: ListEntry,
    pub si_clone: ListEntry,
    /// `LIST_HEAD(, cdev) si_children`: one pointer.
    pub si_children: *mut Cdev,
    pub si_siblings: ListEntry,
    pub si_parent: *mut Cdev,
    pub si_mountpt: *mut c_void,
    pub si_drv1: *mut c_void,
    pub si_drv2: *mut c_void,
    pub si_devsw: *mut Cdevsw,
    pub si_iosize_max: c_int,
    pub si_usecount: c_ulong,
    pub si_threadcount: c_ulong,
    /// `union { struct snapdata *__sid_snapdata; } __si_u`.
    pub si_snapdata: *mut c_void,
    pub si_name: [c_char; SPECNAMELEN + 1],
}

/// `d_open_t` / `d_close_t`: `int (struct cdev *, int oflags|fflag, int devtype, struct thread *)`.
pub type DOpen = unsafe extern "C" fn(*mut Cdev, c_int, c_int, *mut Thread) -> c_int;
pub type DClose = DOpen;
/// `d_fdopen_t`: `int (struct cdev *, int, struct thread *, struct file *)`.
pub type DFdopen = unsafe extern "C" fn(*mut Cdev, c_int, *mut Thread, *mut c_void) -> c_int;
/// `d_read_t` / `d_write_t`: `int (struct cdev *, struct uio *, int ioflag)`.
pub type DRw = unsafe extern "C" fn(*mut Cdev, *mut Uio, c_int) -> c_int;
/// `d_ioctl_t`: `int (struct cdev *, u_long cmd, caddr_t data, int fflag, struct thread *)`.
/// `data` is the kernel copy of the ioctl argument (`IOCPARM_LEN(cmd)` bytes, copied in
/// and out by the generic ioctl code according to the `IOC_IN`/`IOC_OUT` bits).
pub type DIoctl =
    unsafe extern "C" fn(*mut Cdev, c_ulong, *mut c_void, c_int, *mut Thread) -> c_int;
/// `d_poll_t`: `int (struct cdev *, int events, struct thread *)`.
pub type DPoll = unsafe extern "C" fn(*mut Cdev, c_int, *mut Thread) -> c_int;
/// `d_mmap_t`: `int (struct cdev *, vm_ooffset_t, vm_paddr_t *, int nprot, vm_memattr_t *)`.
pub type DMmap =
    unsafe extern "C" fn(*mut Cdev, VmOoffset, *mut VmPaddr, c_int, *mut VmMemattr) -> c_int;
/// `d_strategy_t`: `void (struct bio *)`.
pub type DStrategy = unsafe extern "C" fn(*mut c_void);
/// `d_kqfilter_t`: `int (struct cdev *, struct knote *)`.
pub type DKqfilter = unsafe extern "C" fn(*mut Cdev, *mut c_void) -> c_int;
/// `d_purge_t`: `void (struct cdev *)`.
pub type DPurge = unsafe extern "C" fn(*mut Cdev);
/// `d_mmap_single_t`: `int (struct cdev *, vm_ooffset_t *offset, vm_size_t size,
/// struct vm_object **object, int nprot)`. Returns 0 with a *referenced* object and
/// `*offset` rewritten into it, `ENODEV` to fall back to `d_mmap`, or an errno.
pub type DMmapSingle =
    unsafe extern "C" fn(*mut Cdev, *mut VmOoffset, VmSize, *mut *mut VmObject, c_int) -> c_int;

/// `struct cdevsw` (`sys/sys/conf.h`, FreeBSD 15.0, `D_VERSION_04`).
///
/// Fields after `d_spare2` belong to the kernel ("should not be messed with by
/// drivers"): a static `cdevsw` leaves them zeroed and the kernel initialises them on
/// first `make_dev` (`prep_cdevsw`), so the static must be writable (use a
/// [`CdevswCell`]).
#[repr(C)]
pub struct Cdevsw {
    pub d_version: c_int,
    pub d_flags: c_uint,
    pub d_name: *const c_char,
    pub d_open: Option<DOpen>,
    pub d_fdopen: Option<DFdopen>,
    pub d_close: Option<DClose>,
    pub d_read: Option<DRw>,
    pub d_write: Option<DRw>,
    pub d_ioctl: Option<DIoctl>,
    pub d_poll: Option<DPoll>,
    pub d_mmap: Option<DMmap>,
    pub d_strategy: Option<DStrategy>,
    pub d_spare0: *mut c_void,
    pub d_kqfilter: Option<DKqfilter>,
    pub d_purge: Option<DPurge>,
    pub d_mmap_single: Option<DMmapSingle>,
    pub d_spare1: [i32; 3],
    pub d_spare2: [*mut c_void; 3],
    /// `LIST_HEAD(, cdev) d_devs`: kernel-owned.
    pub d_devs: *mut Cdev,
    pub d_spare3: c_int,
    /// `union { struct cdevsw *gianttrick; SLIST_ENTRY(cdevsw) postfree_list; }`.
    pub d_giant: *mut c_void,
}

impl Cdevsw {
    /// A switch with `d_version = D_VERSION`, the given name and no methods; fill the
    /// methods with struct update syntax.
    pub const fn new(name: &'static core::ffi::CStr) -> Self {
        Cdevsw {
            d_version: D_VERSION,
            d_flags: 0,
            d_name: name.as_ptr(),
            d_open: None,
            d_fdopen: None,
            d_close: None,
            d_read: None,
            d_write: None,
            d_ioctl: None,
            d_poll: None,
            d_mmap: None,
            d_strategy: None,
            d_spare0: core::ptr::null_mut(),
            d_kqfilter: None,
            d_purge: None,
            d_mmap_single: None,
            d_spare1: [0; 3],
            d_spare2: [core::ptr::null_mut(); 3],
            d_devs: core::ptr::null_mut(),
            d_spare3: 0,
            d_giant: core::ptr::null_mut(),
        }
    }
}

/// A [`Cdevsw`] the kernel may write (it does, in `prep_cdevsw` and `destroy_dev`).
#[repr(transparent)]
pub struct CdevswCell(pub core::cell::UnsafeCell<Cdevsw>);

impl CdevswCell {
    pub const fn new(sw: Cdevsw) -> Self {
        CdevswCell(core::cell::UnsafeCell::new(sw))
    }
    pub fn get(&self) -> *mut Cdevsw {
        self.0.get()
    }
}

// SAFETY: after construction only the kernel writes the switch, under its devmtx.
unsafe impl Sync for CdevswCell {}

/// `struct make_dev_args` (`sys/sys/conf.h`). Initialise with
/// `make_dev_args_init_impl(&args, size_of::<MakeDevArgs>())` (what the
/// `make_dev_args_init` macro expands to), then fill the fields.
#[repr(C)]
pub struct MakeDevArgs {
    pub mda_size: usize,
    pub mda_flags: c_int,
    pub mda_devsw: *mut Cdevsw,
    pub mda_cr: *mut Ucred,
    pub mda_uid: Uid,
    pub mda_gid: Gid,
    pub mda_mode: c_int,
    pub mda_unit: c_int,
    pub mda_si_drv1: *mut c_void,
    pub mda_si_drv2: *mut c_void,
}

extern "C" {
    /// `void make_dev_args_init_impl(struct make_dev_args *, size_t)` (kern_conf.c):
    /// zeroes the structure and records its size.
    pub fn make_dev_args_init_impl(args: *mut MakeDevArgs, sz: usize);
    /// `int make_dev_s(struct make_dev_args *, struct cdev **, const char *fmt, ...)`:
    /// creates the node `/dev/<fmt...>`. With `MAKEDEV_CHECKNAME` a bad or duplicate
    /// name returns an errno instead of panicking.
    pub fn make_dev_s(
        args: *mut MakeDevArgs,
        cdev: *mut *mut Cdev,
        fmt: *const c_char,
        ...
    ) -> c_int;
    /// `void destroy_dev(struct cdev *)`: removes the node and waits until no thread is
    /// inside one of its methods. Must not be called from one of its own methods.
    pub fn destroy_dev(dev: *mut Cdev);
    /// `int destroy_dev_sched(struct cdev *)`: destroys from a taskqueue (usable from
    /// the device's own methods).
    pub fn destroy_dev_sched(dev: *mut Cdev) -> c_int;
    /// `void destroy_dev_drain(struct cdevsw *)`: waits for scheduled destroys of nodes
    /// of this switch; call before unload frees the switch.
    pub fn destroy_dev_drain(csw: *mut Cdevsw);
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn cdevsw_layout_matches_freebsd_15() {
        assert_eq!(offset_of!(Cdevsw, d_flags), 4);
        assert_eq!(offset_of!(Cdevsw, d_name), 8);
        assert_eq!(offset_of!(Cdevsw, d_open), 16);
        assert_eq!(offset_of!(Cdevsw, d_fdopen), 24);
        assert_eq!(offset_of!(Cdevsw, d_close), 32);
        assert_eq!(offset_of!(Cdevsw, d_read), 40);
        assert_eq!(offset_of!(Cdevsw, d_write), 48);
        assert_eq!(offset_of!(Cdevsw, d_ioctl), 56);
        assert_eq!(offset_of!(Cdevsw, d_poll), 64);
        assert_eq!(offset_of!(Cdevsw, d_mmap), 72);
        assert_eq!(offset_of!(Cdevsw, d_strategy), 80);
        assert_eq!(offset_of!(Cdevsw, d_spare0), 88);
        assert_eq!(offset_of!(Cdevsw, d_kqfilter), 96);
        assert_eq!(offset_of!(Cdevsw, d_purge), 104);
        assert_eq!(offset_of!(Cdevsw, d_mmap_single), 112);
        assert_eq!(offset_of!(Cdevsw, d_spare1), 120);
        assert_eq!(offset_of!(Cdevsw, d_spare2), 136);
        assert_eq!(offset_of!(Cdevsw, d_devs), 160);
        assert_eq!(offset_of!(Cdevsw, d_spare3), 168);
        assert_eq!(offset_of!(Cdevsw, d_giant), 176);
        assert_eq!(size_of::<Cdevsw>(), 184);
    }

    #[test]
    fn cdev_layout_puts_si_drv1_at_168() {
        assert_eq!(offset_of!(Cdev, si_flags), 8);
        assert_eq!(offset_of!(Cdev, si_atime), 16);
        assert_eq!(offset_of!(Cdev, si_uid), 64);
        assert_eq!(offset_of!(Cdev, si_mode), 72);
        assert_eq!(offset_of!(Cdev, si_cred), 80);
        assert_eq!(offset_of!(Cdev, si_drv0), 88);
        assert_eq!(offset_of!(Cdev, si_list), 96);
        assert_eq!(offset_of!(Cdev, si_children), 128);
        assert_eq!(offset_of!(Cdev, si_parent), 152);
        assert_eq!(offset_of!(Cdev, si_drv1), 168);
        assert_eq!(offset_of!(Cdev, si_drv2), 176);
        assert_eq!(offset_of!(Cdev, si_devsw), 184);
        assert_eq!(offset_of!(Cdev, si_usecount), 200);
        assert_eq!(offset_of!(Cdev, si_name), 224);
        assert_eq!(size_of::<Cdev>(), 480);
    }

    #[test]
    fn make_dev_args_layout() {
        assert_eq!(offset_of!(MakeDevArgs, mda_flags), 8);
        assert_eq!(offset_of!(MakeDevArgs, mda_devsw), 16);
        assert_eq!(offset_of!(MakeDevArgs, mda_cr), 24);
        assert_eq!(offset_of!(MakeDevArgs, mda_uid), 32);
        assert_eq!(offset_of!(MakeDevArgs, mda_gid), 36);
        assert_eq!(offset_of!(MakeDevArgs, mda_mode), 40);
        assert_eq!(offset_of!(MakeDevArgs, mda_unit), 44);
        assert_eq!(offset_of!(MakeDevArgs, mda_si_drv1), 48);
        assert_eq!(offset_of!(MakeDevArgs, mda_si_drv2), 56);
        assert_eq!(size_of::<MakeDevArgs>(), 64);
    }

    #[test]
    fn new_switch_carries_the_version_and_nothing_else() {
        let sw = Cdevsw::new(c"vmmctl");
        assert_eq!(sw.d_version, D_VERSION);
        assert_eq!(sw.d_flags, 0);
        assert!(sw.d_open.is_none() && sw.d_ioctl.is_none() && sw.d_mmap_single.is_none());
        assert!(sw.d_devs.is_null() && sw.d_giant.is_null());
    }
}
