//! The host side of the testbed: building the kernel-side aarch64 artifacts the way
//! vmm.ko is built (soft-float, -Zfixed-x18, build-std, own target dir), checking them
//! for x18 use, and running the testbed kernel in QEMU under a hard timeout.
//! Used by `cargo xtask` and by this crate's integration tests.

pub mod build;
pub mod cmd;
pub mod qemu;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: cannot start: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("{what} failed ({status}){}", colon(.stderr))]
    Failed {
        what: String,
        status: std::process::ExitStatus,
        /// What the step said on stderr, when it was captured.
        stderr: String,
    },
    #[error("{0}")]
    Check(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn colon(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

/// xtask reports its errors as text.
impl From<Error> for String {
    fn from(e: Error) -> String {
        e.to_string()
    }
}

/// The repository root (this crate lives in tests/testbed-harness).
pub fn repo_root() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    p.canonicalize().unwrap_or(p)
}

/// Where the aarch64 kernel-side builds go: $VMM_AARCH64_TARGET_DIR or target/aarch64.
pub fn aarch64_target_dir() -> PathBuf {
    std::env::var_os("VMM_AARCH64_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/aarch64"))
}
