// System-register traps the EL2 code answers in the guest's world, without a world
// switch (the context's El2Answers): TID3 ID register reads into x9, XZR, x30 and
// x18, OSLSR_EL1 into x17, a debug register and OSLAR_EL1 written. Every other
// register holds 0x700 + its number, which the host checks after the final hvc #2.
    .text
    .global _start
_start:
    mov x0, #0x700
    mov x1, #0x701
    mov x2, #0x702
    mov x3, #0x703
    mov x4, #0x704
    mov x5, #0x705
    mov x6, #0x706
    mov x7, #0x707
    mov x8, #0x708
    mov x9, #0x709
    mov x10, #0x70a
    mov x11, #0x70b
    mov x12, #0x70c
    mov x13, #0x70d
    mov x14, #0x70e
    mov x15, #0x70f
    mov x16, #0x710
    mov x17, #0x711
    mov x18, #0x712
    mov x19, #0x713
    mov x20, #0x714
    mov x21, #0x715
    mov x22, #0x716
    mov x23, #0x717
    mov x24, #0x718
    mov x25, #0x719
    mov x26, #0x71a
    mov x27, #0x71b
    mov x28, #0x71c
    mov x29, #0x71d
    mov x30, #0x71e
    mrs x9, id_aa64isar0_el1
    mrs xzr, id_aa64pfr0_el1
    mrs x30, id_aa64mmfr0_el1
    mrs x17, oslsr_el1
    msr dbgbvr0_el1, x3
    msr oslar_el1, x4
    mrs x18, id_aa64pfr0_el1
    hvc #2
    b .
