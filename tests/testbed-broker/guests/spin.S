// A guest that never powers off: one line on the PL011 (0x10000), then a tight loop
// with no exits. The served-testbed test destroys it from another process while it
// runs.
    .text
    .global _start
_start:
    mov     x1, #0x10000
    adr     x2, msg
1:  ldrb    w3, [x2], #1
    cbz     w3, 2f
    str     w3, [x1]
    b       1b
2:  b       2b
msg:
    .asciz  "spinning\n"
