//! arm64 architecture constants (Arm ARM DDI 0487) the hypervisor and tools share.

pub mod esr;
pub mod psci;
pub mod regs;
pub mod sysreg;
pub mod timer;
