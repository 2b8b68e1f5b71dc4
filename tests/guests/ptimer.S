// The emulated EL1 physical timer (CNTP_*, trapped by CNTHCTL_EL2.EL1PCEN = 0): the
// writes go to the core, the reads are answered by the EL2 code in the guest's world.
// Arms the timer, masked, at now + 2^40 ticks and reads it back (CTL into x1, CVAL
// into x2, TVAL into x3, the count before the reads into x4), then moves CVAL to 0 (due)
// and reads CTL into x5 and TVAL into x6; hvc #2. x7 holds the CVAL it wrote first.
    .text
    .global _start
_start:
    isb
    mrs x4, cntpct_el0
    mov x7, #1
    lsl x7, x7, #40
    add x7, x7, x4
    msr cntp_cval_el0, x7
    mov x0, #3                  // ENABLE | IMASK
    msr cntp_ctl_el0, x0
    isb
    mrs x1, cntp_ctl_el0
    mrs x2, cntp_cval_el0
    mrs x3, cntp_tval_el0
    msr cntp_cval_el0, xzr
    isb
    mrs x5, cntp_ctl_el0
    mrs x6, cntp_tval_el0
    hvc #2
    b .
