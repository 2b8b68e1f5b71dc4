//! Stage-2 TLB maintenance for one VMID, on either host.
//!
//! The EL1 TLB instructions act on the VMID in VTTBR_EL2, so it is loaded for them and
//! set back to 0 (the host) afterwards. On a VHE host HCR_EL2.TGE is also cleared for
//! them (with interrupts masked), or they would name the host's own EL2&0 regime.

use vmm_arm64::barrier::isb;
use vmm_arm64::mrs;
use vmm_sys::arm64::regs::hcr;

/// Writes a system register for a TLB maintenance operation.
macro_rules! msr {
    ($reg:literal, $val:expr) => {
        // SAFETY: only VTTBR_EL2 (the VMID to invalidate, then 0) and, on VHE, HCR_EL2
        // (TGE cleared, then the host's value) are written, with interrupts masked on
        // VHE; no guest runs meanwhile.
        unsafe { vmm_arm64::msr!($reg, $val) }
    };
}

/// Above this many pages a range invalidation flushes the whole VMID instead.
const S2_TLBI_MAX_PAGES: u64 = 512;

/// Runs `f` with `vttbr`'s VMID current for the EL1 TLB instructions.
fn with_vmid<const VHE: bool>(vttbr: u64, f: impl FnOnce()) {
    let saved = if VHE {
        let daif = mrs!("daif");
        // SAFETY: masks interrupts on this CPU; restored below.
        unsafe { core::arch::asm!("msr daifset, #0xf", options(nostack)) };
        Some((daif, mrs!("hcr_el2")))
    } else {
        None
    };
    msr!("vttbr_el2", vttbr);
    if let Some((_, host_hcr)) = saved {
        msr!("hcr_el2", host_hcr & !hcr::TGE);
    }
    isb();
    f();
    if let Some((daif, host_hcr)) = saved {
        msr!("hcr_el2", host_hcr);
        msr!("vttbr_el2", 0);
        isb();
        msr!("daif", daif);
    } else {
        msr!("vttbr_el2", 0);
        isb();
    }
}

/// Invalidates every stage-1 and stage-2 entry of `vttbr`'s VMID.
pub fn s2_tlbi_all<const VHE: bool>(vttbr: u64) {
    with_vmid::<VHE>(vttbr, || {
        // SAFETY: TLB maintenance for the VMID just loaded; no memory operand.
        unsafe { core::arch::asm!("tlbi vmalls12e1is", "dsb ish", "isb", options(nostack)) };
    });
}

/// Invalidates the stage-2 entries of `[start, end)` of `vttbr`'s VMID, and its stage-1
/// entries (they may have been cached from the old stage-2 translation).
pub fn s2_tlbi_range<const VHE: bool>(vttbr: u64, start: u64, end: u64) {
    let pages = end.saturating_sub(start) >> 12;
    if pages > S2_TLBI_MAX_PAGES {
        return s2_tlbi_all::<VHE>(vttbr);
    }
    with_vmid::<VHE>(vttbr, || {
        let mut ipa = start & !0xfff;
        while ipa < end {
            // SAFETY: invalidates stage-2 entries of the loaded VMID by IPA.
            unsafe { core::arch::asm!("tlbi ipas2e1is, {0}", in(reg) ipa >> 12, options(nostack)) };
            ipa = ipa.saturating_add(0x1000);
        }
        // SAFETY: barriers and a VMID-wide stage-1 invalidation.
        unsafe {
            core::arch::asm!(
                "dsb ish",
                "tlbi vmalle1is",
                "dsb ish",
                "isb",
                options(nostack)
            )
        };
    });
}

/// Invalidates every EL1&0 entry of every VMID (after the last VM is gone).
pub fn all_guests<const VHE: bool>() {
    with_vmid::<VHE>(0, || {
        // SAFETY: invalidates all EL1&0 entries, every VMID.
        unsafe { core::arch::asm!("tlbi alle1is", "dsb ish", "isb", options(nostack)) };
    });
}
