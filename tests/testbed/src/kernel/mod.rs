//! The testbed's host kernel: what FreeBSD is to vmm.ko.

pub mod boot;
pub mod console;
pub mod cpu;
pub mod exceptions;
pub mod gic;
pub mod host;
pub mod hyp;
pub mod mm;
pub mod psci;
pub mod timer;
