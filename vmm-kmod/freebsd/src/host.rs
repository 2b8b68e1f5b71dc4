//! The FreeBSD implementation of [`Host`]: what the portable core needs, done with the
//! kernel's KPI (bindings in the sibling modules, facts in docs/freebsd-kmod.md).
//!
//! * Memory: `kmem_alloc_contig(9)` (zeroed, wired, contiguous, write-back) for
//!   everything the core allocates by physical address; the direct map for
//!   physical-to-virtual; `pmap_kextract` (`vtophys`) the other way.
//! * EL2: identity-mapped tables built by [`super::el2pt`] in kmem pages; unmapping
//!   invalidates the EL2 TLB through `HYP_EL2_TLBI` while our EL2 code is installed.
//! * Locks: the core's sleepable mutex is an sx(9) lock in malloc(9) memory (fixed
//!   address, as WITNESS wants). Sleep/wakeup use one module-wide default mutex as the
//!   interlock, which makes the "check, then sleep" of [`Host::sleep`] atomic with
//!   respect to [`Host::wakeup`].
//! * Timers: callout(9), one per core timer, running in the softclock thread.
//! * CPUs: `smp_rendezvous`, `ipi_cpu(cpu, IPI_AST)`, `PCPU_GET(cpuid)` through x18.
//!
//! aarch64 only: it reads system registers and calls the kernel.

use super::fmtbuf::FmtBuf;
use super::lock::{self, Mtx, Sx};
use super::malloc::{self, MallocType, M_NOWAIT, M_WAITOK, M_ZERO};
use super::maps::{Live, Registry};
use super::timer::{self, CalloutStorage, CALLOUT_ANY_CPU, CS_DRAIN};
use super::types::ticks_to_sbt;
use super::vm::{self as kvm, VM_MEMATTR_WRITE_BACK};
use super::{copy, hyp, intr, kern, smp};
use core::cell::UnsafeCell;
use core::ffi::{c_int, c_void};
use core::fmt;
use core::ptr::NonNull;
use vmm_arm64::{cache, mrs};
use vmm_core::el2pt::{attrs_data, El2Tables, TableMem};
use vmm_core::errno::{Errno, KResult};
use vmm_core::host::{Host, PhysMem, RawMutex, SleepResult, PAGE_SIZE};
use vmm_sys::hyp::{HYP_EL2_TLBI, HYP_EL2_TLBI_VA};

/// The module's malloc(9) type ("vmm" in `vmstat -m`); registered at load.
pub static M_VMM: MallocType = MallocType::new(c"vmm");

/// The MAIR index of normal write-back memory in FreeBSD's MAIR_EL1, which the EL2
/// init code copies into MAIR_EL2.
pub const EL2_MAIR_WB: u64 = VM_MEMATTR_WRITE_BACK as u64;

/// Source-location strings the lock functions want (`LOCK_DEBUG` builds print them).
const LOCK_FILE: &core::ffi::CStr = c"vmm-kmod/src/freebsd/host.rs";

/// A `struct mtx` in static storage.
#[repr(transparent)]
pub struct StaticMtx(UnsafeCell<Mtx>);

// SAFETY: the kernel's mutex functions serialise every access to the structure.
unsafe impl Sync for StaticMtx {}

impl StaticMtx {
    pub const fn new() -> Self {
        StaticMtx(UnsafeCell::new(Mtx {
            lock_object: lock::LockObject {
                lo_name: core::ptr::null(),
                lo_flags: 0,
                lo_data: 0,
                lo_witness: core::ptr::null_mut(),
            },
            mtx_lock: 0,
        }))
    }
    fn word(&self) -> *mut usize {
        // SAFETY: a field address inside our own cell; nothing is dereferenced.
        unsafe { core::ptr::addr_of_mut!((*self.0.get()).mtx_lock) }
    }
    fn object(&self) -> *mut lock::LockObject {
        // SAFETY: as above.
        unsafe { core::ptr::addr_of_mut!((*self.0.get()).lock_object) }
    }
    /// `mtx_init(m, name, NULL, MTX_DEF)`.
    ///
    /// # Safety
    /// Once, before any other use; not again until [`StaticMtx::destroy`].
    pub unsafe fn init(&self, name: &'static core::ffi::CStr) {
        // SAFETY: the caller guarantees the lock is not initialised or in use.
        unsafe { lock::_mtx_init(self.word(), name.as_ptr(), core::ptr::null(), lock::MTX_DEF) };
    }
    /// `mtx_destroy(m)`.
    ///
    /// # Safety
    /// Initialised, unlocked, and no thread can reach it any more.
    pub unsafe fn destroy(&self) {
        // SAFETY: the caller guarantees nobody uses the lock.
        unsafe { lock::_mtx_destroy(self.word()) };
    }
    fn lock(&self) {
        // SAFETY: initialised at load before any user exists.
        unsafe { lock::__mtx_lock_flags(self.word(), 0, LOCK_FILE.as_ptr(), 0) };
    }
    fn unlock(&self) {
        // SAFETY: held by this thread (paired with `lock`).
        unsafe { lock::__mtx_unlock_flags(self.word(), 0, LOCK_FILE.as_ptr(), 0) };
    }
}

impl Default for StaticMtx {
    fn default() -> Self {
        Self::new()
    }
}

/// The interlock of every sleep and wakeup of the module.
pub static SLEEP_MTX: StaticMtx = StaticMtx::new();

/// The core's sleepable mutex: an sx(9) lock at a fixed malloc(9) address.
pub struct SxMutex(NonNull<Sx>);

// SAFETY: the sx lock is made for use from any thread.
unsafe impl Send for SxMutex {}
// SAFETY: as above.
unsafe impl Sync for SxMutex {}

// SAFETY: sx(9) exclusive locks give mutual exclusion between `_sx_xlock` (or a
// successful `sx_try_xlock_`) and `_sx_xunlock`; the structure stays at its malloc(9)
// address when the `SxMutex` moves.
unsafe impl RawMutex for SxMutex {
    fn new() -> Self {
        let size = core::mem::size_of::<Sx>();
        // SAFETY: plain allocation; M_WAITOK never returns NULL (the core creates its
        // mutexes from thread context, where waiting for memory is allowed).
        let p = unsafe { malloc::malloc(size, M_VMM.as_ptr(), M_WAITOK | M_ZERO) };
        let Some(sx) = NonNull::new(p.cast::<Sx>()) else {
            super::panic::kernel_panic_str("vmm: malloc(M_WAITOK) returned NULL");
        };
        // SAFETY: fresh zeroed memory of the right size; initialised once here.
        unsafe { lock::sx_init_flags(sx.as_ptr(), c"vmm core".as_ptr(), 0) };
        SxMutex(sx)
    }
    fn lock(&self) {
        // SAFETY: initialised in `new`; `opts` 0 cannot fail.
        unsafe { lock::_sx_xlock(self.0.as_ptr(), 0, LOCK_FILE.as_ptr(), 0) };
    }
    fn try_lock(&self) -> bool {
        // SAFETY: as above.
        unsafe { lock::sx_try_xlock_(self.0.as_ptr(), LOCK_FILE.as_ptr(), 0) != 0 }
    }
    fn unlock(&self) {
        // SAFETY: held by this thread (the trait's contract).
        unsafe { lock::_sx_xunlock(self.0.as_ptr(), LOCK_FILE.as_ptr(), 0) };
    }
}

impl Drop for SxMutex {
    fn drop(&mut self) {
        // SAFETY: the owner is being dropped, so nobody holds or waits for the lock;
        // the memory came from malloc(9) with M_VMM.
        unsafe {
            lock::sx_destroy(self.0.as_ptr());
            malloc::free(self.0.as_ptr().cast(), M_VMM.as_ptr());
        }
    }
}

/// One callout plus what it calls; boxed so the callout keeps its address.
struct TimerInner {
    callout: CalloutStorage,
    func: fn(usize),
    arg: usize,
}

/// A core timer: a callout(9).
pub struct KTimer(NonNull<TimerInner>);

// SAFETY: the callout functions serialise access to the callout; `func`/`arg` are
// immutable after creation.
unsafe impl Send for KTimer {}
// SAFETY: as above.
unsafe impl Sync for KTimer {}

unsafe extern "C" fn timer_trampoline(arg: *mut c_void) {
    // SAFETY: `arg` is the `TimerInner` the callout was armed with; `Drop` drains the
    // callout before freeing it, so it is alive here.
    let t = unsafe { &*arg.cast::<TimerInner>() };
    (t.func)(t.arg);
}

impl Drop for KTimer {
    fn drop(&mut self) {
        // SAFETY: the callout was initialised in `timer_create`; CS_DRAIN waits for a
        // running handler, after which nothing refers to the memory.
        unsafe {
            timer::_callout_stop_safe(
                self.0.as_ref().callout.as_ptr(),
                CS_DRAIN,
                core::ptr::null(),
            );
            core::ptr::drop_in_place(self.0.as_ptr());
            malloc::free(self.0.as_ptr().cast(), M_VMM.as_ptr());
        }
    }
}

/// Table pages for the EL2 tables: kmem pages reached through the direct map.
struct KmemTables;

impl TableMem for KmemTables {
    fn alloc_table(&self) -> Option<(u64, usize)> {
        let m = alloc_contig_pages(PAGE_SIZE, PAGE_SIZE).ok()?;
        Some((m.pa, m.va.as_ptr() as usize))
    }
    fn free_table(&self, pa: u64, cookie: usize) {
        if let Some(va) = NonNull::new(cookie as *mut u8) {
            free_contig_pages(PhysMem {
                va,
                pa,
                len: PAGE_SIZE,
            });
        }
    }
    fn table_ptr(&self, pa: u64) -> Option<*mut u64> {
        pa_to_dmap(pa).map(|p| p.as_ptr().cast())
    }
    fn publish(&self) {
        // SAFETY: a barrier; makes the descriptor stores visible to table walks.
        unsafe { core::arch::asm!("dsb ishst", options(nostack, preserves_flags)) };
    }
}

/// `PHYS_TO_DMAP(pa)` with the range check.
fn pa_to_dmap(pa: u64) -> Option<NonNull<u8>> {
    // SAFETY: set by pmap_bootstrap long before modules load; never changes.
    let (base, max) = unsafe {
        (
            core::ptr::addr_of!(kvm::dmap_phys_base).read(),
            core::ptr::addr_of!(kvm::dmap_phys_max).read(),
        )
    };
    let va = kvm::phys_to_dmap(pa, base, max)?;
    NonNull::new(va as *mut u8)
}

/// `kmem_alloc_contig(len, M_NOWAIT | M_ZERO, 0, ~0, align, 0, WRITE_BACK)`.
fn alloc_contig_pages(len: usize, align: usize) -> KResult<PhysMem> {
    let page_multiple = len.checked_rem(PAGE_SIZE) == Some(0);
    if len == 0 || !page_multiple || !align.is_power_of_two() {
        return Err(Errno::EINVAL);
    }
    let align = align.max(PAGE_SIZE);
    // SAFETY: plain allocation call; the result is checked below.
    let p = unsafe {
        kvm::kmem_alloc_contig(
            len as u64,
            M_NOWAIT | M_ZERO,
            0,
            u64::MAX,
            align as core::ffi::c_ulong,
            0,
            VM_MEMATTR_WRITE_BACK,
        )
    };
    let va = NonNull::new(p.cast::<u8>()).ok_or(Errno::ENOMEM)?;
    // SAFETY: `va` is a mapped kernel address we just got.
    let pa = unsafe { kvm::pmap_kextract(va.as_ptr() as u64) };
    if pa == 0 {
        // SAFETY: returning what we allocated, with its size.
        unsafe { kvm::kmem_free(p, len as u64) };
        return Err(Errno::ENOMEM);
    }
    Ok(PhysMem { va, pa, len })
}

fn free_contig_pages(mem: PhysMem) {
    // SAFETY: `mem` came from `alloc_contig_pages`, with its original kmem address
    // (the Host contract: memory is returned exactly as it was handed out).
    unsafe { kvm::kmem_free(mem.va.as_ptr().cast(), mem.len as u64) };
}

/// The glue's own reference on the `struct sglist` of one mmap (see [`super::maps`]).
pub struct SgRef(pub NonNull<kvm::Sglist>);

// SAFETY: the list is reference-counted by the kernel with atomics and never changes
// after the mmap that created it; any thread may read the count and drop the reference.
unsafe impl Send for SgRef {}

impl SgRef {
    /// True once the object made over the list is gone (only our reference is left).
    fn dead(&self) -> bool {
        // SAFETY: we hold a reference, so the list is alive; the count is a u_int the
        // kernel updates atomically, read here as a plain volatile load.
        let refs = unsafe { core::ptr::addr_of!((*self.0.as_ptr()).sg_refs).read_volatile() };
        refs <= 1
    }
}

fn release_sg(s: SgRef) {
    // SAFETY: drops the glue's own reference, taken at sglist_alloc.
    unsafe { kvm::sglist_free(s.0.as_ptr()) };
}

/// The EL2 tables and whether our EL2 code is installed.
pub struct El2State {
    pub tables: El2Tables,
    /// True between a successful `Vmm::new` and the end of `Vmm::shutdown`: only then
    /// does `HYP_EL2_TLBI` reach our code (the stub knows no function numbers).
    pub live: bool,
}

/// The host the glue gives the core.
pub struct FreeBsdHost {
    /// Offset of `pc_cpuid` in `struct pcpu`, found at load.
    cpuid_offset: usize,
    ncpu: usize,
    /// Behind an sx lock: map/unmap come from thread context only (VM creation,
    /// destruction, vCPU setup).
    el2: vmm_core::sync::Mutex<SxMutex, El2State>,
    /// Guest memory mapped by processes, and memory waiting for those mappings to go.
    maps: vmm_core::sync::Mutex<SxMutex, Registry<SgRef>>,
    /// The GICv3 driver's device (for `gic_r_write_4` on this CPU's redistributor),
    /// or null when none was found: then the virtual-timer PPI cannot be held.
    gic: usize,
    /// The kernel runs at EL2 with HCR_EL2.E2H (VHE): the switch is called directly,
    /// there are no EL2 tables to keep and no blob to call.
    vhe: bool,
}

impl FreeBsdHost {
    /// A host for a kernel whose `pc_cpuid` is at `cpuid_offset` and whose CPU ids go
    /// up to `mp_maxid`, with empty EL2 tables; `vhe` when the kernel runs at EL2.
    pub fn new(cpuid_offset: usize, vhe: bool) -> KResult<FreeBsdHost> {
        // SAFETY: set before any module loads; never changes.
        let maxid = unsafe { core::ptr::addr_of!(smp::mp_maxid).read() };
        // SAFETY: as above.
        let ncpus = unsafe { core::ptr::addr_of!(smp::mp_ncpus).read() };
        let ncpu = usize::try_from(maxid)
            .ok()
            .and_then(|m| m.checked_add(1))
            .ok_or(Errno::EINVAL)?;
        // The core gives CPU ids 0..cpu_count() an EL2 stack each and requires every one
        // of them to come through the rendezvous: ids must be dense.
        if usize::try_from(ncpus).ok() != Some(ncpu) {
            log(format_args!(
                "vmm: CPU ids are not dense (mp_ncpus {ncpus}, mp_maxid {maxid}); not supported"
            ));
            return Err(Errno::ENXIO);
        }
        let tables = El2Tables::new(&KmemTables)?;
        let gic = find_gicv3();
        if gic.is_null() {
            log(format_args!(
                "vmm: no GICv3 device; a guest's firing virtual timer will cost extra exits"
            ));
        }
        Ok(FreeBsdHost {
            vhe,
            gic: gic as usize,
            cpuid_offset,
            ncpu,
            el2: vmm_core::sync::Mutex::new(El2State {
                tables,
                live: false,
            }),
            maps: vmm_core::sync::Mutex::new(Registry::default()),
        })
    }

    /// Records the mapping `live` (its list reference passes to the registry).
    pub fn add_map(&self, live: Live<SgRef>) -> KResult<()> {
        let mut m = self.maps.lock();
        m.reap(SgRef::dead, release_sg, free_contig_pages);
        m.add(live).map_err(|(e, l)| {
            release_sg(l.sg);
            e
        })
    }

    /// Forgets mappings that are gone and frees the memory they held back; true if
    /// anything is still mapped or held back.
    pub fn maps_busy(&self) -> bool {
        let mut m = self.maps.lock();
        m.reap(SgRef::dead, release_sg, free_contig_pages);
        m.busy()
    }

    /// TTBR0_EL2 for `InitParams`.
    pub fn el2_ttbr0(&self) -> u64 {
        self.el2.lock().tables.ttbr0()
    }

    /// Maps `[pa, pa + len)` for EL2 with leaf attributes `attrs` (the glue maps the
    /// blob read-only + executable with it).
    pub fn map_el2_attrs(&self, pa: u64, len: usize, attrs: u64) -> KResult<()> {
        let mut g = self.el2.lock();
        let r = g.tables.map_identity(&KmemTables, pa, len, attrs);
        if r.is_err() {
            g.tables.unmap_identity(&KmemTables, pa, len);
        }
        r
    }

    /// Records whether our EL2 code is installed (see [`El2State::live`]).
    pub fn set_el2_live(&self, live: bool) {
        self.el2.lock().live = live;
    }

    /// Frees the EL2 tables (after the stub is back on every CPU).
    pub fn free_el2_tables(self) {
        let st = self.el2.into_inner();
        st.tables.free(&KmemTables);
    }
}

/// The filter of the host's virtual-timer PPI. The host's own virtual timer is unused
/// (FreeBSD booted at EL2 runs on the physical timer), so the interrupt is a guest's
/// timer that fired just as the guest exited (the world switch had already put the
/// host's timer back, so it will not fire again) or, should anything have enabled the
/// host's CNTV, that one: masked (IMASK) either way, as FreeBSD's vtimer filter does.
unsafe extern "C" fn vtimer_filter(_arg: *mut c_void) -> c_int {
    // SAFETY: sets CNTV_CTL_EL0.IMASK of this CPU, the host's own (no guest's is
    // loaded at EL1); nothing else reads it.
    unsafe {
        core::arch::asm!(
            "mrs {t}, cntv_ctl_el0",
            "orr {t}, {t}, #2",
            "msr cntv_ctl_el0, {t}",
            "isb",
            t = out(reg) _,
            options(nostack),
        )
    };
    intr::FILTER_HANDLED
}

/// The GICv3 driver's device: unit 0 of devclass "gic", provided this CPU has the GIC
/// system-register interface (ID_AA64PFR0_EL1.GIC != 0), so the "gic" device is the
/// GICv3 driver and not the GICv2 one, whose softc `gic_r_write_4` must not be given.
fn find_gicv3() -> intr::DeviceT {
    if super::machdep::pfr0_gic(mrs!("id_aa64pfr0_el1")) == 0 {
        return core::ptr::null_mut();
    }
    // SAFETY: a lookup by a NUL-terminated name; returns NULL if absent.
    let dc = unsafe { intr::devclass_find(c"gic".as_ptr()) };
    if dc.is_null() {
        return core::ptr::null_mut();
    }
    // SAFETY: `dc` is a live devclass (devclasses are never freed).
    unsafe { intr::devclass_get_device(dc, 0) }
}

/// What `run_on_all_cpus` hands to each CPU through `smp_rendezvous`.
struct Rendezvous<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    cpuid_offset: usize,
}

unsafe extern "C" fn rendezvous_action(arg: *mut c_void) {
    // SAFETY: `arg` is the `Rendezvous` on the stack of the thread that called
    // smp_rendezvous, which waits until every CPU finished this function.
    let r = unsafe { &*arg.cast::<Rendezvous<'_>>() };
    let cpu = smp::curcpu(r.cpuid_offset);
    (r.f)(cpu as usize);
}

impl FreeBsdHost {
    /// At load, once EL2 is up: gives the host's virtual-timer PPI (27) a filter
    /// (`arm_tmr_setup_intr(GT_VIRT)`, as FreeBSD's vmm) and enables it in every CPU's
    /// redistributor (GICR_ISENABLER0 through `gic_r_write_4` in a rendezvous: a PPI
    /// set up after the secondary CPUs started is enabled only on the CPU that set it
    /// up), so a guest's virtual timer firing exits the guest at once instead of at the
    /// next host tick. False (and logged) when either step is not possible.
    pub fn enable_vtimer_ppi(&self) -> bool {
        if self.gic == 0 {
            return false;
        }
        // SAFETY: the generic timer driver's KPI; the filter is a plain function.
        let r = unsafe {
            intr::arm_tmr_setup_intr(
                intr::GT_VIRT,
                Some(vtimer_filter),
                None,
                core::ptr::null_mut(),
            )
        };
        if r != 0 {
            log(format_args!(
                "vmm: no virtual-timer interrupt ({r}); guests' timers will wait for host ticks"
            ));
            return false;
        }
        self.vtimer_ppi_on_all_cpus(true);
        true
    }

    /// At unload, before the EL2 code goes: the reverse of `enable_vtimer_ppi`.
    pub fn disable_vtimer_ppi(&self) {
        self.vtimer_ppi_on_all_cpus(false);
        // SAFETY: tears down what enable_vtimer_ppi set up.
        let r = unsafe { intr::arm_tmr_teardown_intr(intr::GT_VIRT) };
        if r != 0 {
            log(format_args!(
                "vmm: virtual-timer interrupt teardown failed ({r})"
            ));
        }
    }

    fn vtimer_ppi_on_all_cpus(&self, on: bool) {
        let reg = if on {
            intr::GICR_ISENABLER0
        } else {
            intr::GICR_ICENABLER0
        };
        let gic = self.gic;
        self.run_on_all_cpus(&|_| {
            // SAFETY: the GICv3 driver's device; in the rendezvous each CPU writes its
            // own redistributor's enable bit for PPI 27 only.
            unsafe {
                intr::gic_r_write_4(
                    gic as intr::DeviceT,
                    intr::GICR_SGI_BASE_SIZE | reg,
                    1 << vmm_core::vtimer::VIRT_TIMER_INTID,
                )
            };
        });
    }
}

impl Host for FreeBsdHost {
    type Mutex = SxMutex;
    type Timer = KTimer;

    fn alloc_contig(&self, len: usize, align: usize) -> KResult<PhysMem> {
        alloc_contig_pages(len, align)
    }

    fn free_contig(&self, mem: PhysMem) {
        // Guest memory a process still maps waits for the mapping to go away.
        let mut m = self.maps.lock();
        m.reap(SgRef::dead, release_sg, free_contig_pages);
        m.release(mem, free_contig_pages);
    }

    fn pa_to_va(&self, pa: u64) -> Option<NonNull<u8>> {
        pa_to_dmap(pa)
    }

    fn va_to_pa(&self, va: *const u8) -> Option<u64> {
        // SAFETY: pmap_kextract only walks the kernel page tables; 0 means unmapped.
        let pa = unsafe { kvm::pmap_kextract(va as u64) };
        (pa != 0).then_some(pa)
    }

    fn map_el2(&self, pa: u64, len: usize) -> KResult<()> {
        if self.vhe {
            // The kernel's own EL2&0 regime maps what the core hands the switch.
            return Ok(());
        }
        self.map_el2_attrs(pa, len, attrs_data(EL2_MAIR_WB))
    }

    fn unmap_el2(&self, pa: u64, len: usize) {
        if self.vhe {
            return;
        }
        let mut g = self.el2.lock();
        g.tables.unmap_identity(&KmemTables, pa, len);
        if g.live {
            // SAFETY: our EL2 code is installed on every CPU (`live`); the invalidation
            // by VA is broadcast to the inner-shareable domain.
            unsafe {
                hyp::vmm_call_hyp([HYP_EL2_TLBI, HYP_EL2_TLBI_VA, pa, len as u64, 0, 0, 0, 0])
            };
        }
    }

    fn sync_caches_for_guest(&self, va: NonNull<u8>, len: usize) {
        // SAFETY: the core names memory it allocated from us (mapped in the kernel).
        unsafe { cache::sync_for_guest(va.as_ptr() as usize, len) };
    }

    fn cpu_count(&self) -> usize {
        self.ncpu
    }

    fn current_cpu(&self) -> usize {
        smp::curcpu(self.cpuid_offset) as usize
    }

    fn run_on_all_cpus(&self, f: &(dyn Fn(usize) + Sync)) {
        let r = Rendezvous {
            f,
            cpuid_offset: self.cpuid_offset,
        };
        // SAFETY: `r` outlives the call: smp_rendezvous returns only after the action
        // ran on every CPU.
        unsafe {
            smp::smp_rendezvous(
                None,
                Some(rendezvous_action),
                None,
                core::ptr::addr_of!(r).cast_mut().cast(),
            )
        };
    }

    fn kick_cpu(&self, cpu: usize) {
        let Ok(cpu) = c_int::try_from(cpu) else {
            return;
        };
        if cpu as usize >= self.ncpu {
            return;
        }
        // SAFETY: a valid CPU id; IPI_AST only makes the target run its AST check.
        unsafe { smp::ipi_cpu(cpu, smp::IPI_AST) };
    }

    fn intr_disable(&self) -> u64 {
        let d: u64;
        // SAFETY: saves DAIF and masks IRQ and FIQ, as FreeBSD's intr_disable().
        unsafe {
            core::arch::asm!("mrs {0}, daif", "msr daifset, #3", out(reg) d, options(nostack, preserves_flags))
        };
        d
    }

    fn intr_restore(&self, token: u64) {
        // SAFETY: restores a DAIF value saved by intr_disable on this CPU.
        unsafe {
            core::arch::asm!("msr daif, {0}", in(reg) token, options(nostack, preserves_flags))
        };
    }

    fn hold_vtimer_irq(&self, held: bool) {
        if self.gic == 0 {
            return;
        }
        let reg = if held {
            intr::GICR_ISACTIVER0
        } else {
            intr::GICR_ICACTIVER0
        };
        // SAFETY: `gic` is the GICv3 driver's device (found at load; the GIC driver is
        // never detached); with interrupts off (the core's contract) the write reaches
        // this CPU's redistributor, where it sets or clears only PPI 27's active bit.
        unsafe {
            intr::gic_r_write_4(
                self.gic as intr::DeviceT,
                intr::GICR_SGI_BASE_SIZE | reg,
                1 << vmm_core::vtimer::VIRT_TIMER_INTID,
            )
        };
    }

    fn alloc_interrupted(&self) -> bool {
        // SAFETY: no arguments; looks at the current thread's signals.
        unsafe { kern::sig_intr() != 0 }
    }

    fn should_yield(&self) -> bool {
        // The thread has used its slice: return to userspace, where pending signals
        // and ASTs are handled (the td_ast layout is not bound; see the doc).
        // SAFETY: no arguments; reads the current thread's scheduler state.
        unsafe { kern::should_yield() != 0 }
    }

    fn sleep(
        &self,
        chan: usize,
        deadline: Option<u64>,
        still_sleep: &dyn Fn() -> bool,
    ) -> SleepResult {
        let sbt = match deadline {
            None => 0,
            Some(d) => {
                let now = self.counter();
                if d <= now {
                    return SleepResult::TimedOut;
                }
                // At least 1: 0 would mean "no timeout".
                ticks_to_sbt(d.wrapping_sub(now), self.counter_freq()).max(1)
            }
        };
        SLEEP_MTX.lock();
        if !still_sleep() {
            SLEEP_MTX.unlock();
            return SleepResult::Woken;
        }
        // SAFETY: the interlock is held; _sleep drops and retakes it atomically with
        // going to sleep, so a wakeup(chan) issued under it cannot be missed.
        let r = unsafe {
            kern::_sleep(
                chan as *const c_void,
                SLEEP_MTX.object(),
                kern::PCATCH,
                c"vmmwfi".as_ptr(),
                sbt,
                0,
                0,
            )
        };
        SLEEP_MTX.unlock();
        match r {
            0 => SleepResult::Woken,
            kern::EWOULDBLOCK => SleepResult::TimedOut,
            _ => SleepResult::Interrupted,
        }
    }

    fn wakeup(&self, chan: usize) {
        SLEEP_MTX.lock();
        // SAFETY: any address is a valid channel.
        unsafe { kern::wakeup(chan as *const c_void) };
        SLEEP_MTX.unlock();
    }

    fn counter(&self) -> u64 {
        // SAFETY: isb orders the read after earlier instructions, as FreeBSD does.
        unsafe { core::arch::asm!("isb", options(nostack, preserves_flags)) };
        mrs!("cntpct_el0")
    }

    fn counter_freq(&self) -> u64 {
        mrs!("cntfrq_el0")
    }

    fn timer_create(&self, func: fn(usize), arg: usize) -> KResult<KTimer> {
        let size = core::mem::size_of::<TimerInner>();
        // SAFETY: plain allocation; checked below.
        let p = unsafe { malloc::malloc(size, M_VMM.as_ptr(), M_NOWAIT | M_ZERO) };
        let p = NonNull::new(p.cast::<TimerInner>()).ok_or(Errno::ENOMEM)?;
        // SAFETY: fresh memory of the right size and alignment (malloc aligns to at
        // least 16 bytes); the callout is initialised once, then never moves.
        unsafe {
            p.as_ptr().write(TimerInner {
                callout: CalloutStorage::new(),
                func,
                arg,
            });
            timer::callout_init(p.as_ref().callout.as_ptr(), 1);
        }
        Ok(KTimer(p))
    }

    fn timer_arm(&self, t: &KTimer, deadline: u64) {
        let now = self.counter();
        let sbt = ticks_to_sbt(deadline.saturating_sub(now), self.counter_freq());
        // SAFETY: the callout was initialised in timer_create and lives as long as `t`.
        unsafe {
            timer::callout_reset_sbt_on(
                t.0.as_ref().callout.as_ptr(),
                sbt,
                0,
                Some(timer_trampoline),
                t.0.as_ptr().cast(),
                CALLOUT_ANY_CPU,
                0,
            )
        };
    }

    fn timer_cancel(&self, t: &KTimer) {
        // SAFETY: as above; stopping without draining is fine from any context.
        unsafe { timer::_callout_stop_safe(t.0.as_ref().callout.as_ptr(), 0, core::ptr::null()) };
    }

    fn copyin(&self, uaddr: u64, dst: &mut [u8]) -> KResult<()> {
        // SAFETY: copyin checks the user range and faults safely; `dst` is ours.
        let r = unsafe { copy::copyin(uaddr as *const c_void, dst.as_mut_ptr().cast(), dst.len()) };
        if r == 0 {
            Ok(())
        } else {
            Err(Errno::EFAULT)
        }
    }

    fn copyout(&self, src: &[u8], uaddr: u64) -> KResult<()> {
        // SAFETY: as above, in the other direction.
        let r = unsafe { copy::copyout(src.as_ptr().cast(), uaddr as *mut c_void, src.len()) };
        if r == 0 {
            Ok(())
        } else {
            Err(Errno::EFAULT)
        }
    }

    fn log(&self, args: fmt::Arguments<'_>) {
        log(args);
    }

    fn el2_addr(&self, mem: &PhysMem) -> u64 {
        if self.vhe {
            mem.va.as_ptr() as u64
        } else {
            mem.pa
        }
    }

    unsafe fn enter_guest(&self, ctx: &PhysMem) -> u64 {
        // The switch keeps V0-V31 only: the thread's SVE state goes to its PCB first.
        crate::vfp::flush_thread_fp();
        if self.vhe {
            // SAFETY: at EL2 on a VHE kernel with interrupts disabled (the core's
            // contract); the context through its kernel address.
            return unsafe { vmm_el2_switch::vhe::enter_guest(ctx.va.as_ptr().cast()) };
        }
        let args = [ctx.pa, 0, 0, 0, 0, 0, 0];
        // SAFETY: the core's guarantees are the ones HYP_ENTER_GUEST needs.
        unsafe { self.hyp_call(vmm_sys::hyp::HYP_ENTER_GUEST, &args) }
    }

    unsafe fn hyp_call(&self, func: u64, args: &[u64; 7]) -> u64 {
        if self.vhe {
            // SAFETY: at EL2 on a VHE kernel; the core passes what each request needs.
            return unsafe { vmm_el2_switch::vhe::hyp_call(func, args) };
        }
        let [a1, a2, a3, a4, a5, a6, a7] = *args;
        // SAFETY: the caller (the core) guarantees the EL2 side accepts the call.
        unsafe { hyp::vmm_call_hyp([func, a1, a2, a3, a4, a5, a6, a7]) }
    }
}

/// Prints one line to the kernel log (formatted into a fixed buffer: no allocation).
pub fn log(args: fmt::Arguments<'_>) {
    let mut b = FmtBuf::<256>::new();
    let _ = fmt::write(&mut b, args);
    let s = b.as_bytes();
    // SAFETY: "%.*s" reads exactly `len` bytes from `s`; the length fits an int.
    unsafe { kern::printf(c"%.*s\n".as_ptr(), s.len() as c_int, s.as_ptr()) };
}
