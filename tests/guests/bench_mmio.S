// Costs of the device registers the kernel handles (tests/testbed/src/cases/bench.rs,
// `cargo xtask bench-el2`): x0 = N. The host has the kernel answer loads of 0x10018 (a
// PL011's flag register) and queue stores to 0x10000 (its data register). Times with
// the virtual counter: N loads of the answered register, N stores to the queued one
// (every MMIO_STORES_MAX of them the queue is full: a BOGUS exit to the host, which
// takes them) and N iterations of an empty loop. Then `hvc #2` with x1/x2/x3 = the three
// tick counts and x4 = the last value loaded.
    .text
    .global _start
_start:
    mov x20, x0
    mov x4, #0x10000

    isb
    mrs x22, cntvct_el0
    mov x19, x20
1:  ldr w3, [x4, #0x18]
    subs x19, x19, #1
    b.ne 1b
    isb
    mrs x23, cntvct_el0
    mov x24, x3

    mov w3, #'.'
    mov x19, x20
2:  str w3, [x4]
    subs x19, x19, #1
    b.ne 2b
    isb
    mrs x25, cntvct_el0

    mov x19, x20
3:  subs x19, x19, #1
    b.ne 3b
    isb
    mrs x26, cntvct_el0

    sub x1, x23, x22
    sub x2, x25, x23
    sub x3, x26, x25
    mov x4, x24
    hvc #2
    b .
