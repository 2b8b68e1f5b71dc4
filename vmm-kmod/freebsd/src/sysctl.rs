//! Dynamic sysctl nodes (FreeBSD 15.0 `sys/sys/sysctl.h`), for the legacy
//! `hw.vmm.create` and `hw.vmm.destroy` string sysctls and `hw.vmm.maxmem`.
//!
//! FreeBSD's own vmm declares them statically (`SYSCTL_NODE(_hw, OID_AUTO, vmm, ...)` and
//! two `SYSCTL_PROC`s in the `set_sysctl_set` linker set). We add them at `MOD_LOAD`
//! with `sysctl_add_oid` into a `sysctl_ctx_list` and remove them with
//! `sysctl_ctx_free` at `MOD_UNLOAD`: that needs no `struct sysctl_oid` layout at all
//! (the static form would have to reproduce the whole record, whose child list changed
//! from an SLIST to an RB tree between releases), only two facts that hold across them:
//! * `SYSCTL_CHILDREN(oidp)` is `&oidp->oid_children`, the first field, so the child
//!   list of a node is the node's own address ([`children`]);
//! * `SYSCTL_STATIC_CHILDREN(_hw)` is `&sysctl___hw.oid_children`, i.e. the address of
//!   the exported `sysctl___hw` oid.

use super::cdev::Thread;
use super::types::Intmax;
use core::ffi::{c_char, c_int, c_uint, c_void};

/// `CTLTYPE_NODE` / `CTLTYPE_STRING` (`sys/sys/sysctl.h`).
pub const CTLTYPE_NODE: c_uint = 1;
pub const CTLTYPE_STRING: c_uint = 3;
/// `CTLTYPE_U64`.
pub const CTLTYPE_U64: c_uint = 9;
/// `CTLFLAG_RD` / `CTLFLAG_WR` / `CTLFLAG_RW`.
pub const CTLFLAG_RD: c_uint = 0x8000_0000;
pub const CTLFLAG_WR: c_uint = 0x4000_0000;
pub const CTLFLAG_RW: c_uint = CTLFLAG_RD | CTLFLAG_WR;
/// `CTLFLAG_PRISON`: jailed root may write (vmm's handlers then check `allow.vmm`).
pub const CTLFLAG_PRISON: c_uint = 0x0400_0000;
/// `CTLFLAG_DYN`: set by `sysctl_add_oid` itself.
pub const CTLFLAG_DYN: c_uint = 0x0200_0000;
/// `CTLFLAG_MPSAFE`: the handler runs without Giant.
pub const CTLFLAG_MPSAFE: c_uint = 0x0004_0000;
/// `OID_AUTO`: let the kernel number the oid.
pub const OID_AUTO: c_int = -1;

/// Opaque `struct sysctl_oid`.
#[repr(C)]
pub struct SysctlOid {
    _private: [u8; 0],
}
/// Opaque `struct sysctl_oid_list` (the head of a node's children).
#[repr(C)]
pub struct SysctlOidList {
    _private: [u8; 0],
}

/// `struct sysctl_req` (`sys/sys/sysctl.h`): a handler reads `td` (for privilege
/// checks) and `newptr` (non-NULL when the request writes a value).
#[repr(C)]
pub struct SysctlReq {
    pub td: *mut Thread,
    pub lock: c_int,
    pub oldptr: *mut c_void,
    pub oldlen: usize,
    pub oldidx: usize,
    pub oldfunc: Option<unsafe extern "C" fn(*mut SysctlReq, *const c_void, usize) -> c_int>,
    pub newptr: *const c_void,
    pub newlen: usize,
    pub newidx: usize,
    pub newfunc: Option<unsafe extern "C" fn(*mut SysctlReq, *mut c_void, usize) -> c_int>,
    pub validlen: usize,
    pub flags: c_int,
}

/// `struct sysctl_ctx_list`: `TAILQ_HEAD(sysctl_ctx_list, sysctl_ctx_entry)`, two
/// pointers. Initialise with `sysctl_ctx_init` before use, at a fixed address (the
/// empty TAILQ points at itself).
#[repr(C)]
pub struct SysctlCtxList {
    pub tqh_first: *mut c_void,
    pub tqh_last: *mut *mut c_void,
}

/// `SYSCTL_HANDLER_ARGS`: `(struct sysctl_oid *oidp, void *arg1, intmax_t arg2,
/// struct sysctl_req *req)`.
pub type SysctlHandler =
    unsafe extern "C" fn(*mut SysctlOid, *mut c_void, Intmax, *mut SysctlReq) -> c_int;

/// `SYSCTL_CHILDREN(oidp)`: the child list of a node created by `sysctl_add_oid`.
///
/// The list head is the first member of `struct sysctl_oid`, so this is an address
/// cast; it does not dereference `oid`.
pub fn children(oid: *mut SysctlOid) -> *mut SysctlOidList {
    oid.cast()
}

extern "C" {
    /// `struct sysctl_oid sysctl___hw`: the `hw` root node (kern_mib.c
    /// `SYSCTL_ROOT_NODE(CTL_HW, hw, ...)`). Only its address is used:
    /// `SYSCTL_STATIC_CHILDREN(_hw)`.
    pub static mut sysctl___hw: SysctlOid;

    /// `int sysctl_ctx_init(struct sysctl_ctx_list *)`.
    pub fn sysctl_ctx_init(clist: *mut SysctlCtxList) -> c_int;
    /// `int sysctl_ctx_free(struct sysctl_ctx_list *)`: removes every oid added under
    /// the context (children first); `EBUSY` if one is in use.
    pub fn sysctl_ctx_free(clist: *mut SysctlCtxList) -> c_int;
    /// `struct sysctl_oid *sysctl_add_oid(struct sysctl_ctx_list *clist,
    ///     struct sysctl_oid_list *parent, int nbr, const char *name, int kind,
    ///     void *arg1, intmax_t arg2, int (*handler)(SYSCTL_HANDLER_ARGS),
    ///     const char *fmt, const char *descr, const char *label)`.
    /// `SYSCTL_ADD_NODE` passes `CTLTYPE_NODE | access`, no handler, fmt "N";
    /// `SYSCTL_ADD_PROC` passes the handler and fmt "A" for a string.
    /// Returns NULL on failure (e.g. a name clash).
    pub fn sysctl_add_oid(
        clist: *mut SysctlCtxList,
        parent: *mut SysctlOidList,
        nbr: c_int,
        name: *const c_char,
        kind: c_int,
        arg1: *mut c_void,
        arg2: Intmax,
        handler: Option<SysctlHandler>,
        fmt: *const c_char,
        descr: *const c_char,
        label: *const c_char,
    ) -> *mut SysctlOid;
    /// `int sysctl_handle_64(SYSCTL_HANDLER_ARGS)`: copies the `uint64_t` at `arg1` out
    /// and, on a write, the new value into it.
    pub fn sysctl_handle_64(
        oidp: *mut SysctlOid,
        arg1: *mut c_void,
        arg2: Intmax,
        req: *mut SysctlReq,
    ) -> c_int;
    /// `int sysctl_handle_string(SYSCTL_HANDLER_ARGS)`: copies the current string out
    /// and, on a write, the new one into `arg1` (at most `arg2` bytes, NUL-terminated).
    pub fn sysctl_handle_string(
        oidp: *mut SysctlOid,
        arg1: *mut c_void,
        arg2: Intmax,
        req: *mut SysctlReq,
    ) -> c_int;
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn sysctl_req_layout() {
        assert_eq!(offset_of!(SysctlReq, td), 0);
        assert_eq!(offset_of!(SysctlReq, lock), 8);
        assert_eq!(offset_of!(SysctlReq, oldptr), 16);
        assert_eq!(offset_of!(SysctlReq, oldfunc), 40);
        assert_eq!(offset_of!(SysctlReq, newptr), 48);
        assert_eq!(offset_of!(SysctlReq, newlen), 56);
        assert_eq!(offset_of!(SysctlReq, newfunc), 72);
        assert_eq!(offset_of!(SysctlReq, validlen), 80);
        assert_eq!(offset_of!(SysctlReq, flags), 88);
        assert_eq!(size_of::<SysctlReq>(), 96);
        assert_eq!(size_of::<SysctlCtxList>(), 16);
    }

    #[test]
    fn children_is_the_node_address() {
        let mut storage = [0u64; 16];
        let oid: *mut SysctlOid = storage.as_mut_ptr().cast();
        assert_eq!(children(oid) as usize, oid as usize);
    }

    #[test]
    fn flag_values() {
        assert_eq!(CTLFLAG_RW, 0xc000_0000);
        assert_eq!(
            CTLTYPE_STRING | CTLFLAG_RW | CTLFLAG_PRISON | CTLFLAG_MPSAFE,
            0xc404_0003
        );
    }
}
