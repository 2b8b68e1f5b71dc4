//! Device models of the guest platform (vmm_platform): the console UARTs and the RTC.

pub mod ns16550;
pub mod pl011;
pub mod pl031;
