//! Testbed tests: build the testbed kernel (EL2 blob and guest programs embedded), boot
//! it in QEMU (virt, virtualization=on, GICv3, 2 CPUs) under a hard timeout, once on a
//! cortex-a57 (an nVHE host) and once on `-cpu max` (a VHE host), and check the `TEST <name> PASS|FAIL <detail>` lines of its serial log.
//! Every test function checks its own lines; a missing line fails like a FAIL line,
//! and every failure shows the whole serial log.
//!
//! Needs qemu-system-aarch64 and aarch64-linux-gnu binutils; set VMM_SKIP_QEMU=1 to
//! skip (the tests then say so on stderr and pass).

use std::sync::OnceLock;
use std::time::Duration;
use vmm_testbed_harness::{build, qemu};

/// Generous: a normal run takes a few seconds; the build may take minutes on 2 cores
/// but is not counted here.
const QEMU_TIMEOUT: Duration = Duration::from_secs(120);

struct Run {
    log: String,
    tests: Vec<qemu::TestLine>,
}

fn skip() -> bool {
    if std::env::var_os("VMM_SKIP_QEMU").is_some() {
        eprintln!("VMM_SKIP_QEMU set: testbed tests skipped");
        return true;
    }
    false
}

fn testbed_run() -> &'static Result<Run, String> {
    static RUN: OnceLock<Result<Run, String>> = OnceLock::new();
    RUN.get_or_init(|| boot(qemu::HostCpu::CortexA57))
}

/// The run on a VHE host (`-cpu max`).
fn vhe_run() -> &'static Result<Run, String> {
    static RUN: OnceLock<Result<Run, String>> = OnceLock::new();
    RUN.get_or_init(|| boot(qemu::HostCpu::Max))
}

/// The run on a VHE host with MTE (`-cpu max` on a board with tag memory).
fn mte_run() -> &'static Result<Run, String> {
    static RUN: OnceLock<Result<Run, String>> = OnceLock::new();
    RUN.get_or_init(|| {
        let kernel = build::build_testbed().map_err(|e| format!("building the testbed: {e}"))?;
        run_args(&qemu::qemu_args_mte(&kernel, 2))
    })
}

fn boot(cpu: qemu::HostCpu) -> Result<Run, String> {
    let kernel = build::build_testbed().map_err(|e| format!("building the testbed: {e}"))?;
    run_args(&qemu::qemu_args(&kernel, 2, cpu))
}

fn run_args(args: &[String]) -> Result<Run, String> {
    let out = qemu::run(args, QEMU_TIMEOUT).map_err(|e| format!("running QEMU: {e}"))?;
    let tests = qemu::parse_tests(&out.log);
    if out.timed_out {
        return Err(format!(
            "QEMU killed after {QEMU_TIMEOUT:?}; serial log:\n{}",
            out.log
        ));
    }
    Ok(Run {
        log: out.log,
        tests,
    })
}

/// Asserts that every named testbed test ran and passed on the nVHE host.
fn expect(names: &[&str]) {
    expect_in(testbed_run(), names)
}

/// Asserts that every named testbed test ran and passed in `run`.
fn expect_in(run: &Result<Run, String>, names: &[&str]) {
    if skip() {
        return;
    }
    let run = match run {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    let mut problems = Vec::new();
    for name in names {
        match run.tests.iter().find(|t| t.name == *name) {
            Some(t) if t.pass => eprintln!("{name}: {}", t.detail),
            Some(t) => problems.push(format!("{name} FAILED: {}", t.detail)),
            None => problems.push(format!("{name}: no result in the serial log")),
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n--- testbed serial log ---\n{}",
        problems.join("\n"),
        run.log
    );
}

#[test]
fn boots_at_el2_leaves_stub_contract_both_cpus() {
    expect(&["cpu1_up", "el2_contract_cpu0", "el2_contract_cpu1"]);
}

#[test]
fn runs_at_el1_high_va_with_gic_timer_ipi_allocator() {
    expect(&[
        "el1_high_va",
        "gic_init",
        "timer_irq",
        "ipi",
        "page_allocator",
        "host_sleep_short_deadlines",
    ]);
}

#[test]
fn el2_blob_installs_on_both_cpus_and_answers() {
    expect(&["hyp_load", "hyp_read_register"]);
}

#[test]
fn guest_hvc_exits_resume_at_the_right_pc() {
    expect(&["guest_hvc_loop"]);
}

#[test]
fn guest_fp_simd_and_gprs_survive_exits_on_two_cpus() {
    expect(&["guest_fp_gpr_two_cpus", "guest_fp_trap_for_host"]);
}

#[test]
fn guest_mmio_every_size_and_register() {
    expect(&["guest_mmio"]);
}

#[test]
fn guest_sysreg_traps_and_wfi() {
    expect(&["guest_sysreg", "guest_wfi"]);
}

#[test]
fn guest_stage2_isolation_and_irq_exit() {
    expect(&["guest_isolation", "guest_irq_exit"]);
}

#[test]
fn unload_restores_el2_and_reload_works() {
    expect(&["hyp_unload", "hyp_reload"]);
}

/// The tests through vmm-core, the same on every host.
const CORE_TESTS: &[&str] = &[
    "core_load",
    "core_hvc_via_dispatch",
    "core_mmio",
    "core_wfi_in_kernel",
    "core_vgic_timer_and_spi",
    "core_vgic_spi_to_running_vcpu",
    "core_isolation_two_cpus",
    "core_fp_gpr_two_cpus",
    "core_sysreg_in_kernel",
    "core_hidden_features",
    "core_destroy_kicks_running_vcpu",
    "core_1000_vms",
    "core_unload",
    "core_reload",
];

#[test]
fn vmm_core_through_the_ioctl_dispatcher() {
    expect(CORE_TESTS);
}

#[test]
fn every_testbed_test_passed() {
    if skip() {
        return;
    }
    let run = match testbed_run() {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    assert!(
        qemu::testbed_finished(&run.log),
        "the testbed did not finish\n--- testbed serial log ---\n{}",
        run.log
    );
    let failed: Vec<_> = run.tests.iter().filter(|t| !t.pass).collect();
    assert!(
        failed.is_empty() && run.tests.len() >= 31,
        "failed: {failed:?} ({} results)\n--- testbed serial log ---\n{}",
        run.tests.len(),
        run.log
    );
}

#[test]
fn no_x18_outside_the_world_switch() {
    if skip() {
        return;
    }
    // After testbed_run so the build is shared; check_x18 rebuilds (a no-op) and scans.
    let _ = testbed_run();
    match build::check_x18() {
        Ok(summary) => eprintln!("{summary}"),
        Err(e) => panic!("{e}"),
    }
}

/// A VHE host (`-cpu max`): the testbed kernel stays at EL2 with E2H and TGE on both
/// CPUs and runs at high addresses in the EL2&0 regime, with its GIC, its timer (the
/// EL2 physical timer, PPI 26) and IPIs.
#[test]
fn vhe_host_boots_at_el2_with_e2h_and_tge() {
    expect_in(
        vhe_run(),
        &[
            "cpu1_up",
            "vhe_host_cpu0",
            "vhe_host_cpu1",
            "el2_high_va",
            "gic_init",
            "timer_irq",
            "ipi",
            "page_allocator",
        ],
    );
}

/// vmm-core on a VHE host: the kernel calls the world switch directly (no stub, no
/// blob), with the guest's EL1 state through the *_EL12 encodings: the same core tests
/// as on the nVHE host, both CPUs.
#[test]
fn vhe_host_runs_the_core() {
    expect_in(vhe_run(), CORE_TESTS);
}

/// `-cpu max` has pointer authentication, which the guest is shown: a guest's own keys
/// survive a thousand exits on each CPU and the host's come back after every run.
#[test]
fn vhe_host_switches_pac_keys() {
    expect_in(vhe_run(), &["core_pac_keys_two_cpus"]);
}

/// A VHE host with MTE (`-M virt,mte=on`): the guest, shown no MTE, finds GMID_EL1
/// (HCR_EL2.TID5) and GCR_EL1 (HCR_EL2.ATA clear) UNDEFINED like the other hidden
/// features, its tag stores and loads reach no tag storage (`core_mte_tags`, only on
/// a host with tag storage), and every core test passes on such a host too.
#[test]
fn mte_host_hides_mte() {
    expect_in(mte_run(), CORE_TESTS);
    expect_in(mte_run(), &["core_mte_tags"]);
}
