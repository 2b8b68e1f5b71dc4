//! The module itself: the event handler (load/unload), the character devices
//! /dev/vmmctl and /dev/vmm/NAME, and the legacy hw.vmm.create / hw.vmm.destroy
//! sysctls, all calling the portable core ([`vmm_core::Vmm`]) with a [`FreeBsdHost`].
//!
//! Load (`MOD_LOAD`, Giant held, after `SI_SUB_SMP`):
//! 1. refuse a kernel running at EL2 (VHE: not supported yet), a kernel without the
//!    hyp stub (`has_hyp()`), a CPU without the GICv3 system-register interface, and
//!    a `struct pcpu` whose `pc_cpuid` cannot be located;
//! 2. register the malloc type, initialise the sleep interlock;
//! 3. copy the EL2 blob into contiguous memory, clean it to the point of coherency,
//!    map it identity read-only + executable in fresh EL2 tables;
//! 4. `Vmm::new`: per-CPU EL2 stacks and, through `smp_rendezvous`, the two stub
//!    calls on every CPU;
//! 5. create /dev/vmmctl and the sysctls.
//!
//! Unload (`MOD_UNLOAD`): `EBUSY` while a VM exists; otherwise remove the entry
//! points (sysctls, /dev/vmmctl: `destroy_dev` waits for threads inside), restore the
//! stub on every CPU (`Vmm::shutdown` → `HYP_CLEANUP`) and free everything.
//! A failed load is followed by `MOD_UNLOAD` from the kernel; it finds nothing to do.

use super::cdev::{
    self, Cdev, Cdevsw, CdevswCell, MakeDevArgs, Thread, GID_WHEEL, MAKEDEV_CHECKNAME,
    MAKEDEV_WAITOK, PROT_EXEC, PROT_READ, PROT_WRITE, UID_ROOT,
};
use super::host::{self, FreeBsdHost, SgRef, SxMutex, EL2_MAIR_WB, M_VMM, SLEEP_MTX};
use super::machdep::{self, current_el, pfr0_gic};
use super::malloc::M_WAITOK;
use super::maps::{collect_chunks, Live};
use super::module::{MOD_LOAD, MOD_QUIESCE, MOD_SHUTDOWN, MOD_UNLOAD};
use super::sysctl::{self, SysctlCtxList, SysctlOid, SysctlReq};
use super::types::{Intmax, VmOoffset, VmSize};
use super::vm::VmObject;
use super::{kern, malloc, priv_, smp, vm as kvm};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::ffi::{c_char, c_int, c_ulong, c_void};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use vmm_arm64::{cache, mrs, IdRegs};
use vmm_core::el2pt::attrs_code;
use vmm_core::errno::{Errno, KResult};
use vmm_core::host::{Host, PhysMem, PAGE_SIZE};
use vmm_core::req::{self, CtlOp};
use vmm_core::sync::Mutex;
use vmm_core::{DeviceRef, El2Regime, InitParams, Vmm};
use vmm_sys::ioctl::iocparm_len;
use vmm_sys::VM_MAX_NAMELEN;

/// `EOPNOTSUPP` (`sys/sys/errno.h`): the answer to events the handler does not know.
const EOPNOTSUPP: c_int = 45;

/// A /dev/vmm/NAME node and the name its `si_drv1` points at.
struct VmDev {
    /// Boxed so `si_drv1` (a thin pointer, hence not a `Box<[u8]>`) stays valid while
    /// the list grows.
    #[allow(clippy::box_collection)]
    name: Box<Vec<u8>>,
    cdev: *mut Cdev,
}

/// Everything the module owns while loaded.
struct Glue {
    vmm: Vmm<FreeBsdHost>,
    /// The EL2 blob's contiguous copy.
    /// The EL2 blob's copy (nVHE hosts; none on VHE).
    blob: Option<PhysMem>,
    /// The per-VM nodes. Creation and destruction of VMs happen under this lock, so the
    /// list and the core's registry agree, and unload can refuse atomically.
    devs: Mutex<SxMutex, Vec<VmDev>>,
    unloading: AtomicBool,
    ctl: AtomicPtr<Cdev>,
    /// The sysctl context (its TAILQ head points at itself: the `Glue` is boxed).
    sysctl: UnsafeCell<SysctlCtxList>,
    /// The host's virtual-timer PPI was set up at load (`enable_vtimer_ppi`).
    vtimer_ppi: bool,
}

// SAFETY: the raw pointers name kernel objects (cdevs) that are used from any thread;
// the sysctl context is only touched by load/unload, which the kernel serialises.
unsafe impl Sync for Glue {}
// SAFETY: as above.
unsafe impl Send for Glue {}

/// The loaded module, or NULL.
static GLUE: AtomicPtr<Glue> = AtomicPtr::new(core::ptr::null_mut());

fn glue() -> Option<&'static Glue> {
    let p = GLUE.load(Ordering::Acquire);
    // SAFETY: a non-NULL GLUE points at the live Glue; unload clears it only after
    // every entry point (device, sysctl) is gone, before freeing it.
    unsafe { p.as_ref() }
}

static CTL_SW: CdevswCell = CdevswCell::new(Cdevsw {
    d_open: Some(vmm_open),
    d_ioctl: Some(vmmctl_ioctl),
    ..Cdevsw::new(c"vmmctl")
});

static VM_SW: CdevswCell = CdevswCell::new(Cdevsw {
    d_open: Some(vmm_open),
    d_ioctl: Some(vmmdev_ioctl),
    d_mmap_single: Some(vmmdev_mmap_single),
    ..Cdevsw::new(c"vmmdev")
});

/// Most physical chunks one mmap may cover: `struct sglist` counts its segments in a
/// `u_short` (`sg_maxseg`).
const MAX_SG_CHUNKS: usize = u16::MAX as usize;

fn errno(r: KResult<()>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => e.0,
    }
}

/// `d_open`: root only (`PRIV_DRIVER`), in addition to the 0600 root:wheel mode.
unsafe extern "C" fn vmm_open(
    _dev: *mut Cdev,
    _oflags: c_int,
    _devtype: c_int,
    td: *mut Thread,
) -> c_int {
    // SAFETY: `td` is the opening thread, as the kernel passes it.
    unsafe { priv_::priv_check(td, priv_::PRIV_DRIVER) }
}

/// The ioctl argument the kernel copied in: `IOCPARM_LEN(cmd)` bytes at `data`.
///
/// # Safety
/// `data` must be what the kernel passed to `d_ioctl` for `cmd`.
unsafe fn ioctl_arg<'a>(cmd: c_ulong, data: *mut c_void) -> KResult<&'a mut [u8]> {
    let len = iocparm_len(cmd);
    if len == 0 {
        return Ok(&mut []);
    }
    if data.is_null() {
        return Err(Errno::EINVAL);
    }
    // SAFETY: the generic ioctl code allocated IOCPARM_LEN(cmd) bytes at `data` for
    // this call and owns them until we return.
    Ok(unsafe { core::slice::from_raw_parts_mut(data.cast::<u8>(), len) })
}

unsafe extern "C" fn vmmctl_ioctl(
    _dev: *mut Cdev,
    cmd: c_ulong,
    data: *mut c_void,
    fflag: c_int,
    _td: *mut Thread,
) -> c_int {
    let Some(g) = glue() else {
        return Errno::ENXIO.0;
    };
    // SAFETY: the kernel's arguments for this call.
    let arg = match unsafe { ioctl_arg(cmd, data) } {
        Ok(a) => a,
        Err(e) => return e.0,
    };
    let r = match req::ctl_op(cmd, fflag) {
        Err(e) => Err(e),
        Ok(CtlOp::Create) => req::ctl_name(arg).and_then(|n| g.create(n)),
        Ok(CtlOp::Destroy) => req::ctl_name(arg).and_then(|n| g.destroy(n)),
        Ok(CtlOp::Other) => g.vmm.dispatch(DeviceRef::Ctl, cmd, arg),
    };
    errno(r)
}

/// The VM name a /dev/vmm/NAME node stands for.
///
/// # Safety
/// `dev` must be a node of `VM_SW` (its `si_drv1` is a `VmDev` name).
unsafe fn dev_name<'a>(dev: *mut Cdev) -> Option<&'a [u8]> {
    // SAFETY: the caller guarantees `dev` is one of our VM nodes, whose si_drv1 is
    // the boxed name; destroy_dev waits for every method to return before the box is
    // freed.
    unsafe {
        let n = (*dev).si_drv1.cast::<Vec<u8>>();
        n.as_ref().map(|v| v.as_slice())
    }
}

unsafe extern "C" fn vmmdev_ioctl(
    dev: *mut Cdev,
    cmd: c_ulong,
    data: *mut c_void,
    _fflag: c_int,
    _td: *mut Thread,
) -> c_int {
    let Some(g) = glue() else {
        return Errno::ENXIO.0;
    };
    // SAFETY: the kernel calls this only for nodes of VM_SW.
    let Some(name) = (unsafe { dev_name(dev) }) else {
        return Errno::ENXIO.0;
    };
    // SAFETY: the kernel's arguments for this call.
    let arg = match unsafe { ioctl_arg(cmd, data) } {
        Ok(a) => a,
        Err(e) => return e.0,
    };
    errno(g.vmm.dispatch(DeviceRef::Vm(name), cmd, arg))
}

/// `d_mmap_single`: mmap of /dev/vmm/NAME at offset = guest physical address. The
/// answer is a new `OBJT_SG` object over the physical chunks behind the range, with the
/// offset rewritten to 0 (the object starts at the requested address). The glue keeps a
/// reference on the object's list, so the host can tell when the last mapping is gone
/// (see [`super::maps`]).
unsafe extern "C" fn vmmdev_mmap_single(
    dev: *mut Cdev,
    offset: *mut VmOoffset,
    size: VmSize,
    object: *mut *mut VmObject,
    nprot: c_int,
) -> c_int {
    // Guest memory is never mapped executable in the host (FreeBSD's vmmdev_mmap_single
    // answers EINVAL as well).
    if nprot & PROT_EXEC != 0 {
        return Errno::EINVAL.0;
    }
    let Some(g) = glue() else {
        return Errno::ENXIO.0;
    };
    // SAFETY: the kernel calls this only for nodes of VM_SW.
    let Some(name) = (unsafe { dev_name(dev) }) else {
        return Errno::ENXIO.0;
    };
    // SAFETY: `offset` is the mmap code's in/out parameter.
    let Ok(gpa) = u64::try_from(unsafe { offset.read() }) else {
        return Errno::EINVAL.0;
    };
    match map_guest(g, name, gpa, size, nprot) {
        Ok(obj) => {
            // SAFETY: the kernel's out parameters; the object carries one reference,
            // which the mmap code takes over.
            unsafe {
                offset.write(0);
                object.write(obj);
            }
            0
        }
        Err(e) => e.0,
    }
}

/// Builds the `OBJT_SG` object for guest range `[gpa, gpa + size)` of VM `name`.
fn map_guest(
    g: &Glue,
    name: &[u8],
    gpa: u64,
    size: VmSize,
    nprot: c_int,
) -> KResult<*mut VmObject> {
    let lookup = |x: u64| g.vmm.gpa_to_pa(name, x).map(|(pa, _, n)| (pa, n));
    let chunks = collect_chunks(gpa, size, MAX_SG_CHUNKS, lookup)?;
    let n = c_int::try_from(chunks.len()).map_err(|_| Errno::EINVAL)?;
    let mut ranges = Vec::new();
    ranges
        .try_reserve_exact(chunks.len())
        .map_err(|_| Errno::ENOMEM)?;
    for &(pa, len) in &chunks {
        ranges.push((pa, pa.saturating_add(len)));
    }
    let size_off = VmOoffset::try_from(size).map_err(|_| Errno::EINVAL)?;
    // SAFETY: allocation of an empty list; M_WAITOK is fine in mmap's thread context.
    let sg = NonNull::new(unsafe { kvm::sglist_alloc(n, M_WAITOK) }).ok_or(Errno::ENOMEM)?;
    for &(pa, len) in &chunks {
        let Ok(len) = usize::try_from(len) else {
            // SAFETY: dropping the only reference to the list just made.
            unsafe { kvm::sglist_free(sg.as_ptr()) };
            return Err(Errno::EINVAL);
        };
        // SAFETY: our list, sized for every chunk.
        if unsafe { kvm::sglist_append_phys(sg.as_ptr(), pa, len) } != 0 {
            // SAFETY: as above.
            unsafe { kvm::sglist_free(sg.as_ptr()) };
            return Err(Errno::EINVAL);
        }
    }
    let prot = (nprot & (PROT_READ | PROT_WRITE)) as u8;
    // SAFETY: a fully built list; the new object takes its own reference on it.
    let obj = unsafe {
        kvm::vm_pager_allocate(
            kvm::OBJT_SG,
            sg.as_ptr().cast(),
            size_off,
            prot,
            0,
            core::ptr::null_mut(),
        )
    };
    if obj.is_null() {
        // SAFETY: the pager took no reference; ours is the last.
        unsafe { kvm::sglist_free(sg.as_ptr()) };
        return Err(Errno::EINVAL);
    }
    // From here the host may hold memory of these ranges back on free.
    g.vmm
        .host()
        .add_map(Live {
            sg: SgRef(sg),
            ranges,
        })
        .inspect_err(|_| {
            // SAFETY: the object is ours alone (not returned yet).
            unsafe { kvm::vm_object_deallocate(obj) };
        })?;
    // Memory freed between the lookup and add_map was not held back: look again, and
    // give up if the range no longer maps to the same chunks.
    if collect_chunks(gpa, size, MAX_SG_CHUNKS, lookup)
        .ok()
        .as_ref()
        != Some(&chunks)
    {
        // SAFETY: as above; the registry entry is reaped once the object is gone.
        unsafe { kvm::vm_object_deallocate(obj) };
        return Err(Errno::EINVAL);
    }
    Ok(obj)
}

/// The shared body of the create/destroy sysctls.
///
/// # Safety
/// The kernel's sysctl handler arguments.
unsafe fn sysctl_name_op(
    oidp: *mut SysctlOid,
    req: *mut SysctlReq,
    op: fn(&Glue, &[u8]) -> KResult<()>,
) -> c_int {
    let mut buf = [0u8; VM_MAX_NAMELEN + 1];
    // SAFETY: `buf` is ours for the call; the length is its size (a small constant).
    let e = unsafe {
        sysctl::sysctl_handle_string(oidp, buf.as_mut_ptr().cast(), buf.len() as Intmax, req)
    };
    // SAFETY: `req` is the kernel's request for this call.
    if e != 0 || unsafe { (*req).newptr.is_null() } {
        return e;
    }
    // SAFETY: as above; `td` is the requesting thread.
    let p = unsafe { priv_::priv_check((*req).td, priv_::PRIV_DRIVER) };
    if p != 0 {
        return p;
    }
    let Some(g) = glue() else {
        return Errno::ENXIO.0;
    };
    errno(req::sysctl_name(&buf).and_then(|n| op(g, n)))
}

unsafe extern "C" fn sysctl_create(
    oidp: *mut SysctlOid,
    _arg1: *mut c_void,
    _arg2: Intmax,
    req: *mut SysctlReq,
) -> c_int {
    // SAFETY: forwarding the kernel's arguments.
    unsafe { sysctl_name_op(oidp, req, Glue::create) }
}

unsafe extern "C" fn sysctl_destroy(
    oidp: *mut SysctlOid,
    _arg1: *mut c_void,
    _arg2: Intmax,
    req: *mut SysctlReq,
) -> c_int {
    // SAFETY: forwarding the kernel's arguments.
    unsafe { sysctl_name_op(oidp, req, Glue::destroy) }
}

/// `make_dev_s` for `/dev/<fmt % name>` on `sw` with `si_drv1 = drv1`, 0600 root:wheel.
fn make_dev(
    sw: &CdevswCell,
    fmt: &core::ffi::CStr,
    name: &[u8],
    drv1: *mut c_void,
) -> KResult<*mut Cdev> {
    // A NUL-terminated copy of the name for the "%s".
    let mut cname = [0u8; VM_MAX_NAMELEN + 1];
    let dst = cname.get_mut(..name.len()).ok_or(Errno::EINVAL)?;
    dst.copy_from_slice(name);
    let mut args = core::mem::MaybeUninit::<MakeDevArgs>::zeroed();
    let mut dev: *mut Cdev = core::ptr::null_mut();
    // SAFETY: make_dev_args_init_impl fills the structure we pass with its size;
    // make_dev_s then reads it, the format and the NUL-terminated name.
    let e = unsafe {
        cdev::make_dev_args_init_impl(args.as_mut_ptr(), core::mem::size_of::<MakeDevArgs>());
        let a = args.as_mut_ptr();
        (*a).mda_flags = MAKEDEV_WAITOK | MAKEDEV_CHECKNAME;
        (*a).mda_devsw = sw.get();
        (*a).mda_uid = UID_ROOT;
        (*a).mda_gid = GID_WHEEL;
        (*a).mda_mode = 0o600;
        (*a).mda_si_drv1 = drv1;
        cdev::make_dev_s(a, &mut dev, fmt.as_ptr(), cname.as_ptr().cast::<c_char>())
    };
    if e != 0 {
        return Err(Errno(e));
    }
    if dev.is_null() {
        return Err(Errno::ENXIO);
    }
    Ok(dev)
}

impl Glue {
    /// Creates VM `name` and its node /dev/vmm/NAME.
    fn create(&self, name: &[u8]) -> KResult<()> {
        let mut devs = self.devs.lock();
        if self.unloading.load(Ordering::SeqCst) {
            return Err(Errno::ENXIO);
        }
        devs.try_reserve(1).map_err(|_| Errno::ENOMEM)?;
        let mut owned = Box::new(Vec::new());
        owned
            .try_reserve_exact(name.len())
            .map_err(|_| Errno::ENOMEM)?;
        owned.extend_from_slice(name);
        self.vmm.create_vm(name)?;
        let drv1 = core::ptr::addr_of_mut!(*owned).cast::<c_void>();
        match make_dev(&VM_SW, c"vmm/%s", name, drv1) {
            Ok(cdev) => {
                devs.push(VmDev { name: owned, cdev });
                Ok(())
            }
            Err(e) => {
                let _ = self.vmm.destroy_vm(name);
                Err(e)
            }
        }
    }

    /// Destroys VM `name` (suspending it and waiting for its requests) and its node.
    fn destroy(&self, name: &[u8]) -> KResult<()> {
        let mut devs = self.devs.lock();
        self.vmm.destroy_vm(name)?;
        if let Some(i) = devs.iter().position(|d| d.name.as_slice() == name) {
            let d = devs.swap_remove(i);
            // SAFETY: our node, created by make_dev; called from another device's
            // method or a sysctl, never from one of this node's own methods.
            unsafe { cdev::destroy_dev(d.cdev) };
            drop(d.name);
        }
        Ok(())
    }
}

/// The module event handler's body; `blob` is the EL2 code the module embeds.
///
/// # Safety
/// Called by the kernel's module code only (Giant held, events serialised).
pub unsafe fn modevent(what: c_int, blob: &'static [u8]) -> c_int {
    match what {
        MOD_LOAD => match load(blob) {
            Ok(()) => 0,
            Err(e) => e.0,
        },
        MOD_UNLOAD => match unload() {
            Ok(()) => 0,
            Err(e) => e.0,
        },
        MOD_QUIESCE => match glue() {
            Some(g) if g.vmm.vm_count() != 0 || g.vmm.host().maps_busy() => Errno::EBUSY.0,
            _ => 0,
        },
        MOD_SHUTDOWN => 0,
        _ => EOPNOTSUPP,
    }
}

/// Refuses hosts vmm.ko cannot run on, with one line each on the console. Returns
/// the offset of `pc_cpuid` and whether the kernel runs at EL2 with HCR_EL2.E2H (a
/// VHE host, as FreeBSD 15 on every CPU with VHE; FreeBSD's `in_vhe()`).
fn check_host() -> KResult<(usize, bool)> {
    let vhe = current_el(mrs!("CurrentEL")) == 2;
    if vhe && mrs!("hcr_el2") & vmm_sys::arm64::regs::hcr::E2H == 0 {
        host::log(format_args!(
            "vmm: the kernel runs at EL2 without HCR_EL2.E2H; not supported"
        ));
        return Err(Errno::ENXIO);
    }
    // SAFETY: a query of boot state, no arguments.
    if !vhe && !unsafe { machdep::has_hyp() } {
        host::log(format_args!(
            "vmm: the kernel was not entered at EL2: no hypervisor mode to use"
        ));
        return Err(Errno::ENXIO);
    }
    if pfr0_gic(mrs!("id_aa64pfr0_el1")) == 0 {
        host::log(format_args!(
            "vmm: no usable GICv3: the CPU lacks the GIC system-register interface"
        ));
        return Err(Errno::ENXIO);
    }
    let cpuid_offset = smp::discover_cpuid_offset().ok_or_else(|| {
        host::log(format_args!(
            "vmm: cannot locate pc_cpuid in this kernel's struct pcpu"
        ));
        Errno::ENXIO
    })?;
    Ok((cpuid_offset, vhe))
}

/// `blob` rounded up to whole pages.
fn blob_len(blob: &[u8]) -> KResult<usize> {
    let pages = blob.len().div_ceil(PAGE_SIZE);
    pages
        .checked_mul(PAGE_SIZE)
        .filter(|&l| l != 0)
        .ok_or(Errno::EINVAL)
}

fn load(blob: &'static [u8]) -> KResult<()> {
    if glue().is_some() {
        return Err(Errno::EEXIST);
    }
    let (cpuid_offset, vhe) = check_host()?;
    // SAFETY: M_DEVBUF is a live kernel type; M_VMM is not registered yet.
    unsafe {
        M_VMM.version_from(core::ptr::addr_of!(malloc::M_DEVBUF));
        malloc::malloc_init(M_VMM.as_ptr().cast());
        SLEEP_MTX.init(c"vmm sleep");
    }
    let r = if vhe {
        load_core_vhe(cpuid_offset)
    } else {
        load_core(blob, cpuid_offset)
    };
    if r.is_err() {
        // SAFETY: nothing allocated with M_VMM or using the lock is left (load_core
        // freed all of it on failure).
        unsafe {
            SLEEP_MTX.destroy();
            malloc::malloc_uninit(M_VMM.as_ptr().cast());
        }
    }
    r
}

/// On a VHE kernel: nothing to copy or map; the core calls the switch directly.
fn load_core_vhe(cpuid_offset: usize) -> KResult<()> {
    let host = FreeBsdHost::new(cpuid_offset, true)?;
    let params = InitParams {
        regime: El2Regime::Vhe,
        id_regs: IdRegs::read(),
        max_guest_mem: default_max_guest_mem(),
    };
    let vmm = match Vmm::new(host, params) {
        Ok(v) => v,
        Err((host, e)) => {
            host::log(format_args!("vmm: bring-up on the VHE kernel failed ({e})"));
            host.free_el2_tables();
            return Err(e);
        }
    };
    publish(vmm, None)
}

fn load_core(blob: &'static [u8], cpuid_offset: usize) -> KResult<()> {
    let host = FreeBsdHost::new(cpuid_offset, false)?;
    let len = blob_len(blob)?;
    let code = match host.alloc_contig(len, PAGE_SIZE) {
        Ok(m) => m,
        Err(e) => {
            host.free_el2_tables();
            return Err(e);
        }
    };
    // SAFETY: `code` is fresh memory of `len >= blob.len()` bytes.
    unsafe { core::ptr::copy_nonoverlapping(blob.as_ptr(), code.va.as_ptr(), blob.len()) };
    // EL2 fetches it with its MMU (and caches) configured differently: clean it out.
    // SAFETY: `code` is our mapped allocation of `len` bytes.
    unsafe { cache::sync_for_guest(code.va.as_ptr() as usize, len) };
    let fail = |host: FreeBsdHost, e: Errno| {
        host.free_contig(code);
        host.free_el2_tables();
        Err(e)
    };
    if let Err(e) = host.map_el2_attrs(code.pa, len, attrs_code(EL2_MAIR_WB)) {
        return fail(host, e);
    }
    let stub_va = core::ptr::addr_of!(machdep::hyp_stub_vectors) as u64;
    // SAFETY: a lookup in the kernel page tables.
    let stub_pa = unsafe { kvm::pmap_kextract(stub_va) };
    if stub_pa == 0 {
        return fail(host, Errno::ENXIO);
    }
    let params = InitParams {
        regime: El2Regime::Nvhe {
            hyp_init_vectors_pa: code.pa,
            hyp_stub_vectors_pa: stub_pa,
            el2_ttbr0: host.el2_ttbr0(),
        },
        id_regs: IdRegs::read(),
        max_guest_mem: default_max_guest_mem(),
    };
    let vmm = match Vmm::new(host, params) {
        Ok(v) => v,
        Err((host, e)) => {
            host::log(format_args!("vmm: EL2 bring-up failed ({e})"));
            return fail(host, e);
        }
    };
    vmm.host().set_el2_live(true);
    publish(vmm, Some(code))
}

/// Makes the loaded core reachable: the virtual-timer interrupt hook, the Glue, the
/// device nodes and sysctls. On failure everything is taken down again.
fn publish(vmm: Vmm<FreeBsdHost>, blob: Option<PhysMem>) -> KResult<()> {
    // A guest's virtual timer must exit it when it fires (docs/vgic.md); failure
    // only delays guests' timers to the next host tick (logged).
    let vtimer_ppi = vmm.host().enable_vtimer_ppi();
    let g = Box::new(Glue {
        vtimer_ppi,
        vmm,
        blob,
        devs: Mutex::new(Vec::new()),
        unloading: AtomicBool::new(false),
        ctl: AtomicPtr::new(core::ptr::null_mut()),
        sysctl: UnsafeCell::new(SysctlCtxList {
            tqh_first: core::ptr::null_mut(),
            tqh_last: core::ptr::null_mut(),
        }),
    });
    let g = Box::into_raw(g);
    GLUE.store(g, Ordering::Release);
    // SAFETY: `g` is the Glue just published; only load/unload free it.
    let gr = unsafe { &*g };
    if let Err(e) = add_entry_points(gr) {
        // Takes everything down again; load() then unregisters the malloc type.
        let _ = unload_entry_points_and_core();
        return Err(e);
    }
    host::log(format_args!(
        "vmm: EL2 code installed on {} CPUs",
        gr.vmm.host().cpu_count()
    ));
    Ok(())
}

/// `hw.vmm.maxmem`'s value at load, from the kernel's `physmem`.
fn default_max_guest_mem() -> u64 {
    // SAFETY: `physmem` is set once at boot, long before a module loads.
    let pages = unsafe { kern::physmem };
    kern::default_max_guest_mem(u64::try_from(pages).unwrap_or(0))
}

fn add_entry_points(g: &Glue) -> KResult<()> {
    let ctx = g.sysctl.get();
    // SAFETY: the context lives in the boxed Glue (fixed address) until unload frees
    // it with sysctl_ctx_free; the names and descriptions are static strings.
    unsafe {
        sysctl::sysctl_ctx_init(ctx);
        let node = sysctl::sysctl_add_oid(
            ctx,
            core::ptr::addr_of_mut!(sysctl::sysctl___hw).cast(),
            sysctl::OID_AUTO,
            c"vmm".as_ptr(),
            (sysctl::CTLTYPE_NODE | sysctl::CTLFLAG_RW | sysctl::CTLFLAG_MPSAFE) as c_int,
            core::ptr::null_mut(),
            0,
            None,
            c"N".as_ptr(),
            c"vmm(4)".as_ptr(),
            core::ptr::null(),
        );
        if node.is_null() {
            return Err(Errno::EEXIST);
        }
        let kind = (sysctl::CTLTYPE_STRING
            | sysctl::CTLFLAG_RW
            | sysctl::CTLFLAG_PRISON
            | sysctl::CTLFLAG_MPSAFE) as c_int;
        for (name, handler, descr) in [
            (
                c"create",
                sysctl_create as sysctl::SysctlHandler,
                c"Create a vmm(4) instance (legacy interface)",
            ),
            (
                c"destroy",
                sysctl_destroy as sysctl::SysctlHandler,
                c"Destroy a vmm(4) instance (legacy interface)",
            ),
        ] {
            let oid = sysctl::sysctl_add_oid(
                ctx,
                sysctl::children(node),
                sysctl::OID_AUTO,
                name.as_ptr(),
                kind,
                core::ptr::null_mut(),
                0,
                Some(handler),
                c"A".as_ptr(),
                descr.as_ptr(),
                core::ptr::null(),
            );
            if oid.is_null() {
                return Err(Errno::ENOMEM);
            }
        }
        let maxmem = sysctl::sysctl_add_oid(
            ctx,
            sysctl::children(node),
            sysctl::OID_AUTO,
            c"maxmem".as_ptr(),
            (sysctl::CTLTYPE_U64 | sysctl::CTLFLAG_RW | sysctl::CTLFLAG_MPSAFE) as c_int,
            core::ptr::null_mut(),
            0,
            Some(sysctl_maxmem),
            c"QU".as_ptr(),
            c"Most guest memory over all VMs, in bytes".as_ptr(),
            core::ptr::null(),
        );
        if maxmem.is_null() {
            return Err(Errno::ENOMEM);
        }
    }
    let ctl = make_dev(&CTL_SW, c"%s", b"vmmctl", core::ptr::null_mut())?;
    g.ctl.store(ctl, Ordering::Release);
    Ok(())
}

/// `hw.vmm.maxmem`: reads the limit on guest memory; a privileged write changes it.
unsafe extern "C" fn sysctl_maxmem(
    oidp: *mut SysctlOid,
    _arg1: *mut c_void,
    _arg2: Intmax,
    req: *mut SysctlReq,
) -> c_int {
    let Some(g) = glue() else {
        return Errno::ENXIO.0;
    };
    let mut v: u64 = g.vmm.guest_mem().1;
    // SAFETY: `v` is ours for the call; the kernel's request is forwarded.
    let e = unsafe { sysctl::sysctl_handle_64(oidp, (&mut v as *mut u64).cast(), 0, req) };
    // SAFETY: `req` is the kernel's request for this call.
    if e != 0 || unsafe { (*req).newptr.is_null() } {
        return e;
    }
    // SAFETY: as above; `td` is the requesting thread.
    let p = unsafe { priv_::priv_check((*req).td, priv_::PRIV_DRIVER) };
    if p != 0 {
        return p;
    }
    g.vmm.set_max_guest_mem(v);
    0
}

fn unload() -> KResult<()> {
    if glue().is_none() {
        return Ok(());
    }
    unload_entry_points_and_core()?;
    // SAFETY: nothing allocated with M_VMM is left and no thread can use the lock.
    unsafe {
        SLEEP_MTX.destroy();
        malloc::malloc_uninit(M_VMM.as_ptr().cast());
    }
    host::log(format_args!("vmm: unloaded"));
    Ok(())
}

/// Everything of unload but the malloc type and the sleep lock.
fn unload_entry_points_and_core() -> KResult<()> {
    let p = GLUE.load(Ordering::Acquire);
    // SAFETY: as in `glue()`.
    let Some(g) = (unsafe { p.as_ref() }) else {
        return Ok(());
    };
    {
        let devs = g.devs.lock();
        if !devs.is_empty() || g.vmm.vm_count() != 0 {
            return Err(Errno::EBUSY);
        }
        if g.vmm.host().maps_busy() {
            host::log(format_args!(
                "vmm: guest memory of a destroyed VM is still mapped by a process"
            ));
            return Err(Errno::EBUSY);
        }
        g.unloading.store(true, Ordering::SeqCst);
    }
    // The context is all-NULL until add_entry_points initialised it; only an
    // initialised context is freed.
    let ctx = g.sysctl.get();
    // SAFETY: reading our own context head.
    if !unsafe { (*ctx).tqh_last }.is_null() {
        // SAFETY: the context is initialised and ours.
        let e = unsafe { sysctl::sysctl_ctx_free(ctx) };
        if e != 0 {
            g.unloading.store(false, Ordering::SeqCst);
            return Err(Errno(e));
        }
    }
    let ctl = g.ctl.swap(core::ptr::null_mut(), Ordering::AcqRel);
    if !ctl.is_null() {
        // SAFETY: our node; destroy_dev waits for threads inside its methods.
        unsafe { cdev::destroy_dev(ctl) };
    }
    // No entry point is left: nobody can reach the Glue any more.
    GLUE.store(core::ptr::null_mut(), Ordering::Release);
    // SAFETY: `p` came from Box::into_raw in load_core and is unreachable now.
    let g = unsafe { Box::from_raw(p) };
    let Glue {
        vmm,
        blob,
        devs,
        vtimer_ppi,
        ..
    } = *g;
    drop(devs);
    if vtimer_ppi {
        vmm.host().disable_vtimer_ppi();
    }
    // After HYP_CLEANUP the stub would take any further hvc as a new vector table:
    // no EL2 TLB maintenance calls from here on (the EL2 MMU goes off anyway, and
    // the next load's init does `tlbi alle2`).
    vmm.host().set_el2_live(false);
    let r = vmm.shutdown();
    let host = match vmm.into_host() {
        Ok(h) => h,
        Err(_still_up) => {
            // shutdown refused (cannot happen: no VM exists and no entry point is
            // left); leaking is the only safe choice with EL2 code still installed.
            host::log(format_args!("vmm: EL2 shutdown failed ({r:?}); leaking"));
            core::mem::forget(_still_up);
            return Err(Errno::EBUSY);
        }
    };
    if let Some(blob) = blob {
        host.free_contig(blob);
    }
    host.free_el2_tables();
    Ok(())
}
