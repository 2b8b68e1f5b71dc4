//! The EL1 physical generic timer (PPI 30), one-shot.

pub fn freq() -> u64 {
    let f: u64;
    // SAFETY: reads the counter frequency.
    unsafe { core::arch::asm!("mrs {0}, cntfrq_el0", out(reg) f) };
    f
}

pub fn now() -> u64 {
    let c: u64;
    // SAFETY: reads the physical counter (CNTHCTL_EL2.EL1PCTEN is set).
    unsafe { core::arch::asm!("isb", "mrs {0}, cntpct_el0", out(reg) c) };
    c
}

/// Fires the timer interrupt after `ticks`.
pub fn arm(ticks: u64) {
    // SAFETY: programs this CPU's EL1 physical timer (CNTHCTL_EL2.EL1PCEN is set).
    unsafe {
        core::arch::asm!("msr cntp_tval_el0, {0}", "mov {1}, #1", "msr cntp_ctl_el0, {1}", "isb",
            in(reg) ticks, out(reg) _)
    };
}

/// From the IRQ handler: mask the one-shot timer so it does not fire again.
pub fn on_irq() {
    // SAFETY: disables this CPU's EL1 physical timer.
    unsafe { core::arch::asm!("msr cntp_ctl_el0, xzr", "isb") };
}
