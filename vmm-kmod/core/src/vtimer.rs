//! The guest's generic timers.
//!
//! * The virtual timer (CNTV_*) is the hardware's: the world switch loads the guest's
//!   CNTV_CTL_EL0/CNTV_CVAL_EL0 with CNTVOFF_EL2 and saves them on exit. What the core
//!   must do in software is turn its output into the guest's PPI 27 (level-sensitive)
//!   after each exit, and know when it will fire if the vCPU is not in the guest
//!   (WFI sleep, or the thread back in userspace) to wake it: [`virt_level`],
//!   [`virt_deadline`].
//! * The EL1 physical timer (CNTP_*) traps (CNTHCTL_EL2.EL1PCEN = 0) and is emulated
//!   here against the host's counter: [`PhysTimer`], whose output is PPI 30. The guest's
//!   physical count is the host's (CNTPCT_EL0 is not offset; CNTHCTL_EL2.EL1PCTEN lets
//!   the guest read it directly).
//!
//! Timer output (Arm ARM, the Generic Timer chapter): the condition is met when the count >= CVAL
//! (CTL.ISTATUS shows it whenever ENABLE is set); the interrupt is asserted while
//! ENABLE = 1, IMASK = 0 and the condition is met. TVAL is CVAL - count as a signed
//! 32-bit value; writing it sets CVAL = count + sign-extended TVAL.
//!
//! See docs/vgic.md for how the host's view of the virtual timer's interrupt (its
//! physical PPI 27 firing while the guest runs) must be handled.

use crate::errno::KResult;
use crate::vgic::{Kicks, Vgic};
use vmm_sys::hyp::VtimerRegs;

pub use vmm_sys::arm64::timer::{output, PhysTimer, CTL_ENABLE, CTL_IMASK, CTL_ISTATUS};

/// The guest's virtual timer PPI (devicetree PPI 11).
pub const VIRT_TIMER_INTID: u32 = 27;
/// The guest's non-secure EL1 physical timer PPI (devicetree PPI 14).
pub const PHYS_TIMER_INTID: u32 = 30;

/// The guest's virtual count when the host's physical count is `now`.
pub const fn virtual_count(t: &VtimerRegs, now: u64) -> u64 {
    now.wrapping_sub(t.cntvoff_el2)
}

/// The virtual timer's output (PPI 27's line) with the host counter at `now`.
pub const fn virt_level(t: &VtimerRegs, now: u64) -> bool {
    output(t.cntv_ctl_el0, t.cntv_cval_el0, virtual_count(t, now))
}

/// The host counter value at which the virtual timer will assert, if it is armed
/// (enabled, unmasked) and not yet due at `now`. `None` if it is off or already due,
/// or if the host counter cannot reach it (CVAL + CNTVOFF past 2^64: a wrapped
/// deadline would lie in the past and turn a sleep into a spin).
pub fn virt_deadline(t: &VtimerRegs, now: u64) -> Option<u64> {
    if t.cntv_ctl_el0 & (CTL_ENABLE | CTL_IMASK) != CTL_ENABLE || virt_level(t, now) {
        return None;
    }
    t.cntv_cval_el0.checked_add(t.cntvoff_el2)
}

/// Both timers of a vCPU evaluated at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerEval {
    /// PPI 27's line.
    pub virt_level: bool,
    /// PPI 30's line.
    pub phys_level: bool,
    /// The earliest host counter value at which a timer that is armed but not yet due
    /// will assert: the core sleeps in WFI until then at the latest, and while the
    /// guest runs arms a host timer there for the physical timer (the virtual timer
    /// interrupts the guest by itself, see docs/vgic.md).
    pub deadline: Option<u64>,
    /// The physical timer's own deadline (the one a running guest needs a host timer
    /// for).
    pub phys_deadline: Option<u64>,
}

/// Evaluates the virtual timer `t` (from the context after an exit) and the physical
/// timer `p` at host count `now`.
pub fn evaluate(t: &VtimerRegs, p: &PhysTimer, now: u64) -> TimerEval {
    let vd = virt_deadline(t, now);
    let pd = p.deadline(now);
    let deadline = match (vd, pd) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    TimerEval {
        virt_level: virt_level(t, now),
        phys_level: p.level(now),
        deadline,
        phys_deadline: pd,
    }
}

/// Drives vCPU `vcpu`'s timer PPIs (27, 30) in `vgic` from `e`. The kicks name `vcpu`
/// when a timer interrupt became deliverable.
pub fn update_vgic(vgic: &mut Vgic, vcpu: usize, e: &TimerEval) -> KResult<Kicks> {
    let mut k = vgic.set_ppi_level(vcpu, VIRT_TIMER_INTID, e.virt_level)?;
    k.merge(vgic.set_ppi_level(vcpu, PHYS_TIMER_INTID, e.phys_level)?);
    Ok(k)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vmm_sys::hyp::VcpuContext;

    fn vt(ctl: u64, cval: u64, off: u64) -> VtimerRegs {
        VtimerRegs {
            cntv_ctl_el0: ctl,
            cntv_cval_el0: cval,
            cntvoff_el2: off,
        }
    }

    #[test]
    fn virtual_timer_due_not_due_masked_disabled() {
        // Virtual count = 1000 - 100 = 900.
        let due = vt(CTL_ENABLE, 900, 100);
        assert!(virt_level(&due, 1000));
        assert_eq!(virt_deadline(&due, 1000), None);

        let not_due = vt(CTL_ENABLE, 901, 100);
        assert!(!virt_level(&not_due, 1000));
        assert_eq!(virt_deadline(&not_due, 1000), Some(1001));
        assert!(virt_level(&not_due, 1001));

        let masked = vt(CTL_ENABLE | CTL_IMASK, 0, 0);
        assert!(!virt_level(&masked, 1000));
        assert_eq!(virt_deadline(&masked, 1000), None);

        let off = vt(0, 0, 0);
        assert!(!virt_level(&off, 1000));
        assert_eq!(virt_deadline(&off, 1000), None);

        // ISTATUS in the saved CTL does not matter: the count decides.
        let stale = vt(CTL_ENABLE | CTL_ISTATUS, 5000, 0);
        assert!(!virt_level(&stale, 1000));
    }

    #[test]
    fn virtual_count_uses_the_offset() {
        // The offset larger than the count: the virtual count wraps, as hardware.
        let t = vt(CTL_ENABLE, 10, 2000);
        assert_eq!(virtual_count(&t, 1000), 1000u64.wrapping_sub(2000));
        assert!(virt_level(&t, 1000), "a wrapped count is huge, so due");
        let t = vt(CTL_ENABLE, 10, 995);
        assert!(!virt_level(&t, 1000));
        assert_eq!(virt_deadline(&t, 1000), Some(1005));
    }

    #[test]
    fn evaluate_takes_the_earlier_deadline() {
        let mut p = PhysTimer::new();
        p.write_cval(3000);
        p.write_ctl(CTL_ENABLE);
        let t = vt(CTL_ENABLE, 1500, 0);
        let e = evaluate(&t, &p, 1000);
        assert_eq!(
            e,
            TimerEval {
                virt_level: false,
                phys_level: false,
                deadline: Some(1500),
                phys_deadline: Some(3000)
            }
        );
        let e = evaluate(&t, &p, 2000);
        assert!(e.virt_level && !e.phys_level);
        assert_eq!(e.deadline, Some(3000));
        let e = evaluate(&t, &p, 3000);
        assert!(e.virt_level && e.phys_level);
        assert_eq!(e.deadline, None);
        assert_eq!(evaluate(&vt(0, 0, 0), &PhysTimer::new(), 5).deadline, None);
    }

    #[test]
    fn timer_ppis_reach_the_vgic() {
        let mut g = Vgic::new(&[0x8000_0000], 0x2f00_0000, 0x2f10_0000, 3).unwrap();
        // Guest setup: group 1, enabled PPI 27 and 30, distributor group 1 on,
        // CPU interface group 1 on with PMR 0xf0.
        let mut v = 0xffff_ffffu64;
        g.mmio_access(0, 0x2f11_0080, 4, true, &mut v).unwrap();
        v = (1 << 27) | (1 << 30);
        g.mmio_access(0, 0x2f11_0100, 4, true, &mut v).unwrap();
        v = 2;
        g.mmio_access(0, 0x2f00_0000, 4, true, &mut v).unwrap();
        let regs = vmm_sys::hyp::VgicCpuRegs {
            ich_vmcr_el2: (0xf0 << 24) | 2,
            ..Default::default()
        };
        g.sync(0, &regs);
        assert!(!g.has_pending(0));

        let t = vt(CTL_ENABLE, 100, 0);
        let e = evaluate(&t, &PhysTimer::new(), 100);
        let k = update_vgic(&mut g, 0, &e).unwrap();
        assert!(k.contains(0));
        assert!(g.has_pending(0));
        // The guest reprograms the timer into the future: the line drops, and the
        // level-sensitive PPI is no longer pending.
        let t = vt(CTL_ENABLE, 500, 0);
        let e = evaluate(&t, &PhysTimer::new(), 100);
        assert!(update_vgic(&mut g, 0, &e).unwrap().is_empty());
        assert!(!g.has_pending(0));
        assert!(update_vgic(&mut g, 1, &e).is_err(), "no vCPU 1");
    }

    /// The path a guest's timer tick takes: the timer fires, the exit's evaluation
    /// pends PPI 27, the flush puts it in a list register with EOI maintenance, the
    /// guest acknowledges it, reprograms CVAL and EOIs; the maintenance exit's
    /// evaluation finds the line low and the next flush leaves nothing, with the new
    /// deadline reported for a WFI sleep.
    #[test]
    fn timer_tick_round_trip() {
        use crate::vgic::lr::{LR_ACTIVE, LR_EOI, LR_PENDING};
        let mut g = Vgic::new(&[0x8000_0000], 0x2f00_0000, 0x2f10_0000, 3).unwrap();
        let mut v = 0xffff_ffffu64;
        g.mmio_access(0, 0x2f11_0080, 4, true, &mut v).unwrap();
        v = 1 << 27;
        g.mmio_access(0, 0x2f11_0100, 4, true, &mut v).unwrap();
        v = 0x13;
        g.mmio_access(0, 0x2f00_0000, 4, true, &mut v).unwrap();
        let mut regs = vmm_sys::hyp::VgicCpuRegs {
            ich_vmcr_el2: (0xf0 << 24) | 2,
            ..Default::default()
        };
        let phys = PhysTimer::new();
        // The guest armed its timer for virtual count 5000; CNTVOFF 1000.
        let mut t = vt(CTL_ENABLE, 5000, 1000);
        let e = evaluate(&t, &phys, 3000);
        assert_eq!(e.deadline, Some(6000));
        update_vgic(&mut g, 0, &e).unwrap();
        g.flush(0, &mut regs);
        assert_eq!(regs.ich_lr_el2[0], 0, "not due yet");
        // It fires while the guest runs: the exit (EL1_IRQ) evaluates it.
        g.sync(0, &regs);
        let e = evaluate(&t, &phys, 6001);
        assert!(e.virt_level);
        assert_eq!(update_vgic(&mut g, 0, &e).unwrap().0, 1);
        g.flush(0, &mut regs);
        let lr = regs.ich_lr_el2[0];
        assert_eq!(lr & 0xffff_ffff, 27);
        assert_eq!(lr & (LR_PENDING | LR_ACTIVE | LR_EOI), LR_PENDING | LR_EOI);
        // The guest takes it, writes a new CVAL and EOIs: EOI maintenance exit.
        regs.ich_lr_el2[0] = (lr & !LR_PENDING) | LR_ACTIVE;
        t.cntv_cval_el0 = 9000;
        g.sync(0, &regs);
        let e = evaluate(&t, &phys, 6100);
        assert!(!e.virt_level);
        assert_eq!(e.deadline, Some(10_000));
        update_vgic(&mut g, 0, &e).unwrap();
        g.flush(0, &mut regs);
        assert_eq!(
            regs.ich_lr_el2[0] & (LR_PENDING | LR_ACTIVE),
            LR_ACTIVE,
            "still active until the EOI"
        );
        regs.ich_lr_el2[0] &= !LR_ACTIVE;
        g.sync(0, &regs);
        g.flush(0, &mut regs);
        assert_eq!(regs.ich_lr_el2[0], 0);
        assert!(!g.has_pending(0));
    }

    /// What the run loop does around an exit: the list registers folded back after it
    /// ([`Vgic::sync`]), both timers driven before the next entry.
    fn sync_and_drive(
        g: &mut Vgic,
        vcpu: usize,
        ctx: &VcpuContext,
        phys: &PhysTimer,
        now: u64,
    ) -> KResult<(Kicks, TimerEval)> {
        let mut k = g.sync(vcpu, &ctx.vgic);
        let e = evaluate(&ctx.timer, phys, now);
        k.merge(update_vgic(g, vcpu, &e)?);
        Ok((k, e))
    }

    #[test]
    fn sync_and_drive_the_ppis() {
        use crate::vgic::lr::{LR_ACTIVE, LR_PENDING};
        let mut g = Vgic::new(&[0x8000_0000, 0x8000_0001], 0x2f00_0000, 0x2f10_0000, 3).unwrap();
        let mut v = 0xffff_ffffu64;
        g.mmio_access(1, 0x2f13_0080, 4, true, &mut v).unwrap();
        v = (1 << 27) | (1 << 30);
        g.mmio_access(1, 0x2f13_0100, 4, true, &mut v).unwrap();
        v = 2;
        g.mmio_access(1, 0x2f00_0000, 4, true, &mut v).unwrap();
        let mut ctx = VcpuContext::default();
        ctx.vgic.ich_vmcr_el2 = (0xf0 << 24) | 2;
        ctx.timer = vt(CTL_ENABLE, 100, 0);
        let mut phys = PhysTimer::new();
        phys.write_cval(50);
        phys.write_ctl(CTL_ENABLE);
        // Before either is due: nothing, the virtual deadline first.
        let (k, e) = sync_and_drive(&mut g, 1, &ctx, &phys, 10).unwrap();
        assert!(k.is_empty());
        assert_eq!((e.deadline, e.phys_deadline), (Some(50), Some(50)));
        let (k, e) = sync_and_drive(&mut g, 1, &ctx, &phys, 60).unwrap();
        assert_eq!(k.0, 1 << 1, "PPI 30 for vCPU 1");
        assert_eq!(e.deadline, Some(100));
        g.flush(1, &mut ctx.vgic);
        assert_eq!(ctx.vgic.ich_lr_el2[0] & 0xffff_ffff, 30);
        // The guest acknowledges it; the virtual timer fires too.
        ctx.vgic.ich_lr_el2[0] = (ctx.vgic.ich_lr_el2[0] & !LR_PENDING) | LR_ACTIVE;
        let (k, _) = sync_and_drive(&mut g, 1, &ctx, &phys, 200).unwrap();
        assert_eq!(k.0, 1 << 1);
        g.flush(1, &mut ctx.vgic);
        let ids: Vec<u64> = ctx.vgic.ich_lr_el2[..2]
            .iter()
            .map(|l| l & 0xffff_ffff)
            .collect();
        assert_eq!(ids, [30, 27], "the active one first");
        assert!(sync_and_drive(&mut g, 2, &ctx, &phys, 0).is_err());
    }
}
