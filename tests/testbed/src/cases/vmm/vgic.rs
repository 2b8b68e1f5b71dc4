//! The vGIC and the virtual timer through the core on real (emulated) EL2 hardware:
//! the `vgic_timer` guest takes its virtual timer's interrupt (INTID 27) and an SPI
//! asserted with VM_ASSERT_IRQ through the list registers of QEMU's GICv3 virtual CPU
//! interface, acknowledging and EOIing them with the ICC system registers.
//! (A child module of `cases::vmm`, whose helpers it uses.)

use super::{destroy, get_reg, hvc_of, read_guest_word, run, start, vm_ioctl, with_vm, Core};
use crate::kernel::timer;
use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicU64, Ordering};
use vmm_sys::abi::*;
use vmm_sys::ioctl::*;
use vmm_sys::reg::VM_REG_GUEST_X0;

/// The platform's windows (vmm_platform::GICD / gicr(1)).
const GICD: u64 = 0x2f00_0000;
const GICR: u64 = 0x2f10_0000;

fn exits(vmm: &Core, name: &[u8]) -> Result<u64, String> {
    super::stat(vmm, name, 0, vmm_core::stats::Stat::Exits)
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

/// A vGICv3 at the platform's windows with `ncpus` redistributors.
pub fn descr(ncpus: u64) -> VmVgicDescr {
    VmVgicDescr {
        ver: VmVgicVersion {
            version: 3,
            flags: 0,
        },
        v3_regs: VgicV3Regs {
            dist_start: GICD,
            dist_size: 0x1_0000,
            redist_start: GICR,
            redist_size: ncpus * 0x2_0000,
        },
    }
}

fn attach_one(vmm: &Core, name: &[u8]) -> Result<(), String> {
    vm_ioctl(vmm, name, VM_ATTACH_VGIC, &mut descr(1))
}

/// What VM_RUN of `tb-vgic-spin` on cpu 1 ended with: the hvc immediate, 100 + the
/// exit code for another exit, u64::MAX for an error; SPIN_RUNNING until it returns.
static SPIN_RESULT: AtomicU64 = AtomicU64::new(SPIN_RUNNING);
const SPIN_RUNNING: u64 = u64::MAX - 1;
/// The guest's flag (guest RAM is 64 KiB from 0x8000_0000; the code is below 8 KiB).
const SPIN_FLAG_GPA: u64 = 0x8000_f000;
/// How long the guest may take to start on cpu 1 (as destroy_kicks_running_vcpu: QEMU's
/// thread for that CPU can be descheduled for long on a loaded host).
const SPIN_START_SECS: u64 = 30;

fn spin_runner(vmm: u64) -> u64 {
    // SAFETY: spi_to_running_vcpu passes a &Core it keeps alive until cpu::wait.
    let vmm: &Core = unsafe { &*(vmm as *const Core) };
    let r = match run(vmm, b"tb-vgic-spin") {
        Ok(e) => hvc_of(&e).unwrap_or(100 + e.exitcode as u64),
        Err(_) => u64::MAX,
    };
    SPIN_RESULT.store(r, Ordering::SeqCst);
    r
}

/// VM_ASSERT_IRQ from cpu 0 while the vCPU spins in the guest on cpu 1: the core
/// kicks cpu 1 (`kick_cpu`, an SGI), the guest exits, the next entry's flush puts SPI 33
/// in a list register and the guest takes it without leaving its spin loop.
///
/// The SPI is asserted only once the guest has written its flag, so the vCPU is in the
/// guest with IRQs unmasked: asserted earlier, the SPI would simply be flushed at the
/// first entry with no kick needed. The kick is counted through the testbed host's
/// `kick_cpu` calls from then on, not through SGI 0 on cpu 1: that SGI also posts the job
/// and is broadcast by every `wakeup` (VM_ASSERT_IRQ makes one too), either of which
/// would make the guest exit as well.
pub fn spi_to_running_vcpu(vmm: &Core, image: &[u8], ncpu: usize) -> Result<String, String> {
    if ncpu < 2 {
        return Err("needs two cpus".into());
    }
    let name = b"tb-vgic-spin";
    start(vmm, name, image, SPIN_FLAG_GPA)?;
    let r = spin_and_assert(vmm, name);
    // The destroy also kicks a vCPU still in the guest after a failure, so cpu 1 is free
    // for the next test (`wait` returns at once if its call is over).
    let d = destroy(vmm, name);
    crate::kernel::cpu::wait(1);
    d?;
    r
}

fn spin_and_assert(vmm: &Core, name: &[u8]) -> Result<String, String> {
    attach_one(vmm, name)?;
    let (_, flag, _) = vmm
        .gpa_to_pa(name, SPIN_FLAG_GPA)
        .ok_or("gpa_to_pa of the flag")?;
    // SAFETY: `flag` maps 8 bytes of the VM's RAM; nothing runs the guest yet.
    // Written and cleaned so no dirty host line can later overwrite the guest's store.
    unsafe {
        core::ptr::write_volatile(flag as *mut u64, 0);
        vmm_arm64::cache::clean_inval_dcache_poc(flag as usize, 8);
    }
    SPIN_RESULT.store(SPIN_RUNNING, Ordering::SeqCst);
    crate::kernel::cpu::post(1, spin_runner, vmm as *const Core as u64);
    let t0 = timer::now();
    while read_guest_word(flag) != 1 {
        if SPIN_RESULT.load(Ordering::SeqCst) != SPIN_RUNNING {
            let r = SPIN_RESULT.load(Ordering::SeqCst);
            return Err(format!(
                "VM_RUN on cpu 1 ended with {r:#x} before the guest spun (x0 {:#x})",
                get_reg(vmm, name, VM_REG_GUEST_X0)?
            ));
        }
        if timer::now() - t0 > timer::freq() * SPIN_START_SECS {
            // The caller's destroy stops a vCPU that starts after all (or hangs to
            // the harness's QEMU timeout, which fails too).
            return Err(format!(
                "the guest did not spin on cpu 1 within {SPIN_START_SECS} s"
            ));
        }
        crate::kernel::cpu::relax();
    }
    let started_us = (timer::now() - t0) * 1_000_000 / timer::freq();
    let kicks_before = crate::kernel::host::KICKS[1].load(Ordering::SeqCst);
    let sgis_before = crate::kernel::gic::count(1, crate::kernel::gic::SGI_WAKE);
    if SPIN_RESULT.load(Ordering::SeqCst) != SPIN_RUNNING {
        return Err("VM_RUN on cpu 1 returned before the SPI was asserted".into());
    }
    vm_ioctl(vmm, name, VM_ASSERT_IRQ, &mut VmIrq { irq: 33 })?;
    let r = crate::kernel::cpu::wait(1);
    let kicks = crate::kernel::host::KICKS[1].load(Ordering::SeqCst) - kicks_before;
    let sgis = crate::kernel::gic::count(1, crate::kernel::gic::SGI_WAKE) - sgis_before;
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
        return Err(format!(
            "the core never kicked cpu 1 ({sgis} SGI 0 taken there, from wakeups)"
        ));
    }
    Ok(format!(
        "SPI 33 asserted from cpu 0 reached the vCPU spinning on cpu 1 (guest spinning after {started_us} us; {kicks} kick(s), {sgis} SGI 0 taken on cpu 1, {} exits)",
        exits(vmm, name)?
    ))
}
