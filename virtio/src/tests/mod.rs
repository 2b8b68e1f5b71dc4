//! Devices driven through the transport by a scripted guest driver (crate::testing).

mod blk;
mod console;
mod hostile;
mod net;
mod rng;
mod transport;
