//! The core's top object: EL2 bring-up and take-down, the VM registry, and the entry
//! points the host glue calls.

use crate::el2::{El2Config, El2Regime, InitParams, EL2_STACK_SIZE};
use crate::errno::{Errno, KResult};
use crate::host::{alloc_for_el2, free_for_el2, Host, PhysMem};
use crate::sync::Mutex;
use crate::sysemul::GuestIdRegs;
use crate::vcpu::{HostTraps, HostVcpu};
use crate::vm::Vm;
use crate::vmid::VmidAlloc;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use vmm_sys::exit::SuspendHow;
use vmm_sys::hyp;

/// Which device an ioctl arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRef<'a> {
    /// /dev/vmmctl.
    Ctl,
    /// /dev/vmm/NAME.
    Vm(&'a [u8]),
}

pub(crate) struct Registry<H: Host> {
    pub vms: Vec<Arc<Vm<H>>>,
    pub vmids: VmidAlloc,
    /// VMs unlisted by a destroy still in progress (their tables and VMID are still
    /// live: unload must wait for them, or their TLB invalidation would reach the stub).
    pub dying: usize,
}

pub struct Vmm<H: Host> {
    pub(crate) host: H,
    pub(crate) cfg: El2Config,
    pub(crate) ids: GuestIdRegs,
    pub(crate) params: InitParams,
    stacks: Mutex<H::Mutex, Vec<PhysMem>>,
    pub(crate) reg: Mutex<H::Mutex, Registry<H>>,
    up: AtomicBool,
    /// ICH_VTR_EL2 as CPU 0 reported it at load (list registers for every vGIC).
    pub(crate) ich_vtr: u64,
    /// Per host CPU: the host's virtual-timer PPI is held there (`Host::hold_vtimer_irq`),
    /// so the run loop calls the host only when the state changes.
    pub(crate) vtimer_held: Vec<AtomicBool>,
    /// Bytes of guest memory segments allocated, over all VMs.
    guest_mem: AtomicU64,
    /// The limit on `guest_mem` (`InitParams::max_guest_mem`).
    max_guest_mem: AtomicU64,
}

impl<H: Host> Vmm<H> {
    /// Module load: computes the EL2 and stage-2 settings from the host's ID registers,
    /// gives every CPU an EL2 stack, and brings the EL2 code up on every CPU through the
    /// hyp stub (see `el2.rs`). On failure (`ENXIO` if the CPU cannot host guests or a
    /// CPU refuses, `ENOMEM`) every CPU is back at the stub, everything is freed, and
    /// the host is handed back.
    pub fn new(host: H, params: InitParams) -> Result<Vmm<H>, (H, Errno)> {
        let cfg = match El2Config::new(params.id_regs.mmfr0, vmm_platform::IPA_BITS) {
            Ok(c) => c,
            Err(e) => return Err((host, e)),
        };
        let ids = GuestIdRegs::new(&params.id_regs, cfg.s2.ipa_bits);
        let ncpu = host.cpu_count();
        let (stacks, mut failed, inited, ich_vtr) = match bring_up_el2(&host, &params, &cfg, ncpu) {
            Ok(r) => r,
            Err(e) => return Err((host, e)),
        };
        let mut vtimer_held = Vec::new();
        if vtimer_held.try_reserve_exact(ncpu).is_ok() {
            vtimer_held.resize_with(ncpu, || AtomicBool::new(false));
        } else {
            failed = failed.saturating_add(1);
        }
        let max_guest_mem = params.max_guest_mem;
        let vmm = Vmm {
            host,
            cfg,
            ids,
            params,
            stacks: Mutex::new(stacks),
            reg: Mutex::new(Registry {
                vms: Vec::new(),
                vmids: VmidAlloc::default(),
                dying: 0,
            }),
            up: AtomicBool::new(true),
            ich_vtr,
            vtimer_held,
            guest_mem: AtomicU64::new(0),
            max_guest_mem: AtomicU64::new(max_guest_mem),
        };
        if failed != 0 || inited != ncpu {
            vmm.host
                .log(format_args!("vmm: EL2 initialisation failed on some CPU"));
            vmm.take_down_el2();
            return Err((vmm.host, Errno::ENXIO));
        }
        Ok(vmm)
    }

    fn take_down_el2(&self) {
        let El2Regime::Nvhe {
            hyp_stub_vectors_pa: stub,
            ..
        } = self.params.regime
        else {
            return;
        };
        self.host.run_on_all_cpus(&|_| {
            // SAFETY: HYP_CLEANUP puts the stub's vectors (whose address the glue gave us)
            // back and turns the EL2 MMU off; it touches no memory of ours.
            unsafe {
                self.host
                    .hyp_call(hyp::HYP_CLEANUP, &[stub, 0, 0, 0, 0, 0, 0])
            };
        });
        let mut st = self.stacks.lock();
        for s in st.drain(..) {
            free_for_el2(&self.host, s);
        }
    }

    /// Module unload: `EBUSY` while any VM exists; otherwise restores the hyp stub on
    /// every CPU and frees the EL2 stacks. Afterwards every request gets `ENXIO`.
    pub fn shutdown(&self) -> KResult<()> {
        let reg = self.reg.lock();
        if !reg.vms.is_empty() || reg.dying != 0 {
            return Err(Errno::EBUSY);
        }
        if !self.up.swap(false, Ordering::SeqCst) {
            return Err(Errno::ENXIO);
        }
        drop(reg);
        self.take_down_el2();
        Ok(())
    }

    /// The host back after [`Vmm::shutdown`] (a later load makes a new `Vmm` with it);
    /// the `Vmm` itself while it is still up.
    pub fn into_host(self) -> Result<H, alloc::boxed::Box<Self>> {
        if self.up.load(Ordering::SeqCst) {
            Err(alloc::boxed::Box::new(self))
        } else {
            Ok(self.host)
        }
    }

    pub fn host(&self) -> &H {
        &self.host
    }

    pub fn el2_config(&self) -> &El2Config {
        &self.cfg
    }

    pub(crate) fn check_up(&self) -> KResult<()> {
        if self.up.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(Errno::ENXIO)
        }
    }

    /// Creates VM `name` (VMMCTL_VM_CREATE, hw.vmm.create).
    pub fn create_vm(&self, name: &[u8]) -> KResult<()> {
        vmm_sys::validate_vm_name(name).map_err(|_| Errno::EINVAL)?;
        let mut reg = self.reg.lock();
        // Checked under the registry lock, which unload holds while it decides.
        self.check_up()?;
        if reg.vms.iter().any(|v| v.name == name) {
            return Err(Errno::EEXIST);
        }
        reg.vms.try_reserve(1).map_err(|_| Errno::ENOMEM)?;
        let vmid = reg.vmids.alloc().ok_or(Errno::ENOSPC)?;
        let mut traps = HostTraps::new(&self.params.id_regs);
        if self.host.traps_wfe() {
            traps.hcr |= vmm_sys::arm64::regs::hcr::TWE;
        }
        let vcpu_host = HostVcpu {
            vtcr: self.cfg.vtcr_el2,
            midr: self.params.id_regs.midr,
            has_pan: (self.ids.mmfr1 >> 20) & 0xf != 0,
            traps,
            ids: self.ids,
        };
        match Vm::new(&self.host, name, vmid, self.cfg.s2, vcpu_host) {
            Ok(vm) => {
                reg.vms.push(Arc::new(vm));
                Ok(())
            }
            Err(e) => {
                reg.vmids.free(vmid);
                Err(e)
            }
        }
    }

    /// Destroys VM `name` (VMMCTL_VM_DESTROY, hw.vmm.destroy): unlists it, suspends it
    /// with `VM_SUSPEND_DESTROY` so running vCPUs leave VM_RUN with SUSPENDED, waits for
    /// every request still using it to finish, then frees all of it.
    pub fn destroy_vm(&self, name: &[u8]) -> KResult<()> {
        self.check_up()?;
        let vm = {
            let mut reg = self.reg.lock();
            let i = reg
                .vms
                .iter()
                .position(|v| v.name == name)
                .ok_or(Errno::ENOENT)?;
            reg.dying = reg.dying.saturating_add(1);
            reg.vms.swap_remove(i)
        };
        vm.suspend
            .store(SuspendHow::Destroy as i32, Ordering::SeqCst);
        vm.notify_all(&self.host);
        let mut vm = vm;
        let vm = loop {
            match Arc::try_unwrap(vm) {
                Ok(v) => break v,
                Err(shared) => {
                    vm = shared;
                    vm.notify_all(&self.host);
                    // Poll every millisecond: requests on the VM are short, and a VM_RUN
                    // leaves within one check of its loop once notified.
                    let tick = (self.host.counter_freq() / 1000).max(1);
                    let deadline = self.host.counter().saturating_add(tick);
                    let chan = Arc::as_ptr(&vm) as usize;
                    self.host.sleep(chan, Some(deadline), &|| true);
                }
            }
        };
        let vmid = vm.vmid;
        let mem_len = vm.mem.lock().segments_len();
        vm.destroy(&self.host);
        self.release_guest_mem(mem_len);
        let mut reg = self.reg.lock();
        reg.vmids.free(vmid);
        reg.dying = reg.dying.saturating_sub(1);
        Ok(())
    }

    /// Sets the limit on guest memory over all VMs (bytes). Memory already allocated
    /// stays; new segments must fit under the new limit.
    pub fn set_max_guest_mem(&self, bytes: u64) {
        self.max_guest_mem.store(bytes, Ordering::SeqCst);
    }

    /// (bytes of guest memory allocated, the limit).
    pub fn guest_mem(&self) -> (u64, u64) {
        (
            self.guest_mem.load(Ordering::SeqCst),
            self.max_guest_mem.load(Ordering::SeqCst),
        )
    }

    /// Counts `len` more bytes of guest memory, or `ENOMEM` if that would pass the limit.
    pub(crate) fn reserve_guest_mem(&self, len: u64) -> KResult<()> {
        let max = self.max_guest_mem.load(Ordering::SeqCst);
        self.guest_mem
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(len).filter(|&n| n <= max)
            })
            .map(|_| ())
            .map_err(|_| Errno::ENOMEM)
    }

    pub(crate) fn release_guest_mem(&self, len: u64) {
        let _ = self
            .guest_mem
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                Some(used.saturating_sub(len))
            });
    }

    /// The VM called `name`.
    pub(crate) fn lookup(&self, name: &[u8]) -> KResult<Arc<Vm<H>>> {
        self.check_up()?;
        self.reg
            .lock()
            .vms
            .iter()
            .find(|v| v.name == name)
            .cloned()
            .ok_or(Errno::ENOENT)
    }

    /// Number of VMs.
    pub fn vm_count(&self) -> usize {
        self.reg.lock().vms.len()
    }

    /// Guest memory behind `gpa` of VM `name`, for mmap of /dev/vmm/NAME (FreeBSD's
    /// `d_mmap_single`, whose offset is the guest physical address) or the testbed's
    /// shared memory: the host physical address, its kernel VA and how many bytes from
    /// there are physically contiguous within the same mapping. `None` where no guest
    /// memory is mapped.
    pub fn gpa_to_pa(&self, name: &[u8], gpa: u64) -> Option<(u64, *mut u8, u64)> {
        let vm = self.lookup(name).ok()?;
        let mem = vm.mem.lock();
        mem.gpa_to_phys(gpa)
    }

    /// Memory of segment `segid` of VM `name` at offset `off`, mapped or not: the host
    /// physical address, its kernel VA and how many bytes are contiguous from there. For
    /// mmap of a device-memory segment's node (FreeBSD's /dev/vmm.io/NAME.SEG, a
    /// bootrom) and for hosts that hand whole segments to userspace.
    pub fn segment_phys(&self, name: &[u8], segid: i32, off: u64) -> Option<(u64, *mut u8, u64)> {
        let vm = self.lookup(name).ok()?;
        let mem = vm.mem.lock();
        mem.segs
            .get(usize::try_from(segid).ok()?)?
            .as_ref()?
            .phys_at(off)
    }

    /// Makes VM_RUN on vCPU `vcpu` of VM `name` return to userspace (a BOGUS exit) soon:
    /// for hosts without signals (the testbed broker, when the client that asked for the
    /// run goes away). On FreeBSD a signal does this through `Host::should_yield`.
    pub fn kick_vcpu(&self, name: &[u8], vcpu: usize) -> KResult<()> {
        let vm = self.lookup(name)?;
        if vcpu >= vm.vcpus.len() {
            return Err(Errno::EINVAL);
        }
        vm.notify(&self.host, vcpu, true);
        Ok(())
    }

    /// Marks vCPU `vcpu` of VM `name` as having an interrupt pending and makes it
    /// notice (WFI wakes up). The entry point the interrupt paths (vGIC, timers) use.
    pub fn set_irq_pending(&self, name: &[u8], vcpu: usize, pending: bool) -> KResult<()> {
        let vm = self.lookup(name)?;
        let slot = vm.vcpus.get(vcpu).ok_or(Errno::EINVAL)?;
        slot.shared.irq_pending.store(pending, Ordering::SeqCst);
        if pending {
            vm.notify(&self.host, vcpu, false);
        }
        Ok(())
    }
}

/// Per CPU on an nVHE host: an EL2 stack, the blob's vectors through the stub, the
/// blob's init with the EL2 tables and `cfg`'s register values. Then, on either host,
/// ICH_VTR_EL2 from every CPU, and its list registers emptied (HYP_VGIC_CLEAR). Returns the stacks, how many CPUs failed and came up,
/// and the ICH_VTR_EL2 with the fewest list registers. An allocation failure frees the
/// stacks made so far.
fn bring_up_el2<H: Host>(
    host: &H,
    params: &InitParams,
    cfg: &El2Config,
    ncpu: usize,
) -> KResult<(Vec<PhysMem>, usize, usize, u64)> {
    let mut stacks: Vec<PhysMem> = Vec::new();
    let free_stacks = |stacks: &mut Vec<PhysMem>| {
        for s in stacks.drain(..) {
            free_for_el2(host, s);
        }
    };
    let nvhe = match params.regime {
        El2Regime::Nvhe {
            hyp_init_vectors_pa,
            el2_ttbr0,
            ..
        } => Some((hyp_init_vectors_pa, el2_ttbr0)),
        El2Regime::Vhe => None,
    };
    if nvhe.is_some() {
        stacks.try_reserve_exact(ncpu).map_err(|_| Errno::ENOMEM)?;
        for _ in 0..ncpu {
            let s = match alloc_for_el2(host, EL2_STACK_SIZE) {
                Ok(s) => s,
                Err(e) => {
                    free_stacks(&mut stacks);
                    return Err(e);
                }
            };
            stacks.push(s);
        }
    }
    let failed = AtomicUsize::new(0);
    let inited = AtomicUsize::new(0);
    // ICH_VTR_EL2.ListRegs of the CPU with the fewest list registers (they are
    // normally all alike): a flush must not fill registers some CPU lacks.
    let ich_vtr = AtomicU64::new(u64::MAX);
    host.run_on_all_cpus(&|cpu| {
        if let Some((init_vectors, ttbr0)) = nvhe {
            let Some(top) = stacks.get(cpu).and_then(|s| s.pa.checked_add(s.len as u64)) else {
                failed.fetch_add(1, Ordering::SeqCst);
                return;
            };
            // SAFETY: the stub's one service: VBAR_EL2 = the blob's init vectors, which
            // the glue mapped for EL2 with the rest of the blob.
            unsafe { host.hyp_call(init_vectors, &[0; 7]) };
            let args = [top, cfg.tcr_el2, cfg.sctlr_el2, cfg.vtcr_el2, 0, 0, 0];
            // SAFETY: the init handler takes the host's EL2 tables, this CPU's stack
            // (mapped for EL2 above) and register values computed by El2Config.
            let r = unsafe { host.hyp_call(ttbr0, &args) };
            if r != 0 {
                failed.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
        let args = [hyp::HYP_REG_ICH_VTR, 0, 0, 0, 0, 0, 0];
        // SAFETY: a register read at EL2; no memory is passed.
        let vtr = unsafe { host.hyp_call(hyp::HYP_READ_REGISTER, &args) };
        if vtr == hyp::HYP_RET_UNKNOWN {
            failed.fetch_add(1, Ordering::SeqCst);
            return;
        }
        // SAFETY: empties this CPU's virtual CPU interface; no memory is passed.
        if unsafe { host.hyp_call(hyp::HYP_VGIC_CLEAR, &[0; 7]) } != 0 {
            failed.fetch_add(1, Ordering::SeqCst);
            return;
        }
        inited.fetch_add(1, Ordering::SeqCst);
        let _ = ich_vtr.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |old| {
            (old == u64::MAX || vtr & 0x1f < old & 0x1f).then_some(vtr)
        });
    });
    Ok((
        stacks,
        failed.load(Ordering::SeqCst),
        inited.load(Ordering::SeqCst),
        ich_vtr.load(Ordering::SeqCst),
    ))
}
