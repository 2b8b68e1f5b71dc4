//! The kernel-side commands; the work is in vmm-testbed-harness (tests/qemu), shared
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

pub fn check_x18() -> Result<(), String> {
    show(build::check_x18())
}

pub fn run_testbed(args: &[String]) -> Result<(), String> {
    let mut timeout = 120u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--timeout" => {
                timeout = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--timeout needs a number of seconds")?
            }
            other => return Err(format!("run-testbed: unknown argument {other}")),
        }
    }
    let kernel = build::build_testbed().map_err(|e| e.to_string())?;
    let out = qemu::run(&qemu::qemu_args(&kernel, 2), Duration::from_secs(timeout))
        .map_err(|e| e.to_string())?;
    print!("{}", out.log);
    let tests = qemu::parse_tests(&out.log);
    let failed = tests.iter().filter(|t| !t.pass).count();
    if out.timed_out {
        return Err(format!("QEMU killed after {timeout}s"));
    }
    if failed > 0 || tests.is_empty() {
        return Err(format!("{failed} of {} testbed tests failed", tests.len()));
    }
    eprintln!(
        "xtask: {} testbed tests passed in {:.1?}",
        tests.len(),
        out.elapsed
    );
    Ok(())
}

pub fn bench_el2() -> Result<(), String> {
    Err("bench-el2: not built yet".into())
}
