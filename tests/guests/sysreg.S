// Trapped system registers: two ID register reads (HCR_EL2.TID3) the host answers,
// and an OS lock write (MDCR_EL2.TDOSA) whose value the host checks.
    .text
    .global _start
_start:
    mrs x5, id_aa64pfr0_el1
    mrs x7, id_aa64mmfr0_el1
    mov x6, #0x5a
    msr oslar_el1, x6
    mov x0, x5
    mov x1, x7
    hvc #2
    b .
