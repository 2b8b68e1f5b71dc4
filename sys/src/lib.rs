//! vmm-sys: the contract shared by the kernel side and the userspace tools.
//!
//! * [`ioctl`]: FreeBSD ioctl encoding and the /dev/vmm and /dev/vmmctl request numbers.
//! * [`abi`]: the `#[repr(C)]` structures those requests carry, laid out exactly as
//!   FreeBSD 15.0's `machine/vmm.h`, `machine/vmm_dev.h` and `dev/vmm/vmm_dev.h` on LP64.
//! * [`reg`], [`exit`]: register names and exit codes, with checked conversions from the
//!   raw integers that cross the user/kernel boundary.
//! * [`arm64`]: architecture constants (ESR classes and ISS fields, system register
//!   encodings, SMCCC/PSCI function ids).
//! * [`hyp`]: the EL1-to-EL2 hypercall numbers of our own EL2 stub.
#![cfg_attr(not(test), no_std)]

pub mod abi;
pub mod arm64;
pub mod exit;
pub mod hyp;
pub mod ioctl;
pub mod mmio_queue;
pub mod reg;
pub mod wire;

/// `SPECNAMELEN` on FreeBSD 13 and later (`sys/param.h`).
pub const SPECNAMELEN: usize = 255;
/// `VM_MAX_PREFIXLEN` (`dev/vmm/vmm_param.h`).
pub const VM_MAX_PREFIXLEN: usize = 10;
/// `VM_MAX_SUFFIXLEN` (`dev/vmm/vmm_param.h`): also the memory segment name length.
pub const VM_MAX_SUFFIXLEN: usize = 15;
/// The longest VM name: 229 on FreeBSD 13 and later.
pub const VM_MAX_NAMELEN: usize = SPECNAMELEN - VM_MAX_PREFIXLEN - VM_MAX_SUFFIXLEN - 1;
/// Most vCPUs one VM can have: 16 redistributor frames fit the guest platform's GICR window
/// and FreeBSD packs 16 vCPUs into MPIDR Aff0.
pub const VM_MAXCPU: usize = 16;

/// Why a VM name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong,
    /// Contains '/', a NUL, or a byte devfs cannot take in a path component.
    BadChar(u8),
}

impl core::fmt::Display for NameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NameError::Empty => write!(f, "VM name is empty"),
            NameError::TooLong => {
                write!(f, "VM name is longer than {VM_MAX_NAMELEN} bytes")
            }
            NameError::BadChar(b'/') => write!(f, "VM name contains '/'"),
            NameError::BadChar(c) => write!(f, "VM name contains byte 0x{c:02x}"),
        }
    }
}

/// Checks a VM name the way both the tools and the kernel must: non-empty, at most
/// [`VM_MAX_NAMELEN`] bytes, no '/', no NUL or control characters, not "." or "..".
pub fn validate_vm_name(name: &[u8]) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > VM_MAX_NAMELEN {
        return Err(NameError::TooLong);
    }
    if name == b"." || name == b".." {
        return Err(NameError::BadChar(b'.'));
    }
    for &c in name {
        if c == b'/' || c < 0x20 || c == 0x7f {
            return Err(NameError::BadChar(c));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
