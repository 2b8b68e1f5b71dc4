//! vmm-arm64: the instructions the kernel side executes on the CPU, written once for
//! every host that runs them: the FreeBSD glue (EL1), the testbed kernel (EL1) and the
//! EL2 code (the nVHE blob and the world switch).
//!
//! * [`mrs!`] and [`msr!`]: system-register access by name (each access is one
//!   instruction; the name is a literal, so no register is chosen at run time).
//! * [`barrier`]: `isb` and the `dsb`s the callers need.
//! * [`cache`]: data-cache clean and invalidate to the point of coherency and
//!   instruction-cache invalidation, by the line sizes CTR_EL0 gives.
//! * [`IdRegs`]: the host's ID registers as the core consumes them, and their read.
//!
//! Everything that executes an instruction is compiled for aarch64 only; the types
//! build everywhere, so the portable core and its host tests can use them.
#![cfg_attr(not(test), no_std)]

pub mod barrier;
pub mod cache;
mod id;
mod sysreg;

#[cfg(test)]
mod tests;

pub use id::IdRegs;
