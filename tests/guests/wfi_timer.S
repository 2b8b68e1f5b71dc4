// Arms its virtual timer 2 ms ahead (interrupts masked), executes WFI, and stops with
// `hvc #2`, x0 = counter ticks spent in the WFI. A kernel that handles WFI must sleep
// until the timer condition holds, then resume after the WFI.
    .text
    .global _start
_start:
    mrs x1, cntfrq_el0
    mov x2, #500
    udiv x1, x1, x2
    isb
    mrs x3, cntvct_el0
    add x4, x3, x1
    msr cntv_cval_el0, x4
    mov x5, #1
    msr cntv_ctl_el0, x5
    isb
    wfi
    isb
    mrs x6, cntvct_el0
    sub x0, x6, x3
    mov x1, x1
    hvc #2
    b .
