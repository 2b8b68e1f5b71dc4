// SPI delivery to a running vCPU (tests/testbed/src/vgic_tests.rs): the guest makes
// SPI 33 group 1 and enabled, turns on the distributor and its virtual CPU interface,
// unmasks IRQs, writes 1 to the flag whose guest address it gets in x0 (so the host
// knows it is in the guest and can take the SPI) and spins (no WFI, so it stays in the
// guest) until its handler has taken SPI 33 (acknowledged, disabled at the
// distributor, EOIed); then `hvc #2` with x1 = SPI 33 interrupts taken. Anything
// else: `hvc #3`, x0 = what.
    .text
    .global _start
_start:
    mov x22, x0                 // the flag's address
    adr x0, vectors
    msr vbar_el1, x0
    isb
    mov x21, #0
    ldr x1, =0x2f100000
    str wzr, [x1, #0x14]        // GICR_WAKER: awake
1:  ldr w2, [x1, #0x14]
    tbnz w2, #2, 1b
    ldr x4, =0x2f000000
    mov w2, #2
    str w2, [x4, #0x84]         // IGROUPR1: SPI 33 group 1
    str w2, [x4, #0x104]        // ISENABLER1: SPI 33 on
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
    mov x2, #1
    str x2, [x22]               // the flag: spinning with IRQs unmasked from here on
2:  cbz x21, 2b
    mov x0, #0
    mov x1, x21
    hvc #2
    b .

irq_handler:
    mrs x10, icc_iar1_el1
    cmp x10, #33
    b.ne 3f
    mov w11, #2
    str w11, [x4, #0x184]       // ICENABLER1: SPI 33 off
    add x21, x21, #1
    msr icc_eoir1_el1, x10
    isb
    eret
3:  cmp x10, #1023
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
