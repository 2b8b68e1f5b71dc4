//! bhyve's virtio devices (virtio 1.x over virtio-mmio): where every device the guest
//! reaches through a `-s` slot lives.
//!
//! * [`transport`]: the virtio-mmio register file (version 2), feature negotiation,
//!   status, queue setup, interrupts, reset. Runs on the vCPU thread.
//! * [`queue`]: what the transport and a device's worker share; split virtqueues
//!   (rust-vmm's `virtio-queue`) with checked descriptor chains.
//! * [`irq`]: InterruptStatus and the slot's level-triggered SPI.
//! * [`doorbell`]: how a QueueNotify wakes the device's worker thread.
//! * [`blk`] over [`disk`]: virtio-blk on a raw image or a disk device.
//! * [`console`]: virtio-console's console port (hvc0).
//! * [`net`] over [`tap`]: virtio-net on a tap interface.
//! * [`rng`]: virtio-rng (`virtio-rnd`).
//!
//! Each device does its I/O on a worker thread of its own; a vCPU only handles the
//! register access, and serves a console's output itself ([`transport::InlineQueue`]). Every address, length and index the guest puts in a queue is checked
//! before use: a hostile queue fails its request or puts its device in
//! DEVICE_NEEDS_RESET, never bhyve.

pub mod blk;
pub mod console;
pub mod disk;
pub mod doorbell;
pub mod irq;
pub mod net;
pub mod options;
pub mod queue;
pub mod rng;
pub mod tap;
pub mod transport;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

pub use irq::IrqLine;
pub use options::OptionError;
pub use queue::DmaObserver;
pub use transport::{Device, DeviceInfo, VirtioMmio};
