//! Decoding of the requests the glue handles itself (portable, unit-tested): the
//! /dev/vmmctl create/destroy ioctls, which also create or remove /dev/vmm/NAME, and
//! the value written to the hw.vmm.create / hw.vmm.destroy sysctls.

use crate::errno::{Errno, KResult};
use vmm_sys::abi::{Pod, VmmctlVmCreate};
use vmm_sys::ioctl::{VMMCTL_VM_CREATE, VMMCTL_VM_DESTROY};

/// What a /dev/vmmctl ioctl asks of the glue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtlOp {
    Create,
    Destroy,
    /// Anything else goes to the core's dispatcher unchanged.
    Other,
}

/// `FWRITE` (`sys/sys/fcntl.h`).
const FWRITE: i32 = 0x0002;

/// Classifies `cmd`; `EPERM` for create/destroy on a descriptor opened without
/// `FWRITE` (as FreeBSD's vmmctl_ioctl).
pub fn ctl_op(cmd: u64, fflag: i32) -> KResult<CtlOp> {
    let op = match cmd {
        VMMCTL_VM_CREATE => CtlOp::Create,
        VMMCTL_VM_DESTROY => CtlOp::Destroy,
        _ => return Ok(CtlOp::Other),
    };
    if fflag & FWRITE == 0 {
        return Err(Errno::EPERM);
    }
    Ok(op)
}

/// The VM name of a `struct vmmctl_vm_create`/`_destroy` argument: `EINVAL` for a
/// wrong size, non-zero reserved words or an invalid name.
pub fn ctl_name(arg: &[u8]) -> KResult<&[u8]> {
    let req = VmmctlVmCreate::from_bytes(arg).ok_or(Errno::EINVAL)?;
    if req.reserved.iter().any(|&r| r != 0) {
        return Err(Errno::EINVAL);
    }
    let len = req.name_bytes().len();
    let name = arg.get(..len).ok_or(Errno::EINVAL)?;
    vmm_sys::validate_vm_name(name).map_err(|_| Errno::EINVAL)?;
    Ok(name)
}

/// The name written to a hw.vmm sysctl: the buffer up to its first NUL, validated.
pub fn sysctl_name(buf: &[u8]) -> KResult<&[u8]> {
    let end = buf.iter().position(|&c| c == 0).unwrap_or(buf.len());
    let name = buf.get(..end).ok_or(Errno::EINVAL)?;
    vmm_sys::validate_vm_name(name).map_err(|_| Errno::EINVAL)?;
    Ok(name)
}

#[cfg(test)]
// Test code: a panic here is a failed test.
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn create_and_destroy_need_fwrite() {
        assert_eq!(ctl_op(VMMCTL_VM_CREATE, FWRITE), Ok(CtlOp::Create));
        assert_eq!(ctl_op(VMMCTL_VM_DESTROY, 3), Ok(CtlOp::Destroy));
        assert_eq!(ctl_op(VMMCTL_VM_CREATE, 1), Err(Errno::EPERM));
        assert_eq!(ctl_op(VMMCTL_VM_DESTROY, 0), Err(Errno::EPERM));
        assert_eq!(ctl_op(vmm_sys::ioctl::VM_RUN, 1), Ok(CtlOp::Other));
    }

    #[test]
    fn ctl_name_reads_and_checks_the_request() {
        let req = VmmctlVmCreate::new(b"guest0").unwrap();
        assert_eq!(ctl_name(req.as_bytes()), Ok(&b"guest0"[..]));
        let mut bad = req;
        bad.reserved[3] = 1;
        assert_eq!(ctl_name(bad.as_bytes()), Err(Errno::EINVAL));
        assert_eq!(ctl_name(&req.as_bytes()[1..]), Err(Errno::EINVAL));
        let slash = VmmctlVmCreate::new(b"a/b").unwrap();
        assert_eq!(ctl_name(slash.as_bytes()), Err(Errno::EINVAL));
        let empty = VmmctlVmCreate::new(b"").unwrap();
        assert_eq!(ctl_name(empty.as_bytes()), Err(Errno::EINVAL));
    }

    #[test]
    fn sysctl_name_stops_at_nul() {
        let mut buf = [0u8; 16];
        buf[..3].copy_from_slice(b"vm1");
        buf[4] = b'x';
        assert_eq!(sysctl_name(&buf), Ok(&b"vm1"[..]));
        assert_eq!(sysctl_name(&[0u8; 4]), Err(Errno::EINVAL));
        assert_eq!(sysctl_name(b".."), Err(Errno::EINVAL));
        assert_eq!(sysctl_name(b"vm2"), Ok(&b"vm2"[..]));
    }
}
