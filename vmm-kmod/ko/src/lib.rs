//! vmm.ko: the FreeBSD 15 arm64 kernel module.
//!
//! Everything lives in `vmm_core` (the portable core) and `vmm_freebsd` (its
//! FreeBSD glue); this crate only puts the pieces together as FreeBSD's `vmm.ko`:
//! * the module declaration (`DECLARE_MODULE(vmm, ..., SI_SUB_SMP + 1, SI_ORDER_ANY)`
//!   and `MODULE_VERSION(vmm, 1)`, as FreeBSD's own vmm);
//! * the EL2 blob, embedded as bytes (FreeBSD's vmm.ko embeds its `vmm_hyp_blob`
//!   the same way) and copied to contiguous memory at load;
//! * the panic handler (panic(9)) and the global allocator (malloc(9)).
//!
//! `cargo xtask build-kmod` builds this as a static library for
//! aarch64-unknown-none-softfloat and links it into vmm.ko (docs/freebsd-kmod.md).
#![no_std]

use core::ffi::{c_int, c_void};
use vmm_freebsd::glue;
use vmm_freebsd::module::{
    module_register_init, Module, FREEBSD_VERSION_15_0, KERNEL_MAXVER_15, SI_ORDER_ANY, SI_SUB_SMP,
};
use vmm_freebsd::panic::{kernel_panic, KernelAllocator};

/// The EL2 code (el2/nvhe), linked on its own into a position-independent flat image.
static EL2_BLOB: &[u8] = include_bytes!(env!("VMM_EL2_BLOB"));

#[global_allocator]
static ALLOCATOR: KernelAllocator = KernelAllocator;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    kernel_panic(info)
}

/// `modeventhand_t` of module "vmm".
unsafe extern "C" fn vmm_modevent(_m: *mut Module, what: c_int, _arg: *mut c_void) -> c_int {
    // SAFETY: the kernel calls the handler with its events serialised (Giant held).
    unsafe { glue::modevent(what, EL2_BLOB) }
}

vmm_freebsd::freebsd_declare_module! {
    name: c"vmm", handler: vmm_modevent, version: 1,
    kernel: (FREEBSD_VERSION_15_0, FREEBSD_VERSION_15_0, KERNEL_MAXVER_15),
    subsystem: SI_SUB_SMP + 1, order: SI_ORDER_ANY,
    register: module_register_init,
}
