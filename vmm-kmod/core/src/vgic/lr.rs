//! The list registers: `flush` before each guest entry puts the interrupts a vCPU
//! should see into ICH_LR<n>_EL2, `sync` after each exit folds what the guest did with
//! them (acknowledge, EOI, deactivate) back into the interrupt state.
//!
//! The list registers are rebuilt on every entry from the state, so between an exit
//! and the next entry the state here is the only truth (KVM's ap_list model, without
//! the list: the scan is over at most 32 private interrupts and `NR_SPIS` SPIs).
//!
//! ICH_LR<n>_EL2 (IHI 0069): vINTID [31:0]; with HW = 0, bit 41 = EOI
//! (maintenance interrupt when the guest deactivates it); Priority [55:48]; Group [60];
//! HW [61]; State [63:62] (0 invalid, 1 pending, 2 active, 3 pending and active).

use super::irq::{Irq, NO_OWNER};
use super::{Kicks, Vgic, SPI_BASE};
use vmm_sys::hyp::{VgicCpuRegs, ICH_LR_MAX};

pub const LR_EOI: u64 = 1 << 41;
pub const LR_PRIORITY_SHIFT: u32 = 48;
pub const LR_GROUP1: u64 = 1 << 60;
pub const LR_HW: u64 = 1 << 61;
pub const LR_PENDING: u64 = 1 << 62;
pub const LR_ACTIVE: u64 = 1 << 63;

/// ICH_HCR_EL2: En (virtual CPU interface on), UIE (maintenance interrupt when at most
/// one list register is valid), NPIE (... when no list register is pending).
pub const HCR_EN: u64 = 1 << 0;
pub const HCR_UIE: u64 = 1 << 1;
pub const HCR_NPIE: u64 = 1 << 3;

/// A candidate for a list register as one key, ordered by what the guest must see
/// first: active interrupts (the guest is handling them and will EOI them; an EOI for
/// an interrupt in no list register would be lost), then by priority, then by INTID.
/// One integer, so that `flush`'s ranking compares and moves words and its array of
/// the best is filled a word pair at a time rather than field by field.
fn candidate(active: bool, priority: u8, intid: u32) -> u64 {
    (u64::from(!active) << 40) | (u64::from(priority) << 32) | u64::from(intid)
}

/// Above every [`candidate`] key.
const NO_CANDIDATE: u64 = 1 << 41;

/// The INTID of a [`candidate`] key.
fn candidate_intid(key: u64) -> u32 {
    key as u32
}

/// The list register for `i` (INTID `intid`), showing it pending if `pending`.
fn lr_value(intid: u32, i: &Irq, pending: bool, eoi: bool) -> u64 {
    let mut lr = u64::from(intid) | (u64::from(i.priority) << LR_PRIORITY_SHIFT);
    if i.group1 {
        lr |= LR_GROUP1;
    }
    if pending {
        lr |= LR_PENDING;
    }
    if i.active {
        lr |= LR_ACTIVE;
    }
    // A level interrupt's line must be looked at again when the guest deactivates it;
    // with more interrupts than list registers, so must any (to refill).
    if eoi || !i.edge {
        lr |= LR_EOI;
    }
    lr
}

/// A cheap superset of what `flush` puts in a list register: active, or enabled with
/// its latch or line set (whether it is also deliverable is checked after).
fn maybe_wanted(i: &Irq) -> bool {
    i.active | (i.enabled & (i.latch | i.level))
}

impl Vgic {
    /// Before entering vCPU `vcpu`: fills `regs`' list registers with its active
    /// interrupts, then its deliverable pending ones by priority (lower value first,
    /// then lower INTID), as many as the CPU has; empties the rest; sets ICH_HCR_EL2.En
    /// and, when more interrupts wait than fit, UIE (if the CPU has at least two list
    /// registers, so it cannot fire at once) and NPIE (if a pending one went in) so the
    /// guest exits to refill them. An edge interrupt's latch moves into the list
    /// register (a new edge while the guest runs latches again). Does nothing for an
    /// unknown vCPU.
    pub fn flush(&mut self, vcpu: usize, regs: &mut VgicCpuRegs) {
        let Some(v) = u8::try_from(vcpu).ok().filter(|_| vcpu < self.cpus.len()) else {
            return;
        };
        let nr = self.nr_lrs;
        let epoch = self.epoch;
        if self
            .cpus
            .get(vcpu)
            .is_some_and(|c| c.idle_epoch == Some(epoch) && !c.private_changed)
        {
            // Nothing changed since a flush that found nothing: same answer. Only the
            // list registers a previous flush used can hold anything.
            let used = usize::try_from(regs.lr_used).unwrap_or(ICH_LR_MAX);
            for lr in regs.ich_lr_el2.iter_mut().take(used) {
                *lr = 0;
            }
            regs.lr_used = 0;
            regs.ich_hcr_el2 = HCR_EN;
            return;
        }
        let grp0_on = self.ctlr & 1 != 0;
        let grp1_on = self.ctlr & 2 != 0;
        let wanted = |intid: u32, i: &Irq| {
            (i.active || i.deliverable(grp0_on, grp1_on))
                .then(|| candidate(i.active, i.priority, intid))
        };
        // The best `nr` candidates, kept sorted; `total` counts all. Only the first `len`
        // are ever read: the filler is any value whose bytes differ, so that filling the
        // array is a few stores rather than a memset call.
        let mut best = [NO_CANDIDATE; ICH_LR_MAX];
        let mut len = 0usize;
        let mut total = 0usize;
        let mut offer = |c: u64| {
            total = total.saturating_add(1);
            let Some(slots) = best.get_mut(..nr) else {
                return;
            };
            let pos = slots.iter().take(len).position(|b| c < *b).unwrap_or(len);
            if pos >= nr {
                return;
            }
            // Move the kept ones after `pos` down one (the last drops out when all
            // `nr` are taken), one at a time: a slice rotation of the whole tail cost
            // a memmove and a memcpy call for what is mostly nothing to move.
            let mut at = len.min(nr.saturating_sub(1));
            while at > pos {
                let prev = slots.get(at.wrapping_sub(1)).copied();
                if let (Some(prev), Some(slot)) = (prev, slots.get_mut(at)) {
                    *slot = prev;
                }
                at = at.wrapping_sub(1);
            }
            if let Some(slot) = slots.get_mut(pos) {
                *slot = c;
            }
            len = len.saturating_add(1).min(nr);
        };
        // Only the private interrupts marked as possibly live (most are idle, and
        // unmarked); those found idle lose their mark.
        if let Some(c) = self.cpus.get_mut(vcpu) {
            let mut idle = 0u32;
            for (n, i) in c.marked_private() {
                if !maybe_wanted(i) {
                    idle |= 1u32.checked_shl(n).unwrap_or(0);
                    continue;
                }
                if let Some(cand) = wanted(n, i) {
                    offer(cand);
                }
            }
            c.private_maybe_live &= !idle;
        }
        // Only the SPIs marked as possibly live; those found idle lose their mark.
        let mut idle = 0u128;
        for (n, s) in self.marked_spis() {
            if !maybe_wanted(&s.irq) {
                idle |= 1u128.checked_shl(n.wrapping_sub(SPI_BASE)).unwrap_or(0);
                continue;
            }
            let mine = if s.irq.owner == NO_OWNER {
                s.target == v
            } else {
                s.irq.owner == v
            };
            if mine {
                if let Some(cand) = wanted(n, &s.irq) {
                    offer(cand);
                }
            }
        }
        self.spi_maybe_live &= !idle;
        let overflow = total > len;
        let mut any_pending = false;
        // The slots past `len` need emptying only where the last flush put something.
        let stale = usize::try_from(regs.lr_used).unwrap_or(ICH_LR_MAX);
        for (slot, lr) in regs.ich_lr_el2.iter_mut().enumerate().take(len.max(stale)) {
            let Some(intid) = best
                .get(slot)
                .filter(|_| slot < len)
                .map(|&c| candidate_intid(c))
            else {
                *lr = 0;
                continue;
            };
            // An active one may be pending again too; a pending-only one is by choice.
            let pending = self
                .irq(vcpu, intid)
                .is_some_and(|i| i.deliverable(grp0_on, grp1_on));
            let Some(i) = self.irq_mut(vcpu, intid) else {
                *lr = 0;
                continue;
            };
            *lr = lr_value(intid, i, pending, overflow);
            any_pending |= pending;
            if pending && i.edge {
                i.latch = false;
            }
            if intid >= SPI_BASE {
                i.owner = v;
            }
        }
        let mut hcr = HCR_EN;
        if overflow {
            if nr >= 2 {
                hcr |= HCR_UIE;
            }
            if any_pending {
                hcr |= HCR_NPIE;
            }
        }
        regs.ich_hcr_el2 = hcr;
        regs.lr_used = len as u64;
        if let Some(c) = self.cpus.get_mut(vcpu) {
            // Element by element: the whole array's copy was a memcpy call.
            for (x, &b) in c.lr_intid.iter_mut().zip(&best).take(len) {
                *x = candidate_intid(b);
            }
            c.lr_used = len;
            c.idle_epoch = (total == 0).then_some(epoch);
            c.private_changed = false;
        }
    }

    /// After vCPU `vcpu` exits: reads back the list registers `flush` filled. The
    /// guest's acknowledge (pending -> active) and EOI/deactivation (-> invalid) become
    /// the interrupts' state: an edge interrupt still pending in a list register
    /// latches again; a level interrupt's software pending state ends once the guest
    /// took it, so what remains pending is its line (a deactivated level interrupt
    /// whose line is still high is pending again). SPIs the guest finished are free to
    /// go where IROUTER says now; the vCPUs that should take them are returned. Also
    /// keeps the guest's ICH_VMCR_EL2 for [`Vgic::has_pending`].
    pub fn sync(&mut self, vcpu: usize, regs: &VgicCpuRegs) -> Kicks {
        let mut k = Kicks::default();
        let Some(c) = self.cpus.get_mut(vcpu) else {
            return k;
        };
        c.vmcr = regs.ich_vmcr_el2;
        let used = core::mem::take(&mut c.lr_used);
        if used == 0 {
            return k;
        }
        // Private interrupts mark this vCPU (`irq_mut`); an SPI's state is everyone's.
        let mut spi_changed = false;
        for (slot, &lr) in regs.ich_lr_el2.iter().enumerate().take(used) {
            // Read one at a time: a copy of the whole array was a memcpy call.
            let Some(intid) = self
                .cpus
                .get(vcpu)
                .and_then(|c| c.lr_intid.get(slot).copied())
            else {
                continue;
            };
            let Some(i) = self.irq_mut(vcpu, intid) else {
                continue;
            };
            let pending = lr & LR_PENDING != 0;
            i.active = lr & LR_ACTIVE != 0;
            if i.edge {
                if pending {
                    i.latch = true;
                }
            } else if !pending {
                i.latch = false;
            }
            if intid >= SPI_BASE {
                spi_changed = true;
                if !i.active {
                    i.owner = NO_OWNER;
                    self.note(&mut k, vcpu, intid);
                }
            }
        }
        if spi_changed {
            self.touch();
        }
        k
    }
}
