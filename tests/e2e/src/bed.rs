//! A served testbed of one's own (QEMU and the broker in their own process groups, in
//! their own directory), stopped when dropped or when its watchdog fires, so a stuck
//! guest can never outlive the test.

use crate::Error;
use libvmmapi::testbed::Testbed;
use libvmmapi::{Backend, Request, Target};
use std::path::Path;
use std::time::Duration;
use vmm_sys::wire;
use vmm_testbed_broker::launch::{HostCpu, Layout, Served};
use vmm_testbed_harness::build;

/// A [`Served`] testbed with a watchdog, and what the e2e tests ask of it.
pub struct Bed(Served);

impl std::ops::Deref for Bed {
    type Target = Served;
    fn deref(&self) -> &Served {
        &self.0
    }
}

impl Bed {
    /// Builds the testbed kernel, starts QEMU and the broker in `dir` (stopping what a
    /// previous run left there) and arms a watchdog that stops them after `limit`.
    pub fn start(dir: &Path, limit: Duration) -> Result<Bed, Error> {
        let kernel = build::build_testbed().map_err(|e| Error::Testbed(e.to_string()))?;
        let cpu = HostCpu::from_env().map_err(|e| Error::Testbed(e.to_string()))?;
        Served::start(
            &kernel,
            &crate::proc::tool("vmm-testbed-broker"),
            Layout::new(dir),
            cpu,
            &[],
            Some(limit),
        )
        .map(Bed)
        .map_err(|e| Error::Testbed(e.to_string()))
    }

    /// The testbed of end-to-end test `name`, in its [`crate::test_dir`], with the
    /// tools built.
    pub fn for_test(name: &str, limit: Duration) -> Result<Bed, Error> {
        crate::proc::build_tools()?;
        Bed::start(&crate::test_dir(name), limit)
    }

    /// Free pages of the testbed's page allocator (the `TESTBED_FREE_PAGES` extension).
    pub fn free_pages(&self) -> Result<u64, Error> {
        let tb = Testbed::connect(&self.socket).map_err(|e| Error::Testbed(e.to_string()))?;
        let mut req = Request {
            target: Target::Ctl,
            cmd: wire::TESTBED_FREE_PAGES,
            arg: vec![0; 8],
            buffers: Vec::new(),
        };
        tb.execute(&mut req)
            .map_err(|e| Error::Testbed(format!("TESTBED_FREE_PAGES: {e}")))?;
        let b: [u8; 8] = req.arg[..8]
            .try_into()
            .map_err(|_| Error::Testbed("TESTBED_FREE_PAGES: short answer".into()))?;
        Ok(u64::from_le_bytes(b))
    }
}

/// CPU time (user + system) a process has used so far, from /proc/PID/stat.
pub fn cpu_time(pid: i32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0)?;
    Some(Duration::from_millis(ticks * 1000 / hz))
}
