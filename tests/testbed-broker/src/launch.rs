//! Starting and stopping a served testbed: QEMU (the testbed kernel in server mode, RAM
//! in a shared file, the virtio console on a chardev socket) and the broker, each in
//! its own process group, with pid files and logs in one directory. Used by
//! `cargo xtask testbed up|down|status` and by this crate's tests.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
pub use vmm_testbed_harness::qemu::HostCpu;

/// The shared-memory (tmpfs) file system, where the RAM file goes when it exists.
const SHM: &str = "/dev/shm";

/// What goes where inside the testbed's directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: impl Into<PathBuf>) -> Layout {
        Layout { dir: dir.into() }
    }
    /// The broker's client socket (`VMM_TESTBED`).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("vmm.sock")
    }
    pub fn qemu_socket(&self) -> PathBuf {
        self.dir.join("qemu-chardev.sock")
    }
    /// The testbed's RAM file (QEMU's memory backend, which the broker names to its
    /// clients): in the shared-memory file system when there is one, so guest memory
    /// costs no disk writeback, named after this directory; else in the directory.
    pub fn ram(&self) -> PathBuf {
        let shm = Path::new(SHM);
        if !shm.is_dir() {
            return self.dir.join("ram");
        }
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(
            &fs::canonicalize(&self.dir).unwrap_or(self.dir.clone()),
            &mut h,
        );
        shm.join(format!(
            "vmm-testbed-{:016x}.ram",
            std::hash::Hasher::finish(&h)
        ))
    }
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }
    pub fn broker_log(&self) -> PathBuf {
        self.dir.join("broker.log")
    }
    /// The host mode the testbed in this directory was started in (`nvhe`, `vhe`).
    pub fn mode_file(&self) -> PathBuf {
        self.dir.join("mode")
    }
    fn pid_file(&self, what: &str) -> PathBuf {
        self.dir.join(format!("{what}.pid"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("the testbed in {0} is already up (cargo xtask testbed down first)")]
    AlreadyUp(PathBuf),
    #[error("the testbed did not come up: {0}")]
    NotUp(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LaunchError {
    let w = what.into();
    move |e| LaunchError::Io(w, e)
}

/// The served testbed's run CPUs: CPU 0 serves the channel, these run vCPUs, so a
/// 2-vCPU guest runs in parallel.
pub const RUN_CPUS: usize = 2;

/// QEMU's command line for a served testbed on `cpu` (DESIGN.md, "The testbed").
pub fn qemu_args(kernel: &Path, l: &Layout, cpu: HostCpu) -> Vec<String> {
    let smp = (RUN_CPUS + 1).to_string();
    let mut a: Vec<String> = [
        "-M",
        "virt,virtualization=on,gic-version=3,memory-backend=ram",
        "-cpu",
        cpu.qemu_cpu(),
        "-smp",
        &smp,
        "-m",
        "1G",
        "-nographic",
        "-no-reboot",
        "-global",
        "virtio-mmio.force-legacy=false",
        "-device",
        "virtio-serial-device",
        "-device",
        "virtconsole,chardev=vmmch",
        // The loader word "SERV" below the kernel selects server mode.
        "-device",
        "loader,addr=0x401ff000,data=0x56524553,data-len=4",
    ]
    .map(String::from)
    .to_vec();
    a.push("-object".into());
    a.push(format!(
        "memory-backend-file,id=ram,size=1G,mem-path={},share=on",
        l.ram().display()
    ));
    a.push("-chardev".into());
    a.push(format!(
        "socket,id=vmmch,path={},server=on,wait=off",
        l.qemu_socket().display()
    ));
    a.push("-kernel".into());
    a.push(kernel.display().to_string());
    a
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// The running processes of a testbed directory: (what, pid) for QEMU and the broker.
pub fn status(l: &Layout) -> Vec<(&'static str, i32, bool)> {
    ["qemu", "broker"]
        .into_iter()
        .filter_map(|w| read_pid(&l.pid_file(w)).map(|p| (w, p, alive(p))))
        .collect()
}

/// The host mode of the testbed last started in `l`'s directory.
pub fn mode(l: &Layout) -> Option<String> {
    Some(fs::read_to_string(l.mode_file()).ok()?.trim().to_string())
}

/// Starts QEMU on `cpu` and the broker in the background; returns the broker's socket
/// once the testbed has answered a request.
pub fn up(
    kernel: &Path,
    broker: &Path,
    l: &Layout,
    timeout: Duration,
    cpu: HostCpu,
) -> Result<PathBuf, LaunchError> {
    up_with_qemu_args(kernel, broker, l, timeout, cpu, &[])
}

/// As [`up`], with `extra` appended to QEMU's command line (`cargo xtask bench-boot`
/// runs the testbed under `-icount shift=0`).
pub fn up_with_qemu_args(
    kernel: &Path,
    broker: &Path,
    l: &Layout,
    timeout: Duration,
    cpu: HostCpu,
    extra: &[String],
) -> Result<PathBuf, LaunchError> {
    if status(l).iter().any(|s| s.2) {
        return Err(LaunchError::AlreadyUp(l.dir.clone()));
    }
    fs::create_dir_all(&l.dir).map_err(io(l.dir.display().to_string()))?;
    for p in [l.socket(), l.qemu_socket(), l.ram()] {
        let _ = fs::remove_file(p);
    }
    fs::write(l.mode_file(), cpu.mode()).map_err(io("mode"))?;
    let qlog = fs::File::create(l.qemu_log()).map_err(io("qemu.log"))?;
    let qemu = Command::new("qemu-system-aarch64")
        .args(qemu_args(kernel, l, cpu))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(qlog.try_clone().map_err(io("qemu.log"))?)
        .stderr(qlog)
        .process_group(0)
        .spawn()
        .map_err(io("qemu-system-aarch64"))?;
    fs::write(l.pid_file("qemu"), qemu.id().to_string()).map_err(io("qemu.pid"))?;
    let blog = fs::File::create(l.broker_log()).map_err(io("broker.log"))?;
    let mut b = Command::new(broker)
        .arg("--qemu")
        .arg(l.qemu_socket())
        .arg("--listen")
        .arg(l.socket())
        .arg("--ram")
        .arg(l.ram())
        .arg("--timeout")
        .arg(timeout.as_secs().max(1).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(blog)
        .process_group(0)
        .spawn()
        .map_err(io(broker.display().to_string()))?;
    fs::write(l.pid_file("broker"), b.id().to_string()).map_err(io("broker.pid"))?;
    // The broker prints `export VMM_TESTBED=...` once the testbed answered.
    let out = b.stdout.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        if let Some(o) = out {
            let mut r = BufReader::new(o);
            let _ = r.read_line(&mut line);
            // Keep draining so the broker never blocks on a full pipe.
            let _ = tx.send(line);
            let mut sink = String::new();
            while r.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        }
    });
    let start = Instant::now();
    let fail = |why: String| {
        down(l);
        let log = fs::read_to_string(l.qemu_log()).unwrap_or_default();
        let blog = fs::read_to_string(l.broker_log()).unwrap_or_default();
        LaunchError::NotUp(format!(
            "{why}\n[broker log]\n{blog}\n[testbed serial log]\n{log}"
        ))
    };
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.starts_with("export VMM_TESTBED=") => return Ok(l.socket()),
            Ok(line) => return Err(fail(format!("broker said {line:?}"))),
            Err(_) if start.elapsed() > timeout + Duration::from_secs(5) => {
                return Err(fail(format!("no answer within {timeout:?}")))
            }
            Err(_) => {
                if let Ok(Some(st)) = b.try_wait() {
                    return Err(fail(format!("broker exited ({st})")));
                }
            }
        }
    }
}

/// Stops both process groups (TERM, then KILL) and removes the pid files, sockets and
/// the RAM file; the logs stay. Returns what was stopped.
pub fn down(l: &Layout) -> Vec<(&'static str, i32)> {
    let mut stopped = Vec::new();
    for (what, pid, live) in status(l) {
        if live {
            // SAFETY: kill(2) on the process group we created for it (pgid = pid).
            unsafe { libc::kill(-pid, libc::SIGTERM) };
            let t = Instant::now();
            while alive(pid) && t.elapsed() < Duration::from_secs(3) {
                reap(pid);
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive(pid) {
                // SAFETY: as above.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                reap(pid);
            }
            stopped.push((what, pid));
        }
        let _ = fs::remove_file(l.pid_file(what));
    }
    for p in [l.socket(), l.qemu_socket(), l.ram()] {
        let _ = fs::remove_file(p);
    }
    stopped
}

/// Collects a child of ours that exited (a no-op for processes we did not start).
fn reap(pid: i32) {
    let mut st = 0;
    // SAFETY: waitpid with WNOHANG on one pid; harmless if it is not our child.
    unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
}

/// A served testbed of one's own: started in its own directory (what a previous run
/// left there is stopped first) and stopped when dropped or, with a limit, by a
/// watchdog once the limit has passed, so a stuck guest never outlives its test.
pub struct Served {
    pub layout: Layout,
    /// The broker's client socket (`VMM_TESTBED`).
    pub socket: PathBuf,
    done: Arc<AtomicBool>,
}

impl Served {
    /// Starts the testbed `kernel` on `cpu` with `broker` in `layout`'s directory,
    /// `qemu_extra` appended to QEMU's command line.
    pub fn start(
        kernel: &Path,
        broker: &Path,
        layout: Layout,
        cpu: HostCpu,
        qemu_extra: &[String],
        limit: Option<Duration>,
    ) -> Result<Served, LaunchError> {
        down(&layout);
        let socket = up_with_qemu_args(
            kernel,
            broker,
            &layout,
            Duration::from_secs(120),
            cpu,
            qemu_extra,
        )?;
        let done = Arc::new(AtomicBool::new(false));
        if let Some(limit) = limit {
            let (done, layout) = (done.clone(), layout.clone());
            std::thread::spawn(move || {
                let t = Instant::now();
                while !done.load(Ordering::Acquire) {
                    if t.elapsed() > limit {
                        eprintln!("watchdog: testbed stopped after {limit:?}");
                        down(&layout);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        }
        Ok(Served {
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
            fs::read_to_string(self.layout.broker_log()).unwrap_or_default(),
            self.layout.qemu_log().display(),
            fs::read_to_string(self.layout.qemu_log()).unwrap_or_default()
        )
    }

    /// The QEMU process (for its CPU time).
    pub fn qemu_pid(&self) -> Option<i32> {
        status(&self.layout)
            .into_iter()
            .find(|s| s.0 == "qemu" && s.2)
            .map(|s| s.1)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
        down(&self.layout);
    }
}
