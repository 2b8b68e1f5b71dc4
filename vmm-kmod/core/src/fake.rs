//! The fake host: fake physical memory (one big zeroed allocation, PA = `PHYS_BASE` +
//! offset) with a page allocator that checks every free against its allocation, a fake
//! user address space for copyin/copyout, fake CPUs that run the EL2 handshake, and an
//! interpreter for the hypercalls; its guest entry (`Host::enter_guest`) pops a scripted
//! exit, applies its register effects to the context and records what the "guest" saw
//! at entry; TLB invalidations are logged together with whether the invalidated entry
//! was already cleared (break-before-make).
//!
//! Used by the core's unit tests and, with the `fake-host` feature, by other crates'
//! tests (libvmmapi's in-process backend). Those run vCPUs on threads of their own:
//! inside [`FakeHost::run_guest`] an entry plays the script of that VM's vCPU
//! ([`FakeHost::script`]) and, with nothing scripted, blocks until a script arrives, a
//! CPU is kicked (suspend, destroy, an interrupt) or the run's deadline passes.
// Test code (the core's tests and other crates' test doubles): a panic here is a test
// failure, which is what these checks are for.
#![allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::panic,
    clippy::expect_used
)]

use crate::errno::{Errno, KResult};
use crate::host::{Host, PhysMem, SleepResult, PAGE_SIZE};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use vmm_sys::arm64::esr;
use vmm_sys::arm64::regs::s2;
use vmm_sys::hyp::{self, VcpuContext};

pub const PHYS_BASE: u64 = 0x4000_0000;
/// EL2 address of the fake blob's init vectors and of the stub's vectors.
pub const INIT_VECTORS: u64 = 0x1000;
pub const STUB_VECTORS: u64 = 0x2000;
pub const EL2_TTBR0: u64 = 0x3000;

/// What the scripted guest does before one exit.
pub struct Scripted {
    pub kind: u32,
    pub esr: u64,
    pub far: u64,
    pub hpfar: u64,
    /// Applied to the context before the exit is recorded (the guest's own work and
    /// what the hardware sets, such as the PC).
    pub effect: Box<dyn FnOnce(&mut VcpuContext) + Send>,
    /// A signal is pending for the vCPU's thread after this exit (`Host::should_yield`
    /// answers true once), so the run loop returns BOGUS.
    pub signal: bool,
}

impl Scripted {
    pub fn sync(esr: u64) -> Scripted {
        Scripted {
            kind: hyp::excp::EL1_SYNC,
            esr,
            far: 0,
            hpfar: 0,
            effect: Box::new(|_| {}),
            signal: false,
        }
    }
    pub fn with(mut self, f: impl FnOnce(&mut VcpuContext) + Send + 'static) -> Scripted {
        self.effect = Box::new(f);
        self
    }
    /// Adds `f` after the effect already there (to look at or change what the guest
    /// has at this exit).
    pub fn then(mut self, f: impl FnOnce(&mut VcpuContext) + Send + 'static) -> Scripted {
        let first = self.effect;
        self.effect = Box::new(move |c| {
            first(c);
            f(c);
        });
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
            signal: false,
        }
    }
    pub fn irq() -> Scripted {
        Scripted {
            kind: hyp::excp::EL1_IRQ,
            esr: 0,
            far: 0,
            hpfar: 0,
            effect: Box::new(|_| {}),
            signal: false,
        }
    }

    // --- Guest-level events at a given PC, as the hardware reports them ------------

    /// `hvc #0` with x0, x1... = `x` (at most 8; the other registers as they are); the
    /// PC (ELR_EL2, already past the HVC) is `pc`.
    pub fn hvc(pc: u64, x: &[u64]) -> Scripted {
        assert!(x.len() <= 8, "SMCCC passes x0..x7");
        let mut regs = [0; 8];
        regs[..x.len()].copy_from_slice(x);
        let n = x.len();
        Scripted::sync(esr::esr(esr::ec::HVC64, true, 0)).with(move |c| {
            c.x[..n].copy_from_slice(&regs[..n]);
            c.pc = pc;
        })
    }
    /// A load of `size` bytes (1, 2, 4, 8) into Xrt (31 = XZR) at `pc` from `gpa`,
    /// which must be outside guest RAM: a stage-2 translation fault with a valid
    /// syndrome (MMU off, so FAR = the IPA). `sign_extend`: LDRS* to an X register.
    pub fn mmio_read(pc: u64, gpa: u64, size: u8, sign_extend: bool, rt: u8) -> Scripted {
        let mut s = Scripted::abort(mmio_esr(size, sign_extend, false, rt), gpa);
        s.far = gpa;
        s.with(move |c| c.pc = pc)
    }
    /// A store of `size` bytes of Xrt (31 = XZR) at `pc` to `gpa`; with `value`, the
    /// guest first puts it in Xrt.
    pub fn mmio_write(pc: u64, gpa: u64, size: u8, rt: u8, value: Option<u64>) -> Scripted {
        let mut s = Scripted::abort(mmio_esr(size, false, true, rt), gpa);
        s.far = gpa;
        s.with(move |c| {
            if let (Some(x), Some(v)) = (c.x.get_mut(usize::from(rt)), value) {
                *x = v;
            }
            c.pc = pc;
        })
    }
    /// `wfi` at `pc` (trapped by HCR_EL2.TWI).
    pub fn wfi(pc: u64) -> Scripted {
        Scripted::sync(esr::esr(esr::ec::WFX, true, 0)).with(move |c| c.pc = pc)
    }
    /// A trapped MSR/MRS at `pc` with syndrome `iss` (Op0, Op2, Op1, CRn, Rt, CRm,
    /// direction).
    pub fn sysreg(pc: u64, iss: u32) -> Scripted {
        Scripted::sync(esr::esr(esr::ec::SYS64, true, iss)).with(move |c| c.pc = pc)
    }
    /// `brk #imm` at `pc` (reaches EL2 with the BRK_EXIT capability, MDCR_EL2.TDE).
    pub fn brk(pc: u64, imm: u16) -> Scripted {
        Scripted::sync(esr::esr(esr::ec::BRK64, true, u32::from(imm))).with(move |c| c.pc = pc)
    }
    /// A host interrupt while a signal is pending for the vCPU's thread: VM_RUN
    /// returns BOGUS at `pc`.
    pub fn signal(pc: u64) -> Scripted {
        let mut s = Scripted::irq().with(move |c| c.pc = pc);
        s.signal = true;
        s
    }
}

/// ESR_EL2 of a data abort from a lower EL with a valid syndrome on an unmapped IPA
/// (translation fault, level 3).
fn mmio_esr(size: u8, sign_extend: bool, write: bool, rt: u8) -> u64 {
    use esr::dabt;
    let sas = match size {
        1 => 0,
        2 => 1,
        4 => 2,
        8 => 3,
        _ => panic!("access size {size}"),
    };
    let mut iss = dabt::ISV
        | (sas << dabt::SAS_SHIFT)
        | (u32::from(rt & 31) << dabt::SRT_SHIFT)
        | dabt::fsc::TRANS_L3;
    if sign_extend {
        iss |= dabt::SSE | dabt::SF;
    }
    if size == 8 {
        iss |= dabt::SF;
    }
    if write {
        iss |= dabt::WNR;
    }
    esr::esr(esr::ec::DABT_LOW, true, iss)
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
    /// A VHE host's CPU: the kernel itself at EL2; no stub, nothing to install.
    Vhe,
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
    /// Page written since the fake memory was made (so it must be zeroed before it is
    /// handed out again); untouched pages are still the allocator's zeroes, which lets
    /// a test give its guests realistic sizes without paying for them.
    dirty: Vec<bool>,
    /// Userspace mappings of the page ([`FakeHost::pin`]).
    pins: Vec<u32>,
    /// Freed by the core while pinned: reused only once the last pin goes (as a VM's
    /// memory outlives the VM while a process still maps it).
    zombie: Vec<bool>,
    allocs: HashMap<u64, usize>,
}

/// Which scripted guest runs on this thread ([`FakeHost::run_guest`]).
struct GuestRun {
    vm: Vec<u8>,
    vcpu: u32,
    deadline: Instant,
    /// `Guests::kicks` when this thread last disabled interrupts (just before the core
    /// publishes that the vCPU is in the guest): a later kick exits the guest at once,
    /// as an IPI that arrived with interrupts off would.
    kicks_seen: u64,
    timed_out: bool,
}

/// The per-vCPU scripts of [`FakeHost::run_guest`].
#[derive(Default)]
struct Guests {
    scripts: HashMap<(Vec<u8>, u32), VecDeque<Scripted>>,
    /// Every `kick_cpu`, counted (the fake CPUs are threads, so a kick reaches all).
    kicks: u64,
}

pub struct FakeHost {
    base: NonNull<u8>,
    size: usize,
    /// What `base` was carved from (aligned up inside it), for the deallocation.
    block: (*mut u8, std::alloc::Layout),
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
    /// What `traps_wfe` and `wfe_should_yield` answer.
    pub trap_wfe: AtomicBool,
    pub wfe_yield: AtomicBool,
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
    /// Interrupts the next guest-memory allocation once it asked this many times
    /// (1: at its first check; 0: never).
    pub interrupt_alloc_after: AtomicUsize,
    /// Per CPU: whether HYP_VGIC_CLEAR emptied its list registers (a guest entered on a
    /// CPU that was not fails the test).
    pub vgic_cleared: Mutex<Vec<bool>>,
    guests: Mutex<Guests>,
    guests_cv: Condvar,
    sleepq: Mutex<HashMap<usize, u64>>,
    cv: Condvar,
    start: Instant,
    pub log: Mutex<Vec<String>>,
}

// SAFETY: the raw pointers name the fake memory, owned by the FakeHost for its whole
// life; every other field is Sync.
unsafe impl Send for FakeHost {}
// SAFETY: as above; accesses to the fake memory are made by the core under its locks.
unsafe impl Sync for FakeHost {}

impl Drop for FakeHost {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.block.0, self.block.1) };
    }
}

thread_local! {
    static CPU: Cell<usize> = const { Cell::new(0) };
    /// Interrupts are off on this thread's fake CPU (each thread is a CPU of its own
    /// for this purpose: vCPU threads enter their guests concurrently).
    static INTR_OFF: Cell<bool> = const { Cell::new(false) };
    /// A scripted exit left a signal pending for this thread ([`Scripted::signal`]).
    static SIGNAL_ONCE: Cell<bool> = const { Cell::new(false) };
    static GUEST: RefCell<Option<GuestRun>> = const { RefCell::new(None) };
}

/// Alignment of the fake physical memory (2 MiB blocks for stage 2).
const PHYS_ALIGN: usize = 2 << 20;

impl FakeHost {
    /// A host with `mib` MiB of fake physical memory and `ncpu` CPUs.
    /// A fake VHE host: its CPUs run the kernel at EL2, so the core must make no stub
    /// or blob call (each one fails the test).
    pub fn new_vhe(mib: usize, ncpu: usize) -> FakeHost {
        let h = FakeHost::new(mib, ncpu);
        *h.cpus.lock().unwrap() = vec![CpuEl2::Vhe; ncpu];
        h
    }

    pub fn new(mib: usize, ncpu: usize) -> FakeHost {
        let size = mib << 20;
        // A small alignment, so a large block comes zeroed from calloc (fresh pages,
        // not written until used); the base is aligned up inside it.
        let layout = std::alloc::Layout::from_size_align(size + PHYS_ALIGN, 16).unwrap();
        // SAFETY: non-zero size.
        let block = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!block.is_null(), "no memory for {mib} MiB of fake RAM");
        let pad = block.align_offset(PHYS_ALIGN);
        // SAFETY: pad < PHYS_ALIGN, so base..base + size lies inside the block.
        let base = NonNull::new(unsafe { block.add(pad) }).unwrap();
        let pages = size / PAGE_SIZE;
        FakeHost {
            base,
            size,
            block: (block, layout),
            phys: Mutex::new(Phys {
                used: vec![false; pages],
                dirty: vec![false; pages],
                pins: vec![0; pages],
                zombie: vec![false; pages],
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
            trap_wfe: AtomicBool::new(false),
            wfe_yield: AtomicBool::new(false),
            sleeps: AtomicUsize::new(0),
            on_intr_disable: Mutex::new(None),
            vtimer_holds: Mutex::new(Vec::new()),
            timers: Mutex::new(Vec::new()),
            timer_arms: Mutex::new(Vec::new()),
            ich_vtr: AtomicU64::new(FAKE_ICH_VTR),
            vgic_cleared: Mutex::new(vec![false; ncpu]),
            interrupt_alloc_after: AtomicUsize::new(0),
            guests: Mutex::new(Guests::default()),
            guests_cv: Condvar::new(),
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

    /// Returns page `k` to the allocator, poisoned so that a use after free shows.
    fn release_page(&self, p: &mut Phys, k: usize) {
        p.used[k] = false;
        // SAFETY: in bounds, no longer used by the core nor mapped by a user.
        unsafe { std::ptr::write_bytes(self.base.as_ptr().add(k * PAGE_SIZE), 0xa5, PAGE_SIZE) };
    }

    /// Page indices of `[pa, pa + len)`, which must be allocated fake memory.
    fn page_range(&self, p: &Phys, pa: u64, len: usize) -> std::ops::Range<usize> {
        let first = ((pa - PHYS_BASE) as usize) / PAGE_SIZE;
        let end = ((pa - PHYS_BASE) as usize + len).div_ceil(PAGE_SIZE);
        assert!(end <= p.used.len() && p.used[first..end].iter().all(|u| *u));
        first..end
    }

    /// A userspace mapping of `[pa, pa + len)` starts (mmap of guest memory): until
    /// [`FakeHost::unpin`], the pages are not reused even if the core frees them.
    pub fn pin(&self, pa: u64, len: usize) {
        let mut p = self.phys.lock().unwrap();
        for k in self.page_range(&p, pa, len) {
            p.pins[k] += 1;
        }
    }

    /// The mapping [`FakeHost::pin`] made is gone; pages the core freed meanwhile are
    /// returned to the allocator.
    pub fn unpin(&self, pa: u64, len: usize) {
        let mut p = self.phys.lock().unwrap();
        for k in self.page_range(&p, pa, len) {
            p.pins[k] -= 1;
            if p.pins[k] == 0 && p.zombie[k] {
                p.zombie[k] = false;
                self.release_page(&mut p, k);
            }
        }
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
    /// How many fake user regions are mapped.
    pub fn user_regions(&self) -> usize {
        self.user.lock().unwrap().len()
    }
    /// Unmaps fake user memory from [`FakeHost::user_alloc`].
    pub fn user_free(&self, uaddr: u64) {
        self.user.lock().unwrap().remove(&uaddr);
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
        assert!(INTR_OFF.get(), "entered with interrupts on");
        assert!(
            self.el2_mapped.lock().unwrap().contains(&(ctx_pa & !0xfff)),
            "context not mapped for EL2"
        );
        assert!(
            self.vgic_cleared.lock().unwrap()[self.current_cpu()],
            "guest entered on a CPU whose list registers were never emptied"
        );
        // SAFETY: the core passed the PA of its context page, inside the fake memory and
        // page aligned; it does not touch the context during the call.
        let ctx = unsafe { &mut *self.ctx_at(ctx_pa) };
        let root = ctx.el2.vttbr_el2 & s2::OA_MASK;
        assert!(
            self.phys.lock().unwrap().allocs.contains_key(&root),
            "stage-2 root is not allocated memory"
        );
        if GUEST.with_borrow(|g| g.is_some()) {
            return self.run_guest_script(ctx);
        }
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
        Self::exit_with(ctx, s)
    }

    /// The guest of the vCPU [`FakeHost::run_guest`] runs on this thread: its next
    /// scripted event, else it idles (no CPU used) until a script arrives (then it takes
    /// it), a CPU is kicked (an interrupt exit, after which the core looks at why), or
    /// the run's deadline passes (the entry is refused: VM_RUN fails with `ENXIO`).
    fn run_guest_script(&self, ctx: &mut VcpuContext) -> u64 {
        let (key, deadline, seen) = GUEST.with_borrow(|g| {
            let g = g.as_ref().unwrap();
            ((g.vm.clone(), g.vcpu), g.deadline, g.kicks_seen)
        });
        let mut g = self.guests.lock().unwrap();
        loop {
            if let Some(s) = g.scripts.get_mut(&key).and_then(|q| q.pop_front()) {
                drop(g);
                return Self::exit_with(ctx, s);
            }
            if g.kicks != seen {
                ctx.exit = hyp::ExitInfo {
                    kind: hyp::excp::EL1_IRQ,
                    ..Default::default()
                };
                return u64::from(hyp::excp::EL1_IRQ);
            }
            let now = Instant::now();
            if now >= deadline {
                GUEST.with_borrow_mut(|r| r.as_mut().unwrap().timed_out = true);
                return u64::MAX;
            }
            g = self.guests_cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    fn exit_with(ctx: &mut VcpuContext, s: Scripted) -> u64 {
        if s.signal {
            SIGNAL_ONCE.set(true);
        }
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

/// Scripted guests for vCPUs that run on threads of their own (other crates' tests).
impl FakeHost {
    /// Queues `s` for vCPU `vcpu` of VM `vm`: its guest plays it at an entry made inside
    /// [`FakeHost::run_guest`] for that vCPU, and a guest idling there takes it at once.
    pub fn script(&self, vm: &[u8], vcpu: u32, s: Scripted) {
        let mut g = self.guests.lock().unwrap();
        g.scripts
            .entry((vm.to_vec(), vcpu))
            .or_default()
            .push_back(s);
        self.guests_cv.notify_all();
    }

    /// Scripted events of vCPU `vcpu` of VM `vm` not yet played.
    pub fn scripted_left(&self, vm: &[u8], vcpu: u32) -> usize {
        let g = self.guests.lock().unwrap();
        g.scripts.get(&(vm.to_vec(), vcpu)).map_or(0, |q| q.len())
    }

    /// Drops every script of VM `vm` (it was destroyed: a new VM of the name starts
    /// with none).
    pub fn forget_scripts(&self, vm: &[u8]) {
        self.guests
            .lock()
            .unwrap()
            .scripts
            .retain(|(n, _), _| n != vm);
    }

    /// Runs `f` (a VM_RUN of vCPU `vcpu` of VM `vm` on this thread) with guest entries
    /// playing that vCPU's script; an entry that finds nothing to play idles until
    /// `timeout` from now has passed and is then refused. Returns `f`'s result and
    /// whether that happened.
    pub fn run_guest<R>(
        &self,
        vm: &[u8],
        vcpu: u32,
        timeout: Duration,
        f: impl FnOnce() -> R,
    ) -> (R, bool) {
        GUEST.set(Some(GuestRun {
            vm: vm.to_vec(),
            vcpu,
            deadline: Instant::now() + timeout,
            kicks_seen: self.guests.lock().unwrap().kicks,
            timed_out: false,
        }));
        // Cleared however `f` ends, so a panicking test leaves no guest behind.
        struct Clear;
        impl Drop for Clear {
            fn drop(&mut self) {
                GUEST.set(None);
                SIGNAL_ONCE.set(false);
            }
        }
        let clear = Clear;
        let r = f();
        let timed_out = GUEST.with_borrow(|g| g.as_ref().is_some_and(|g| g.timed_out));
        drop(clear);
        (r, timed_out)
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
    type Mutex = crate::sync::SpinMutex;
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
                for k in i..i + n {
                    if p.dirty[k] {
                        // SAFETY: the page is in bounds and ours now; zero it as the
                        // contract says (pages never handed out are still zero).
                        unsafe {
                            std::ptr::write_bytes(
                                self.base.as_ptr().add(k * PAGE_SIZE),
                                0,
                                PAGE_SIZE,
                            )
                        };
                    }
                    p.dirty[k] = true;
                }
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
        for k in i..i + len / PAGE_SIZE {
            if p.pins[k] != 0 {
                p.zombie[k] = true;
            } else {
                self.release_page(&mut p, k);
            }
        }
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
        let mut g = self.guests.lock().unwrap();
        g.kicks += 1;
        self.guests_cv.notify_all();
    }
    fn intr_disable(&self) -> u64 {
        let was = u64::from(INTR_OFF.replace(true));
        if GUEST.with_borrow(|g| g.is_some()) {
            let kicks = self.guests.lock().unwrap().kicks;
            GUEST.with_borrow_mut(|g| g.as_mut().unwrap().kicks_seen = kicks);
        }
        let hook = self.on_intr_disable.lock().unwrap().take();
        if let Some(f) = hook {
            f();
        }
        was
    }
    fn intr_restore(&self, token: u64) {
        INTR_OFF.set(token != 0);
    }
    fn should_yield(&self) -> bool {
        self.signal.load(Ordering::SeqCst) || SIGNAL_ONCE.replace(false)
    }
    fn traps_wfe(&self) -> bool {
        self.trap_wfe.load(Ordering::SeqCst)
    }
    fn wfe_should_yield(&self) -> bool {
        self.wfe_yield.load(Ordering::SeqCst)
    }
    fn alloc_interrupted(&self) -> bool {
        // After `interrupt_alloc_after` more chunks (0: never).
        let left = self.interrupt_alloc_after.load(Ordering::SeqCst);
        match left {
            0 => false,
            1 => true,
            n => {
                self.interrupt_alloc_after.store(n - 1, Ordering::SeqCst);
                false
            }
        }
    }
    fn hold_vtimer_irq(&self, held: bool) {
        assert!(
            INTR_OFF.get(),
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
                    matches!(
                        self.cpus.lock().unwrap()[cpu],
                        CpuEl2::Up { .. } | CpuEl2::Vhe
                    ),
                    "register read before the EL2 code is up"
                );
                self.ich_vtr.load(Ordering::SeqCst)
            }
            hyp::HYP_VGIC_CLEAR => {
                assert!(
                    matches!(
                        self.cpus.lock().unwrap()[cpu],
                        CpuEl2::Up { .. } | CpuEl2::Vhe
                    ),
                    "list registers cleared before the EL2 code is up"
                );
                self.vgic_cleared.lock().unwrap()[cpu] = true;
                0
            }
            hyp::HYP_CLEANUP => {
                assert_eq!(args[0], STUB_VECTORS);
                assert_ne!(
                    self.cpus.lock().unwrap()[cpu],
                    CpuEl2::Vhe,
                    "no stub on VHE"
                );
                self.cpus.lock().unwrap()[cpu] = CpuEl2::Stub;
                0
            }
            INIT_VECTORS => {
                let mut c = self.cpus.lock().unwrap();
                assert_ne!(c[cpu], CpuEl2::Vhe, "no stub on VHE");
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
        regime: crate::El2Regime::Nvhe {
            hyp_init_vectors_pa: INIT_VECTORS,
            hyp_stub_vectors_pa: STUB_VECTORS,
            el2_ttbr0: EL2_TTBR0,
        },
        id_regs: crate::IdRegs {
            midr: 0x411f_d070,
            pfr0: 0x0000_0000_0100_2222, // GIC 1, AdvSIMD/FP 0, EL3..EL0 AArch64+32
            pfr1: 0,
            dfr0: 0x1030_5106,
            isar0: 0x0001_1120,
            isar1: 0, // no pointer authentication (Armv8.0)
            isar2: 0,
            mmfr0: 0x0000_0000_0000_1124, // PARange 4 = 44 bits
            mmfr1: 0x0000_0000_0000_0100, // VH = 1
            mmfr2: 0x0000_0000_0100_0000, // NV = 1
            mpamidr: 0,
        },
        // No limit of its own: the fake's memory is the limit (tests set one).
        max_guest_mem: u64::MAX,
    }
}
