//! `cargo xtask soak [--secs N] [--workers N]`: a racing soak of the served testbed
//! through the real tools. Each worker, until the time is up, at random: loads a VM
//! with bhyveload (sometimes twice: VM_REINIT), runs it with bhyve while it reads its
//! statistics, kills bhyve with SIGKILL or SIGTERM at a random moment, and destroys the
//! VM with bhyvectl; one more thread raises and lowers interrupt lines of whichever
//! VMs exist. Every tool call has a time limit (a hang fails the
//! soak). At the end no VM is left (every worker destroyed its own, so a killed bhyve
//! always left one `bhyvectl --destroy` removes) and the testbed has its free pages
//! back.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_e2e::bed::Bed;
use vmm_e2e::proc::{self, Running};
use vmm_testbed_harness::build;

/// How long any one tool call may take before the soak calls it hung.
const TOOL_LIMIT: Duration = Duration::from_secs(60);
/// The testbed's heap keeps the pages it grew by (as the e2e boot test allows).
const HEAP_SLACK: u64 = 64;

/// A small xorshift generator: the soak's choices, reproducible from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Default)]
struct Counts {
    loads: AtomicU64,
    reinits: AtomicU64,
    runs: AtomicU64,
    kills: AtomicU64,
    stats: AtomicU64,
    destroys: AtomicU64,
    /// Exits to userspace seen in the statistics read during runs: the guests ran.
    user_exits: AtomicU64,
    /// Interrupt lines raised and lowered on whatever VMs existed at the moment.
    irqs: AtomicU64,
}

fn tool(socket: &Path, name: &str, args: &[&str]) -> Result<proc::Output, String> {
    let mut c = proc::tool_on(name, socket);
    c.args(args);
    let out = proc::run(&mut c, TOOL_LIMIT).map_err(|e| format!("{name} {args:?}: {e}"))?;
    if out.timed_out {
        return Err(format!("{name} {args:?} hung: {out}"));
    }
    Ok(out)
}

fn ok(socket: &Path, name: &str, args: &[&str]) -> Result<(), String> {
    let out = tool(socket, name, args)?;
    if out.code == Some(0) {
        Ok(())
    } else {
        Err(format!("{name} {args:?} failed: {out}"))
    }
}

/// One worker's loop until `deadline`.
fn worker(
    socket: PathBuf,
    guest: PathBuf,
    id: u64,
    deadline: Instant,
    counts: Arc<Counts>,
) -> Result<(), String> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (id + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let guest = guest.to_str().ok_or("guest path is not UTF-8")?.to_string();
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let vm = format!("soak{id}-{n}");
        let load = [
            "-m",
            "8M",
            "-l",
            "0x80000000",
            "-k",
            guest.as_str(),
            vm.as_str(),
        ];
        ok(&socket, "bhyveload", &load)?;
        counts.loads.fetch_add(1, Ordering::Relaxed);
        if rng.below(4) == 0 {
            ok(&socket, "bhyveload", &load)?;
            counts.reinits.fetch_add(1, Ordering::Relaxed);
        }
        for _ in 0..rng.below(3) {
            let mut c = proc::tool_on("bhyve", &socket);
            c.arg(&vm);
            let bhyve = Running::spawn(&mut c).map_err(|e| format!("bhyve {vm}: {e}"))?;
            counts.runs.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(rng.below(400)));
            if rng.below(2) == 0 {
                // Statistics while it runs (VM_STATS races VM_RUN).
                let st = tool(&socket, "bhyvectl", &[&format!("--vm={vm}"), "--get-stats"])?;
                if st.code != Some(0) {
                    return Err(format!("bhyvectl --get-stats {vm}: {st}"));
                }
                let exits = vmm_e2e::stats::Stats::parse(&st.stdout)
                    .user_exits()
                    .unwrap_or(0);
                counts.user_exits.fetch_add(exits, Ordering::Relaxed);
                counts.stats.fetch_add(1, Ordering::Relaxed);
            }
            let sig = if rng.below(3) == 0 {
                libc::SIGTERM
            } else {
                libc::SIGKILL
            };
            // SAFETY: a signal to our own child process.
            unsafe { libc::kill(bhyve.pid() as i32, sig) };
            counts.kills.fetch_add(1, Ordering::Relaxed);
            let out = bhyve.wait(TOOL_LIMIT);
            if out.timed_out {
                return Err(format!("bhyve {vm} did not end after signal {sig}: {out}"));
            }
        }
        ok(&socket, "bhyvectl", &[&format!("--vm={vm}"), "--destroy"])?;
        counts.destroys.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Raises and lowers SPIs of whichever VMs exist (VM_ASSERT_IRQ/DEASSERT_IRQ racing
/// their loads, runs and destroys) through libvmmapi over the testbed, until
/// `deadline`. A VM destroyed under it is fine; any other error is not.
fn irq_worker(socket: PathBuf, deadline: Instant, counts: Arc<Counts>) -> Result<(), String> {
    use libvmmapi::testbed::Testbed;
    use libvmmapi::{Backend, Vm};
    let backend: Arc<dyn Backend> =
        Arc::new(Testbed::connect(&socket).map_err(|e| format!("testbed: {e}"))?);
    let mut rng = Rng(0x1234_5678_9abc_def1);
    while Instant::now() < deadline {
        let names = Vm::list_with(backend.as_ref()).map_err(|e| format!("VM list: {e}"))?;
        for name in names {
            let Ok(vm) = Vm::open_with(backend.clone(), &name) else {
                continue; // destroyed since the list
            };
            let spi = 32 + rng.below(32) as u32;
            // Refused when the VM is being destroyed or has no vGIC yet: both are races
            // the soak means to have.
            if vm.assert_irq(spi).is_ok() {
                let _ = vm.deassert_irq(spi);
                counts.irqs.fetch_add(1, Ordering::Relaxed);
            }
        }
        std::thread::sleep(Duration::from_millis(rng.below(20)));
    }
    Ok(())
}

pub fn soak(args: &[String]) -> Result<(), String> {
    let mut secs = 60u64;
    let mut workers = 3u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("soak: {a} needs a number"))?;
        match a.as_str() {
            "--secs" => secs = v,
            "--workers" => workers = v.max(1),
            _ => return Err(format!("soak: unknown argument {a}")),
        }
    }
    proc::build_tools().map_err(|e| e.to_string())?;
    let guests = build::build_guests().map_err(|e| e.to_string())?;
    let guest = guests.join("soak.bin");
    let dir = vmm_testbed_harness::repo_root().join("target/soak");
    let bed = Bed::start(&dir, Duration::from_secs(secs + 600)).map_err(|e| e.to_string())?;
    let socket = bed.socket.clone();
    let before = bed.free_pages().map_err(|e| e.to_string())?;
    let counts = Arc::new(Counts::default());
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut handles: Vec<_> = (0..workers)
        .map(|id| {
            let (socket, guest, counts) = (socket.clone(), guest.clone(), counts.clone());
            std::thread::spawn(move || worker(socket, guest, id, deadline, counts))
        })
        .collect();
    {
        let (socket, counts) = (socket.clone(), counts.clone());
        handles.push(std::thread::spawn(move || {
            irq_worker(socket, deadline, counts)
        }));
    }
    let mut failures = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(e),
            Err(_) => failures.push("a worker panicked".into()),
        }
    }
    let list = tool(&socket, "bhyvectl", &["--list"])?;
    let after = bed.free_pages().map_err(|e| e.to_string())?;
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    eprintln!(
        "xtask: soak: {:.0?}, {workers} workers: {} loads ({} reinitialised), {} bhyve runs killed, {} stats read during runs ({} guest exits to userspace counted there), {} interrupts raised and lowered, {} destroys; free pages {before} before, {after} after",
        start.elapsed(),
        c(&counts.loads),
        c(&counts.reinits),
        c(&counts.kills),
        c(&counts.stats),
        c(&counts.user_exits),
        c(&counts.irqs),
        c(&counts.destroys),
    );
    if !failures.is_empty() {
        return Err(format!(
            "soak failed:\n{}\n{}",
            failures.join("\n"),
            bed.logs()
        ));
    }
    if !list.stdout.is_empty() {
        return Err(format!("VMs left after the soak: {}", list.stdout.trim()));
    }
    if after + HEAP_SLACK < before {
        return Err(format!(
            "pages leaked: {before} free before the soak, {after} after"
        ));
    }
    if c(&counts.runs) == 0 || (c(&counts.stats) > 0 && c(&counts.user_exits) == 0) {
        return Err("the soak's guests never ran".into());
    }
    Ok(())
}
