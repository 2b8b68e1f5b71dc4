//! Barriers. Each orders or completes earlier instructions and touches no memory.

/// Instruction synchronisation barrier: later instructions see earlier system-register
/// writes and cache maintenance.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
pub fn isb() {
    // SAFETY: a barrier has no operands and no memory effect beyond ordering.
    unsafe { core::arch::asm!("isb", options(nostack, preserves_flags)) };
}

/// Data synchronisation barrier, inner shareable: earlier memory accesses and cache or
/// TLB maintenance complete for every CPU of the inner shareable domain.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
pub fn dsb_ish() {
    // SAFETY: as for `isb`.
    unsafe { core::arch::asm!("dsb ish", options(nostack, preserves_flags)) };
}

/// Data synchronisation barrier, full system (for maintenance that must reach
/// observers outside the inner shareable domain, such as a device or a CPU with its
/// MMU off).
#[cfg(target_arch = "aarch64")]
#[inline(always)]
pub fn dsb_sy() {
    // SAFETY: as for `isb`.
    unsafe { core::arch::asm!("dsb sy", options(nostack, preserves_flags)) };
}
