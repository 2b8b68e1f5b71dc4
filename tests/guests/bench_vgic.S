// In-kernel vGIC exit costs (tests/testbed/src/bench.rs, `cargo xtask bench-el2`):
// x0 = N. Sets up the GICv3 CPU interface (SGI 1 group 1 and enabled at the
// redistributor, distributor on, ICC_PMR/IGRPEN1, IRQs unmasked), then times with the
// virtual counter: N reads of GICD_TYPER (a data abort the core's vGIC answers in the
// kernel), N IPIs to itself (ICC_SGI1R_EL1 write trapped to EL2, the core pends SGI 1,
// the next entry puts it in a list register, the handler acknowledges and EOIs it and
// the loop waits for the handler before the next one) and N iterations of an empty
// loop. Then `hvc #2` with x1/x2/x3 = the three tick counts and x4 = SGIs taken.
// `hvc #3` on failure: x0 = an unexpected INTID, or 0xdead if an SGI never came.
    .text
    .global _start
_start:
    mov x20, x0
    adr x0, vectors
    msr vbar_el1, x0
    isb
    mov x21, #0                 // SGIs taken, counted by the IRQ handler
    ldr x1, =0x2f100000
    str wzr, [x1, #0x14]        // GICR_WAKER: awake
1:  ldr w2, [x1, #0x14]
    tbnz w2, #2, 1b
    ldr x5, =0x2f110000         // the redistributor's SGI frame
    mov w2, #2
    str w2, [x5, #0x80]         // GICR_IGROUPR0: SGI 1 group 1
    str w2, [x5, #0x100]        // GICR_ISENABLER0: SGI 1 on
    ldr x4, =0x2f000000
    mov w2, #0x13
    str w2, [x4]                // GICD_CTLR: ARE | G1A | G1
    mrs x2, icc_sre_el1
    orr x2, x2, #1
    msr icc_sre_el1, x2
    isb
    mov x2, #0xff
    msr icc_pmr_el1, x2
    mov x2, #1
    msr icc_igrpen1_el1, x2
    isb
    msr daifclr, #2

    // N distributor reads.
    isb
    mrs x22, cntvct_el0
    mov x19, x20
2:  ldr w3, [x4, #4]            // GICD_TYPER
    subs x19, x19, #1
    b.ne 2b
    isb
    mrs x23, cntvct_el0

    // N self-IPIs: SGI 1 to Aff0 = 0 (vCPU 0), each waited for.
    mov x6, #(1 << 24)
    orr x6, x6, #1
    mov x19, x20
3:  add x7, x21, #1
    mov x8, #(1 << 20)
    msr icc_sgi1r_el1, x6
    isb
4:  cmp x21, x7
    b.eq 5f
    subs x8, x8, #1
    b.ne 4b
    mov x0, #0xdead
    hvc #3
    b .
5:  subs x19, x19, #1
    b.ne 3b
    isb
    mrs x24, cntvct_el0

    // The empty loop, for its own cost.
    mov x19, x20
6:  subs x19, x19, #1
    b.ne 6b
    isb
    mrs x25, cntvct_el0
    sub x1, x23, x22
    sub x2, x24, x23
    sub x3, x25, x24
    mov x4, x21
    mov x0, x20
    hvc #2
    b .

irq_handler:
    mrs x10, icc_iar1_el1
    cmp x10, #1
    b.ne 7f
    add x21, x21, #1
    msr icc_eoir1_el1, x10
    isb
    eret
7:  cmp x10, #1023
    b.eq 8f
    mov x0, x10
    hvc #3
8:  eret

unexpected:
    mrs x0, esr_el1
    hvc #3
    b .

    .balign 2048
vectors:
    .rept 5
    b unexpected
    .balign 0x80
    .endr
    b irq_handler               // 0x280: IRQ, current EL with SP_ELx
    .balign 0x80
    .rept 10
    b unexpected
    .balign 0x80
    .endr
