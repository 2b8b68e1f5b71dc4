//! A served testbed of one's own (QEMU and the broker in their own process groups, in
//! their own directory), stopped when dropped or when its watchdog fires, so a stuck
//! guest can never outlive the test.

use crate::Error;
use libvmmapi::testbed::Testbed;
use libvmmapi::{Backend, Request, Target};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm_sys::wire;
use vmm_testbed_broker::launch::{self, Layout};
use vmm_testbed_harness::build;

pub struct Bed {
    pub layout: Layout,
    pub socket: PathBuf,
    done: Arc<AtomicBool>,
}

impl Bed {
    /// Builds the testbed kernel, starts QEMU and the broker in `dir` (stopping what a
    /// previous run left there) and arms a watchdog that stops them after `limit`.
    pub fn start(dir: &Path, limit: Duration) -> Result<Bed, Error> {
        let kernel = build::build_testbed().map_err(|e| Error::Testbed(e.to_string()))?;
        let layout = Layout::new(dir);
        launch::down(&layout);
        let socket = launch::up(
            &kernel,
            &crate::proc::tool("vmm-testbed-broker"),
            &layout,
            Duration::from_secs(120),
        )
        .map_err(|e| Error::Testbed(e.to_string()))?;
        let done = Arc::new(AtomicBool::new(false));
        {
            let (done, layout) = (done.clone(), layout.clone());
            std::thread::spawn(move || {
                let t = Instant::now();
                while !done.load(Ordering::Acquire) {
                    if t.elapsed() > limit {
                        eprintln!("watchdog: testbed stopped after {limit:?}");
                        launch::down(&layout);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        }
        Ok(Bed {
            layout,
            socket,
            done,
        })
    }

    /// The broker's and the testbed's own logs (the testbed kernel's serial console).
    pub fn logs(&self) -> String {
        format!(
            "[broker log {}]\n{}\n[testbed serial log {}]\n{}",
            self.layout.broker_log().display(),
            std::fs::read_to_string(self.layout.broker_log()).unwrap_or_default(),
            self.layout.qemu_log().display(),
            std::fs::read_to_string(self.layout.qemu_log()).unwrap_or_default()
        )
    }

    /// The QEMU process (for its CPU time).
    pub fn qemu_pid(&self) -> Option<i32> {
        launch::status(&self.layout)
            .into_iter()
            .find(|s| s.0 == "qemu" && s.2)
            .map(|s| s.1)
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

impl Drop for Bed {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
        launch::down(&self.layout);
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
