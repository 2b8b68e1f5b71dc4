//! The tests the testbed runs on itself, in order; each prints one
//! `TEST <name> PASS|FAIL <detail>` line that the host harness (tests/testbed-harness) parses.

extern crate alloc;
use crate::cases::test_vm::TestVm;
use crate::kernel::boot::{self, CONTRACT_READBACK, READBACK_NAMES};
use crate::kernel::mm::{self, KBASE, MAX_CPUS};
use crate::{kernel::cpu, kernel::gic, kernel::hyp, kernel::timer, kprintln};
use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicUsize, Ordering};
use vmm_sys::arm64::esr::{dabt, ec, esr_ec, esr_iss};
use vmm_sys::arm64::sysreg::{SysReg, ID_AA64MMFR0_EL1, ID_AA64PFR0_EL1, OSLAR_EL1};
use vmm_sys::hyp::{excp, HYP_READ_REGISTER, HYP_REG_CNTHCTL, HYP_REG_ICH_VTR, HYP_RET_UNKNOWN};

static PASSED: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicUsize = AtomicUsize::new(0);

macro_rules! guest {
    ($name:literal) => {
        include_bytes!(concat!(env!("VMM_GUEST_DIR"), "/", $name, ".bin"))
    };
}

static HVC_LOOP: &[u8] = guest!("hvc_loop");
static FP_GPR: &[u8] = guest!("fp_gpr");
static MMIO: &[u8] = guest!("mmio");
static SYSREG: &[u8] = guest!("sysreg");
static EL2_ANSWERS: &[u8] = guest!("el2_answers");
static PTIMER: &[u8] = guest!("ptimer");
static MMIO_ANSWERS: &[u8] = guest!("mmio_answers");
static MMIO_QUEUE_SMP: &[u8] = guest!("mmio_queue_smp");
static HIDDEN: &[u8] = guest!("hidden");
static MTE_TAGS: &[u8] = guest!("mte_tags");
static PAC_KEYS: &[u8] = guest!("pac_keys");
static WFI: &[u8] = guest!("wfi");
static ISOLATION: &[u8] = guest!("isolation");
static WFI_TIMER: &[u8] = guest!("wfi_timer");
static VGIC_TIMER: &[u8] = guest!("vgic_timer");
static VGIC_SPI_SPIN: &[u8] = guest!("vgic_spi_spin");

const GUEST_PAGES: usize = 16;

fn report(name: &str, result: Result<String, String>) {
    match result {
        Ok(d) => {
            PASSED.fetch_add(1, Ordering::Relaxed);
            kprintln!("TEST {name} PASS {d}");
        }
        Err(d) => {
            FAILED.fetch_add(1, Ordering::Relaxed);
            kprintln!("TEST {name} FAIL {d}");
        }
    }
}

fn ncpus() -> usize {
    cpu::ONLINE
        .iter()
        .filter(|c| c.load(Ordering::Acquire))
        .count()
}

pub fn run_all(gic_ok: bool) {
    for c in 0..MAX_CPUS {
        if c > 0 {
            let r = cpu::start_secondary(c);
            // The tests need CPUs 0 and 1; QEMU may have fewer than the kernel can use.
            if c > 1 && r == Err(crate::kernel::psci::INVALID_PARAMETERS) {
                break;
            }
            report(
                &format!("cpu{c}_up"),
                r.map(|_| "PSCI CPU_ON over SMC".into())
                    .map_err(|e| format!("PSCI error {e}")),
            );
        }
    }
    // A VHE host (`-cpu max`) runs its kernel at EL2 with E2H and TGE: there is no
    // stub contract to check and no stub to run the EL2 blob through; vmm-core runs
    // there with the VHE world switch.
    let vhe = cpu::vhe_host();
    for c in 0..ncpus() {
        if vhe {
            report(&format!("vhe_host_cpu{c}"), check_vhe_host(c));
        } else {
            report(&format!("el2_contract_cpu{c}"), check_contract(c));
        }
    }
    report(
        if vhe { "el2_high_va" } else { "el1_high_va" },
        check_high_va(),
    );
    report(
        "gic_init",
        if gic_ok {
            Ok("distributor, redistributor, ICC".into())
        } else {
            Err("no redistributor for cpu 0".into())
        },
    );
    report("timer_irq", check_timer());
    report("ipi", check_ipi());
    report("page_allocator", check_alloc());

    let n = ncpus();
    if !vhe {
        run_blob(n);
    }
    run_core(n);

    kprintln!(
        "TESTBED DONE passed={} failed={}",
        PASSED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed)
    );
}

/// The EL2 blob on its own, brought up through the stub (nVHE hosts).
fn run_blob(n: usize) {
    let before_hyp = mm::free_pages();
    report("hyp_load", load_hyp(n));
    report("hyp_read_register", check_read_register(n));
    report("guest_hvc_loop", run_hvc_loop(2000));
    report("guest_fp_gpr_two_cpus", run_fp_two_cpus(n, 1500));
    report("guest_fp_trap_for_host", run_fp_trap_for_host());
    report("guest_mmio", run_mmio());
    report("guest_sysreg", run_sysreg());
    report("guest_wfi", run_wfi());
    report("guest_isolation", run_isolation());
    report("guest_irq_exit", run_irq_exit());
    report("host_sleep_short_deadlines", host_sleep_short_deadlines());
    report("hyp_unload", unload_and_probe(n));
    report("hyp_reload", reload(n, before_hyp));
}

/// What the boot code recorded on `cpu` of a VHE host: HCR_EL2 with E2H and TGE,
/// stage 2 off, and it stayed at EL2 (SPSR_EL2 is not a return to EL1).
fn check_vhe_host(cpu: usize) -> Result<String, String> {
    use vmm_sys::arm64::regs::hcr;
    let rb = contract_of(cpu);
    let hcr_el2 = rb[1];
    let want = hcr::E2H | hcr::TGE;
    if hcr_el2 & want != want {
        return Err(format!("HCR_EL2 {hcr_el2:#x}: E2H and TGE not both set"));
    }
    if rb[11] != 0 {
        return Err(format!("VTTBR_EL2 {:#x} at boot", rb[11]));
    }
    Ok(format!("HCR_EL2 {hcr_el2:#x}: E2H, TGE; kernel at EL2"))
}

/// The boot readback against the contract FreeBSD's locore leaves.
fn expected_contract(rb: &[u64; 16]) -> [u64; 16] {
    [
        boot::STUB_SCTLR_EL2,
        boot::STUB_HCR_EL2,
        hyp::stub_vectors_pa(),
        boot::STUB_CNTHCTL_EL2,
        boot::STUB_CPTR_EL2,
        boot::STUB_MDCR_EL2,
        rb[boot::RB_MIDR],
        rb[boot::RB_MPIDR],
        0,
        0,
        rb[10] | boot::ICC_SRE_EL2_SRE_EN,
        0,
        0,
        rb[boot::RB_MIDR],
        rb[boot::RB_MPIDR],
        boot::STUB_SPSR_EL2,
    ]
}

/// Bits of the contract value the CPU may not implement (Armv8.0 cortex-a57: no
/// pointer authentication, no SPE), which read back as zero.
fn unimplemented_mask(i: usize) -> u64 {
    match i {
        1 => vmm_sys::arm64::regs::hcr::APK | vmm_sys::arm64::regs::hcr::API,
        5 => vmm_sys::arm64::regs::mdcr::E2PB_EL1_NO_TRAP,
        _ => 0,
    }
}

fn contract_of(cpu: usize) -> [u64; 16] {
    // SAFETY: written once per CPU by the boot code before that CPU went online.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(CONTRACT_READBACK[cpu])) }
}

fn check_contract(cpu: usize) -> Result<String, String> {
    let rb = contract_of(cpu);
    let exp = expected_contract(&rb);
    let mut line = String::new();
    let mut bad = String::new();
    for i in 0..16 {
        line.push_str(&format!("{}={:#x} ", READBACK_NAMES[i], rb[i]));
        let m = !unimplemented_mask(i);
        if rb[i] & m != exp[i] & m {
            bad.push_str(&format!(
                "{} is {:#x}, want {:#x}; ",
                READBACK_NAMES[i], rb[i], exp[i]
            ));
        }
    }
    if rb[boot::RB_VPIDR] != rb[boot::RB_MIDR] || rb[boot::RB_VMPIDR] != rb[boot::RB_MPIDR] {
        bad.push_str("VPIDR/VMPIDR do not mirror MIDR/MPIDR; ");
    }
    kprintln!("EL2 cpu{cpu} {line}");
    if bad.is_empty() {
        Ok(format!("{} registers as FreeBSD's locore leaves them", 16))
    } else {
        Err(bad)
    }
}

fn check_high_va() -> Result<String, String> {
    let pc: u64;
    let sp: u64;
    let tcr: u64;
    let par: u64;
    let el: u64;
    let vhe = cpu::vhe_host();
    // SAFETY: reads PC, SP and translation state; AT only writes PAR_EL1. On a VHE
    // host the kernel's regime is EL2&0 (TCR_EL1 names TCR_EL2 there), translated
    // by AT S1E2R.
    unsafe {
        if vhe {
            core::arch::asm!(
                "adr {pc}, .",
                "mov {sp}, sp",
                "mrs {tcr}, tcr_el1",
                "mrs {el}, CurrentEL",
                "at s1e2r, {low}",
                "isb",
                "mrs {par}, par_el1",
                pc = out(reg) pc, sp = out(reg) sp, tcr = out(reg) tcr, el = out(reg) el,
                par = out(reg) par, low = in(reg) 0x4020_0000u64,
            )
        } else {
            core::arch::asm!(
                "adr {pc}, .",
                "mov {sp}, sp",
                "mrs {tcr}, tcr_el1",
                "mrs {el}, CurrentEL",
                "at s1e1r, {low}",
                "isb",
                "mrs {par}, par_el1",
                pc = out(reg) pc, sp = out(reg) sp, tcr = out(reg) tcr, el = out(reg) el,
                par = out(reg) par, low = in(reg) 0x4020_0000u64,
            )
        }
    };
    let want_el = if vhe { 2 } else { 1 };
    if el >> 2 != want_el {
        return Err(format!("running at EL{}", el >> 2));
    }
    if pc < KBASE || sp < KBASE {
        return Err(format!("pc {pc:#x} sp {sp:#x} below {KBASE:#x}"));
    }
    if tcr & boot::TCR_EPD0 == 0 || par & 1 == 0 {
        return Err(format!(
            "low addresses still translate (TCR {tcr:#x} PAR {par:#x})"
        ));
    }
    Ok(format!(
        "EL{want_el} pc={pc:#x} sp={sp:#x}, TTBR0 walks off, low VA faults"
    ))
}

fn check_timer() -> Result<String, String> {
    let before = gic::count(0, gic::ppi_timer());
    let f = timer::freq();
    let start = timer::now();
    timer::arm(f / 1000);
    // The timer itself wakes the WFI, so a lost interrupt shows as the 1s timeout after
    // a second, shorter timer.
    while gic::count(0, gic::ppi_timer()) == before {
        if timer::now() - start > f {
            return Err("no timer interrupt within 1s".into());
        }
        cpu::wait_for_interrupt(|| gic::count(0, gic::ppi_timer()) == before);
    }
    let ms = (timer::now() - start) * 1000 / f;
    Ok(format!(
        "PPI {} after {ms} ms (CNTFRQ {f})",
        gic::ppi_timer()
    ))
}

fn ping_cpu0(_: u64) -> u64 {
    gic::send_sgi(0, gic::SGI_PING);
    0
}

fn check_ipi() -> Result<String, String> {
    if ncpus() < 2 {
        return Err("cpu 1 is not online".into());
    }
    let f = timer::freq();
    for round in 0..10 {
        let b1 = gic::count(1, gic::SGI_PING);
        gic::send_sgi(1, gic::SGI_PING);
        let start = timer::now();
        while gic::count(1, gic::SGI_PING) == b1 {
            if timer::now() - start > f {
                return Err(format!(
                    "cpu 1 did not take SGI {} (round {round})",
                    gic::SGI_PING
                ));
            }
        }
        let b0 = gic::count(0, gic::SGI_PING);
        cpu::run_on(1, ping_cpu0, 0);
        let start = timer::now();
        while gic::count(0, gic::SGI_PING) == b0 {
            if timer::now() - start > f {
                return Err(format!("cpu 0 did not take SGI from cpu 1 (round {round})"));
            }
        }
    }
    Ok("10 SGIs each way between cpu 0 and cpu 1".into())
}

fn check_alloc() -> Result<String, String> {
    let free = mm::free_pages();
    let a = mm::alloc_pages(3).ok_or("alloc 3")?;
    let b = mm::alloc_pages(1).ok_or("alloc 1")?;
    if b >= a && b < a + 3 * mm::PAGE {
        return Err("overlapping allocations".into());
    }
    mm::free_pages_at(a, 3);
    mm::free_pages_at(b, 1);
    let v: alloc::vec::Vec<u64> = (0..10_000).collect();
    let sum: u64 = v.iter().sum();
    drop(v);
    if mm::free_pages() != free || sum != 49_995_000 {
        return Err(format!("free pages {} -> {}", free, mm::free_pages()));
    }
    Ok(format!("{free} free pages, heap works"))
}

fn load_hyp(n: usize) -> Result<String, String> {
    let res = hyp::load(n)?;
    let bad: alloc::vec::Vec<_> = res
        .iter()
        .take(n)
        .enumerate()
        .filter(|(_, r)| **r != 0)
        .collect();
    if !bad.is_empty() {
        return Err(format!("init hypercall failed: {bad:?}"));
    }
    Ok(format!(
        "blob {} bytes at PA {:#x}, on {n} cpus",
        hyp::EL2_BLOB.len(),
        hyp::HYP.lock().as_ref().map_or(0, |h| h.blob_pa)
    ))
}

fn read_regs(_: u64) -> u64 {
    let vtr = hyp::hyp_call(HYP_READ_REGISTER, HYP_REG_ICH_VTR, 0, 0);
    let cnthctl = hyp::hyp_call(HYP_READ_REGISTER, HYP_REG_CNTHCTL, 0, 0);
    let bogus = hyp::hyp_call(HYP_READ_REGISTER, 99, 0, 0);
    let unknown = hyp::hyp_call(0x7777, 0, 0, 0);
    if cnthctl != boot::STUB_CNTHCTL_EL2 || bogus != HYP_RET_UNKNOWN || unknown != HYP_RET_UNKNOWN {
        return u64::MAX;
    }
    vtr
}

fn check_read_register(n: usize) -> Result<String, String> {
    let mut out = String::new();
    for c in 0..n {
        let vtr = cpu::run_on(c, read_regs, 0);
        // ICH_VTR_EL2: ListRegs (4:0) + 1 list registers; QEMU's GICv3 has 4, PRIbits 5.
        if vtr == u64::MAX || vtr & 0x1f != 3 {
            return Err(format!(
                "cpu {c}: ICH_VTR {vtr:#x}, or CNTHCTL/unknown-call answers wrong"
            ));
        }
        out.push_str(&format!("cpu{c} ICH_VTR={vtr:#x} "));
    }
    Ok(format!(
        "{out}CNTHCTL=0x3, unknown calls answer HYP_RET_UNKNOWN"
    ))
}

fn hvc_imm(esr: u64) -> Option<u32> {
    (esr_ec(esr) == ec::HVC64).then_some(esr_iss(esr) & 0xffff)
}

fn run_hvc_loop(n: u64) -> Result<String, String> {
    let mut vm = TestVm::new(HVC_LOOP, GUEST_PAGES).ok_or("cannot create VM")?;
    let c = vm.ctx();
    c.x[0] = n;
    let mut exits = 0u64;
    loop {
        let kind = vm.run();
        let c = vm.ctx();
        if kind != excp::EL1_SYNC as u64 || c.exit.kind != excp::EL1_SYNC {
            return Err(format!(
                "exit kind {kind} at pc {:#x} esr {:#x}",
                c.pc, c.exit.esr_el2
            ));
        }
        match hvc_imm(c.exit.esr_el2) {
            Some(1) => {
                exits += 1;
                if c.x[0] != exits {
                    return Err(format!("guest counter {} at exit {exits}", c.x[0]));
                }
                if c.pc != c.x[1] + 4 {
                    return Err(format!("exit pc {:#x}, hvc at {:#x}", c.pc, c.x[1]));
                }
                c.x[1] = c.x[0] + 1000;
            }
            Some(2) if c.x[0] == n && exits == n => {
                return Ok(format!("{n} hvc exits, pc and x0/x1 right every time"))
            }
            other => {
                return Err(format!(
                    "unexpected exit {other:?} x0={} after {exits} exits",
                    c.x[0]
                ))
            }
        }
    }
}

/// The host's own FP/SIMD registers and FPCR around one guest entry.
#[repr(C, align(16))]
pub(crate) struct FpBuf(pub [u64; 66]);

fn enter_with_host_fp(ctx_pa: u64, pin: &FpBuf, pout: &mut FpBuf) -> u64 {
    let kind: u64;
    // SAFETY: the host loads its own pattern into v0..v31/FPCR, enters the guest (the
    // EL2 contract preserves x18..x30), stores v0..v31/FPCR back; only memory of the
    // two buffers is touched. FPCR goes back to 0. IRQs are masked around the hvc.
    unsafe {
        core::arch::asm!(
            ".arch_extension fp",
            ".arch_extension simd",
            "ldp q0, q1, [x20, #0]", "ldp q2, q3, [x20, #32]", "ldp q4, q5, [x20, #64]",
            "ldp q6, q7, [x20, #96]", "ldp q8, q9, [x20, #128]", "ldp q10, q11, [x20, #160]",
            "ldp q12, q13, [x20, #192]", "ldp q14, q15, [x20, #224]", "ldp q16, q17, [x20, #256]",
            "ldp q18, q19, [x20, #288]", "ldp q20, q21, [x20, #320]", "ldp q22, q23, [x20, #352]",
            "ldp q24, q25, [x20, #384]", "ldp q26, q27, [x20, #416]", "ldp q28, q29, [x20, #448]",
            "ldp q30, q31, [x20, #480]",
            "ldr x2, [x20, #512]",
            "msr fpcr, x2",
            "mrs x22, daif",
            "msr daifset, #3",
            "hvc #0",
            "msr daif, x22",
            "stp q0, q1, [x21, #0]", "stp q2, q3, [x21, #32]", "stp q4, q5, [x21, #64]",
            "stp q6, q7, [x21, #96]", "stp q8, q9, [x21, #128]", "stp q10, q11, [x21, #160]",
            "stp q12, q13, [x21, #192]", "stp q14, q15, [x21, #224]", "stp q16, q17, [x21, #256]",
            "stp q18, q19, [x21, #288]", "stp q20, q21, [x21, #320]", "stp q22, q23, [x21, #352]",
            "stp q24, q25, [x21, #384]", "stp q26, q27, [x21, #416]", "stp q28, q29, [x21, #448]",
            "stp q30, q31, [x21, #480]",
            "mrs x2, fpcr",
            "str x2, [x21, #512]",
            "msr fpcr, xzr",
            inout("x0") vmm_sys::hyp::HYP_ENTER_GUEST => kind,
            inout("x1") ctx_pa => _,
            in("x20") pin.0.as_ptr(),
            in("x21") pout.0.as_mut_ptr(),
            out("x22") _,
            out("x2") _, out("x3") _, out("x4") _, out("x5") _, out("x6") _, out("x7") _,
            out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _, out("x13") _,
            out("x14") _, out("x15") _, out("x16") _, out("x17") _, out("x30") _,
        )
    };
    kind
}

fn fp_guest(iterations: u64) -> u64 {
    let Some(mut vm) = TestVm::new(FP_GPR, GUEST_PAGES) else {
        return 1;
    };
    vm.ctx().x[0] = iterations;
    let mut pin = FpBuf([0; 66]);
    let mut pout = FpBuf([0; 66]);
    let mut rounds = 0u64;
    let me = cpu::id() as u64;
    loop {
        for (i, w) in pin.0.iter_mut().enumerate().take(64) {
            *w = (me << 56) ^ (rounds << 20) ^ (i as u64 * 0x0001_0003_0005_0007);
        }
        // FPCR: a rounding mode (RMode bits 23:22) that differs from the guest's.
        pin.0[64] = (rounds % 3 + 1) << 22;
        let kind = enter_with_host_fp(vm.ctx_pa(), &pin, &mut pout);
        if pin.0[..65] != pout.0[..65] {
            return 2;
        }
        let c = vm.ctx();
        if kind != excp::EL1_SYNC as u64 {
            return 3;
        }
        match hvc_imm(c.exit.esr_el2) {
            Some(1) => rounds += 1,
            Some(2) if rounds == iterations => return 0,
            Some(3) => return 1000 + c.x[0],
            _ => return 4,
        }
    }
}

fn run_fp_two_cpus(n: usize, iterations: u64) -> Result<String, String> {
    if n >= 2 {
        cpu::post(1, fp_guest, iterations);
    }
    let r0 = fp_guest(iterations);
    let r1 = if n >= 2 { cpu::wait(1) } else { 0 };
    let why = |r: u64| match r {
        0 => String::from("ok"),
        1 => "no VM".into(),
        2 => "host FP/SIMD registers changed across a guest entry".into(),
        3 => "unexpected exit kind".into(),
        4 => "unexpected exit".into(),
        r if r >= 1100 => format!("guest v{} changed across an exit", r - 1100),
        r => format!("guest register {} changed across an exit", r - 1000),
    };
    if r0 == 0 && r1 == 0 {
        Ok(format!(
            "{iterations} exits on each of {} cpus at once: guest x1-x30, v0-v31, FPCR and host v0-v31, FPCR intact",
            n.min(2)
        ))
    } else {
        Err(format!("cpu0: {}; cpu1: {}", why(r0), why(r1)))
    }
}

/// Values the MMIO guest expects (keep in step with tests/guests/gen_mmio.py).
pub(crate) fn mmio_read_value(off: u64) -> u64 {
    0xF0E1_D2C3_B4A5_9687 ^ (off * 0x10001)
}
pub(crate) fn mmio_write_value(off: u64) -> u64 {
    0x1122_3344_5566_7788 ^ (off * 0x10001)
}

const MMIO_BASE: u64 = 0x0a00_0000;

fn fault_ipa(c: &vmm_sys::hyp::VcpuContext) -> u64 {
    ((c.exit.hpfar_el2 >> 4) << 12) | (c.exit.far_el2 & 0xfff)
}

/// Emulates one MMIO access from its syndrome: a read puts `value` (truncated,
/// sign-extended as SSE/SF say) in the target register unless it is xzr; returns
/// (is_write, size, value written).
fn emulate_mmio(c: &mut vmm_sys::hyp::VcpuContext, value: u64) -> Result<(bool, u32, u64), String> {
    let iss = esr_iss(c.exit.esr_el2);
    if iss & dabt::ISV == 0 {
        return Err(format!("no valid syndrome, esr {:#x}", c.exit.esr_el2));
    }
    let size = 1u32 << ((iss >> dabt::SAS_SHIFT) & dabt::SAS_MASK);
    let srt = ((iss >> dabt::SRT_SHIFT) & dabt::SRT_MASK) as usize;
    let bits = size * 8;
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let write = iss & dabt::WNR != 0;
    let mut written = 0;
    if write {
        written = if srt == 31 { 0 } else { c.x[srt] & mask };
    } else {
        let mut v = value & mask;
        if iss & dabt::SSE != 0 && bits < 64 && v >> (bits - 1) & 1 == 1 {
            v |= !mask;
        }
        if iss & dabt::SF == 0 {
            v &= 0xffff_ffff;
        }
        if srt != 31 {
            c.x[srt] = v;
        }
    }
    c.pc += 4;
    Ok((write, size, written))
}

fn run_mmio() -> Result<String, String> {
    let mut vm = TestVm::new(MMIO, GUEST_PAGES).ok_or("cannot create VM")?;
    let (mut reads, mut writes) = (0u32, 0u32);
    let mut sizes = [0u32; 4];
    loop {
        let kind = vm.run();
        let c = vm.ctx();
        if kind != excp::EL1_SYNC as u64 {
            return Err(format!("exit kind {kind}"));
        }
        match esr_ec(c.exit.esr_el2) {
            ec::DABT_LOW => {
                let ipa = fault_ipa(c);
                let off = ipa.wrapping_sub(MMIO_BASE);
                if off >= 0x1000 {
                    return Err(format!("abort at IPA {ipa:#x}"));
                }
                let (write, size, val) = emulate_mmio(c, mmio_read_value(off))?;
                sizes[size.trailing_zeros() as usize] += 1;
                if write {
                    writes += 1;
                    let srt = (esr_iss(c.exit.esr_el2) >> dabt::SRT_SHIFT) & dabt::SRT_MASK;
                    let mask = if size == 8 { u64::MAX } else { (1u64 << (size * 8)) - 1 };
                    let want = if srt == 31 { 0 } else { mmio_write_value(off) & mask };
                    if val != want {
                        return Err(format!("write at +{off:#x} size {size} from x{srt}: {val:#x}, want {want:#x}"));
                    }
                } else {
                    reads += 1;
                }
            }
            ec::HVC64 => match hvc_imm(c.exit.esr_el2) {
                Some(2) if c.x[0] == 416 && reads == 288 && writes == 128 => {
                    return Ok(format!(
                        "{reads} reads (ldr/ldrh/ldrb, ldrs[bhw] into x and w) and {writes} writes, every register x0-x30 and xzr; sizes 1/2/4/8: {sizes:?}"
                    ))
                }
                Some(3) => return Err(format!("guest saw a wrong value at access {}", c.x[0])),
                other => return Err(format!("hvc {other:?} x0={} reads={reads} writes={writes}", c.x[0])),
            },
            e => return Err(format!("unexpected EC {e:#x} at pc {:#x}", c.pc)),
        }
    }
}

fn run_sysreg() -> Result<String, String> {
    let mut vm = TestVm::new(SYSREG, GUEST_PAGES).ok_or("cannot create VM")?;
    let mut oslar = None;
    let mut traps = 0;
    loop {
        let kind = vm.run();
        let c = vm.ctx();
        if kind != excp::EL1_SYNC as u64 {
            return Err(format!("exit kind {kind}"));
        }
        match esr_ec(c.exit.esr_el2) {
            ec::SYS64 => {
                traps += 1;
                let iss = esr_iss(c.exit.esr_el2);
                let reg = SysReg(iss & !((0x1f << 5) | 1));
                let rt = ((iss >> 5) & 0x1f) as usize;
                let read = iss & 1 == 1;
                match (reg, read) {
                    (r, true) if r == ID_AA64PFR0_EL1 => c.x[rt] = 0x1122,
                    (r, true) if r == ID_AA64MMFR0_EL1 => c.x[rt] = 0x3344,
                    (r, false) if r == OSLAR_EL1 => oslar = Some(c.x[rt]),
                    _ => return Err(format!("unexpected trap {reg} read={read}")),
                }
                c.pc += 4;
            }
            ec::HVC64 => {
                let (a, b) = (c.x[0], c.x[1]);
                return if hvc_imm(c.exit.esr_el2) == Some(2)
                    && a == 0x1122
                    && b == 0x3344
                    && oslar == Some(0x5a)
                    && traps == 3
                {
                    Ok("ID_AA64PFR0/MMFR0 reads (TID3) answered into the right registers, OSLAR_EL1 write (TDOSA) seen with its value".into())
                } else {
                    Err(format!("x0={a:#x} x1={b:#x} oslar={oslar:?} traps={traps}"))
                };
            }
            e => return Err(format!("unexpected EC {e:#x}")),
        }
    }
}

fn run_wfi() -> Result<String, String> {
    let mut vm = TestVm::new(WFI, GUEST_PAGES).ok_or("cannot create VM")?;
    vm.run();
    let c = vm.ctx();
    let esr = c.exit.esr_el2;
    if esr_ec(esr) != ec::WFX || esr_iss(esr) & 1 != 0 {
        return Err(format!("first exit esr {esr:#x}, want a WFI trap"));
    }
    if c.pc != c.x[1] {
        return Err(format!("WFI exit pc {:#x}, WFI at {:#x}", c.pc, c.x[1]));
    }
    c.pc += 4;
    vm.run();
    let c = vm.ctx();
    if hvc_imm(c.exit.esr_el2) != Some(2) || c.x[0] != 0x77 {
        return Err(format!(
            "after WFI: esr {:#x} x0 {:#x}",
            c.exit.esr_el2, c.x[0]
        ));
    }
    Ok("WFI traps with ELR at the WFI; resumed past it".into())
}

fn isolation_vm(marker: u64) -> Result<(), String> {
    let mut vm = TestVm::new(ISOLATION, GUEST_PAGES).ok_or("cannot create VM")?;
    vm.write_ram_u64(0x800, marker);
    let expect_ipas = [0x4000_0000u64, 0x8001_0000, 0x7f_ffff_f000];
    let mut faults = 0;
    loop {
        vm.run();
        let c = vm.ctx();
        match esr_ec(c.exit.esr_el2) {
            ec::DABT_LOW => {
                let ipa = fault_ipa(c);
                if expect_ipas.get(faults) != Some(&ipa) {
                    return Err(format!("fault {faults} at IPA {ipa:#x}"));
                }
                emulate_mmio(c, 0xdead_0000 + faults as u64)?;
                faults += 1;
            }
            ec::HVC64 => {
                let got = [c.x[3], c.x[4], c.x[5], c.x[6]];
                let want = [0xdead_0000, 0xdead_0001, 0xdead_0002, marker];
                return if got == want {
                    Ok(())
                } else {
                    Err(format!("guest read {got:#x?}, want {want:#x?}"))
                };
            }
            e => return Err(format!("unexpected EC {e:#x}")),
        }
    }
}

fn isolation_on_cpu(marker: u64) -> u64 {
    u64::from(isolation_vm(marker).is_err())
}

fn run_isolation() -> Result<String, String> {
    // Two VMs with the same IPA layout, one per CPU, each must see only its own marker.
    if ncpus() >= 2 {
        cpu::post(1, isolation_on_cpu, 0xbbbb_0001);
    }
    let a = isolation_vm(0xaaaa_0001);
    let b = if ncpus() >= 2 { cpu::wait(1) } else { 0 };
    a?;
    if b != 0 {
        return Err("the VM on cpu 1 saw the wrong memory".into());
    }
    Ok("host RAM, past-the-end and top-of-IPA reads all exit; two VMs at the same IPA see their own RAM".into())
}

/// `Host::sleep` (the core's WFI and destroy waits) with deadlines 0 to 16 us ahead:
/// the one-shot timer it arms often fires before its WFI, and every sleep must still
/// end at its deadline. A timer interrupt taken (and the timer disabled) before the WFI
/// would leave the CPU asleep for good: the testbed then hangs here.
fn host_sleep_short_deadlines() -> Result<String, String> {
    use vmm_core::{Host, SleepResult};
    let host = crate::kernel::host::TestbedHost::new();
    let f = timer::freq();
    let start = timer::now();
    let rounds = 2000u64;
    for i in 0..rounds {
        let ahead = (i % 64) * f / 4_000_000;
        let deadline = timer::now() + ahead;
        let r = host.sleep(0, Some(deadline), &|| true);
        if r != SleepResult::TimedOut {
            return Err(format!("sleep {i} ended {r:?}"));
        }
        if timer::now() < deadline {
            return Err(format!("sleep {i} returned before its deadline"));
        }
    }
    let us = (timer::now() - start) * 1_000_000 / f;
    Ok(format!(
        "{rounds} sleeps 0-16 us ahead each ended at their deadline ({us} us in all)"
    ))
}

/// A physical interrupt for the host while a guest runs: the guest exits with an IRQ
/// kind and the host takes the interrupt once it unmasks.
fn run_irq_exit() -> Result<String, String> {
    // The guest is one instruction, `b .`: its only way out is the interrupt.
    let spin = 0x1400_0000u32.to_le_bytes();
    let mut vm = TestVm::new(&spin, 1).ok_or("cannot create VM")?;
    let before = gic::count(0, gic::ppi_timer());
    timer::arm(timer::freq() / 200);
    let kind = vm.run();
    let c = vm.ctx();
    if kind != excp::EL1_IRQ as u64 || c.exit.kind != excp::EL1_IRQ {
        return Err(format!("exit kind {kind}, esr {:#x}", c.exit.esr_el2));
    }
    if c.pc != crate::cases::test_vm::GUEST_RAM_IPA {
        return Err(format!("guest pc {:#x} after the IRQ exit", c.pc));
    }
    // IRQs are unmasked again once the hypercall returned: the handler has run.
    if gic::count(0, gic::ppi_timer()) == before {
        return Err("IRQ exit but the host never saw the interrupt".into());
    }
    Ok(format!(
        "timer IRQ while the guest spun: exit kind {kind}, pc unchanged, host handled its timer PPI"
    ))
}

fn probe_on_cpu(cpu_slot: u64) -> u64 {
    match hyp::probe_el2() {
        Some(v) => {
            PROBES.lock()[cpu_slot as usize] = Some(v);
            0
        }
        None => 1,
    }
}

static PROBES: vmm_core::sync::SpinLock<[Option<[u64; 16]>; MAX_CPUS]> =
    vmm_core::sync::SpinLock::new_spin([None; MAX_CPUS]);

fn unload_and_probe(n: usize) -> Result<String, String> {
    let res = hyp::unload(n);
    if res.iter().take(n).any(|r| *r != 0) {
        return Err(format!("HYP_CLEANUP returned {res:?}"));
    }
    for c in 0..n {
        if cpu::run_on(c, probe_on_cpu, c as u64) != 0 {
            return Err(format!("cpu {c}: the stub does not answer after unload"));
        }
        let after = PROBES.lock()[c].ok_or("no probe")?;
        let boot = contract_of(c);
        for i in 0..16 {
            // SPSR_EL2 now holds the PSTATE of this hvc, not a contract value: only its
            // mode and DAIF bits must match (EL1h, masked); NZCV are whatever they were.
            let m = if i == boot::RB_SPSR { 0x3cf } else { u64::MAX };
            if after[i] & m != boot[i] & m {
                return Err(format!(
                    "cpu {c}: {} is {:#x} after unload, {:#x} at boot",
                    READBACK_NAMES[i], after[i], boot[i]
                ));
            }
        }
    }
    Ok(format!(
        "on {n} cpus every contract register reads back as at boot; the stub answers"
    ))
}

fn reload(n: usize, free_before: usize) -> Result<String, String> {
    load_hyp(n)?;
    run_hvc_loop(10)?;
    let res = hyp::unload(n);
    if res.iter().take(n).any(|r| *r != 0) {
        return Err(format!("second HYP_CLEANUP returned {res:?}"));
    }
    let leaked = free_before as i64 - mm::free_pages() as i64;
    // Heap pages kept by the small-block allocator's free lists are not a leak.
    if leaked > 4 {
        return Err(format!(
            "{leaked} pages not returned after two load/unload cycles"
        ));
    }
    Ok(format!(
        "second load, a guest run and unload work; {leaked} pages held by heap free lists"
    ))
}

/// The same hypervisor through vmm-core and its ioctl dispatcher.
fn run_core(n: usize) {
    let free_before = mm::free_pages();
    let vmm = match crate::cases::vmm::load() {
        Ok(v) => {
            report(
                "core_load",
                Ok(format!(
                    "Vmm::new brought EL2 up on {n} cpus with the testbed Host"
                )),
            );
            v
        }
        Err(e) => return report("core_load", Err(e)),
    };
    report(
        "core_hvc_via_dispatch",
        crate::cases::vmm::hvc_through_dispatch(&vmm, HVC_LOOP, 1000),
    );
    report("core_mmio", crate::cases::vmm::mmio(&vmm, MMIO));
    report(
        "core_wfi_in_kernel",
        crate::cases::vmm::wfi(&vmm, WFI_TIMER),
    );
    report(
        "core_vgic_timer_and_spi",
        crate::cases::vmm::vgic::timer_and_spi(&vmm, VGIC_TIMER),
    );
    report(
        "core_vgic_spi_to_running_vcpu",
        crate::cases::vmm::vgic::spi_to_running_vcpu(&vmm, VGIC_SPI_SPIN, n),
    );
    report("core_isolation_two_cpus", core_isolation(&vmm, n));
    report("core_fp_gpr_two_cpus", core_fp(&vmm, n));
    if vmm_core::vcpu::host_has_pauth(&vmm_arm64::IdRegs::read()) {
        report("core_pac_keys_two_cpus", core_pac(&vmm, n));
    }
    report(
        "core_sysreg_in_kernel",
        crate::cases::vmm::sysreg_in_kernel(&vmm, SYSREG),
    );
    report(
        "core_sysreg_at_el2",
        crate::cases::vmm::sysreg_at_el2(&vmm, EL2_ANSWERS),
    );
    report(
        "core_mmio_answers_at_el2",
        crate::cases::vmm::mmio_answers_at_el2(&vmm, MMIO_ANSWERS),
    );
    report(
        "core_mmio_queue_two_vcpus",
        crate::cases::vmm::store_queue::two_vcpus(&vmm, MMIO_QUEUE_SMP, n),
    );
    report(
        "core_ptimer_reads_at_el2",
        crate::cases::vmm::ptimer_reads_at_el2(&vmm, PTIMER),
    );
    report(
        "core_hidden_features",
        crate::cases::vmm::hidden_features(&vmm, HIDDEN),
    );
    if let Some(r) = crate::cases::vmm::mte_tags(&vmm, MTE_TAGS) {
        report("core_mte_tags", r);
    }
    report(
        "core_destroy_kicks_running_vcpu",
        crate::cases::vmm::destroy_kicks_running_vcpu(&vmm, n),
    );
    report("core_1000_vms", crate::cases::vmm::thousand_vms(&vmm));
    let r = crate::cases::vmm::unload(vmm).and_then(|()| {
        if cpu::vhe_host() {
            // No stub to come back to: the kernel stays at EL2.
            let held = free_before as i64 - mm::free_pages() as i64;
            return Ok(format!(
                "Vmm::shutdown on a VHE host; {held} pages held by heap free lists"
            ));
        }
        for c in 0..n {
            if cpu::run_on(c, probe_on_cpu, c as u64) != 0 {
                return Err(format!("cpu {c}: the stub does not answer after shutdown"));
            }
            let after = PROBES.lock()[c].ok_or("no probe")?;
            let boot = contract_of(c);
            for i in 0..16 {
                let m = if i == boot::RB_SPSR { 0x3cf } else { u64::MAX };
                if after[i] & m != boot[i] & m {
                    return Err(format!("cpu {c}: {} is {:#x}, {:#x} at boot", READBACK_NAMES[i], after[i], boot[i]));
                }
            }
        }
        let held = free_before as i64 - mm::free_pages() as i64;
        Ok(format!("Vmm::shutdown left EL2 as the stub did on {n} cpus; {held} pages held by heap free lists"))
    });
    report("core_unload", r);
    report("core_reload", crate::cases::vmm::reload(HVC_LOOP));
}

fn core_isolation_cpu1(vmm: u64) -> u64 {
    // SAFETY: core_isolation passes a &Core it keeps alive until cpu::wait returns.
    let vmm: &crate::cases::vmm::Core = unsafe { &*(vmm as *const crate::cases::vmm::Core) };
    u64::from(crate::cases::vmm::isolation(vmm, b"tb-iso1", ISOLATION, 0xbbbb_0002).is_err())
}

/// Two VMs with the same IPA layout through the dispatcher, one running on each CPU.
fn core_isolation(vmm: &crate::cases::vmm::Core, n: usize) -> Result<String, String> {
    if n >= 2 {
        cpu::post(1, core_isolation_cpu1, vmm as *const _ as u64);
    }
    let a = crate::cases::vmm::isolation(vmm, b"tb-iso0", ISOLATION, 0xaaaa_0002);
    let b = if n >= 2 { cpu::wait(1) } else { 0 };
    a?;
    if b != 0 {
        return Err("the VM on cpu 1 failed".into());
    }
    Ok("reads of host RAM, past guest RAM and top of IPA exit as INST_EMUL; two VMs at once see only their own RAM".into())
}

/// Runs `f(&vmm)` on cpu 1 (when there are two) and on this CPU at once; their codes.
fn on_both_cpus(vmm: &crate::cases::vmm::Core, n: usize, f: fn(u64) -> u64) -> (u64, u64) {
    let p = vmm as *const _ as u64;
    if n >= 2 {
        cpu::post(1, f, p);
    }
    let r0 = f(p);
    let r1 = if n >= 2 { cpu::wait(1) } else { 0 };
    (r0, r1)
}

/// The FP/GPR guest through VM_RUN on both CPUs at once, the host's own FP registers
/// loaded around every VM_RUN, and every other VM_RUN with the host's FP trapping.
fn core_fp(vmm: &crate::cases::vmm::Core, n: usize) -> Result<String, String> {
    crate::cases::vmm::set_fp_image(FP_GPR);
    match on_both_cpus(vmm, n, crate::cases::vmm::fp_on_this_cpu) {
        (0, 0) => Ok(format!(
            "1000 VM_RUNs on each of {} cpus, half with the host's FP off: guest and host registers intact",
            n.min(2)
        )),
        (r0, r1) => Err(format!(
            "cpu0 code {r0}, cpu1 code {r1} (2 = host FP changed, 1000+n = guest register n)"
        )),
    }
}

/// The PAC-keys guest through VM_RUN on both CPUs at once (a host with pointer
/// authentication, which the guest is shown).
fn core_pac(vmm: &crate::cases::vmm::Core, n: usize) -> Result<String, String> {
    crate::cases::vmm::set_pac_image(PAC_KEYS);
    match on_both_cpus(vmm, n, crate::cases::vmm::pac_on_this_cpu) {
        (0, 0) => Ok(format!(
            "1000 exits on each of {} cpus: the guest's five keys and its signatures unchanged, the host's own keys back after every VM_RUN",
            n.min(2)
        )),
        (r0, r1) => Err(format!(
            "cpu0 code {r0}, cpu1 code {r1} (2 = host keys changed, 1001..=1010 = guest key register, 1011..=1015 = signature, 1020 = nothing signed)"
        )),
    }
}

/// When the host itself sets CPTR_EL2.TFP in the guest's controls, a guest FP access is
/// a real exit (EC 0x07) rather than the EL2 code's lazy switch.
fn run_fp_trap_for_host() -> Result<String, String> {
    let mut vm = TestVm::new(FP_GPR, GUEST_PAGES).ok_or("cannot create VM")?;
    let c = vm.ctx();
    c.x[0] = 1;
    c.el2.cptr_el2 |= vmm_sys::arm64::regs::cptr::TFP;
    let kind = vm.run();
    let c = vm.ctx();
    if kind != excp::EL1_SYNC as u64 || esr_ec(c.exit.esr_el2) != ec::FP_ASIMD {
        return Err(format!(
            "exit kind {kind} esr {:#x}, want an FP trap",
            c.exit.esr_el2
        ));
    }
    let trap_pc = c.pc;
    // Then without TFP the lazy switch takes over and the guest finishes its round.
    c.el2.cptr_el2 &= !vmm_sys::arm64::regs::cptr::TFP;
    for _ in 0..4 {
        vm.run();
        let c = vm.ctx();
        match hvc_imm(c.exit.esr_el2) {
            Some(1) => continue,
            Some(2) => {
                return Ok(format!(
                "FP access exits with EC 0x7 at pc {trap_pc:#x} when the host traps FP; lazy FP otherwise",
            ))
            }
            other => {
                return Err(format!(
                    "exit {other:?} esr {:#x} x0 {}",
                    c.exit.esr_el2, c.x[0]
                ))
            }
        }
    }
    Err("guest did not finish".into())
}
