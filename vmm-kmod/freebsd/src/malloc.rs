//! malloc(9) (FreeBSD 15.0 `sys/sys/malloc.h`, sys/kern/kern_malloc.c).
//!
//! `MALLOC_DEFINE(M_VMM, "vmm", "vmm")` emits a `struct malloc_type` plus a SYSINIT
//! calling `malloc_init(type)` and a SYSUNINIT calling `malloc_uninit(type)`. A module
//! can do the same by hand: call [`malloc_init`] at `MOD_LOAD` before the first
//! `malloc`, and [`malloc_uninit`] at `MOD_UNLOAD` after the last `free`.
//!
//! `malloc_init` panics unless `ks_version` equals the kernel's `M_VERSION`, and the
//! private part after `ks_shortdesc` (`struct malloc_type_internal ks_mti`) changed size
//! and version across releases. [`MallocType`] therefore reserves more room than any
//! known layout needs, and [`MallocType::version_from`] copies the version of a type the
//! kernel itself defined (`M_DEVBUF`), which is right for whatever kernel loads us.

use core::cell::UnsafeCell;
use core::ffi::{c_char, c_int, c_ulong, c_void};

/// `M_NOWAIT`: fail instead of sleeping.
pub const M_NOWAIT: c_int = 0x0001;
/// `M_WAITOK`: sleep until memory is available (never returns NULL).
pub const M_WAITOK: c_int = 0x0002;
/// `M_ZERO`: zero the allocation.
pub const M_ZERO: c_int = 0x0100;
/// `M_NODUMP`: leave the pages out of kernel dumps.
pub const M_NODUMP: c_int = 0x0800;

/// `M_VERSION` of FreeBSD 13.0 through at least 14 (`2020110501`). Kept for
/// documentation and tests; at run time use [`MallocType::version_from`].
pub const M_VERSION_2020110501: c_ulong = 2_020_110_501;

/// The public head of `struct malloc_type` (`sys/sys/malloc.h`): these three fields
/// have had the same place since FreeBSD 5 (`ks_version` was `ks_magic` before 13).
#[repr(C)]
pub struct MallocTypeHead {
    pub ks_next: *mut MallocTypeHead,
    pub ks_version: c_ulong,
    pub ks_shortdesc: *const c_char,
}

/// Bytes reserved for `struct malloc_type_internal ks_mti` (88 bytes on FreeBSD 13-14
/// LP64: `mti_probes[2]`, `mti_zone`, `mti_stats`, `mti_spare[8]`). The kernel only
/// writes what its own layout has; the rest stays zero.
pub const MTI_RESERVED: usize = 232;

/// A module-owned `struct malloc_type`: head plus a zeroed private area, 256 bytes.
#[repr(C)]
pub struct MallocTypeStorage {
    pub head: MallocTypeHead,
    pub ks_mti: [u64; MTI_RESERVED / 8],
}

/// A [`MallocTypeStorage`] in writable memory, usable as a `static` (the kernel links
/// it into its list of types and updates its statistics).
#[repr(transparent)]
pub struct MallocType(pub UnsafeCell<MallocTypeStorage>);

// SAFETY: after construction only the kernel's malloc code touches the record, under
// its own lock and per-CPU rules; Rust code only passes its address.
unsafe impl Sync for MallocType {}

impl MallocType {
    /// A type named `shortdesc`, with version 0: set the version with
    /// [`MallocType::version_from`] before [`malloc_init`].
    pub const fn new(shortdesc: &'static core::ffi::CStr) -> Self {
        MallocType(UnsafeCell::new(MallocTypeStorage {
            head: MallocTypeHead {
                ks_next: core::ptr::null_mut(),
                ks_version: 0,
                ks_shortdesc: shortdesc.as_ptr(),
            },
            ks_mti: [0; MTI_RESERVED / 8],
        }))
    }

    /// The pointer malloc(9) takes.
    pub fn as_ptr(&self) -> *mut MallocTypeHead {
        self.0.get().cast()
    }

    /// Copies `ks_version` from `kernel_type`, a type the running kernel defined.
    ///
    /// # Safety
    /// `kernel_type` must point at a live `struct malloc_type`; `self` must not have
    /// been passed to `malloc_init` yet (nothing else may be using it).
    pub unsafe fn version_from(&self, kernel_type: *const MallocTypeHead) {
        // SAFETY: the caller guarantees both pointers are valid and `self` unshared.
        unsafe {
            let v = core::ptr::addr_of!((*kernel_type).ks_version).read();
            (*self.0.get()).head.ks_version = v;
        }
    }
}

extern "C" {
    /// `struct malloc_type M_DEVBUF[1]` (kern_malloc.c): read for its `ks_version`.
    pub static M_DEVBUF: MallocTypeHead;
    /// `void malloc_init(void *)`: registers a type; panics on a version mismatch.
    pub fn malloc_init(data: *mut c_void);
    /// `void malloc_uninit(void *)`: unregisters it (warns if memory is still out).
    pub fn malloc_uninit(data: *mut c_void);
    /// `void *malloc(size_t size, struct malloc_type *type, int flags)`.
    pub fn malloc(size: usize, type_: *mut MallocTypeHead, flags: c_int) -> *mut c_void;
    /// `void free(void *addr, struct malloc_type *type)`.
    pub fn free(addr: *mut c_void, type_: *mut MallocTypeHead);
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    // The reserve covers the 13/14 layout (24 + 88 = 112 bytes) twice over.
    const _: () = assert!(size_of::<MallocTypeStorage>() >= 2 * 112);

    #[test]
    fn malloc_type_layout() {
        assert_eq!(offset_of!(MallocTypeHead, ks_version), 8);
        assert_eq!(offset_of!(MallocTypeHead, ks_shortdesc), 16);
        assert_eq!(size_of::<MallocTypeHead>(), 24);
        assert_eq!(offset_of!(MallocTypeStorage, ks_mti), 24);
        assert_eq!(size_of::<MallocType>(), 256);
    }

    #[test]
    fn version_is_copied_from_the_kernel_type() {
        let kernel = MallocTypeHead {
            ks_next: core::ptr::null_mut(),
            ks_version: M_VERSION_2020110501,
            ks_shortdesc: c"devbuf".as_ptr(),
        };
        let mine = MallocType::new(c"vmm");
        // SAFETY: both are live locals and `mine` was never registered.
        unsafe { mine.version_from(&kernel) };
        // SAFETY: `mine` is a live local; nothing else holds it.
        let v = unsafe { (*mine.0.get()).head.ks_version };
        assert_eq!(v, M_VERSION_2020110501);
        assert_eq!(mine.as_ptr() as usize, mine.0.get() as usize);
    }

    #[test]
    fn flags() {
        assert_eq!(M_WAITOK | M_ZERO, 0x0102);
        assert_eq!(M_NOWAIT & M_WAITOK, 0);
    }
}
