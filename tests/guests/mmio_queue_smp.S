// Two vCPUs storing to one queued device register at once (the host has the kernel
// queue stores to 0x10000): x0 = the vCPU's tag, x1 = N. Stores the words
// (tag << 16) | i for i = 0..N-1, then hvc #2. The host checks that it took every
// store once and each vCPU's in its own order.
    .text
    .global _start
_start:
    mov x4, #0x10000
    lsl x5, x0, #16
    mov x6, #0
1:  orr x3, x5, x6
    str w3, [x4]
    add x6, x6, #1
    cmp x6, x1
    b.ne 1b
    hvc #2
    b .
