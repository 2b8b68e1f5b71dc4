//! priv(9) (FreeBSD 15.0 `sys/sys/priv.h`, sys/kern/kern_priv.c).
//!
//! FreeBSD 15's vmm controls access with device node permissions (0600 root:wheel) and,
//! in jails, the `allow.vmm` permission; `priv_check(td, PRIV_DRIVER)` is the classic
//! "root only" check a driver makes in `d_open`/`d_ioctl` or a sysctl handler
//! (`req->td`).

use super::cdev::Thread;
use core::ffi::c_int;

/// `PRIV_DRIVER` (`sys/sys/priv.h`): low-level driver privilege.
pub const PRIV_DRIVER: c_int = 14;

extern "C" {
    /// `int priv_check(struct thread *td, int priv)`: 0 when `td` holds `priv`, else
    /// `EPERM`.
    pub fn priv_check(td: *mut Thread, priv_: c_int) -> c_int;
}
