//! The hypercall ABI between the host kernel (EL1) and our EL2 code: `hvc #0` with a
//! function number in x0 and arguments in x1..x7, result in x0. The numbers follow
//! FreeBSD's `sys/arm64/vmm/hyp.h` where the service is the same, so a reader of one
//! recognises the other.
//!
//! Before our vectors are installed only FreeBSD's hyp stub answers, and its single
//! service is `hvc #0` with x0 = the physical address of new EL2 vectors.

pub const HYP_CLEANUP: u64 = 0x1;
pub const HYP_ENTER_GUEST: u64 = 0x2;
pub const HYP_READ_REGISTER: u64 = 0x3;
pub const HYP_REG_ICH_VTR: u64 = 0x1;
pub const HYP_REG_CNTHCTL: u64 = 0x2;
pub const HYP_CLEAN_S2_TLBI: u64 = 0x4;
pub const HYP_DC_CIVAC: u64 = 0x5;
pub const HYP_EL2_TLBI: u64 = 0x6;
pub const HYP_S2_TLBI_RANGE: u64 = 0x10;
pub const HYP_S2_TLBI_ALL: u64 = 0x11;

/// Exception kinds an exit records (FreeBSD's `EXCP_TYPE_*`).
pub mod excp {
    pub const EL1_SYNC: u32 = 0;
    pub const EL1_IRQ: u32 = 1;
    pub const EL1_FIQ: u32 = 2;
    pub const EL1_ERROR: u32 = 3;
    pub const EL2_SYNC: u32 = 4;
    pub const EL2_IRQ: u32 = 5;
    pub const EL2_FIQ: u32 = 6;
    pub const EL2_ERROR: u32 = 7;
    pub const MAINT_IRQ: u32 = 8;
    pub const REENTER: u32 = 9;
}

/// Returned in x0 for an unknown hypercall.
pub const HYP_RET_UNKNOWN: u64 = u64::MAX;
