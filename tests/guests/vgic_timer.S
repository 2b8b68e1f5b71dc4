// The vGIC end to end (tests/testbed/src/vgic_tests.rs): the guest wakes its
// redistributor, makes PPI 27 (virtual timer) and SPI 33 group 1 and enabled, enables
// the distributor (ARE | G1A | G1) and its virtual CPU interface (ICC_SRE, PMR 0xff,
// IGRPEN1), arms its virtual timer 2 ms ahead and sits in WFI with IRQs unmasked. The
// interrupt comes through the list registers: the handler acknowledges it
// (ICC_IAR1_EL1), masks the timer and EOIs. Then `hvc #1` (x0 = timer interrupts
// taken, must be 1); the host asserts SPI 33 with VM_ASSERT_IRQ and resumes; the
// handler takes 33, disables it at the distributor (the line stays high until the
// host lowers it), EOIs; `hvc #2` with x0 = timer interrupts, x1 = SPI 33 interrupts.
// Any other exception or INTID: `hvc #3` with x0 = what went wrong.
    .text
    .global _start
_start:
    adr x0, vectors
    msr vbar_el1, x0
    isb
    mov x20, #0                 // virtual timer interrupts taken
    mov x21, #0                 // SPI 33 interrupts taken
    // Redistributor 0: clear ProcessorSleep, wait for ChildrenAsleep to clear.
    ldr x1, =0x2f100000
    str wzr, [x1, #0x14]
1:  ldr w2, [x1, #0x14]
    tbnz w2, #2, 1b
    // PPI 27 in the SGI frame: IGROUPR0 and ISENABLER0.
    ldr x3, =0x2f110000
    mov w2, #(1 << 27)
    str w2, [x3, #0x80]
    str w2, [x3, #0x100]
    // SPI 33: IGROUPR1 and ISENABLER1 bit 1.
    ldr x4, =0x2f000000
    mov w2, #2
    str w2, [x4, #0x84]
    str w2, [x4, #0x104]
    // Distributor on: ARE | EnableGrp1A | EnableGrp1.
    mov w2, #0x13
    str w2, [x4]
    // Virtual CPU interface: system registers, priority mask open, group 1 on.
    mrs x2, icc_sre_el1
    orr x2, x2, #1
    msr icc_sre_el1, x2
    isb
    mov x2, #0xff
    msr icc_pmr_el1, x2
    mov x2, #1
    msr icc_igrpen1_el1, x2
    isb
    // Virtual timer 2 ms ahead.
    mrs x5, cntfrq_el0
    mov x6, #500
    udiv x5, x5, x6
    mrs x6, cntvct_el0
    add x6, x6, x5
    msr cntv_cval_el0, x6
    mov x7, #1
    msr cntv_ctl_el0, x7
    isb
    msr daifclr, #2
    // Each wait checks its flag before every WFI: the interrupt may come in first
    // (SPI 33 is pending at the very entry after the hvc).
2:  cbnz x20, 5f
    wfi
    b 2b
5:  mov x0, x20
    hvc #1
3:  cbnz x21, 6f
    wfi
    b 3b
6:  mov x0, x20
    mov x1, x21
    hvc #2
    b .

irq_handler:
    mrs x10, icc_iar1_el1
    cmp x10, #27
    b.ne 1f
    mov x11, #3                 // ENABLE | IMASK: the timer's line goes low
    msr cntv_ctl_el0, x11
    isb
    add x20, x20, #1
    b 2f
1:  cmp x10, #33
    b.ne 3f
    mov w11, #2
    str w11, [x4, #0x184]       // ICENABLER1: SPI 33 off
    add x21, x21, #1
2:  msr icc_eoir1_el1, x10
    isb
    eret
3:  cmp x10, #1023              // spurious: nothing to end
    b.eq 4f
    mov x0, x10
    hvc #3
4:  eret

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
