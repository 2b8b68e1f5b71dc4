//! mtx(9) and sx(9) (FreeBSD 15.0 `sys/sys/_lock.h`, `sys/sys/_mutex.h`,
//! `sys/sys/mutex.h`, `sys/sys/_sx.h`, `sys/sys/sx.h`).
//!
//! A module is built with `KLD_MODULE`, which makes `LOCK_DEBUG` 1 (`sys/sys/lock.h`),
//! so the `mtx_lock`/`sx_xlock` macros become calls of the exported functions below
//! with a file name and line (never the inline fast paths, whose layout assumptions
//! would tie the module to one kernel configuration). The lock word is passed as
//! `&m->mtx_lock` for mutexes, the structure itself for sx.
//!
//! Both structures must stay at a fixed address once initialised (WITNESS and the
//! turnstiles keep pointers to them): allocate them with malloc(9) or in a static.

use core::ffi::{c_char, c_int, c_uint, c_void};

/// `MTX_DEF`: a sleep mutex (adaptive). `MTX_SPIN`: a spin mutex (disables interrupts).
pub const MTX_DEF: c_int = 0x0000_0000;
pub const MTX_SPIN: c_int = 0x0000_0001;
pub const MTX_RECURSE: c_int = 0x0000_0004;
pub const MTX_NOWITNESS: c_int = 0x0000_0008;
pub const MTX_NOPROFILE: c_int = 0x0000_0020;
/// `MTX_NEW`: don't check for double initialisation (zeroed memory is fine without it).
pub const MTX_NEW: c_int = 0x0000_0040;

/// `struct lock_object` (`sys/sys/_lock.h`).
#[repr(C)]
pub struct LockObject {
    pub lo_name: *const c_char,
    pub lo_flags: c_uint,
    pub lo_data: c_uint,
    pub lo_witness: *mut c_void,
}

/// `struct mtx` (`sys/sys/_mutex.h`).
#[repr(C)]
pub struct Mtx {
    pub lock_object: LockObject,
    pub mtx_lock: usize,
}

/// `struct sx` (`sys/sys/_sx.h`).
#[repr(C)]
pub struct Sx {
    pub lock_object: LockObject,
    pub sx_lock: usize,
}

extern "C" {
    /// `void _mtx_init(volatile uintptr_t *c, const char *name, const char *type,
    /// int opts)`: `mtx_init(m, name, type, opts)`.
    pub fn _mtx_init(c: *mut usize, name: *const c_char, type_: *const c_char, opts: c_int);
    /// `void _mtx_destroy(volatile uintptr_t *c)`: `mtx_destroy(m)`.
    pub fn _mtx_destroy(c: *mut usize);
    /// `void __mtx_lock_flags(volatile uintptr_t *c, int opts, const char *file, int line)`:
    /// `mtx_lock(m)` in a module.
    pub fn __mtx_lock_flags(c: *mut usize, opts: c_int, file: *const c_char, line: c_int);
    /// `void __mtx_unlock_flags(volatile uintptr_t *c, int opts, const char *file, int line)`.
    pub fn __mtx_unlock_flags(c: *mut usize, opts: c_int, file: *const c_char, line: c_int);
    /// `void __mtx_lock_spin_flags(volatile uintptr_t *c, int opts, const char *file,
    /// int line)`: `mtx_lock_spin(m)`.
    pub fn __mtx_lock_spin_flags(c: *mut usize, opts: c_int, file: *const c_char, line: c_int);
    /// `void __mtx_unlock_spin_flags(volatile uintptr_t *c, int opts, const char *file,
    /// int line)`.
    pub fn __mtx_unlock_spin_flags(c: *mut usize, opts: c_int, file: *const c_char, line: c_int);
    /// `int _mtx_trylock_flags_(volatile uintptr_t *c, int opts, const char *file,
    /// int line)`: non-zero when taken.
    pub fn _mtx_trylock_flags_(
        c: *mut usize,
        opts: c_int,
        file: *const c_char,
        line: c_int,
    ) -> c_int;

    /// `void sx_init_flags(struct sx *sx, const char *description, int opts)`.
    pub fn sx_init_flags(sx: *mut Sx, description: *const c_char, opts: c_int);
    /// `void sx_destroy(struct sx *sx)`.
    pub fn sx_destroy(sx: *mut Sx);
    /// `int _sx_xlock(struct sx *sx, int opts, const char *file, int line)`:
    /// `sx_xlock(sx)` is `(void)_sx_xlock(sx, 0, file, line)` (with `opts` 0 it cannot fail).
    pub fn _sx_xlock(sx: *mut Sx, opts: c_int, file: *const c_char, line: c_int) -> c_int;
    /// `void _sx_xunlock(struct sx *sx, const char *file, int line)`: `sx_xunlock(sx)`.
    pub fn _sx_xunlock(sx: *mut Sx, file: *const c_char, line: c_int);
    /// `int sx_try_xlock_(struct sx *sx, const char *file, int line)`: non-zero when taken.
    pub fn sx_try_xlock_(sx: *mut Sx, file: *const c_char, line: c_int) -> c_int;
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn lock_layouts() {
        assert_eq!(size_of::<LockObject>(), 24);
        assert_eq!(offset_of!(LockObject, lo_flags), 8);
        assert_eq!(offset_of!(LockObject, lo_data), 12);
        assert_eq!(offset_of!(LockObject, lo_witness), 16);
        assert_eq!(size_of::<Mtx>(), 32);
        assert_eq!(offset_of!(Mtx, mtx_lock), 24);
        assert_eq!(size_of::<Sx>(), 32);
        assert_eq!(offset_of!(Sx, sx_lock), 24);
    }
}
