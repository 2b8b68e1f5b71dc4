//! `cargo xtask <command>`: the project's build and test driver.
//!
//! * `test`: everything CI runs (format, lints, host tests, FreeBSD cross-check).
//! * `check-freebsd`: clippy (`-D warnings`) of every userspace crate for aarch64-unknown-freebsd.
//! * `build-el2`, `build-guests`, `build-testbed`: the kernel-side aarch64 artifacts
//!   (soft-float, -Zfixed-x18, build-std) in target/aarch64.
//! * `check-x18`: no x18 outside the EL2 blob's guest entry/exit.
//! * `lint-kernel`: fmt check and clippy of the aarch64-only crates (el2/, testbed).
//! * `build-kmod`: vmm.ko, the FreeBSD 15 arm64 kernel module (target/kmod/vmm.ko).
//! * `check-kmod`: builds vmm.ko and checks it against what FreeBSD's kldload expects.
//! * `run-testbed`: boots the testbed in QEMU (hard timeout) and shows its console.
//! * `bench`: bench-el2 and bench-boot on both host modes and one summary table.
//! * `bench-el2`: the exit-cost benchmark under `-icount shift=0`.
//! * `bench-boot`: a Linux boot under our stack against plain QEMU (docs/PERFORMANCE.md).
//! * `bench-devices`: virtio-blk and virtio-net throughput against plain QEMU's.
//! * `bench-smp`: userspace exits per second of a 1- and a 2-vCPU guest on the testbed.
//! * `bench-exit`: emulated instructions on the testbed side of a userspace exit.
//! * `demo [--disk]`: boots Debian's arm64 Linux with the tools on the testbed; with
//!   `--disk`, a Debian system with systemd from a virtio-blk disk (docs/e2e.md).
//! * `fuzz list | run TARGET [--secs N] | ci [--secs N]`: the fuzz targets in fuzz/
//!   (docs/fuzzing.md); `test` runs each for a few seconds.
//! * `soak [--secs N] [--workers N]`: a racing soak of the served testbed through the
//!   tools (kill -9 mid-run, REINIT, stats, destroy); `test` runs a short one.

mod bench;
mod bench_all;
mod bench_devices;
mod bench_exit;
mod bench_smp;
mod demo;
mod fuzz;
mod kernel;
mod kmod;
mod soak;
mod testbed;

use std::process::ExitCode;
use vmm_testbed_harness::cmd::{cargo, run};

/// Userspace crates that must build for FreeBSD/arm64.
const FREEBSD_CRATES: &[&str] = &[
    "vmm-sys",
    "vmm-platform",
    "libvmmapi",
    "vmm-virtio",
    "bhyveload",
    "bhyve",
    "bhyvectl",
];

/// The arguments of `command`: `option N` (the last one counts) or nothing, then
/// `default`; `need` says what N must be.
fn number_option(
    command: &str,
    args: &[String],
    (option, need): (&str, &str),
    default: u64,
) -> Result<u64, String> {
    let mut n = default;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a != option {
            return Err(format!("{command}: unknown argument {a}"));
        }
        n = it
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{option} needs {need}"))?;
    }
    Ok(n)
}

fn check_freebsd() -> Result<(), String> {
    let mut cmd = cargo();
    cmd.env("RUSTC_BOOTSTRAP", "1")
        .args([
            "clippy",
            "--target",
            "aarch64-unknown-freebsd",
            "-Zbuild-std=std,panic_abort",
        ])
        .args(["--target-dir", "target/freebsd"]);
    for c in FREEBSD_CRATES {
        cmd.args(["-p", c]);
    }
    // The FreeBSD-only code (the /dev/vmm backend, taps, disks, Capsicum) is compiled
    // and linted only here.
    cmd.args(["--", "-D", "warnings"]);
    Ok(run("clippy for aarch64-unknown-freebsd", &mut cmd)?)
}

fn test() -> Result<(), String> {
    run("format check", cargo().args(["fmt", "--all", "--check"]))?;
    run(
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // Every test on the nVHE host (the testbed harness boots the VHE host as well),
    // then the served testbed's tests again on the VHE host: the broker's and the
    // end-to-end boots.
    run(
        "host and testbed tests (nVHE host: cortex-a57)",
        cargo()
            .env("VMM_TESTBED_CPU", "cortex-a57")
            .args(["test", "--workspace"]),
    )?;
    run(
        "served testbed tests (VHE host: -cpu max)",
        cargo().env("VMM_TESTBED_CPU", "max").args([
            "test",
            "-p",
            "vmm-testbed-broker",
            "-p",
            "vmm-e2e",
        ]),
    )?;
    kernel::lint_kernel()?;
    kernel::check_x18()?;
    kmod::check_kmod()?;
    check_freebsd()?;
    // A short racing soak of the served testbed (kill -9 mid-run, REINIT, stats).
    if std::env::var_os("VMM_SKIP_QEMU").is_none() {
        soak::soak(&["--secs".into(), SOAK_CI_SECS.to_string()])?;
    }
    // Every fuzz target briefly, on its committed seeds and regressions.
    fuzz::ci(FUZZ_CI_SECS)
}

/// Seconds of soak in `cargo xtask test`.
const SOAK_CI_SECS: u64 = 30;

/// Seconds per fuzz target in `cargo xtask test`.
const FUZZ_CI_SECS: u64 = 10;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("check-freebsd") => check_freebsd(),
        Some("build-el2") => kernel::build_el2(),
        Some("build-guests") => kernel::build_guests(),
        Some("build-testbed") => kernel::build_testbed(),
        Some("check-x18") => kernel::check_x18(),
        Some("lint-kernel") => kernel::lint_kernel(),
        Some("build-kmod") => kmod::build_kmod().map(|_| ()),
        Some("check-kmod") => kmod::check_kmod(),
        Some("run-testbed") => kernel::run_testbed(&args[1..]),
        Some("bench") => bench_all::bench(&args[1..]),
        Some("bench-el2") => kernel::bench_el2(&args[1..]),
        Some("bench-boot") => bench::bench_boot(&args[1..]),
        Some("bench-devices") => bench_devices::bench_devices(&args[1..]),
        Some("bench-smp") => bench_smp::bench_smp(&args[1..]),
        Some("bench-exit") => bench_exit::bench_exit(&args[1..]),
        Some("testbed") => testbed::testbed(&args[1..]),
        Some("demo") => demo::demo(&args[1..]),
        Some("fuzz") => fuzz::fuzz(&args[1..]),
        Some("soak") => soak::soak(&args[1..]),
        _ => Err(
            "usage: cargo xtask test | check-freebsd | build-el2 | build-guests | \
                  build-testbed | check-x18 | lint-kernel | build-kmod | check-kmod | run-testbed [--timeout SECS] [--cpu cortex-a57|max] | bench [--cpu cortex-a57|max]... [--runs N] | bench-el2 [--cpu cortex-a57|max] | bench-boot [--runs N] [--cpu cortex-a57|max] | bench-devices [--runs N] | bench-smp [--runs N] [--cpu cortex-a57|max] | bench-exit [--runs N] [--cpu cortex-a57|max] | testbed up [--cpu cortex-a57|max]|down|status | demo [--disk] | fuzz list|run TARGET [--secs N]|ci [--secs N] | soak [--secs N] [--workers N]"
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
