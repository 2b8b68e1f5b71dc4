//! callout(9) (FreeBSD 15.0 `sys/sys/callout.h`, `sys/sys/_callout.h`,
//! sys/kern/kern_timeout.c): the one-shot timers behind the emulated physical timer
//! (FreeBSD vmm's vtimer arms a callout for the guest's CNTP compare value).
//!
//! `struct callout` is 64 bytes on LP64 in the layouts read (`c_links` 16, `c_time`,
//! `c_precision`, `c_arg`, `c_func`, `c_lock` 8 each, `c_flags`/`c_iflags` 2 each,
//! `c_cpu` 4). It is private to the kernel; [`CalloutStorage`] reserves twice that,
//! zeroed and 8-aligned, so a layout change that grows it stays inside the storage.

use super::types::Sbintime;
use core::ffi::{c_int, c_void};

/// `C_DIRECT_EXEC`: run the handler from the timer interrupt, not the softclock thread.
pub const C_DIRECT_EXEC: c_int = 0x0001;
/// `C_ABSOLUTE`: `sbt` is an absolute `sbinuptime()` value.
pub const C_ABSOLUTE: c_int = 0x0200;
/// `CS_DRAIN` (`_callout_stop_safe` flag): wait for a running handler to finish.
pub const CS_DRAIN: c_int = 0x0001;
/// The `cpu` argument meaning "the CPU the callout last ran on" is `-1`
/// (`callout_reset_sbt(c, ...)` = `callout_reset_sbt_on(c, ..., -1, flags)`).
pub const CALLOUT_ANY_CPU: c_int = -1;

/// Bytes reserved for a `struct callout`.
pub const CALLOUT_STORAGE: usize = 128;

/// Zeroed, aligned room for one `struct callout` (pass `as_ptr()` to the functions).
#[repr(C, align(8))]
pub struct CalloutStorage(pub core::cell::UnsafeCell<[u8; CALLOUT_STORAGE]>);

impl CalloutStorage {
    pub const fn new() -> Self {
        CalloutStorage(core::cell::UnsafeCell::new([0; CALLOUT_STORAGE]))
    }
    pub fn as_ptr(&self) -> *mut Callout {
        self.0.get().cast()
    }
}

impl Default for CalloutStorage {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: the storage is only handed to the kernel's callout code, which serialises
// access with the callout's own lock.
unsafe impl Sync for CalloutStorage {}

/// Opaque `struct callout`.
#[repr(C)]
pub struct Callout {
    _private: [u8; 0],
}

/// `callout_func_t`: `void (*)(void *)`.
pub type CalloutFunc = unsafe extern "C" fn(*mut c_void);

extern "C" {
    /// `void callout_init(struct callout *c, int mpsafe)`: `mpsafe` non-zero runs the
    /// handler without Giant.
    pub fn callout_init(c: *mut Callout, mpsafe: c_int);
    /// `int callout_reset_sbt_on(struct callout *c, sbintime_t sbt, sbintime_t prec,
    /// void (*func)(void *), void *arg, int cpu, int flags)`: (re)arms `c` to call
    /// `func(arg)` after `sbt` (or at `sbt` with `C_ABSOLUTE`).
    pub fn callout_reset_sbt_on(
        c: *mut Callout,
        sbt: Sbintime,
        prec: Sbintime,
        func: Option<CalloutFunc>,
        arg: *mut c_void,
        cpu: c_int,
        flags: c_int,
    ) -> c_int;
    /// `int _callout_stop_safe(struct callout *c, int flags, ...)`: `callout_stop(c)`
    /// passes flags 0, `callout_drain(c)` passes `CS_DRAIN`. Older kernels take a third
    /// `void (*drain)(void *)` argument; passing NULL for it is correct on both (an
    /// extra integer-class argument is ignored by the AAPCS64 callee).
    pub fn _callout_stop_safe(c: *mut Callout, flags: c_int, drain: *const c_void) -> c_int;
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    // Twice the 64-byte LP64 `struct callout` read in sys/sys/_callout.h.
    const _: () = assert!(CALLOUT_STORAGE >= 128);

    #[test]
    fn storage_covers_the_callout() {
        assert_eq!(size_of::<CalloutStorage>(), CALLOUT_STORAGE);
        assert_eq!(align_of::<CalloutStorage>(), 8);
        let s = CalloutStorage::new();
        // SAFETY: `s` is a live local; nothing else holds it.
        assert!(unsafe { &*s.0.get() }.iter().all(|&b| b == 0));
    }
}
