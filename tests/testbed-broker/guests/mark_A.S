// Writes "A" and a newline to the PL011 with the character in the instruction
// stream (an immediate), then PSCI SYSTEM_OFF. mark_A and mark_B differ only in
// code, so a stale translation of the other one would print the wrong letter: the
// served-testbed test loads one after the other into the same (reinitialised) VM.
    .text
    .global _start
_start:
    mov     x1, #0x10000
    mov     w3, #'A'
    str     w3, [x1]
    mov     w3, #10
    str     w3, [x1]
    movz    x0, #0x0008
    movk    x0, #0x8400, lsl #16
    hvc     #0
    b       .
