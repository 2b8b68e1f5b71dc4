// Features the guest is not shown (docs/isolation.md): each probe runs one instruction
// of such a feature; the guest's own vector table sets the probe's bit in x20 when the
// instruction was refused (ESR_EL1.EC 0, or 0x18), records any other exception's ESR in x23,
// and skips the instruction. The read-as-zero probes OR what they read into x21.
// Probe 7 is a plain UDF: it proves the detection works. Probes 12 and 13 are MTE's
// registers (run with `-M virt,mte=on` to have them trap rather than not exist). At the end, hvc #2 with
// x0 = the UNDEF bits, x1 = the OR of the values read, x2 = an unexpected ESR (0: none).
    .text
    .global _start
_start:
    adr x9, vectors
    msr vbar_el1, x9
    // Enable FP, SVE and SME at EL1 (CPACR_EL1.FPEN, ZEN, SMEN; RES0 where the CPU
    // lacks them), as a guest that believes in them would: otherwise the guest's own
    // EL1 trap (EC 0x19, 0x1D) comes first and the probes never reach EL2's traps.
    mrs x9, cpacr_el1
    mov x10, #((3 << 16) | (3 << 20) | (3 << 24))
    orr x9, x9, x10
    msr cpacr_el1, x9
    // Pointer authentication instructions trap only where they are enabled.
    mrs x9, sctlr_el1
    orr x9, x9, #(1 << 31)          // EnIA
    msr sctlr_el1, x9
    isb
    mov x20, #0
    mov x21, #0
    mov x23, #0

    mov x22, #(1 << 0)
    .inst 0x04bf5020                // rdvl x0, #1 (SVE)
    mov x22, #(1 << 1)
    mrs x0, S3_0_C1_C2_0            // ZCR_EL1
    mov x22, #(1 << 2)
    .inst 0x04bf5820                // rdsvl x0, #1 (SME)
    mov x22, #(1 << 3)
    mrs x0, S3_0_C1_C2_6            // SMCR_EL1
    mov x22, #(1 << 4)
    .inst 0xdac10020                // pacia x0, x1
    mov x22, #(1 << 5)
    mrs x0, S3_0_C2_C1_0            // APIAKeyLo_EL1
    mov x22, #(1 << 6)
    mrs x0, S3_0_C10_C4_7           // LORID_EL1
    mov x22, #(1 << 7)
    udf #0
    mov x22, #(1 << 12)
    mrs x0, S3_1_C0_C0_4            // GMID_EL1 (MTE2; HCR_EL2.TID5)
    mov x22, #(1 << 13)
    mrs x0, S3_0_C1_C0_6            // GCR_EL1 (MTE; HCR_EL2.ATA clear)

    // Read as zero (or UNDEFINED where the CPU has no RAS at all).
    mov x0, #0
    mov x22, #(1 << 8)
    mrs x0, S3_0_C5_C3_0            // ERRIDR_EL1
    orr x21, x21, x0
    mov x0, #1
    mov x22, #(1 << 9)
    msr S3_0_C5_C3_1, x0            // ERRSELR_EL1 = 1: ignored
    mov x0, #0
    mov x22, #(1 << 11)
    mrs x0, S3_0_C5_C3_1
    orr x21, x21, x0
    mov x0, #0
    mov x22, #(1 << 10)
    mrs x0, actlr_el1
    orr x21, x21, x0

    mov x0, x20
    mov x1, x21
    mov x2, x23
    hvc #2
    b .

    .balign 2048
vectors:
    .skip 0x200
    // Current EL with SP_ELx, synchronous.
    mrs x24, esr_el1
    lsr x25, x24, #26
    cbz x25, 0f
    // EC 0x18 taken at this EL1: the CPU refused a system register it has only in
    // part (QEMU's `max` without tag memory for MTE's registers). Refused, not read.
    cmp x25, #0x18
    b.ne 1f
0:  orr x20, x20, x22
    b 2f
1:  mov x23, x24
2:  mrs x24, elr_el1
    add x24, x24, #4
    msr elr_el1, x24
    eret
