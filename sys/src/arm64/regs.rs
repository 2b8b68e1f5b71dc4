//! Bits of the EL1/EL2 control registers the hypervisor programs, and stage-2
//! descriptor bits.

/// PSTATE/SPSR values.
pub mod pstate {
    pub const M_EL0T: u64 = 0b0000;
    pub const M_EL1T: u64 = 0b0100;
    pub const M_EL1H: u64 = 0b0101;
    pub const M_EL2H: u64 = 0b1001;
    pub const F: u64 = 1 << 6;
    pub const I: u64 = 1 << 7;
    pub const A: u64 = 1 << 8;
    pub const D: u64 = 1 << 9;
    pub const DAIF: u64 = D | A | I | F;
    /// What a guest kernel is entered with: EL1h, all of DAIF masked (0x3c5).
    pub const GUEST_RESET: u64 = M_EL1H | DAIF;
}

/// HCR_EL2.
pub mod hcr {
    pub const VM: u64 = 1 << 0;
    pub const SWIO: u64 = 1 << 1;
    pub const PTW: u64 = 1 << 2;
    pub const FMO: u64 = 1 << 3;
    pub const IMO: u64 = 1 << 4;
    pub const AMO: u64 = 1 << 5;
    pub const VF: u64 = 1 << 6;
    pub const VI: u64 = 1 << 7;
    pub const VSE: u64 = 1 << 8;
    pub const FB: u64 = 1 << 9;
    pub const BSU_IS: u64 = 1 << 10;
    pub const DC: u64 = 1 << 12;
    pub const TWI: u64 = 1 << 13;
    pub const TWE: u64 = 1 << 14;
    pub const TID0: u64 = 1 << 15;
    pub const TID1: u64 = 1 << 16;
    pub const TID2: u64 = 1 << 17;
    pub const TID3: u64 = 1 << 18;
    pub const TSC: u64 = 1 << 19;
    pub const TIDCP: u64 = 1 << 20;
    pub const TACR: u64 = 1 << 21;
    pub const TSW: u64 = 1 << 22;
    pub const TPCP: u64 = 1 << 23;
    pub const TPU: u64 = 1 << 24;
    pub const TTLB: u64 = 1 << 25;
    pub const TVM: u64 = 1 << 26;
    pub const TGE: u64 = 1 << 27;
    pub const TDZ: u64 = 1 << 28;
    pub const HCD: u64 = 1 << 29;
    pub const TRVM: u64 = 1 << 30;
    pub const RW: u64 = 1 << 31;
    pub const E2H: u64 = 1 << 34;
    /// Traps the LORegion registers (FEAT_LOR).
    pub const TLOR: u64 = 1 << 35;
    /// Traps the RAS error-record registers (FEAT_RAS).
    pub const TERR: u64 = 1 << 36;
    /// Routes synchronous external aborts from EL0/EL1 to EL2 (FEAT_RAS).
    pub const TEA: u64 = 1 << 37;
    pub const APK: u64 = 1 << 40;
    pub const API: u64 = 1 << 41;
    pub const ATA: u64 = 1 << 56;
    /// Traps GMID_EL1 (FEAT_MTE2).
    pub const TID5: u64 = 1 << 58;
}

/// SCTLR_EL2 (non-VHE layout).
pub mod sctlr_el2 {
    pub const M: u64 = 1 << 0;
    pub const A: u64 = 1 << 1;
    pub const C: u64 = 1 << 2;
    pub const SA: u64 = 1 << 3;
    pub const I: u64 = 1 << 12;
    pub const WXN: u64 = 1 << 19;
    pub const EE: u64 = 1 << 25;
    /// Exception entry/exit are context synchronizing (FEAT_ExS; RES1 without it).
    pub const EIS: u64 = 1 << 22;
    pub const EOS: u64 = 1 << 11;
    /// RES1 bits: 4, 5, 11, 16, 18, 22, 23, 28, 29.
    pub const RES1: u64 = (1 << 4)
        | (1 << 5)
        | (1 << 11)
        | (1 << 16)
        | (1 << 18)
        | (1 << 22)
        | (1 << 23)
        | (1 << 28)
        | (1 << 29);
}

/// CPTR_EL2 (non-VHE).
pub mod cptr {
    /// RES1 bits 0..7, 9, 12, 13.
    pub const RES1: u64 = 0x32ff;
    /// Traps SVE instructions and ZCR_EL1 (RES1 without FEAT_SVE).
    pub const TZ: u64 = 1 << 8;
    pub const TFP: u64 = 1 << 10;
    /// Traps SME instructions and registers (RES1 without FEAT_SME, so part of `RES1`).
    pub const TSM: u64 = 1 << 12;
    pub const TTA: u64 = 1 << 20;
    /// Traps the activity monitors (FEAT_AMUv1).
    pub const TAM: u64 = 1 << 30;
    pub const TCPAC: u64 = 1 << 31;

    /// With HCR_EL2.E2H = 1 CPTR_EL2 has CPACR_EL1's layout: a 2-bit enable per
    /// feature (0b11: no trap, 0b00: trap EL0, EL1 and EL2 accesses) and TTA at bit 28.
    pub mod e2h {
        pub const ZEN_SHIFT: u32 = 16;
        pub const FPEN_SHIFT: u32 = 20;
        pub const SMEN_SHIFT: u32 = 24;
        pub const TTA: u64 = 1 << 28;
        pub const TAM: u64 = 1 << 30;
        pub const TCPAC: u64 = 1 << 31;
    }

    /// The same traps as the non-VHE value `v`, in the E2H layout.
    pub const fn to_e2h(v: u64) -> u64 {
        const fn enable(trap: bool, shift: u32) -> u64 {
            if trap {
                0
            } else {
                0b11 << shift
            }
        }
        enable(v & TFP != 0, e2h::FPEN_SHIFT)
            | enable(v & TZ != 0, e2h::ZEN_SHIFT)
            | enable(v & TSM != 0, e2h::SMEN_SHIFT)
            | if v & TTA != 0 { e2h::TTA } else { 0 }
            | (v & (TAM | TCPAC))
    }
}

/// CNTHCTL_EL2 (non-VHE).
pub mod cnthctl {
    pub const EL1PCTEN: u64 = 1 << 0;
    pub const EL1PCEN: u64 = 1 << 1;

    /// With HCR_EL2.E2H = 1 the EL1 controls move up (bits 0 and 1 then control EL0
    /// of the host's EL2&0 regime).
    pub mod e2h {
        pub const EL1PCTEN: u64 = 1 << 10;
        pub const EL1PCEN: u64 = 1 << 11;
    }

    /// The same guest controls as the non-VHE value `v`, in the E2H layout.
    pub const fn to_e2h(v: u64) -> u64 {
        (if v & EL1PCTEN != 0 { e2h::EL1PCTEN } else { 0 })
            | if v & EL1PCEN != 0 { e2h::EL1PCEN } else { 0 }
    }
}

/// The EL2 trap registers of optional features, loaded for a guest only where the host
/// CPU has them (`hyp::OptionalTraps::present`).
pub mod el2_optional {
    /// FEAT_FGT (ID_AA64MMFR0_EL1.FGT, bits 59:56): HFGRTR_EL2, HFGWTR_EL2,
    /// HFGITR_EL2, HDFGRTR_EL2, HDFGWTR_EL2.
    pub const FGT: u64 = 1 << 0;
    /// FEAT_MPAM (ID_AA64PFR0_EL1.MPAM, bits 43:40, or ID_AA64PFR1_EL1.MPAM_frac,
    /// bits 19:16): MPAM2_EL2.
    pub const MPAM: u64 = 1 << 1;
    /// MPAMIDR_EL1.HAS_HCR: MPAMHCR_EL2 as well.
    pub const MPAM_HCR: u64 = 1 << 2;
    /// Pointer authentication shown to the guest: its five keys (`hyp::PacKeys`) are
    /// switched with the host's.
    pub const PAUTH: u64 = 1 << 3;
}

/// MPAM2_EL2.
pub mod mpam2 {
    /// Traps EL1 accesses to MPAM1_EL1.
    pub const TRAPMPAM1EL1: u64 = 1 << 48;
    /// Traps EL1 accesses to MPAM0_EL1.
    pub const TRAPMPAM0EL1: u64 = 1 << 49;
    /// Traps EL1 reads of MPAMIDR_EL1 (MPAM v1.1, MPAMIDR_EL1.HAS_TIDR).
    pub const TIDR: u64 = 1 << 58;
}

/// MPAMHCR_EL2.
pub mod mpamhcr {
    pub const TRAP_MPAMIDR_EL1: u64 = 1 << 31;
}

/// MPAMIDR_EL1.
pub mod mpamidr {
    pub const HAS_HCR: u64 = 1 << 17;
    pub const HAS_TIDR: u64 = 1 << 58;
}

/// MDCR_EL2.
pub mod mdcr {
    pub const HPMN_MASK: u64 = 0x1f;
    pub const TPMCR: u64 = 1 << 5;
    pub const TPM: u64 = 1 << 6;
    pub const HPME: u64 = 1 << 7;
    pub const TDE: u64 = 1 << 8;
    pub const TDA: u64 = 1 << 9;
    pub const TDOSA: u64 = 1 << 10;
    pub const TDRA: u64 = 1 << 11;
    /// E2PB = 0b11: profiling buffer owned by EL1, no trap.
    pub const E2PB_EL1_NO_TRAP: u64 = 0b11 << 12;
    pub const TPMS: u64 = 1 << 14;
    pub const TTRF: u64 = 1 << 19;
}

/// VTCR_EL2.
pub mod vtcr {
    pub const T0SZ_MASK: u64 = 0x3f;
    pub const SL0_SHIFT: u32 = 6;
    /// SL0 for a 4 KiB granule: start at level 2, 1 or 0.
    pub const SL0_4K_L2: u64 = 0 << 6;
    pub const SL0_4K_L1: u64 = 1 << 6;
    pub const SL0_4K_L0: u64 = 2 << 6;
    pub const IRGN0_WBWA: u64 = 1 << 8;
    pub const ORGN0_WBWA: u64 = 1 << 10;
    pub const SH0_IS: u64 = 3 << 12;
    pub const TG0_4K: u64 = 0 << 14;
    pub const PS_SHIFT: u32 = 16;
    pub const RES1: u64 = 1 << 31;
}

/// ID_AA64MMFR0_EL1.PARange values and the address widths they mean.
pub const fn parange_bits(parange: u64) -> Option<u32> {
    match parange & 0xf {
        0 => Some(32),
        1 => Some(36),
        2 => Some(40),
        3 => Some(42),
        4 => Some(44),
        5 => Some(48),
        6 => Some(52),
        _ => None,
    }
}

/// Stage-2 translation table descriptor bits (4 KiB granule).
pub mod s2 {
    pub const VALID: u64 = 1 << 0;
    /// Table descriptor at levels 0..2, page descriptor at level 3.
    pub const TABLE_OR_PAGE: u64 = 1 << 1;
    /// MemAttr[3:0] at bits [5:2]: 0b1111 normal write-back, 0b0000 device nGnRnE.
    pub const MEMATTR_SHIFT: u32 = 2;
    pub const MEMATTR_NORMAL_WB: u64 = 0b1111 << 2;
    pub const MEMATTR_DEVICE_NGNRE: u64 = 0b0001 << 2;
    /// S2AP[1:0] at bits [7:6]: bit 6 read, bit 7 write.
    pub const S2AP_R: u64 = 1 << 6;
    pub const S2AP_W: u64 = 1 << 7;
    pub const SH_IS: u64 = 3 << 8;
    pub const AF: u64 = 1 << 10;
    /// XN[1:0] at bits [54:53] (0b10: not executable at EL1 or EL0).
    pub const XN: u64 = 2 << 53;
    /// Output address bits [47:12].
    pub const OA_MASK: u64 = 0x0000_ffff_ffff_f000;
}

/// The VMID field of VTTBR_EL2 (8-bit VMIDs on Armv8.0).
pub const VTTBR_VMID_SHIFT: u32 = 48;
