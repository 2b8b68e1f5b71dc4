//! bhyve: runs a VM that bhyveload created and loaded.
//!
//! * [`args`]: the command line.
//! * [`mmio`]: the address -> device bus and interrupt lines.
//! * [`devices`]: PL011 (console), NS16550A (alternative console), PL031 (RTC).
//! * [`psci`]: PSCI 1.0 / SMCCC 1.1 calls.
//! * [`console`]: the terminal, raw mode and its restoration, console input.
//! * [`machine`]: opening the VM, checking `-c`/`-m`, building the devices.
//! * [`vcpu`]: the run loop (vCPU threads, exits, stopping the VM).

pub mod args;
pub mod console;
pub mod devices;
pub mod machine;
pub mod mmio;
pub mod psci;
pub mod vcpu;
