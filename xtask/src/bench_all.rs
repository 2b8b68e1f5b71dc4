//! `cargo xtask bench [--cpu cortex-a57|max] [--runs N]`: the exit-cost benchmark
//! (bench-el2), the testbed side of a userspace exit (bench-exit) and the Linux boot
//! against plain QEMU (bench-boot) on each host mode
//! (both by default: cortex-a57 is the nVHE host, max the VHE one), then one summary
//! table with the KVM/arm64 reference figures and the goals of docs/PERFORMANCE.md, so
//! any commit can be compared. Prints numbers; asserts nothing. CI does not run it.

use crate::bench::{parse_runs, run_bench_boot, Console, Row};
use crate::bench_exit::{run_bench_exit, ExitCost};
use crate::kernel::{run_bench_el2, El2Costs};
use vmm_testbed_broker::launch::HostCpu;

/// A summary row: what, where its figure comes from, KVM's figure and our goal.
struct Metric {
    name: &'static str,
    figure: Figure,
    /// KVM/arm64 nVHE (Linux 6.1) on the same emulated machine (docs/PERFORMANCE.md).
    kvm: &'static str,
    goal: &'static str,
}

enum Figure {
    /// Instructions per exit of (path, exit) in bench-el2.
    Exit(&'static str, &'static str),
    /// A boot configuration (icount, console) of bench-boot: wall ratio.
    Wall(bool, Console),
    /// ... guest-time ratio.
    Guest(bool, Console),
    /// bhyveload's time in the plain full-console boot.
    Bhyveload,
    /// bench-exit: instructions of one of its figures.
    UserExit(fn(&ExitCost) -> f64),
}

const METRICS: &[Metric] = &[
    Metric {
        name: "trapped ID register (answered at EL2)",
        figure: Figure::Exit("vmm_core_vm_run", "sysreg_trap"),
        kvm: "~1,500",
        goal: "< 750",
    },
    Metric {
        name: "timer register read (answered at EL2)",
        figure: Figure::Exit("vmm_core_vm_run", "timer_sysreg"),
        kvm: "~1,500",
        goal: "< 750",
    },
    Metric {
        name: "timer register write (answered by the core)",
        figure: Figure::Exit("vmm_core_vm_run", "timer_write"),
        kvm: "~1,500",
        goal: "-",
    },
    Metric {
        name: "vGIC distributor read",
        figure: Figure::Exit("vmm_core_vgic", "gicd_mmio_read"),
        kvm: "2,293",
        goal: "< 1,150",
    },
    Metric {
        name: "self-IPI",
        figure: Figure::Exit("vmm_core_vgic", "self_ipi_eoi"),
        kvm: "-",
        goal: "< 2,800",
    },
    Metric {
        name: "cross-vCPU IPI",
        figure: Figure::Exit("vmm_core_vgic", "cross_vcpu_ipi"),
        kvm: "5,642",
        goal: "< 2,800",
    },
    Metric {
        name: "device register load (answered at EL2)",
        figure: Figure::Exit("vmm_core_mmio", "answered_load"),
        kvm: "-",
        goal: "-",
    },
    Metric {
        name: "device register store (queued at EL2; a take per 128)",
        figure: Figure::Exit("vmm_core_mmio", "queued_store"),
        kvm: "-",
        goal: "-",
    },
    Metric {
        name: "hvc to userspace and back (kernel side)",
        figure: Figure::Exit("vmm_core_vm_run", "hvc_round_trip"),
        kvm: "-",
        goal: "-",
    },
    Metric {
        name: "VM_RUN back from bhyve (testbed side)",
        figure: Figure::UserExit(|c| c.vm_run),
        kvm: "-",
        goal: "< 2,500",
    },
    Metric {
        name: "console exit, all its requests (testbed)",
        figure: Figure::UserExit(|c| c.per_exit),
        kvm: "-",
        goal: "-",
    },
    Metric {
        name: "boot, full console: wall / plain QEMU",
        figure: Figure::Wall(false, Console::Full),
        kvm: "5.5x",
        goal: "<= 2x",
    },
    Metric {
        name: "boot, full console: icount / plain QEMU",
        figure: Figure::Guest(true, Console::Full),
        kvm: "1.22x",
        goal: "<= 1.10x",
    },
    Metric {
        name: "boot, quiet: wall / plain QEMU",
        figure: Figure::Wall(false, Console::Quiet),
        kvm: "-",
        goal: "-",
    },
    Metric {
        name: "boot, quiet: icount / plain QEMU",
        figure: Figure::Guest(true, Console::Quiet),
        kvm: "-",
        goal: "-",
    },
    Metric {
        name: "boot, virtio console: wall / plain QEMU",
        figure: Figure::Wall(false, Console::Virtio),
        kvm: "-",
        goal: "~1x",
    },
    Metric {
        name: "boot, virtio console: icount / plain QEMU",
        figure: Figure::Guest(true, Console::Virtio),
        kvm: "-",
        goal: "~1x",
    },
    Metric {
        name: "bhyveload (256 MiB VM, 27 MiB kernel)",
        figure: Figure::Bhyveload,
        kvm: "-",
        goal: "< 0.3 s",
    },
];

/// One host mode's results.
struct Mode {
    cpu: HostCpu,
    el2: El2Costs,
    exit: ExitCost,
    boot: Vec<Row>,
}

impl Mode {
    fn row(&self, icount: bool, console: Console) -> Option<&Row> {
        self.boot
            .iter()
            .find(|r| r.icount == icount && r.console == console)
    }

    fn figure(&self, f: &Figure) -> String {
        let ratio = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}x"));
        match *f {
            Figure::Exit(path, what) => self.el2.get(path, what).map_or("-".into(), thousands),
            Figure::Wall(icount, console) => {
                ratio(self.row(icount, console).and_then(Row::wall_ratio))
            }
            Figure::Guest(icount, console) => {
                ratio(self.row(icount, console).and_then(Row::guest_ratio))
            }
            Figure::Bhyveload => self
                .row(false, Console::Full)
                .and_then(Row::bhyveload)
                .map_or("-".into(), |s| format!("{s:.2} s")),
            Figure::UserExit(f) => thousands(f(&self.exit).round() as u64),
        }
    }
}

/// 12345 as "12,345".
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn bench(args: &[String]) -> Result<(), String> {
    let mut cpus = Vec::new();
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--cpu" {
            let name = it.next().ok_or("--cpu needs cortex-a57 or max")?;
            cpus.push(HostCpu::parse(name).map_err(|e| e.to_string())?);
        } else {
            rest.push(a.clone());
        }
    }
    if cpus.is_empty() {
        cpus = vec![HostCpu::CortexA57, HostCpu::Max];
    }
    let runs = parse_runs("bench", &rest, 3)?;
    let mut modes = Vec::new();
    for cpu in cpus {
        let el2 = run_bench_el2(cpu)?;
        let exit = run_bench_exit(runs, cpu)?;
        let boot = run_bench_boot(runs, cpu)?;
        modes.push(Mode {
            cpu,
            el2,
            exit,
            boot,
        });
    }
    println!("\nsummary: instructions per exit under -icount shift=0 (exact), boot ratios against plain QEMU on the same CPU model in the same run (medians of {runs}; wall figures move with the machine's load)");
    print!("{:<42}", "");
    for m in &modes {
        print!(" {:>14}", format!("{} ({})", m.cpu.mode(), short(m.cpu)));
    }
    println!(" {:>10} {:>10}", "KVM nVHE", "goal");
    for metric in METRICS {
        print!("{:<42}", metric.name);
        for m in &modes {
            print!(" {:>14}", m.figure(&metric.figure));
        }
        println!(" {:>10} {:>10}", metric.kvm, metric.goal);
    }
    for m in &modes {
        for info in &m.el2.info {
            println!("({} host: {info})", m.cpu.mode());
        }
    }
    Ok(())
}

/// The CPU model's short name.
fn short(cpu: HostCpu) -> &'static str {
    match cpu {
        HostCpu::CortexA57 => "a57",
        HostCpu::Max => "max",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(1234), "1,234");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(100), "100");
    }
}
