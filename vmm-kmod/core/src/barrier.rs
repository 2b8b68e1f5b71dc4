//! The one architecture-specific instruction the core needs: making translation-table
//! writes visible to the table walker before a TLB invalidation or a guest entry relies
//! on them (`dsb ishst`). A DMB would order the stores among themselves but not against
//! the TLBI the EL2 code issues, so the core issues the DSB itself rather than trusting
//! every EL2 handler to begin with one. Elsewhere (the x86-64 unit tests) a fence.

#[inline]
pub fn tables_written() {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: a data synchronization barrier; no memory or register operands.
    unsafe {
        core::arch::asm!("dsb ishst", options(nostack, preserves_flags))
    };
    #[cfg(not(target_arch = "aarch64"))]
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}

/// Orders the zeroing of a new table page before the store that links it into the
/// tables (Linux's `smp_wmb()` before `pmd_populate`).
#[inline]
pub fn before_link() {
    core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
}
