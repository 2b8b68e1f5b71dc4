//! The `Host` trait: everything the portable vmm core needs from the kernel it runs in.
//!
//! Three implementations exist or are planned: the FreeBSD glue (vmm.ko), the testbed's
//! bare-metal kernel (tests/testbed) and the fake host of the unit tests
//! (`crate::fake`, x86-64). The core is generic over `H: Host` (no trait objects: the
//! associated `Mutex` and `Timer` types would make it non-object-safe, and a generic
//! costs nothing at run time).
//!
//! Rules every implementation follows:
//! * Memory handed out by [`Host::alloc_contig`] is zeroed, physically contiguous, aligned
//!   as asked, stays put until freed, and is reachable both through the kernel virtual
//!   address returned and through [`Host::pa_to_va`] (the core walks stage-2 tables by
//!   physical address through that function, so a fake physical memory works in tests).
//! * [`Host::Mutex`] is a *sleepable* lock (FreeBSD: `sx(9)`): the core holds it across
//!   copyin/copyout and page allocation. It is never held across a guest entry.
//! * Every method is callable from any CPU and any thread that issued an ioctl.
//! * Nothing here panics on bad input; failures return an [`Errno`].

use crate::errno::KResult;
use core::fmt;
use core::ptr::NonNull;
use vmm_sys::abi::VmExit;

/// A run of physically contiguous memory the host allocated for the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhysMem {
    /// Kernel virtual address of the first byte.
    pub va: NonNull<u8>,
    /// Physical address of the first byte (also its EL2 address: EL2 is identity-mapped).
    pub pa: u64,
    /// Length in bytes, a multiple of [`PAGE_SIZE`].
    pub len: usize,
}

// SAFETY: PhysMem is an address range, not a borrow: the memory it names belongs to the
// core object that holds it, which is itself Send/Sync by way of its locks.
unsafe impl Send for PhysMem {}
// SAFETY: as above; sharing the description of a range shares no access by itself.
unsafe impl Sync for PhysMem {}

/// The translation granule the core uses for stage 2, guest memory and allocations.
pub const PAGE_SIZE: usize = 4096;
pub const PAGE_SHIFT: u32 = 12;

/// What [`Host::sleep`] ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepResult {
    /// `wakeup(chan)` was called, or the condition was already false.
    Woken,
    /// The timeout passed.
    TimedOut,
    /// A signal is pending for the sleeping thread (FreeBSD: `PCATCH` returned EINTR or
    /// ERESTART); the core returns to userspace so it can be delivered.
    Interrupted,
}

/// A host lock. `lock`/`unlock` pairs are always made by the same thread.
///
/// # Safety
/// Implementations must provide mutual exclusion: between a `lock()` (or a `try_lock()`
/// returning true) and the matching `unlock()`, no other thread's `lock()` returns.
/// The value may be moved while unlocked (implementations whose native lock needs a
/// fixed address box it).
pub unsafe trait RawMutex: Send + Sync {
    /// A new, unlocked lock.
    fn new() -> Self;
    fn lock(&self);
    /// Takes the lock if it is free, without waiting.
    fn try_lock(&self) -> bool;
    /// Releases a lock this thread holds.
    fn unlock(&self);
}

/// The kernel services the core runs on. See the module documentation for the rules.
pub trait Host: Send + Sync + Sized {
    /// A sleepable mutex (see [`RawMutex`]).
    type Mutex: RawMutex;
    /// A one-shot timer created by [`Host::timer_create`]; dropping it cancels it and
    /// waits for a running callback to finish.
    type Timer: Send + Sync;

    // --- Memory -------------------------------------------------------------------

    /// `len` bytes (a multiple of [`PAGE_SIZE`], non-zero) of zeroed, physically
    /// contiguous memory whose physical address is a multiple of `align` (a power of
    /// two, at least [`PAGE_SIZE`]). `ENOMEM` when the host cannot satisfy it: the core
    /// then falls back to smaller pieces where it can.
    fn alloc_contig(&self, len: usize, align: usize) -> KResult<PhysMem>;
    /// Returns memory from [`Host::alloc_contig`], exactly as it was returned.
    fn free_contig(&self, mem: PhysMem);
    /// The kernel virtual address of physical address `pa`, for memory the host handed
    /// out (a direct map on FreeBSD and the testbed; the fake memory in tests). `None`
    /// for an address the host cannot reach.
    fn pa_to_va(&self, pa: u64) -> Option<NonNull<u8>>;
    /// The physical address behind kernel virtual address `va`.
    fn va_to_pa(&self, va: *const u8) -> Option<u64>;
    /// Makes `[pa, pa + len)` reachable by the EL2 code at EL2 address `pa` (identity).
    /// A no-op on hosts whose EL2 tables already map all RAM.
    fn map_el2(&self, pa: u64, len: usize) -> KResult<()>;
    /// Undoes [`Host::map_el2`] for the same range (before the memory is freed).
    fn unmap_el2(&self, pa: u64, len: usize);
    /// Cleans and invalidates the data cache to the point of coherency and invalidates
    /// the instruction cache for `[va, va + len)`: guest memory the host wrote through
    /// cacheable mappings is about to be read by a guest running with its MMU off
    /// (non-cacheable), or fetched as code. A no-op on a host without caches (QEMU TCG).
    fn sync_caches_for_guest(&self, va: NonNull<u8>, len: usize);

    // --- CPUs ---------------------------------------------------------------------

    /// Number of host CPUs (ids `0..cpu_count()`).
    fn cpu_count(&self) -> usize;
    /// The id of the CPU this runs on. Stable while interrupts are disabled.
    fn current_cpu(&self) -> usize;
    /// Runs `f(cpu_id)` on every host CPU, each with interrupts disabled (FreeBSD:
    /// `smp_rendezvous`), and returns when all have finished.
    fn run_on_all_cpus(&self, f: &(dyn Fn(usize) + Sync));
    /// Sends an interrupt to `cpu` so that a guest running there exits to EL2 and back
    /// to the core (whose run loop then sees why it was kicked). The handler on the
    /// target may do nothing else.
    fn kick_cpu(&self, cpu: usize);
    /// Disables interrupts on this CPU (and so preemption and migration) and returns a
    /// token for [`Host::intr_restore`]. The core enters the guest with interrupts off.
    fn intr_disable(&self) -> u64;
    fn intr_restore(&self, token: u64);
    /// Holds (`true`) or releases (`false`) the host's virtual-timer PPI (INTID 27) on
    /// the current CPU, called with interrupts disabled. While a guest whose virtual
    /// timer condition holds is entered, the physical timer output raises PPI 27 at
    /// once and would exit the guest before it can take its virtual interrupt (a
    /// livelock); holding the PPI (set active in, or disabled at, this CPU's
    /// redistributor, as KVM does) stops that until the guest has handled its timer.
    /// The core calls it only when the state changes on this CPU (it caches the state
    /// per CPU) and releases it after every exit where it held it.
    fn hold_vtimer_irq(&self, held: bool);
    /// True when the current thread should return to userspace soon: a signal or an AST
    /// is pending (FreeBSD: `td_ast`/`TDF_NEEDRESCHED`). Checked before each guest entry.
    fn should_yield(&self) -> bool;
    /// Whether guests' WFE traps on this host (HCR_EL2.TWE, set for every vCPU of the
    /// VMs created from then on). Where vCPUs take turns on a CPU, one spinning in a
    /// WFE loop (a secondary waiting to be started, a waiter on a contended lock) would
    /// spin away the others' time: trapped, it asks [`Host::wfe_should_yield`]. KVM traps
    /// WFE when a vCPU shares its CPU. Default: no, as FreeBSD's vmm (its scheduler
    /// preempts a spinning vCPU thread like any other).
    fn traps_wfe(&self) -> bool {
        false
    }
    /// At a trapped WFE: true when others wait for this CPU; VM_RUN then returns to
    /// userspace (a BOGUS exit, past the WFE) so they get it.
    fn wfe_should_yield(&self) -> bool {
        false
    }
    /// True when the thread making a long allocation (a guest memory segment, chunk by
    /// chunk) should give it up: a signal is pending for it (FreeBSD: `sig_intr()`), or
    /// its client went away. The allocation then frees what it took and fails with
    /// `EINTR`. Never true by default.
    fn alloc_interrupted(&self) -> bool {
        false
    }

    // --- Sleep, wakeup, time -------------------------------------------------------

    /// Blocks the calling thread on channel `chan` until [`Host::wakeup`]`(chan)`, a
    /// signal, or `deadline` (a [`Host::counter`] value; `None` = no timeout). Atomically
    /// with respect to `wakeup(chan)` the host first evaluates `still_sleep()` and returns
    /// [`SleepResult::Woken`] at once if it is false, so no wakeup between the caller's
    /// last check and the sleep is lost. `still_sleep` must not sleep or take locks.
    fn sleep(
        &self,
        chan: usize,
        deadline: Option<u64>,
        still_sleep: &dyn Fn() -> bool,
    ) -> SleepResult;
    /// Wakes every thread sleeping on `chan`.
    fn wakeup(&self, chan: usize);
    /// The host's monotonic counter (the generic timer's physical count: CNTPCT_EL0 on
    /// arm64 hosts, whose CNTVOFF_EL2 is 0 for the host).
    fn counter(&self) -> u64;
    /// Ticks of [`Host::counter`] per second (CNTFRQ_EL0).
    fn counter_freq(&self) -> u64;
    /// A one-shot timer that calls `func(arg)` in interrupt or callout context when armed
    /// and its deadline passes. Used by the timer emulation.
    fn timer_create(&self, func: fn(usize), arg: usize) -> KResult<Self::Timer>;
    /// (Re)arms `t` to fire once at counter value `deadline`.
    fn timer_arm(&self, t: &Self::Timer, deadline: u64);
    /// Disarms `t` if armed.
    fn timer_cancel(&self, t: &Self::Timer);

    // --- User memory ----------------------------------------------------------------

    /// Copies `dst.len()` bytes from user address `uaddr` of the calling process;
    /// `EFAULT` if any byte is unmapped.
    fn copyin(&self, uaddr: u64, dst: &mut [u8]) -> KResult<()>;
    /// Copies `src` to user address `uaddr`; `EFAULT` if any byte is unmapped.
    fn copyout(&self, src: &[u8], uaddr: u64) -> KResult<()>;

    /// The vCPU leaves for userspace with `exit`; `x` are its X0-X30 as userspace will
    /// read them. A host may note what userspace asks next; FreeBSD's does nothing, the
    /// testbed hands a store exit's register to its client with the exit
    /// (docs/testbed.md, "Lanes").
    fn exit_to_user(&self, _exit: &VmExit, _x: &[u64; 31]) {}

    // --- Diagnostics -----------------------------------------------------------------

    /// Prints one line to the kernel log (the core supplies no newline).
    fn log(&self, args: fmt::Arguments<'_>);

    // --- EL2 -----------------------------------------------------------------------------

    /// The address the EL2 code reaches `mem` at, memory mapped with
    /// [`Host::map_el2`]: its physical address on an nVHE host (EL2's identity map), as
    /// the default says; a host whose kernel runs at EL2 (VHE) gives the kernel address.
    fn el2_addr(&self, mem: &PhysMem) -> u64 {
        mem.pa
    }

    /// Runs the guest whose `VcpuContext` fills the page `ctx` until it exits, and
    /// returns the exit kind the world switch wrote (`vmm_sys::hyp::excp`), or a value
    /// above `u32::MAX` when the EL2 code refused the entry. This is the seam between
    /// the core's run loop and the world switch: the default is the nVHE entry (the
    /// `HYP_ENTER_GUEST` hypercall into the EL2 blob, with the page's physical
    /// address); a host whose kernel itself runs at EL2 (VHE) calls the switch body
    /// directly instead, and the fake host runs its scripted guest.
    ///
    /// The world switch keeps the host's general-purpose registers, its EL1 and EL2
    /// state and V0-V31/FPSR/FPCR. Anything beyond that the host itself keeps around
    /// the call: on a CPU with SVE, the Z registers above 128 bits, P0-P15 and FFR of a
    /// thread that uses SVE (a V register write clears a Z register's upper bits), as
    /// FreeBSD's `vfp_save_state` does before its vmm runs a guest.
    ///
    /// # Safety
    /// Interrupts are disabled; the page is mapped for EL2 ([`Host::map_el2`]) and holds
    /// a `VcpuContext` the core filled (VTTBR with this VM's tables and VMID); nothing
    /// else reads or writes it until the call returns.
    unsafe fn enter_guest(&self, ctx: &PhysMem) -> u64 {
        let args = [ctx.pa, 0, 0, 0, 0, 0, 0];
        // SAFETY: the caller's guarantees are the ones HYP_ENTER_GUEST needs.
        unsafe { self.hyp_call(vmm_sys::hyp::HYP_ENTER_GUEST, &args) }
    }

    /// Executes `hvc #0` on the current CPU with x0 = `func`, x1..x7 = `args`, and returns
    /// x0. The fake host interprets the call instead. Guest entry goes through
    /// [`Host::enter_guest`], never through here.
    ///
    /// # Safety
    /// The call reaches the EL2 code, which trusts its arguments: addresses must name
    /// memory mapped for EL2 ([`Host::map_el2`]) holding what the function expects. The core is the only
    /// caller and documents each call's arguments (docs/vmm-core.md, "Hypercalls").
    unsafe fn hyp_call(&self, func: u64, args: &[u64; 7]) -> u64;
}

/// `len` bytes of page-aligned contiguous memory mapped for EL2 (a vCPU context, a
/// VM's store queue, an EL2 stack), nothing left allocated on failure. Freed with
/// [`free_for_el2`].
pub fn alloc_for_el2<H: Host>(host: &H, len: usize) -> KResult<PhysMem> {
    let mem = host.alloc_contig(len, PAGE_SIZE)?;
    if let Err(e) = host.map_el2(mem.pa, mem.len) {
        host.free_contig(mem);
        return Err(e);
    }
    Ok(mem)
}

/// Unmaps from EL2 and frees memory from [`alloc_for_el2`].
pub fn free_for_el2<H: Host>(host: &H, mem: PhysMem) {
    host.unmap_el2(mem.pa, mem.len);
    host.free_contig(mem);
}
