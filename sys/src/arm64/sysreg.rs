//! System register encodings (op0, op1, CRn, CRm, op2), packed as the MSR/MRS trap ISS
//! packs them so a trap's register compares against these constants directly.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SysReg(pub u32);

impl SysReg {
    pub const fn new(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> SysReg {
        SysReg(
            ((op0 as u32 & 3) << 20)
                | ((op2 as u32 & 7) << 17)
                | ((op1 as u32 & 7) << 14)
                | ((crn as u32 & 0xf) << 10)
                | ((crm as u32 & 0xf) << 1),
        )
    }
    pub const fn op0(self) -> u8 {
        ((self.0 >> 20) & 3) as u8
    }
    pub const fn op1(self) -> u8 {
        ((self.0 >> 14) & 7) as u8
    }
    pub const fn crn(self) -> u8 {
        ((self.0 >> 10) & 0xf) as u8
    }
    pub const fn crm(self) -> u8 {
        ((self.0 >> 1) & 0xf) as u8
    }
    pub const fn op2(self) -> u8 {
        ((self.0 >> 17) & 7) as u8
    }
    /// The ID register space (op0=3, op1=0, CRn=0, CRm 0..7) that HCR_EL2.TID3 traps.
    pub const fn is_id_reg(self) -> bool {
        self.op0() == 3 && self.op1() == 0 && self.crn() == 0 && self.crm() <= 7
    }
}

impl core::fmt::Display for SysReg {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "S{}_{}_C{}_C{}_{}",
            self.op0(),
            self.op1(),
            self.crn(),
            self.crm(),
            self.op2()
        )
    }
}

// Debug and OS lock registers Linux touches at boot (op0=2).
pub const OSLAR_EL1: SysReg = SysReg::new(2, 0, 1, 0, 4);
pub const OSLSR_EL1: SysReg = SysReg::new(2, 0, 1, 1, 4);
pub const OSDLR_EL1: SysReg = SysReg::new(2, 0, 1, 3, 4);
pub const MDSCR_EL1: SysReg = SysReg::new(2, 0, 0, 2, 2);
pub const MDCCINT_EL1: SysReg = SysReg::new(2, 0, 0, 2, 0);
pub const DBGPRCR_EL1: SysReg = SysReg::new(2, 0, 1, 4, 4);
pub const DBGCLAIMSET_EL1: SysReg = SysReg::new(2, 0, 7, 8, 6);
pub const DBGCLAIMCLR_EL1: SysReg = SysReg::new(2, 0, 7, 9, 6);
pub const DBGAUTHSTATUS_EL1: SysReg = SysReg::new(2, 0, 7, 14, 6);
/// DBGBVR<n>_EL1 = (2,0,0,n,4), DBGBCR (…,5), DBGWVR (…,6), DBGWCR (…,7).
pub const fn dbgbvr_el1(n: u8) -> SysReg {
    SysReg::new(2, 0, 0, n, 4)
}
pub const fn dbgbcr_el1(n: u8) -> SysReg {
    SysReg::new(2, 0, 0, n, 5)
}
pub const fn dbgwvr_el1(n: u8) -> SysReg {
    SysReg::new(2, 0, 0, n, 6)
}
pub const fn dbgwcr_el1(n: u8) -> SysReg {
    SysReg::new(2, 0, 0, n, 7)
}

// ID registers.
pub const MIDR_EL1: SysReg = SysReg::new(3, 0, 0, 0, 0);
pub const MPIDR_EL1: SysReg = SysReg::new(3, 0, 0, 0, 5);
pub const ID_AA64PFR0_EL1: SysReg = SysReg::new(3, 0, 0, 4, 0);
pub const ID_AA64PFR1_EL1: SysReg = SysReg::new(3, 0, 0, 4, 1);
pub const ID_AA64DFR0_EL1: SysReg = SysReg::new(3, 0, 0, 5, 0);
pub const ID_AA64DFR1_EL1: SysReg = SysReg::new(3, 0, 0, 5, 1);
pub const ID_AA64ISAR0_EL1: SysReg = SysReg::new(3, 0, 0, 6, 0);
pub const ID_AA64ISAR1_EL1: SysReg = SysReg::new(3, 0, 0, 6, 1);
pub const ID_AA64MMFR0_EL1: SysReg = SysReg::new(3, 0, 0, 7, 0);
pub const ID_AA64MMFR1_EL1: SysReg = SysReg::new(3, 0, 0, 7, 1);
pub const ID_AA64MMFR2_EL1: SysReg = SysReg::new(3, 0, 0, 7, 2);

// Physical timer (trapped by CNTHCTL_EL2 and emulated).
pub const CNTP_TVAL_EL0: SysReg = SysReg::new(3, 3, 14, 2, 0);
pub const CNTP_CTL_EL0: SysReg = SysReg::new(3, 3, 14, 2, 1);
pub const CNTP_CVAL_EL0: SysReg = SysReg::new(3, 3, 14, 2, 2);
pub const CNTPCT_EL0: SysReg = SysReg::new(3, 3, 14, 0, 1);

// GICv3 CPU interface registers that trap (ICH_HCR_EL2.TC/TALL* or SGIs).
pub const ICC_SGI1R_EL1: SysReg = SysReg::new(3, 0, 12, 11, 5);
pub const ICC_ASGI1R_EL1: SysReg = SysReg::new(3, 0, 12, 11, 6);
pub const ICC_SGI0R_EL1: SysReg = SysReg::new(3, 0, 12, 11, 7);

// PMU (Linux probes PMCR_EL0 when the devicetree has no PMU node only via ID regs).
pub const PMCR_EL0: SysReg = SysReg::new(3, 3, 9, 12, 0);
pub const PMUSERENR_EL0: SysReg = SysReg::new(3, 3, 9, 14, 0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(OSLAR_EL1.to_string(), "S2_0_C1_C0_4");
        assert_eq!(ICC_SGI1R_EL1.to_string(), "S3_0_C12_C11_5");
        assert!(ID_AA64MMFR0_EL1.is_id_reg());
        assert!(!CNTP_CTL_EL0.is_id_reg());
        assert_eq!(dbgbcr_el1(3), SysReg::new(2, 0, 0, 3, 5));
    }
}
