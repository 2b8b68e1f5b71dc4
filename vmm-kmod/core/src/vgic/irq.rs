//! The state of one interrupt, as the distributor or a redistributor holds it.
//!
//! Pending is not stored as one bit: a level-sensitive interrupt is pending while its
//! input line is high *or* software made it pending (ISPENDR, SETSPI), and an
//! edge-triggered one is pending when an edge was latched. Keeping the line and the
//! latch apart lets a guest's deactivation of a level interrupt re-evaluate the line
//! (GICv3 spec IHI 0069, the interrupt state machine: a level interrupt whose line is
//! still asserted becomes pending again).

/// `owner` when the interrupt sits in no vCPU's list registers.
pub const NO_OWNER: u8 = u8::MAX;
/// `target` when an SPI's route names no vCPU (the interrupt is then not forwarded).
pub const NO_TARGET: u8 = u8::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Irq {
    /// ISENABLER/ICENABLER.
    pub enabled: bool,
    /// Edge latch, or the software pending state of a level interrupt.
    pub latch: bool,
    /// The input line (VM_ASSERT_IRQ, the timer's output).
    pub level: bool,
    /// ISACTIVER/ICACTIVER, and what the guest's acknowledge did.
    pub active: bool,
    /// ICFGR: edge-triggered (1) or level-sensitive (0).
    pub edge: bool,
    /// IGROUPR: group 1 (Linux puts everything in group 1).
    pub group1: bool,
    /// IPRIORITYR (only the implemented high bits, see `PRIORITY_MASK`).
    pub priority: u8,
    /// The vCPU whose list registers hold this interrupt ([`NO_OWNER`] if none). An
    /// SPI stays with its owner while it is active there, whatever IROUTER says now.
    pub owner: u8,
}

impl Irq {
    /// The reset state: disabled, idle, group 0, priority 0, level-sensitive.
    pub const fn new(edge: bool) -> Irq {
        Irq {
            enabled: false,
            latch: false,
            level: false,
            active: false,
            edge,
            group1: false,
            priority: 0,
            owner: NO_OWNER,
        }
    }

    /// The pending state the guest sees (ISPENDR reads it).
    pub const fn pending(&self) -> bool {
        if self.edge {
            self.latch
        } else {
            self.latch || self.level
        }
    }

    /// Drives the input line. A rising edge latches an edge-triggered interrupt;
    /// a level-sensitive one follows the line.
    pub fn set_level(&mut self, level: bool) {
        if self.edge && level && !self.level {
            self.latch = true;
        }
        self.level = level;
    }

    /// Pending, enabled and its group enabled by GICD_CTLR: it would be signalled.
    pub const fn deliverable(&self, grp0_on: bool, grp1_on: bool) -> bool {
        let group_on = if self.group1 { grp1_on } else { grp0_on };
        self.enabled && self.pending() && group_on
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_follows_line_edge_latches() {
        let mut l = Irq::new(false);
        l.set_level(true);
        assert!(l.pending());
        l.set_level(false);
        assert!(!l.pending());

        let mut e = Irq::new(true);
        e.set_level(true);
        assert!(e.pending());
        e.set_level(false);
        assert!(e.pending(), "an edge stays latched after the line drops");
        e.latch = false;
        e.set_level(true);
        assert!(e.pending(), "a new rising edge latches again");
        e.latch = false;
        e.set_level(true);
        assert!(!e.pending(), "a line held high is one edge, not many");
    }

    #[test]
    fn deliverable_needs_enable_and_group() {
        let mut i = Irq::new(false);
        i.set_level(true);
        assert!(!i.deliverable(true, true));
        i.enabled = true;
        assert!(i.deliverable(true, false));
        assert!(!i.deliverable(false, true));
        i.group1 = true;
        assert!(i.deliverable(false, true));
        assert!(!i.deliverable(true, false));
    }
}
