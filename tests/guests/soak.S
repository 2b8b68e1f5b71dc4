// The soak's guest (cargo xtask soak): forever, writes a counter into its RAM and
// asks for the SMCCC version (hvc #0 with x0 = 0x80000000, which bhyve answers), so
// every iteration exits to userspace. It never stops by itself: the soak kills or
// destroys it.
    .text
    .global _start
_start:
    adr x19, counter
    mov x20, #0
1:  add x20, x20, #1
    str x20, [x19]
    mov x0, #0x80000000
    hvc #0
    b 1b
    .balign 8
counter:
    .quad 0
