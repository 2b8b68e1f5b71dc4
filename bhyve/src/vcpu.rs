//! The run loop: one thread per started vCPU, each handling its own exits, and the
//! coordinator that ends the VM.
//!
//! vCPU 0 starts where bhyveload left it. The others start when the guest asks for them
//! with PSCI CPU_ON (as on hardware with PSCI firmware): the caller's thread activates
//! the target and starts its thread. CPU_OFF parks the vCPU's thread until a later
//! CPU_ON names it again. The first vCPU that ends the VM (SYSTEM_OFF, SYSTEM_RESET, a
//! SUSPENDED exit, an error) records why; the coordinator then suspends the VM so that
//! every other vCPU leaves VM_RUN, wakes the parked ones and waits for all of them.
//!
//! Every vCPU that was activated goes through VM_RUN once after that suspension (and
//! never again after its SUSPENDED exit, which the kernel would refuse): the kernel only
//! counts a vCPU as suspended when it leaves VM_RUN with SUSPENDED, and VM_REINIT (the
//! next bhyveload, as in a reboot loop) is refused until every active vCPU is counted.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use libvmmapi::{Exit, ExitReason, Vcpu, Vm};
use thiserror::Error;
use vmm_sys::arm64::esr;
use vmm_sys::arm64::regs::pstate;
use vmm_sys::exit::SuspendHow;
use vmm_sys::reg::Reg;

use crate::console::{warn, GuestNoise};
use crate::mmio::{Access, Bus, BusError};
use crate::psci::{self, Action};

/// Why the VM stopped, and so bhyve's exit status (bhyve(8)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The guest rebooted (PSCI SYSTEM_RESET or a reset suspend): status 0.
    Reset,
    /// The guest powered off (PSCI SYSTEM_OFF): status 1.
    Poweroff,
    /// The VM was halted (a halt suspend, or every vCPU turned itself off): status 2.
    Halt,
    /// The VM was destroyed under us (bhyvectl --destroy): status 4, as FreeBSD's
    /// bhyve exits for VM_SUSPEND_DESTROY.
    Destroyed,
    /// Something went wrong: status 4, with the message bhyve prints.
    Error(RunError),
}

/// Why a VM stopped on an error (bhyve prints it after the VM's name). The causes the
/// vmm or the host gave are kept as their text: a [`Stop`] is compared and copied.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RunError {
    #[error("cannot run {0} vCPUs")]
    CpuCount(u32),
    #[error("the VM was suspended for no reason")]
    SuspendedForNoReason,
    #[error("cannot start the thread of vcpu {id}: {cause}")]
    Thread { id: u32, cause: String },
    #[error("vcpu {id}: {why}")]
    Vcpu { id: u32, why: VcpuError },
    #[error("cannot map guest memory for devices: {0}")]
    GuestMemory(String),
    #[error("slot {slot}: cannot start the device: {cause}")]
    StartDevice { slot: u32, cause: String },
    #[error("cannot start the console input thread: {0}")]
    InputThread(String),
    #[error("{0}")]
    Sandbox(String),
}

/// Why one vCPU cannot go on.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum VcpuError {
    /// A request the vmm refused (libvmmapi's cause).
    #[error("{0}")]
    Vmm(String),
    #[error("already active: the VM has run since bhyveload loaded it; run bhyveload again")]
    AlreadyActive,
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("{what} exit at pc 0x{pc:x}: bhyve has no debugger (gdb stub) to take it")]
    NoDebugger { what: &'static str, pc: u64 },
}

impl From<libvmmapi::Error> for VcpuError {
    fn from(e: libvmmapi::Error) -> VcpuError {
        VcpuError::Vmm(e.cause())
    }
}

impl Stop {
    pub fn status(&self) -> i32 {
        match self {
            Stop::Reset => 0,
            Stop::Poweroff => 1,
            Stop::Halt => 2,
            Stop::Destroyed | Stop::Error(_) => 4,
        }
    }

    fn from_suspend(how: SuspendHow) -> Stop {
        match how {
            SuspendHow::Reset => Stop::Reset,
            SuspendHow::Poweroff => Stop::Poweroff,
            SuspendHow::Halt => Stop::Halt,
            SuspendHow::Destroy => Stop::Destroyed,
            SuspendHow::None => Stop::Error(RunError::SuspendedForNoReason),
        }
    }

    /// The suspend that makes the other vCPUs return for this stop.
    fn suspend_how(&self) -> Option<SuspendHow> {
        match self {
            Stop::Reset => Some(SuspendHow::Reset),
            Stop::Poweroff => Some(SuspendHow::Poweroff),
            Stop::Halt | Stop::Error(_) => Some(SuspendHow::Halt),
            // The kernel has already suspended a VM being destroyed.
            Stop::Destroyed => None,
        }
    }
}

/// The life of one vCPU, as PSCI sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CpuState {
    /// Never started: no thread, not activated.
    Off,
    /// Its thread is running it.
    On,
    /// It called CPU_OFF: its thread waits for a CPU_ON.
    Parked,
    /// A CPU_ON named it while parked: its thread restarts at `entry` with x0 = `context`.
    Waking { entry: u64, context: u64 },
}

struct State {
    cpus: Vec<CpuState>,
    /// Guest RAM as (base, size): where CPU_ON may point a vCPU. Empty when the VM's
    /// mappings could not be read, and then every address is accepted.
    ram: Vec<(u64, u64)>,
    stop: Option<Stop>,
    /// The coordinator has suspended the VM (or found it already suspended or gone):
    /// a vCPU entering VM_RUN now leaves at once with SUSPENDED.
    suspend_sent: bool,
    /// Threads started and not yet finished.
    live: usize,
}

/// What the vCPU threads share.
struct Shared {
    vm: Vm,
    bus: Arc<Bus>,
    state: Mutex<State>,
    changed: Condvar,
    /// Warnings the guest causes, rate-limited.
    noise: GuestNoise,
}

/// How long the coordinator waits for vCPU threads to return after suspending the VM.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// SCTLR_EL1.{M, C, I}: MMU and caches, off when PSCI restarts a CPU.
const SCTLR_MMU_CACHES: u64 = (1 << 0) | (1 << 2) | (1 << 12);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records why the VM ends (the first reason wins) and wakes the coordinator.
    fn stop(&self, why: Stop) {
        let mut st = self.lock();
        if st.stop.is_none() {
            st.stop = Some(why);
        }
        self.changed.notify_all();
    }

    fn stopping(&self) -> bool {
        self.lock().stop.is_some()
    }
}

impl psci::Cpus for State {
    fn count(&self) -> u32 {
        self.cpus.len() as u32
    }
    fn mpidr(&self, n: u32) -> u64 {
        vmm_platform::vcpu_mpidr(n)
    }
    fn is_ram(&self, addr: u64) -> bool {
        self.ram.is_empty()
            || self
                .ram
                .iter()
                .any(|&(base, size)| addr >= base && addr - base < size)
    }
    fn is_on(&self, n: u32) -> bool {
        matches!(
            self.cpus.get(n as usize),
            Some(CpuState::On | CpuState::Waking { .. })
        )
    }
}

/// Runs VM `vm` with `ncpus` vCPUs and the devices on `bus` until it stops.
pub fn run(vm: Vm, ncpus: u32, bus: Arc<Bus>) -> Stop {
    if ncpus == 0 || ncpus > vmm_platform::MAX_VCPUS {
        return Stop::Error(RunError::CpuCount(ncpus));
    }
    let ram = system_memory(&vm);
    let shared = Arc::new(Shared {
        vm,
        bus,
        state: Mutex::new(State {
            cpus: vec![CpuState::Off; ncpus as usize],
            ram,
            stop: None,
            suspend_sent: false,
            live: 0,
        }),
        changed: Condvar::new(),
        noise: GuestNoise::default(),
    });
    {
        let mut st = shared.lock();
        st.cpus[0] = CpuState::On;
        st.live += 1;
    }
    if let Err(e) = spawn(&shared, 0, None) {
        shared.lock().live -= 1;
        return Stop::Error(e);
    }

    // Wait for a reason to stop.
    let mut st = shared.lock();
    while st.stop.is_none() {
        st = shared.changed.wait(st).unwrap_or_else(|p| p.into_inner());
    }
    let why = st.stop.clone().unwrap_or(Stop::Halt);
    drop(st);
    let quiet = shared.noise.suppressed();
    if quiet > 0 {
        warn(&format!(
            "{quiet} more warning(s) caused by the guest were not shown (at most one of a kind a second)"
        ));
    }

    // Make every running vCPU return from VM_RUN. A VM already suspended (by the guest's
    // own SYSTEM_OFF exit, or being destroyed) refuses a second suspend: that is fine.
    if let Some(how) = why.suspend_how() {
        let _ = shared.vm.suspend(how);
    }
    shared.lock().suspend_sent = true;
    shared.changed.notify_all();
    let deadline = Instant::now() + JOIN_TIMEOUT;
    let mut st = shared.lock();
    while st.live > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            warn(&format!(
                "{} vCPU thread(s) did not return after the VM was suspended",
                st.live
            ));
            break;
        }
        st = shared
            .changed
            .wait_timeout(st, left)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
    drop(st);
    // What the guest stored last (its final words before SYSTEM_OFF on another vCPU)
    // may still wait in the kernel; a destroyed VM took it along.
    if why != Stop::Destroyed {
        if let Err(e) = shared.bus.drain_stores() {
            warn(&format!("{e}"));
        }
    }
    why
}

/// The VM's system memory mappings (segments without a name), as (gpa, len).
fn system_memory(vm: &Vm) -> Vec<(u64, u64)> {
    let Ok(maps) = vm.mappings() else {
        return Vec::new();
    };
    maps.into_iter()
        .filter(|m| matches!(vm.get_memseg(m.segid), Ok(Some(s)) if s.name.is_none()))
        .map(|m| (m.gpa, m.len))
        .collect()
}

/// Starts the thread of vCPU `id`; `start` is the CPU_ON entry point and context.
/// The caller has marked the vCPU On and counted the thread in `live`.
fn spawn(shared: &Arc<Shared>, id: u32, start: Option<(u64, u64)>) -> Result<(), RunError> {
    let s = Arc::clone(shared);
    thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || {
            let mut pending = Pending::No;
            let result = vcpu_main(&s, id, start, &mut pending);
            if let Err(e) = result {
                // A request failing because the VM is gone (bhyvectl --destroy raced
                // this vCPU) is the destroy, whichever vCPU notices it first.
                let gone = matches!(s.vm.get_topology(), Err(libvmmapi::Error::NoSuchVm(_)));
                s.stop(if gone {
                    Stop::Destroyed
                } else {
                    Stop::Error(RunError::Vcpu { id, why: e })
                });
            }
            if let Pending::Yes(vcpu) = pending {
                leave_suspended(&s, &vcpu);
            }
            let mut st = s.lock();
            st.live -= 1;
            s.changed.notify_all();
        })
        .map(drop)
        .map_err(|e| RunError::Thread {
            id,
            cause: e.to_string(),
        })
}

/// What one exit asks of the loop.
enum Next {
    Run,
    /// CPU_OFF: wait for a CPU_ON.
    Park,
    /// This vCPU is done (the VM stops); it has not yet seen the suspension.
    Done,
    /// The kernel returned SUSPENDED: this vCPU is counted as suspended and must not
    /// enter VM_RUN again.
    Suspended,
}

/// Whether a vCPU thread still owes the kernel its pass through VM_RUN after the
/// suspension.
enum Pending {
    /// Not activated, or already left with SUSPENDED.
    No,
    /// Active and not yet counted as suspended.
    Yes(Vcpu),
}

fn vcpu_main(
    s: &Arc<Shared>,
    id: u32,
    start: Option<(u64, u64)>,
    pending: &mut Pending,
) -> Result<(), VcpuError> {
    let vcpu = s.vm.vcpu(id)?;
    if let Some((entry, context)) = start {
        set_entry(&vcpu, entry, context, false)?;
    }
    vcpu.activate().map_err(|e| {
        // VM_ACTIVATE_CPU refuses a vCPU that is already active with EBUSY.
        if e.errno() == Some(libc::EBUSY) {
            VcpuError::AlreadyActive
        } else {
            e.into()
        }
    })?;
    *pending = Pending::Yes(vcpu.clone());
    loop {
        if s.stopping() {
            return Ok(());
        }
        let exit = vcpu.run()?;
        match handle_exit(s, &vcpu, &exit)? {
            Next::Run => {}
            Next::Done => return Ok(()),
            Next::Suspended => {
                *pending = Pending::No;
                return Ok(());
            }
            Next::Park => {
                let Some((entry, context)) = park(s, id) else {
                    return Ok(());
                };
                set_entry(&vcpu, entry, context, true)?;
            }
        }
    }
}

/// Most VM_RUN calls a stopping vCPU makes while waiting for its SUSPENDED exit (the
/// kernel checks for a suspension before entering the guest, so one is enough; the
/// rest guard against a stale exit already on its way).
const LEAVE_TRIES: u32 = 8;

/// Takes an active vCPU through VM_RUN once the coordinator has suspended the VM, so
/// the kernel counts it as suspended (VM_REINIT needs that). Errors are not reported:
/// the VM is ending for a reason already recorded, or is gone.
fn leave_suspended(s: &Shared, vcpu: &Vcpu) {
    let mut st = s.lock();
    while !st.suspend_sent {
        st = s.changed.wait(st).unwrap_or_else(|p| p.into_inner());
    }
    drop(st);
    for _ in 0..LEAVE_TRIES {
        match vcpu.run() {
            Ok(Exit {
                reason: ExitReason::Suspended(_),
                ..
            })
            | Err(_) => return,
            Ok(_) => {}
        }
    }
    warn(&format!(
        "vcpu {}: no SUSPENDED exit after the VM was suspended",
        vcpu.id()
    ));
}

/// Waits, parked after CPU_OFF, until a CPU_ON (returns its entry and context) or until
/// the VM stops (returns `None`).
fn park(s: &Shared, id: u32) -> Option<(u64, u64)> {
    let mut st = s.lock();
    loop {
        if st.stop.is_some() {
            return None;
        }
        if let CpuState::Waking { entry, context } = st.cpus[id as usize] {
            st.cpus[id as usize] = CpuState::On;
            return Some((entry, context));
        }
        st = s.changed.wait(st).unwrap_or_else(|p| p.into_inner());
    }
}

/// Sets a vCPU up as PSCI CPU_ON leaves it: PC = entry, x0 = context, EL1h with DAIF
/// masked; a restarted one (after CPU_OFF) also gets its MMU and caches turned off.
fn set_entry(vcpu: &Vcpu, entry: u64, context: u64, restart: bool) -> Result<(), VcpuError> {
    let set = |r: Reg, v: u64| vcpu.set_reg(r, v);
    if restart {
        let sctlr = vcpu.get_reg(Reg::SctlrEl1)?;
        set(Reg::SctlrEl1, sctlr & !SCTLR_MMU_CACHES)?;
    }
    set(Reg::Cpsr, pstate::GUEST_RESET)?;
    set(Reg::X(0), context)?;
    Ok(set(Reg::Pc, entry)?)
}

fn handle_exit(s: &Arc<Shared>, vcpu: &Vcpu, exit: &Exit) -> Result<Next, VcpuError> {
    match exit.reason {
        // The kernel returns BOGUS before any exit while device stores wait for us.
        ExitReason::Bogus => {
            s.bus.drain_stores()?;
            Ok(Next::Run)
        }
        ExitReason::Wfi | ExitReason::Paging { .. } => Ok(Next::Run),
        ExitReason::InstEmul {
            gpa,
            size,
            write,
            sign_extend,
            reg,
        } => {
            mmio(s, vcpu, gpa, size, write, sign_extend, reg)?;
            Ok(Next::Run)
        }
        ExitReason::RegEmul {
            inst_syndrome,
            write,
            ..
        } => {
            s.noise.warn("system register", || {
                let a = esr::decode_sys64(inst_syndrome);
                format!(
                    "vcpu {}: {} of unknown system register {} at pc 0x{:x}: \
                     injecting UNDEFINED",
                    vcpu.id(),
                    if write { "write" } else { "read" },
                    a.reg,
                    exit.pc
                )
            });
            undefined(vcpu, exit.pc, 0)?;
            Ok(Next::Run)
        }
        ExitReason::Hyp {
            exception_nr,
            esr,
            far,
            ..
        } => {
            s.noise.warn("exception", || {
                format!(
                    "vcpu {}: unhandled exception {exception_nr} (ESR 0x{esr:x}, FAR 0x{far:x}) \
                     at pc 0x{:x}: injecting UNDEFINED",
                    vcpu.id(),
                    exit.pc
                )
            });
            // A trapped HVC reports the PC past it; every other exception the PC of the
            // instruction itself, where the UNDEF must be taken.
            let at = if (esr >> 26) & 0x3f == u64::from(esr::ec::HVC64) {
                exit.pc.wrapping_sub(4)
            } else {
                exit.pc
            };
            undefined(vcpu, at, far)?;
            Ok(Next::Run)
        }
        ExitReason::Hvc => {
            // FreeBSD's vmm turns every HVC into an SMCCC exit; a bare HVC exit is a
            // hypercall nobody implements, which the guest sees as UNDEFINED at the HVC
            // (the exit's PC is past it).
            undefined(vcpu, exit.pc.wrapping_sub(4), 0)?;
            Ok(Next::Run)
        }
        ExitReason::Smccc { func_id, args } => smccc(s, vcpu, func_id, &args),
        ExitReason::Suspended(how) => {
            s.stop(Stop::from_suspend(how));
            Ok(Next::Suspended)
        }
        ExitReason::Debug | ExitReason::Brk | ExitReason::Ss => Err(VcpuError::NoDebugger {
            what: match exit.reason {
                ExitReason::Debug => "debug",
                ExitReason::Brk => "breakpoint (BRK)",
                _ => "single-step",
            },
            pc: exit.pc,
        }),
    }
}

/// Injects an UNDEFINED exception taken at `pc`, the instruction that exited.
fn undefined(vcpu: &Vcpu, pc: u64, far: u64) -> Result<(), VcpuError> {
    // The kernel has moved its resume PC past a trapped MSR/MRS; the exception must be
    // taken at the instruction itself, as on hardware.
    vcpu.set_reg(Reg::Pc, pc)?;
    Ok(vcpu.inject_exception(esr::ESR_UNDEFINED, far)?)
}

/// Emulates one MMIO access. Loads are written back to the transfer register here,
/// as FreeBSD's bhyve does with vm_set_register; a load into XZR (`reg` None) is
/// discarded and a store of XZR writes zero.
fn mmio(
    s: &Shared,
    vcpu: &Vcpu,
    gpa: u64,
    size: u8,
    write: bool,
    sign_extend: bool,
    reg: Option<Reg>,
) -> Result<(), VcpuError> {
    let mask = if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    };
    if write {
        let v = match reg {
            Some(r) => vcpu.get_reg(r)?,
            None => 0,
        };
        s.bus.write(gpa, size, v & mask)?;
        return Ok(());
    }
    let raw = match s.bus.read(gpa, size)? {
        Access::Device(v) => v,
        Access::Unhandled => 0,
    };
    let Some(r) = reg else {
        return Ok(());
    };
    // The exit does not say whether the destination is W or X: extend to 64 bits, as
    // FreeBSD's vmm_emulate_instruction does; the kernel applies the instruction's
    // width on re-entry (esr::load_result).
    Ok(vcpu.set_reg(r, esr::extend_load(raw, size, sign_extend))?)
}

fn smccc(s: &Arc<Shared>, vcpu: &Vcpu, func_id: u64, args: &[u64; 7]) -> Result<Next, VcpuError> {
    let id = vcpu.id();
    let action = {
        let st = s.lock();
        psci::handle(func_id, args, &*st)
    };
    let x0 = |v: u64| vcpu.set_reg(Reg::X(0), v);
    match action {
        Action::Return(v) => {
            x0(v)?;
            Ok(Next::Run)
        }
        Action::CpuOn {
            target,
            entry,
            context,
        } => {
            let result = cpu_on(s, target, entry, context)?;
            x0(result as u64)?;
            Ok(Next::Run)
        }
        Action::CpuOff => {
            let mut st = s.lock();
            st.cpus[id as usize] = CpuState::Parked;
            if !st
                .cpus
                .iter()
                .any(|c| *c != CpuState::Parked && *c != CpuState::Off)
            {
                // Nobody is left to turn a CPU back on.
                drop(st);
                s.stop(Stop::Halt);
                return Ok(Next::Done);
            }
            Ok(Next::Park)
        }
        Action::SystemOff => {
            x0(0)?;
            s.stop(Stop::Poweroff);
            Ok(Next::Done)
        }
        Action::SystemReset => {
            x0(0)?;
            s.stop(Stop::Reset);
            Ok(Next::Done)
        }
    }
}

/// CPU_ON for `target`: PSCI SUCCESS, or ALREADY_ON if another caller won the race.
fn cpu_on(s: &Arc<Shared>, target: u32, entry: u64, context: u64) -> Result<i64, VcpuError> {
    use vmm_sys::arm64::psci::ret;
    let mut st = s.lock();
    match st.cpus[target as usize] {
        CpuState::On | CpuState::Waking { .. } => Ok(ret::ALREADY_ON),
        CpuState::Parked => {
            st.cpus[target as usize] = CpuState::Waking { entry, context };
            s.changed.notify_all();
            Ok(ret::SUCCESS)
        }
        CpuState::Off => {
            st.cpus[target as usize] = CpuState::On;
            st.live += 1;
            drop(st);
            if let Err(e) = spawn(s, target, Some((entry, context))) {
                let mut st = s.lock();
                st.cpus[target as usize] = CpuState::Off;
                st.live -= 1;
                warn(&e.to_string());
                return Ok(ret::INTERNAL_FAILURE);
            }
            Ok(ret::SUCCESS)
        }
    }
}
