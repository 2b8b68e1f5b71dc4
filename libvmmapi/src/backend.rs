//! The backend seam: something that executes one [`Request`] and maps guest memory.

use crate::error::{BackendError, Error, Result};
use crate::memory::Mapping;
use crate::request::Request;
use std::fmt;
use std::sync::Arc;

/// Executes vmm(4) requests. Object-safe, shared between threads (bhyve's vCPU threads
/// each block in VM_RUN while another asserts interrupts).
///
/// Implementations: [`crate::freebsd::FreeBsd`] (ioctls on /dev/vmmctl and
/// /dev/vmm/NAME), `fake::FakeVmm` (in-process test double: the kernel core over a fake
/// host), and
/// [`crate::testbed::Testbed`], which sends [`Request::encode`] to the testbed broker.
pub trait Backend: Send + Sync + fmt::Debug {
    /// A short name for messages ("freebsd", "fake", ...).
    fn name(&self) -> &'static str;

    /// Executes one request. On success `req.arg` holds what the kernel copied out and
    /// every `Out`/`InOut` buffer what it wrote; on failure both are unspecified.
    /// A per-VM request on a VM that does not exist fails with
    /// [`BackendError::NoSuchVm`].
    fn execute(&self, req: &mut Request) -> Result<(), BackendError>;

    /// Maps `len` bytes of VM `vm`'s guest physical memory starting at `gpa` into this
    /// process. The range must lie inside one VM_MMAP_MEMSEG mapping of a system-memory
    /// segment (as mmap of /dev/vmm/NAME at offset `gpa` requires on FreeBSD).
    fn map_memory(&self, vm: &str, gpa: u64, len: usize) -> Result<Mapping, BackendError>;

    /// A device model wrote these `(gpa, len)` ranges of VM `vm`'s memory through a
    /// mapping (DMA). Real hardware needs nothing; the testbed must make its CPU see
    /// the new bytes before the guest executes them (docs/testbed.md, "Guest memory and
    /// TCG").
    fn device_wrote(&self, _vm: &str, _ranges: &[(u64, u64)]) -> Result<(), BackendError> {
        Ok(())
    }

    /// The descriptor through which this process reaches VM `vm` (FreeBSD: its open
    /// /dev/vmm/NAME), for bhyve to limit before it enters capability mode; `None` for
    /// a backend without one.
    fn descriptor(&self, _vm: &str) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// The environment variable that selects the testbed (DESIGN.md "The testbed").
pub const TESTBED_ENV: &str = "VMM_TESTBED";

/// The backend the tools use: the FreeBSD one (/dev/vmmctl, /dev/vmm), unless
/// `VMM_TESTBED` names the testbed broker's socket ([`crate::testbed::Testbed`]).
pub fn backend_from_env() -> Result<Arc<dyn Backend>> {
    match std::env::var_os(TESTBED_ENV) {
        Some(path) if !path.is_empty() => Ok(Arc::new(
            crate::testbed::Testbed::connect(path).map_err(|source| Error::Backend {
                op: "testbed",
                source,
            })?,
        )),
        _ => Ok(Arc::new(crate::freebsd::FreeBsd::new())),
    }
}
