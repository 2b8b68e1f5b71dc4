//! vmm-el2-nvhe: the EL2 blob of a non-VHE host: the vector tables, EL2 init, the
//! hypercall dispatcher and cleanup; the world switch itself is vmm-el2-switch.
//!
//! Built as a static library and linked on its own (link.ld) into a flat,
//! position-independent blob: no data, no bss, no GOT, no absolute address. The host
//! (vmm.ko or the testbed) copies it to page-aligned physically contiguous memory,
//! maps that identity at EL2 and points the hyp stub at offset 0 (the init vectors).
//! See docs/el2.md for the hypercall ABI and the world-switch order.
#![no_std]

mod hypercall;
mod vectors;

use vmm_sys::arm64::regs::sctlr_el2;

/// SCTLR_EL2 as FreeBSD's locore leaves it (EL2 MMU and caches off); cleanup restores it.
pub const STUB_SCTLR_EL2: u64 = sctlr_el2::RES1 | sctlr_el2::EIS | sctlr_el2::EOS;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // No console at EL2 and no way back to a sane host state: stop this CPU. The code
    // is written so that no path can panic (no indexing, no unwrap).
    loop {
        // SAFETY: waiting for an event has no memory effect.
        unsafe { core::arch::asm!("wfe", options(nomem, nostack)) };
    }
}
