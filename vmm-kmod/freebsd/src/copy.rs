//! copyin(9) / copyout(9) (FreeBSD 15.0 `sys/sys/systm.h`; arm64 implementation in
//! sys/arm64/arm64/copyinout.S). Used for the buffers pointer-carrying ioctls name, such
//! as `vm_run.vm_exit`, `vm_register_set.regnums/regvals` and `vm_cpuset.cpus`: the
//! generic ioctl code copies only the `IOCPARM_LEN` bytes of the argument itself.

use core::ffi::{c_int, c_void};

/// `EFAULT` (`sys/sys/errno.h`): what both return for a bad user address.
pub const EFAULT: c_int = 14;

extern "C" {
    /// `int copyin(const void *udaddr, void *kaddr, size_t len)`: 0 or `EFAULT`.
    pub fn copyin(udaddr: *const c_void, kaddr: *mut c_void, len: usize) -> c_int;
    /// `int copyout(const void *kaddr, void *udaddr, size_t len)`: 0 or `EFAULT`.
    pub fn copyout(kaddr: *const c_void, udaddr: *mut c_void, len: usize) -> c_int;
}
