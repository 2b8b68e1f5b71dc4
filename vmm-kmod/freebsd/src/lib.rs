//! vmm-freebsd: the FreeBSD 15.0 arm64 side of vmm.ko: the kernel programming
//! interfaces the module uses, the FreeBSD [`Host`](vmm_core::Host), the /dev/vmm
//! character devices, the hw.vmm sysctls and the module event handler. The portable
//! core it drives is `vmm-core`; the crate that links both into vmm.ko is `vmm-ko`.
//!
//! Every item mirrors a declaration of a FreeBSD header and names it; the layouts are
//! the LP64 ones (arm64 and amd64 agree on every structure here: natural alignment,
//! 8-byte pointers and `long`s, 4-byte `int`s), so the size and offset tests run on the
//! x86-64 build host as well. docs/freebsd-kmod.md records where each fact was read
//! (file and commit) and which ones could not be checked against a 15.0 copy.
//!
//! The module only *declares*: nothing here calls the kernel on its own. Every kernel
//! symbol declared in an `extern "C"` block is listed in the crate's `SYMBOLS` file
//! (`symbol header` per line); the check of vmm.ko's undefined symbols
//! reads that list, and the `symbols_list_matches_declarations` test keeps the two in
//! step.
//!
//! Layout of the submodules (one KPI each):
//! * [`types`] - the scalar typedefs (`vm_paddr_t`, `sbintime_t`, ...).
//! * [`module`] - `moduledata`, `mod_metadata`, `sysinit`, the linker sets, and
//!   [`declare_module!`](crate::freebsd_declare_module) which emits what `DECLARE_MODULE`
//!   and `MODULE_VERSION` emit.
//! * [`cdev`] - `cdevsw`, `make_dev_args`, `struct cdev` up to `si_drv2`.
//! * [`sysctl`] - dynamic sysctl nodes for `hw.vmm.create` / `hw.vmm.destroy`.
//! * [`malloc`] - malloc(9) and a module-owned `malloc_type`.
//! * [`vm`] - kernel memory, `pmap_kextract`, the direct map, VM objects.
//! * [`lock`] - mtx(9) and sx(9).
//! * [`kern`] - printf/panic, sleep/wakeup, `should_yield`.
//! * [`timer`] - callout(9).
//! * [`smp`] - `smp_rendezvous`, IPIs, the per-CPU area.
//! * [`copy`] - copyin/copyout.
//! * [`priv_`] - priv_check(9).
//! * [`hyp`] - `vmm_call_hyp`, the `hvc #0` into EL2.
//! * [`intr`] - the generic-timer interrupt hook vmm uses for the virtual timer.
//! * [`machdep`] - `has_hyp()`, the hyp stub's vectors, CurrentEL / GIC decoding.
//! * [`vfp`] - `vfp_save_state`: the thread's FP/SVE state flushed before a guest runs.
//!
//! The glue built on them (with the portable parts it uses from the core:
//! `vmm_core::el2pt`, `vmm_core::alignalloc`, `vmm_core::req`):
//! * [`fmtbuf`] - fixed-buffer formatting for the log and panic(9).
//! * [`maps`] - guest memory mapped by processes; memory freed only once unmapped.
//! * `host` - the FreeBSD `Host` implementation (aarch64 kernel builds only).
//! * `glue` - module event handler, /dev/vmmctl, /dev/vmm/NAME, hw.vmm sysctls.
//! * `panic` - panic(9) for Rust panics, malloc(9) as the global allocator.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod cdev;
pub mod copy;
pub mod fmtbuf;
pub mod hyp;
pub mod intr;
pub mod kern;
pub mod lock;
pub mod machdep;
pub mod malloc;
pub mod maps;
pub mod module;
pub mod priv_;
pub mod smp;
pub mod sysctl;
pub mod timer;
pub mod types;
pub mod vfp;
pub mod vm;

// The parts that call the kernel: only in the aarch64 kernel build (vmm.ko).
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod glue;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod host;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod panic;

#[cfg(test)]
mod tests;
