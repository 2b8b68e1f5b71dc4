//! The exit-cost benchmark (`cargo xtask bench-el2`, QEMU with `-icount shift=0`): the
//! bench guest times N hvc round trips, N trapped ID-register reads, an empty loop, N
//! physical-timer register reads and N physical-timer compare writes with the virtual
//! counter. Run twice: straight on the world switch (the testbed answers each exit
//! right after HYP_ENTER_GUEST returns: the bare EL2 cost), and through vmm-core's
//! VM_RUN (hvc: back to the ioctl caller and VM_RUN again; ID register and timer read:
//! answered by the EL2 code in the guest's world; timer write: answered in the kernel's
//! run loop, after the full world switch). Then the vGIC's in-kernel exits
//! through VM_RUN (`bench_vgic` guest, vGIC attached): a distributor register read
//! (GICD_TYPER) and a self-IPI (ICC_SGI1R_EL1 trapped, SGI 1 injected through a list
//! register, acknowledged and EOIed by the guest). Then the device registers the
//! kernel handles (`bench_mmio` guest): a load it answers and a store it queues (the
//! host taking the queue whenever it is full, as bhyve does). Prints `BENCH <path> <what>
//! <instructions per exit>`; under icount shift=0 a nanosecond of virtual time is one
//! emulated instruction.

extern crate alloc;
use crate::cases::test_vm::TestVm;
use crate::cases::vmm::{self, run_vcpu, set_vcpu_reg, Core};
use crate::{kernel::hyp, kernel::timer, kprintln};
use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicU64, Ordering};
use vmm_core::stats::Stat;
use vmm_core::DeviceRef;
use vmm_sys::abi::*;
use vmm_sys::arm64::esr::{ec, esr_ec, esr_iss};
use vmm_sys::exit::ExitCode;
use vmm_sys::ioctl::*;
use vmm_sys::reg::{VM_REG_GUEST_PC, VM_REG_GUEST_X0};

static BENCH: &[u8] = include_bytes!(concat!(env!("VMM_GUEST_DIR"), "/bench.bin"));
static BENCH_VGIC: &[u8] = include_bytes!(concat!(env!("VMM_GUEST_DIR"), "/bench_vgic.bin"));
static BENCH_IPI: &[u8] = include_bytes!(concat!(env!("VMM_GUEST_DIR"), "/bench_ipi.bin"));
static BENCH_MMIO: &[u8] = include_bytes!(concat!(env!("VMM_GUEST_DIR"), "/bench_mmio.bin"));
const N: u64 = 20_000;
/// Round trips of the cross-vCPU IPI benchmark (each wakes the other CPU).
const IPI_N: u64 = 5_000;

/// PA where `-device loader` leaves the mode word ("BNCH" = run the benchmark).
pub const MODE_PA: u64 = 0x401f_f000;
pub const MODE_BENCH: u32 = u32::from_le_bytes(*b"BNCH");

/// `ticks`: the hvc loop, the ID-register loop, the empty loop, the timer-read loop and
/// the timer-write loop. The timer rows are printed for the core only: the bare world
/// switch's guest may not trap them.
fn report(path: &str, n: u64, ticks: [u64; 5], timer_row: bool) {
    let f = timer::freq();
    let ns = |t: u64| t * 1_000_000_000 / f;
    let loop_ns = ns(ticks[2]);
    let per = |t: u64| ns(t).saturating_sub(loop_ns) / n;
    kprintln!("BENCH {path} hvc_round_trip {}", per(ticks[0]));
    kprintln!("BENCH {path} sysreg_trap {}", per(ticks[1]));
    if timer_row {
        kprintln!("BENCH {path} timer_sysreg {}", per(ticks[3]));
        kprintln!("BENCH {path} timer_write {}", per(ticks[4]));
    }
    kprintln!("BENCH {path} empty_loop_total {loop_ns}");
}

fn direct() -> Result<[u64; 5], String> {
    let mut vm = TestVm::new(BENCH, 4).ok_or("cannot create VM")?;
    vm.ctx().x[0] = N;
    loop {
        vm.run();
        let c = vm.ctx();
        match esr_ec(c.exit.esr_el2) {
            ec::HVC64 if esr_iss(c.exit.esr_el2) & 0xffff == 1 => {}
            ec::HVC64 => return Ok([c.x[1], c.x[2], c.x[3], c.x[4], c.x[5]]),
            ec::SYS64 => {
                let rt = ((esr_iss(c.exit.esr_el2) >> 5) & 0x1f) as usize;
                if let Some(r) = c.x.get_mut(rt) {
                    *r = 0;
                }
                c.pc += 4;
            }
            e => return Err(format!("unexpected EC {e:#x}")),
        }
    }
}

fn ioctl<T: Pod>(vmm: &Core, cmd: u64, v: &mut T) -> Result<(), String> {
    // SAFETY: T is Pod; the dispatcher reads and writes its bytes.
    let b = unsafe {
        core::slice::from_raw_parts_mut(v as *mut T as *mut u8, core::mem::size_of::<T>())
    };
    vmm.dispatch(DeviceRef::Vm(b"bench"), cmd, b)
        .map_err(|e| format!("ioctl {cmd:#x}: {e:?}"))
}

fn get_reg(vmm: &Core, reg: u32) -> Result<u64, String> {
    let mut r = VmRegister {
        cpuid: 0,
        regnum: reg as i32,
        regval: 0,
    };
    ioctl(vmm, VM_GET_REGISTER, &mut r)?;
    Ok(r.regval)
}

fn through_core(vmm: &Core) -> Result<[u64; 5], String> {
    vmm::create(vmm, b"bench", BENCH, 0x10000)?;
    let mut r = VmRegister {
        cpuid: 0,
        regnum: VM_REG_GUEST_PC as i32,
        regval: 0x8000_0000,
    };
    ioctl(vmm, VM_SET_REGISTER, &mut r)?;
    let mut r = VmRegister {
        cpuid: 0,
        regnum: VM_REG_GUEST_X0 as i32,
        regval: N,
    };
    ioctl(vmm, VM_SET_REGISTER, &mut r)?;
    ioctl(vmm, VM_ACTIVATE_CPU, &mut VmActivateCpu { vcpuid: 0 })?;
    let mut exit = VmExit::default();
    let res = loop {
        let mut run = VmRun {
            cpuid: 0,
            vm_exit: &mut exit as *mut VmExit as u64,
            ..Default::default()
        };
        ioctl(vmm, VM_RUN, &mut run)?;
        if exit.exitcode != ExitCode::Hyp as i32 {
            break Err(format!("exit code {} at pc {:#x}", exit.exitcode, exit.pc));
        }
        // SAFETY: a HYP exit fills the hyp member.
        let esr = unsafe { exit.u.hyp.esr_el2 };
        if esr >> 26 == u64::from(ec::HVC64) && esr & 0xffff == 2 {
            break Ok([
                get_reg(vmm, VM_REG_GUEST_X0 + 1)?,
                get_reg(vmm, VM_REG_GUEST_X0 + 2)?,
                get_reg(vmm, VM_REG_GUEST_X0 + 3)?,
                get_reg(vmm, VM_REG_GUEST_X0 + 4)?,
                get_reg(vmm, VM_REG_GUEST_X0 + 5)?,
            ]);
        }
    };
    vmm::destroy(vmm, b"bench")?;
    res
}

/// The `bench_vgic` guest through VM_RUN with a vGICv3 attached: ticks of N GICD
/// reads, N self-IPIs, the empty loop, then the SGIs the guest took and the VM's exits.
fn vgic_through_core(vmm: &Core) -> Result<([u64; 3], u64, u64), String> {
    let name = b"bench-vgic";
    vmm::start(vmm, name, BENCH_VGIC, N)?;
    let res = (|| {
        ioctl_vm(vmm, name, VM_ATTACH_VGIC, &mut vmm::vgic::descr(1))?;
        loop {
            let e = vmm::run(vmm, name)?;
            if e.exitcode == ExitCode::Bogus as i32 {
                continue;
            }
            if e.exitcode != ExitCode::Hyp as i32 {
                return Err(format!("exit code {} at pc {:#x}", e.exitcode, e.pc));
            }
            // SAFETY: a HYP exit fills the hyp member.
            let esr = unsafe { e.u.hyp.esr_el2 };
            if esr >> 26 != u64::from(ec::HVC64) {
                return Err(format!("HYP exit with ESR {esr:#x} at pc {:#x}", e.pc));
            }
            let reg = |r: u32| vmm::get_reg(vmm, name, VM_REG_GUEST_X0 + r);
            match esr & 0xffff {
                2 => {
                    let exits = vmm::stat(vmm, name, 0, Stat::Exits)?;
                    return Ok(([reg(1)?, reg(2)?, reg(3)?], reg(4)?, exits));
                }
                3 => return Err(format!("bench_vgic guest failed: x0 = {:#x}", reg(0)?)),
                _ => {}
            }
        }
    })();
    vmm::destroy(vmm, name)?;
    res
}

/// The `bench_mmio` guest through VM_RUN with the kernel answering 0x10018 and queueing
/// stores to 0x10000: ticks of N loads, N stores and the empty loop, and the stores the
/// host took.
fn mmio_through_core(vmm: &Core) -> Result<([u64; 3], u64), String> {
    let name = b"bench-mmio";
    vmm::start(vmm, name, BENCH_MMIO, N)?;
    let res = (|| {
        vmm::set_shortcuts(
            vmm,
            name,
            &[
                (0x10018, 0x90, MMIO_ANSWER_LOADS),
                (0x10000, 0, MMIO_BUFFER_STORES),
            ],
        )?;
        let mut taken = 0u64;
        let mut stores = alloc::boxed::Box::new(VmMmioStores::default());
        loop {
            let e = vmm::run(vmm, name)?;
            if e.exitcode == ExitCode::Bogus as i32 {
                ioctl_vm(vmm, name, VM_GET_MMIO_STORES, &mut *stores)?;
                taken += u64::from(stores.count);
                continue;
            }
            if e.exitcode != ExitCode::Hyp as i32 {
                return Err(format!("exit code {} at pc {:#x}", e.exitcode, e.pc));
            }
            let reg = |r: u32| vmm::get_reg(vmm, name, VM_REG_GUEST_X0 + r);
            if reg(4)? != 0x90 {
                return Err(format!("the answered load read {:#x}", reg(4)?));
            }
            ioctl_vm(vmm, name, VM_GET_MMIO_STORES, &mut *stores)?;
            taken += u64::from(stores.count);
            return Ok(([reg(1)?, reg(2)?, reg(3)?], taken));
        }
    })();
    vmm::destroy(vmm, name)?;
    res
}

fn report_mmio(n: u64, ticks: [u64; 3], taken: u64) {
    let f = timer::freq();
    let ns = |t: u64| t * 1_000_000_000 / f;
    let loop_ns = ns(ticks[2]);
    let per = |t: u64| ns(t).saturating_sub(loop_ns) / n;
    kprintln!("BENCH vmm_core_mmio answered_load {}", per(ticks[0]));
    kprintln!("BENCH vmm_core_mmio queued_store {}", per(ticks[1]));
    kprintln!(
        "BENCH info queued stores: {taken} of {n} taken, {} per BOGUS exit",
        MMIO_STORES_MAX
    );
}

fn ioctl_vm<T: Pod>(vmm: &Core, name: &[u8], cmd: u64, v: &mut T) -> Result<(), String> {
    // SAFETY: T is Pod; the dispatcher reads and writes its bytes.
    let b = unsafe {
        core::slice::from_raw_parts_mut(v as *mut T as *mut u8, core::mem::size_of::<T>())
    };
    vmm.dispatch(DeviceRef::Vm(name), cmd, b)
        .map_err(|e| format!("ioctl {cmd:#x}: {e:?}"))
}

const IPI_VM: &[u8] = b"bench-ipi";
/// How the receiver's VM_RUN loop on CPU 1 ended, when it was not the VM's destroy
/// (`u64::MAX` while none): the exit code, or `1 << 32` for a failed VM_RUN.
static IPI_RECEIVER_END: AtomicU64 = AtomicU64::new(u64::MAX);

/// CPU 1: runs vCPU 1 (the receiver) until the VM is destroyed (SUSPENDED).
fn ipi_receiver(vmm: u64) -> u64 {
    // SAFETY: cross_vcpu_ipi passes a &Core it keeps alive until cpu::wait(1).
    let vmm: &Core = unsafe { &*(vmm as *const Core) };
    loop {
        match run_vcpu(vmm, IPI_VM, 1) {
            Ok(e) if e.exitcode == ExitCode::Bogus as i32 => {}
            Ok(e) if e.exitcode == ExitCode::Suspended as i32 => return 0,
            Ok(e) => {
                IPI_RECEIVER_END.store(e.exitcode as u32 as u64, Ordering::SeqCst);
                return 1;
            }
            Err(_) => {
                IPI_RECEIVER_END.store(1 << 32, Ordering::SeqCst);
                return 1;
            }
        }
    }
}

/// The `bench_ipi` guest: vCPU 0 on this CPU sends IPI_N SGIs to vCPU 1, which CPU 1
/// runs and which waits for each in WFI. Returns the sender's ticks for all of them,
/// the SGIs the receiver counted and the exits of each vCPU.
fn cross_vcpu_ipi(vmm: &Core) -> Result<(u64, u64, u64, u64), String> {
    vmm::start(vmm, IPI_VM, BENCH_IPI, IPI_N)?;
    IPI_RECEIVER_END.store(u64::MAX, Ordering::SeqCst);
    let mut posted = false;
    let res = (|| {
        set_vcpu_reg(vmm, IPI_VM, 0, VM_REG_GUEST_X0 + 1, 0)?;
        set_vcpu_reg(vmm, IPI_VM, 1, VM_REG_GUEST_PC, 0x8000_0000)?;
        set_vcpu_reg(vmm, IPI_VM, 1, VM_REG_GUEST_X0, IPI_N)?;
        set_vcpu_reg(vmm, IPI_VM, 1, VM_REG_GUEST_X0 + 1, 1)?;
        ioctl_vm(
            vmm,
            IPI_VM,
            VM_ACTIVATE_CPU,
            &mut VmActivateCpu { vcpuid: 1 },
        )?;
        ioctl_vm(vmm, IPI_VM, VM_ATTACH_VGIC, &mut vmm::vgic::descr(2))?;
        crate::kernel::cpu::post(1, ipi_receiver, vmm as *const Core as u64);
        posted = true;
        loop {
            let e = run_vcpu(vmm, IPI_VM, 0)?;
            if e.exitcode == ExitCode::Bogus as i32 {
                continue;
            }
            let end = IPI_RECEIVER_END.load(Ordering::SeqCst);
            if end != u64::MAX {
                return Err(format!("receiver's VM_RUN ended: {end:#x}"));
            }
            if e.exitcode != ExitCode::Hyp as i32 {
                return Err(format!("exit code {} at pc {:#x}", e.exitcode, e.pc));
            }
            // SAFETY: a HYP exit fills the hyp member.
            let esr = unsafe { e.u.hyp.esr_el2 };
            let reg = |r: u32| vmm::get_reg(vmm, IPI_VM, VM_REG_GUEST_X0 + r);
            match (esr >> 26, esr & 0xffff) {
                (0x16, 2) => {
                    let exits = |cpu| vmm::stat(vmm, IPI_VM, cpu, Stat::Exits);
                    return Ok((reg(1)?, reg(2)?, exits(0)?, exits(1)?));
                }
                (0x16, 3) => {
                    return Err(format!(
                        "bench_ipi sender failed: x0 = {:#x}, x1 = {:#x}",
                        reg(0)?,
                        reg(1)?
                    ))
                }
                _ => return Err(format!("HYP exit with ESR {esr:#x} at pc {:#x}", e.pc)),
            }
        }
    })();
    // The destroy ends vCPU 1's VM_RUN (SUSPENDED), then CPU 1's call returns.
    let destroyed = vmm::destroy(vmm, IPI_VM);
    if posted {
        crate::kernel::cpu::wait(1);
    }
    destroyed?;
    res
}

fn report_ipi(ticks: u64, count: u64, exits: (u64, u64)) {
    let f = timer::freq();
    let ns = ticks * 1_000_000_000 / f;
    kprintln!("BENCH vmm_core_vgic cross_vcpu_ipi {}", ns / IPI_N);
    kprintln!(
        "BENCH info cross-vCPU: {count} of {IPI_N} SGIs taken on vCPU 1; exits: vCPU 0 {}, vCPU 1 {}",
        exits.0,
        exits.1
    );
}

fn report_vgic(n: u64, ticks: [u64; 3], sgis: u64, exits: u64) {
    let f = timer::freq();
    let ns = |t: u64| t * 1_000_000_000 / f;
    let loop_ns = ns(ticks[2]);
    let per = |t: u64| ns(t).saturating_sub(loop_ns) / n;
    kprintln!("BENCH vmm_core_vgic gicd_mmio_read {}", per(ticks[0]));
    kprintln!("BENCH vmm_core_vgic self_ipi_eoi {}", per(ticks[1]));
    kprintln!("BENCH info sgis_taken {sgis} of {n}, {exits} exits in all (2N + setup)");
}

pub fn run() {
    kprintln!(
        "BENCH start N={N} CNTFRQ={} host={}",
        timer::freq(),
        if crate::kernel::cpu::vhe_host() {
            "vhe"
        } else {
            "nvhe"
        }
    );
    // The cross-vCPU IPI runs its receiver on CPU 1, which must be up before the core
    // loads (it takes EL2 on every CPU online); idle, it executes nothing meanwhile.
    let second_cpu = crate::kernel::cpu::start_secondary(1);
    // The bare world switch through the blob needs the stub: nVHE hosts only.
    if !crate::kernel::cpu::vhe_host() {
        match hyp::load(1) {
            Ok(_) => match direct() {
                Ok(t) => report("world_switch", N, t, false),
                Err(e) => kprintln!("BENCH error {e}"),
            },
            Err(e) => kprintln!("BENCH error {e}"),
        }
        hyp::unload(1);
    }
    match vmm::load() {
        Ok(vmm) => {
            match through_core(&vmm) {
                Ok(t) => report("vmm_core_vm_run", N, t, true),
                Err(e) => kprintln!("BENCH error {e}"),
            }
            match vgic_through_core(&vmm) {
                Ok((t, sgis, exits)) => report_vgic(N, t, sgis, exits),
                Err(e) => kprintln!("BENCH error {e}"),
            }
            match mmio_through_core(&vmm) {
                Ok((t, taken)) if taken == N => report_mmio(N, t, taken),
                Ok((_, taken)) => kprintln!("BENCH error {taken} of {N} queued stores taken"),
                Err(e) => kprintln!("BENCH error {e}"),
            }
            match second_cpu.map_err(|e| format!("cpu 1 did not start: PSCI {e}")) {
                Ok(()) => match cross_vcpu_ipi(&vmm) {
                    Ok((t, count, e0, e1)) => report_ipi(t, count, (e0, e1)),
                    Err(e) => kprintln!("BENCH error {e}"),
                },
                Err(e) => kprintln!("BENCH error {e}"),
            }
            if let Err(e) = vmm::unload(vmm) {
                kprintln!("BENCH error {e}");
            }
        }
        Err(e) => kprintln!("BENCH error {e}"),
    }
    kprintln!("BENCH done");
}
