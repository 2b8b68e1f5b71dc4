//! Per-CPU identity, the secondary CPU's start and idle loop, and "run this function
//! on that CPU" (what smp_rendezvous gives vmm.ko).

use crate::kernel::mm::MAX_CPUS;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub fn id() -> usize {
    let v: u64;
    // SAFETY: TPIDR_EL1 holds the CPU index (set by the boot code).
    unsafe { core::arch::asm!("mrs {0}, tpidr_el1", out(reg) v) };
    v as usize
}

/// True on a VHE host: the kernel runs at EL2 with HCR_EL2.E2H and TGE set (the boot
/// code chose it because the CPU has VHE); false on an nVHE host, whose kernel runs at
/// EL1 under the hyp stub.
pub fn vhe_host() -> bool {
    vmm_arm64::mrs!("CurrentEL") >> 2 == 2
}

pub fn mpidr() -> u64 {
    let v: u64;
    // SAFETY: reads this CPU's affinity.
    unsafe { core::arch::asm!("mrs {0}, mpidr_el1", out(reg) v) };
    v
}

/// A spin-wait hint that lets another CPU run: `yield`, not the `isb` of
/// `core::hint::spin_loop`. QEMU's single-threaded TCG (always the case under `-icount`,
/// as `cargo xtask bench-boot` runs the served testbed) switches CPUs on `yield`;
/// without it a CPU spinning for the other holds the emulator until its instruction
/// budget runs out, and the served testbed never finishes starting. On hardware both
/// are mere hints.
pub fn relax() {
    // SAFETY: a hint instruction with no effect on memory, registers or flags.
    unsafe { core::arch::asm!("yield", options(nomem, nostack, preserves_flags)) };
}

pub fn irq_enable() {
    // SAFETY: unmasks IRQs at EL1; the vectors are installed.
    unsafe { core::arch::asm!("msr daifclr, #2") };
}

pub fn irq_disable() {
    // SAFETY: masks IRQs.
    unsafe { core::arch::asm!("msr daifset, #2") };
}

/// Sleeps in WFI while `still_waiting()` holds, without losing a wakeup: the check and
/// the WFI run with IRQs masked (a pending IRQ still ends WFI), then the IRQ is taken.
pub fn wait_for_interrupt(still_waiting: impl Fn() -> bool) {
    irq_disable();
    if still_waiting() {
        // SAFETY: waits for an interrupt; masked IRQs still wake the CPU.
        unsafe { core::arch::asm!("wfi") };
    }
    irq_enable();
}

struct Mailbox {
    func: AtomicU64,
    arg: AtomicU64,
    result: AtomicU64,
}

static MAILBOX: [Mailbox; MAX_CPUS] = [const {
    Mailbox {
        func: AtomicU64::new(0),
        arg: AtomicU64::new(0),
        result: AtomicU64::new(0),
    }
}; MAX_CPUS];

pub static ONLINE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// Runs `f(arg)` on `cpu` and returns its result.
pub fn run_on(cpu: usize, f: fn(u64) -> u64, arg: u64) -> u64 {
    if cpu == id() {
        return f(arg);
    }
    post(cpu, f, arg);
    wait(cpu)
}

/// Starts `f(arg)` on another CPU without waiting.
pub fn post(cpu: usize, f: fn(u64) -> u64, arg: u64) {
    let mb = &MAILBOX[cpu];
    mb.arg.store(arg, Ordering::Relaxed);
    mb.func.store(f as usize as u64, Ordering::Release);
    crate::kernel::gic::send_sgi(cpu, crate::kernel::gic::SGI_WAKE);
}

/// Waits for the call posted to `cpu` and returns its result.
pub fn wait(cpu: usize) -> u64 {
    let mb = &MAILBOX[cpu];
    while mb.func.load(Ordering::Acquire) != 0 {
        relax();
    }
    mb.result.load(Ordering::Relaxed)
}

/// The secondary CPUs' loop: interrupts on, sleep until a mailbox call arrives.
pub fn idle_loop(cpu: usize) -> ! {
    let mb = &MAILBOX[cpu];
    irq_enable();
    loop {
        let f = mb.func.load(Ordering::Acquire);
        if f != 0 {
            // SAFETY: `run_on` stored a `fn(u64) -> u64` as an integer.
            let func: fn(u64) -> u64 = unsafe { core::mem::transmute(f as usize) };
            let r = func(mb.arg.load(Ordering::Relaxed));
            mb.result.store(r, Ordering::Relaxed);
            mb.func.store(0, Ordering::Release);
        } else {
            wait_for_interrupt(|| mb.func.load(Ordering::Acquire) == 0);
        }
    }
}

/// Starts CPU `cpu` through PSCI CPU_ON; waits until it is online.
pub fn start_secondary(cpu: usize) -> Result<(), i64> {
    let entry = crate::kernel::mm::va_to_pa(core::ptr::addr_of!(
        crate::kernel::boot::secondary_entry
    ) as u64);
    let r = crate::kernel::psci::cpu_on(cpu as u64, entry, cpu as u64);
    if r != 0 {
        return Err(r);
    }
    let start = crate::kernel::timer::now();
    while !ONLINE[cpu].load(Ordering::Acquire) {
        if crate::kernel::timer::now() - start > crate::kernel::timer::freq() * 5 {
            return Err(-99);
        }
        relax();
    }
    Ok(())
}

/// Calls made in the target's SGI handler (what smp_rendezvous does): they run even
/// while that CPU is busy with a posted job, as long as it has IRQs unmasked at times
/// (a CPU in a guest takes the SGI as an IRQ exit first).
static CALL: [Mailbox; MAX_CPUS] = [const {
    Mailbox {
        func: AtomicU64::new(0),
        arg: AtomicU64::new(0),
        result: AtomicU64::new(0),
    }
}; MAX_CPUS];
static CALL_BUSY: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// Runs `f(arg)` on `cpu` in interrupt context and waits for it. The caller keeps its
/// IRQs unmasked while waiting so two CPUs calling each other both make progress.
pub fn call_sync(cpu: usize, f: fn(u64) -> u64, arg: u64) -> u64 {
    if cpu == id() {
        return f(arg);
    }
    let busy = &CALL_BUSY[cpu];
    while busy
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        relax();
    }
    let mb = &CALL[cpu];
    mb.arg.store(arg, Ordering::Relaxed);
    mb.func.store(f as usize as u64, Ordering::Release);
    crate::kernel::gic::send_sgi(cpu, crate::kernel::gic::SGI_CALL);
    while mb.func.load(Ordering::Acquire) != 0 {
        relax();
    }
    let r = mb.result.load(Ordering::Relaxed);
    busy.store(false, Ordering::Release);
    r
}

/// From the SGI handler.
pub fn handle_call_ipi() {
    let mb = &CALL[id()];
    let f = mb.func.load(Ordering::Acquire);
    if f != 0 {
        // SAFETY: `call_sync` stored a `fn(u64) -> u64` as an integer.
        let func: fn(u64) -> u64 = unsafe { core::mem::transmute(f as usize) };
        let r = func(mb.arg.load(Ordering::Relaxed));
        mb.result.store(r, Ordering::Relaxed);
        mb.func.store(0, Ordering::Release);
    }
}
