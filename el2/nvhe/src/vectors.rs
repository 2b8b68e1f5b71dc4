//! The two EL2 vector tables of the nVHE blob and the assembly that must run without a
//! Rust frame: EL2 init, the host hypercall entry and cleanup. A guest's exceptions
//! branch to the world switch's exit trampolines (`el2_guest_exit`, `el2_fp_trap` in
//! vmm-el2-switch), with guest x0/x1 pushed on the EL2 stack and x1 = the kind.
//!
//! Layout (the loader relies on it): the blob starts with `el2_init_vectors`, and
//! `el2_runtime_vectors` follows at offset 0x800.
//!
//! Register use at EL2: the host's `hvc #0` is treated like a call to an `extern "C"`
//! function: x0..x17 may be clobbered, x18..x30 and SP_EL1 are preserved. The host's
//! x18 (FreeBSD's per-CPU pointer) is only ever touched by the guest entry/exit pair
//! below, which saves it on the EL2 stack and puts it back.
//!
//! Guest entry keeps a frame on the EL2 stack (vmm-el2-switch's entry.rs); because
//! exceptions from a lower EL land on SP_EL2, which is exactly where `eret` left it,
//! the exit path finds that frame at `sp` without any per-CPU variable.

use core::arch::global_asm;
use vmm_sys::hyp::{excp, HYP_CLEANUP};

/// ESR_EL2.EC of a trapped FP/SIMD access.
const EC_FP: u64 = 0x07;

global_asm!(
    r#"
    .section .text.el2_vectors, "ax"
    .balign 2048
    .global el2_init_vectors
el2_init_vectors:
    /* Only "synchronous from a lower EL, AArch64" is used: the host's second hvc. */
    .balign 0x80
    b el2_hang                       /* current EL, SP0 */
    .balign 0x80
    b el2_hang
    .balign 0x80
    b el2_hang
    .balign 0x80
    b el2_hang
    .balign 0x80
    b el2_hang                       /* current EL, SPx */
    .balign 0x80
    b el2_hang
    .balign 0x80
    b el2_hang
    .balign 0x80
    b el2_hang
    .balign 0x80
    b el2_init_sync                  /* lower EL, AArch64: sync */
    .balign 0x80
    b el2_hang
    .balign 0x80
    b el2_hang
    .balign 0x80
    b el2_hang
    .balign 0x80
    b el2_hang                       /* lower EL, AArch32 */
    .balign 0x80
    b el2_hang
    .balign 0x80
    b el2_hang
    .balign 0x80
    b el2_hang

    .balign 2048
    .global el2_runtime_vectors
el2_runtime_vectors:
    .balign 0x80
    b el2_hang                       /* current EL, SP0: never used */
    .balign 0x80
    b el2_hang
    .balign 0x80
    b el2_hang
    .balign 0x80
    b el2_hang
    .balign 0x80
    b el2_hang                       /* current EL, SPx: a bug in this blob */
    .balign 0x80
    b el2_hang
    .balign 0x80
    b el2_hang
    .balign 0x80
    b el2_hang
    .balign 0x80
    /* lower EL, AArch64, sync: a host hypercall (VTTBR_EL2 == 0) or a guest exit */
    stp x0, x1, [sp, #-16]!
    mrs x0, vttbr_el2
    cbnz x0, 1f
    ldp x0, x1, [sp], #16
    b el2_host_call
1:  mrs x0, esr_el2
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
    /* lower EL, AArch64, IRQ: only while a guest runs (the host keeps HCR_EL2.IMO clear) */
    stp x0, x1, [sp, #-16]!
    mov x1, #{EL1_IRQ}
    b el2_lower_async
    .balign 0x80
    stp x0, x1, [sp, #-16]!
    mov x1, #{EL1_FIQ}
    b el2_lower_async
    .balign 0x80
    stp x0, x1, [sp, #-16]!
    mov x1, #{EL1_ERROR}
    b el2_lower_async
    .balign 0x80
    b el2_hang                       /* lower EL, AArch32: guests are AArch64 only */
    .balign 0x80
    b el2_hang
    .balign 0x80
    b el2_hang
    .balign 0x80
    b el2_hang

    .text
    .balign 4
el2_hang:
    wfe
    b el2_hang

el2_lower_async:
    mrs x0, vttbr_el2
    cbz x0, el2_hang
    b el2_guest_exit

/* Second hvc after the stub pointed VBAR_EL2 at el2_init_vectors:
 * x0 = TTBR0_EL2, x1 = stack top, x2 = TCR_EL2, x3 = SCTLR_EL2, x4 = VTCR_EL2. */
el2_init_sync:
    msr ttbr0_el2, x0
    mrs x5, mair_el1
    msr mair_el2, x5
    msr tcr_el2, x2
    msr vtcr_el2, x4
    msr vttbr_el2, xzr
    isb
    tlbi alle2
    dsb ish
    msr sctlr_el2, x3
    isb
    adr x5, el2_runtime_vectors
    msr vbar_el2, x5
    mov sp, x1
    isb
    mov x0, #0
    eret

/* A host hypercall: x0 = function, x1.. = arguments. ELR/SPSR_EL2 are kept on the
 * stack because entering a guest overwrites them. */
el2_host_call:
    cmp x0, #{HYP_CLEANUP}
    b.eq el2_cleanup
    stp x29, x30, [sp, #-32]!
    mrs x29, elr_el2
    mrs x30, spsr_el2
    stp x29, x30, [sp, #16]
    bl el2_hypercall
    ldp x29, x30, [sp, #16]
    msr elr_el2, x29
    msr spsr_el2, x30
    ldp x29, x30, [sp], #32
    eret

/* HYP_CLEANUP, x1 = the stub's vectors: leave EL2 as the stub left it (its vectors,
 * SCTLR_EL2 = RES1|EIS|EOS with the MMU off). Runs identity mapped, so turning the
 * MMU off does not move the instruction stream; it uses no stack. */
el2_cleanup:
    msr vbar_el2, x1
    ldr x2, ={SCTLR_STUB}
    msr sctlr_el2, x2
    isb
    tlbi alle2
    dsb ish
    isb
    mov x0, #0
    eret

    .ltorg
"#,
    EL1_SYNC = const excp::EL1_SYNC,
    EL1_IRQ = const excp::EL1_IRQ,
    EL1_FIQ = const excp::EL1_FIQ,
    EL1_ERROR = const excp::EL1_ERROR,
    HYP_CLEANUP = const HYP_CLEANUP,
    SCTLR_STUB = const crate::STUB_SCTLR_EL2,
    EC_FP = const EC_FP,
    EC_SYS64 = const vmm_sys::arm64::esr::ec::SYS64,
    EC_DABT_LOW = const vmm_sys::arm64::esr::ec::DABT_LOW,
);
