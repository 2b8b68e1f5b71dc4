//! GICv3 for the testbed's own interrupts: distributor, this CPU's redistributor and
//! the ICC system registers. SGIs are the IPIs; PPI 30 (26 on a VHE host) is the
//! host's physical timer.

use crate::kernel::cpu;
use crate::kernel::mm::{pa_to_va, MAX_CPUS};
use core::sync::atomic::{AtomicU64, Ordering};

const GICD_PA: u64 = 0x0800_0000;
const GICR_PA: u64 = 0x080a_0000;
const GICR_STRIDE: u64 = 0x2_0000;
const SGI_BASE: u64 = 0x1_0000;

const GICD_CTLR: u64 = 0x0;
const GICD_CTLR_RWP: u32 = 1 << 31;
const GICD_CTLR_ARE: u32 = 1 << 4;
const GICD_CTLR_GRP1: u32 = 1 << 1;
const GICR_WAKER: u64 = 0x14;
const GICR_TYPER: u64 = 0x8;
const GICR_IGROUPR0: u64 = 0x80;
const GICR_ISENABLER0: u64 = 0x100;
const GICR_ICENABLER0: u64 = 0x180;
const GICR_CTLR: u64 = 0x0;
const GICR_CTLR_RWP: u32 = 1 << 3;
const GICR_IPRIORITYR: u64 = 0x400;

/// SGI that wakes a CPU to look at its mailbox (and kicks a running vCPU out).
pub const SGI_WAKE: u32 = 0;
/// SGI used by the IPI test.
pub const SGI_PING: u32 = 1;
/// SGI that asks a CPU to run a `cpu::call_sync` function in its handler.
pub const SGI_CALL: u32 = 2;
/// The host's timer PPI: the EL1 physical timer (30) on an nVHE host; on a VHE host
/// the kernel's CNTP_* accesses reach the EL2 physical timer, PPI 26.
pub fn ppi_timer() -> u32 {
    if cpu::vhe_host() {
        26
    } else {
        30
    }
}
/// The vGIC maintenance interrupt: enabled so that it ends a guest's run (EOI of a
/// level interrupt, list register underflow); the world switch drops it at exit.
pub const PPI_MAINT: u32 = 25;
/// The virtual timer's PPI: enabled so that a guest's virtual timer firing ends its run
/// (the host's own virtual timer is off); held (disabled) while a guest whose timer
/// line is high is entered (`hold_ppi`).
pub const PPI_VTIMER: u32 = 27;

/// Each CPU's redistributor (RD_base PA), found by `init_cpu`.
static MY_RD: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

pub static IRQ_COUNT: [[AtomicU64; 32]; MAX_CPUS] =
    [const { [const { AtomicU64::new(0) }; 32] }; MAX_CPUS];

fn r32(pa: u64) -> u32 {
    // SAFETY: GIC registers, mapped device memory in the direct map.
    unsafe { core::ptr::read_volatile(pa_to_va(pa) as *const u32) }
}
fn w32(pa: u64, v: u32) {
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(pa_to_va(pa) as *mut u32, v) }
}
fn r64(pa: u64) -> u64 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(pa_to_va(pa) as *const u64) }
}

/// Distributor: affinity routing, group 1 on. Once, on CPU 0.
pub fn init_distributor() {
    w32(GICD_PA + GICD_CTLR, GICD_CTLR_ARE);
    while r32(GICD_PA + GICD_CTLR) & GICD_CTLR_RWP != 0 {}
    w32(GICD_PA + GICD_CTLR, GICD_CTLR_ARE | GICD_CTLR_GRP1);
    while r32(GICD_PA + GICD_CTLR) & GICD_CTLR_RWP != 0 {}
}

fn my_redistributor() -> Option<u64> {
    let mpidr = cpu::mpidr();
    let aff = (mpidr & 0xff_ffff) | ((mpidr >> 32 & 0xff) << 24);
    let mut rd = GICR_PA;
    for _ in 0..64 {
        let typer = r64(rd + GICR_TYPER);
        if typer >> 32 == aff {
            return Some(rd);
        }
        if typer & (1 << 4) != 0 {
            return None;
        }
        rd += GICR_STRIDE;
    }
    None
}

/// This CPU's redistributor and CPU interface. Returns false if none matches MPIDR.
pub fn init_cpu() -> bool {
    let Some(rd) = my_redistributor() else {
        return false;
    };
    w32(rd + GICR_WAKER, r32(rd + GICR_WAKER) & !(1 << 1));
    while r32(rd + GICR_WAKER) & (1 << 2) != 0 {}
    let sgi = rd + SGI_BASE;
    w32(sgi + GICR_IGROUPR0, u32::MAX);
    for i in 0..8 {
        w32(sgi + GICR_IPRIORITYR + 4 * i, 0x8080_8080);
    }
    w32(
        sgi + GICR_ISENABLER0,
        0xffff | (1 << ppi_timer()) | (1 << PPI_MAINT) | (1 << PPI_VTIMER),
    );
    if let Some(slot) = MY_RD.get(cpu::id()) {
        slot.store(rd, Ordering::Relaxed);
    }
    // SAFETY: ICC system registers of this CPU; EL2 left ICC_SRE_EL2.Enable set.
    unsafe {
        core::arch::asm!(
            "mrs {t}, icc_sre_el1",
            "orr {t}, {t}, #1",
            "msr icc_sre_el1, {t}",
            "isb",
            "mov {t}, #0xff",
            "msr icc_pmr_el1, {t}",
            "msr icc_bpr1_el1, xzr",
            "mov {t}, #1",
            "msr icc_igrpen1_el1, {t}",
            "isb",
            t = out(reg) _,
        )
    };
    true
}

/// Disables (`held`) or re-enables PPI `intid` in this CPU's redistributor, waiting
/// for a disable to take effect (GICR_CTLR.RWP). Interrupts must be off (stays on
/// this CPU).
pub fn hold_ppi(intid: u32, held: bool) {
    let Some(rd) = MY_RD.get(cpu::id()).map(|r| r.load(Ordering::Relaxed)) else {
        return;
    };
    if rd == 0 || intid >= 32 {
        return;
    }
    let sgi = rd + SGI_BASE;
    if held {
        w32(sgi + GICR_ICENABLER0, 1 << intid);
        while r32(rd + GICR_CTLR) & GICR_CTLR_RWP != 0 {}
    } else {
        w32(sgi + GICR_ISENABLER0, 1 << intid);
    }
}

/// Sends SGI `intid` to CPU `target` (Aff0 = CPU index on QEMU virt).
pub fn send_sgi(target: usize, intid: u32) {
    let v = ((intid as u64) << 24) | (1u64 << (target & 15));
    // SAFETY: generates a group-1 SGI; no memory effect.
    unsafe { core::arch::asm!("dsb ishst", "msr icc_sgi1r_el1, {0}", "isb", in(reg) v) };
}

/// Called from the IRQ vector.
pub fn handle_irq() {
    loop {
        let iar: u64;
        // SAFETY: acknowledges the highest-priority pending group-1 interrupt.
        unsafe { core::arch::asm!("mrs {0}, icc_iar1_el1", out(reg) iar) };
        let intid = (iar & 0xff_ffff) as u32;
        if intid >= 1020 {
            return;
        }
        if let Some(c) = IRQ_COUNT.get(cpu::id()).and_then(|c| c.get(intid as usize)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if intid == ppi_timer() {
            crate::kernel::timer::on_irq();
        }
        if intid == SGI_CALL {
            crate::kernel::cpu::handle_call_ipi();
        }
        // SAFETY: ends the interrupt just acknowledged.
        unsafe { core::arch::asm!("msr icc_eoir1_el1, {0}", "isb", in(reg) iar) };
    }
}

pub fn count(cpu: usize, intid: u32) -> u64 {
    IRQ_COUNT[cpu][intid as usize].load(Ordering::Relaxed)
}
