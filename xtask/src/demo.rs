//! `cargo xtask demo [--disk]`: Debian's arm64 Linux booted by the FreeBSD tools on the
//! served testbed, its console on this terminal (docs/e2e.md). Checks what it needs and
//! says what is missing (tests/e2e/demo.sh installs it), builds the tools, fetches the
//! kernel and builds the initramfs (both cached), starts the testbed unless one is up,
//! runs bhyveload, `bhyve -b` and `bhyvectl --destroy`, and stops the testbed it
//! started.
//!
//! Without `--disk` the guest is the busybox initramfs that prints its marker and powers
//! off. With `--disk` it is a Debian bookworm system on a virtio-blk disk
//! (tests/make-debian-disk.sh, built once and cached) booted with systemd to a login
//! prompt on hvc0, 512 MiB, 2 vCPUs; the disk the guest writes is the demo's own copy,
//! .cache/guest/debian-demo.img, kept from run to run (made afresh from the template
//! when it is missing or the template was rebuilt since).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vmm_e2e::proc;
use vmm_testbed_broker::launch::{self, Layout};
use vmm_testbed_harness::{build, cmd, repo_root};

use vmm_e2e::proc::tool_on as tool;

/// The VM's name, as in the README.
const VM: &str = "vm";
/// The kernel command line (docs/e2e.md, "Boot arguments").
const BOOTARGS: &[&str] = &["console=ttyAMA0", "earlycon=pl011,0x10000", "panic=-1"];
/// The kernel command line with `--disk` (docs/e2e.md, "A Debian disk"): the console is
/// the virtio console, the root file system the virtio-blk disk in slot 0.
const DISK_BOOTARGS: &[&str] = &["console=hvc0", "root=/dev/vda", "rw", "panic=-1"];
/// The demo's copy of the Debian disk, in the guest cache: what the guest writes stays.
const DISK_COPY: &str = "debian-demo.img";

/// What `cargo xtask demo` boots.
struct Guest {
    /// `bhyveload -m`.
    memory: &'static str,
    /// `bhyveload -c`.
    cpus: &'static str,
    initrd: PathBuf,
    bootargs: &'static [&'static str],
    /// `bhyve -s` options.
    slots: Vec<String>,
    /// What to tell the user before the console takes the terminal.
    hint: &'static str,
}

/// Host commands the demo runs, and the Debian package that has each.
const NEEDED: &[(&str, &str)] = &[
    ("qemu-system-aarch64", "qemu-system-arm"),
    ("aarch64-linux-gnu-as", "binutils-aarch64-linux-gnu"),
    ("aarch64-linux-gnu-objcopy", "binutils-aarch64-linux-gnu"),
    ("cpio", "cpio"),
    ("gzip", "gzip"),
    ("dpkg-deb", "dpkg"),
    ("apt-get", "apt"),
];

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

fn rustup_targets_missing() -> Vec<&'static str> {
    let Ok(out) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    else {
        // No rustup: the toolchain may be installed another way; the build will tell.
        return Vec::new();
    };
    let have = String::from_utf8_lossy(&out.stdout).into_owned();
    ["aarch64-unknown-none-softfloat"]
        .into_iter()
        .filter(|t| !have.lines().any(|l| l.trim() == *t))
        .collect()
}

fn check_host() -> Result<(), String> {
    let mut missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(c, _)| !on_path(c))
        .map(|(_, p)| *p)
        .collect();
    missing.dedup();
    let targets = rustup_targets_missing();
    if missing.is_empty() && targets.is_empty() {
        return Ok(());
    }
    let mut msg = String::from("missing on this machine:");
    if !missing.is_empty() {
        msg += &format!(" Debian packages {}", missing.join(" "));
    }
    if !targets.is_empty() {
        msg += &format!(" rustup targets {}", targets.join(" "));
    }
    Err(msg + " (tests/e2e/demo.sh installs them)")
}

/// Runs one of the repo's scripts that print a path; what it says on stderr (a
/// download's or a disk build's progress) shows as it runs.
fn script(name: &str, args: &[&str]) -> Result<PathBuf, String> {
    let path = repo_root().join("tests").join(name);
    eprintln!("xtask: {} {}", path.display(), args.join(" "));
    let out = cmd::output(
        &format!("tests/{name}"),
        Command::new(&path)
            .args(args)
            .stderr(std::process::Stdio::inherit()),
    )?;
    Ok(PathBuf::from(out.trim()))
}

/// The guest of plain `cargo xtask demo`: the busybox initramfs that prints its marker
/// and powers off.
fn initramfs_guest() -> Result<Guest, String> {
    Ok(Guest {
        memory: "256M",
        cpus: "1",
        initrd: script("make-initramfs.sh", &["ok"])?,
        bootargs: BOOTARGS,
        slots: Vec::new(),
        hint: "",
    })
}

/// The guest of `cargo xtask demo --disk`: Debian with systemd on the demo's copy of the
/// Debian disk (made from the template when missing or older than it).
fn disk_guest() -> Result<Guest, String> {
    let initrd = script("make-initramfs.sh", &["root"])?;
    let template = script("make-debian-disk.sh", &[])?;
    let copy = template.with_file_name(DISK_COPY);
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&copy).is_none() || modified(&copy) < modified(&template) {
        if copy.exists() {
            eprintln!(
                "xtask: {} is older than the rebuilt {}: replacing it (what the guest wrote there is lost)",
                copy.display(),
                template.display()
            );
        }
        let tmp = copy.with_extension("img.tmp");
        cmd::run(
            "copy the Debian disk",
            Command::new("cp")
                .arg("--sparse=always")
                .arg(&template)
                .arg(&tmp),
        )?;
        std::fs::rename(&tmp, &copy).map_err(|e| format!("rename to {}: {e}", copy.display()))?;
    } else {
        eprintln!("xtask: using {} (kept from an earlier run)", copy.display());
    }
    Ok(Guest {
        memory: "512M",
        cpus: "2",
        initrd,
        bootargs: DISK_BOOTARGS,
        slots: vec![
            format!("0,virtio-blk,{}", copy.display()),
            "1,virtio-rnd".into(),
            "2,virtio-console".into(),
        ],
        hint: "log in as root (no password); `poweroff` in the guest ends the demo. \
               hvc0 starts with the root mount: the kernel's first seconds are not shown",
    })
}

/// Stops the testbed the demo started, also when a step fails.
struct Up(Option<Layout>);

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(l) = self.0.take() {
            for (what, pid) in launch::down(&l) {
                eprintln!("xtask: stopped {what} (process group {pid})");
            }
        }
    }
}

pub fn demo(args: &[String]) -> Result<(), String> {
    let disk = match args {
        [] => false,
        [a] if a == "--disk" => true,
        _ => return Err("usage: cargo xtask demo [--disk]".into()),
    };
    check_host()?;
    proc::build_tools().map_err(|e| e.to_string())?;
    let testbed = build::build_testbed()?;
    let kernel = script("fetch-guest.sh", &[])?;
    let guest = if disk {
        disk_guest()?
    } else {
        initramfs_guest()?
    };

    let layout = Layout::new(repo_root().join("target/testbed"));
    let mut up = Up(None);
    let socket = if launch::status(&layout).iter().any(|s| s.2) {
        eprintln!("xtask: using the testbed that is already up (target/testbed)");
        layout.socket()
    } else {
        eprintln!("xtask: starting the testbed (QEMU; logs in target/testbed)");
        let s = launch::up(
            &testbed,
            &proc::tool("vmm-testbed-broker"),
            &layout,
            Duration::from_secs(120),
            launch::HostCpu::from_env()?,
        )
        .map_err(|e| e.to_string())?;
        up.0 = Some(layout.clone());
        s
    };

    let mut load = tool("bhyveload", &socket);
    load.arg("-k")
        .arg(&kernel)
        .args(["-m", guest.memory, "-c", guest.cpus, "-i"])
        .arg(&guest.initrd);
    for a in guest.bootargs {
        load.args(["-e", a]);
    }
    cmd::run("bhyveload", load.arg(VM))?;
    let mut bhyve = tool("bhyve", &socket);
    bhyve.arg("-b");
    for s in &guest.slots {
        bhyve.args(["-s", s]);
    }
    bhyve.arg(VM);
    if !guest.hint.is_empty() {
        eprintln!("xtask: {}", guest.hint);
    }
    eprintln!("xtask: {bhyve:?} (the guest's console follows)");
    let t = Instant::now();
    let st = bhyve.status().map_err(|e| format!("bhyve: {e}"))?;
    let took = t.elapsed();
    let destroyed = cmd::run(
        "bhyvectl --destroy",
        tool("bhyvectl", &socket).args([&format!("--vm={VM}"), "--destroy"]),
    );
    drop(up);
    match st.code() {
        Some(1) => eprintln!("xtask: the guest powered off after {took:.1?} (bhyve exit 1)"),
        Some(0) => eprintln!("xtask: the guest rebooted after {took:.1?} (bhyve exit 0)"),
        _ => return Err(format!("bhyve ended with {st}")),
    }
    Ok(destroyed?)
}
