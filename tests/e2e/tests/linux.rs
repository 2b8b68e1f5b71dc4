//! Debian's arm64 Linux under our stack, driven by the real tools as a user drives them
//! (docs/e2e.md): bhyveload loads the kernel and a busybox initramfs into a VM on the
//! served testbed, `bhyve -b` runs it with the console captured, bhyvectl inspects and
//! destroys it. Each test starts its own testbed (stopped when it ends, by a watchdog
//! at the latest); every tool runs under a hard timeout in its own process group; a
//! failure prints the guest console and the testbed's logs.
//!
//! Needs qemu-system-aarch64, aarch64-linux-gnu binutils, cpio, and apt access to
//! Debian's arm64 packages on first use; VMM_SKIP_QEMU=1 skips.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use vmm_e2e::bed::{cpu_time, Bed};
use vmm_e2e::guest::{self, Init, BOOTARGS, IDLE_MARKER, MARKER};
use vmm_e2e::proc::{self, Output, Running};
use vmm_e2e::stats::Stats;

/// One testbed at a time: two host cores are shared with everything else.
static SERIAL: Mutex<()> = Mutex::new(());

/// Longest one test may keep its testbed.
const BED_LIMIT: Duration = Duration::from_secs(300);
/// Longest a boot to userspace may take (about 12 s here; TCG on a loaded machine
/// is much slower).
const BOOT_LIMIT: Duration = Duration::from_secs(200);
const TOOL_LIMIT: Duration = Duration::from_secs(60);
/// Guest memory: 256 MiB = 65536 pages of 4 KiB.
const GUEST_PAGES: u64 = 65536;

fn skip() -> bool {
    vmm_e2e::skip_qemu()
}

struct E2e {
    bed: Bed,
    console: String,
}

impl E2e {
    fn start(name: &str) -> E2e {
        let bed = Bed::for_test(name, BED_LIMIT).unwrap_or_else(|e| panic!("{e}"));
        E2e {
            bed,
            console: String::new(),
        }
    }

    fn cmd(&self, tool: &str, args: &[&str]) -> Command {
        let mut c = proc::tool_on(tool, &self.bed.socket);
        c.args(args);
        c
    }

    fn tool(&self, tool: &str, args: &[&str]) -> Output {
        proc::run(&mut self.cmd(tool, args), TOOL_LIMIT).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `bhyveload -k KERNEL -m 256M -i INITRAMFS -e ... NAME`.
    fn load(&self, name: &str, init: Init) {
        self.load_cpus(name, init, "1");
    }

    /// `bhyveload -c NCPUS ...`.
    fn load_cpus(&self, name: &str, init: Init, ncpus: &str) {
        let kernel = guest::kernel().unwrap_or_else(|e| panic!("{e}"));
        let initrd = guest::initramfs(init).unwrap_or_else(|e| panic!("{e}"));
        let mut args: Vec<&str> = vec!["-k", path(&kernel), "-m", "256M", "-i", path(&initrd)];
        args.extend(["-c", ncpus]);
        for a in BOOTARGS {
            args.extend(["-e", a]);
        }
        args.push(name);
        let out = self.tool("bhyveload", &args);
        assert_eq!(out.code, Some(0), "bhyveload {args:?}: {out}");
    }

    fn stats(&self, name: &str) -> Stats {
        self.cpu_stats(name, 0)
    }

    fn cpu_stats(&self, name: &str, cpu: u32) -> Stats {
        let out = self.tool(
            "bhyvectl",
            &[
                &format!("--vm={name}"),
                &format!("--cpu={cpu}"),
                "--get-stats",
            ],
        );
        assert_eq!(out.code, Some(0), "bhyvectl --get-stats: {out}");
        Stats::parse(&out.stdout)
    }

    fn list(&self) -> String {
        let out = self.tool("bhyvectl", &["--list"]);
        assert_eq!(out.code, Some(0), "bhyvectl --list: {out}");
        out.stdout
    }

    fn free_pages(&self) -> u64 {
        self.bed.free_pages().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `f`; on failure prints the guest console and the testbed's logs.
    fn check(&mut self, f: impl FnOnce(&mut E2e)) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        if let Err(p) = r {
            eprintln!("[guest console]\n{}\n{}", self.console, self.bed.logs());
            std::panic::resume_unwind(p);
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// The flow of the README's demo: Linux boots to the init marker and powers off through
/// PSCI SYSTEM_OFF (bhyve exits 1); then `bhyvectl --destroy` leaves no VM and gives
/// every guest page back to the testbed. The VM is loaded and booted twice before it is
/// destroyed: the second bhyveload reinitialises it (VM_REINIT) and rewrites the pages
/// the first boot executed (and patched) through the RAM file, the TCG stale-code case
/// of DESIGN.md ("The testbed").
#[test]
fn linux_boots_to_userspace_and_powers_off() {
    if skip() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut t = E2e::start("boot");
    t.check(|t| {
        assert_eq!(t.list(), "", "a fresh testbed has no VM");
        let before = t.free_pages();
        let mut loaded = before;
        for round in 1..=2 {
            t.load("vm", Init::PowerOff);
            loaded = t.free_pages();
            assert!(
                before - loaded >= GUEST_PAGES,
                "a 256M guest should take at least {GUEST_PAGES} pages: {before} free before, {loaded} after bhyveload"
            );
            let out = proc::run(&mut t.cmd("bhyve", &["-b", "vm"]), BOOT_LIMIT).unwrap();
            t.console = out.stdout.clone();
            eprintln!("boot {round} to poweroff took {:.1?}", out.elapsed);
            assert!(out.stdout.contains(MARKER), "boot {round}: no init marker: {out}");
            assert!(
                out.stdout.contains("reboot: Power down"),
                "boot {round}: no power-down: {out}"
            );
            assert_eq!(out.code, Some(1), "boot {round}: bhyve exits 1 on poweroff: {out}");
            let st = t.stats("vm");
            eprintln!("exits during boot {round}: {:?}", st.0);
            assert_eq!(t.list(), "vm\n");
        }
        let out = t.tool("bhyvectl", &["--vm=vm", "--destroy"]);
        assert_eq!(out.code, Some(0), "bhyvectl --destroy: {out}");
        assert_eq!(t.list(), "", "no VM after --destroy");
        let after = t.free_pages();
        eprintln!("free pages: {before} before, {loaded} loaded, {after} after destroy");
        // The testbed's small-object heap keeps the pages it grew by (a few, for
        // requests and VM bookkeeping); leaked guest memory would be thousands.
        assert!(
            after + 64 >= before,
            "pages leaked: {before} free before, {after} after destroy"
        );
    });
}

/// `bhyve` on a VM that does not exist: one line on stderr, exit 4 (bhyve(8)).
#[test]
fn bhyve_without_vm() {
    if skip() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut t = E2e::start("novm");
    t.check(|t| {
        let out = t.tool("bhyve", &["-b", "nosuch"]);
        assert_eq!(out.code, Some(4), "{out}");
        assert!(out.stderr.contains("'nosuch' does not exist"), "{out}");
        assert_eq!(out.stderr.trim().lines().count(), 1, "one line: {out}");
        assert_eq!(t.list(), "");
    });
}

/// A kernel with no working init panics; with panic=-1 it resets through PSCI
/// SYSTEM_RESET at once and bhyve exits 0.
#[test]
fn panicking_guest_resets() {
    if skip() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut t = E2e::start("panic");
    t.check(|t| {
        t.load("panic", Init::Broken);
        let out = proc::run(&mut t.cmd("bhyve", &["-b", "panic"]), BOOT_LIMIT).unwrap();
        t.console = out.stdout.clone();
        assert!(
            out.stdout.contains("Kernel panic - not syncing"),
            "no panic: {out}"
        );
        assert!(out.stdout.contains("No working init found"), "{out}");
        assert!(!out.stdout.contains(MARKER), "{out}");
        assert_eq!(out.code, Some(0), "bhyve exits 0 on reset: {out}");
        let out = t.tool("bhyvectl", &["--vm=panic", "--destroy"]);
        assert_eq!(out.code, Some(0), "{out}");
        assert_eq!(t.list(), "");
    });
}

/// A guest that never powers off sits idle in userspace (the vCPU in WFI): over a
/// second it costs next to no exits and little of QEMU's CPU; `bhyvectl --destroy`
/// from another process stops it and bhyve exits 4 (bhyve(8)).
#[test]
fn idle_guest_then_destroyed_from_another_process() {
    if skip() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut t = E2e::start("idle");
    t.check(|t| {
        // QEMU's CPU time over a second with no guest, for comparison.
        let qemu = t.bed.qemu_pid().expect("QEMU running");
        let c0 = cpu_time(qemu);
        std::thread::sleep(Duration::from_secs(1));
        let baseline = cpu_time(qemu).zip(c0).map(|(a, b)| a.saturating_sub(b));
        t.load("idle", Init::Idle);
        let console = t.bed.layout.dir.join("idle-console.log");
        // bhyve's console to a file we can watch while it runs.
        let file = std::fs::File::create(&console).unwrap();
        let mut cmd = t.cmd("bhyve", &["-b", "idle"]);
        cmd.stdout(file);
        let bhyve = Running::spawn_keep_stdout(&mut cmd).unwrap();
        let start = Instant::now();
        loop {
            t.console = std::fs::read_to_string(&console).unwrap_or_default();
            if t.console.contains(IDLE_MARKER) {
                break;
            }
            assert!(
                start.elapsed() < BOOT_LIMIT,
                "the idle guest never reached userspace"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // Let the last console output and timers settle, then measure one second;
        // QEMU's CPU time is read right around the sleep so that bhyvectl's own
        // requests stay outside the window.
        std::thread::sleep(Duration::from_secs(1));
        let qemu = t.bed.qemu_pid().expect("QEMU running");
        let s0 = t.stats("idle");
        let (c0, w0) = (cpu_time(qemu), Instant::now());
        std::thread::sleep(Duration::from_secs(1));
        let (c1, w1) = (cpu_time(qemu), w0.elapsed());
        let s1 = t.stats("idle");
        let exits = s1.total_exits().unwrap() - s0.total_exits().unwrap();
        let wfi = s1.get("wfi").unwrap() - s0.get("wfi").unwrap();
        let cpu = c1.zip(c0).map(|(a, b)| a.saturating_sub(b));
        eprintln!(
            "idle guest for {w1:.2?}: {exits} exits ({wfi} WFI); QEMU CPU time {cpu:?} \
             (testbed with no guest: {baseline:?} per second)"
        );
        // A busy vCPU or a spinning WFI makes tens of thousands of exits a second
        // here; an idle Linux (NO_HZ) wakes for a handful of timers.
        assert!(
            exits < 200,
            "{exits} exits in an idle second: {s0:?} -> {s1:?}"
        );
        // A vCPU spinning in the testbed keeps one of QEMU's threads busy for the
        // whole second; sleeping in WFI costs it about 10 ms here.
        if let Some(cpu) = cpu {
            assert!(
                cpu < Duration::from_millis(500),
                "QEMU busy {cpu:?} in an idle second of the guest"
            );
        }
        let out = t.tool("bhyvectl", &["--vm=idle", "--destroy"]);
        assert_eq!(out.code, Some(0), "bhyvectl --destroy: {out}");
        let out = bhyve.wait(TOOL_LIMIT);
        t.console = std::fs::read_to_string(&console).unwrap_or_default();
        assert_eq!(out.code, Some(4), "bhyve exits 4 when destroyed: {out}");
        assert_eq!(t.list(), "");
    });
}

/// Two vCPUs: Linux brings the second up through PSCI CPU_ON, boots to the marker on
/// both and powers off; both vCPUs ran (they share the testbed's one run CPU).
#[test]
fn linux_with_two_vcpus_boots_to_userspace() {
    if skip() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut t = E2e::start("smp");
    t.check(|t| {
        t.load_cpus("smp", Init::PowerOff, "2");
        let out = proc::run(&mut t.cmd("bhyve", &["-b", "smp"]), BOOT_LIMIT).unwrap();
        t.console = out.stdout.clone();
        eprintln!("2-vCPU boot to poweroff took {:.1?}", out.elapsed);
        assert!(
            out.stdout.contains("smp: Brought up 1 node, 2 CPUs"),
            "CPU 1 did not come up: {out}"
        );
        assert!(out.stdout.contains(MARKER), "no init marker: {out}");
        assert_eq!(out.code, Some(1), "bhyve exits 1 on poweroff: {out}");
        let (s0, s1) = (t.cpu_stats("smp", 0), t.cpu_stats("smp", 1));
        eprintln!(
            "exits: vCPU 0 {:?}, vCPU 1 {:?}",
            s0.total_exits(),
            s1.total_exits()
        );
        assert!(s1.total_exits().unwrap() > 0, "vCPU 1 never ran: {s1:?}");
        let out = t.tool("bhyvectl", &["--vm=smp", "--destroy"]);
        assert_eq!(out.code, Some(0), "{out}");
        assert_eq!(t.list(), "");
    });
}
