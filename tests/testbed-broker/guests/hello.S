// A guest for the end-to-end test of the served testbed: loaded raw by bhyveload
// (-l 0x80000000), it writes a line to the PL011 (guest platform: 0x10000, a write to
// UARTDR is one character) and powers off through PSCI SYSTEM_OFF over HVC, so bhyve
// exits with status 1.
    .text
    .global _start
_start:
    mov     x1, #0x10000
    adr     x2, msg
1:  ldrb    w3, [x2], #1
    cbz     w3, 2f
    str     w3, [x1]
    b       1b
2:  movz    x0, #0x0008
    movk    x0, #0x8400, lsl #16
    hvc     #0
    b       .
msg:
    .asciz  "hello from a guest on the served testbed\n"
