//! The testbed's implementation of vmm-core's `Host` trait: what the FreeBSD glue does
//! with kernel KPI, done with the testbed's own allocator, GIC, timer and CPUs. The
//! EL2 tables given to the core are identity mapped, 4 levels (the core's TCR_EL2 uses
//! 48-bit EL2 addresses), and hold the blob plus whatever `map_el2` adds.
//!
//! "User memory" for copyin/copyout is the testbed kernel's own memory: the in-kernel
//! tests pass pointers to their buffers as the user addresses of ioctl arguments, and
//! anything outside RAM's direct map is EFAULT.

extern crate alloc;
use crate::kernel::hyp::{hvc, stub_vectors_pa, sync_icache, EL2_BLOB};
use crate::kernel::mm::{self, pa_to_va, va_to_pa, KBASE, MAX_CPUS, PAGE, RAM_END, RAM_START};
use crate::kernel::mm::{TablePages, MAIR_WB};
use crate::{kernel::cpu, kernel::gic, kernel::timer, kprintln};
use alloc::sync::Arc;
use core::arch::global_asm;
use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use vmm_arm64::cache;
use vmm_core::el2pt::{attrs_code, attrs_data, El2Tables};
use vmm_core::sync::SpinLock;
use vmm_core::sync::SpinMutex;
use vmm_core::{El2Regime, Errno, Host, IdRegs, InitParams, KResult, PhysMem, SleepResult};
use vmm_sys::hyp::{HYP_EL2_TLBI, HYP_EL2_TLBI_VA};

/// The blob and EL2 tables the core runs on.
struct CoreEl2 {
    blob_pa: u64,
    blob_pages: usize,
    tables: El2Tables,
    /// True while our EL2 code is installed (EL2 TLB maintenance needs it).
    live: bool,
}

static CORE_EL2: SpinLock<Option<CoreEl2>> = SpinLock::new_spin(None);

/// The parameters for `Vmm::new`. On an nVHE host: copies the blob into fresh
/// contiguous pages and builds EL2 tables mapping it. On a VHE host there is nothing
/// to prepare: the kernel is at EL2 and runs the switch itself.
pub fn prepare() -> Option<InitParams> {
    if cpu::vhe_host() {
        return Some(InitParams {
            regime: El2Regime::Vhe,
            id_regs: IdRegs::read(),
            max_guest_mem: max_guest_mem(),
        });
    }
    let blob_pages = EL2_BLOB.len().div_ceil(PAGE as usize);
    let blob_pa = mm::alloc_pages(blob_pages)?;
    // SAFETY: the fresh pages are ours and large enough.
    unsafe {
        core::ptr::copy_nonoverlapping(
            EL2_BLOB.as_ptr(),
            pa_to_va(blob_pa) as *mut u8,
            EL2_BLOB.len(),
        )
    };
    sync_icache(blob_pa, blob_pages as u64 * PAGE);
    let mut tables = El2Tables::new(&TablePages).ok()?;
    if tables
        .map_identity(
            &TablePages,
            blob_pa,
            blob_pages * PAGE as usize,
            attrs_code(MAIR_WB),
        )
        .is_err()
    {
        tables.free(&TablePages);
        mm::free_pages_at(blob_pa, blob_pages);
        return None;
    }
    let root = tables.ttbr0();
    *CORE_EL2.lock() = Some(CoreEl2 {
        blob_pa,
        blob_pages,
        tables,
        live: true,
    });
    Some(InitParams {
        regime: El2Regime::Nvhe {
            hyp_init_vectors_pa: blob_pa,
            hyp_stub_vectors_pa: stub_vectors_pa(),
            el2_ttbr0: root,
        },
        id_regs: IdRegs::read(),
        max_guest_mem: max_guest_mem(),
    })
}

/// The testbed's limit on guest memory: what its page allocator has free at load less
/// an eighth (at least 16 MiB) for its own page tables, contexts and buffers, as
/// FreeBSD's default keeps a reserve of physical memory.
fn max_guest_mem() -> u64 {
    let free = mm::free_pages() as u64 * PAGE;
    free.saturating_sub((free / 8).max(16 << 20))
}

/// After `Vmm::shutdown`: frees the blob and the EL2 tables.
pub fn release() {
    if let Some(c) = CORE_EL2.lock().take() {
        mm::free_pages_at(c.blob_pa, c.blob_pages);
        c.tables.free(&TablePages);
    }
}

// The host's SVE state beyond what the world switch keeps (V0-V31: the low 128 bits of
// Z0-Z31): whole Z registers, P0-P15, FFR. x0 = a buffer of 32 vectors, 17 predicates.
global_asm!(
    r#"
    .arch_extension sve
    .text
    .balign 4
    .global testbed_sve_save
testbed_sve_save:
    str z0, [x0, #0, mul vl]
    str z1, [x0, #1, mul vl]
    str z2, [x0, #2, mul vl]
    str z3, [x0, #3, mul vl]
    str z4, [x0, #4, mul vl]
    str z5, [x0, #5, mul vl]
    str z6, [x0, #6, mul vl]
    str z7, [x0, #7, mul vl]
    str z8, [x0, #8, mul vl]
    str z9, [x0, #9, mul vl]
    str z10, [x0, #10, mul vl]
    str z11, [x0, #11, mul vl]
    str z12, [x0, #12, mul vl]
    str z13, [x0, #13, mul vl]
    str z14, [x0, #14, mul vl]
    str z15, [x0, #15, mul vl]
    str z16, [x0, #16, mul vl]
    str z17, [x0, #17, mul vl]
    str z18, [x0, #18, mul vl]
    str z19, [x0, #19, mul vl]
    str z20, [x0, #20, mul vl]
    str z21, [x0, #21, mul vl]
    str z22, [x0, #22, mul vl]
    str z23, [x0, #23, mul vl]
    str z24, [x0, #24, mul vl]
    str z25, [x0, #25, mul vl]
    str z26, [x0, #26, mul vl]
    str z27, [x0, #27, mul vl]
    str z28, [x0, #28, mul vl]
    str z29, [x0, #29, mul vl]
    str z30, [x0, #30, mul vl]
    str z31, [x0, #31, mul vl]
    addvl x1, x0, #31
    addvl x1, x1, #1
    str p0, [x1, #0, mul vl]
    str p1, [x1, #1, mul vl]
    str p2, [x1, #2, mul vl]
    str p3, [x1, #3, mul vl]
    str p4, [x1, #4, mul vl]
    str p5, [x1, #5, mul vl]
    str p6, [x1, #6, mul vl]
    str p7, [x1, #7, mul vl]
    str p8, [x1, #8, mul vl]
    str p9, [x1, #9, mul vl]
    str p10, [x1, #10, mul vl]
    str p11, [x1, #11, mul vl]
    str p12, [x1, #12, mul vl]
    str p13, [x1, #13, mul vl]
    str p14, [x1, #14, mul vl]
    str p15, [x1, #15, mul vl]
    rdffr p0.b
    str p0, [x1, #16, mul vl]
    ldr p0, [x1, #0, mul vl]
    ret

    .global testbed_sve_load
testbed_sve_load:
    addvl x1, x0, #31
    addvl x1, x1, #1
    ldr p0, [x1, #16, mul vl]
    wrffr p0.b
    ldr p0, [x1, #0, mul vl]
    ldr p1, [x1, #1, mul vl]
    ldr p2, [x1, #2, mul vl]
    ldr p3, [x1, #3, mul vl]
    ldr p4, [x1, #4, mul vl]
    ldr p5, [x1, #5, mul vl]
    ldr p6, [x1, #6, mul vl]
    ldr p7, [x1, #7, mul vl]
    ldr p8, [x1, #8, mul vl]
    ldr p9, [x1, #9, mul vl]
    ldr p10, [x1, #10, mul vl]
    ldr p11, [x1, #11, mul vl]
    ldr p12, [x1, #12, mul vl]
    ldr p13, [x1, #13, mul vl]
    ldr p14, [x1, #14, mul vl]
    ldr p15, [x1, #15, mul vl]
    ldr z0, [x0, #0, mul vl]
    ldr z1, [x0, #1, mul vl]
    ldr z2, [x0, #2, mul vl]
    ldr z3, [x0, #3, mul vl]
    ldr z4, [x0, #4, mul vl]
    ldr z5, [x0, #5, mul vl]
    ldr z6, [x0, #6, mul vl]
    ldr z7, [x0, #7, mul vl]
    ldr z8, [x0, #8, mul vl]
    ldr z9, [x0, #9, mul vl]
    ldr z10, [x0, #10, mul vl]
    ldr z11, [x0, #11, mul vl]
    ldr z12, [x0, #12, mul vl]
    ldr z13, [x0, #13, mul vl]
    ldr z14, [x0, #14, mul vl]
    ldr z15, [x0, #15, mul vl]
    ldr z16, [x0, #16, mul vl]
    ldr z17, [x0, #17, mul vl]
    ldr z18, [x0, #18, mul vl]
    ldr z19, [x0, #19, mul vl]
    ldr z20, [x0, #20, mul vl]
    ldr z21, [x0, #21, mul vl]
    ldr z22, [x0, #22, mul vl]
    ldr z23, [x0, #23, mul vl]
    ldr z24, [x0, #24, mul vl]
    ldr z25, [x0, #25, mul vl]
    ldr z26, [x0, #26, mul vl]
    ldr z27, [x0, #27, mul vl]
    ldr z28, [x0, #28, mul vl]
    ldr z29, [x0, #29, mul vl]
    ldr z30, [x0, #30, mul vl]
    ldr z31, [x0, #31, mul vl]
    ret
"#
);

extern "C" {
    fn testbed_sve_save(buf: *mut u8);
    fn testbed_sve_load(buf: *const u8);
}

/// Room for the largest SVE state: 32 vectors and 17 predicates of a 2048-bit VL.
const SVE_STATE: usize = 32 * 256 + 17 * 32;

#[repr(C, align(16))]
struct SveState([u8; SVE_STATE]);

/// One save area per CPU: used with interrupts masked, around one guest entry.
static SVE_SAVE: [SpinLock<SveState>; MAX_CPUS] =
    [const { SpinLock::new_spin(SveState([0; SVE_STATE])) }; MAX_CPUS];

/// True when SVE is enabled at EL2 on this VHE host (CPTR_EL2.ZEN, E2H layout, 0b11):
/// then the host may hold SVE state the world switch does not keep.
fn host_sve_live() -> bool {
    // The enable first: clear on every entry here, it spares the ID register read.
    (vmm_arm64::mrs!("cpacr_el1") >> 16) & 3 == 3
        && (vmm_arm64::mrs!("id_aa64pfr0_el1") >> 32) & 0xf != 0
}

/// A one-shot timer: a slot the timer interrupt scans (see `timer_tick`).
pub struct Timer(Arc<TimerSlot>);

pub struct TimerSlot {
    deadline: AtomicU64,
    func: fn(usize),
    arg: usize,
    /// `timer_tick`s about to call, or calling, `func` (ticks run on every CPU):
    /// dropping the timer waits for them (the `Host::Timer` contract; the core's
    /// callback may read memory that lives only as long as the timer).
    running: AtomicUsize,
}

static TIMERS: SpinLock<alloc::vec::Vec<Arc<TimerSlot>>> =
    SpinLock::new_spin(alloc::vec::Vec::new());

impl Drop for Timer {
    fn drop(&mut self) {
        self.0.deadline.store(0, Ordering::SeqCst);
        TIMERS.lock().retain(|t| !Arc::ptr_eq(t, &self.0));
        // A tick that marked itself running before the deadline was cleared may still
        // call: wait for it. One that marks itself later finds the deadline cleared.
        while self.0.running.load(Ordering::SeqCst) != 0 {
            crate::kernel::cpu::relax();
        }
    }
}

/// Longest one WFI in `Host::sleep` lasts before it looks again.
const SLEEP_CAP_MS: u64 = 100;

/// The nearest armed core timer's deadline, if any.
pub fn next_timer_deadline() -> Option<u64> {
    TIMERS
        .lock()
        .iter()
        .map(|t| t.deadline.load(Ordering::SeqCst))
        .filter(|&d| d != 0)
        .min()
}

/// Polls the core's timers (`Host::sleep` and the serving CPU's idle loop call it; no
/// callout thread here).
pub fn timer_tick() {
    let now = timer::now();
    let due = |t: &&Arc<TimerSlot>| {
        let d = t.deadline.load(Ordering::SeqCst);
        d != 0 && d <= now
    };
    // One due timer at a time, taken under the lock and run outside it: nothing is
    // allocated when none is due (a sleeping vCPU ticks at every wakeup). Each run
    // clears its deadline; the bound stops a callback that re-arms in the past.
    for _ in 0..MAX_TICK_CALLS {
        let Some(t) = TIMERS.lock().iter().find(due).cloned() else {
            return;
        };
        t.running.fetch_add(1, Ordering::SeqCst);
        if t.deadline.swap(0, Ordering::SeqCst) != 0 {
            (t.func)(t.arg);
        }
        t.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Timer callbacks one `timer_tick` runs at most.
const MAX_TICK_CALLS: usize = 64;

/// The `Host` the testbed gives the core.
#[derive(Debug)]
pub struct TestbedHost {
    /// Counts wakeups so a sleeper notices one that happened since it last looked.
    wakeups: AtomicUsize,
}

impl TestbedHost {
    pub fn new() -> Self {
        TestbedHost {
            wakeups: AtomicUsize::new(0),
        }
    }
}

/// Is `[addr, addr + len)` inside the testbed's direct map of RAM?
fn user_range_ok(addr: u64, len: usize) -> bool {
    let Some(end) = addr.checked_add(len as u64) else {
        return false;
    };
    addr >= KBASE + RAM_START && end <= KBASE + RAM_END
}

static RENDEZVOUS: SpinLock<Option<usize>> = SpinLock::new_spin(None);

/// `kick_cpu` calls per target CPU. A kick is SGI 0, like `wakeup`'s broadcast and
/// `cpu::post`'s mailbox SGI, so the SGI count cannot tell a test whether the core
/// itself kicked a vCPU out of the guest; this count can.
pub static KICKS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static RENDEZVOUS_FN: SpinLock<[u64; 2]> = SpinLock::new_spin([0; 2]);

fn rendezvous_trampoline(cpu_id: u64) -> u64 {
    let [a, b] = *RENDEZVOUS_FN.lock();
    // SAFETY: run_on_all_cpus stored a `&(dyn Fn(usize) + Sync)` that outlives this
    // call (it waits for every CPU before returning).
    let f: &(dyn Fn(usize) + Sync) = unsafe { core::mem::transmute([a, b]) };
    let token = {
        let d: u64;
        // SAFETY: masks IRQs for the call, as smp_rendezvous does.
        unsafe { core::arch::asm!("mrs {0}, daif", "msr daifset, #2", out(reg) d) };
        d
    };
    f(cpu_id as usize);
    // SAFETY: restores the saved mask.
    unsafe { core::arch::asm!("msr daif, {0}", in(reg) token) };
    0
}

impl Host for TestbedHost {
    type Mutex = SpinMutex;
    type Timer = Timer;

    fn alloc_contig(&self, len: usize, align: usize) -> KResult<PhysMem> {
        if len == 0 || !len.is_multiple_of(PAGE as usize) {
            return Err(Errno::EINVAL);
        }
        let pa = mm::alloc_pages_aligned(len / PAGE as usize, align.max(PAGE as usize) as u64)
            .ok_or(Errno::ENOMEM)?;
        let va = NonNull::new(pa_to_va(pa) as *mut u8).ok_or(Errno::ENOMEM)?;
        Ok(PhysMem { va, pa, len })
    }

    fn free_contig(&self, mem: PhysMem) {
        mm::free_pages_at(mem.pa, mem.len / PAGE as usize);
    }

    fn pa_to_va(&self, pa: u64) -> Option<NonNull<u8>> {
        (RAM_START..RAM_END)
            .contains(&pa)
            .then(|| NonNull::new(pa_to_va(pa) as *mut u8))
            .flatten()
    }

    fn va_to_pa(&self, va: *const u8) -> Option<u64> {
        let v = va as u64;
        (KBASE + RAM_START..KBASE + RAM_END)
            .contains(&v)
            .then(|| va_to_pa(v))
    }

    fn map_el2(&self, pa: u64, len: usize) -> KResult<()> {
        if cpu::vhe_host() {
            // The kernel's own EL2&0 regime maps all RAM (the direct map).
            return Ok(());
        }
        let mut g = CORE_EL2.lock();
        let c = g.as_mut().ok_or(Errno::ENXIO)?;
        c.tables
            .map_identity(&TablePages, pa, len, attrs_data(MAIR_WB))
    }

    fn unmap_el2(&self, pa: u64, len: usize) {
        let mut g = CORE_EL2.lock();
        let Some(c) = g.as_mut() else { return };
        c.tables.unmap_identity(&TablePages, pa, len);
        if c.live {
            drop(g);
            // Every CPU's EL2 TLB: the invalidation is broadcast (inner shareable).
            hvc(HYP_EL2_TLBI, HYP_EL2_TLBI_VA, pa, len as u64, 0);
        }
    }

    fn sync_caches_for_guest(&self, va: NonNull<u8>, len: usize) {
        // SAFETY: the core names memory it allocated from us (mapped in the kernel).
        unsafe { cache::sync_for_guest(va.as_ptr() as usize, len) };
    }

    fn cpu_count(&self) -> usize {
        cpu::ONLINE
            .iter()
            .filter(|c| c.load(Ordering::Acquire))
            .count()
            .min(MAX_CPUS)
    }

    fn current_cpu(&self) -> usize {
        cpu::id()
    }

    fn run_on_all_cpus(&self, f: &(dyn Fn(usize) + Sync)) {
        // One rendezvous at a time.
        loop {
            let mut g = RENDEZVOUS.lock();
            if g.is_none() {
                *g = Some(cpu::id());
                break;
            }
        }
        // SAFETY: a fat reference is two words; the trampoline turns them back into the
        // same reference while `f` is alive (this function waits for every CPU).
        *RENDEZVOUS_FN.lock() =
            unsafe { core::mem::transmute::<&(dyn Fn(usize) + Sync), [u64; 2]>(f) };
        for c in 0..self.cpu_count() {
            cpu::call_sync(c, rendezvous_trampoline, c as u64);
        }
        *RENDEZVOUS.lock() = None;
    }

    fn kick_cpu(&self, cpu: usize) {
        if let Some(k) = KICKS.get(cpu) {
            k.fetch_add(1, Ordering::SeqCst);
        }
        gic::send_sgi(cpu, gic::SGI_WAKE);
    }

    fn intr_disable(&self) -> u64 {
        let d: u64;
        // SAFETY: reads and masks IRQs on this CPU.
        unsafe { core::arch::asm!("mrs {0}, daif", "msr daifset, #2", out(reg) d) };
        d
    }

    fn intr_restore(&self, token: u64) {
        // SAFETY: restores a mask saved by intr_disable.
        unsafe { core::arch::asm!("msr daif, {0}", in(reg) token) };
    }

    fn hold_vtimer_irq(&self, held: bool) {
        gic::hold_ppi(gic::PPI_VTIMER, held);
    }

    fn should_yield(&self) -> bool {
        false
    }

    fn sleep(
        &self,
        _chan: usize,
        deadline: Option<u64>,
        still_sleep: &dyn Fn() -> bool,
    ) -> SleepResult {
        loop {
            timer_tick();
            if !still_sleep() {
                return SleepResult::Woken;
            }
            let now = timer::now();
            if deadline.is_some_and(|d| now >= d) {
                return SleepResult::TimedOut;
            }
            // Sleep in WFI rather than spin (a guest's WFI must not keep a CPU, here
            // QEMU's, busy): until our deadline or the nearest core timer, capped so a
            // missed wakeup costs at most SLEEP_CAP_MS; `wakeup` and `kick_cpu` send an
            // SGI, and still_sleep is re-checked with IRQs masked so none is lost.
            let cap = now.saturating_add(timer::freq() * SLEEP_CAP_MS / 1000);
            let until = [deadline, next_timer_deadline()]
                .into_iter()
                .flatten()
                .fold(cap, u64::min);
            // Armed with IRQs masked: a timer that fires before the WFI (a short wait,
            // or QEMU's CPU thread descheduled by a loaded host) stays pending and ends
            // the WFI at once. Armed before masking, its handler could take it and
            // disable the one-shot timer first: the WFI then slept until some other
            // interrupt came, for ever in a test where none does.
            let token = self.intr_disable();
            timer::arm(until.saturating_sub(now).max(1));
            if still_sleep() {
                // SAFETY: waits for an interrupt; a masked pending IRQ still ends WFI.
                unsafe { core::arch::asm!("wfi") };
            }
            timer::on_irq();
            self.intr_restore(token);
        }
    }

    fn wakeup(&self, _chan: usize) {
        self.wakeups.fetch_add(1, Ordering::SeqCst);
        // A sleeper on another CPU is in WFI (see `sleep`): wake it to look again.
        let me = cpu::id();
        for c in 0..MAX_CPUS {
            if c != me && cpu::ONLINE[c].load(Ordering::Acquire) {
                gic::send_sgi(c, gic::SGI_WAKE);
            }
        }
    }

    fn counter(&self) -> u64 {
        timer::now()
    }

    fn counter_freq(&self) -> u64 {
        timer::freq()
    }

    fn timer_create(&self, func: fn(usize), arg: usize) -> KResult<Timer> {
        let slot = Arc::new(TimerSlot {
            deadline: AtomicU64::new(0),
            func,
            arg,
            running: AtomicUsize::new(0),
        });
        TIMERS.lock().push(slot.clone());
        Ok(Timer(slot))
    }

    fn timer_arm(&self, t: &Timer, deadline: u64) {
        t.0.deadline.store(deadline.max(1), Ordering::SeqCst);
    }

    fn timer_cancel(&self, t: &Timer) {
        t.0.deadline.store(0, Ordering::SeqCst);
    }

    fn copyin(&self, uaddr: u64, dst: &mut [u8]) -> KResult<()> {
        if !user_range_ok(uaddr, dst.len()) {
            return Err(Errno::EFAULT);
        }
        // SAFETY: the range is inside RAM's direct map (checked).
        unsafe { core::ptr::copy_nonoverlapping(uaddr as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn copyout(&self, src: &[u8], uaddr: u64) -> KResult<()> {
        if !user_range_ok(uaddr, src.len()) {
            return Err(Errno::EFAULT);
        }
        // SAFETY: as above.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), uaddr as *mut u8, src.len()) };
        Ok(())
    }

    fn log(&self, args: fmt::Arguments<'_>) {
        kprintln!("{}", args);
    }

    fn el2_addr(&self, mem: &PhysMem) -> u64 {
        if cpu::vhe_host() {
            mem.va.as_ptr() as u64
        } else {
            mem.pa
        }
    }

    unsafe fn enter_guest(&self, ctx: &PhysMem) -> u64 {
        if cpu::vhe_host() {
            // The switch keeps V0-V31 only; a live SVE state (Z beyond 128 bits, P, FFR)
            // is the host's to keep, as FreeBSD's vfp_save_state does for its threads.
            // The save area is locked only when there is state to keep: every entry
            // would pay for the lock otherwise.
            let mut save = if host_sve_live() {
                SVE_SAVE.get(cpu::id()).map(|s| s.lock())
            } else {
                None
            };
            if let Some(buf) = save.as_mut() {
                // SAFETY: SVE is enabled at EL2; the buffer holds the largest state.
                unsafe { testbed_sve_save(buf.0.as_mut_ptr()) };
            }
            // SAFETY: at EL2 on a VHE host with interrupts masked (the core's contract),
            // the context through its kernel address.
            let kind = unsafe { vmm_el2_switch::vhe::enter_guest(ctx.va.as_ptr().cast()) };
            if let Some(buf) = save.as_ref() {
                // SAFETY: as above; the buffer holds what was saved with this VL.
                unsafe { testbed_sve_load(buf.0.as_ptr()) };
            }
            kind
        } else {
            let args = [ctx.pa, 0, 0, 0, 0, 0, 0];
            // SAFETY: the core's guarantees are the ones HYP_ENTER_GUEST needs.
            unsafe { self.hyp_call(vmm_sys::hyp::HYP_ENTER_GUEST, &args) }
        }
    }

    unsafe fn hyp_call(&self, func: u64, args: &[u64; 7]) -> u64 {
        if cpu::vhe_host() {
            // SAFETY: at EL2 on a VHE host; the core passes what each request needs.
            return unsafe { vmm_el2_switch::vhe::hyp_call(func, args) };
        }
        if func == vmm_sys::hyp::HYP_CLEANUP {
            // From now on the stub answers hvc: no more EL2 TLB calls from unmap_el2.
            mark_down();
        }
        crate::kernel::hyp::hvc7(func, args)
    }
}

/// Marks the core's EL2 code gone (after `Vmm::shutdown`), so unmap_el2 stops
/// issuing EL2 TLB hypercalls to the stub.
pub fn mark_down() {
    if let Some(c) = CORE_EL2.lock().as_mut() {
        c.live = false;
    }
}
