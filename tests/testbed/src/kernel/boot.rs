//! Boot, in assembly because it runs before the MMU is on (physical addresses) and at
//! EL2. On a CPU without VHE (cortex-a57): leave FreeBSD's hyp-stub contract
//! (DESIGN.md "The EL2 contract"), record what the EL2 registers read back, drop to
//! EL1. On a CPU with VHE (`-cpu max`): stay at EL2 with HCR_EL2.E2H and TGE set, as
//! FreeBSD 15 does on such CPUs; the EL1 register names then reach the EL2 registers,
//! so the rest is the same code. Then turn the MMU on with the kernel at high
//! addresses (TTBR1) and jump there. CPU 0 enters at `_start` (QEMU's -kernel entry);
//! the others at `secondary_entry` through PSCI CPU_ON with x0 = their index.
//!
//! Also here: the hyp stub vectors that stay at EL2 (the only service: `hvc #0` with
//! x0 = new VBAR_EL2), and a probe vector table the tests install through that stub to
//! read the EL2 registers back after the hypervisor is unloaded.

use crate::kernel::mm::{KBASE, MAX_CPUS};
use core::arch::global_asm;
use vmm_sys::arm64::regs::{cnthctl, cptr, hcr, mdcr, pstate, sctlr_el2};

/// Early (and later idle) stack per CPU.
pub const BOOT_STACK_SIZE: usize = 64 * 1024;

/// The EL2 register values the contract leaves, in the order `el2_readback` stores them.
pub const READBACK_NAMES: [&str; 16] = [
    "SCTLR_EL2",
    "HCR_EL2",
    "VBAR_EL2",
    "CNTHCTL_EL2",
    "CPTR_EL2",
    "MDCR_EL2",
    "VPIDR_EL2",
    "VMPIDR_EL2",
    "HSTR_EL2",
    "CNTVOFF_EL2",
    "ICC_SRE_EL2",
    "VTTBR_EL2",
    "HCRX_EL2",
    "MIDR_EL1",
    "MPIDR_EL1",
    "SPSR_EL2",
];
pub const RB_VPIDR: usize = 6;
pub const RB_VMPIDR: usize = 7;
pub const RB_MIDR: usize = 13;
pub const RB_MPIDR: usize = 14;
pub const RB_SPSR: usize = 15;

/// What the boot code writes (FreeBSD's locore, non-VHE).
pub const STUB_SCTLR_EL2: u64 = sctlr_el2::RES1 | sctlr_el2::EIS | sctlr_el2::EOS;
pub const STUB_HCR_EL2: u64 = hcr::RW | hcr::APK | hcr::API;
pub const STUB_CPTR_EL2: u64 = cptr::RES1;
pub const STUB_CNTHCTL_EL2: u64 = cnthctl::EL1PCTEN | cnthctl::EL1PCEN;
pub const STUB_MDCR_EL2: u64 = mdcr::E2PB_EL1_NO_TRAP;
pub const STUB_SPSR_EL2: u64 = pstate::M_EL1H | pstate::DAIF;
/// HCR_EL2 of a VHE host: the kernel at EL2 in the EL2&0 regime (E2H), its user space
/// at EL0 under it (TGE); pointer authentication not trapped (API, APK).
pub const VHE_HCR_EL2: u64 = hcr::E2H | hcr::TGE | hcr::RW | hcr::APK | hcr::API;
/// ICC_SRE_EL2.SRE | ICC_SRE_EL2.Enable.
pub const ICC_SRE_EL2_SRE_EN: u64 = 1 | 8;

/// Boot page tables: one level-1 table per TTBR, 1 GiB blocks.
#[repr(C, align(4096))]
pub struct Table(pub [u64; 512]);

#[no_mangle]
pub static mut BOOT_TTBR0_L1: Table = Table([0; 512]);
#[no_mangle]
pub static mut BOOT_TTBR1_L1: Table = Table([0; 512]);
#[repr(C, align(16))]
pub struct Stacks(pub [u8; BOOT_STACK_SIZE * MAX_CPUS]);
#[no_mangle]
pub static mut BOOT_STACKS: Stacks = Stacks([0; BOOT_STACK_SIZE * MAX_CPUS]);
/// Written by each CPU at EL2 with the MMU off, read at EL1 afterwards (nothing cached
/// these lines before: they are zeroed with the MMU off too).
#[no_mangle]
pub static mut CONTRACT_READBACK: [[u64; 16]; MAX_CPUS] = [[0; 16]; MAX_CPUS];

/// MAIR: attr0 Device-nGnRnE, attr1 Normal write-back, attr2 Normal non-cacheable.
pub const MAIR: u64 = (0xff << 8) | (0x44 << 16);
/// TCR_EL1: 39-bit VA both halves (start at level 1), 4 KiB granules, WBWA inner
/// shareable walks, 40-bit IPS.
pub const TCR_EL1: u64 = 25
    | (1 << 8)
    | (1 << 10)
    | (3 << 12)
    | (25 << 16)
    | (1 << 24)
    | (1 << 26)
    | (3 << 28)
    | (2 << 30)
    | (2 << 32);
/// TCR_EL1.EPD0: no TTBR0 walks once the kernel runs high (no identity map left, as
/// in FreeBSD, whose TTBR0 holds user space only).
pub const TCR_EPD0: u64 = 1 << 7;
/// SCTLR_EL1: RES1 bits, M, C, I.
pub const SCTLR_EL1: u64 = 0x30d0_0800 | 1 | (1 << 2) | (1 << 12);
/// 1 GiB block descriptors: AF, attr index (0 for device), valid block; device memory
/// is never executable (PXN, UXN).
pub const BLOCK_DEVICE: u64 = (1 << 10) | 1 | (1 << 53) | (1 << 54);
pub const BLOCK_NORMAL: u64 = (1 << 10) | (3 << 8) | (1 << 2) | 1;
pub const RAM_BASE: u64 = 0x4000_0000;

macro_rules! readback_asm {
    () => {
        r#"
    mrs x0, sctlr_el2
    str x0, [x1, #0]
    mrs x0, hcr_el2
    str x0, [x1, #8]
    mrs x0, vbar_el2
    str x0, [x1, #16]
    mrs x0, cnthctl_el2
    str x0, [x1, #24]
    mrs x0, cptr_el2
    str x0, [x1, #32]
    mrs x0, mdcr_el2
    str x0, [x1, #40]
    mrs x0, vpidr_el2
    str x0, [x1, #48]
    mrs x0, vmpidr_el2
    str x0, [x1, #56]
    mrs x0, hstr_el2
    str x0, [x1, #64]
    mrs x0, cntvoff_el2
    str x0, [x1, #72]
    mrs x0, icc_sre_el2
    str x0, [x1, #80]
    mrs x0, vttbr_el2
    str x0, [x1, #88]
    mov x0, #0
    mrs x2, id_aa64mmfr1_el1
    ubfx x2, x2, #40, #4
    cbz x2, 7f
    mrs x0, S3_4_C1_C2_2
7:  str x0, [x1, #96]
    mrs x0, midr_el1
    str x0, [x1, #104]
    mrs x0, mpidr_el1
    str x0, [x1, #112]
"#
    };
}

global_asm!(
    r#"
    .section .text.boot, "ax"
    .global _start
_start:
    /* CPU 0. Zero .bss through physical addresses. */
    ldr x1, =__bss_start
    ldr x2, =__bss_end
    ldr x3, ={KBASE}
    sub x1, x1, x3
    sub x2, x2, x3
1:  cmp x1, x2
    b.hs 2f
    str xzr, [x1], #8
    b 1b
2:  mov x19, #0
    b boot_common

    .global secondary_entry
secondary_entry:
    mov x19, x0

boot_common:
    mrs x0, CurrentEL
    cmp x0, #8
    b.ne boot_hang
    mrs x0, id_aa64mmfr1_el1
    ubfx x0, x0, #8, #4
    cbz x0, 6f
    bl el2_enter_vhe
    b 7f
6:  bl el2_leave_contract
    /* EL1h (SP_EL1) or, on a VHE host, EL2h (SP_EL2); DAIF masked, MMU off: the
     * stack, at its physical address. */
7:
    adrp x1, BOOT_STACKS
    add x1, x1, :lo12:BOOT_STACKS
    mov x2, #{STACK}
    add x3, x19, #1
    madd x1, x3, x2, x1
    mov sp, x1
    cbnz x19, 3f
    bl build_boot_tables
3:  bl enable_mmu
    ldr x0, =boot_high
    br x0
boot_high:
    ldr x3, ={KBASE}
    add sp, sp, x3
    ldr x0, =el1_vectors
    msr vbar_el1, x0
    mrs x0, tcr_el1
    orr x0, x0, #{EPD0}
    msr tcr_el1, x0
    isb
    tlbi vmalle1
    dsb nsh
    isb
    msr tpidr_el1, x19
    mov x0, x19
    bl kernel_entry
boot_hang:
    wfe
    b boot_hang

/* At EL2, MMU off: FreeBSD's locore (enter_kernel_el, no VHE), then eret to x30 at EL1. */
el2_leave_contract:
    ldr x0, ={SCTLR_STUB}
    msr sctlr_el2, x0
    isb
    ldr x0, ={HCR_STUB}
    msr hcr_el2, x0
    mrs x0, midr_el1
    msr vpidr_el2, x0
    mrs x0, mpidr_el1
    msr vmpidr_el2, x0
    ldr x0, ={CPTR_STUB}
    msr cptr_el2, x0
    adrp x0, hyp_stub_vectors
    add x0, x0, :lo12:hyp_stub_vectors
    msr vbar_el2, x0
    mov x0, #{CNTHCTL_STUB}
    msr cnthctl_el2, x0
    ldr x0, ={MDCR_STUB}
    msr mdcr_el2, x0
    msr hstr_el2, xzr
    mrs x0, id_aa64mmfr1_el1
    ubfx x0, x0, #40, #4
    cbz x0, 4f
    msr S3_4_C1_C2_2, xzr
4:  msr cntvoff_el2, xzr
    msr vttbr_el2, xzr
    mrs x0, id_aa64pfr0_el1
    ubfx x0, x0, #24, #4
    cbz x0, 5f
    mrs x0, icc_sre_el2
    mov x2, #{SRE_EN}
    orr x0, x0, x2
    msr icc_sre_el2, x0
    isb
5:  adrp x1, CONTRACT_READBACK
    add x1, x1, :lo12:CONTRACT_READBACK
    mov x2, #128
    madd x1, x19, x2, x1
"#,
    readback_asm!(),
    r#"
    mov x0, #{SPSR_STUB}
    msr spsr_el2, x0
    str x0, [x1, #120]
    msr elr_el2, x30
    eret

/* At EL2, MMU off, on a CPU with VHE: E2H and TGE on, staying at EL2 (FreeBSD 15's
 * locore on such CPUs). From here the *_EL1 register names reach SCTLR/TCR/TTBRx/
 * MAIR/VBAR/CPTR/ESR/ELR/SPSR_EL2, so the MMU code below serves both modes. */
el2_enter_vhe:
    ldr x0, ={SCTLR_STUB}
    msr sctlr_el2, x0
    isb
    ldr x0, ={HCR_VHE}
    msr hcr_el2, x0
    isb
    mrs x0, midr_el1
    msr vpidr_el2, x0
    mrs x0, mpidr_el1
    msr vmpidr_el2, x0
    msr mdcr_el2, xzr
    msr hstr_el2, xzr
    msr cnthctl_el2, xzr
    msr cntvoff_el2, xzr
    msr vttbr_el2, xzr
    mrs x0, id_aa64pfr0_el1
    ubfx x0, x0, #24, #4
    cbz x0, 8f
    mrs x0, icc_sre_el2
    mov x2, #{SRE_EN}
    orr x0, x0, x2
    msr icc_sre_el2, x0
    isb
8:  adrp x1, CONTRACT_READBACK
    add x1, x1, :lo12:CONTRACT_READBACK
    mov x2, #128
    madd x1, x19, x2, x1
"#,
    readback_asm!(),
    r#"
    mrs x0, spsr_el2
    str x0, [x1, #120]
    ret

/* EL1, MMU off: 1 GiB blocks. TTBR1: PA 0..1G device, 1G..2G RAM, so VA = KBASE + PA.
 * TTBR0: RAM identity, only for the jump to high addresses. */
build_boot_tables:
    adrp x0, BOOT_TTBR1_L1
    ldr x1, ={BLOCK_DEVICE}
    str x1, [x0, #0]
    ldr x1, ={RAM_BLOCK}
    str x1, [x0, #8]
    adrp x0, BOOT_TTBR0_L1
    str x1, [x0, #8]
    dsb sy
    ret

enable_mmu:
    ldr x0, ={MAIR}
    msr mair_el1, x0
    ldr x0, ={TCR}
    msr tcr_el1, x0
    adrp x0, BOOT_TTBR0_L1
    msr ttbr0_el1, x0
    adrp x0, BOOT_TTBR1_L1
    msr ttbr1_el1, x0
    /* FP/SIMD usable at EL1 (CPACR_EL1.FPEN): the kernel itself is soft-float, the
     * tests use it on purpose to check the world switch keeps the host's registers. */
    mov x0, #(3 << 20)
    msr cpacr_el1, x0
    isb
    tlbi vmalle1
    dsb nsh
    isb
    ldr x0, ={SCTLR_EL1}
    msr sctlr_el1, x0
    isb
    ret
    .ltorg

/* FreeBSD's hyp stub: every vector spins except a synchronous exception from EL1,
 * which is `hvc #0` with x0 = the new VBAR_EL2. */
    .balign 2048
    .global hyp_stub_vectors
hyp_stub_vectors:
    .rept 8
    .balign 0x80
    b .
    .endr
    .balign 0x80
    msr vbar_el2, x0
    eret
    .rept 7
    .balign 0x80
    b .
    .endr

/* Probe vectors, installed through the stub by the tests: `hvc #0` with x0 = buffer
 * (PA), x1 = the stub vectors. Stores the EL2 registers like the boot readback, puts
 * VBAR_EL2 back to x1, returns x0 = 0. Runs with the EL2 MMU off (or it faults). */
    .balign 2048
    .global el2_probe_vectors
el2_probe_vectors:
    .rept 8
    .balign 0x80
    b .
    .endr
    .balign 0x80
    b el2_probe
    .rept 7
    .balign 0x80
    b .
    .endr
el2_probe:
    mov x3, x1
    mov x1, x0
"#,
    readback_asm!(),
    r#"
    str x3, [x1, #16]
    mrs x0, spsr_el2
    str x0, [x1, #120]
    msr vbar_el2, x3
    isb
    mov x0, #0
    eret
"#,
    KBASE = const KBASE,
    STACK = const BOOT_STACK_SIZE,
    EPD0 = const TCR_EPD0,
    SCTLR_STUB = const STUB_SCTLR_EL2,
    HCR_STUB = const STUB_HCR_EL2,
    CPTR_STUB = const STUB_CPTR_EL2,
    CNTHCTL_STUB = const STUB_CNTHCTL_EL2,
    MDCR_STUB = const STUB_MDCR_EL2,
    SRE_EN = const ICC_SRE_EL2_SRE_EN,
    SPSR_STUB = const STUB_SPSR_EL2,
    HCR_VHE = const VHE_HCR_EL2,
    BLOCK_DEVICE = const BLOCK_DEVICE,
    RAM_BLOCK = const RAM_BASE | BLOCK_NORMAL,
    MAIR = const MAIR,
    TCR = const TCR_EL1,
    SCTLR_EL1 = const SCTLR_EL1,
);

extern "C" {
    pub static hyp_stub_vectors: u8;
    pub static el2_probe_vectors: u8;
    pub static secondary_entry: u8;
}
