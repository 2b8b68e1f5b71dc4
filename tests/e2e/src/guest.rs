//! The guest's files: Debian's arm64 cloud kernel (tests/fetch-guest.sh) and the busybox
//! initramfs variants (tests/make-initramfs.sh), both cached under .cache/guest.

use crate::Error;
use std::path::PathBuf;
use std::process::Command;
use vmm_testbed_harness::{cmd, repo_root};

/// What the initramfs's /init does (tests/make-initramfs.sh).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// Prints [`MARKER`] and powers off (PSCI SYSTEM_OFF).
    PowerOff,
    /// Prints [`IDLE_MARKER`] and sleeps forever.
    Idle,
    /// No working init: the kernel panics.
    Broken,
}

impl Init {
    fn variant(self) -> &'static str {
        match self {
            Init::PowerOff => "ok",
            Init::Idle => "idle",
            Init::Broken => "broken",
        }
    }
}

/// What the `ok` init prints once it runs (followed by the machine, `aarch64`).
pub const MARKER: &str = "VMM-E2E: init reached userspace on aarch64";
/// What the `idle` init prints before it sleeps.
pub const IDLE_MARKER: &str = "VMM-E2E: idle";

/// The kernel command line used everywhere (docs/e2e.md, "Boot arguments"): the PL011
/// as console and early console, and a panic resets at once.
pub const BOOTARGS: &[&str] = &["console=ttyAMA0", "earlycon=pl011,0x10000", "panic=-1"];

fn script(name: &str, args: &[&str]) -> Result<PathBuf, Error> {
    let path = repo_root().join("tests").join(name);
    let out = cmd::output(
        &format!("tests/{name} {}", args.join(" ")),
        Command::new(&path).args(args),
    )?;
    let p = PathBuf::from(out.trim());
    if p.as_os_str().is_empty() || !p.is_file() {
        return Err(Error::Failed {
            what: format!("tests/{name}"),
            why: format!("printed {:?}, not a file", p),
        });
    }
    Ok(p)
}

/// Debian's arm64 cloud kernel (fetched once, then cached).
pub fn kernel() -> Result<PathBuf, Error> {
    script("fetch-guest.sh", &[])
}

/// The initramfs whose /init does `init` (built once, then cached).
pub fn initramfs(init: Init) -> Result<PathBuf, Error> {
    script("make-initramfs.sh", &[init.variant()])
}

/// The initramfs that loads the virtio modules and switch_roots to `root=`
/// (tests/make-initramfs.sh root).
pub fn root_initramfs() -> Result<PathBuf, Error> {
    script("make-initramfs.sh", &["root"])
}

/// The initramfs whose /init loads virtio_console, prints the kernel's log and the
/// [`MARKER`] on hvc0 and powers off (tests/make-initramfs.sh hvc).
pub fn hvc_initramfs() -> Result<PathBuf, Error> {
    script("make-initramfs.sh", &["hvc"])
}

/// The pristine ext4 root disk template (tests/make-rootdisk.sh write): copy it before
/// booting it.
pub fn rootdisk_template() -> Result<PathBuf, Error> {
    script("make-rootdisk.sh", &["write"])
}

/// What the root disk's init prints first.
pub const ROOTFS_MARKER: &str = "VMM-E2E: rootfs init on aarch64";

/// The Debian bookworm disk booted with systemd (tests/make-debian-disk.sh; needs
/// mmdebstrap, qemu-user-static and binfmt_misc, and root): copy it before booting it.
pub fn debian_disk() -> Result<PathBuf, Error> {
    script("make-debian-disk.sh", &[])
}
