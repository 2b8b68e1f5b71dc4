// Exits with `hvc #1` x0 times; each time the host must resume right after the hvc
// (x1 = address of the hvc) and answer x1 = x0 + 1000. Then `hvc #2` with the count.
    .text
    .global _start
_start:
    mov x20, x0
    mov x19, #0
1:  add x19, x19, #1
    mov x0, x19
    adr x1, 2f
2:  hvc #1
    add x2, x19, #1000
    cmp x1, x2
    b.ne 9f
    cmp x19, x20
    b.lo 1b
    mov x0, x19
    hvc #2
    b .
9:  mov x0, x19
    hvc #3
    b .
