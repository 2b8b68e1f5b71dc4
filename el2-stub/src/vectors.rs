//! The two EL2 vector tables and the assembly that must run without a Rust frame:
//! EL2 init, the guest entry/exit trampolines and cleanup.
//!
//! Layout (the loader relies on it): the blob starts with `el2_init_vectors`, and
//! `el2_runtime_vectors` follows at offset 0x800.
//!
//! Register use at EL2: the host's `hvc #0` is treated like a call to an `extern "C"`
//! function: x0..x17 may be clobbered, x18..x30 and SP_EL1 are preserved. The host's
//! x18 (FreeBSD's per-CPU pointer) is only ever touched by the guest entry/exit pair
//! below, which saves it on the EL2 stack and puts it back.
//!
//! Guest entry keeps a frame on the EL2 stack (host x18..x30 and the context address);
//! because exceptions from a lower EL land on SP_EL2, which is exactly where `eret`
//! left it, the exit path finds that frame at `sp` without any per-CPU variable.

use core::arch::global_asm;
use vmm_sys::hyp::{ctx_off, excp, ExitInfo, HYP_CLEANUP};

/// Bytes of the host frame `el2_guest_enter` keeps on the EL2 stack: host x18..x30,
/// the context address, the host FP save area's address and the lazy-FP state.
const FRAME: usize = 128;
/// Offset of the context address in that frame.
const FRAME_CTX: usize = 104;
const FRAME_HOSTFP: usize = 112;
const FRAME_FPSTATE: usize = 120;

/// Lazy FP/SIMD states kept in the frame while a guest runs.
pub const FP_EAGER_TRAP: u64 = 0;
/// CPTR_EL2.TFP was added by us: the first guest FP access switches FP at EL2.
pub const FP_LAZY_ARMED: u64 = 1;
/// The guest's FP registers are live in the CPU; the host's are in the save area.
pub const FP_GUEST_LOADED: u64 = 2;
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

/* A guest FP/SIMD access trapped by CPTR_EL2.TFP. If we set TFP for lazy switching
 * (state FP_LAZY_ARMED), switch FP here and return to the guest without a full exit;
 * otherwise it is a real exit for the host. Guest x0/x1 are at [sp]. */
el2_fp_trap:
    stp x2, x3, [sp, #-32]!
    str x30, [sp, #16]
    ldr x0, [sp, #(48 + {FRAME_FPSTATE})]
    cmp x0, #{FP_LAZY_ARMED}
    b.ne 1f
    mrs x0, cptr_el2
    bic x0, x0, #{TFP}
    msr cptr_el2, x0
    isb
    ldr x0, [sp, #(48 + {FRAME_HOSTFP})]
    bl el2_fp_save
    ldr x0, [sp, #(48 + {FRAME_CTX})]
    add x0, x0, #{FP}
    bl el2_fp_load
    mov x0, #{FP_GUEST_LOADED}
    str x0, [sp, #(48 + {FRAME_FPSTATE})]
    ldr x30, [sp, #16]
    ldp x2, x3, [sp], #32
    ldp x0, x1, [sp], #16
    eret
1:  ldr x30, [sp, #16]
    ldp x2, x3, [sp], #32
    mov x1, #{EL1_SYNC}
    b el2_guest_exit

/* EnterResult el2_guest_enter(VcpuContext *ctx, FpRegs *host_fp, u64 fp_state): run
 * the guest until it exits; returns (exception kind, final lazy-FP state) in x0/x1.
 * The caller has loaded every system register already. */
    .global el2_guest_enter
el2_guest_enter:
    sub sp, sp, #{FRAME}
    stp x18, x19, [sp, #0]
    stp x20, x21, [sp, #16]
    stp x22, x23, [sp, #32]
    stp x24, x25, [sp, #48]
    stp x26, x27, [sp, #64]
    stp x28, x29, [sp, #80]
    stp x30, x0, [sp, #96]
    stp x1, x2, [sp, #{FRAME_HOSTFP}]
    ldp x1, x2, [x0, #{SP_EL0}]
    msr sp_el0, x1
    msr sp_el1, x2
    ldp x1, x2, [x0, #{PC}]
    msr elr_el2, x1
    msr spsr_el2, x2
    ldp x2, x3, [x0, #16]
    ldp x4, x5, [x0, #32]
    ldp x6, x7, [x0, #48]
    ldp x8, x9, [x0, #64]
    ldp x10, x11, [x0, #80]
    ldp x12, x13, [x0, #96]
    ldp x14, x15, [x0, #112]
    ldp x16, x17, [x0, #128]
    ldp x18, x19, [x0, #144]
    ldp x20, x21, [x0, #160]
    ldp x22, x23, [x0, #176]
    ldp x24, x25, [x0, #192]
    ldp x26, x27, [x0, #208]
    ldp x28, x29, [x0, #224]
    ldr x30, [x0, #240]
    ldp x0, x1, [x0, #0]
    eret

/* Guest exit: guest x0/x1 are at [sp], the host frame above them, x1 = kind. */
el2_guest_exit:
    ldr x0, [sp, #(16 + {FRAME_CTX})]
    stp x2, x3, [x0, #16]
    stp x4, x5, [x0, #32]
    stp x6, x7, [x0, #48]
    stp x8, x9, [x0, #64]
    stp x10, x11, [x0, #80]
    stp x12, x13, [x0, #96]
    stp x14, x15, [x0, #112]
    stp x16, x17, [x0, #128]
    stp x18, x19, [x0, #144]
    stp x20, x21, [x0, #160]
    stp x22, x23, [x0, #176]
    stp x24, x25, [x0, #192]
    stp x26, x27, [x0, #208]
    stp x28, x29, [x0, #224]
    str x30, [x0, #240]
    ldp x2, x3, [sp], #16
    stp x2, x3, [x0, #0]
    mrs x2, sp_el0
    mrs x3, sp_el1
    stp x2, x3, [x0, #{SP_EL0}]
    mrs x2, elr_el2
    mrs x3, spsr_el2
    stp x2, x3, [x0, #{PC}]
    add x2, x0, #{EXIT}
    str w1, [x2, #{EXIT_KIND}]
    mrs x3, esr_el2
    str x3, [x2, #{EXIT_ESR}]
    mrs x3, far_el2
    str x3, [x2, #{EXIT_FAR}]
    mrs x3, hpfar_el2
    str x3, [x2, #{EXIT_HPFAR}]
    mov x0, x1
    ldr x1, [sp, #{FRAME_FPSTATE}]
    ldp x18, x19, [sp, #0]
    ldp x20, x21, [sp, #16]
    ldp x22, x23, [sp, #32]
    ldp x24, x25, [sp, #48]
    ldp x26, x27, [sp, #64]
    ldp x28, x29, [sp, #80]
    ldr x30, [sp, #96]
    add sp, sp, #{FRAME}
    ret
    .ltorg
"#,
    EL1_SYNC = const excp::EL1_SYNC,
    EL1_IRQ = const excp::EL1_IRQ,
    EL1_FIQ = const excp::EL1_FIQ,
    EL1_ERROR = const excp::EL1_ERROR,
    HYP_CLEANUP = const HYP_CLEANUP,
    SCTLR_STUB = const crate::STUB_SCTLR_EL2,
    FRAME = const FRAME,
    FRAME_CTX = const FRAME_CTX,
    FRAME_HOSTFP = const FRAME_HOSTFP,
    FRAME_FPSTATE = const FRAME_FPSTATE,
    FP_LAZY_ARMED = const FP_LAZY_ARMED,
    FP_GUEST_LOADED = const FP_GUEST_LOADED,
    EC_FP = const EC_FP,
    TFP = const vmm_sys::arm64::regs::cptr::TFP,
    FP = const ctx_off::FP,
    SP_EL0 = const ctx_off::SP_EL0,
    PC = const ctx_off::PC,
    EXIT = const ctx_off::EXIT,
    EXIT_KIND = const core::mem::offset_of!(ExitInfo, kind),
    EXIT_ESR = const core::mem::offset_of!(ExitInfo, esr_el2),
    EXIT_FAR = const core::mem::offset_of!(ExitInfo, far_el2),
    EXIT_HPFAR = const core::mem::offset_of!(ExitInfo, hpfar_el2),
);

// The trampolines address sp_el0/sp_el1 and pc/pstate as pairs.
const _: () = assert!(ctx_off::SP_EL1 == ctx_off::SP_EL0 + 8);
const _: () = assert!(ctx_off::PSTATE == ctx_off::PC + 8);
const _: () = assert!(ctx_off::X == 0);

/// What `el2_guest_enter` returns in x0/x1.
#[repr(C)]
pub struct EnterResult {
    /// The exception kind (`hyp::excp`).
    pub kind: u64,
    /// The lazy-FP state at exit (`FP_*`).
    pub fp_state: u64,
}

const _: () = assert!(FRAME_FPSTATE == FRAME_HOSTFP + 8 && FRAME_HOSTFP == FRAME_CTX + 8);

extern "C" {
    /// Enters the guest described by `ctx` (an EL2 address). `host_fp` receives the
    /// host's FP registers if the guest touches FP while `fp_state` is
    /// `FP_LAZY_ARMED`.
    pub fn el2_guest_enter(
        ctx: *mut vmm_sys::hyp::VcpuContext,
        host_fp: *mut vmm_sys::hyp::FpRegs,
        fp_state: u64,
    ) -> EnterResult;
}
