//! `cargo xtask testbed up|down|status`: a served testbed in the background (QEMU and
//! the broker in their own process groups, pid files and logs in target/testbed), for
//! the tools to use through `VMM_TESTBED` (docs/testbed.md, "Serving /dev/vmm").

use std::path::PathBuf;
use std::time::Duration;
use vmm_testbed_broker::launch::{self, Layout};
use vmm_testbed_harness::{build, cmd, repo_root};

fn layout() -> Layout {
    Layout::new(repo_root().join("target/testbed"))
}

/// Builds the broker with the workspace's cargo and target dir; returns the binary.
fn build_broker() -> Result<PathBuf, String> {
    cmd::run(
        "build the broker",
        cmd::cargo()
            .current_dir(repo_root())
            .args(["build", "-q", "-p", "vmm-testbed-broker"]),
    )?;
    Ok(cmd::bin_dir().join("vmm-testbed-broker"))
}

/// `--cpu NAME` after `up`: the host CPU (and so the mode), else $VMM_TESTBED_CPU's,
/// else cortex-a57.
fn up_cpu(args: &[String]) -> Result<launch::HostCpu, String> {
    match args {
        [] => Ok(launch::HostCpu::from_env()?),
        [opt, name] if opt == "--cpu" => Ok(launch::HostCpu::parse(name)?),
        _ => Err("usage: cargo xtask testbed up [--cpu cortex-a57|max]".into()),
    }
}

pub fn testbed(args: &[String]) -> Result<(), String> {
    let l = layout();
    match args.first().map(String::as_str) {
        Some("up") => {
            let cpu = up_cpu(&args[1..])?;
            // Idempotent: a testbed that is up in this mode stays as it is.
            let st = launch::status(&l);
            if !st.is_empty() && st.iter().all(|s| s.2) && l.socket().exists() {
                let mode = launch::mode(&l).unwrap_or_else(|| "unknown".into());
                if mode != cpu.mode() {
                    return Err(format!(
                        "the testbed is up in mode {mode}, not {} (cargo xtask testbed down first)",
                        cpu.mode()
                    ));
                }
                eprintln!("xtask: the testbed is already up (mode: {mode})");
                println!("export VMM_TESTBED={}", l.socket().display());
                return Ok(());
            }
            // Half up (one process died): clean up and start afresh.
            launch::down(&l);
            let kernel = build::build_testbed()?;
            let broker = build_broker()?;
            let sock = launch::up(&kernel, &broker, &l, Duration::from_secs(120), cpu)
                .map_err(|e| e.to_string())?;
            eprintln!(
                "xtask: testbed up on -cpu {} (mode: {}; logs in {}; stop with cargo xtask testbed down)",
                cpu.qemu_cpu(),
                cpu.mode(),
                l.dir.display()
            );
            println!("export VMM_TESTBED={}", sock.display());
            Ok(())
        }
        Some("down") => {
            let stopped = launch::down(&l);
            if stopped.is_empty() {
                eprintln!("xtask: no testbed was running");
            }
            for (what, pid) in stopped {
                eprintln!("xtask: stopped {what} (process group {pid})");
            }
            Ok(())
        }
        Some("status") => {
            let st = launch::status(&l);
            if st.is_empty() || st.iter().any(|s| !s.2) {
                for (what, pid, live) in &st {
                    eprintln!(
                        "{what}: pid {pid} {}",
                        if *live { "running" } else { "gone" }
                    );
                }
                return Err("testbed is not up".into());
            }
            for (what, pid, _) in st {
                println!("{what}: pid {pid} running");
            }
            println!(
                "mode: {}",
                launch::mode(&l).unwrap_or_else(|| "unknown".into())
            );
            println!("export VMM_TESTBED={}", l.socket().display());
            Ok(())
        }
        _ => Err("usage: cargo xtask testbed up [--cpu cortex-a57|max] | down | status".into()),
    }
}
