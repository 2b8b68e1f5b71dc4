// MTE's tag instructions in a guest that is not shown MTE, on a host that has it with
// tag storage (`-M virt,mte=on -cpu max`). The guest does what a guest that believed in
// MTE would: MMU on with its RAM mapped Normal Tagged (MAIR 0xf0), top-byte-ignore on,
// SCTLR_EL1.ATA set (tag access at EL1), no tag-check faults. Then it stores
// allocation tag 5 to a granule (STG), loads the granule's tag back (LDG) and asks IRG
// for a random tag with tag 0 excluded. With HCR_EL2.ATA clear none of this reaches tag
// storage: LDG reads tag 0 and IRG gives tag 0; with tag access it would read 5 and a
// tag other than 0. The guest's vector table records an unexpected exception's ESR.
// At the end, hvc #2 with x0 = the tag LDG read, x1 = IRG's tag, x2 = an unexpected
// ESR (0: none).
    .arch armv8.5-a+memtag
    .text
    .global _start
_start:
    adr x9, vectors
    msr vbar_el1, x9
    mov x23, #0
    mov x9, #0xf0                   // attr 0: Normal, Tagged, write-back
    msr mair_el1, x9
    ldr x9, =((25 << 0) | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23) | (2 << 32) | (1 << 37))
    msr tcr_el1, x9                 // T0SZ 25, WB, inner shareable, 4K, EPD1, IPS 40, TBI0
    adr x9, l1_table
    msr ttbr0_el1, x9
    isb
    mrs x9, sctlr_el1
    mov x10, #((1 << 0) | (1 << 2) | (1 << 12)) // M, C, I
    orr x9, x9, x10
    orr x9, x9, #(1 << 43)          // ATA: EL1 tag access, as far as EL1 decides
    bic x9, x9, #(3 << 40)          // TCF 0: no tag-check faults
    msr sctlr_el1, x9
    isb

    adr x0, granule
    mov x1, #5
    bfi x0, x1, #56, #4             // pointer tag 5
    stg x0, [x0]                    // allocation tag 5
    mov x2, x0
    mov x1, #0xf
    bfi x2, x1, #56, #4             // pointer tag 15: LDG replaces it with the granule's
    ldg x2, [x2]
    ubfx x3, x2, #56, #4
    mov x5, #1                      // exclude tag 0
    irg x4, x0, x5
    ubfx x4, x4, #56, #4

    mov x0, x3
    mov x1, x4
    mov x2, x23
    hvc #2
    b .

    .balign 2048
vectors:
    .skip 0x200
    // Current EL with SP_ELx, synchronous: record it and skip the instruction.
    mrs x23, esr_el1
    mrs x24, elr_el1
    add x24, x24, #4
    msr elr_el1, x24
    eret

    .ltorg
    .balign 4096
// One level-1 table (T0SZ 25: 39-bit VA, 1 GiB blocks): entry 2 maps the guest's RAM
// at 0x8000_0000 identity, attr 0, inner shareable, accessed.
l1_table:
    .quad 0
    .quad 0
    .quad 0x80000000 | (1 << 10) | (3 << 8) | 1
    .fill 509, 8, 0
    .balign 16
granule:
    .quad 0, 0
