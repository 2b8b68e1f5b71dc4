//! The vGIC and the virtual timer through the core on real (emulated) EL2 hardware:
//! the `vgic_timer` guest takes its virtual timer's interrupt (INTID 27) and an SPI
//! asserted with VM_ASSERT_IRQ through the list registers of QEMU's GICv3 virtual CPU
//! interface, acknowledging and EOIing them with the ICC system registers.
//! (A child module of `core_tests`, whose helpers it uses.)

use super::{get_reg, hvc_of, run, start, vm_ioctl, with_vm, Core};
use crate::timer;
use alloc::format;
use alloc::string::String;
use vmm_sys::abi::*;
use vmm_sys::ioctl::*;
use vmm_sys::reg::VM_REG_GUEST_X0;

/// The platform's windows (vmm_platform::GICD / gicr(1)).
const GICD: u64 = 0x2f00_0000;
const GICR: u64 = 0x2f10_0000;

fn exits(vmm: &Core, name: &[u8]) -> Result<u64, String> {
    let mut st = VmStats {
        cpuid: 0,
        ..Default::default()
    };
    vm_ioctl(vmm, name, VM_STATS, &mut st)?;
    // Counter 0: total exits (vmm-kmod's stats.rs).
    Ok(st.statbuf[0])
}

fn expect_hvc(vmm: &Core, name: &[u8], e: &VmExit, want: u64) -> Result<(), String> {
    match hvc_of(e) {
        Some(n) if n == want => Ok(()),
        Some(3) => Err(format!(
            "guest failed: x0 = {:#x} at pc {:#x}",
            get_reg(vmm, name, VM_REG_GUEST_X0)?,
            e.pc
        )),
        _ => Err(format!(
            "exit code {} at pc {:#x}, wanted hvc #{want}",
            e.exitcode, e.pc
        )),
    }
}

pub fn timer_and_spi(vmm: &Core, image: &[u8]) -> Result<String, String> {
    let name = b"tb-vgic";
    start(vmm, name, image, 0)?;
    with_vm(vmm, name, || {
        attach_one(vmm, name)?;
        let t0 = timer::now();
        let e = run(vmm, name)?;
        expect_hvc(vmm, name, &e, 1)?;
        let us = (timer::now() - t0) * 1_000_000 / timer::freq();
        let ticks = get_reg(vmm, name, VM_REG_GUEST_X0)?;
        if ticks != 1 {
            return Err(format!("{ticks} virtual timer interrupts taken, want 1"));
        }
        if us < 1_500 {
            return Err(format!("timer interrupt after {us} us, armed 2 ms ahead"));
        }
        let timer_exits = exits(vmm, name)?;
        // Setup is ~10 MMIO exits, the WFI, the maintenance interrupt after the EOI:
        // a guest exited again and again by the host's PPI 27 would show thousands.
        if timer_exits > 100 {
            return Err(format!("{timer_exits} exits to take one timer interrupt"));
        }
        vm_ioctl(vmm, name, VM_ASSERT_IRQ, &mut VmIrq { irq: 33 })?;
        let e = run(vmm, name)?;
        expect_hvc(vmm, name, &e, 2)?;
        let (x0, x1) = (
            get_reg(vmm, name, VM_REG_GUEST_X0)?,
            get_reg(vmm, name, VM_REG_GUEST_X0 + 1)?,
        );
        vm_ioctl(vmm, name, VM_DEASSERT_IRQ, &mut VmIrq { irq: 33 })?;
        if (x0, x1) != (1, 1) {
            return Err(format!(
                "interrupts taken: timer {x0}, SPI 33 {x1}; want 1, 1"
            ));
        }
        Ok(format!(
            "INTID 27 taken through the list registers {us} us after arming 2 ms ahead ({timer_exits} exits incl. setup), SPI 33 from VM_ASSERT_IRQ taken and EOIed ({} exits in all)",
            exits(vmm, name)?
        ))
    })
}

fn attach_one(vmm: &Core, name: &[u8]) -> Result<(), String> {
    let mut d = VmVgicDescr {
        ver: VmVgicVersion {
            version: 3,
            flags: 0,
        },
        v3_regs: VgicV3Regs {
            dist_start: GICD,
            dist_size: 0x1_0000,
            redist_start: GICR,
            redist_size: 0x2_0000,
        },
    };
    vm_ioctl(vmm, name, VM_ATTACH_VGIC, &mut d)
}

/// What VM_RUN of `tb-vgic-spin` on cpu 1 ended with: the hvc immediate, 100 + the
/// exit code for another exit, u64::MAX for an error.
fn spin_runner(vmm: u64) -> u64 {
    // SAFETY: spi_to_running_vcpu passes a &Core it keeps alive until cpu::wait.
    let vmm: &Core = unsafe { &*(vmm as *const Core) };
    match run(vmm, b"tb-vgic-spin") {
        Ok(e) => hvc_of(&e).unwrap_or(100 + e.exitcode as u64),
        Err(_) => u64::MAX,
    }
}

/// VM_ASSERT_IRQ from cpu 0 while the vCPU spins in the guest on cpu 1: the core
/// kicks cpu 1 (an SGI), the guest exits, the next entry's flush puts SPI 33 in a list
/// register and the guest takes it without leaving its spin loop.
pub fn spi_to_running_vcpu(vmm: &Core, image: &[u8], ncpu: usize) -> Result<String, String> {
    if ncpu < 2 {
        return Err("needs two cpus".into());
    }
    let name = b"tb-vgic-spin";
    start(vmm, name, image, 0)?;
    with_vm(vmm, name, || {
        attach_one(vmm, name)?;
        crate::cpu::post(1, spin_runner, vmm as *const Core as u64);
        // Let the guest set up and reach its spin loop on cpu 1.
        let t0 = timer::now();
        while timer::now() - t0 < timer::freq() / 50 {
            core::hint::spin_loop();
        }
        let sgis = crate::gic::count(1, crate::gic::SGI_WAKE);
        vm_ioctl(vmm, name, VM_ASSERT_IRQ, &mut VmIrq { irq: 33 })?;
        let r = crate::cpu::wait(1);
        let kicks = crate::gic::count(1, crate::gic::SGI_WAKE) - sgis;
        vm_ioctl(vmm, name, VM_DEASSERT_IRQ, &mut VmIrq { irq: 33 })?;
        if r != 2 {
            return Err(format!(
                "VM_RUN on cpu 1 ended with {r:#x} (x0 {:#x})",
                get_reg(vmm, name, VM_REG_GUEST_X0)?
            ));
        }
        let taken = get_reg(vmm, name, VM_REG_GUEST_X0 + 1)?;
        if taken != 1 {
            return Err(format!("SPI 33 taken {taken} times, want 1"));
        }
        if kicks == 0 {
            return Err("cpu 1 was never kicked".into());
        }
        Ok(format!(
            "SPI 33 asserted from cpu 0 reached the vCPU spinning on cpu 1 ({kicks} kick SGI(s), {} exits)",
            exits(vmm, name)?
        ))
    })
}
