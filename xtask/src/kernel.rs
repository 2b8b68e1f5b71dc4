//! The kernel-side commands; the work is in vmm-testbed-harness (tests/testbed-harness), shared
//! with the QEMU tests.

use std::time::Duration;
use vmm_testbed_harness::{build, qemu};

fn show<T: std::fmt::Display>(r: Result<T, vmm_testbed_harness::Error>) -> Result<(), String> {
    match r {
        Ok(v) => {
            eprintln!("xtask: {v}");
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

pub fn build_el2() -> Result<(), String> {
    show(build::build_el2().map(|p| format!("EL2 blob: {}", p.display())))
}

pub fn build_guests() -> Result<(), String> {
    show(build::build_guests().map(|p| format!("guest programs in {}", p.display())))
}

pub fn build_testbed() -> Result<(), String> {
    show(build::build_testbed().map(|p| format!("testbed kernel: {}", p.display())))
}

pub fn lint_kernel() -> Result<(), String> {
    show(build::lint_kernel().map(|()| "el2 and testbed: fmt and clippy clean"))
}

pub fn check_x18() -> Result<(), String> {
    show(build::check_x18())
}

/// `run-testbed [--timeout SECS] [--cpu cortex-a57|max]`: the CPU (and so the host
/// mode) defaults to $VMM_TESTBED_CPU, else cortex-a57.
pub fn run_testbed(args: &[String]) -> Result<(), String> {
    let (cpu, rest) = cpu_option(args)?;
    let timeout = crate::number_option(
        "run-testbed",
        &rest,
        ("--timeout", "a number of seconds"),
        120,
    )?;
    let kernel = build::build_testbed()?;
    eprintln!(
        "xtask: testbed on -cpu {} (mode: {})",
        cpu.qemu_cpu(),
        cpu.mode()
    );
    let out = qemu::run(
        &qemu::qemu_args(&kernel, 2, cpu),
        Duration::from_secs(timeout),
    )?;
    print!("{}", out.log);
    let tests = qemu::parse_tests(&out.log);
    let failed = tests.iter().filter(|t| !t.pass).count();
    if out.timed_out {
        return Err(format!("QEMU killed after {timeout}s"));
    }
    if failed > 0 || tests.is_empty() {
        return Err(format!("{failed} of {} testbed tests failed", tests.len()));
    }
    if !qemu::testbed_finished(&out.log) {
        return Err(format!(
            "the testbed stopped after {} tests without finishing (see its log above)",
            tests.len()
        ));
    }
    eprintln!(
        "xtask: {} testbed tests passed in {:.1?}",
        tests.len(),
        out.elapsed
    );
    Ok(())
}

/// What the exit-cost benchmark printed: `(path, exit, instructions per exit)` rows
/// and its info lines.
pub(crate) struct El2Costs {
    pub rows: Vec<(String, String, u64)>,
    pub info: Vec<String>,
}

impl El2Costs {
    /// Instructions per exit of `what` on `path`.
    pub fn get(&self, path: &str, what: &str) -> Option<u64> {
        self.rows
            .iter()
            .find(|(p, w, _)| p == path && w == what)
            .map(|r| r.2)
    }
}

/// Runs the exit-cost benchmark under `-icount shift=0` (one emulated instruction = 1
/// ns of virtual time) on host CPU `cpu`: the testbed runs its benchmark instead of its
/// tests when QEMU's generic loader leaves the word "BNCH" below the kernel image.
pub(crate) fn run_bench_el2(cpu: qemu::HostCpu) -> Result<El2Costs, String> {
    let kernel = build::build_testbed()?;
    eprintln!(
        "xtask: bench-el2 on -cpu {} (mode: {})",
        cpu.qemu_cpu(),
        cpu.mode()
    );
    let mut args = qemu::qemu_args(&kernel, 2, cpu);
    args.extend(
        [
            "-icount",
            "shift=0",
            "-device",
            "loader,addr=0x401ff000,data=0x48434e42,data-len=4",
        ]
        .map(String::from),
    );
    let out = qemu::run(&args, Duration::from_secs(300))?;
    let lines: Vec<&str> = out
        .log
        .lines()
        .filter(|l| l.starts_with("BENCH "))
        .collect();
    if out.timed_out || !lines.iter().any(|l| l.trim() == "BENCH done") {
        return Err(format!("benchmark did not finish; log:\n{}", out.log));
    }
    if let Some(e) = lines.iter().find(|l| l.starts_with("BENCH error")) {
        return Err(format!("benchmark failed: {e}"));
    }
    let mut costs = El2Costs {
        rows: Vec::new(),
        info: Vec::new(),
    };
    for l in &lines {
        if let Some(info) = l.strip_prefix("BENCH info ") {
            costs.info.push(info.to_string());
            continue;
        }
        let f: Vec<&str> = l.split_whitespace().collect();
        if let [_, path, what, n] = f[..] {
            if what != "empty_loop_total" && path != "start" {
                if let Ok(n) = n.parse() {
                    costs.rows.push((path.to_string(), what.to_string(), n));
                }
            }
        }
    }
    Ok(costs)
}

/// `bench-el2 [--cpu cortex-a57|max]`: prints the exit costs; nothing is asserted.
pub fn bench_el2(args: &[String]) -> Result<(), String> {
    let (cpu, rest) = cpu_option(args)?;
    if let Some(a) = rest.first() {
        return Err(format!("bench-el2: unknown argument {a}"));
    }
    let costs = run_bench_el2(cpu)?;
    println!(
        "{:<18} {:<16} {:>22}",
        "path", "exit", "instructions per exit"
    );
    for (path, what, n) in &costs.rows {
        println!("{path:<18} {what:<16} {n:>22}");
    }
    for info in &costs.info {
        println!("({info})");
    }
    Ok(())
}

/// Takes `--cpu NAME` out of `args`: the host CPU it names (else $VMM_TESTBED_CPU's,
/// else cortex-a57) and the other arguments.
pub(crate) fn cpu_option(args: &[String]) -> Result<(qemu::HostCpu, Vec<String>), String> {
    let mut cpu = qemu::HostCpu::from_env()?;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--cpu" {
            let name = it.next().ok_or("--cpu needs cortex-a57 or max")?;
            cpu = qemu::HostCpu::parse(name)?;
        } else {
            rest.push(a.clone());
        }
    }
    Ok((cpu, rest))
}
