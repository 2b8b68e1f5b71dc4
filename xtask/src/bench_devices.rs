//! `cargo xtask bench-devices [--runs N]`: virtio-blk and virtio-net throughput under
//! our stack against the same guest under plain QEMU's virtio-mmio devices, in one run
//! (docs/PERFORMANCE.md). Prints numbers; asserts nothing about time.
//!
//! The guest is Debian's kernel with the root disk (tests/make-rootdisk.sh) booted with
//! `vmm_e2e=bench`: /bin/diskbench (tests/guests/diskbench.c) writes and reads 256 MiB
//! of a second disk sequentially with O_DIRECT in 1 MiB blocks and then reads random
//! 4 KiB blocks for 10 s; with a network interface, busybox nc sends 64 MiB to the host
//! end and takes 64 MiB from it, which this process times inside a network namespace of
//! its own (root only; without root the network rows are left out). Plain QEMU:
//! `-device virtio-blk-device` and `virtio-net-device` on a tap in the same namespace.
//! Our stack: bhyveload and bhyve on a served testbed, once as shipped and once with
//! `VMM_TESTBED_NO_SYNC=1` (device writes not synced for TCG), so the sync's cost shows.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vmm_e2e::guest;
use vmm_e2e::netns::{self, Netns, HOST_IP, TAP};
use vmm_e2e::proc;
use vmm_e2e::stats::Stats;
use vmm_testbed_broker::launch::HostCpu;
use vmm_testbed_harness::{build, cmd};

use crate::bench::{load, median, parse_runs, serve, stats_and_destroy};

const VM: &str = "benchdev";
const NET_MIB: usize = 64;
const DATA_MIB: u64 = 300;

/// One boot's numbers, by metric name.
#[derive(Debug, Default, Clone)]
struct Sample {
    values: Vec<(&'static str, f64)>,
    exits: Option<u64>,
    to_user: Option<u64>,
}

const METRICS: &[(&str, &str)] = &[
    ("seq-write", "disk sequential write, MiB/s"),
    ("seq-read", "disk sequential read, MiB/s"),
    ("rand-read-4k", "disk random 4 KiB read, IOPS"),
    ("net-up", "network guest to host, MiB/s"),
    ("net-down", "network host to guest, MiB/s"),
];

/// The host end of the network transfers, on a thread inside `ns`: takes NET_MIB MiB
/// on port 5003 and sends NET_MIB MiB on port 5004, each timed from accept to the end.
fn net_server(ns: &Netns) -> Result<mpsc::Receiver<(f64, f64)>, String> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let name = ns.name.clone();
    std::thread::spawn(move || {
        let ns = Netns { name };
        let bound = ns.enter().map_err(|e| e.to_string()).and_then(|()| {
            let up = TcpListener::bind((HOST_IP, 5003)).map_err(|e| e.to_string())?;
            let down = TcpListener::bind((HOST_IP, 5004)).map_err(|e| e.to_string())?;
            Ok((up, down))
        });
        // The namespace belongs to the caller: do not delete it when this copy drops.
        std::mem::forget(ns);
        let (up, down) = match bound {
            Ok(l) => {
                let _ = ready_tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let total = NET_MIB << 20;
        let mut buf = vec![0u8; 1 << 20];
        let Ok((mut c, _)) = up.accept() else { return };
        let t = Instant::now();
        let mut got = 0;
        while got < total {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        let up_secs = t.elapsed().as_secs_f64();
        drop(c);
        let Ok((mut c, _)) = down.accept() else {
            return;
        };
        let t = Instant::now();
        for _ in 0..NET_MIB {
            if c.write_all(&buf).is_err() {
                return;
            }
        }
        let _ = c.shutdown(std::net::Shutdown::Write);
        // The guest's nc closes once it has read everything.
        while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
        let down_secs = t.elapsed().as_secs_f64();
        if got == total {
            let _ = done_tx.send((NET_MIB as f64 / up_secs, NET_MIB as f64 / down_secs));
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "the network server did not start".to_string())??;
    Ok(done_rx)
}

fn bench_lines(console: &str) -> Vec<(&'static str, f64)> {
    let mut v = Vec::new();
    for line in console.lines() {
        let Some(rest) = line.trim().strip_prefix("VMM-BENCH: ") else {
            continue;
        };
        for (name, _) in METRICS {
            if let Some(n) = rest
                .strip_prefix(name)
                .and_then(|x| x.trim().parse::<f64>().ok())
            {
                v.push((*name, n));
            }
        }
    }
    v
}

fn finish(
    what: &str,
    out: &proc::Output,
    net: Option<mpsc::Receiver<(f64, f64)>>,
) -> Result<Sample, String> {
    let console = &out.stdout;
    if console.contains("VMM-BENCH: error") {
        return Err(format!("{what}: the guest's benchmark failed: {out}"));
    }
    let mut values = bench_lines(console);
    if values.len() < 3 {
        return Err(format!("{what}: no disk numbers on the console: {out}"));
    }
    if let Some(rx) = net {
        let (up, down) = rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| format!("{what}: the network transfers did not finish: {out}"))?;
        values.push(("net-up", up));
        values.push(("net-down", down));
    }
    Ok(Sample {
        values,
        ..Sample::default()
    })
}

struct Files {
    kernel: PathBuf,
    initrd: PathBuf,
    root: PathBuf,
    data: PathBuf,
}

const APPEND: &[&str] = &[
    "console=ttyAMA0",
    "quiet",
    "panic=-1",
    "root=/dev/vda",
    "rw",
    "vmm_e2e=bench",
];

/// A fresh copy of the root disk and a zeroed data disk.
fn fresh_disks(f: &Files) -> Result<(), String> {
    let template = guest::rootdisk_template().map_err(|e| e.to_string())?;
    cmd::run(
        "copy the root disk",
        Command::new("cp")
            .args(["--sparse=always"])
            .arg(&template)
            .arg(&f.root),
    )?;
    let data = std::fs::File::create(&f.data).map_err(|e| e.to_string())?;
    data.set_len(DATA_MIB << 20).map_err(|e| e.to_string())
}

fn direct(f: &Files, ns: Option<&Netns>) -> Result<Sample, String> {
    fresh_disks(f)?;
    let net = ns.map(net_server).transpose()?;
    let qemu = "qemu-system-aarch64";
    let mut cmd = match ns {
        Some(ns) => ns.command(qemu),
        None => Command::new(qemu),
    };
    cmd.args([
        "-M",
        "virt",
        "-cpu",
        "cortex-a57",
        "-m",
        "256M",
        "-nographic",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(&f.kernel)
    .arg("-initrd")
    .arg(&f.initrd)
    .args(["-append", &APPEND.join(" ")])
    // QEMU's virt lists virtio-mmio devices last-created first: the data disk goes
    // first so that the root disk is vda, as under bhyve.
    .arg("-drive")
    .arg(format!(
        "if=none,format=raw,id=data,file={}",
        f.data.display()
    ))
    .args(["-device", "virtio-blk-device,drive=data"])
    .arg("-drive")
    .arg(format!(
        "if=none,format=raw,id=root,file={}",
        f.root.display()
    ));
    cmd.args(["-device", "virtio-blk-device,drive=root"]);
    if ns.is_some() {
        cmd.args([
            "-netdev",
            &format!("tap,id=n0,ifname={TAP},script=no,downscript=no"),
        ])
        .args(["-device", "virtio-net-device,netdev=n0"]);
    }
    let out = proc::run(&mut cmd, Duration::from_secs(600)).map_err(|e| e.to_string())?;
    eprintln!("xtask: plain QEMU: {:.1?}", out.elapsed);
    finish("plain QEMU", &out, net)
}

fn stack(f: &Files, socket: &Path, ns: Option<&Netns>, sync: bool) -> Result<Sample, String> {
    fresh_disks(f)?;
    load(socket, VM, &f.kernel, &f.initrd, APPEND)?;
    let net = ns.map(net_server).transpose()?;
    let bhyve = proc::tool("bhyve");
    let mut cmd = match ns {
        Some(ns) => ns.command(&bhyve),
        None => Command::new(&bhyve),
    };
    cmd.env("VMM_TESTBED", socket)
        .arg("-b")
        .arg("-s")
        .arg(format!("0,virtio-blk,{}", f.root.display()))
        .arg("-s")
        .arg(format!("1,virtio-blk,{}", f.data.display()));
    if ns.is_some() {
        cmd.args(["-s", &format!("2,virtio-net,{TAP}")]);
    }
    if !sync {
        cmd.env(libvmmapi::testbed::NO_SYNC_ENV, "1");
    }
    cmd.arg(VM);
    let out = proc::run(&mut cmd, Duration::from_secs(600)).map_err(|e| e.to_string())?;
    // A failed destroy only leaves the VM for the next run's bhyveload to reinitialise.
    let (stats, _destroy) = stats_and_destroy(socket, VM)?;
    eprintln!("xtask: our stack (sync {sync}): {:.1?}", out.elapsed);
    let mut s = finish("our stack", &out, net)?;
    let st = Stats::parse(&stats.stdout);
    s.exits = st.total_exits();
    s.to_user = st.get("vm exits returned to userspace");
    Ok(s)
}

fn value(samples: &[Sample], metric: &str) -> Option<f64> {
    median(
        samples
            .iter()
            .filter_map(|s| s.values.iter().find(|(n, _)| *n == metric).map(|(_, v)| *v))
            .collect(),
    )
}

pub fn bench_devices(args: &[String]) -> Result<(), String> {
    let runs = parse_runs("bench-devices", args, 1)?;
    proc::build_tools().map_err(|e| e.to_string())?;
    let testbed = build::build_testbed()?;
    let dir = proc::bin_dir()
        .parent()
        .map(|p| p.join("bench-devices"))
        .ok_or("no target directory")?;
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let f = Files {
        kernel: guest::kernel().map_err(|e| e.to_string())?,
        initrd: guest::root_initramfs().map_err(|e| e.to_string())?,
        root: dir.join("root.img"),
        data: dir.join("data.img"),
    };
    let ns = if netns::have_root() {
        Some(Netns::new("vmm-bench-devices").map_err(|e| e.to_string())?)
    } else {
        eprintln!("xtask: not root: no network namespace, so no network rows");
        None
    };
    eprintln!("xtask: testbed up (logs in {})", dir.display());
    let (bed, socket) = serve(&testbed, dir.join("testbed"), false, HostCpu::CortexA57)?;
    let (mut d, mut s, mut n) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        d.push(direct(&f, ns.as_ref())?);
        s.push(stack(&f, &socket, ns.as_ref(), true)?);
        n.push(stack(&f, &socket, ns.as_ref(), false)?);
        eprintln!(
            "xtask: run {}: direct {:?}\n  stack {:?}\n  stack without sync {:?}",
            i + 1,
            d[i].values,
            s[i].values,
            n[i].values
        );
    }
    drop(bed);
    println!("\nbench-devices: medians of {runs} run(s); higher is better; ratio = ours / QEMU's");
    println!(
        "{:<34} {:>12} {:>12} {:>8} {:>16} {:>8}",
        "metric", "plain QEMU", "our stack", "ratio", "ours, no sync", "ratio"
    );
    for (metric, what) in METRICS {
        let (q, o, u) = (value(&d, metric), value(&s, metric), value(&n, metric));
        if q.is_none() && o.is_none() {
            continue;
        }
        let fmt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        println!(
            "{what:<34} {:>12} {:>12} {:>8} {:>16} {:>8}",
            fmt(q),
            fmt(o),
            ratio(o, q),
            fmt(u),
            ratio(u, q)
        );
    }
    if let Some(last) = s.last() {
        println!(
            "\nlast run under our stack: {} exits, {} to bhyve",
            last.exits.map_or("?".into(), |v| v.to_string()),
            last.to_user.map_or("?".into(), |v| v.to_string())
        );
    }
    Ok(())
}
