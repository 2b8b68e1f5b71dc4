//! Cache maintenance by virtual address, by the line sizes CTR_EL0 reports.
//!
//! Memory written through a cacheable mapping and then read by an observer that does
//! not look in the caches (a guest or EL2 running with its MMU off, a non-cacheable
//! mapping) must be cleaned to the point of coherency first; code written as data
//! must also leave the instruction cache. Both are done by line over the range, with
//! the smallest line size the CPU has (CTR_EL0.DminLine and IminLine), never an
//! assumed 64 bytes.

/// The smallest data-cache and instruction-cache line sizes in bytes that a CTR_EL0
/// value reports (DminLine, bits 19:16, and IminLine, bits 3:0: log2 of 4-byte words).
pub fn line_sizes(ctr_el0: u64) -> (usize, usize) {
    // Each field is 4 bits, so the shift is at most 15 and the size at most 128 KiB.
    let size = |log2_words: u64| 4usize << (log2_words & 0xf);
    (size(ctr_el0 >> 16), size(ctr_el0))
}

/// The addresses of the `line`-byte lines (a power of two) that cover
/// `[va, va + len)`; none for an empty range, and the range stops at the top of the
/// address space rather than wrapping.
pub fn lines(va: usize, len: usize, line: usize) -> impl Iterator<Item = usize> {
    let end = if len == 0 { va } else { va.saturating_add(len) };
    let line = line.max(1);
    let first = va & !line.wrapping_sub(1);
    core::iter::successors(Some(first), move |&a| a.checked_add(line)).take_while(move |&a| a < end)
}

/// Cleans and invalidates the data cache to the point of coherency over
/// `[va, va + len)`, then waits for it to complete (`dsb sy`: the observer may be
/// outside the inner shareable domain).
///
/// # Safety
/// The range is mapped at this exception level (maintenance on an unmapped address
/// faults). Its contents do not change.
#[cfg(target_arch = "aarch64")]
pub unsafe fn clean_inval_dcache_poc(va: usize, len: usize) {
    let (dline, _) = line_sizes(crate::mrs!("ctr_el0"));
    for a in lines(va, len, dline) {
        // SAFETY: the caller guarantees the range is mapped; clean and invalidate
        // writes dirty lines back and drops them, leaving memory's contents as they were.
        unsafe { core::arch::asm!("dc civac, {0}", in(reg) a, options(nostack, preserves_flags)) };
    }
    crate::barrier::dsb_sy();
}

/// Invalidates the data cache over `[va, va + len)` without writing it back, so that
/// the next read sees what a non-caching observer (such as EL2 with its MMU off) wrote
/// to memory.
///
/// # Safety
/// The range is mapped at this exception level and no write through the caches to it
/// is pending that must survive: dirty lines in the range are discarded. Callers clean
/// the range first ([`clean_inval_dcache_poc`]) before handing it to that observer.
#[cfg(target_arch = "aarch64")]
pub unsafe fn inval_dcache_poc(va: usize, len: usize) {
    let (dline, _) = line_sizes(crate::mrs!("ctr_el0"));
    for a in lines(va, len, dline) {
        // SAFETY: the caller guarantees the range is mapped and holds no dirty data
        // that must be kept.
        unsafe { core::arch::asm!("dc ivac, {0}", in(reg) a, options(nostack, preserves_flags)) };
    }
    crate::barrier::dsb_sy();
}

/// Makes `[va, va + len)` coherent for a guest that runs with its caches off and for
/// instruction fetch: cleans and invalidates the data cache to the point of coherency,
/// then invalidates the instruction cache, by line (what `Host::sync_caches_for_guest`
/// asks for).
///
/// # Safety
/// As for [`clean_inval_dcache_poc`].
#[cfg(target_arch = "aarch64")]
pub unsafe fn sync_for_guest(va: usize, len: usize) {
    // SAFETY: the caller's guarantee is the one this needs.
    unsafe { clean_inval_dcache_poc(va, len) };
    let (_, iline) = line_sizes(crate::mrs!("ctr_el0"));
    for a in lines(va, len, iline) {
        // SAFETY: invalidating instruction-cache lines of a mapped range only makes
        // later fetches read memory.
        unsafe { core::arch::asm!("ic ivau, {0}", in(reg) a, options(nostack, preserves_flags)) };
    }
    crate::barrier::dsb_ish();
    crate::barrier::isb();
}

/// Invalidates every instruction cache of the inner shareable domain (after code was
/// written through the data side and cleaned, when its addresses are not at hand).
#[cfg(target_arch = "aarch64")]
pub fn inval_icache_all() {
    crate::barrier::dsb_ish();
    // SAFETY: invalidating the instruction caches only makes later fetches read memory.
    unsafe { core::arch::asm!("ic ialluis", options(nostack, preserves_flags)) };
    crate::barrier::dsb_ish();
    crate::barrier::isb();
}
