//! Console output, panic, sleep and wakeup (FreeBSD 15.0 `sys/sys/systm.h`,
//! `sys/sys/mutex.h`, `sys/sys/param.h`, `sys/sys/callout.h`, `sys/sys/errno.h`).
//!
//! vmm sleeps a vCPU thread in WFI and wakes it when an interrupt is injected
//! (`vm_handle_wfi` / `vcpu_notify_event` in sys/arm64/vmm/vmm.c: `msleep_spin` on the
//! vCPU, `wakeup_one`). `mtx_sleep(chan, mtx, pri, wmesg, timo)` expands to
//! `_sleep(chan, &mtx->lock_object, pri, wmesg, tick_sbt * timo, 0, C_HARDCLOCK)`;
//! `msleep_spin(chan, mtx, wmesg, timo)` to `msleep_spin_sbt(chan, mtx, wmesg,
//! tick_sbt * timo, 0, C_HARDCLOCK)`. The functions take a relative `sbintime_t`
//! timeout (0 = none), so no `tick_sbt` is needed.

use super::lock::{LockObject, Mtx};
use super::types::Sbintime;
use core::ffi::{c_char, c_int, c_void};

/// `PCATCH` (`sys/sys/param.h`): let a signal interrupt the sleep (EINTR/ERESTART).
pub const PCATCH: c_int = 0x100;
/// `PDROP`: release the interlock and don't retake it on return.
pub const PDROP: c_int = 0x200;
/// `C_HARDCLOCK` (`sys/sys/callout.h`): round the timeout to a hardclock tick.
pub const C_HARDCLOCK: c_int = 0x0100;

/// errno values a sleep returns (`sys/sys/errno.h`): `EWOULDBLOCK` (= `EAGAIN`) on
/// timeout, `EINTR`/`ERESTART` when `PCATCH` caught a signal.
pub const EINTR: c_int = 4;
pub const EWOULDBLOCK: c_int = 35;
/// `ERESTART` (kernel-only): restart the system call after the signal is handled.
pub const ERESTART: c_int = -1;

extern "C" {
    /// `int printf(const char *fmt, ...)` (kernel printf(9)). `%.*s` with an `int`
    /// length and a pointer prints a Rust string without copying it.
    pub fn printf(fmt: *const c_char, ...) -> c_int;
    /// `void panic(const char *fmt, ...) __dead2`.
    pub fn panic(fmt: *const c_char, ...) -> !;

    /// `int _sleep(const void *chan, struct lock_object *lock, int pri,
    /// const char *wmesg, sbintime_t sbt, sbintime_t pr, int flags)`: sleeps on `chan`,
    /// atomically releasing `lock` (retaken before return unless `PDROP`).
    /// Returns 0 when woken, `EWOULDBLOCK` on timeout, `EINTR`/`ERESTART` on a signal.
    pub fn _sleep(
        chan: *const c_void,
        lock: *mut LockObject,
        pri: c_int,
        wmesg: *const c_char,
        sbt: Sbintime,
        pr: Sbintime,
        flags: c_int,
    ) -> c_int;
    /// `int msleep_spin_sbt(const void *chan, struct mtx *mtx, const char *wmesg,
    /// sbintime_t sbt, sbintime_t pr, int flags)`: as `_sleep` with a spin mutex as
    /// interlock (no `PCATCH`).
    pub fn msleep_spin_sbt(
        chan: *const c_void,
        mtx: *mut Mtx,
        wmesg: *const c_char,
        sbt: Sbintime,
        pr: Sbintime,
        flags: c_int,
    ) -> c_int;
    /// `void wakeup(const void *chan)`: wakes every thread sleeping on `chan`.
    pub fn wakeup(chan: *const c_void);
    /// `void wakeup_one(const void *chan)`: wakes the highest-priority sleeper.
    pub fn wakeup_one(chan: *const c_void);
    /// `long physmem` (sys/sys/systm.h): physical memory, in pages.
    pub static physmem: core::ffi::c_long;
    /// `int sig_intr(void)` (sys/signalvar.h, kern_sig.c, FreeBSD 13 and later): 0, or
    /// EINTR/ERESTART when a signal pending for the current thread would interrupt a
    /// sleep now.
    pub fn sig_intr() -> c_int;
    /// `int should_yield(void)` (kern_synch.c): the thread has run a full slice.
    pub fn should_yield() -> c_int;
    /// `void maybe_yield(void)` (kern_synch.c): yields the CPU if `should_yield()`.
    pub fn maybe_yield();
}

/// The default of `hw.vmm.maxmem` for `pages` pages of physical memory: all of it less
/// a reserve of an eighth, at least 512 MiB (in the spirit of `vm.max_user_wired`: a
/// guest's memory is wired, and the host must keep enough to run).
pub fn default_max_guest_mem(pages: u64) -> u64 {
    let bytes = pages.saturating_mul(4096);
    bytes.saturating_sub((bytes / 8).max(512 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_flags_do_not_overlap_the_priority() {
        // PRIMASK is 0xff: the flags live above it.
        assert_eq!(PCATCH & 0xff, 0);
        assert_eq!(PDROP & 0xff, 0);
        assert_eq!(PCATCH & PDROP, 0);
    }
}
