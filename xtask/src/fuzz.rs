//! `cargo xtask fuzz list | run TARGET [--secs N] | ci [--secs N]`: the coverage-guided
//! fuzz targets in fuzz/ (libFuzzer through libfuzzer-sys), built with the stable
//! toolchain's SanitizerCoverage passes, as cargo-fuzz builds them (docs/fuzzing.md).
//!
//! A run reads the committed seeds (fuzz/corpus/TARGET) and the crashes already found
//! and fixed (fuzz/regressions/TARGET, each run once first: they must pass), and keeps
//! what it discovers in target/fuzz/corpus/TARGET. A crash is written to
//! target/fuzz/artifacts/TARGET/ and fails the command.

use std::path::{Path, PathBuf};
use std::process::Command;
use vmm_testbed_harness::cmd::{cargo, run};
use vmm_testbed_harness::repo_root;

/// The flags cargo-fuzz passes for libFuzzer's coverage feedback (stable rustc flags).
const SANCOV: &str = "-Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing";
const HOST: &str = "x86_64-unknown-linux-gnu";

fn fuzz_dir() -> PathBuf {
    repo_root().join("fuzz")
}

fn work_dir() -> PathBuf {
    repo_root().join("target/fuzz")
}

/// The targets: the `[[bin]]` names of fuzz/Cargo.toml.
pub fn targets() -> Result<Vec<String>, String> {
    let manifest = fuzz_dir().join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| format!("reading {}: {e}", manifest.display()))?;
    let mut out = Vec::new();
    let mut in_bin = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin {
            if let Some(v) = line.strip_prefix("name = ") {
                out.push(v.trim_matches('"').to_string());
            }
        }
    }
    Ok(out)
}

fn build() -> Result<PathBuf, String> {
    run(
        "build the fuzz targets",
        cargo()
            .current_dir(fuzz_dir())
            .env("RUSTFLAGS", SANCOV)
            .args(["build", "--release", "--bins", "--target", HOST])
            .arg("--target-dir")
            .arg(work_dir().join("build")),
    )?;
    Ok(work_dir().join("build").join(HOST).join("release"))
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs `target` (built in `bin`) for `secs` seconds; prints libFuzzer's final stats.
fn run_one(bin: &Path, target: &str, secs: u64) -> Result<(), String> {
    let exe = bin.join(target);
    let artifacts = work_dir().join("artifacts").join(target);
    let corpus = work_dir().join("corpus").join(target);
    let seeds = fuzz_dir().join("corpus").join(target);
    for d in [&artifacts, &corpus] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let regressions = files_in(&fuzz_dir().join("regressions").join(target));
    if !regressions.is_empty() {
        run(
            &format!("{target}: {} regression inputs", regressions.len()),
            Command::new(&exe).args(&regressions),
        )?;
    }
    let mut cmd = Command::new(&exe);
    cmd.arg(format!("-max_total_time={secs}"))
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    run(&format!("fuzz {target} for {secs} s"), &mut cmd).map_err(|e| {
        format!(
            "{e}\nfuzz target {target} failed: the input is in {} (make it a regression: fuzz/regressions/{target}/)",
            artifacts.display()
        )
    })?;
    Ok(())
}

fn secs_option(command: &str, args: &[String], default: u64) -> Result<u64, String> {
    crate::number_option(command, args, ("--secs", "a number of seconds"), default)
}

pub fn fuzz(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("list") => {
            for t in targets()? {
                println!("{t}");
            }
            Ok(())
        }
        Some("run") => {
            let target = args
                .get(1)
                .ok_or("fuzz run: which target? (cargo xtask fuzz list)")?;
            let all = targets()?;
            if !all.contains(target) {
                return Err(format!(
                    "fuzz run: no target {target}; the targets are {}",
                    all.join(", ")
                ));
            }
            let secs = secs_option("fuzz run", &args[2..], 60)?;
            let bin = build()?;
            run_one(&bin, target, secs)
        }
        Some("ci") => ci(secs_option("fuzz ci", &args[1..], 10)?),
        _ => Err("usage: cargo xtask fuzz list | run TARGET [--secs N] | ci [--secs N]".into()),
    }
}

/// Every target for `secs` seconds on its committed seeds, after its regressions.
pub fn ci(secs: u64) -> Result<(), String> {
    let bin = build()?;
    for t in targets()? {
        run_one(&bin, &t, secs)?;
    }
    Ok(())
}
