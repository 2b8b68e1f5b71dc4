//! The command logic, against any backend (the FreeBSD one in use, the fake in tests).

use crate::cli::Opts;
use libvmmapi::{Backend, Error, Reg, SuspendHow, Vcpu, Vm};
use std::io::Write;
use std::sync::Arc;

/// Why bhyvectl failed; printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{}", vm_line(.0))]
    Vm(#[from] Error),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// `vm 'NAME': <cause>` for errors about a VM, the plain message otherwise.
fn vm_line(e: &Error) -> String {
    match e.vm() {
        Some(vm) => format!("vm '{vm}': {}", e.cause()),
        None => e.to_string(),
    }
}

/// Formats a CPU list as bhyvectl does: `0, 1, 3` or `(none)`.
fn cpu_list(cpus: &[u32]) -> String {
    if cpus.is_empty() {
        return "(none)".into();
    }
    cpus.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads `regs` in one request. With `skip_unknown`, if the kernel refuses the set
/// (EINVAL: a register it does not serve), reads them one by one and leaves out those it
/// refuses.
fn read_regs(cpu: &Vcpu, regs: &[Reg], skip_unknown: bool) -> Result<Vec<(Reg, u64)>, Error> {
    match cpu.get_regs(regs) {
        Ok(values) => Ok(regs.iter().copied().zip(values).collect()),
        Err(e) if skip_unknown && e.errno() == Some(libc::EINVAL) => {
            let mut out = Vec::new();
            for &r in regs {
                match cpu.get_reg(r) {
                    Ok(v) => out.push((r, v)),
                    Err(e) if e.errno() == Some(libc::EINVAL) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        }
        Err(e) => Err(e),
    }
}

/// Runs what `opts` asks, writing results to `out`: create first, then register
/// writes, reads, CPU sets, statistics, forced suspension, destroy last.
pub fn run(opts: &Opts, backend: Arc<dyn Backend>, out: &mut dyn Write) -> Result<(), CtlError> {
    if opts.list {
        for name in Vm::list_with(&*backend)? {
            writeln!(out, "{name}")?;
        }
    }
    let Some(name) = opts.vm.as_deref() else {
        return Ok(());
    };
    let vm = if opts.create {
        Vm::create_with(backend, name)?
    } else {
        Vm::open_with(backend, name)?
    };
    let needs_cpu = !opts.set_regs.is_empty() || !opts.get_regs.is_empty() || opts.get_stats;
    if needs_cpu {
        let cpu = vm.vcpu(opts.cpu)?;
        if !opts.set_regs.is_empty() {
            cpu.set_regs(&opts.set_regs)?;
        }
        if !opts.get_regs.is_empty() {
            for (reg, v) in read_regs(&cpu, &opts.get_regs, opts.all_regs)? {
                writeln!(out, "{}[{}]\t0x{v:016x}", reg.name(), opts.cpu)?;
            }
        }
    }
    if opts.get_active_cpus {
        writeln!(out, "active cpus:\t{}", cpu_list(&vm.active_cpus()?))?;
    }
    if opts.get_suspended_cpus {
        writeln!(out, "suspended cpus:\t{}", cpu_list(&vm.suspended_cpus()?))?;
    }
    if opts.get_stats {
        writeln!(out, "vcpu{} stats:", opts.cpu)?;
        for (desc, value) in vm.stats(opts.cpu)? {
            writeln!(out, "{desc:<50}\t{value}")?;
        }
    }
    if opts.force_reset {
        vm.suspend(SuspendHow::Reset)?;
    }
    if opts.force_poweroff {
        vm.suspend(SuspendHow::Poweroff)?;
    }
    if opts.destroy {
        vm.destroy()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::parse;
    use libvmmapi::fake::FakeVmm;
    use libvmmapi::{BackendError, Mapping, Request};

    fn bhyvectl(fake: &Arc<FakeVmm>, args: &[&str]) -> Result<String, String> {
        let opts = parse(std::iter::once("bhyvectl").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        run(&opts, fake.backend(), &mut out).map_err(|e| e.to_string())?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn create_list_destroy() {
        let fake = FakeVmm::new();
        assert_eq!(bhyvectl(&fake, &["--vm=vm1", "--create"]).unwrap(), "");
        bhyvectl(&fake, &["--vm=vm0", "--create"]).unwrap();
        assert_eq!(bhyvectl(&fake, &["--list"]).unwrap(), "vm0\nvm1\n");
        assert_eq!(
            bhyvectl(&fake, &["--vm=vm0", "--create"]).unwrap_err(),
            "vm 'vm0': already exists"
        );
        bhyvectl(&fake, &["--vm=vm0", "--destroy"]).unwrap();
        assert_eq!(fake.vm_names(), ["vm1"]);
        assert_eq!(
            bhyvectl(&fake, &["--vm=vm0", "--destroy"]).unwrap_err(),
            "vm 'vm0': does not exist"
        );
        assert_eq!(
            bhyvectl(&fake, &["--vm=nope", "--get-pc"]).unwrap_err(),
            "vm 'nope': does not exist"
        );
        assert_eq!(
            bhyvectl(&fake, &["--vm=a/b", "--create"]).unwrap_err(),
            "vm 'a/b': VM name contains '/'"
        );
        assert_eq!(bhyvectl(&fake, &["--list"]).unwrap(), "vm1\n");
    }

    #[test]
    fn registers() {
        let fake = FakeVmm::new();
        bhyvectl(&fake, &["--vm=r", "--create"]).unwrap();
        bhyvectl(
            &fake,
            &[
                "--vm=r",
                "--cpu=1",
                "--set-reg=pc=0x80000000",
                "--set-reg=x0=17",
            ],
        )
        .unwrap();
        assert_eq!(fake.reg("r", 1, Reg::Pc), 0x8000_0000);
        assert_eq!(fake.reg("r", 1, Reg::X(0)), 17);
        assert_eq!(fake.reg("r", 0, Reg::Pc), 0);
        assert_eq!(
            bhyvectl(&fake, &["--vm=r", "--cpu=1", "--get-pc", "--get-x0"]).unwrap(),
            "x0[1]\t0x0000000000000011\npc[1]\t0x0000000080000000\n"
        );
        let all = bhyvectl(&fake, &["--vm=r", "--cpu=1", "--get-all-regs"]).unwrap();
        let lines: Vec<&str> = all.lines().collect();
        assert_eq!(lines.len(), 40);
        assert_eq!(lines[32], "pc[1]\t0x0000000080000000");
        // The kernel's affinity for vCPU 1.
        assert_eq!(lines[39], "mpidr_el1[1]\t0x0000000080000001");
        // Set before get, in one invocation.
        assert_eq!(
            bhyvectl(&fake, &["--vm=r", "--set-reg=sp=0x1000", "--get-sp"]).unwrap(),
            "sp[0]\t0x0000000000001000\n"
        );
        assert!(bhyvectl(&fake, &["--vm=r", "--cpu=16", "--get-pc"])
            .unwrap_err()
            .starts_with("vm 'r': vcpu 16 out of range"));
    }

    /// A kernel that does not serve MPIDR_EL1 (as FreeBSD 15's vmm.ko).
    #[derive(Debug)]
    struct NoMpidr(Arc<FakeVmm>);
    impl Backend for NoMpidr {
        fn name(&self) -> &'static str {
            "no-mpidr"
        }
        fn execute(&self, req: &mut Request) -> Result<(), BackendError> {
            let mpidr = (Reg::MpidrEl1.number() as i32).to_ne_bytes();
            let asks = match req.cmd {
                vmm_sys::ioctl::VM_GET_REGISTER => req.arg[4..8] == mpidr,
                vmm_sys::ioctl::VM_GET_REGISTER_SET => {
                    req.buffers[0].data.chunks(4).any(|c| c == mpidr)
                }
                _ => false,
            };
            if asks {
                return Err(BackendError::Errno(libc::EINVAL));
            }
            self.0.execute(req)
        }
        fn map_memory(&self, vm: &str, gpa: u64, len: usize) -> Result<Mapping, BackendError> {
            self.0.map_memory(vm, gpa, len)
        }
    }

    #[test]
    fn all_regs_leaves_out_what_the_kernel_refuses() {
        let fake = FakeVmm::new();
        bhyvectl(&fake, &["--vm=m", "--create", "--set-reg=pc=4"]).unwrap();
        let b: Arc<dyn Backend> = Arc::new(NoMpidr(fake.clone()));
        let run_on = |args: &[&str]| {
            let opts = parse(std::iter::once("bhyvectl").chain(args.iter().copied())).unwrap();
            let mut out = Vec::new();
            run(&opts, b.clone(), &mut out).map(|()| String::from_utf8(out).unwrap())
        };
        let all = run_on(&["--vm=m", "--get-all-regs"]).unwrap();
        assert_eq!(all.lines().count(), 39);
        assert!(all.contains("pc[0]\t0x0000000000000004"));
        assert!(!all.contains("mpidr"));
        // Asked for by name, a refused register is an error.
        let e = run_on(&["--vm=m", "--get-mpidr_el1"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "vm 'm': VM_GET_REGISTER_SET: Invalid argument"
        );
    }

    #[test]
    fn cpus_stats_and_suspend() {
        let fake = FakeVmm::new();
        bhyvectl(&fake, &["--vm=s", "--create"]).unwrap();
        assert_eq!(
            bhyvectl(&fake, &["--vm=s", "--get-active-cpus"]).unwrap(),
            "active cpus:\t(none)\n"
        );
        let vm = Vm::open_with(fake.backend(), "s").unwrap();
        vm.vcpu(0).unwrap().activate().unwrap();
        vm.vcpu(2).unwrap().activate().unwrap();
        assert_eq!(
            bhyvectl(
                &fake,
                &["--vm=s", "--get-active-cpus", "--get-suspended-cpus"]
            )
            .unwrap(),
            "active cpus:\t0, 2\nsuspended cpus:\t(none)\n"
        );
        let stats = bhyvectl(&fake, &["--vm=s", "--cpu=2", "--get-stats"]).unwrap();
        assert!(stats.starts_with("vcpu2 stats:\n"), "{stats}");
        assert!(stats.contains("VM_RUN calls"), "{stats}");
        // A line per counter the kernel describes.
        assert_eq!(stats.lines().count(), 1 + vm.stats(2).unwrap().len());
        bhyvectl(&fake, &["--vm=s", "--force-poweroff"]).unwrap();
        assert_eq!(fake.suspended("s"), Some(SuspendHow::Poweroff));
        let e = bhyvectl(&fake, &["--vm=s", "--force-reset"]).unwrap_err();
        assert!(e.starts_with("vm 's': VM_SUSPEND: "), "{e}");
    }
}
