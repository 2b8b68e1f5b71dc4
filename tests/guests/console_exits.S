// The PL011 console as Linux drives it, one byte at a time: read the flag register
// (UARTFR) until the transmit FIFO is not full, write the byte (UARTDR). 1,000 bytes,
// each two exits bhyve answers (a load: VM_SET_REGISTER then VM_RUN; a store:
// VM_GET_REGISTER then VM_RUN), then PSCI SYSTEM_OFF. Run by bhyve on the served
// testbed under `-icount shift=0` (`cargo xtask bench-exit`): what the testbed side of
// a userspace exit costs. Its accesses are 8 bytes wide, which the kernel never answers
// or queues (bhyve has it answer the PL011's 4-byte FR reads and queue its DR writes):
// each is an exit to bhyve, as every console byte was before.
    .text
    .global _start
_start:
    mov     x1, #0x10000            // the PL011
    mov     x4, #1000
    mov     x3, #'.'
1:  ldr     x5, [x1, #0x18]         // UARTFR
    tbnz    w5, #5, 1b              // TXFF
    str     x3, [x1]                // UARTDR
    subs    x4, x4, #1
    b.ne    1b
2:  ldr     x5, [x1, #0x18]
    tbnz    w5, #5, 2b
    mov     x3, #'\n'
    str     x3, [x1]
    movz    x0, #0x0008
    movk    x0, #0x8400, lsl #16    // SYSTEM_OFF
    hvc     #0
    b       .
