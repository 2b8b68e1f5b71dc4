//! One virtual machine: its name, memory, vCPUs and the VM-wide run state.
//!
//! Locking: `mem` (segments, mappings, stage 2) and `cfg` (topology) sit behind host
//! mutexes. Each vCPU sits behind its own mutex, held by VM_RUN for the whole run, so
//! the other vCPU ioctls on a *running* vCPU answer `EBUSY` (they check `running`
//! first) instead of waiting for the guest. The sets of active, suspended and debugged
//! vCPUs, the VM suspend state and the per-vCPU kick flags are atomics, because the run
//! loop reads them on every entry and other threads change them while it runs.

use crate::el2::S2Geometry;
use crate::errno::{Errno, KResult};
use crate::host::{alloc_for_el2, free_for_el2, Host, PhysMem, PAGE_SIZE};
use crate::mem::VmMem;
use crate::mmio_shortcut::MmioShortcuts;
use crate::stage2::Stage2;
use crate::stats::Stats;
use crate::sync::Mutex;
use crate::vcpu::{HostVcpu, Vcpu, VcpuInit};
use crate::vgic::{Kicks, Vgic};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use vmm_sys::abi::VmCpuTopology;
use vmm_sys::mmio_queue::MmioStoreQueue;
use vmm_sys::VM_MAXCPU;

const _: () = assert!(core::mem::size_of::<MmioStoreQueue>() <= PAGE_SIZE);

/// `running_on` when the vCPU is not in the guest.
pub const NOT_RUNNING: usize = usize::MAX;

/// What other threads share with a vCPU's run loop.
pub struct VcpuShared {
    /// The host CPU the vCPU is in the guest on, or [`NOT_RUNNING`].
    pub running_on: AtomicUsize,
    /// A VM_RUN owns the vCPU.
    pub in_run: AtomicBool,
    /// Return to userspace (BOGUS) at the next check.
    pub kick: AtomicBool,
    /// Something may have become pending for this vCPU since its last vGIC flush: set
    /// by every notifier (after changing the vGIC, outside its lock), cleared by the run
    /// loop under the vGIC lock just before it flushes. The entry re-checks it with
    /// `running_on` published, and WFI sleeps only while it is clear, so no interrupt
    /// raised while the vCPU enters or falls asleep is lost. Without a vGIC it is the
    /// `set_irq_pending` hook's flag, which wakes WFI.
    pub irq_pending: AtomicBool,
    /// VM_STATS counters, readable while the vCPU runs.
    pub stats: Stats,
}

impl VcpuShared {
    fn new() -> Self {
        VcpuShared {
            running_on: AtomicUsize::new(NOT_RUNNING),
            in_run: AtomicBool::new(false),
            kick: AtomicBool::new(false),
            irq_pending: AtomicBool::new(false),
            stats: Stats::default(),
        }
    }
}

pub struct VcpuSlot<H: Host> {
    pub shared: VcpuShared,
    pub vcpu: Mutex<H::Mutex, Option<Vcpu>>,
}

/// VM-wide configuration that is not memory.
#[derive(Debug, Clone, Copy)]
pub struct VmCfg {
    pub topology: VmCpuTopology,
}

pub struct Vm<H: Host> {
    pub name: Vec<u8>,
    pub vmid: u16,
    pub vttbr: u64,
    /// CNTVOFF_EL2 for every vCPU: the host counter at creation, so the guest's virtual
    /// count starts near zero (FreeBSD's vtimer_vminit).
    pub cntvoff: u64,
    pub vcpu_host: HostVcpu,
    pub mem: Mutex<H::Mutex, VmMem>,
    pub cfg: Mutex<H::Mutex, VmCfg>,
    /// The virtual GICv3 once VM_ATTACH_VGIC made it. Lock order: a vCPU, then this;
    /// never held across a guest entry, a copyin/copyout or a sleep.
    pub vgic: Mutex<H::Mutex, Option<Vgic>>,
    /// The vGIC's MMIO windows, set once at attach (a vGIC is never detached): lets a
    /// stage-2 fault in them skip the guest RAM lookup, which can never match there
    /// (RAM and the windows never overlap).
    pub vgic_windows: VgicWindows,
    /// Device registers the kernel handles (VM_SET_MMIO_SHORTCUT). Held to open and to
    /// take the store queue (VM_GET_MMIO_STORES).
    pub mmio: Mutex<H::Mutex, MmioShortcuts>,
    /// The page of the VM's [`MmioStoreQueue`], mapped for EL2 ([`Vm::store_queue`]).
    store_queue: PhysMem,
    /// 0 while no store waits in the queue for userspace; else the host counter value by
    /// which the queue must reach it (a running vCPU is kicked out then). What the run
    /// loop looks at on its hot paths without the lock; set and cleared under it.
    pub mmio_flush_at: AtomicU64,
    /// Bumped under `mmio`'s lock whenever its registers change: a vCPU whose
    /// context holds older EL2 MMIO rows fills them again before its next entry.
    pub mmio_gen: AtomicU64,
    pub vcpus: Vec<VcpuSlot<H>>,
    /// `enum vm_suspend_how`, 0 when running.
    pub suspend: AtomicI32,
    /// Bit n: vCPU n is active (VM_ACTIVATE_CPU).
    pub active: AtomicU32,
    /// Bit n: vCPU n has seen the VM suspend and left with SUSPENDED.
    pub suspended: AtomicU32,
    /// Bit n: vCPU n is held for the debugger (VM_SUSPEND_CPU).
    pub debug: AtomicU32,
    /// Guest memory must be made coherent (caches cleaned) before the next entry.
    pub needs_cache_sync: AtomicBool,
    /// When each kind of guest-triggered kernel message was last logged.
    pub noise: NoiseLimit,
}

/// The distributor's and redistributors' IPA ranges, `[start, end)`, both empty until
/// a vGIC is attached.
#[derive(Debug, Default)]
pub struct VgicWindows {
    bounds: [AtomicU64; 4],
}

impl VgicWindows {
    /// Records the windows `(base, size)` of a vGIC just attached.
    pub fn set(&self, dist: (u64, u64), redist: (u64, u64)) {
        for (pair, (base, size)) in self.bounds.chunks(2).zip([dist, redist]) {
            if let [start, end] = pair {
                start.store(base, Ordering::Relaxed);
                end.store(base.saturating_add(size), Ordering::Release);
            }
        }
    }

    /// Whether `ipa` lies in one of the windows.
    pub fn contains(&self, ipa: u64) -> bool {
        self.bounds.chunks(2).any(|pair| match pair {
            [start, end] => {
                let end = end.load(Ordering::Acquire);
                ipa < end && start.load(Ordering::Relaxed) <= ipa
            }
            _ => false,
        })
    }
}

/// Kernel messages a guest can trigger at will ([`GuestNoise`]): each kind is logged
/// at most once a second per VM; the rest count in the vCPU's `LogSuppressed` stat, so
/// a guest looping on one cannot fill the kernel log.
#[derive(Debug, Default)]
pub struct NoiseLimit {
    /// Host counter value of the last message of each kind, 0 for never.
    last: [AtomicU64; GuestNoise::COUNT],
}

/// The kinds of guest-triggered kernel messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestNoise {
    /// A guest that faults on the same page of its RAM without end.
    RamFaultLoop = 0,
}

impl GuestNoise {
    const COUNT: usize = 1;
}

impl NoiseLimit {
    /// Whether a message of `kind` may be logged now (`now`, `freq`: the host counter
    /// and its frequency); if so, it counts as logged.
    pub fn allow(&self, kind: GuestNoise, now: u64, freq: u64) -> bool {
        let Some(last) = self.last.get(kind as usize) else {
            return false;
        };
        let prev = last.load(Ordering::Relaxed);
        if prev != 0 && now.saturating_sub(prev) < freq {
            return false;
        }
        last.compare_exchange(prev, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

pub fn bit(id: u32) -> u32 {
    1u32.checked_shl(id).unwrap_or(0)
}

impl<H: Host> Vm<H> {
    pub fn new(
        host: &H,
        name: &[u8],
        vmid: u16,
        geom: S2Geometry,
        vcpu_host: HostVcpu,
    ) -> KResult<Vm<H>> {
        let mut n = Vec::new();
        n.try_reserve_exact(name.len()).map_err(|_| Errno::ENOMEM)?;
        n.extend_from_slice(name);
        let mut vcpus = Vec::new();
        vcpus
            .try_reserve_exact(VM_MAXCPU)
            .map_err(|_| Errno::ENOMEM)?;
        for _ in 0..VM_MAXCPU {
            vcpus.push(VcpuSlot {
                shared: VcpuShared::new(),
                vcpu: Mutex::new(None),
            });
        }
        let store_queue = alloc_for_el2(host, PAGE_SIZE)?;
        let s2 = match Stage2::new(host, geom, vmid) {
            Ok(s2) => s2,
            Err(e) => {
                free_for_el2(host, store_queue);
                return Err(e);
            }
        };
        let vttbr = s2.vttbr();
        Ok(Vm {
            name: n,
            vmid,
            vttbr,
            cntvoff: host.counter(),
            vcpu_host,
            mem: Mutex::new(VmMem::new(s2)),
            cfg: Mutex::new(VmCfg {
                topology: VmCpuTopology {
                    sockets: 1,
                    cores: 1,
                    threads: 1,
                    maxcpus: VM_MAXCPU as u16,
                },
            }),
            vgic: Mutex::new(None),
            vcpus,
            suspend: AtomicI32::new(0),
            active: AtomicU32::new(0),
            suspended: AtomicU32::new(0),
            debug: AtomicU32::new(0),
            needs_cache_sync: AtomicBool::new(true),
            noise: NoiseLimit::default(),
            vgic_windows: VgicWindows::default(),
            mmio: Mutex::new(MmioShortcuts::default()),
            store_queue,
            mmio_flush_at: AtomicU64::new(0),
            mmio_gen: AtomicU64::new(0),
        })
    }

    /// The slot of vCPU `id`, `EINVAL` outside 0..VM_MAXCPU.
    pub fn slot(&self, id: i32) -> KResult<&VcpuSlot<H>> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.vcpus.get(i))
            .ok_or(Errno::EINVAL)
    }

    /// Runs `f` on vCPU `id` (created in reset state on first use) unless it is running
    /// (`EBUSY`).
    pub fn with_vcpu<R>(
        &self,
        host: &H,
        id: i32,
        f: impl FnOnce(&mut Vcpu) -> KResult<R>,
    ) -> KResult<R> {
        let slot = self.slot(id)?;
        if slot.shared.in_run.load(Ordering::SeqCst) {
            return Err(Errno::EBUSY);
        }
        let mut g = slot.vcpu.lock();
        let v = self.materialise(host, id, &mut g)?;
        f(v)
    }

    /// The vCPU in `g`, created if absent.
    pub fn materialise<'a>(
        &self,
        host: &H,
        id: i32,
        g: &'a mut Option<Vcpu>,
    ) -> KResult<&'a mut Vcpu> {
        if g.is_none() {
            let init = VcpuInit {
                id: u32::try_from(id).map_err(|_| Errno::EINVAL)?,
                vttbr: self.vttbr,
                cntvoff: self.cntvoff,
                host: self.vcpu_host,
            };
            *g = Some(Vcpu::new(host, init)?);
        }
        g.as_mut().ok_or(Errno::ENOMEM)
    }

    /// Makes vCPU `id` leave the guest soon: an IPI if it is in the guest, a wakeup if it
    /// sleeps in WFI. With `to_user` its VM_RUN returns BOGUS at the next check.
    pub fn notify(&self, host: &H, id: usize, to_user: bool) {
        let Some(slot) = self.vcpus.get(id) else {
            return;
        };
        if to_user {
            slot.shared.kick.store(true, Ordering::SeqCst);
        }
        let cpu = slot.shared.running_on.load(Ordering::SeqCst);
        if cpu != NOT_RUNNING {
            host.kick_cpu(cpu);
        }
        host.wakeup(slot.chan());
    }

    /// Tells the vCPUs in `kicks` (from a vGIC call, made after its lock was dropped)
    /// that an interrupt may be pending for them: sets their `irq_pending` and notifies
    /// them (IPI if in the guest, wakeup if asleep). `me`, the caller's own vCPU, is
    /// skipped: its next flush sees the change anyway.
    pub fn kick_irq(&self, host: &H, kicks: Kicks, me: Option<usize>) {
        for t in kicks.iter() {
            if Some(t) == me {
                continue;
            }
            if let Some(s) = self.vcpus.get(t) {
                s.shared.irq_pending.store(true, Ordering::SeqCst);
                self.notify(host, t, false);
            }
        }
    }

    /// Notifies every vCPU (suspend, destroy).
    pub fn notify_all(&self, host: &H) {
        for i in 0..self.vcpus.len() {
            self.notify(host, i, false);
        }
    }

    /// Any vCPU inside VM_RUN.
    pub fn any_running(&self) -> bool {
        self.vcpus
            .iter()
            .any(|s| s.shared.in_run.load(Ordering::SeqCst))
    }

    /// The VM's queue of device-register stores, which the EL2 code reaches at
    /// [`Vm::store_queue_el2`].
    pub fn store_queue(&self) -> &MmioStoreQueue {
        // SAFETY: the page is the VM's for its whole life, page-aligned (MmioStoreQueue
        // has align 8), large enough (checked at compile time) and zeroed by the host:
        // an empty, closed queue. It is only ever reached through atomics.
        unsafe { &*self.store_queue.va.as_ptr().cast::<MmioStoreQueue>() }
    }

    /// The EL2 address of [`Vm::store_queue`].
    pub fn store_queue_el2(&self, host: &H) -> u64 {
        host.el2_addr(&self.store_queue)
    }

    /// Frees everything. The caller guarantees no other reference is in use.
    pub fn destroy(self, host: &H) {
        for slot in self.vcpus {
            let mut m = slot.vcpu;
            if let Some(v) = m.get_mut().take() {
                v.free(host);
            }
        }
        self.mem.into_inner().destroy(host);
        free_for_el2(host, self.store_queue);
    }
}

impl<H: Host> VcpuSlot<H> {
    /// The sleep channel of this vCPU (its address).
    pub fn chan(&self) -> usize {
        self as *const Self as usize
    }
}
