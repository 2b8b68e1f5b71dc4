//! vmm-el2-switch: the world switch between the host and a guest, as a library for
//! every EL2 regime that runs it. The nVHE blob (vmm-el2-nvhe) calls
//! [`enter_guest`] from its `HYP_ENTER_GUEST` hypercall; a kernel running at EL2 (VHE)
//! calls [`vhe::enter_guest`], the same body in the VHE regime. Its regime provides the vector table that branches to the
//! exit trampolines (entry.rs describes the contract).
//!
//! * switch.rs: the body: save the host's EL1 state, EL2 controls and virtual timer,
//!   load the guest's, the GIC virtual CPU interface, lazy FP/SIMD; the reverse on
//!   exit.
//! * entry.rs: the guest entry and exit trampolines (assembly).
//! * fp.rs: the FP/SIMD register save and load (the only FP code at EL2).
//! * tlb.rs: stage-2 TLB maintenance for one VMID, on either host.
//! * vhe.rs: the VHE regime: [`vhe::enter_guest`] and [`vhe::hyp_call`], called by a
//!   kernel that runs at EL2, with its own vectors for the guest's run.
//!
//! No data, no bss, no absolute address: the code is linked into a position-independent
//! blob (docs/el2.md). Nothing here can panic: no indexing, no unwrap.
#![no_std]

mod entry;
mod fp;
mod switch;
pub mod tlb;
pub mod vhe;

pub use switch::{enter_guest, vgic_clear};
