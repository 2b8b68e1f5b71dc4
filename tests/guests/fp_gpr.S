// Fills x1..x28, x30, v0..v31 and FPCR with patterns, then x0 (= x29 at start) times:
// `hvc #1` and check every one of them survived. `hvc #3` with x0 = register number
// (100 + n for vn, 200 for FPCR) on a mismatch; `hvc #2` when all rounds passed.
    .text
    .global _start
    .macro gpr_pat n
    ldr x\n, =(0xa5a5000000000000 + (\n << 32) + \n)
    .endm
    .macro gpr_chk n
    ldr x0, =(0xa5a5000000000000 + (\n << 32) + \n)
    cmp x\n, x0
    b.eq 1f
    mov x0, #\n
    b fail
1:
    .endm
    .macro v_pat n
    ldr x0, =(0x3c3c000000000000 + (\n << 16))
    fmov d\n, x0
    ldr x0, =(0xc3c3000000000000 + (\n << 8))
    mov v\n\().d[1], x0
    .endm
    .macro v_chk n
    fmov x29, d\n
    ldr x0, =(0x3c3c000000000000 + (\n << 16))
    cmp x29, x0
    b.ne 2f
    mov x29, v\n\().d[1]
    ldr x0, =(0xc3c3000000000000 + (\n << 8))
    cmp x29, x0
    b.eq 1f
2:  mov x0, #(100 + \n)
    b fail
1:
    .endm
_start:
    mov x29, x0
    // FP/SIMD on at EL1 (CPACR_EL1.FPEN): a guest enables it itself, reset leaves it off.
    mov x0, #(3 << 20)
    msr cpacr_el1, x0
    isb
    adr x0, iterations
    str x29, [x0]
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    v_pat \n
    .endr
    ldr x0, =0x03400000
    msr fpcr, x0
    .irp n, 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,30
    gpr_pat \n
    .endr
loop:
    mov x0, #0
    hvc #1
    .irp n, 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,30
    gpr_chk \n
    .endr
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    v_chk \n
    .endr
    mrs x29, fpcr
    ldr x0, =0x03400000
    cmp x29, x0
    b.eq 1f
    mov x0, #200
    b fail
1:  adr x0, iterations
    ldr x29, [x0]
    sub x29, x29, #1
    str x29, [x0]
    cbnz x29, loop
    mov x0, #0
    hvc #2
    b .
fail:
    hvc #3
    b .
    .ltorg
    .balign 8
iterations:
    .quad 0
