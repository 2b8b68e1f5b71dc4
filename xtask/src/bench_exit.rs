//! `cargo xtask bench-exit [--runs N] [--cpu cortex-a57|max]`: what the testbed side of a
//! userspace exit costs in emulated instructions. A served testbed under `-icount
//! shift=0` runs tests/guests/console_exits.S through bhyve (1,000 console bytes as
//! Linux writes them: a UARTFR load and a UARTDR store each, so 2,000 exits bhyve
//! answers, each with one register request and the next VM_RUN, all through the
//! vCPU's lane); the testbed counts every lane request it answers and the counter time
//! from its first look at the request to the answer written (`TESTBED_LANE_STATS`),
//! which under icount shift=0 is one nanosecond per emulated instruction of the whole
//! machine (its other CPUs sleep meanwhile). The guest runs 4 instructions between two
//! exits, counted in the VM_RUN's figure. Prints numbers; asserts nothing.

use std::path::Path;
use std::time::Duration;

use libvmmapi::testbed::Testbed;
use vmm_e2e::proc::{self, tool_on as tool};
use vmm_e2e::stats::Stats;
use vmm_sys::ioctl::{VM_GET_REGISTER, VM_RUN, VM_SET_REGISTER};
use vmm_sys::wire::lane;
use vmm_testbed_broker::launch::HostCpu;

use crate::bench::{median, parse_runs, serve_for_guest, stats_and_destroy};

const VM: &str = "benchexit";

/// Lane requests answered and their nanoseconds of counter time, by command.
type LaneStats = [(u64, u64); lane::CMDS.len()];

fn lane_stats(socket: &Path) -> Result<LaneStats, String> {
    Testbed::connect(socket)
        .and_then(|tb| tb.lane_stats())
        .map_err(|e| format!("TESTBED_LANE_STATS: {e}"))
}

/// One run's figures: instructions per VM_RUN, per register request, per exit.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ExitCost {
    pub(crate) vm_run: f64,
    pub(crate) get_register: f64,
    pub(crate) set_register: f64,
    /// Every lane request's instructions over the exits to userspace.
    pub(crate) per_exit: f64,
    pub(crate) exits: u64,
}

/// bhyveload, bhyve to the poweroff, the lane requests it made.
fn one_run(socket: &Path, bin: &Path) -> Result<ExitCost, String> {
    let load = proc::run(
        tool("bhyveload", socket)
            .arg("-k")
            .arg(bin)
            .args(["-l", "0x80000000", "-m", "64M", VM]),
        Duration::from_secs(60),
    )
    .map_err(|e| format!("bhyveload: {e}"))?;
    if load.code != Some(0) {
        return Err(format!("bhyveload: {load}"));
    }
    let before = lane_stats(socket)?;
    let run = proc::run(
        tool("bhyve", socket).args(["-b", VM]),
        Duration::from_secs(300),
    )
    .map_err(|e| format!("bhyve: {e}"))?;
    let after = lane_stats(socket)?;
    let (stats, destroy) = stats_and_destroy(socket, VM)?;
    if run.code != Some(1) || destroy.code != Some(0) {
        return Err(format!("bhyve (poweroff is 1): {run}; destroy: {destroy}"));
    }
    let dots = run.stdout.matches('.').count();
    if dots != 1000 {
        return Err(format!("bhyve printed {dots} dots, want 1000: {run}"));
    }
    let exits = Stats::parse(&stats.stdout)
        .user_exits()
        .ok_or_else(|| format!("no exit count in {}", stats.stdout))?;
    let delta = |cmd: u64| {
        let i = lane::CMDS.iter().position(|&c| c == cmd).unwrap_or(0);
        (
            after[i].0.saturating_sub(before[i].0),
            after[i].1.saturating_sub(before[i].1),
        )
    };
    let per = |(n, ns): (u64, u64)| if n == 0 { 0.0 } else { ns as f64 / n as f64 };
    let (runs, _) = delta(VM_RUN);
    if runs < 2000 {
        return Err(format!(
            "{runs} VM_RUNs went through the lane, want 2,000 or more (lanes off?)"
        ));
    }
    let all_ns: u64 = lane::CMDS.iter().map(|&c| delta(c).1).sum();
    Ok(ExitCost {
        vm_run: per(delta(VM_RUN)),
        get_register: per(delta(VM_GET_REGISTER)),
        set_register: per(delta(VM_SET_REGISTER)),
        per_exit: all_ns as f64 / exits.max(1) as f64,
        exits,
    })
}

/// `runs` runs on a served testbed on host CPU `cpu`; the median of each figure.
pub(crate) fn run_bench_exit(runs: usize, cpu: HostCpu) -> Result<ExitCost, String> {
    let (bed, socket, bin) = serve_for_guest("bench-exit", "console_exits", true, cpu)?;
    let mut all = Vec::new();
    for run in 0..runs {
        let c = one_run(&socket, &bin)?;
        eprintln!(
            "xtask: bench-exit run {run} ({} host): {} exits; instructions per VM_RUN {:.0}, VM_GET_REGISTER {:.0}, VM_SET_REGISTER {:.0}, per exit {:.0}",
            cpu.mode(),
            c.exits,
            c.vm_run,
            c.get_register,
            c.set_register,
            c.per_exit
        );
        all.push(c);
    }
    drop(bed);
    let m = |f: fn(&ExitCost) -> f64| median(all.iter().map(f).collect()).unwrap_or(0.0);
    Ok(ExitCost {
        vm_run: m(|c| c.vm_run),
        get_register: m(|c| c.get_register),
        set_register: m(|c| c.set_register),
        per_exit: m(|c| c.per_exit),
        exits: all.first().map_or(0, |c| c.exits),
    })
}

/// `bench-exit [--runs N] [--cpu cortex-a57|max]`: prints the table.
pub fn bench_exit(args: &[String]) -> Result<(), String> {
    let (cpu, rest) = crate::kernel::cpu_option(args)?;
    let runs = parse_runs("bench-exit", &rest, 3)?;
    let c = run_bench_exit(runs, cpu)?;
    println!(
        "\nemulated instructions on the testbed side of a userspace exit (lane requests, \
         -icount shift=0, {} host, median of {runs}; {} exits a run):",
        cpu.mode(),
        c.exits
    );
    println!("| VM_RUN | VM_GET_REGISTER | VM_SET_REGISTER | per exit (all requests) |");
    println!("|---|---|---|---|");
    println!(
        "| {:.0} | {:.0} | {:.0} | {:.0} |",
        c.vm_run, c.get_register, c.set_register, c.per_exit
    );
    Ok(())
}
