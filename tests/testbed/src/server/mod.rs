//! Serving /dev/vmm to Linux processes (docs/testbed.md, "Serving /dev/vmm"). When
//! QEMU's generic loader leaves the word "SERV" below the kernel image, the testbed
//! runs this instead of its tests: it brings the vmm core up with [`ServerHost`], then
//! answers requests framed by the broker (vmm-sys `wire`) on the virtio console.
//!
//! CPU 0 owns the channel and executes every request itself, except VM_RUN, which it
//! hands to a free run CPU (every other CPU: QEMU's `-smp` gives the served testbed two,
//! one per vCPU of a 2-vCPU guest) through the mailbox and answers when the run returns;
//! VM_RUNs arriving while every run CPU is busy wait in a queue. So assert-IRQ, bhyvectl
//! and destroy are served while vCPUs run (a destroy kicks the run CPUs through the
//! core). When runs wait, the running ones are time-sliced (CPU 0 sends each an SGI
//! after [`SLICE_MS`], the core asks `should_yield`, and VM_RUN returns a BOGUS exit,
//! which libvmmapi's callers simply run again).
//!
//! Each request's pointer fields are pointed at testbed copies of the buffers the
//! request carried; the core reaches them only through `copyin`/`copyout`, which
//! [`ServerHost`] limits to exactly those buffers of the request running on the
//! calling CPU (a client cannot make the core read or write any other testbed memory).

use crate::kernel::host::{self, Timer};
use crate::kernel::mm::{MAX_CPUS, PAGE};
mod lanes;
mod virtio_console;

use crate::{kernel::cpu, kernel::gic, kernel::timer, kprintln};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use virtio_console::VirtioConsole;
use vmm_core::sync::SpinLock;
use vmm_core::sync::SpinMutex;
use vmm_core::{DeviceRef, Errno, Host, KResult, PhysMem, SleepResult, Vmm};
use vmm_sys::abi::{Pod, VmMemmap, VmRun};
use vmm_sys::ioctl;
use vmm_sys::wire::{self, Frame, WireRequest, FRAME_HEADER, MAX_BUFFERS};

/// The loader word that selects serving (see bench.rs for the address).
pub const MODE_SERVE: u32 = u32::from_le_bytes(*b"SERV");
/// How long a VM_RUN keeps its run CPU while another VM_RUN waits for one.
pub const SLICE_MS: u64 = 20;
/// Pages CPU 0 zeroes per idle round (`mm::scrub`).
const SCRUB_BATCH: usize = 16;

/// The CPU that serves the channel; every other CPU runs vCPUs.
const CHANNEL_CPU: usize = 0;

fn is_run_cpu(c: usize) -> bool {
    c != CHANNEL_CPU && c < MAX_CPUS
}

/// Buffers the request executing on each CPU may have copied in or out: [addr, len].
/// Only that CPU writes and reads its row (a request runs on one CPU from its start to
/// its answer, copyin and copyout included), so plain atomics do, no lock.
static WINDOWS: [[[AtomicU64; 2]; MAX_BUFFERS]; MAX_CPUS] =
    [const { [const { [const { AtomicU64::new(0) }; 2] }; MAX_BUFFERS] }; MAX_CPUS];

/// Opens exactly the windows `bufs` (at most [`MAX_BUFFERS`]) for this CPU's request.
fn open_windows(bufs: &[Window]) {
    let Some(row) = WINDOWS.get(cpu::id()) else {
        return;
    };
    for (i, w) in row.iter().enumerate() {
        let (addr, len) = bufs.get(i).map_or((0, 0), |b| (b.addr, b.len));
        w[0].store(addr, Ordering::Relaxed);
        w[1].store(len, Ordering::Relaxed);
    }
}
/// VM_RUN requests (and lane jobs) waiting for a run CPU.
static RUNS_WAITING: AtomicUsize = AtomicUsize::new(0);
/// Whether another run waits for a run CPU: a queued job, or a client waiting on a
/// lane other than the one executing.
fn others_wait() -> bool {
    RUNS_WAITING.load(Ordering::Acquire) > 0 || lanes::OTHER_WAITS.load(Ordering::Acquire) > 0
}
/// When the current run on each CPU started (counter ticks), 0 when none.
static RUN_START: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Whether a run CPU other than this one is in a run.
fn other_runs() -> bool {
    let me = cpu::id();
    RUN_START
        .iter()
        .enumerate()
        .any(|(c, s)| c != me && s.load(Ordering::Acquire) != 0)
}

/// Marks the start (`true`) or end of a run on this CPU, for slicing.
fn run_started(on: bool) {
    let v = if on { timer::now().max(1) } else { 0 };
    RUN_START[cpu::id()].store(v, Ordering::Release);
}

/// The testbed `Host` with copyin/copyout limited to the current request's buffers and
/// `should_yield` answering "another VM_RUN is waiting and this one had its slice".
#[derive(Debug)]
pub struct ServerHost(host::TestbedHost);

fn in_window(uaddr: u64, len: usize) -> bool {
    let Some(end) = uaddr.checked_add(len as u64) else {
        return false;
    };
    let Some(row) = WINDOWS.get(cpu::id()) else {
        return false;
    };
    row.iter().any(|w| {
        let (a, l) = (w[0].load(Ordering::Relaxed), w[1].load(Ordering::Relaxed));
        l != 0 && uaddr >= a && end <= a + l
    })
}

impl Host for ServerHost {
    type Mutex = SpinMutex;
    type Timer = Timer;
    fn exit_to_user(&self, exit: &vmm_sys::abi::VmExit, x: &[u64; 31]) {
        lanes::exit_to_user(exit, x);
    }
    fn alloc_contig(&self, len: usize, align: usize) -> KResult<PhysMem> {
        self.0.alloc_contig(len, align)
    }
    fn free_contig(&self, mem: PhysMem) {
        self.0.free_contig(mem)
    }
    fn pa_to_va(&self, pa: u64) -> Option<NonNull<u8>> {
        self.0.pa_to_va(pa)
    }
    fn va_to_pa(&self, va: *const u8) -> Option<u64> {
        self.0.va_to_pa(va)
    }
    fn map_el2(&self, pa: u64, len: usize) -> KResult<()> {
        self.0.map_el2(pa, len)
    }
    fn unmap_el2(&self, pa: u64, len: usize) {
        self.0.unmap_el2(pa, len)
    }
    fn sync_caches_for_guest(&self, va: NonNull<u8>, len: usize) {
        self.0.sync_caches_for_guest(va, len)
    }
    fn cpu_count(&self) -> usize {
        self.0.cpu_count()
    }
    fn current_cpu(&self) -> usize {
        self.0.current_cpu()
    }
    fn run_on_all_cpus(&self, f: &(dyn Fn(usize) + Sync)) {
        self.0.run_on_all_cpus(f)
    }
    fn kick_cpu(&self, cpu: usize) {
        self.0.kick_cpu(cpu)
    }
    fn intr_disable(&self) -> u64 {
        self.0.intr_disable()
    }
    fn intr_restore(&self, token: u64) {
        self.0.intr_restore(token)
    }
    fn hold_vtimer_irq(&self, held: bool) {
        self.0.hold_vtimer_irq(held)
    }
    /// A long allocation on the serving CPU gives up when its client's "gone" frame
    /// (the broker's word that the client disconnected) has arrived meanwhile.
    fn alloc_interrupted(&self) -> bool {
        let client = SERVING.load(Ordering::Acquire);
        if client == NOBODY || cpu::id() != CHANNEL_CPU {
            return false;
        }
        let mut ch = CHANNEL.lock();
        let Some((con, stream)) = ch.as_mut() else {
            return false;
        };
        con.receive(stream);
        client_gone(stream, client)
    }
    fn should_yield(&self) -> bool {
        let c = cpu::id();
        let Some(start) = RUN_START.get(c).map(|s| s.load(Ordering::Acquire)) else {
            return false;
        };
        is_run_cpu(c)
            && others_wait()
            && start != 0
            && timer::now().saturating_sub(start) > slice_ticks()
    }
    /// The run CPU is shared by every vCPU the testbed serves.
    fn traps_wfe(&self) -> bool {
        true
    }
    /// A vCPU in a WFE loop gives the run CPU up at once when another run or another
    /// lane's request waits: it has nothing to do until someone else does something.
    fn wfe_should_yield(&self) -> bool {
        is_run_cpu(cpu::id()) && (others_wait() || lanes::unserved())
    }
    fn sleep(
        &self,
        chan: usize,
        deadline: Option<u64>,
        still_sleep: &dyn Fn() -> bool,
    ) -> SleepResult {
        // A vCPU asleep in WFI yields the run CPU like one in the guest: the sleep ends
        // as interrupted (a BOGUS exit, what a signal does on FreeBSD), or a guest
        // waiting for an interrupt only another queued vCPU would send never wakes.
        // No slice to wait out: a vCPU going to sleep has no use for the CPU, while a
        // queued run (another vCPU printing a console byte per exit) would wait a whole
        // slice per exit.
        let waiting = || is_run_cpu(cpu::id()) && others_wait();
        if still_sleep() && waiting() {
            return SleepResult::Interrupted;
        }
        let r = self
            .0
            .sleep(chan, deadline, &|| still_sleep() && !waiting());
        if r == SleepResult::Woken && still_sleep() && waiting() {
            return SleepResult::Interrupted;
        }
        r
    }
    fn wakeup(&self, chan: usize) {
        self.0.wakeup(chan)
    }
    fn counter(&self) -> u64 {
        self.0.counter()
    }
    fn counter_freq(&self) -> u64 {
        self.0.counter_freq()
    }
    fn timer_create(&self, func: fn(usize), arg: usize) -> KResult<Timer> {
        self.0.timer_create(func, arg)
    }
    fn timer_arm(&self, t: &Timer, deadline: u64) {
        self.0.timer_arm(t, deadline)
    }
    fn timer_cancel(&self, t: &Timer) {
        self.0.timer_cancel(t)
    }
    fn copyin(&self, uaddr: u64, dst: &mut [u8]) -> KResult<()> {
        if !in_window(uaddr, dst.len()) {
            return Err(Errno::EFAULT);
        }
        self.0.copyin(uaddr, dst)
    }
    fn copyout(&self, src: &[u8], uaddr: u64) -> KResult<()> {
        if !in_window(uaddr, src.len()) {
            return Err(Errno::EFAULT);
        }
        self.0.copyout(src, uaddr)
    }
    fn log(&self, args: fmt::Arguments<'_>) {
        self.0.log(args)
    }
    fn el2_addr(&self, mem: &PhysMem) -> u64 {
        self.0.el2_addr(mem)
    }
    unsafe fn enter_guest(&self, ctx: &PhysMem) -> u64 {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { self.0.enter_guest(ctx) }
    }
    unsafe fn hyp_call(&self, func: u64, args: &[u64; 7]) -> u64 {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { self.0.hyp_call(func, args) }
    }
}

fn slice_ticks() -> u64 {
    timer::freq() / 1000 * SLICE_MS
}

type Core = Vmm<ServerHost>;

/// VMs reinitialised since their last run: their memory is rewritten through the CPU
/// before the next VM_RUN (a loader wrote the new image through the RAM file, where
/// QEMU's TCG may still hold translations of the old code).
static REINIT: SpinLock<Vec<Vec<u8>>> = SpinLock::new_spin(Vec::new());
/// Whether [`REINIT`] holds any VM (changed under its lock), so that a VM_RUN looks at
/// the list only then.
static REINIT_ANY: AtomicBool = AtomicBool::new(false);

/// Executes one request message and returns the response message.
fn execute(core: &Core, msg: &[u8]) -> Vec<u8> {
    match wire::parse_request(msg) {
        Ok(req) => execute_parsed(core, &req),
        Err(e) => {
            kprintln!("serve: bad request: {e}");
            response(0, Errno::EINVAL.0, &[], &[])
        }
    }
}

/// Executes one parsed request and returns the response message.
fn execute_parsed(core: &Core, req: &WireRequest<'_>) -> Vec<u8> {
    let mut arg = req.arg.to_vec();
    let mut bufs: Vec<(wire::WireDir, Vec<u8>)> = Vec::with_capacity(MAX_BUFFERS);
    let mut windows = [Window::NONE; MAX_BUFFERS];
    for (b, w) in req.buffers().zip(windows.iter_mut()) {
        let mut data = match b.data {
            Some(d) => d.to_vec(),
            None => vec![0; b.len],
        };
        *w = Window {
            ptr_offset: b.ptr_offset,
            addr: data.as_mut_ptr() as u64,
            len: data.len() as u64,
        };
        bufs.push((b.dir, data));
    }
    let r = run_one(core, req.into(), &mut arg, &windows[..bufs.len()], None);
    let errno = errno_of(core, req.into(), r);
    let outs: Vec<&[u8]> = bufs
        .iter()
        .filter(|b| b.0.is_out())
        .map(|b| b.1.as_slice())
        .collect();
    response(req.cmd, errno, &arg, &outs)
}

/// The response's errno for `req`'s result `r`. The core answers ENOENT for an unknown
/// name (among other things): the client is told "no such VM" only when the VM is
/// really absent.
fn errno_of(core: &Core, req: Call<'_>, r: KResult<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(Errno::ENOENT) if req.vm.is_some_and(|n| !vm_exists(core, n)) => wire::ERR_NO_SUCH_VM,
        Err(e) => e.0,
    }
}

/// Where one of a request's pointer fields points while it executes: `len` bytes at
/// `addr`, memory the caller keeps for the whole call (the one place the core's
/// copyin/copyout may reach, [`in_window`]).
#[derive(Clone, Copy)]
struct Window {
    ptr_offset: usize,
    addr: u64,
    len: u64,
}

impl Window {
    const NONE: Window = Window {
        ptr_offset: 0,
        addr: 0,
        len: 0,
    };
}

/// Whether VM `name` exists (kick_vcpu looks the name up before it checks the vCPU
/// number, so an impossible vCPU number makes it a side-effect-free lookup).
fn vm_exists(core: &Core, name: &[u8]) -> bool {
    core.kick_vcpu(name, usize::MAX) != Err(Errno::ENOENT)
}

fn response(cmd: u64, errno: i32, arg: &[u8], outs: &[&[u8]]) -> Vec<u8> {
    // Measured first, so the bytes go into one allocation (growing the vector piece by
    // piece cost a reallocation and a copy per piece, on every exit).
    let mut len = 0;
    wire::write_response(cmd, errno, arg, outs.iter().copied(), &mut |b| {
        len += b.len()
    });
    let mut v = Vec::with_capacity(len);
    wire::write_response(cmd, errno, arg, outs.iter().copied(), &mut |b| {
        v.extend_from_slice(b)
    });
    v
}

/// A request to execute: its VM (`None`: /dev/vmmctl) and its command.
#[derive(Clone, Copy)]
struct Call<'a> {
    vm: Option<&'a [u8]>,
    cmd: u64,
}

impl<'a> From<&WireRequest<'a>> for Call<'a> {
    fn from(r: &WireRequest<'a>) -> Self {
        Call {
            vm: r.vm,
            cmd: r.cmd,
        }
    }
}

/// Executes `req` with its argument `arg` and its buffers at `bufs` (one window per
/// buffer, in request order); `lane`: the lane slot that carried it.
fn run_one(
    core: &Core,
    req: Call<'_>,
    arg: &mut [u8],
    bufs: &[Window],
    lane: Option<usize>,
) -> KResult<()> {
    let dev = match req.vm {
        None => DeviceRef::Ctl,
        Some(n) => DeviceRef::Vm(n),
    };
    match (req.cmd, req.vm) {
        (wire::TESTBED_GPA_TO_PA, Some(name)) => return gpa_to_pa(core, name, arg),
        (wire::TESTBED_FREE_PAGES, None) => {
            let free = crate::kernel::mm::free_pages() as u64;
            arg.get_mut(..8)
                .ok_or(Errno::EINVAL)?
                .copy_from_slice(&free.to_le_bytes());
            return Ok(());
        }
        (wire::TESTBED_LANE_STATS, None) => return lanes::stats(arg),
        (wire::TESTBED_MAXMEM, None) => {
            if u64_at(arg, 8) == 1 {
                core.set_max_guest_mem(u64_at(arg, 0));
            }
            let (used, max) = core.guest_mem();
            let out = arg.get_mut(..16).ok_or(Errno::EINVAL)?;
            out[..8].copy_from_slice(&max.to_le_bytes());
            out[8..].copy_from_slice(&used.to_le_bytes());
            return Ok(());
        }
        (wire::TESTBED_LANE_OPEN, Some(name)) => {
            if !vm_exists(core, name) {
                return Err(Errno::ENOENT);
            }
            let pa = lanes::open(name, u64_at(arg, 0), u64_at(arg, 8))?;
            arg.get_mut(8..16)
                .ok_or(Errno::EINVAL)?
                .copy_from_slice(&pa.to_le_bytes());
            return Ok(());
        }
        (wire::TESTBED_SYNC, Some(name)) => {
            let gpa = u64_at(arg, 0);
            return sync_range(core, name, gpa, u64_at(arg, 8));
        }
        (wire::TESTBED_SYNC_LIST, Some(name)) => {
            let count = usize::try_from(u64_at(arg, 8)).map_err(|_| Errno::EINVAL)?;
            let w = bufs.first().ok_or(Errno::EINVAL)?;
            // SAFETY: a window names memory its caller keeps for the call (`Window`),
            // here the request's own copy of the buffer (the broker's path: lanes do
            // not carry this request).
            let ranges =
                unsafe { core::slice::from_raw_parts(w.addr as *const u8, w.len as usize) };
            if count > wire::SYNC_LIST_MAX || ranges.len() != count * 16 {
                return Err(Errno::EINVAL);
            }
            for r in ranges.chunks_exact(16) {
                sync_range(core, name, u64_at(r, 0), u64_at(r, 8))?;
            }
            return Ok(());
        }
        (ioctl::VM_RUN, Some(name)) if REINIT_ANY.load(Ordering::SeqCst) => {
            let pending = {
                let mut r = REINIT.lock();
                let before = r.len();
                r.retain(|n| n.as_slice() != name);
                REINIT_ANY.store(!r.is_empty(), Ordering::SeqCst);
                r.len() != before
            };
            if pending {
                sync_all(core, name)?;
            }
        }
        _ => {}
    }
    // Point each pointer field at its window and open exactly those windows.
    for b in bufs {
        arg[b.ptr_offset..b.ptr_offset + 8].copy_from_slice(&b.addr.to_le_bytes());
    }
    open_windows(bufs);
    // Register hints the request may void: before a run (its vCPU's registers change
    // while it lasts), after anything else (a hint read before the change landed
    // would otherwise carry the new generation).
    let vm_run = req.cmd == ioctl::VM_RUN;
    if req.vm.is_some() && vm_run {
        lanes::registers_may_change(req.cmd, arg, lane);
    }
    let r = core.dispatch(dev, req.cmd, arg);
    if req.vm.is_some() && !vm_run {
        lanes::registers_may_change(req.cmd, arg, lane);
    }
    open_windows(&[]);
    for b in bufs {
        arg[b.ptr_offset..b.ptr_offset + 8].fill(0);
    }
    if r.is_ok() && req.cmd == ioctl::VM_REINIT {
        if let Some(n) = req.vm {
            let mut r = REINIT.lock();
            r.push(n.to_vec());
            REINIT_ANY.store(true, Ordering::SeqCst);
        }
    }
    if r.is_ok() && req.cmd == ioctl::VMMCTL_VM_DESTROY {
        if let Some(d) = vmm_sys::abi::VmmctlVmDestroy::from_bytes(arg) {
            lanes::destroyed(d.name_bytes());
        }
    }
    r
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn gpa_to_pa(core: &Core, name: &[u8], arg: &mut [u8]) -> KResult<()> {
    let gpa = u64_at(arg, 0);
    let (pa, _, len) = core.gpa_to_pa(name, gpa).ok_or(Errno::ENOENT)?;
    arg[8..16].copy_from_slice(&pa.to_le_bytes());
    arg[16..24].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Rewrites guest memory `[gpa, gpa + len)` through this CPU (load and store every
/// word), which makes QEMU's TCG drop translated code for those pages, then cleans the
/// caches for the guest as the core does for new memory.
fn sync_range(core: &Core, name: &[u8], gpa: u64, len: u64) -> KResult<()> {
    let end = gpa.checked_add(len).ok_or(Errno::EINVAL)?;
    if !gpa.is_multiple_of(8) || !len.is_multiple_of(8) {
        return Err(Errno::EINVAL);
    }
    let mut at = gpa;
    while at < end {
        let (_, va, avail) = core.gpa_to_pa(name, at).ok_or(Errno::ENOENT)?;
        let n = avail.min(end - at);
        for i in (0..n).step_by(8) {
            // SAFETY: `va` is the core's kernel address of guest memory with `avail`
            // contiguous bytes; i < n <= avail and both are 8-byte aligned (gpa is and
            // guest memory chunks are page aligned).
            unsafe {
                let p = va.add(i as usize) as *mut u64;
                core::ptr::write_volatile(p, core::ptr::read_volatile(p));
            }
        }
        if let Some(v) = NonNull::new(va) {
            core.host().sync_caches_for_guest(v, n as usize);
        }
        at += n;
    }
    Ok(())
}

/// Every mapping of VM `name`, rewritten (see `sync_range`).
fn sync_all(core: &Core, name: &[u8]) -> KResult<()> {
    let mut gpa = 0u64;
    loop {
        let mut bytes = VmMemmap {
            gpa,
            ..Default::default()
        }
        .as_bytes()
        .to_vec();
        match core.dispatch(DeviceRef::Vm(name), ioctl::VM_MMAP_GETNEXT, &mut bytes) {
            Ok(()) => {}
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        }
        let m = VmMemmap::from_bytes(&bytes).ok_or(Errno::EINVAL)?;
        // Unmapped holes inside a mapping cannot exist; skip what is not memory.
        let _ = sync_range(core, name, m.gpa, m.len);
        gpa = match m.gpa.checked_add(m.len.max(PAGE)) {
            Some(g) => g,
            None => return Ok(()),
        };
    }
}

/// A VM_RUN handed to a run CPU, or (`lane`) a job serving the lanes.
struct Job {
    core: &'static Core,
    client: u32,
    seq: u32,
    msg: Vec<u8>,
    reply: Vec<u8>,
    lane: bool,
    done: AtomicBool,
}

fn run_job(arg: u64) -> u64 {
    // SAFETY: `serve` passed a leaked `Box<Job>` it reclaims only once `done` is set.
    let job = unsafe { &mut *(arg as *mut Job) };
    if job.lane {
        lanes::serve(job.core);
    } else {
        run_started(true);
        job.reply = execute(job.core, &job.msg);
        run_started(false);
    }
    job.done.store(true, Ordering::Release);
    gic::send_sgi(0, gic::SGI_WAKE);
    0
}

/// A client's wait for its lane's answer (`TESTBED_LANE_WAIT`), answered by CPU 0
/// when the answer is there.
struct LaneWait {
    client: u32,
    seq: u32,
    lane_pa: u64,
    lane_seq: u32,
}

/// Brings the core up and serves requests forever.
pub fn run() -> ! {
    let mut ncpu = 1;
    for c in 1..MAX_CPUS {
        match cpu::start_secondary(c) {
            Ok(()) => ncpu += 1,
            // QEMU has fewer CPUs than the kernel could use: the ones it has run.
            Err(crate::kernel::psci::INVALID_PARAMETERS) if c > 1 => break,
            Err(e) => {
                kprintln!("SERVE error: cpu {c} did not start (PSCI {e})");
                crate::kernel::psci::system_off();
            }
        }
    }
    let Some(params) = host::prepare() else {
        kprintln!("SERVE error: cannot prepare the EL2 blob");
        crate::kernel::psci::system_off()
    };
    let core: &'static Core = match Vmm::new(ServerHost(host::TestbedHost::new()), params) {
        Ok(v) => Box::leak(Box::new(v)),
        Err((_, e)) => {
            kprintln!("SERVE error: Vmm::new: {e:?}");
            crate::kernel::psci::system_off()
        }
    };
    if !lanes::init() {
        kprintln!("SERVE error: no memory for the lanes");
        crate::kernel::psci::system_off()
    }
    let con = match VirtioConsole::probe() {
        Ok(c) => c,
        Err(e) => {
            kprintln!("SERVE error: {e}");
            crate::kernel::psci::system_off()
        }
    };
    kprintln!(
        "SERVE ready: virtio console irq {}, {} cpus, {} free pages",
        con.intid,
        ncpu,
        crate::kernel::mm::free_pages()
    );
    *CHANNEL.lock() = Some((con, Vec::new()));
    serve(core, ncpu)
}

/// The console and the bytes read from it not yet taken as frames: shared by `serve`
/// and [`ServerHost::alloc_interrupted`], which looks there for its client's "gone"
/// frame while a long allocation runs on the serving CPU.
static CHANNEL: SpinLock<Option<(VirtioConsole, Vec<u8>)>> = SpinLock::new_spin(None);
/// The client whose request the serving CPU is executing ([`NOBODY`]: none).
static SERVING: AtomicU32 = AtomicU32::new(NOBODY);
const NOBODY: u32 = u32::MAX;

/// Takes the next whole frame off `stream` (resynchronising past a bad header).
fn next_frame(stream: &mut Vec<u8>) -> Option<(Frame, Vec<u8>)> {
    loop {
        let h: [u8; FRAME_HEADER] = stream.get(..FRAME_HEADER)?.try_into().ok()?;
        let f = match Frame::decode(&h) {
            Ok(f) => f,
            Err(e) => {
                // Out of step: drop one byte at a time until a header parses.
                kprintln!("serve: bad frame header ({e}); resynchronising");
                stream.remove(0);
                continue;
            }
        };
        let total = FRAME_HEADER + f.len as usize;
        if stream.len() < total {
            return None;
        }
        let msg = stream[FRAME_HEADER..total].to_vec();
        stream.drain(..total);
        return Some((f, msg));
    }
}

/// Whether `stream` already holds client `client`'s "gone" frame (an empty one).
fn client_gone(stream: &[u8], client: u32) -> bool {
    let mut at = 0usize;
    while let Some(h) = stream.get(at..at + FRAME_HEADER) {
        let Ok(h) = <[u8; FRAME_HEADER]>::try_from(h) else {
            return false;
        };
        let Ok(f) = Frame::decode(&h) else {
            return false;
        };
        if f.len == 0 && f.client == client {
            return true;
        }
        at += FRAME_HEADER + f.len as usize;
    }
    false
}

fn new_job(core: &'static Core, client: u32, seq: u32, msg: Vec<u8>, lane: bool) -> Box<Job> {
    Box::new(Job {
        core,
        client,
        seq,
        msg,
        reply: Vec::new(),
        lane,
        done: AtomicBool::new(false),
    })
}

/// Queues a lane job unless one is queued or free to take requests already (a busy
/// one, executing a long VM_RUN, serves no other lane meanwhile: a second one takes
/// another run CPU).
fn queue_lane_job(core: &'static Core, queue: &mut VecDeque<Box<Job>>) {
    if lanes::job_queued() {
        RUNS_WAITING.fetch_add(1, Ordering::AcqRel);
        queue.push_back(new_job(core, 0, 0, Vec::new(), true));
    }
}

/// The lane requests CPU 0 answers itself: `TESTBED_LANE_KICK` (start serving) and
/// `TESTBED_LANE_WAIT` (answered now, or queued in `waits`). `false`: not one of them.
fn lane_control(
    core: &'static Core,
    f: &Frame,
    msg: &[u8],
    queue: &mut VecDeque<Box<Job>>,
    waits: &mut Vec<LaneWait>,
) -> bool {
    let Ok(req) = wire::parse_request(msg) else {
        return false;
    };
    let (Some(name), true) = (req.vm, req.arg.len() >= 8) else {
        return false;
    };
    match req.cmd {
        wire::TESTBED_LANE_KICK => {
            queue_lane_job(core, queue);
            send(f.client, f.seq, &response(req.cmd, 0, req.arg, &[]));
        }
        wire::TESTBED_LANE_WAIT if req.arg.len() >= 24 => {
            let (vcpu, token) = (u64_at(req.arg, 0), u64_at(req.arg, 8));
            let lane_seq = u64_at(req.arg, 16) as u32;
            match lanes::wait_done(name, vcpu, token, lane_seq) {
                Ok(errno) => {
                    // No such lane: its VM's destroy gave it back, or the VM never was.
                    let errno = if errno == Errno::ENOENT.0 && !vm_exists(core, name) {
                        wire::ERR_NO_SUCH_VM
                    } else {
                        errno
                    };
                    send(f.client, f.seq, &response(req.cmd, errno, req.arg, &[]))
                }
                Err(lane_pa) => {
                    waits.push(LaneWait {
                        client: f.client,
                        seq: f.seq,
                        lane_pa,
                        lane_seq,
                    });
                    // Posted, not taken, and nobody free to serve it (a kick lost in a
                    // job's last moments, or every lane job busy in a run): serve.
                    if !lanes::claimed(lane_pa) {
                        queue_lane_job(core, queue);
                    }
                }
            }
        }
        _ => return false,
    }
    true
}

/// Answers the waits whose lane has its answer now (or is gone) and counts the others
/// whose lane no job is executing.
fn answer_waits(waits: &mut Vec<LaneWait>) {
    waits.retain(|w| match lanes::wait_over(w.lane_pa, w.lane_seq) {
        Some(errno) => {
            let mut arg = [0u8; 24];
            arg[16..].copy_from_slice(&u64::from(w.lane_seq).to_le_bytes());
            send(
                w.client,
                w.seq,
                &response(wire::TESTBED_LANE_WAIT, errno, &arg, &[]),
            );
            false
        }
        None => true,
    });
    let others = waits.iter().filter(|w| !lanes::claimed(w.lane_pa)).count();
    lanes::OTHER_WAITS.store(others, Ordering::Release);
}

/// Sends the wake SGI to every run CPU with a job (`running[c]` set): a vCPU asleep in
/// WFI gives the CPU up at once when runs wait (ServerHost::sleep), a running one costs
/// one host-interrupt exit and looks at its slice.
fn kick_busy(running: &[Option<*mut Job>; MAX_CPUS]) {
    for (c, r) in running.iter().enumerate() {
        if r.is_some() {
            gic::send_sgi(c, gic::SGI_WAKE);
        }
    }
}

fn serve(core: &'static Core, ncpu: usize) -> ! {
    let mut queue: VecDeque<Box<Job>> = VecDeque::new();
    // The job each run CPU executes.
    let mut running: [Option<*mut Job>; MAX_CPUS] = [None; MAX_CPUS];
    let mut waits: Vec<LaneWait> = Vec::new();
    let mut last_kick = 0u64;
    loop {
        let mut progress = match CHANNEL.lock().as_mut() {
            Some((con, stream)) => {
                con.ack();
                con.receive(stream)
            }
            None => false,
        };
        // Runs (and lane waits) that came in this round: busy run CPUs are told.
        let mut queued = 0usize;
        // Whole frames: execute (or queue a VM_RUN), answer.
        loop {
            let frame = CHANNEL.lock().as_mut().and_then(|(_, s)| next_frame(s));
            let Some((f, msg)) = frame else {
                break;
            };
            progress = true;
            if msg.is_empty() {
                // The broker's "client gone": its waiting runs are dropped, its running
                // ones are kicked back out of the guest (the answers go nowhere).
                let before = queue.len();
                queue.retain(|j| j.lane || j.client != f.client);
                waits.retain(|w| w.client != f.client);
                RUNS_WAITING.fetch_sub(before - queue.len(), Ordering::AcqRel);
                for p in running.iter().flatten() {
                    // SAFETY: the job stays alive while `running` holds it; only its
                    // immutable request fields are read.
                    let job = unsafe { &**p };
                    if !job.lane && job.client == f.client {
                        kick_run(core, &job.msg);
                    }
                }
                continue;
            }
            if lane_control(core, &f, &msg, &mut queue, &mut waits) {
                queued += 1;
            } else if is_run(&msg) {
                queued += 1;
                RUNS_WAITING.fetch_add(1, Ordering::AcqRel);
                queue.push_back(new_job(core, f.client, f.seq, msg, false));
            } else {
                SERVING.store(f.client, Ordering::Release);
                let reply = execute(core, &msg);
                SERVING.store(NOBODY, Ordering::Release);
                send(f.client, f.seq, &reply);
            }
        }
        // Finished runs: answer them.
        for (c, slot) in running.iter_mut().enumerate() {
            let Some(p) = *slot else {
                continue;
            };
            // SAFETY: `p` came from Box::into_raw below and is still owned here.
            if !unsafe { &*p }.done.load(Ordering::Acquire) {
                continue;
            }
            cpu::wait(c);
            // SAFETY: the run CPU is done with the job (done, mailbox empty).
            let job = unsafe { Box::from_raw(p) };
            if job.lane {
                // A request posted while the job was ending (its client saw it
                // serving, or its kick came before the end): serve again.
                if lanes::unserved() {
                    queue_lane_job(core, &mut queue);
                }
            } else {
                send(job.client, job.seq, &job.reply);
            }
            *slot = None;
            progress = true;
        }
        // Free run CPUs: start the next runs.
        for (c, slot) in running.iter_mut().enumerate().take(ncpu) {
            if slot.is_some() || !is_run_cpu(c) {
                continue;
            }
            let Some(job) = queue.pop_front() else {
                break;
            };
            RUNS_WAITING.fetch_sub(1, Ordering::AcqRel);
            let p = Box::into_raw(job);
            *slot = Some(p);
            cpu::post(c, run_job, p as u64);
            progress = true;
        }
        answer_waits(&mut waits);
        let others = !queue.is_empty() || lanes::OTHER_WAITS.load(Ordering::Acquire) > 0;
        if others && queued > 0 {
            // New runs wait for busy CPUs: make vCPUs asleep in WFI give theirs up now.
            kick_busy(&running);
        }
        // Others wait: the running ones get a slice, then an SGI so they look again.
        let mut slice_end = None;
        if others && running.iter().any(Option::is_some) {
            let now = timer::now();
            if now.saturating_sub(last_kick) > slice_ticks() {
                kick_busy(&running);
                last_kick = now;
            }
            // The timer fires at or after `slice_end`. If its interrupt is taken (and
            // the one-shot timer disabled) before the masked check below, the check
            // sees the slice over and skips the WFI, which nothing else might end.
            slice_end = Some(now.saturating_add(slice_ticks()));
            timer::arm(slice_ticks());
        }
        // Idle: zero a little of the memory destroyed VMs left (mm::scrub), then look
        // at the channel again.
        if !progress && crate::kernel::mm::scrub(SCRUB_BATCH) {
            continue;
        }
        if !progress {
            // The core's timers are due while every other CPU may be in a guest that
            // never exits (a spinning vCPU's kick for its queued MMIO stores): polled
            // here, the WFI ending by the nearest.
            crate::kernel::host::timer_tick();
            let timer_due = crate::kernel::host::next_timer_deadline();
            if let Some(d) = timer_due {
                let wake = slice_end.map_or(d, |e| e.min(d));
                timer::arm(wake.saturating_sub(timer::now()).max(1));
            }
            let jobs = running;
            cpu::wait_for_interrupt(|| {
                // SAFETY: as above; a job is alive while `running` holds it.
                let run_done = jobs
                    .iter()
                    .flatten()
                    .any(|p| unsafe { &**p }.done.load(Ordering::Acquire));
                let slice_over = slice_end.is_some_and(|e| timer::now() >= e);
                let timer_over = timer_due.is_some_and(|d| timer::now() >= d);
                let pending = CHANNEL.lock().as_ref().is_some_and(|(c, _)| c.pending());
                let answerable = waits
                    .iter()
                    .any(|w| lanes::wait_over(w.lane_pa, w.lane_seq).is_some());
                !run_done && !pending && !slice_over && !timer_over && !answerable
            });
        }
    }
}

/// Makes the VM_RUN in `msg` return to userspace soon (`Vmm::kick_vcpu`).
fn kick_run(core: &Core, msg: &[u8]) {
    let Ok(r) = wire::parse_request(msg) else {
        return;
    };
    let (Some(name), Some(run)) = (r.vm, VmRun::from_bytes(r.arg)) else {
        return;
    };
    if let Ok(vcpu) = usize::try_from(run.cpuid) {
        let _ = core.kick_vcpu(name, vcpu);
    }
}

fn is_run(msg: &[u8]) -> bool {
    wire::parse_request(msg).is_ok_and(|r| r.cmd == ioctl::VM_RUN)
}

fn send(client: u32, seq: u32, reply: &[u8]) {
    let h = Frame {
        client,
        seq,
        len: reply.len() as u32,
    }
    .encode();
    if let Some((con, _)) = CHANNEL.lock().as_mut() {
        con.send(&[&h, reply]);
    }
}
