//! bhyveload: creates a VM (or reinitialises an existing one), gives it its memory,
//! vCPU topology and vGIC, loads an arm64 kernel, an initrd and a devicetree into it and
//! sets the boot vCPU's registers, ready for bhyve to run. See bhyveload(8)
//! (docs/man/bhyveload.8) and DESIGN.md, "The guest platform" and "Boot protocol".
//!
//! The binary is a thin shell over this library so the tests drive exactly the path a
//! user takes: [`cli::parse`], then [`boot::prepare`] (files and layout, no VM), then
//! [`boot::load`] through a libvmmapi backend (the FreeBSD one, or the fake in tests).

pub mod boot;
pub mod cli;
pub mod error;
pub mod fdt;
pub mod kernel;
pub mod placement;
pub mod userdtb;

pub use error::Error;

#[cfg(test)]
mod tests;
