//! The fake host of the unit tests: fake physical memory (one big zeroed allocation,
//! PA = `PHYS_BASE` + offset) with a page allocator that checks every free against its
//! allocation, a fake user address space for copyin/copyout, fake CPUs that run the EL2
//! handshake, and an interpreter for the hypercalls; its guest entry (`Host::enter_guest`) pops a scripted
//! exit, applies its register effects to the context and records what the "guest" saw
//! at entry; TLB invalidations are logged together with whether the invalidated entry
//! was already cleared (break-before-make).
// Test code: a panic here is a test failure, which is what these checks are for.
#![allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::panic,
    clippy::expect_used
)]

use crate::errno::{Errno, KResult};
use crate::host::{Host, PhysMem, RawMutex, SleepResult, PAGE_SIZE};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use vmm_sys::arm64::regs::s2;
use vmm_sys::hyp::{self, VcpuContext};

pub const PHYS_BASE: u64 = 0x4000_0000;
/// EL2 address of the fake blob's init vectors and of the stub's vectors.
pub const INIT_VECTORS: u64 = 0x1000;
pub const STUB_VECTORS: u64 = 0x2000;
pub const EL2_TTBR0: u64 = 0x3000;

pub struct SpinMutex(AtomicBool);

// SAFETY: compare_exchange from false to true succeeds for one thread at a time, and only
// the holder stores false.
unsafe impl RawMutex for SpinMutex {
    fn new() -> Self {
        SpinMutex(AtomicBool::new(false))
    }
    fn lock(&self) {
        while self
            .0
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::thread::yield_now();
        }
    }
    fn try_lock(&self) -> bool {
        self.0
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }
    fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }
}

/// What the scripted guest does before one exit.
pub struct Scripted {
    pub kind: u32,
    pub esr: u64,
    pub far: u64,
    pub hpfar: u64,
    /// Applied to the context before the exit is recorded (the guest's own work and
    /// what the hardware sets, such as the PC).
    pub effect: Box<dyn FnOnce(&mut VcpuContext) + Send>,
}

impl Scripted {
    pub fn sync(esr: u64) -> Scripted {
        Scripted {
            kind: hyp::excp::EL1_SYNC,
            esr,
            far: 0,
            hpfar: 0,
            effect: Box::new(|_| {}),
        }
    }
    pub fn with(mut self, f: impl FnOnce(&mut VcpuContext) + Send + 'static) -> Scripted {
        self.effect = Box::new(f);
        self
    }
    /// A stage-2 abort at `ipa` (FAR carries the same page offset).
    pub fn abort(esr: u64, ipa: u64) -> Scripted {
        Scripted {
            kind: hyp::excp::EL1_SYNC,
            esr,
            far: 0xffff_0000_0000_0000 | (ipa & 0xfff),
            hpfar: (ipa >> 12) << 4,
            effect: Box::new(|_| {}),
        }
    }
    pub fn irq() -> Scripted {
        Scripted {
            kind: hyp::excp::EL1_IRQ,
            esr: 0,
            far: 0,
            hpfar: 0,
            effect: Box::new(|_| {}),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlbi {
    pub func: u64,
    pub vttbr: u64,
    pub start: u64,
    pub end: u64,
    pub last_level: bool,
    /// For a range: no valid leaf covered `start` at the time (break-before-make).
    pub entry_was_clear: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuEl2 {
    Stub,
    InitVectors,
    Up {
        stack_top: u64,
        tcr: u64,
        sctlr: u64,
        vtcr: u64,
    },
}

struct Phys {
    /// Page allocated?
    used: Vec<bool>,
    allocs: HashMap<u64, usize>,
}

pub struct FakeHost {
    base: NonNull<u8>,
    size: usize,
    phys: Mutex<Phys>,
    pub el2_mapped: Mutex<HashSet<u64>>,
    pub ncpu: usize,
    pub cpus: Mutex<Vec<CpuEl2>>,
    /// Return value of the init hypercall (0 = success).
    pub init_result: AtomicU64,
    pub script: Mutex<VecDeque<Scripted>>,
    /// The context as each guest entry found it.
    pub entries: Mutex<Vec<VcpuContext>>,
    pub tlbis: Mutex<Vec<Tlbi>>,
    /// (start level, IPA bits) for the fake's own walk at TLBI time.
    pub s2_walk: Mutex<(u32, u32)>,
    user: Mutex<BTreeMap<u64, Vec<u8>>>,
    next_user: AtomicU64,
    pub kicks: AtomicUsize,
    pub synced_bytes: AtomicUsize,
    pub signal: AtomicBool,
    /// Calls to `sleep`, to tell sleeping from spinning.
    pub sleeps: AtomicUsize,
    /// Run once at the next `intr_disable` (the moment between the vGIC flush and the
    /// guest entry), to inject something there.
    #[allow(clippy::type_complexity)]
    pub on_intr_disable: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// Every live timer the core created.
    timers: Mutex<Vec<TimerEntry>>,
    /// Every `timer_arm` (Some(deadline)) and `timer_cancel` (None), in order.
    pub timer_arms: Mutex<Vec<Option<u64>>>,
    /// Every `hold_vtimer_irq` call, in order.
    pub vtimer_holds: Mutex<Vec<bool>>,
    /// What HYP_READ_REGISTER(HYP_REG_ICH_VTR) answers.
    pub ich_vtr: AtomicU64,
    intr_off: AtomicBool,
    sleepq: Mutex<HashMap<usize, u64>>,
    cv: Condvar,
    start: Instant,
    pub log: Mutex<Vec<String>>,
}

// SAFETY: the raw pointer names the fake memory, owned by the FakeHost for its whole
// life; every other field is Sync.
unsafe impl Send for FakeHost {}
// SAFETY: as above; accesses to the fake memory are made by the core under its locks.
unsafe impl Sync for FakeHost {}

impl Drop for FakeHost {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.size, 2 << 20).unwrap();
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.base.as_ptr(), layout) };
    }
}

thread_local! {
    static CPU: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl FakeHost {
    /// A host with `mib` MiB of fake physical memory and `ncpu` CPUs.
    pub fn new(mib: usize, ncpu: usize) -> FakeHost {
        let size = mib << 20;
        let layout = std::alloc::Layout::from_size_align(size, 2 << 20).unwrap();
        // SAFETY: non-zero size.
        let base = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).unwrap();
        FakeHost {
            base,
            size,
            phys: Mutex::new(Phys {
                used: vec![false; size / PAGE_SIZE],
                allocs: HashMap::new(),
            }),
            el2_mapped: Mutex::new(HashSet::new()),
            ncpu,
            cpus: Mutex::new(vec![CpuEl2::Stub; ncpu]),
            init_result: AtomicU64::new(0),
            script: Mutex::new(VecDeque::new()),
            entries: Mutex::new(Vec::new()),
            tlbis: Mutex::new(Vec::new()),
            s2_walk: Mutex::new((1, 39)),
            user: Mutex::new(BTreeMap::new()),
            next_user: AtomicU64::new(0x1000_0000),
            kicks: AtomicUsize::new(0),
            synced_bytes: AtomicUsize::new(0),
            signal: AtomicBool::new(false),
            sleeps: AtomicUsize::new(0),
            on_intr_disable: Mutex::new(None),
            vtimer_holds: Mutex::new(Vec::new()),
            timers: Mutex::new(Vec::new()),
            timer_arms: Mutex::new(Vec::new()),
            ich_vtr: AtomicU64::new(FAKE_ICH_VTR),
            intr_off: AtomicBool::new(false),
            sleepq: Mutex::new(HashMap::new()),
            cv: Condvar::new(),
            start: Instant::now(),
            log: Mutex::new(Vec::new()),
        }
    }

    pub fn pages_in_use(&self) -> usize {
        self.phys
            .lock()
            .unwrap()
            .used
            .iter()
            .filter(|u| **u)
            .count()
    }

    /// Runs the callback of every live, armed timer whose deadline has passed (as the
    /// host's timer interrupt would) and disarms it; returns how many ran.
    pub fn fire_due_timers(&self) -> usize {
        let now = self.counter();
        let due: Vec<(fn(usize), usize)> = self
            .timers
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| {
                let mut g = e.lock().unwrap();
                match *g {
                    Some((f, a, Some(d))) if d <= now => {
                        *g = Some((f, a, None));
                        Some((f, a))
                    }
                    _ => None,
                }
            })
            .collect();
        for (f, a) in &due {
            f(*a);
        }
        due.len()
    }

    pub fn push(&self, s: Scripted) {
        self.script.lock().unwrap().push_back(s);
    }

    pub fn read_phys_u64(&self, pa: u64) -> u64 {
        let off = (pa - PHYS_BASE) as usize;
        assert!(off + 8 <= self.size);
        // SAFETY: in bounds of the fake memory; u64 read unaligned-safe.
        unsafe { self.base.as_ptr().add(off).cast::<u64>().read_unaligned() }
    }

    /// Maps `len` bytes of fake user memory and returns its address.
    pub fn user_alloc(&self, len: usize) -> u64 {
        let a = self
            .next_user
            .fetch_add(((len as u64 + 0xfff) & !0xfff) + 0x1000, Ordering::SeqCst);
        self.user.lock().unwrap().insert(a, vec![0; len]);
        a
    }
    pub fn user_write(&self, uaddr: u64, data: &[u8]) {
        self.copyout(data, uaddr).unwrap();
    }
    pub fn user_read(&self, uaddr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.copyin(uaddr, &mut v).unwrap();
        v
    }

    fn user_range<R>(&self, uaddr: u64, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> KResult<R> {
        let mut u = self.user.lock().unwrap();
        let (base, buf) = u.range_mut(..=uaddr).next_back().ok_or(Errno::EFAULT)?;
        let off = (uaddr - *base) as usize;
        let end = off.checked_add(len).ok_or(Errno::EFAULT)?;
        if end > buf.len() {
            return Err(Errno::EFAULT);
        }
        Ok(f(&mut buf[off..end]))
    }

    /// The fake's own stage-2 walk (independent of the core's), for BBM checks.
    pub fn walk(&self, vttbr: u64, ipa: u64) -> Option<(u64, u64, u32)> {
        let (start, bits) = *self.s2_walk.lock().unwrap();
        if ipa >> bits != 0 {
            return None;
        }
        let mut table = vttbr & s2::OA_MASK;
        let mut lvl = start;
        loop {
            let shift = 12 + 9 * (3 - lvl);
            let idx = if lvl == start {
                ipa >> shift
            } else {
                (ipa >> shift) & 511
            };
            let e = self.read_phys_u64(table + idx * 8);
            if e & 1 == 0 {
                return None;
            }
            if lvl == 3 || e & 2 == 0 {
                let mask = (1u64 << shift) - 1;
                return Some(((e & s2::OA_MASK & !mask) | (ipa & mask), e, lvl));
            }
            table = e & s2::OA_MASK;
            lvl += 1;
        }
    }

    fn ctx_at(&self, pa: u64) -> *mut VcpuContext {
        let off = (pa - PHYS_BASE) as usize;
        assert!(off + std::mem::size_of::<VcpuContext>() <= self.size);
        // SAFETY: in bounds (checked above).
        unsafe { self.base.as_ptr().add(off).cast::<VcpuContext>() }
    }

    fn run_script(&self, ctx_pa: u64) -> u64 {
        assert!(
            self.intr_off.load(Ordering::SeqCst),
            "entered with interrupts on"
        );
        assert!(
            self.el2_mapped.lock().unwrap().contains(&(ctx_pa & !0xfff)),
            "context not mapped for EL2"
        );
        // SAFETY: the core passed the PA of its context page, inside the fake memory and
        // page aligned; it does not touch the context during the call.
        let ctx = unsafe { &mut *self.ctx_at(ctx_pa) };
        let root = ctx.el2.vttbr_el2 & s2::OA_MASK;
        assert!(
            self.phys.lock().unwrap().allocs.contains_key(&root),
            "stage-2 root is not allocated memory"
        );
        self.entries.lock().unwrap().push(*ctx);
        let next = self.script.lock().unwrap().pop_front();
        let Some(s) = next else {
            // Nothing scripted: the guest idles until an interrupt.
            std::thread::sleep(Duration::from_millis(1));
            ctx.exit = hyp::ExitInfo {
                kind: hyp::excp::EL1_IRQ,
                ..Default::default()
            };
            return u64::from(hyp::excp::EL1_IRQ);
        };
        (s.effect)(ctx);
        ctx.exit = hyp::ExitInfo {
            kind: s.kind,
            _pad0: 0,
            esr_el2: s.esr,
            far_el2: s.far,
            hpfar_el2: s.hpfar,
        };
        u64::from(s.kind)
    }
}

/// A fake host timer: (callback, argument, armed deadline), shared with the host's
/// registry so a test can fire it; dropping it unregisters it.
type TimerEntry = Arc<Mutex<Option<(fn(usize), usize, Option<u64>)>>>;

pub struct FakeTimer {
    entry: TimerEntry,
}

impl Drop for FakeTimer {
    fn drop(&mut self) {
        *self.entry.lock().unwrap() = None;
    }
}

impl Host for FakeHost {
    type Mutex = SpinMutex;
    type Timer = FakeTimer;

    fn alloc_contig(&self, len: usize, align: usize) -> KResult<PhysMem> {
        assert!(len > 0 && len.is_multiple_of(PAGE_SIZE), "bad length {len}");
        assert!(align.is_power_of_two() && align >= PAGE_SIZE);
        let mut p = self.phys.lock().unwrap();
        let n = len / PAGE_SIZE;
        let step = align / PAGE_SIZE;
        let total = p.used.len();
        let mut i = 0;
        while i + n <= total {
            if p.used[i..i + n].iter().all(|u| !u) {
                p.used[i..i + n].iter_mut().for_each(|u| *u = true);
                let pa = PHYS_BASE + (i * PAGE_SIZE) as u64;
                p.allocs.insert(pa, len);
                // SAFETY: in bounds of the fake memory.
                let va = unsafe { self.base.as_ptr().add(i * PAGE_SIZE) };
                // SAFETY: the range is ours now; zero it as the contract says.
                unsafe { std::ptr::write_bytes(va, 0, len) };
                return Ok(PhysMem {
                    va: NonNull::new(va).unwrap(),
                    pa,
                    len,
                });
            }
            i += step;
        }
        Err(Errno::ENOMEM)
    }

    fn free_contig(&self, mem: PhysMem) {
        let mut p = self.phys.lock().unwrap();
        let len = p
            .allocs
            .remove(&mem.pa)
            .expect("free of memory never allocated");
        assert_eq!(len, mem.len, "free with another length than allocated");
        assert_eq!(Some(mem.va), self.pa_to_va(mem.pa), "free with another VA");
        let i = ((mem.pa - PHYS_BASE) as usize) / PAGE_SIZE;
        p.used[i..i + len / PAGE_SIZE]
            .iter_mut()
            .for_each(|u| *u = false);
        // Poison freed memory so use-after-free shows.
        // SAFETY: in bounds, no longer used by the core.
        unsafe { std::ptr::write_bytes(mem.va.as_ptr(), 0xa5, len) };
    }

    fn pa_to_va(&self, pa: u64) -> Option<NonNull<u8>> {
        let off = pa.checked_sub(PHYS_BASE)? as usize;
        if off >= self.size {
            return None;
        }
        // SAFETY: in bounds.
        NonNull::new(unsafe { self.base.as_ptr().add(off) })
    }

    fn va_to_pa(&self, va: *const u8) -> Option<u64> {
        let off = (va as usize).checked_sub(self.base.as_ptr() as usize)?;
        (off < self.size).then(|| PHYS_BASE + off as u64)
    }

    fn map_el2(&self, pa: u64, len: usize) -> KResult<()> {
        let mut m = self.el2_mapped.lock().unwrap();
        for p in (pa..pa + len as u64).step_by(PAGE_SIZE) {
            assert!(m.insert(p), "page {p:#x} mapped for EL2 twice");
        }
        Ok(())
    }

    fn unmap_el2(&self, pa: u64, len: usize) {
        let mut m = self.el2_mapped.lock().unwrap();
        for p in (pa..pa + len as u64).step_by(PAGE_SIZE) {
            assert!(
                m.remove(&p),
                "page {p:#x} unmapped from EL2 but never mapped"
            );
        }
    }

    fn sync_caches_for_guest(&self, _va: NonNull<u8>, len: usize) {
        self.synced_bytes.fetch_add(len, Ordering::SeqCst);
    }

    fn cpu_count(&self) -> usize {
        self.ncpu
    }
    fn current_cpu(&self) -> usize {
        CPU.with(|c| c.get())
    }
    fn run_on_all_cpus(&self, f: &(dyn Fn(usize) + Sync)) {
        let saved = self.current_cpu();
        for cpu in 0..self.ncpu {
            CPU.with(|c| c.set(cpu));
            f(cpu);
        }
        CPU.with(|c| c.set(saved));
    }
    fn kick_cpu(&self, _cpu: usize) {
        self.kicks.fetch_add(1, Ordering::SeqCst);
    }
    fn intr_disable(&self) -> u64 {
        let was = u64::from(self.intr_off.swap(true, Ordering::SeqCst));
        let hook = self.on_intr_disable.lock().unwrap().take();
        if let Some(f) = hook {
            f();
        }
        was
    }
    fn intr_restore(&self, token: u64) {
        self.intr_off.store(token != 0, Ordering::SeqCst);
    }
    fn should_yield(&self) -> bool {
        self.signal.load(Ordering::SeqCst)
    }
    fn hold_vtimer_irq(&self, held: bool) {
        assert!(
            self.intr_off.load(Ordering::SeqCst),
            "vtimer PPI held or released with interrupts on"
        );
        self.vtimer_holds.lock().unwrap().push(held);
    }

    fn sleep(
        &self,
        chan: usize,
        deadline: Option<u64>,
        still_sleep: &dyn Fn() -> bool,
    ) -> SleepResult {
        self.sleeps.fetch_add(1, Ordering::SeqCst);
        let mut q = self.sleepq.lock().unwrap();
        if !still_sleep() {
            return SleepResult::Woken;
        }
        let gen = *q.get(&chan).unwrap_or(&0);
        loop {
            if self.signal.load(Ordering::SeqCst) {
                return SleepResult::Interrupted;
            }
            if *q.get(&chan).unwrap_or(&0) != gen {
                return SleepResult::Woken;
            }
            let now = self.counter();
            let wait = match deadline {
                Some(d) if d <= now => return SleepResult::TimedOut,
                Some(d) => Duration::from_nanos(d - now).min(Duration::from_millis(10)),
                None => Duration::from_millis(10),
            };
            q = self.cv.wait_timeout(q, wait).unwrap().0;
        }
    }
    fn wakeup(&self, chan: usize) {
        let mut q = self.sleepq.lock().unwrap();
        *q.entry(chan).or_insert(0) += 1;
        self.cv.notify_all();
    }
    fn counter(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64 + 1_000_000
    }
    fn counter_freq(&self) -> u64 {
        1_000_000_000
    }
    fn timer_create(&self, func: fn(usize), arg: usize) -> KResult<FakeTimer> {
        let entry: TimerEntry = Arc::new(Mutex::new(Some((func, arg, None))));
        self.timers.lock().unwrap().push(entry.clone());
        Ok(FakeTimer { entry })
    }
    fn timer_arm(&self, t: &FakeTimer, deadline: u64) {
        if let Some(e) = t.entry.lock().unwrap().as_mut() {
            e.2 = Some(deadline);
        }
        self.timer_arms.lock().unwrap().push(Some(deadline));
    }
    fn timer_cancel(&self, t: &FakeTimer) {
        if let Some(e) = t.entry.lock().unwrap().as_mut() {
            e.2 = None;
        }
        self.timer_arms.lock().unwrap().push(None);
    }

    fn copyin(&self, uaddr: u64, dst: &mut [u8]) -> KResult<()> {
        self.user_range(uaddr, dst.len(), |b| dst.copy_from_slice(b))
    }
    fn copyout(&self, src: &[u8], uaddr: u64) -> KResult<()> {
        self.user_range(uaddr, src.len(), |b| b.copy_from_slice(src))
    }

    fn log(&self, args: std::fmt::Arguments<'_>) {
        self.log.lock().unwrap().push(args.to_string());
    }

    unsafe fn enter_guest(&self, ctx: &PhysMem) -> u64 {
        self.run_script(ctx.pa)
    }

    unsafe fn hyp_call(&self, func: u64, args: &[u64; 7]) -> u64 {
        let cpu = self.current_cpu();
        match func {
            hyp::HYP_S2_TLBI_RANGE => {
                let was_clear = self.walk(args[0], args[1]).is_none();
                self.tlbis.lock().unwrap().push(Tlbi {
                    func,
                    vttbr: args[0],
                    start: args[1],
                    end: args[2],
                    last_level: args[3] != 0,
                    entry_was_clear: was_clear,
                });
                0
            }
            hyp::HYP_S2_TLBI_ALL => {
                self.tlbis.lock().unwrap().push(Tlbi {
                    func,
                    vttbr: args[0],
                    start: 0,
                    end: 0,
                    last_level: false,
                    entry_was_clear: true,
                });
                0
            }
            hyp::HYP_READ_REGISTER if args[0] == hyp::HYP_REG_ICH_VTR => {
                assert!(
                    matches!(self.cpus.lock().unwrap()[cpu], CpuEl2::Up { .. }),
                    "register read before the EL2 code is up"
                );
                self.ich_vtr.load(Ordering::SeqCst)
            }
            hyp::HYP_CLEANUP => {
                assert_eq!(args[0], STUB_VECTORS);
                self.cpus.lock().unwrap()[cpu] = CpuEl2::Stub;
                0
            }
            INIT_VECTORS => {
                let mut c = self.cpus.lock().unwrap();
                assert_eq!(c[cpu], CpuEl2::Stub, "init vectors installed twice");
                c[cpu] = CpuEl2::InitVectors;
                0
            }
            EL2_TTBR0 => {
                let mut c = self.cpus.lock().unwrap();
                if c[cpu] != CpuEl2::InitVectors {
                    return hyp::HYP_RET_UNKNOWN;
                }
                let r = self.init_result.load(Ordering::SeqCst);
                assert!(self
                    .el2_mapped
                    .lock()
                    .unwrap()
                    .contains(&((args[0] - 1) & !0xfff)));
                if r == 0 {
                    c[cpu] = CpuEl2::Up {
                        stack_top: args[0],
                        tcr: args[1],
                        sctlr: args[2],
                        vtcr: args[3],
                    };
                }
                r
            }
            _ => hyp::HYP_RET_UNKNOWN,
        }
    }
}

/// ICH_VTR_EL2 of the fake CPUs: ListRegs = 3 (four list registers), PRIbits 5,
/// PREbits 5, IDbits 16 (QEMU's cortex-a57).
pub const FAKE_ICH_VTR: u64 = 0x9000_0003;

/// Init parameters matching the fake, for a host with a 44-bit PA range (cortex-a57).
pub fn params() -> crate::InitParams {
    crate::InitParams {
        hyp_init_vectors_pa: INIT_VECTORS,
        hyp_stub_vectors_pa: STUB_VECTORS,
        el2_ttbr0: EL2_TTBR0,
        id_regs: crate::IdRegs {
            midr: 0x411f_d070,
            pfr0: 0x0000_0000_0100_2222, // GIC 1, AdvSIMD/FP 0, EL3..EL0 AArch64+32
            pfr1: 0,
            dfr0: 0x1030_5106,
            isar0: 0x0001_1120,
            isar1: 0x0000_0000_1100_0110, // pretend PAC fields set, to see them cleared
            isar2: 0,
            mmfr0: 0x0000_0000_0000_1124, // PARange 4 = 44 bits
            mmfr1: 0x0000_0000_0000_0100, // VH = 1
            mmfr2: 0x0000_0000_0100_0000, // NV = 1
        },
    }
}
