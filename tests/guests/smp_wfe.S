// A 2-vCPU guest whose second vCPU idles in a WFE loop, as a firmware's or a test
// kernel's secondaries wait to be released: vCPU 0 starts vCPU 1 (PSCI CPU_ON over
// HVC; with one vCPU the call fails and vCPU 0 goes on alone), writes 1,000 dots and a
// newline to the PL011 (0x10000; each write an exit bhyve answers) and powers off
// (PSCI SYSTEM_OFF). Run by bhyve on the served testbed, not by the testbed's own
// tests: vCPU 1 must not spin away vCPU 0's time (the broker test
// a_vcpu_idle_in_wfe_leaves_the_other_its_cpu and `cargo xtask bench-smp`).
    .text
    .global _start
_start:
    movz    x0, #0x0003
    movk    x0, #0xc400, lsl #16    // CPU_ON (SMC64)
    mov     x1, #1                  // target MPIDR: vCPU 1
    adr     x2, secondary
    mov     x3, #0
    hvc     #0
    mov     x1, #0x10000
    mov     x4, #1000
    mov     w3, #'.'
1:  str     w3, [x1]
    subs    x4, x4, #1
    b.ne    1b
    mov     w3, #'\n'
    str     w3, [x1]
    movz    x0, #0x0008
    movk    x0, #0x8400, lsl #16    // SYSTEM_OFF
    hvc     #0
    b       .
secondary:
2:  wfe
    b       2b
