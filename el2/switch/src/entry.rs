//! The guest entry and exit trampolines of the world switch: the assembly that must
//! run without a Rust frame. Shared by every EL2 regime that links this crate; the
//! regime's vector table branches here when a guest traps:
//!
//! * `el2_guest_exit`: any exit. On entry guest x0/x1 are pushed at `[sp]` (16 bytes),
//!   the host frame of `el2_guest_enter` lies above them, and x1 = the exception kind
//!   (`hyp::excp`).
//! * `el2_answer_trap`: a guest MSR/MRS trap (ESR_EL2.EC 0x18) or data abort (0x24),
//!   same stack and registers (x1 not yet set): answers it in place from the context's
//!   `El2Answers` and returns to the guest, or exits.
//! * `el2_fp_trap`: a guest FP/SIMD access trapped by CPTR_EL2 (TFP, or FPEN in the E2H
//!   layout; ESR_EL2.EC 0x07), same stack and registers (x1 not yet set): switches FP
//!   lazily and returns to the guest, or exits.
//!
//! Guest entry keeps a frame on the EL2 stack (host x18..x30, the context address, the
//! host FP save area and the lazy-FP state); because exceptions from a lower EL land on
//! SP_EL2, which is exactly where `eret` left it, the exit path finds that frame at
//! `sp` without any per-CPU variable. The host's x18 (FreeBSD's per-CPU pointer) is
//! only ever touched by this entry/exit pair, which saves it in the frame and puts it
//! back.

use core::arch::global_asm;
use vmm_sys::hyp::{ctx_off, excp, ExitInfo};

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

global_asm!(
    r#"
    .text
    .balign 4
/* Loads the guest's x0..x30 from the context at x0 (x0 last). */
.macro load_guest_gprs
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
.endm

/* Stores the guest's x0..x30 in the context: x0 = the context, guest x0/x1 at [sp]
 * (left there). */
.macro save_guest_gprs
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
    ldp x2, x3, [sp]
    stp x2, x3, [x0, #0]
.endm

/* A guest FP/SIMD access trapped by CPTR_EL2.TFP. If we set TFP for lazy switching
 * (state FP_LAZY_ARMED), switch FP here and return to the guest without a full exit;
 * otherwise it is a real exit for the host. Guest x0/x1 are at [sp]. */
    .global el2_fp_trap
el2_fp_trap:
    stp x2, x3, [sp, #-32]!
    str x30, [sp, #16]
    ldr x0, [sp, #(48 + {FRAME_FPSTATE})]
    cmp x0, #{FP_LAZY_ARMED}
    b.ne 1f
    /* Stop trapping FP: TFP in the nVHE layout of CPTR_EL2, FPEN in the E2H one. */
    mrs x0, hcr_el2
    tbnz x0, #{E2H_BIT}, 2f
    mrs x0, cptr_el2
    bic x0, x0, #{TFP}
    b 3f
2:  mrs x0, cptr_el2
    orr x0, x0, #{FPEN_ON}
3:  msr cptr_el2, x0
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
    load_guest_gprs
    eret


/* A guest MSR/MRS trap (ESR_EL2.EC 0x18) or data abort (0x24), guest x0/x1 at [sp]:
 * answered here, back to the guest without the world switch, when the context's
 * El2Answers covers it (el2_answer decides and writes the result into the saved
 * registers); otherwise an exit like any other. */
    .global el2_answer_trap
el2_answer_trap:
    ldr x0, [sp, #(16 + {FRAME_CTX})]
    save_guest_gprs
    mov x19, x0
    bl el2_answer
    mov x1, x0
    mov x0, x19
    cbz x1, 1f
    add sp, sp, #16
    load_guest_gprs
    eret
1:  mov x1, #{EL1_SYNC}
    b .Lguest_exit_saved

/* Guest exit: guest x0/x1 are at [sp], the host frame above them, x1 = kind. */
    .global el2_guest_exit
el2_guest_exit:
    ldr x0, [sp, #(16 + {FRAME_CTX})]
    save_guest_gprs
/* The same with the guest's x0..x30 already in the context (x0). */
.Lguest_exit_saved:
    add sp, sp, #16
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
    FRAME = const FRAME,
    FRAME_CTX = const FRAME_CTX,
    FRAME_HOSTFP = const FRAME_HOSTFP,
    FRAME_FPSTATE = const FRAME_FPSTATE,
    FP_LAZY_ARMED = const FP_LAZY_ARMED,
    FP_GUEST_LOADED = const FP_GUEST_LOADED,
    TFP = const vmm_sys::arm64::regs::cptr::TFP,
    E2H_BIT = const 34,
    FPEN_ON = const 3u64 << vmm_sys::arm64::regs::cptr::e2h::FPEN_SHIFT,
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
