//! Processes under a hard timeout: each runs in its own process group, which is killed
//! when the deadline passes, so a hung tool never hangs the test.

use crate::Error;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmm_testbed_harness::{cmd, repo_root};

/// How a process ended.
#[derive(Debug, Clone)]
pub struct Output {
    /// The exit status; `None` when a signal ended it (also our timeout kill).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "exit {:?}{} after {:.1?}",
            self.code,
            if self.timed_out { " (timed out)" } else { "" },
            self.elapsed
        )?;
        writeln!(f, "[stdout]\n{}", self.stdout)?;
        write!(f, "[stderr]\n{}", self.stderr)
    }
}

/// A started process whose output is collected in the background.
pub struct Running {
    child: Child,
    start: Instant,
    out: Option<JoinHandle<String>>,
    err: Option<JoinHandle<String>>,
}

fn drain(r: Option<impl Read + Send + 'static>) -> Option<JoinHandle<String>> {
    r.map(|mut r| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    })
}

impl Running {
    /// Starts `cmd` in a new process group with stdin from /dev/null and stdout,
    /// stderr collected.
    pub fn spawn(cmd: &mut Command) -> Result<Running, Error> {
        Self::start(cmd.stdout(Stdio::piped()))
    }

    /// As [`Running::spawn`], but stdout goes where `cmd` already sends it (a file
    /// the caller watches while the process runs).
    pub fn spawn_keep_stdout(cmd: &mut Command) -> Result<Running, Error> {
        Self::start(cmd)
    }

    fn start(cmd: &mut Command) -> Result<Running, Error> {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| Error::Io(what, e))?;
        let out = drain(child.stdout.take());
        let err = drain(child.stderr.take());
        Ok(Running {
            child,
            start: Instant::now(),
            out,
            err,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the process exits or `timeout` passed since it started; then its
    /// process group is killed.
    pub fn wait(mut self, timeout: Duration) -> Output {
        let mut timed_out = false;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if self.start.elapsed() >= timeout => {
                    timed_out = true;
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break None,
            }
        };
        let elapsed = self.start.elapsed();
        let pgid = self.child.id() as i32;
        // SAFETY: kill(2) on the process group we created for this child (pgid = its
        // pid); it also ends any process the tool started.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let status = status.or_else(|| self.child.wait().ok());
        Output {
            code: status.and_then(|s| s.code()),
            stdout: self
                .out
                .take()
                .and_then(|h| h.join().ok())
                .unwrap_or_default(),
            stderr: self
                .err
                .take()
                .and_then(|h| h.join().ok())
                .unwrap_or_default(),
            timed_out,
            elapsed,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A test that panicked while the tool ran must not leave it behind.
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: as in `wait`: our child's own process group.
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// Runs `cmd` to completion under `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output, Error> {
    Ok(Running::spawn(cmd)?.wait(timeout))
}

pub use vmm_testbed_harness::cmd::bin_dir;

/// Builds the tools and the broker with the workspace's cargo (a no-op when current).
pub fn build_tools() -> Result<(), Error> {
    Ok(cmd::run(
        "build the tools and the broker",
        cmd::cargo()
            .current_dir(repo_root())
            .args(["build", "-q"])
            .args(["-p", "bhyveload", "-p", "bhyve", "-p", "bhyvectl"])
            .args(["-p", "vmm-testbed-broker"]),
    )?)
}

/// The path of tool `name` built by [`build_tools`].
pub fn tool(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// Tool `name` ([`tool`]) talking to the served testbed at `socket`.
pub fn tool_on(name: &str, socket: &std::path::Path) -> Command {
    let mut c = Command::new(tool(name));
    c.env("VMM_TESTBED", socket);
    c
}
