// Cross-vCPU IPI benchmark, two vCPUs with a vGICv3 at the platform's windows: x0 = N,
// x1 = this vCPU's role.
// vCPU 1 (x1 = 1), the receiver: wakes its redistributor, enables SGI 2 in group 1,
// turns its CPU interface on, unmasks IRQs, sets READY and waits in WFI. Its IRQ
// handler acknowledges SGI 2, counts it in COUNT and EOIs it.
// vCPU 0 (x1 = 0), the sender: enables the distributor, waits for READY, then N times
// sends SGI 2 to vCPU 1 (ICC_SGI1R_EL1, TargetList bit 1) and waits until COUNT shows
// it was handled, executing `yield` while it waits (TCG then runs the other CPU at
// once, so the wait costs the receiver's work, not a scheduling slice). Times the N
// round trips with the virtual counter: hvc #2 with x1 = ticks, x2 = COUNT.
// Failures: hvc #3 with x0 = 0xdead (an IPI never arrived) or an unexpected INTID.
    .text
    .global _start
_start:
    mov x20, x0
    adr x9, flags
    mrs x2, icc_sre_el1
    orr x2, x2, #1
    msr icc_sre_el1, x2
    isb
    cbnz x1, receiver

    ldr x4, =0x2f000000
    mov w2, #0x13
    str w2, [x4]                // GICD_CTLR: ARE | G1A | G1
1:  yield
    ldr x3, [x9]                // READY
    cbz x3, 1b
    mov x6, #(2 << 24)          // SGI 2 ...
    orr x6, x6, #2              // ... to Aff0 1 (vCPU 1)
    mov x7, #0
    isb
    mrs x22, cntvct_el0
    mov x19, x20
2:  add x7, x7, #1
    msr icc_sgi1r_el1, x6
    isb
    mov x8, #(1 << 24)
3:  ldr x3, [x9, #8]            // COUNT
    cmp x3, x7
    b.eq 4f
    yield
    subs x8, x8, #1
    b.ne 3b
    mov x0, #0xdead
    mov x1, x3
    hvc #3
    b .
4:  subs x19, x19, #1
    b.ne 2b
    isb
    mrs x23, cntvct_el0
    sub x1, x23, x22
    ldr x2, [x9, #8]
    mov x0, x20
    hvc #2
    b .

receiver:
    adr x0, vectors
    msr vbar_el1, x0
    isb
    ldr x1, =0x2f120000         // vCPU 1's redistributor
    str wzr, [x1, #0x14]        // GICR_WAKER: awake
5:  ldr w2, [x1, #0x14]
    tbnz w2, #2, 5b
    ldr x5, =0x2f130000         // its SGI frame
    mov w2, #4
    str w2, [x5, #0x80]         // GICR_IGROUPR0: SGI 2 group 1
    str w2, [x5, #0x100]        // GICR_ISENABLER0: SGI 2 on
    mov x2, #0xff
    msr icc_pmr_el1, x2
    mov x2, #1
    msr icc_igrpen1_el1, x2
    isb
    msr daifclr, #2
    mov x3, #1
    str x3, [x9]                // READY
6:  wfi
    b 6b

irq_handler:
    mrs x10, icc_iar1_el1
    cmp x10, #2
    b.ne 7f
    ldr x11, [x9, #8]
    add x11, x11, #1
    str x11, [x9, #8]
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

    .ltorg
    .balign 64
flags:
    .quad 0                     // READY
    .quad 0                     // COUNT

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
