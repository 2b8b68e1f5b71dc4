//! Round-trip costs of the served testbed, measured from Linux (a benchmark, never
//! asserted): `cargo xtask testbed up`, then
//! `VMM_TESTBED=... cargo run -p vmm-testbed-broker --example latency`.
//! Prints the mean wall time of a register read (CPU 0 answers) and of a VM_RUN whose
//! guest exits at once with `hvc` (CPU 0 hands it to CPU 1 and back).

use libvmmapi::{Reg, Vm};
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress};

fn main() {
    if let Err(e) = run() {
        eprintln!("latency: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    const N: u32 = 1000;
    let backend = libvmmapi::backend_from_env()?;
    let name = format!("latency-{}", std::process::id());
    let vm = Vm::create_with(backend, &name)?;
    let result = (|| -> Result<(), Box<dyn std::error::Error>> {
        vm.setup_memory(0x8000_0000, 2 << 20)?;
        // hvc #0; b . -- the vCPU resumes after the hvc, so reset the PC each time.
        let mem = vm.guest_memory()?;
        mem.write_obj(0xd400_0002u32, GuestAddress(0x8000_0000))?;
        mem.write_obj(0x1400_0000u32, GuestAddress(0x8000_0004))?;
        let cpu = vm.vcpu(0)?;
        cpu.set_reg(Reg::Cpsr, 0x3c5)?;
        cpu.activate()?;
        let t = Instant::now();
        for _ in 0..N {
            cpu.get_reg(Reg::X(0))?;
        }
        let reg = t.elapsed() / N;
        let t = Instant::now();
        for _ in 0..N {
            cpu.set_reg(Reg::Pc, 0x8000_0000)?;
            cpu.run()?;
        }
        let run = t.elapsed() / N;
        println!("VM_GET_REGISTER round trip: {reg:?}");
        println!("VM_SET_REGISTER + VM_RUN to an hvc exit: {run:?}");
        Ok(())
    })();
    vm.destroy()?;
    result
}
