//! vmm-core: the portable kernel core of the hypervisor.
//!
//! Written against the [`host::Host`] trait: VM and vCPU
//! lifecycle, memory segments, stage-2 page tables, exit classification, the VM_RUN
//! loop and the /dev/vmm ioctl dispatcher. Each host (the FreeBSD glue that builds
//! vmm.ko, the QEMU testbed, the fake host of the unit tests and of libvmmapi's test
//! backend, feature `fake-host`) implements `Host` and
//! calls the entry points of [`Vmm`]:
//!
//! * [`Vmm::new`]: module load. Brings EL2 up on every CPU through the hyp stub.
//! * [`Vmm::dispatch`]: one ioctl on /dev/vmmctl or /dev/vmm/NAME.
//! * [`Vmm::shutdown`]: module unload; refused (`EBUSY`) while VMs exist.
//! * [`Vmm::create_vm`], [`Vmm::destroy_vm`]: the legacy sysctls.
//! * [`Vmm::gpa_to_pa`]: guest memory for userspace mmap (FreeBSD `d_mmap_single`).
//!
//! See docs/vmm-core.md for the design.
#![cfg_attr(not(any(test, feature = "fake-host")), no_std)]

extern crate alloc;

pub mod alignalloc;
mod barrier;
mod dispatch;
pub mod el2;
pub mod el2pt;
pub mod errno;
pub mod exit;
pub mod host;
pub mod mem;
pub mod mmio_shortcut;
pub mod req;
mod run;
pub mod stage2;
pub mod stats;
pub mod sync;
pub mod sysemul;
pub mod vcpu;
pub mod vgic;
pub mod vm;
pub mod vmid;
mod vmm;
pub mod vtimer;

#[cfg(any(test, feature = "fake-host"))]
pub mod fake;
#[cfg(any(test, feature = "fake-host"))]
mod inspect;
#[cfg(test)]
mod tests;

pub use el2::{El2Regime, IdRegs, InitParams};
pub use errno::{Errno, KResult};
pub use host::{Host, PhysMem, RawMutex, SleepResult, PAGE_SIZE};
pub use vmm::{DeviceRef, Vmm};
