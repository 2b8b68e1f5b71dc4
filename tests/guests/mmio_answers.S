// Device-register loads the EL2 code answers in the guest's world (the context's
// El2Answers rows, filled from VM_SET_MMIO_SHORTCUT): the host has the kernel answer
// 0x10018 with 0x8190 and 0x10028 with 0x7f, and queue stores to 0x10000. The guest
// loads 0x10018 as ldrb into x9, ldrsh into x30 (64-bit) and x18 (32-bit), ldr into
// xzr, 0x10028 as ldr into x17, and 0x10020 (not answered: an INST_EMUL exit the host
// answers with 0x55) into x16; stores w3 to 0x10000 (the core queues it and opens the
// queue), then w2 as a byte, w30 as a halfword, w18 and wzr as words (the EL2 code
// queues them behind it). Every other register holds 0x700 + its number, which the
// host checks after the final hvc #2.
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
    mov x1, #0x10000
    ldrb w9, [x1, #0x18]
    ldrsh x30, [x1, #0x18]
    ldrsh w18, [x1, #0x18]
    ldr wzr, [x1, #0x18]
    ldr w17, [x1, #0x28]
    ldr w16, [x1, #0x20]
    str w3, [x1]
    strb w2, [x1]
    strh w30, [x1]
    str w18, [x1]
    str wzr, [x1]
    mov x1, #0x701
    hvc #2
    b .
