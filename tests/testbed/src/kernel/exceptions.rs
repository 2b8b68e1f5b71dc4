//! EL1 exception vectors. IRQs go to the GIC driver; anything else is a testbed bug:
//! report it on the console and power off so the harness sees it at once.

use core::arch::global_asm;

#[repr(C)]
pub struct TrapFrame {
    /// x0..x30 (x18 is never touched: FreeBSD's per-CPU register, unused here).
    pub x: [u64; 31],
    pub elr: u64,
    pub spsr: u64,
}

const KIND_SYNC: u64 = 0;
const KIND_IRQ: u64 = 1;
const KIND_OTHER: u64 = 2;

global_asm!(
    r#"
    .text
    .balign 2048
    .global el1_vectors
el1_vectors:
    .rept 4
    .balign 0x80
    sub sp, sp, #272
    stp x0, x1, [sp]
    mov x1, #{OTHER}
    b el1_common
    .endr
    .balign 0x80
    sub sp, sp, #272
    stp x0, x1, [sp]
    mov x1, #{SYNC}
    b el1_common
    .balign 0x80
    sub sp, sp, #272
    stp x0, x1, [sp]
    mov x1, #{IRQ}
    b el1_common
    .rept 10
    .balign 0x80
    sub sp, sp, #272
    stp x0, x1, [sp]
    mov x1, #{OTHER}
    b el1_common
    .endr

el1_common:
    stp x2, x3, [sp, #16]
    stp x4, x5, [sp, #32]
    stp x6, x7, [sp, #48]
    stp x8, x9, [sp, #64]
    stp x10, x11, [sp, #80]
    stp x12, x13, [sp, #96]
    stp x14, x15, [sp, #112]
    stp x16, x17, [sp, #128]
    stp x19, x20, [sp, #152]
    stp x21, x22, [sp, #168]
    stp x23, x24, [sp, #184]
    stp x25, x26, [sp, #200]
    stp x27, x28, [sp, #216]
    stp x29, x30, [sp, #232]
    mrs x2, elr_el1
    mrs x3, spsr_el1
    stp x2, x3, [sp, #248]
    mov x0, sp
    bl el1_trap
    ldp x2, x3, [sp, #248]
    msr elr_el1, x2
    msr spsr_el1, x3
    ldp x0, x1, [sp, #0]
    ldp x2, x3, [sp, #16]
    ldp x4, x5, [sp, #32]
    ldp x6, x7, [sp, #48]
    ldp x8, x9, [sp, #64]
    ldp x10, x11, [sp, #80]
    ldp x12, x13, [sp, #96]
    ldp x14, x15, [sp, #112]
    ldp x16, x17, [sp, #128]
    ldp x19, x20, [sp, #152]
    ldp x21, x22, [sp, #168]
    ldp x23, x24, [sp, #184]
    ldp x25, x26, [sp, #200]
    ldp x27, x28, [sp, #216]
    ldp x29, x30, [sp, #232]
    add sp, sp, #272
    eret
"#,
    SYNC = const KIND_SYNC,
    IRQ = const KIND_IRQ,
    OTHER = const KIND_OTHER,
);

#[no_mangle]
extern "C" fn el1_trap(frame: &mut TrapFrame, kind: u64) {
    if kind == KIND_IRQ {
        crate::kernel::gic::handle_irq();
        return;
    }
    let esr: u64;
    let far: u64;
    // SAFETY: reading syndrome registers.
    unsafe { core::arch::asm!("mrs {0}, esr_el1", "mrs {1}, far_el1", out(reg) esr, out(reg) far) };
    crate::kprintln!(
        "PANIC unexpected EL1 exception kind {} on cpu {}: ESR {:#x} ELR {:#x} FAR {:#x} SPSR {:#x}",
        kind,
        crate::kernel::cpu::id(),
        esr,
        frame.elr,
        far,
        frame.spsr
    );
    crate::kernel::psci::system_off();
}
