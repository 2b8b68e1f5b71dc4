//! `cargo xtask bench-smp [--runs N] [--cpu cortex-a57|max]`: userspace exits per second
//! of a guest whose vCPU 0 writes 1,000 bytes to the PL011, each an exit bhyve answers
//! (tests/guests/smp_wfe.S), run with one vCPU and with two, the second idling in a WFE
//! loop all along; each with lanes and without (`VMM_TESTBED_LANES=0`), on one served
//! testbed (docs/PERFORMANCE.md, "SMP guests on the testbed"). Prints numbers; asserts
//! nothing about time.

use std::path::Path;
use std::time::Duration;

use vmm_e2e::proc::{self, tool_on as tool};
use vmm_e2e::stats::Stats;

use crate::bench::{median, parse_runs, serve_for_guest, stats_and_destroy};

const VM: &str = "benchsmp";

/// One run: bhyveload, `bhyve -c vcpus -b` to the poweroff, vCPU 0's exits to
/// userspace over bhyve's wall time.
fn exits_per_second(socket: &Path, bin: &Path, vcpus: u32, lanes: bool) -> Result<f64, String> {
    let n = vcpus.to_string();
    let load = proc::run(
        tool("bhyveload", socket).arg("-k").arg(bin).args([
            "-l",
            "0x80000000",
            "-m",
            "64M",
            "-c",
            &n,
            VM,
        ]),
        Duration::from_secs(60),
    )
    .map_err(|e| format!("bhyveload: {e}"))?;
    if load.code != Some(0) {
        return Err(format!("bhyveload: {load}"));
    }
    let mut bhyve = tool("bhyve", socket);
    if !lanes {
        bhyve.env(libvmmapi::testbed::LANES_ENV, "0");
    }
    let run = proc::run(bhyve.args(["-c", &n, "-b", VM]), Duration::from_secs(300))
        .map_err(|e| format!("bhyve: {e}"))?;
    let (stats, destroy) = stats_and_destroy(socket, VM)?;
    if run.code != Some(1) || destroy.code != Some(0) {
        return Err(format!("bhyve (poweroff is 1): {run}; destroy: {destroy}"));
    }
    let to_user = Stats::parse(&stats.stdout)
        .user_exits()
        .ok_or_else(|| format!("no exit count in {}", stats.stdout))?;
    Ok(to_user as f64 / run.elapsed.as_secs_f64())
}

/// `bench-smp [--runs N] [--cpu cortex-a57|max]`: prints the table.
pub fn bench_smp(args: &[String]) -> Result<(), String> {
    let (cpu, rest) = crate::kernel::cpu_option(args)?;
    let runs = parse_runs("bench-smp", &rest, 3)?;
    let (bed, socket, bin) = serve_for_guest("bench-smp", "smp_wfe", false, cpu)?;
    let configs = [(1, true), (2, true), (1, false), (2, false)];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    // Alternating, so a change in the machine's load falls on every configuration.
    for run in 0..runs {
        for (i, &(vcpus, lanes)) in configs.iter().enumerate() {
            let r = exits_per_second(&socket, &bin, vcpus, lanes)?;
            eprintln!("xtask: run {run}: {vcpus} vCPU(s), lanes {lanes}: {r:.0} exits/s");
            samples[i].push(r);
        }
    }
    drop(bed);
    println!(
        "\nuserspace exits per second of vCPU 0 (1,000 PL011 writes; median of {runs}; \
         testbed on -cpu {}):",
        cpu.qemu_cpu()
    );
    println!("| path | 1 vCPU | 2 vCPUs, vCPU 1 in a WFE loop | ratio |");
    println!("|---|---|---|---|");
    for (lanes, name) in [(true, "lanes"), (false, "broker (VMM_TESTBED_LANES=0)")] {
        let m = |v: u32| {
            configs
                .iter()
                .position(|&c| c == (v, lanes))
                .and_then(|i| median(samples[i].clone()))
        };
        if let (Some(one), Some(two)) = (m(1), m(2)) {
            println!("| {name} | {one:.0} | {two:.0} | {:.2} |", two / one);
        }
    }
    Ok(())
}
