//! Running the testbed kernel in QEMU with a hard timeout, and reading its serial log.

use crate::Error;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The CPU the testbed host runs on, which decides its host mode: the Armv8.0
/// cortex-a57 has no VHE, so the testbed kernel runs at EL1 under the hyp stub (an
/// nVHE host); QEMU's `max` has VHE, so the kernel stays at EL2 with E2H and TGE (a
/// VHE host, as FreeBSD 15 on every Armv8.1+ CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostCpu {
    CortexA57,
    Max,
}

impl HostCpu {
    /// `cortex-a57` or `max`.
    pub fn parse(name: &str) -> Result<HostCpu, Error> {
        match name {
            "cortex-a57" => Ok(HostCpu::CortexA57),
            "max" => Ok(HostCpu::Max),
            _ => Err(Error::Check(format!(
                "unknown testbed CPU '{name}' (known: cortex-a57, max)"
            ))),
        }
    }

    /// $VMM_TESTBED_CPU, or cortex-a57 when it is unset.
    pub fn from_env() -> Result<HostCpu, Error> {
        match std::env::var("VMM_TESTBED_CPU") {
            Ok(v) => HostCpu::parse(&v),
            Err(_) => Ok(HostCpu::CortexA57),
        }
    }

    /// QEMU's `-cpu` value. `max` takes the implementation-defined pointer
    /// authentication algorithm: QARMA5 under TCG is many times slower.
    pub fn qemu_cpu(self) -> &'static str {
        match self {
            HostCpu::CortexA57 => "cortex-a57",
            HostCpu::Max => "max,pauth-impdef=on",
        }
    }

    /// The host mode the testbed kernel runs in on this CPU.
    pub fn mode(self) -> &'static str {
        match self {
            HostCpu::CortexA57 => "nvhe",
            HostCpu::Max => "vhe",
        }
    }
}

/// The board the testbed targets (DESIGN.md "The testbed").
pub fn qemu_args(kernel: &Path, smp: u32, cpu: HostCpu) -> Vec<String> {
    board_args(kernel, smp, cpu, "virt,virtualization=on,gic-version=3")
}

/// The same board with the Memory Tagging Extension (`max` implements MTE only with
/// tag memory on the board).
pub fn qemu_args_mte(kernel: &Path, smp: u32) -> Vec<String> {
    board_args(
        kernel,
        smp,
        HostCpu::Max,
        "virt,virtualization=on,gic-version=3,mte=on",
    )
}

fn board_args(kernel: &Path, smp: u32, cpu: HostCpu, machine: &str) -> Vec<String> {
    [
        "-M",
        machine,
        "-cpu",
        cpu.qemu_cpu(),
        "-smp",
        &smp.to_string(),
        "-m",
        "1G",
        "-nographic",
        "-no-reboot",
        "-kernel",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([kernel.display().to_string()])
    .collect()
}

pub struct RunOutput {
    /// Everything the testbed printed on its console.
    pub log: String,
    pub timed_out: bool,
    pub elapsed: Duration,
}

/// Runs QEMU in its own process group; after `timeout` the whole group is killed.
pub fn run(args: &[String], timeout: Duration) -> Result<RunOutput, Error> {
    let start = Instant::now();
    let mut child = Command::new("qemu-system-aarch64")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Spawn {
            what: "qemu-system-aarch64".into(),
            source,
        })?;
    let pid = child.id() as i32;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::Check("no stdout".into()))?;
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let mut timed_out = false;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() > timeout => {
                timed_out = true;
                // SAFETY: kill(2) on the process group we created for QEMU.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                let _ = child.wait();
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                return Err(Error::Spawn {
                    what: "wait for qemu".into(),
                    source: e,
                })
            }
        }
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let out = reader.join().unwrap_or_default();
    let mut log = String::from_utf8_lossy(&out).replace('\r', "");
    if !err.is_empty() {
        log.push_str("\n[qemu stderr]\n");
        log.push_str(&err);
    }
    Ok(RunOutput {
        log,
        timed_out,
        elapsed: start.elapsed(),
    })
}

/// One `TEST <name> PASS|FAIL <detail>` line of the serial log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestLine {
    pub name: String,
    pub pass: bool,
    pub detail: String,
}

/// Whether the testbed ran to its end: it prints `TESTBED DONE` after its last test (a
/// panic on the way stops it before any later `TEST` line is printed).
pub fn testbed_finished(log: &str) -> bool {
    log.lines().any(|l| l.trim().starts_with("TESTBED DONE"))
}

pub fn parse_tests(log: &str) -> Vec<TestLine> {
    log.lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("TEST ")?;
            let mut it = rest.splitn(3, ' ');
            let name = it.next()?.to_string();
            let pass = match it.next()? {
                "PASS" => true,
                "FAIL" => false,
                _ => return None,
            };
            Some(TestLine {
                name,
                pass,
                detail: it.next().unwrap_or("").to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_test_lines() {
        let log = "boot\nTEST a PASS fine\nTEST b FAIL x=1 y=2\nTEST c MAYBE\nnoise TEST d PASS\n";
        let t = parse_tests(log);
        assert_eq!(t.len(), 2);
        assert_eq!(
            t[0],
            TestLine {
                name: "a".into(),
                pass: true,
                detail: "fine".into()
            }
        );
        assert_eq!(t[1].detail, "x=1 y=2");
        assert!(!t[1].pass);
    }
}
