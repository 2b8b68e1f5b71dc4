//! SMCCC (Arm DEN0028) and PSCI (Arm DEN0022) function ids and return codes.

pub const SMCCC_VERSION: u32 = 0x8000_0000;
pub const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;
/// SMCCC 1.1, as `SMCCC_VERSION` returns it (major << 16 | minor).
pub const SMCCC_VERSION_1_1: u64 = 0x1_0001;
/// SMCCC_RET_NOT_SUPPORTED (-1 as the 64-bit register holds it).
pub const SMCCC_RET_NOT_SUPPORTED: u64 = (-1i64) as u64;

/// The 64-bit calling convention bit of a function id.
pub const SMC64: u32 = 0x4000_0000;

pub const PSCI_VERSION: u32 = 0x8400_0000;
pub const CPU_SUSPEND_32: u32 = 0x8400_0001;
pub const CPU_SUSPEND_64: u32 = 0xc400_0001;
pub const CPU_OFF: u32 = 0x8400_0002;
pub const CPU_ON_32: u32 = 0x8400_0003;
pub const CPU_ON_64: u32 = 0xc400_0003;
pub const AFFINITY_INFO_32: u32 = 0x8400_0004;
pub const AFFINITY_INFO_64: u32 = 0xc400_0004;
pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
pub const SYSTEM_OFF: u32 = 0x8400_0008;
pub const SYSTEM_RESET: u32 = 0x8400_0009;
pub const PSCI_FEATURES: u32 = 0x8400_000a;

/// PSCI 1.0 as PSCI_VERSION returns it.
pub const PSCI_VERSION_1_0: u64 = 0x1_0000;

/// PSCI return codes (signed 32-bit, sign-extended into x0).
pub mod ret {
    pub const SUCCESS: i64 = 0;
    pub const NOT_SUPPORTED: i64 = -1;
    pub const INVALID_PARAMETERS: i64 = -2;
    pub const DENIED: i64 = -3;
    pub const ALREADY_ON: i64 = -4;
    pub const ON_PENDING: i64 = -5;
    pub const INTERNAL_FAILURE: i64 = -6;
    pub const NOT_PRESENT: i64 = -7;
    pub const DISABLED: i64 = -8;
    pub const INVALID_ADDRESS: i64 = -9;
}

/// AFFINITY_INFO results.
pub const AFFINITY_ON: u64 = 0;
pub const AFFINITY_OFF: u64 = 1;
pub const AFFINITY_ON_PENDING: u64 = 2;

/// MIGRATE_INFO_TYPE: no trusted OS needing migration.
pub const MIGRATE_TOS_NOT_PRESENT: u64 = 2;
