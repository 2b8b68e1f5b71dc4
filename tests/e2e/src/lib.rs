//! End to end on the served testbed: the real tools (bhyveload, bhyve, bhyvectl) boot
//! Debian's arm64 Linux kernel with a busybox initramfs under our hypervisor, as a user
//! does (docs/e2e.md). This library holds what the tests and `cargo xtask demo` share:
//! the guest files, the tools, a testbed with a watchdog, processes run under a hard
//! timeout, and the parsing of `bhyvectl --get-stats`.

pub mod bed;
pub mod guest;
pub mod netns;
pub mod proc;
pub mod stats;

/// Errors of the e2e helpers: each names what failed and why.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{what} failed: {why}")]
    Failed { what: String, why: String },
    #[error("{0}")]
    Testbed(String),
    /// A build or a script run as a step ([`vmm_testbed_harness::cmd`]).
    #[error(transparent)]
    Step(#[from] vmm_testbed_harness::Error),
}

/// Whether `VMM_SKIP_QEMU` asks to leave out everything that starts QEMU (said once, on
/// stderr, by each test that skips).
pub fn skip_qemu() -> bool {
    if std::env::var_os("VMM_SKIP_QEMU").is_some() {
        eprintln!("VMM_SKIP_QEMU set: end-to-end test skipped");
        return true;
    }
    false
}

/// The scratch directory of end-to-end test `name` (testbed files, disks, logs).
pub fn test_dir(name: &str) -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| vmm_testbed_harness::repo_root().join("target/tmp"))
        .join(format!("e2e-{name}"))
}
