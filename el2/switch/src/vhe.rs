//! The VHE regime: the host kernel itself runs at EL2 with HCR_EL2.E2H and TGE set, so
//! there is no hyp stub and no blob. The kernel enters a guest by calling
//! [`enter_guest`], which runs the same switch body as the nVHE blob with the guest's
//! EL1 state reached through the *_EL12/*_EL02 encodings, the E2H layouts of CPTR_EL2
//! and CNTHCTL_EL2, HCR_EL2.TGE cleared, and this module's vectors in VBAR_EL2 while
//! the guest runs; [`hyp_call`] answers the core's other EL2 requests in place.
//!
//! FP/SIMD is switched lazily, as on nVHE: the guest runs with CPTR_EL2.FPEN clear (the
//! E2H layout) until its first FP access, which the trap path switches.
//!
//! Of the host's EL1 state only what a VHE kernel and its user space use is kept: the
//! EL0 thread registers, TPIDR_EL1, PAR_EL1, CSSELR_EL1, MDSCR_EL1 and SP_EL0. The
//! registers E2H redirects (SCTLR, TTBRx, TCR, VBAR, ...) are the host's only in their
//! EL2 forms; their EL1 copies belong to whichever guest ran last and are loaded whole
//! before the next guest runs.

use crate::entry::el2_guest_enter;
use crate::switch::{
    fp_back_to_host, load_el2, load_guest, load_unredirected_el1, optional_to_guest,
    optional_to_host, save_el2, save_guest, save_timer, save_unredirected_el1, set_vtcr,
    switch_keys, vgic_clear, vgic_shape, HostState,
};
use crate::tlb;
use core::arch::global_asm;
use core::mem::MaybeUninit;
use vmm_arm64::barrier::isb;
use vmm_arm64::mrs;
use vmm_sys::arm64::regs::{cnthctl, cptr, el2_optional, hcr};
use vmm_sys::hyp::*;

/// Writes a system register as part of the world switch.
macro_rules! msr {
    ($reg:literal, $val:expr) => {
        // SAFETY: the switch writes the guest's or the host's own EL1 and EL2 state,
        // with interrupts masked (the caller's contract), and VBAR_EL2 only to swap in
        // this module's vectors for the guest's run and the host's back after it.
        unsafe { vmm_arm64::msr!($reg, $val) }
    };
}

/// ESR_EL2.EC of a trapped FP/SIMD access.
const EC_FP: u64 = 0x07;

global_asm!(
    r#"
    .section .text.el2_vhe_vectors, "ax"
    .balign 2048
    .global el2_vhe_vectors
el2_vhe_vectors:
    /* From EL2 itself (SP0, SPx): the switch runs with interrupts masked and takes no
     * exception; one here is a bug in it: stop this CPU. */
    .rept 8
    .balign 0x80
    b el2_vhe_hang
    .endr
    /* From the guest, AArch64: sync, IRQ, FIQ, SError. */
    .balign 0x80
    stp x0, x1, [sp, #-16]!
    mrs x0, esr_el2
    lsr x0, x0, #26
    cmp x0, #{EC_FP}
    b.eq el2_fp_trap
    cmp x0, #{EC_SYS64}
    b.eq el2_answer_trap
    cmp x0, #{EC_DABT_LOW}
    b.eq el2_answer_trap
    mov x1, #{EL1_SYNC}
    b el2_guest_exit
    .balign 0x80
    stp x0, x1, [sp, #-16]!
    mov x1, #{EL1_IRQ}
    b el2_guest_exit
    .balign 0x80
    stp x0, x1, [sp, #-16]!
    mov x1, #{EL1_FIQ}
    b el2_guest_exit
    .balign 0x80
    stp x0, x1, [sp, #-16]!
    mov x1, #{EL1_ERROR}
    b el2_guest_exit
    /* AArch32 guests do not exist here. */
    .rept 4
    .balign 0x80
    b el2_vhe_hang
    .endr
el2_vhe_hang:
    wfe
    b el2_vhe_hang
"#,
    EC_FP = const EC_FP,
    EC_SYS64 = const vmm_sys::arm64::esr::ec::SYS64,
    EC_DABT_LOW = const vmm_sys::arm64::esr::ec::DABT_LOW,
    EL1_SYNC = const excp::EL1_SYNC,
    EL1_IRQ = const excp::EL1_IRQ,
    EL1_FIQ = const excp::EL1_FIQ,
    EL1_ERROR = const excp::EL1_ERROR,
);

/// The address of `el2_vhe_vectors` (in the kernel's EL2&0 address space).
fn vectors() -> u64 {
    let v: u64;
    // SAFETY: computes an address; touches no memory.
    unsafe {
        core::arch::asm!(
            "adrp {0}, el2_vhe_vectors",
            "add {0}, {0}, :lo12:el2_vhe_vectors",
            out(reg) v,
            options(nomem, nostack, preserves_flags)
        )
    };
    v
}

/// Runs the guest in `ctx` until it exits; returns the exit kind (also stored in
/// `ctx.exit.kind`).
///
/// # Safety
/// Called at EL2 on a VHE host (HCR_EL2.E2H and TGE set) with interrupts masked;
/// `ctx` is the kernel address of a `VcpuContext` nobody else touches meanwhile.
pub unsafe fn enter_guest(ctx: *mut VcpuContext) -> u64 {
    // SAFETY: guaranteed by the caller.
    let c = unsafe { &mut *ctx };
    let mut host = HostState::default();
    let (lrs, aprs) = vgic_shape();

    save_unredirected_el1(&mut host.el1);
    host.sp_el0 = mrs!("sp_el0");
    save_el2(&mut host.el2);
    optional_to_guest(c, &mut host);
    if c.optional.present & el2_optional::PAUTH != 0 {
        switch_keys(&mut host.pac, &c.pac);
    }
    save_timer::<true>(&mut host.timer);
    let host_vbar = mrs!("vbar_el2");
    // Written by el2_fp_trap only if the guest uses FP (then fp_state says so).
    let mut host_fp = MaybeUninit::<FpRegs>::uninit();

    let (mut el2, fp_state) = load_guest::<true>(c, lrs, aprs);
    el2.hcr_el2 = (el2.hcr_el2 | hcr::E2H) & !hcr::TGE;
    el2.cptr_el2 = cptr::to_e2h(el2.cptr_el2);
    el2.cnthctl_el2 = cnthctl::to_e2h(el2.cnthctl_el2);
    set_vtcr(el2.vtcr_el2);
    load_el2(&el2);
    msr!("vbar_el2", vectors());
    isb();

    // SAFETY: every register the guest sees is loaded; ctx stays valid (caller);
    // host_fp is a 16-byte aligned FpRegs-sized area on this stack.
    let r = unsafe { el2_guest_enter(ctx, host_fp.as_mut_ptr(), fp_state) };

    fp_back_to_host(c, &host_fp, r.fp_state);
    msr!("vbar_el2", host_vbar);
    if host.optional.present & el2_optional::PAUTH != 0 {
        switch_keys(&mut c.pac, &host.pac);
    }
    optional_to_host(&host);
    load_el2(&host_el2_after_run(&host.el2, &c.el2));
    save_guest::<true>(c, &host, lrs, aprs);
    load_unredirected_el1(&host.el1);
    msr!("sp_el0", host.sp_el0);
    r.kind
}

/// The EL2 controls the host gets back after a guest's run: its own, except that the
/// guest's VTTBR_EL2 stays loaded and HCR_EL2.VM stays set while the host runs with
/// E2H and TGE set. Neither has any effect then (with {E2H, TGE} = {1, 1} the
/// architecture treats VM as 0 for everything but a direct read, and stage 2 applies
/// only to the EL1&0 regime), and so the next entry of the same guest changes neither.
/// That matters under QEMU's TCG, which empties its whole TLB when HCR_EL2.VM changes
/// and the guest's part of it when the VMID in VTTBR_EL2 does: each exit and entry did
/// both, and the guest refilled its TLB after every exit (docs/PERFORMANCE.md). The host
/// reads its HCR_EL2 back with VM set; stage-2 TLB maintenance (`tlb.rs`) loads the
/// VMID it needs and leaves VTTBR_EL2 0.
fn host_el2_after_run(host: &El2Controls, guest: &El2Controls) -> El2Controls {
    let mut back = *host;
    if back.hcr_el2 & (hcr::E2H | hcr::TGE) == hcr::E2H | hcr::TGE {
        back.hcr_el2 |= hcr::VM;
        back.vttbr_el2 = guest.vttbr_el2;
    }
    back
}

/// The core's EL2 requests (`vmm_sys::hyp`), answered in place on a VHE host.
///
/// # Safety
/// Called at EL2 on a VHE host. `HYP_ENTER_GUEST` takes the kernel address of a
/// context, as [`enter_guest`] requires; `HYP_DC_CIVAC` a mapped range.
pub unsafe fn hyp_call(func: u64, args: &[u64; 7]) -> u64 {
    let [a1, a2, a3, ..] = *args;
    match func {
        HYP_ENTER_GUEST => {
            if a1 == 0 || !a1.is_multiple_of(16) {
                return HYP_RET_UNKNOWN;
            }
            // SAFETY: the caller's guarantee.
            unsafe { enter_guest(a1 as *mut VcpuContext) }
        }
        HYP_READ_REGISTER => match a1 {
            HYP_REG_ICH_VTR => mrs!("ich_vtr_el2"),
            HYP_REG_CNTHCTL => mrs!("cnthctl_el2"),
            _ => HYP_RET_UNKNOWN,
        },
        HYP_S2_TLBI_RANGE => {
            tlb::s2_tlbi_range::<true>(a1, a2, a3);
            0
        }
        HYP_S2_TLBI_ALL => {
            tlb::s2_tlbi_all::<true>(a1);
            0
        }
        HYP_VGIC_CLEAR => {
            vgic_clear();
            0
        }
        HYP_CLEAN_S2_TLBI => {
            tlb::all_guests::<true>();
            0
        }
        HYP_DC_CIVAC => {
            // SAFETY: the caller names a mapped range.
            unsafe { vmm_arm64::cache::clean_inval_dcache_poc(a1 as usize, a2 as usize) };
            0
        }
        _ => HYP_RET_UNKNOWN,
    }
}
