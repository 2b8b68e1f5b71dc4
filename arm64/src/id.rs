//! The host's ID registers.

/// The host CPU's ID registers (as read at EL1), from which the core sizes stage 2 and
/// derives the values a guest sees when it reads its own (HCR_EL2.TID3 traps them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdRegs {
    pub midr: u64,
    pub pfr0: u64,
    pub pfr1: u64,
    pub dfr0: u64,
    pub isar0: u64,
    pub isar1: u64,
    pub isar2: u64,
    pub mmfr0: u64,
    pub mmfr1: u64,
    pub mmfr2: u64,
    /// MPAMIDR_EL1 where the CPU has FEAT_MPAM (else 0: the register is UNDEFINED).
    pub mpamidr: u64,
}

impl IdRegs {
    /// This CPU's ID registers, read at EL1 or EL2 (the ARMv8.0 assembler knows no
    /// ID_AA64ISAR2_EL1, so it is named by its encoding; it reads as zero before v8.7).
    #[cfg(target_arch = "aarch64")]
    pub fn read() -> IdRegs {
        IdRegs {
            midr: crate::mrs!("midr_el1"),
            pfr0: crate::mrs!("id_aa64pfr0_el1"),
            pfr1: crate::mrs!("id_aa64pfr1_el1"),
            dfr0: crate::mrs!("id_aa64dfr0_el1"),
            isar0: crate::mrs!("id_aa64isar0_el1"),
            isar1: crate::mrs!("id_aa64isar1_el1"),
            isar2: crate::mrs!("S3_0_C0_C6_2"),
            mmfr0: crate::mrs!("id_aa64mmfr0_el1"),
            mmfr1: crate::mrs!("id_aa64mmfr1_el1"),
            mmfr2: crate::mrs!("id_aa64mmfr2_el1"),
            mpamidr: if IdRegs::has_mpam(
                crate::mrs!("id_aa64pfr0_el1"),
                crate::mrs!("id_aa64pfr1_el1"),
            ) {
                crate::mrs!("S3_0_C10_C4_4")
            } else {
                0
            },
        }
    }

    /// FEAT_MPAM: ID_AA64PFR0_EL1.MPAM (bits 43:40) or ID_AA64PFR1_EL1.MPAM_frac
    /// (bits 19:16) non-zero.
    pub const fn has_mpam(pfr0: u64, pfr1: u64) -> bool {
        (pfr0 >> 40) & 0xf != 0 || (pfr1 >> 16) & 0xf != 0
    }
}
