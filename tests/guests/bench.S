// Exit-cost benchmark: x0 = N. Times N `hvc #1` round trips, N trapped ID register
// reads (HCR_EL2.TID3), N iterations of an empty loop (the loop's own cost), N
// physical-timer reads (CNTP_CTL_EL0, trapped when CNTHCTL_EL2.EL1PCEN is clear) and N
// physical-timer compare writes (CNTP_CVAL_EL0, the timer left disabled) with the
// virtual counter, then `hvc #2` with x1..x5 = the five tick counts. Under QEMU
// -icount shift=0 one instruction is 1 ns of virtual time, so ticks * 1e9 / CNTFRQ
// are emulated instructions.
    .text
    .global _start
_start:
    mov x20, x0
    isb
    mrs x21, cntvct_el0
    mov x19, x20
1:  hvc #1
    subs x19, x19, #1
    b.ne 1b
    isb
    mrs x22, cntvct_el0
    mov x19, x20
2:  mrs x0, id_aa64mmfr0_el1
    subs x19, x19, #1
    b.ne 2b
    isb
    mrs x23, cntvct_el0
    mov x19, x20
3:  subs x19, x19, #1
    b.ne 3b
    isb
    mrs x24, cntvct_el0
    mov x19, x20
4:  mrs x0, cntp_ctl_el0
    subs x19, x19, #1
    b.ne 4b
    isb
    mrs x25, cntvct_el0
    mov x19, x20
    mvn x6, xzr
5:  msr cntp_cval_el0, x6
    subs x19, x19, #1
    b.ne 5b
    isb
    mrs x26, cntvct_el0
    sub x1, x22, x21
    sub x2, x23, x22
    sub x3, x24, x23
    sub x4, x25, x24
    sub x5, x26, x25
    mov x0, x20
    hvc #2
    b .
