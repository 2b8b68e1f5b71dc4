// Reads IPAs outside its RAM: the host's own RAM address, just past the guest's RAM,
// and the top of the IPA space. Each must exit (stage-2 fault) for the host to answer,
// never show host memory. Then reads its own marker at RAM offset 0x800 and stops.
    .text
    .global _start
_start:
    ldr x2, =0x40000000
    ldr x3, [x2]
    ldr x2, =0x80000000 + 0x10000
    ldr x4, [x2]
    ldr x2, =0x7ffffff000
    ldr x5, [x2]
    ldr x2, =0x80000800
    ldr x6, [x2]
    hvc #2
    b .
    .ltorg
