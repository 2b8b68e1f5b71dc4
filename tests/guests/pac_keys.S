// Pointer authentication shown to the guest: its own five keys across exits. The guest
// sets its ten key registers from x0 (a seed the host makes different per CPU), signs a
// pointer with each key (PACIA, PACIB, PACDA, PACDB, PACGA), then exits with hvc #1
// x1 times. After each exit it reads its key registers back and signs again: any
// difference ends the run with hvc #3, x0 = what differed (1..=10: key register,
// 11..=15: signature, 20: signing did not change the pointer). At the end, hvc #2.
    .arch armv8.3-a
    .text
    .global _start
_start:
    mov x19, x0                     // seed
    mov x20, x1                     // exits to make
    ldr x11, =0x0101010101010101    // key n = seed + n * x11
    // A 39-bit VA space (T0SZ 25, no TTBR1 walks) gives the PAC field its place; the
    // MMU stays off. EnIA, EnIB, EnDA, EnDB: the instructions sign.
    ldr x9, =(25 | (1 << 23))
    msr tcr_el1, x9
    mrs x9, sctlr_el1
    ldr x10, =((1 << 31) | (1 << 30) | (1 << 27) | (1 << 13))
    orr x9, x9, x10
    msr sctlr_el1, x9
    mov x12, x19
    msr S3_0_C2_C1_0, x12           // APIAKeyLo_EL1
    add x12, x12, x11
    msr S3_0_C2_C1_1, x12
    add x12, x12, x11
    msr S3_0_C2_C1_2, x12           // APIBKeyLo_EL1
    add x12, x12, x11
    msr S3_0_C2_C1_3, x12
    add x12, x12, x11
    msr S3_0_C2_C2_0, x12           // APDAKeyLo_EL1
    add x12, x12, x11
    msr S3_0_C2_C2_1, x12
    add x12, x12, x11
    msr S3_0_C2_C2_2, x12           // APDBKeyLo_EL1
    add x12, x12, x11
    msr S3_0_C2_C2_3, x12
    add x12, x12, x11
    msr S3_0_C2_C3_0, x12           // APGAKeyLo_EL1
    add x12, x12, x11
    msr S3_0_C2_C3_1, x12
    isb
    bl sign
    mov x21, x3
    mov x22, x4
    mov x23, x5
    mov x24, x6
    mov x25, x7
    mov x13, #20
    ldr x9, =0x80001230
    cmp x21, x9
    b.eq bad

loop:
    cbz x20, done
    hvc #1
    sub x20, x20, #1
    mov x12, x19
    mov x13, #1
    mrs x9, S3_0_C2_C1_0
    bl check_key
    mrs x9, S3_0_C2_C1_1
    bl check_key
    mrs x9, S3_0_C2_C1_2
    bl check_key
    mrs x9, S3_0_C2_C1_3
    bl check_key
    mrs x9, S3_0_C2_C2_0
    bl check_key
    mrs x9, S3_0_C2_C2_1
    bl check_key
    mrs x9, S3_0_C2_C2_2
    bl check_key
    mrs x9, S3_0_C2_C2_3
    bl check_key
    mrs x9, S3_0_C2_C3_0
    bl check_key
    mrs x9, S3_0_C2_C3_1
    bl check_key
    bl sign
    mov x13, #11
    cmp x3, x21
    b.ne bad
    mov x13, #12
    cmp x4, x22
    b.ne bad
    mov x13, #13
    cmp x5, x23
    b.ne bad
    mov x13, #14
    cmp x6, x24
    b.ne bad
    mov x13, #15
    cmp x7, x25
    b.ne bad
    b loop

done:
    hvc #2
    b .

bad:
    mov x0, x13
    hvc #3
    b .

// x9 (key register n = x13) must be x12; then x12 and x13 move to the next.
check_key:
    cmp x9, x12
    b.ne bad
    add x12, x12, x11
    add x13, x13, #1
    ret

// x3..x7 = the pointer 0x80001230 signed with APIA, APIB, APDA, APDB (modifier 0x5a),
// and PACGA of it.
sign:
    ldr x9, =0x80001230
    mov x8, #0x5a
    mov x3, x9
    pacia x3, x8
    mov x4, x9
    pacib x4, x8
    mov x5, x9
    pacda x5, x8
    mov x6, x9
    pacdb x6, x8
    pacga x7, x9, x8
    ret
    .ltorg
