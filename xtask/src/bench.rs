//! `cargo xtask bench-boot`: the wall time of a Linux boot under our stack against the
//! same kernel and initramfs booted directly by QEMU, in the same run
//! (docs/PERFORMANCE.md). Each configuration (the full PL011 console, `quiet`, or the
//! full console on a virtio console; plain or under `-icount shift=0`) boots a few times
//! both ways, alternating. Direct: `qemu-system-aarch64 -M virt -cpu cortex-a57 -m 256M`
//! (with a `virtconsole` for the virtio console) to the init marker and PSCI poweroff.
//! Our stack: a served testbed (its QEMU under `-icount shift=0` for the icount rows),
//! then bhyveload, `bhyve -b` (with `-s 3,virtio-console`) and, after the poweroff,
//! `bhyvectl --get-stats` and `--destroy`, as the e2e test does. The guest's own time is
//! the printk timestamp of the last line before the poweroff (under icount, emulated
//! instructions plus the time the vCPU waited for userspace). Prints numbers; asserts
//! nothing about time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vmm_e2e::guest::{self, Init, BOOTARGS, MARKER};
use vmm_e2e::proc::{self, tool_on as tool};
use vmm_e2e::stats::Stats;
use vmm_testbed_broker::launch::{HostCpu, Layout, Served};
use vmm_testbed_harness::build;

const VM: &str = "benchvm";
const POWER_DOWN: &str = "reboot: Power down";
/// The hvc initramfs's last kernel line (tests/make-initramfs.sh): on hvc0 Linux's own
/// "reboot: Power down" comes after the console's device is gone.
const POWERING_OFF: &str = "VMM-E2E: powering off";

/// The guest's console in a boot configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Console {
    /// The PL011 (ttyAMA0 and its early console), every kernel message on it.
    Full,
    /// The PL011 with `quiet`.
    Quiet,
    /// A virtio console (hvc0): the kernel's log printed there by init (`dmesg`), since
    /// hvc0 has no device before the initramfs loads virtio_console.
    Virtio,
}

impl Console {
    const ALL: [Console; 3] = [Console::Full, Console::Quiet, Console::Virtio];

    fn name(self) -> &'static str {
        match self {
            Console::Full => "full",
            Console::Quiet => "quiet",
            Console::Virtio => "hvc0",
        }
    }

    /// The kernel line whose timestamp ends the guest's time.
    fn last_line(self) -> &'static str {
        match self {
            Console::Full | Console::Quiet => POWER_DOWN,
            Console::Virtio => POWERING_OFF,
        }
    }

    /// The kernel command line, with the PL011 early console at `earlycon` (none on
    /// hvc0, whose console is the virtio one).
    fn append(self, earlycon: &str) -> Vec<String> {
        let virtio = self == Console::Virtio;
        let mut a: Vec<String> = BOOTARGS
            .iter()
            .filter_map(|s| {
                if s.starts_with("earlycon=") {
                    (!virtio).then(|| earlycon.to_string())
                } else if s.starts_with("console=") && virtio {
                    Some("console=hvc0".to_string())
                } else {
                    Some(s.to_string())
                }
            })
            .collect();
        if self == Console::Quiet {
            a.push("quiet".into());
        }
        a
    }
}

/// One boot's measurements.
#[derive(Debug, Clone)]
struct Boot {
    /// Process start to exit (direct), bhyveload's start to bhyve's exit (our stack).
    wall: Duration,
    /// Our stack: bhyveload alone (creating the VM, decompressing and copying the
    /// kernel and initramfs into guest memory).
    load: Option<Duration>,
    /// The guest's printk timestamp at "reboot: Power down", in seconds.
    guest: Option<f64>,
    console_bytes: usize,
    stats: Option<Stats>,
}

/// The `[    0.912345]` timestamp of the console line that says `what`.
fn printk_time(console: &str, what: &str) -> Option<f64> {
    let line = console.lines().find(|l| l.contains(what))?;
    let open = line.find('[')?;
    let close = line[open..].find(']')? + open;
    line[open + 1..close].trim().parse().ok()
}

fn check_console(what: &str, out: &proc::Output, console: Console) -> Result<(), String> {
    if !out.stdout.contains(MARKER) || !out.stdout.contains(console.last_line()) {
        return Err(format!(
            "{what}: no init marker and poweroff on the console; {out}"
        ));
    }
    Ok(())
}

/// The kernel and initramfs booted by QEMU itself (its PL011 is at 0x9000000; the
/// virtio console on its first virtio-mmio slot), on the CPU model the testbed host of
/// the comparison has.
fn direct(
    kernel: &Path,
    initrd: &Path,
    console: Console,
    icount: bool,
    cpu: HostCpu,
) -> Result<Boot, String> {
    let mut cmd = Command::new("qemu-system-aarch64");
    cmd.args([
        "-M",
        "virt",
        "-cpu",
        cpu.qemu_cpu(),
        "-m",
        "256M",
        "-no-reboot",
    ]);
    if console == Console::Virtio {
        cmd.args(["-display", "none", "-serial", "none", "-monitor", "none"])
            .args([
                "-chardev",
                "stdio,id=con",
                "-device",
                "virtio-serial-device",
            ])
            .args(["-device", "virtconsole,chardev=con"]);
    } else {
        cmd.arg("-nographic");
    }
    cmd.arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(console.append("earlycon=pl011,0x9000000").join(" "));
    if icount {
        cmd.args(["-icount", "shift=0"]);
    }
    let out = proc::run(&mut cmd, Duration::from_secs(300)).map_err(|e| e.to_string())?;
    check_console("direct QEMU", &out, console)?;
    if out.code != Some(0) {
        return Err(format!("direct QEMU: {out}"));
    }
    Ok(Boot {
        wall: out.elapsed,
        load: None,
        guest: printk_time(&out.stdout, console.last_line()),
        console_bytes: out.stdout.len(),
        stats: None,
    })
}

fn run_tool(what: &str, cmd: &mut Command, secs: u64) -> Result<proc::Output, String> {
    proc::run(cmd, Duration::from_secs(secs)).map_err(|e| format!("{what}: {e}"))
}

/// bhyveload of `kernel` and `initrd` into VM `vm` with 256 MiB and the `bootargs`.
pub(crate) fn load(
    socket: &Path,
    vm: &str,
    kernel: &Path,
    initrd: &Path,
    bootargs: &[impl AsRef<str>],
) -> Result<(), String> {
    let mut load = tool("bhyveload", socket);
    load.arg("-k")
        .arg(kernel)
        .args(["-m", "256M", "-i"])
        .arg(initrd);
    for a in bootargs {
        load.args(["-e", a.as_ref()]);
    }
    let out = run_tool("bhyveload", load.arg(vm), 60)?;
    if out.code != Some(0) {
        return Err(format!("bhyveload: {out}"));
    }
    Ok(())
}

/// `bhyvectl --get-stats` of VM `vm`, then `bhyvectl --destroy`: both runs.
pub(crate) fn stats_and_destroy(
    socket: &Path,
    vm: &str,
) -> Result<(proc::Output, proc::Output), String> {
    let vm = format!("--vm={vm}");
    let stats = run_tool(
        "bhyvectl --get-stats",
        tool("bhyvectl", socket).args([&vm, "--get-stats"]),
        60,
    )?;
    let destroy = run_tool(
        "bhyvectl --destroy",
        tool("bhyvectl", socket).args([&vm, "--destroy"]),
        60,
    )?;
    Ok((stats, destroy))
}

/// bhyveload, `bhyve -b` to the poweroff (bhyve exits 1), the vCPU's stats, destroy.
fn stack(socket: &Path, kernel: &Path, initrd: &Path, console: Console) -> Result<Boot, String> {
    let t = Instant::now();
    load(
        socket,
        VM,
        kernel,
        initrd,
        &console.append("earlycon=pl011,0x10000"),
    )?;
    let loaded = t.elapsed();
    let mut bhyve = tool("bhyve", socket);
    bhyve.arg("-b");
    if console == Console::Virtio {
        bhyve.args(["-s", "3,virtio-console"]);
    }
    let boot = run_tool("bhyve", bhyve.arg(VM), 300)?;
    let wall = t.elapsed();
    let (stats, destroy) = stats_and_destroy(socket, VM)?;
    check_console("bhyve", &boot, console)?;
    if boot.code != Some(1) {
        return Err(format!("bhyve (want exit 1, the poweroff): {boot}"));
    }
    if destroy.code != Some(0) {
        return Err(format!("bhyvectl --destroy: {destroy}"));
    }
    Ok(Boot {
        wall,
        load: Some(loaded),
        guest: printk_time(&boot.stdout, console.last_line()),
        console_bytes: boot.stdout.len(),
        stats: (stats.code == Some(0)).then(|| Stats::parse(&stats.stdout)),
    })
}

/// A served testbed of our own in `dir` on host CPU `cpu` (stopped when dropped) and
/// its socket.
pub(crate) fn serve(
    testbed: &Path,
    dir: PathBuf,
    icount: bool,
    cpu: HostCpu,
) -> Result<(Served, PathBuf), String> {
    let extra: Vec<String> = if icount {
        vec!["-icount".into(), "shift=0".into()]
    } else {
        Vec::new()
    };
    let bed = Served::start(
        testbed,
        &proc::tool("vmm-testbed-broker"),
        Layout::new(dir),
        cpu,
        &extra,
        None,
    )
    .map_err(|e| e.to_string())?;
    let socket = bed.socket.clone();
    Ok((bed, socket))
}

/// The tools and the testbed built, and a served testbed of our own for benchmark
/// `bench` (in `$CARGO_TARGET_DIR/<bench>`, under `-icount shift=0` if `icount`) on host
/// CPU `cpu`: the testbed (stopped when dropped), its socket, and the flat binary of
/// tests/guests/`guest`.S.
pub(crate) fn serve_for_guest(
    bench: &str,
    guest: &str,
    icount: bool,
    cpu: HostCpu,
) -> Result<(Served, PathBuf, PathBuf), String> {
    proc::build_tools().map_err(|e| e.to_string())?;
    let testbed = build::build_testbed()?;
    let bin = build::guest_dir().join(format!("{guest}.bin"));
    let dir = proc::bin_dir()
        .parent()
        .map(|p| p.join(bench))
        .ok_or("no target directory")?;
    let (bed, socket) = serve(&testbed, dir, icount, cpu)?;
    Ok((bed, socket, bin))
}

pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// Medians of one configuration, both ways.
pub(crate) struct Row {
    pub(crate) icount: bool,
    pub(crate) console: Console,
    direct: Vec<Boot>,
    stack: Vec<Boot>,
}

impl Row {
    /// Our stack's wall time over plain QEMU's (medians).
    pub(crate) fn wall_ratio(&self) -> Option<f64> {
        Some(Row::wall(&self.stack)? / Row::wall(&self.direct)?)
    }
    /// Our stack's guest time over plain QEMU's (medians).
    pub(crate) fn guest_ratio(&self) -> Option<f64> {
        Some(Row::guest(&self.stack)? / Row::guest(&self.direct)?)
    }
    /// bhyveload's median time, seconds.
    pub(crate) fn bhyveload(&self) -> Option<f64> {
        Row::load(&self.stack)
    }
    fn wall(b: &[Boot]) -> Option<f64> {
        median(b.iter().map(|x| x.wall.as_secs_f64()).collect())
    }
    fn load(b: &[Boot]) -> Option<f64> {
        median(
            b.iter()
                .filter_map(|x| x.load)
                .map(|d| d.as_secs_f64())
                .collect(),
        )
    }
    fn guest(b: &[Boot]) -> Option<f64> {
        median(b.iter().filter_map(|x| x.guest).collect())
    }
    fn stat(&self, prefix: &str) -> Option<u64> {
        self.stack.last()?.stats.as_ref()?.get(prefix)
    }
}

fn fmt_s(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{s:.2} s"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

/// `[--runs N]` of benchmark `what`, `default` when not given.
pub(crate) fn parse_runs(what: &str, args: &[String], default: usize) -> Result<usize, String> {
    const RUNS: (&str, &str) = ("--runs", "a positive number");
    match crate::number_option(what, args, RUNS, default as u64).map(usize::try_from)? {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{} needs {}", RUNS.0, RUNS.1)),
    }
}

/// `bench-boot [--runs N] [--cpu cortex-a57|max]`: prints the boot table.
pub fn bench_boot(args: &[String]) -> Result<(), String> {
    let (cpu, rest) = crate::kernel::cpu_option(args)?;
    let runs = parse_runs("bench-boot", &rest, 3)?;
    let rows = run_bench_boot(runs, cpu)?;
    print_report(&rows, runs);
    Ok(())
}

/// Boots `runs` times per configuration (each [`Console`], plain or under
/// `-icount shift=0`) both ways, alternating, with the testbed on host CPU `cpu`.
pub(crate) fn run_bench_boot(runs: usize, cpu: HostCpu) -> Result<Vec<Row>, String> {
    proc::build_tools().map_err(|e| e.to_string())?;
    let testbed = build::build_testbed()?;
    let kernel = guest::kernel().map_err(|e| e.to_string())?;
    let initrd = guest::initramfs(Init::PowerOff).map_err(|e| e.to_string())?;
    let hvc_initrd = guest::hvc_initramfs().map_err(|e| e.to_string())?;
    let dir = proc::bin_dir()
        .parent()
        .map(|p| p.join("bench-boot"))
        .ok_or("no target directory")?;

    let mut rows = Vec::new();
    for icount in [false, true] {
        eprintln!(
            "xtask: testbed up on -cpu {}{} (logs in {})",
            cpu.qemu_cpu(),
            if icount { " under -icount shift=0" } else { "" },
            dir.display()
        );
        let (bed, socket) = serve(&testbed, dir.clone(), icount, cpu)?;
        for console in Console::ALL {
            let initrd = if console == Console::Virtio {
                &hvc_initrd
            } else {
                &initrd
            };
            let mut row = Row {
                icount,
                console,
                direct: Vec::new(),
                stack: Vec::new(),
            };
            for i in 0..runs {
                let d = direct(&kernel, initrd, console, icount, cpu)?;
                let s = stack(&socket, &kernel, initrd, console).map_err(|e| {
                    format!("{e}\n[broker log]\n{}", read(&bed.layout.broker_log()))
                })?;
                eprintln!(
                    "xtask: icount={icount} console={} run {}: direct {:.2?} (guest {:?} s), stack {:.2?} (bhyveload {:.2?}, guest {:?} s, {} exits)",
                    console.name(),
                    i + 1,
                    d.wall,
                    d.guest,
                    s.wall,
                    s.load.unwrap_or_default(),
                    s.guest,
                    s.stats.as_ref().and_then(Stats::total_exits).unwrap_or(0)
                );
                row.direct.push(d);
                row.stack.push(s);
            }
            rows.push(row);
        }
        drop(bed);
    }
    Ok(rows)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn print_report(rows: &[Row], runs: usize) {
    println!("\nboot to poweroff, median of {runs} (wall: process start to exit; guest: printk time at \"{POWER_DOWN}\", on hvc0 at \"{POWERING_OFF}\")");
    println!(
        "{:<8} {:<8} {:>12} {:>12} {:>12} {:>7} {:>12} {:>12} {:>7} {:>8} {:>8}",
        "icount",
        "console",
        "direct wall",
        "stack wall",
        "bhyveload",
        "ratio",
        "direct guest",
        "stack guest",
        "ratio",
        "exits",
        "to user"
    );
    for r in rows {
        let (dw, sw) = (Row::wall(&r.direct), Row::wall(&r.stack));
        let (dg, sg) = (Row::guest(&r.direct), Row::guest(&r.stack));
        println!(
            "{:<8} {:<8} {:>12} {:>12} {:>12} {:>7} {:>12} {:>12} {:>7} {:>8} {:>8}",
            if r.icount { "shift=0" } else { "no" },
            r.console.name(),
            fmt_s(dw),
            fmt_s(sw),
            fmt_s(Row::load(&r.stack)),
            ratio(sw, dw),
            fmt_s(dg),
            fmt_s(sg),
            ratio(sg, dg),
            r.stat("total number of vm exits")
                .map_or("-".into(), |v| v.to_string()),
            r.stat("vm exits returned to userspace")
                .map_or("-".into(), |v| v.to_string()),
        );
    }
    for r in rows {
        let Some(st) = r.stack.last().and_then(|b| b.stats.as_ref()) else {
            continue;
        };
        println!(
            "\nexits by kind, last boot under our stack (icount {}, console {}, {} console bytes):",
            if r.icount { "shift=0" } else { "no" },
            r.console.name(),
            r.stack.last().map_or(0, |b| b.console_bytes)
        );
        for (name, v) in st.0.iter().filter(|(_, v)| *v > 0) {
            println!("  {v:>8}  {name}");
        }
    }
    // What one console byte costs: the full-console boot minus the quiet one, over the
    // extra exits to userspace (nearly all PL011 data-register writes).
    for icount in [false, true] {
        let row = |c: Console| rows.iter().find(|r| r.icount == icount && r.console == c);
        let (full, quiet) = (row(Console::Full), row(Console::Quiet));
        let (Some(f), Some(q)) = (full, quiet) else {
            continue;
        };
        let (Some(fu), Some(qu)) = (
            f.stat("vm exits returned to userspace"),
            q.stat("vm exits returned to userspace"),
        ) else {
            continue;
        };
        let extra = fu.saturating_sub(qu);
        let bytes = |r: &Row| r.stack.last().map_or(0, |b| b.console_bytes);
        let extra_bytes = bytes(f).saturating_sub(bytes(q));
        if let (Some(fw), Some(qw), Some(dfw), Some(dqw)) = (
            Row::wall(&f.stack),
            Row::wall(&q.stack),
            Row::wall(&f.direct),
            Row::wall(&q.direct),
        ) {
            if extra > 0 {
                println!(
                    "\nicount {}: the full console adds {extra_bytes} console bytes and {extra} exits to userspace ({:.1} per byte); each exit costs {:.0} us of wall time under our stack ({:.0} us more than plain QEMU's share of its own full-console cost), {:.0} us per console byte",
                    if icount { "shift=0" } else { "no" },
                    extra as f64 / extra_bytes.max(1) as f64,
                    (fw - qw) / extra as f64 * 1e6,
                    ((fw - qw) - (dfw - dqw)) / extra as f64 * 1e6,
                    (fw - qw) / extra_bytes.max(1) as f64 * 1e6,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printk_timestamp_of_a_line() {
        let c = "[    0.000000] Booting Linux\nVMM-E2E: x\n[    0.912345] reboot: Power down\n";
        assert_eq!(printk_time(c, POWER_DOWN), Some(0.912345));
        assert_eq!(printk_time(c, "nothing"), None);
        assert_eq!(printk_time("reboot: Power down", POWER_DOWN), None);
    }

    #[test]
    fn median_of_runs() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(Vec::new()), None);
    }
}
