//! Device models of the guest platform (vmm_platform): the console UARTs, the RTC and
//! the empty virtio-mmio slots.

pub mod ns16550;
pub mod pl011;
pub mod pl031;
pub mod virtio_empty;
