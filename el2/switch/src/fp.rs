//! FP/SIMD save and restore. The blob is built soft-float, so the compiler never
//! touches V0..V31 itself; these two routines are the only FP code at EL2.

use core::arch::global_asm;
use vmm_sys::hyp::FpRegs;

global_asm!(
    r#"
    .arch_extension fp
    .arch_extension simd
    .text
    .balign 4
    .global el2_fp_save
el2_fp_save:
    stp q0, q1, [x0, #0]
    stp q2, q3, [x0, #32]
    stp q4, q5, [x0, #64]
    stp q6, q7, [x0, #96]
    stp q8, q9, [x0, #128]
    stp q10, q11, [x0, #160]
    stp q12, q13, [x0, #192]
    stp q14, q15, [x0, #224]
    stp q16, q17, [x0, #256]
    stp q18, q19, [x0, #288]
    stp q20, q21, [x0, #320]
    stp q22, q23, [x0, #352]
    stp q24, q25, [x0, #384]
    stp q26, q27, [x0, #416]
    stp q28, q29, [x0, #448]
    stp q30, q31, [x0, #480]
    mrs x1, fpcr
    mrs x2, fpsr
    add x3, x0, #{FPCR}
    stp x1, x2, [x3]
    ret

    .global el2_fp_load
el2_fp_load:
    ldp q0, q1, [x0, #0]
    ldp q2, q3, [x0, #32]
    ldp q4, q5, [x0, #64]
    ldp q6, q7, [x0, #96]
    ldp q8, q9, [x0, #128]
    ldp q10, q11, [x0, #160]
    ldp q12, q13, [x0, #192]
    ldp q14, q15, [x0, #224]
    ldp q16, q17, [x0, #256]
    ldp q18, q19, [x0, #288]
    ldp q20, q21, [x0, #320]
    ldp q22, q23, [x0, #352]
    ldp q24, q25, [x0, #384]
    ldp q26, q27, [x0, #416]
    ldp q28, q29, [x0, #448]
    ldp q30, q31, [x0, #480]
    add x3, x0, #{FPCR}
    ldp x1, x2, [x3]
    msr fpcr, x1
    msr fpsr, x2
    ret
"#,
    FPCR = const core::mem::offset_of!(FpRegs, fpcr),
);

// Compile-time layout check on small constants: nothing can overflow.
#[allow(clippy::arithmetic_side_effects)]
const _: () =
    assert!(core::mem::offset_of!(FpRegs, fpsr) == core::mem::offset_of!(FpRegs, fpcr) + 8);
const _: () = assert!(core::mem::offset_of!(FpRegs, v) == 0);

extern "C" {
    /// Stores V0..V31, FPCR and FPSR into `*regs` (16-byte aligned by its type).
    pub fn el2_fp_save(regs: *mut FpRegs);
    /// Loads V0..V31, FPCR and FPSR from `*regs`.
    pub fn el2_fp_load(regs: *const FpRegs);
}
