//! bhyveload's errors: each one prints as the one line after "bhyveload: ".

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::cli::ArgError;
use crate::kernel::KernelError;
use crate::placement::PlaceError;
use crate::userdtb::DtbError;

/// An io::Error without Rust's " (os error N)" tail (libvmmapi's `errno_text`).
pub fn io_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(errno) => libvmmapi::error::errno_text(errno),
        None => e.to_string(),
    }
}

#[derive(Debug, Error)]
pub enum Error {
    #[error("{0}")]
    Args(#[from] ArgError),
    #[error("{what} {}: {}", path.display(), io_text(source))]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("kernel {}: {source}", path.display())]
    Kernel { path: PathBuf, source: KernelError },
    #[error("initrd {}: {why}", path.display())]
    Initrd { path: PathBuf, why: String },
    #[error("devicetree {}: {source}", path.display())]
    Dtb { path: PathBuf, source: DtbError },
    #[error("{0}")]
    Place(#[from] PlaceError),
    #[error("generating the devicetree: {0}")]
    FdtGen(vm_fdt::Error),
    #[error("--dtb-out {}: {}", path.display(), io_text(source))]
    DtbOut { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Vm(#[from] libvmmapi::Error),
    #[error(
        "vm '{vm}' already has memory {have}; destroy it (bhyvectl --destroy --vm={vm}) to load it with {want}"
    )]
    MemoryMismatch {
        vm: String,
        have: String,
        want: String,
    },
    #[error(
        "vm '{0}' is running, or its last run did not end cleanly: stop its bhyve, or destroy it (bhyvectl --vm={0} --destroy)"
    )]
    Busy(String),
    #[error("vm '{vm}': writing {what} to guest memory at {addr:#x}: {why}")]
    GuestWrite {
        vm: String,
        what: &'static str,
        addr: u64,
        why: String,
    },
}
