//! `enum vm_reg_name` (FreeBSD 15.0 `machine/vmm.h`).

/// Register numbers as the ABI carries them.
pub const VM_REG_GUEST_X0: u32 = 0;
pub const VM_REG_GUEST_X29: u32 = 29;
pub const VM_REG_GUEST_LR: u32 = 30;
pub const VM_REG_GUEST_SP: u32 = 31;
pub const VM_REG_GUEST_PC: u32 = 32;
pub const VM_REG_GUEST_CPSR: u32 = 33;
pub const VM_REG_GUEST_SCTLR_EL1: u32 = 34;
pub const VM_REG_GUEST_TTBR0_EL1: u32 = 35;
pub const VM_REG_GUEST_TTBR1_EL1: u32 = 36;
pub const VM_REG_GUEST_TCR_EL1: u32 = 37;
pub const VM_REG_GUEST_TCR2_EL1: u32 = 38;
pub const VM_REG_GUEST_MPIDR_EL1: u32 = 39;
pub const VM_REG_LAST: u32 = 40;

/// A guest register the ABI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reg {
    /// x0..x29 (x30 is [`Reg::Lr`]).
    X(u8),
    Lr,
    /// SP_EL1 (the stack pointer of the guest kernel).
    Sp,
    Pc,
    /// PSTATE as SPSR encodes it.
    Cpsr,
    SctlrEl1,
    Ttbr0El1,
    Ttbr1El1,
    TcrEl1,
    Tcr2El1,
    MpidrEl1,
}

impl Reg {
    /// Every register, in ABI order.
    pub fn all() -> impl Iterator<Item = Reg> {
        (0..VM_REG_LAST).filter_map(|n| Reg::try_from(n).ok())
    }

    /// The ABI number.
    pub const fn number(self) -> u32 {
        match self {
            Reg::X(n) => n as u32,
            Reg::Lr => VM_REG_GUEST_LR,
            Reg::Sp => VM_REG_GUEST_SP,
            Reg::Pc => VM_REG_GUEST_PC,
            Reg::Cpsr => VM_REG_GUEST_CPSR,
            Reg::SctlrEl1 => VM_REG_GUEST_SCTLR_EL1,
            Reg::Ttbr0El1 => VM_REG_GUEST_TTBR0_EL1,
            Reg::Ttbr1El1 => VM_REG_GUEST_TTBR1_EL1,
            Reg::TcrEl1 => VM_REG_GUEST_TCR_EL1,
            Reg::Tcr2El1 => VM_REG_GUEST_TCR2_EL1,
            Reg::MpidrEl1 => VM_REG_GUEST_MPIDR_EL1,
        }
    }

    /// The lower-case name bhyvectl uses (`x0`, `lr`, `sp`, `pc`, `cpsr`, `sctlr_el1`...).
    pub fn name(self) -> &'static str {
        const X: [&str; 30] = [
            "x0", "x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8", "x9", "x10", "x11", "x12", "x13",
            "x14", "x15", "x16", "x17", "x18", "x19", "x20", "x21", "x22", "x23", "x24", "x25",
            "x26", "x27", "x28", "x29",
        ];
        match self {
            Reg::X(n) => X.get(usize::from(n)).copied().unwrap_or("x?"),
            Reg::Lr => "lr",
            Reg::Sp => "sp",
            Reg::Pc => "pc",
            Reg::Cpsr => "cpsr",
            Reg::SctlrEl1 => "sctlr_el1",
            Reg::Ttbr0El1 => "ttbr0_el1",
            Reg::Ttbr1El1 => "ttbr1_el1",
            Reg::TcrEl1 => "tcr_el1",
            Reg::Tcr2El1 => "tcr2_el1",
            Reg::MpidrEl1 => "mpidr_el1",
        }
    }

    /// Parses a name as [`Reg::name`] prints it; `x30` is accepted for `lr`.
    pub fn from_name(s: &str) -> Option<Reg> {
        if s == "x30" {
            return Some(Reg::Lr);
        }
        Reg::all().find(|r| r.name() == s)
    }
}

/// Error for a register number outside the enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadRegister(pub u32);

impl TryFrom<u32> for Reg {
    type Error = BadRegister;
    fn try_from(n: u32) -> Result<Reg, BadRegister> {
        Ok(match n {
            0..=29 => Reg::X(n as u8),
            VM_REG_GUEST_LR => Reg::Lr,
            VM_REG_GUEST_SP => Reg::Sp,
            VM_REG_GUEST_PC => Reg::Pc,
            VM_REG_GUEST_CPSR => Reg::Cpsr,
            VM_REG_GUEST_SCTLR_EL1 => Reg::SctlrEl1,
            VM_REG_GUEST_TTBR0_EL1 => Reg::Ttbr0El1,
            VM_REG_GUEST_TTBR1_EL1 => Reg::Ttbr1El1,
            VM_REG_GUEST_TCR_EL1 => Reg::TcrEl1,
            VM_REG_GUEST_TCR2_EL1 => Reg::Tcr2El1,
            VM_REG_GUEST_MPIDR_EL1 => Reg::MpidrEl1,
            _ => return Err(BadRegister(n)),
        })
    }
}

impl TryFrom<i32> for Reg {
    type Error = BadRegister;
    fn try_from(n: i32) -> Result<Reg, BadRegister> {
        u32::try_from(n)
            .map_err(|_| BadRegister(n as u32))
            .and_then(Reg::try_from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbering_matches_freebsd_15() {
        assert_eq!(Reg::all().count(), 40);
        for (i, r) in Reg::all().enumerate() {
            assert_eq!(r.number(), i as u32);
            assert_eq!(Reg::try_from(i as u32), Ok(r));
            assert_eq!(Reg::from_name(r.name()), Some(r));
        }
        assert_eq!(Reg::MpidrEl1.number(), 39);
        assert_eq!(Reg::try_from(40u32), Err(BadRegister(40)));
        assert!(Reg::try_from(-1i32).is_err());
        assert_eq!(Reg::from_name("x30"), Some(Reg::Lr));
        assert_eq!(Reg::from_name("x31"), None);
    }
}
