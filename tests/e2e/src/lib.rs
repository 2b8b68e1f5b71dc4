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
}
