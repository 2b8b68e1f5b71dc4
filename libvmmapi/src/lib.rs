//! libvmmapi: the userspace API to vmm(4) (FreeBSD 15.0 arm64 ABI, see vmm-sys).
//!
//! # Overview
//!
//! ```text
//! Vm::create(name) / Vm::open(name) / Vm::destroy(self) / Vm::destroy_by_name(name)
//! Vm::list() -> Vec<String>                      all VMs, sorted
//! vm.name(), vm.reinit(), vm.suspend(SuspendHow)
//! memory:  vm.setup_memory(base, size)           segment 0 mapped at base (vm_setup_memory)
//!          vm.alloc_memseg(segid, len, name), vm.get_memseg(segid) -> Option<MemSeg>
//!          vm.mmap_memseg(gpa, segid, segoff, len, prot), vm.mmap_getnext(gpa),
//!          vm.mappings(), vm.munmap_memseg(gpa, len)
//!          vm.guest_memory() -> VmMemory         vm-memory GuestMemory + Bytes<GuestAddress>
//! vCPUs:   vm.vcpu(id) -> Vcpu  (Clone + Send: one per thread)
//!          get_reg(Reg), set_reg(Reg, u64), get_regs(&[Reg]), set_regs(&[(Reg, u64)]),
//!          activate(), run() -> Exit { pc, inst_length, reason: ExitReason }, run_raw(),
//!          inject_exception(esr, far), suspend_cpu(), resume_cpu(),
//!          get_capability(Capability), set_capability(Capability, i32)
//! VM-wide: assert_irq(intid), deassert_irq(intid), raise_msi(addr, msg),
//!          attach_vgic(dist: Window, redist: Window), vgic_version(),
//!          set_topology(Topology), get_topology(), active_cpus(), suspended_cpus(),
//!          stats(vcpu) -> Vec<(String, u64)>
//! ```
//!
//! Every constructor has a `*_with(backend, ...)` form taking an `Arc<dyn Backend>`;
//! the plain forms use [`backend_from_env`] (FreeBSD's /dev/vmm, or the testbed when
//! `VMM_TESTBED` is set). Names are checked with `vmm_sys::validate_vm_name` before
//! anything is touched. Errors are [`Error`]s that name the VM and the cause
//! (`vm 'foo' does not exist`; [`Error::cause`] gives the part after the name).
//!
//! # Backends
//!
//! A [`Backend`] executes one [`Request`]: the FreeBSD ioctl word, the argument
//! structure's bytes, and the buffers its pointer fields designate (see
//! [`request`]). [`freebsd::FreeBsd`] issues it as ioctl(2); `fake::FakeVmm`
//! (feature `fake`, tests only) runs it in-process on the kernel's own core over a fake
//! host, with scripted guests; [`testbed::Testbed`] sends
//! [`Request::encode`] to the testbed broker's socket (`VMM_TESTBED`).
//!
//! # Testing with the fake
//!
//! The guest is scripted (here: it calls PSCI SYSTEM_OFF with `hvc #0`); the kernel's
//! core decides what VM_RUN returns.
//!
//! ```
//! use libvmmapi::{fake::FakeVmm, ExitReason, Vm};
//! use vm_memory::{Bytes, GuestAddress};
//! use vmm_sys::reg::Reg;
//!
//! let fake = FakeVmm::new();
//! let vm = Vm::create_with(fake.backend(), "t").unwrap();
//! vm.setup_memory(0x8000_0000, 1 << 20).unwrap();
//! vm.guest_memory().unwrap().write_obj(7u32, GuestAddress(0x8000_0000)).unwrap();
//! let cpu = vm.vcpu(0).unwrap();
//! cpu.set_reg(Reg::Pc, 0x8000_0000).unwrap();
//! cpu.activate().unwrap();
//! fake.script_smccc("t", 0, 0x8000_0004, 0x8400_0008, &[]);
//! let exit = cpu.run().unwrap();
//! assert!(matches!(exit.reason, ExitReason::Smccc { func_id: 0x8400_0008, .. }));
//! assert_eq!(exit.pc, 0x8000_0004);
//! ```

pub mod backend;
pub mod error;
pub mod exit;
#[cfg(feature = "fake")]
pub mod fake;
pub mod freebsd;
pub mod memory;
pub mod request;
pub mod size;
pub mod testbed;
mod vm;

pub use backend::{backend_from_env, Backend, TESTBED_ENV};
pub use error::{BackendError, BadExit, Error, Result};
pub use exit::{Exit, ExitReason};
pub use memory::{Mapping, VmMemory, VmRegion};
pub use request::{Buffer, Dir, Request, Target};
pub use vm::{
    Capability, MemMap, MemSeg, MmioShortcut, MmioStore, Topology, Vcpu, Vm, PAGE_SIZE,
    VM_MAX_MEMMAPS, VM_MAX_MEMSEGS, VM_SYSMEM,
};
pub use vmm_platform::Window;
pub use vmm_sys::exit::SuspendHow;
pub use vmm_sys::reg::Reg;
