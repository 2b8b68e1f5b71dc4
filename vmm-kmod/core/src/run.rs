//! VM_RUN: enter the guest, classify each exit, answer in the kernel what the kernel
//! owns (stage-2 faults on guest RAM, debug/OS-lock/ID registers, WFI, host interrupts,
//! aborts nobody can emulate) and return the rest to userspace as a `vm_exit`.
//!
//! PC convention (FreeBSD's `nextpc`): an exit reports the PC of the trapping
//! instruction (for HVC, the hardware already points past it). When userspace completes
//! an INST_EMUL, REG_EMUL or SMC-SMCCC exit, the next VM_RUN first moves the PC past the
//! instruction (`inst_length`, 4) -- unless userspace set the PC itself or injected an
//! exception, whose return address is the trapping instruction.

use crate::errno::{Errno, KResult};
use crate::exit::{self, Abort, Decoded, FaultKind};
use crate::host::Host;
use crate::mmio_shortcut::{Store, QUEUE_LATENCY_MS};
use crate::stats::{Stat, Stats};
use crate::sysemul::{self, SysRegAnswer};
use crate::vcpu::{from_el0, Vcpu};
use crate::vgic::Kicks;
use crate::vm::{bit, GuestNoise, VcpuShared, VcpuSlot, Vm, NOT_RUNNING};
use crate::vmm::Vmm;
use crate::vtimer;
use core::sync::atomic::Ordering;
use vmm_sys::abi::{
    ExitHyp, ExitInstEmul, ExitRegEmul, ExitSmccc, ExitSuspended, Vie, VmExit, VmGuestPaging, Vre,
    VM_DIR_READ, VM_DIR_WRITE, VM_GP_MMU_ENABLED,
};
use vmm_sys::arm64::esr::{self, DataAbort, SysRegAccess};
use vmm_sys::arm64::sysreg;
use vmm_sys::exit::ExitCode;
use vmm_sys::reg::VM_REG_LAST;

/// Every A64 instruction that traps is 4 bytes.
const INSN_SIZE: u64 = 4;
/// Consecutive stage-2 faults on the same guest RAM page after which VM_RUN gives up
/// with EFAULT instead of spinning (a mapping that cannot be made to stick).
pub(crate) const MAX_RAM_FAULT_REPEAT: u32 = 64;

/// What one handled exit leads to.
enum Next {
    /// Enter the guest again.
    Reenter,
    /// Return this exit to userspace.
    User(VmExit),
}

/// What the run's host timer needs to make a running vCPU exit. Lives on `run_loop`'s
/// stack; the timer, declared after it, is dropped first, and dropping a host timer
/// waits for a running callback (the `Host::Timer` contract).
struct KickTarget<'a, H: Host> {
    host: &'a H,
    shared: &'a VcpuShared,
}

/// The run's host timer fired (the emulated physical timer's deadline, or queued MMIO
/// stores due to userspace) while the guest runs: like a notifier, marks the vCPU (the
/// entry re-check then flushes again) and IPIs it if it is in the guest; the exit
/// evaluates the timer and pends PPI 30, or returns BOGUS for the stores.
fn kick_timer_fired<H: Host>(arg: usize) {
    // SAFETY: `arg` is the address of the `KickTarget<H>` the timer was created with,
    // which outlives the timer (see `KickTarget`); only its shared references are used.
    let k: &KickTarget<'_, H> = unsafe { &*(arg as *const KickTarget<'_, H>) };
    k.shared.irq_pending.store(true, Ordering::SeqCst);
    let cpu = k.shared.running_on.load(Ordering::SeqCst);
    if cpu != NOT_RUNNING {
        k.host.kick_cpu(cpu);
    }
}

/// The host timer of one VM_RUN (`arm_kick_timer`), created on first need and armed
/// only when the deadline changes.
struct KickTimer<H: Host> {
    timer: Option<H::Timer>,
    armed_at: Option<u64>,
}

/// Clears `in_run` when VM_RUN ends, however it ends.
struct InRun<'a, H: Host>(&'a VcpuSlot<H>);

impl<H: Host> Drop for InRun<'_, H> {
    fn drop(&mut self) {
        self.0.shared.in_run.store(false, Ordering::SeqCst);
    }
}

/// Queues an exception the kernel answers an exit with, and counts it.
fn inject(vcpu: &mut Vcpu, stats: &Stats, esr: u64, far: u64) {
    vcpu.inject(esr, far);
    stats.inc(Stat::Injected);
}

/// The register number an exit names for Rt: 0..=30 as themselves (x30 = LR), 31 (XZR
/// or WZR) as `VM_REG_LAST`, which VM_GET_REGISTER reads as zero and VM_SET_REGISTER
/// ignores. FreeBSD passes 31 through, which its register accessors take for SP: a
/// `str wzr` would store the stack pointer and a load into wzr would clobber it.
pub fn rt_to_regnum(rt: u8) -> i32 {
    if rt >= 31 {
        VM_REG_LAST as i32
    } else {
        i32::from(rt)
    }
}

fn exit_base(code: ExitCode, pc: u64, inst_length: i32) -> VmExit {
    VmExit {
        exitcode: code as i32,
        inst_length,
        pc,
        ..VmExit::default()
    }
}

fn hyp_exit(kind: u32, c: &vmm_sys::hyp::VcpuContext) -> VmExit {
    let mut e = exit_base(ExitCode::Hyp, c.pc, 4);
    e.u.hyp = ExitHyp {
        exception_nr: kind,
        pad: 0,
        esr_el2: c.exit.esr_el2,
        far_el2: c.exit.far_el2,
        hpfar_el2: c.exit.hpfar_el2,
    };
    e
}

/// The guest's translation regime, for userspace decoding of guest virtual addresses.
fn paging(c: &vmm_sys::hyp::VcpuContext) -> VmGuestPaging {
    // TTBRn_EL1 without ASID (bits 63:48) and CnP (bit 0).
    const TTBR_ADDR: u64 = 0x0000_ffff_ffff_fffe;
    let mut flags = (c.pstate & 0x1f) as i32;
    if c.el1.sctlr_el1 & 1 != 0 {
        flags |= VM_GP_MMU_ENABLED;
    }
    VmGuestPaging {
        ttbr0_addr: c.el1.ttbr0_el1 & TTBR_ADDR,
        ttbr1_addr: c.el1.ttbr1_el1 & TTBR_ADDR,
        tcr_el1: c.el1.tcr_el1,
        tcr2_el1: 0,
        flags,
        padding: 0,
    }
}

impl<H: Host> Vmm<H> {
    /// VM_RUN on vCPU `id`: runs until an exit userspace must see.
    pub(crate) fn run(&self, vm: &Vm<H>, id: i32) -> KResult<VmExit> {
        let slot = vm.slot(id)?;
        let idu = u32::try_from(id).map_err(|_| Errno::EINVAL)?;
        if vm.active.load(Ordering::SeqCst) & bit(idu) == 0
            || vm.suspended.load(Ordering::SeqCst) & bit(idu) != 0
        {
            return Err(Errno::EINVAL);
        }
        if slot
            .shared
            .in_run
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(Errno::EBUSY);
        }
        let _in_run = InRun(slot);
        let mut g = slot.vcpu.lock();
        let vcpu = vm.materialise(&self.host, id, &mut g)?;
        let stats = &slot.shared.stats;
        stats.inc(Stat::VmRun);
        // Tested before taken, and the exit changed in place: each copy of a VmExit
        // is a memcpy call on the hot path.
        let exit = if vcpu.held_exit.is_some() {
            vcpu.held_exit.take().unwrap_or_default()
        } else {
            let mut e = self.run_loop(vm, slot, vcpu, idu)?;
            if vm.mmio_flush_at.load(Ordering::SeqCst) != 0 {
                self.hold_behind_stores(vcpu, &mut e);
            }
            e
        };
        self.host.exit_to_user(&exit, &vcpu.ctx_ref().x);
        stats.inc(Stat::ExitsToUser);
        Ok(exit)
    }

    /// With MMIO stores queued: holds `e` for the next VM_RUN and makes it BOGUS, so
    /// userspace takes the stores the guest made before `e` first. Never SUSPENDED (a
    /// vCPU that has seen it does not run again; the VMM takes the stores left once its
    /// vCPUs have stopped) or BOGUS itself.
    fn hold_behind_stores(&self, vcpu: &mut Vcpu, e: &mut VmExit) {
        if e.exitcode == ExitCode::Bogus as i32 || e.exitcode == ExitCode::Suspended as i32 {
            return;
        }
        let pc = vcpu.ctx_ref().pc;
        vcpu.held_exit = Some(core::mem::replace(e, exit_base(ExitCode::Bogus, pc, 0)));
    }

    fn run_loop(
        &self,
        vm: &Vm<H>,
        slot: &VcpuSlot<H>,
        vcpu: &mut Vcpu,
        id: u32,
    ) -> KResult<VmExit> {
        let stats = &slot.shared.stats;
        // (page, count) of consecutive stage-2 faults on the same guest RAM page.
        let mut last_ram_fault: (u64, u32) = (u64::MAX, 0);
        // Declared in this order so the timer is dropped (and its callback drained)
        // before what the callback reads.
        let kick = KickTarget {
            host: &self.host,
            shared: &slot.shared,
        };
        let mut kick_timer: KickTimer<H> = KickTimer {
            timer: None,
            armed_at: None,
        };
        loop {
            if let Some(e) = self.check_leave(vm, slot, vcpu, id) {
                return Ok(e);
            }
            vcpu.prepare_entry();
            if vm.needs_cache_sync.load(Ordering::Relaxed)
                && vm.needs_cache_sync.swap(false, Ordering::SeqCst)
            {
                let mem = vm.mem.lock();
                for seg in mem.segs.iter().flatten() {
                    for c in seg.chunks() {
                        self.host.sync_caches_for_guest(c.va, c.len);
                    }
                }
            }
            // With a vGIC: the virtual timer's output as driven into the flushed state.
            let flushed_vtimer = self.vgic_flush(vm, slot, vcpu, id)?;
            let has_vgic = flushed_vtimer.is_some();
            if has_vgic
                || kick_timer.armed_at.is_some()
                || vm.mmio_flush_at.load(Ordering::Relaxed) != 0
            {
                self.arm_kick_timer(vm, &kick, &mut kick_timer, vcpu, has_vgic);
            }
            let tok = self.host.intr_disable();
            let cpu = self.host.current_cpu();
            slot.shared.running_on.store(cpu, Ordering::SeqCst);
            // Re-check with interrupts off and `running_on` published: a notifier that
            // set its flag before seeing `running_on` is caught here; one that sets it
            // later sends an IPI that stays pending and exits the guest at once. An
            // interrupt raised after the flush whose notifier saw the vCPU not running
            // (so sent no IPI) shows as `irq_pending`: flush again; the same for device
            // registers whose answers changed (`mmio_gen`).
            if slot.shared.kick.load(Ordering::SeqCst)
                || vm.suspend.load(Ordering::SeqCst) != 0
                || vm.debug.load(Ordering::SeqCst) & bit(id) != 0
                || (has_vgic && slot.shared.irq_pending.load(Ordering::SeqCst))
                || vm.mmio_gen.load(Ordering::SeqCst) != vcpu.mmio_gen
            {
                slot.shared.running_on.store(NOT_RUNNING, Ordering::SeqCst);
                self.host.intr_restore(tok);
                if has_vgic {
                    // Fold back what the flush put in the list registers: it took edge
                    // interrupts' latches, and the next flush would not see them.
                    self.vgic_after_exit(vm, vcpu, id);
                }
                // After the flush: an interrupt a device model raised after publishing
                // a register's new value is entered with that value.
                let gen = vm.mmio_gen.load(Ordering::SeqCst);
                if gen != vcpu.mmio_gen {
                    vcpu.mmio_gen = gen;
                    let mmio = vm.mmio.lock();
                    let a = &mut vcpu.ctx().el2_answers;
                    mmio.el2_rows(a);
                    a.store_queue = vm.store_queue_el2(&self.host);
                }
                continue;
            }
            // While the guest's virtual timer output is high, the host's PPI 27 is held
            // for the entry, or the guest would exit at once, before it could take its
            // virtual interrupt (docs/vgic.md). With a vGIC the level is the one the
            // flush put in the list registers: held only when the guest has PPI 27 to
            // take (a timer due after the flush exits the guest through the unheld PPI,
            // and the next flush delivers it). Without a vGIC the guest cannot take it
            // anyway: held whenever high, so the guest at least runs.
            let vtimer_high = flushed_vtimer
                .unwrap_or_else(|| vtimer::virt_level(&vcpu.ctx_ref().timer, self.host.counter()));
            self.hold_vtimer(cpu, vtimer_high);
            // SAFETY: the context page is mapped for EL2, holds a VcpuContext the core
            // filled (VTTBR with this VM's tables and VMID), and no one else touches it
            // while we hold the vCPU lock; interrupts are disabled as the call requires.
            let kind = unsafe { self.host.enter_guest(vcpu.ctx_page()) };
            // The host (or another vCPU) on this CPU starts clean.
            self.hold_vtimer(cpu, false);
            slot.shared.running_on.store(NOT_RUNNING, Ordering::SeqCst);
            self.host.intr_restore(tok);
            stats.inc(Stat::Exits);
            // Every access the EL2 code answered; of them, the device-register loads
            // and stores.
            let answered = core::mem::take(&mut vcpu.ctx().el2_answers.answered);
            if answered != 0 {
                let a = &mut vcpu.ctx().el2_answers;
                let loads = core::mem::take(&mut a.answered_mmio);
                let stores = core::mem::take(&mut a.queued_mmio);
                let mmio = loads.saturating_add(stores);
                stats.add(Stat::Exits, answered);
                stats.add(Stat::SysRegEl2, answered.saturating_sub(mmio));
                if mmio != 0 {
                    stats.add(Stat::MmioAnswered, loads);
                    stats.add(Stat::MmioQueued, stores);
                    stats.add(Stat::MmioEl2, mmio);
                }
            }
            let Ok(kind) = u32::try_from(kind) else {
                self.host
                    .log(format_args!("vmm: guest entry failed: {kind:#x}"));
                return Err(Errno::ENXIO);
            };
            vcpu.ctx().exit.kind = kind;
            self.vgic_after_exit(vm, vcpu, id);
            let info = vcpu.ctx_ref().exit;
            let decoded = exit::decode(kind, &info);
            if !matches!(decoded, Decoded::DataAbort(_) | Decoded::InstAbort(_)) {
                last_ram_fault = (u64::MAX, 0);
            }
            // Matched whole, not with `?`: moving the `Next` out of the result first
            // copies the exit on every reentry too.
            match self.handle(vm, slot, vcpu, kind, &decoded, &mut last_ram_fault) {
                Ok(Next::Reenter) => continue,
                Ok(Next::User(e)) => return Ok(e),
                Err(e) => return Err(e),
            }
        }
    }

    /// Exits due before entering: VM suspended or destroyed, vCPU held for the
    /// debugger, kicked to userspace, or the thread has a signal to take.
    fn check_leave(
        &self,
        vm: &Vm<H>,
        slot: &VcpuSlot<H>,
        vcpu: &mut Vcpu,
        id: u32,
    ) -> Option<VmExit> {
        let stats = &slot.shared.stats;
        let pc = vcpu.ctx_ref().pc;
        let how = vm.suspend.load(Ordering::SeqCst);
        if how != 0 {
            vm.suspended.fetch_or(bit(id), Ordering::SeqCst);
            let mut e = exit_base(ExitCode::Suspended, pc, 0);
            e.u.suspended = ExitSuspended { how };
            return Some(e);
        }
        if vm.debug.load(Ordering::SeqCst) & bit(id) != 0 {
            return Some(exit_base(ExitCode::Debug, pc, 0));
        }
        // Load first: the RMW costs more and the flag is almost always clear.
        if slot.shared.kick.load(Ordering::Relaxed)
            && slot.shared.kick.swap(false, Ordering::SeqCst)
        {
            stats.inc(Stat::Kicks);
            return Some(exit_base(ExitCode::Bogus, pc, 0));
        }
        if self.host.should_yield() {
            return Some(exit_base(ExitCode::Bogus, pc, 0));
        }
        None
    }

    fn handle(
        &self,
        vm: &Vm<H>,
        slot: &VcpuSlot<H>,
        vcpu: &mut Vcpu,
        kind: u32,
        d: &Decoded,
        ram_fault: &mut (u64, u32),
    ) -> KResult<Next> {
        let stats = &slot.shared.stats;
        let pc = vcpu.ctx_ref().pc;
        match d {
            Decoded::Interrupt => {
                stats.inc(Stat::HostIrq);
                // Queued MMIO stores reach userspace within a host tick even if the
                // guest makes no other exit.
                if vm.mmio_flush_at.load(Ordering::Relaxed) != 0 {
                    return Ok(Next::User(exit_base(ExitCode::Bogus, pc, 0)));
                }
                Ok(Next::Reenter)
            }
            Decoded::Hvc { imm: 0 } => Ok(Next::User(self.smccc_exit(vcpu, stats, 0))),
            Decoded::Smc { imm: 0 } => {
                let e = self.smccc_exit(vcpu, stats, INSN_SIZE);
                Ok(Next::User(e))
            }
            Decoded::Hvc { .. } | Decoded::Smc { .. } | Decoded::Other => {
                stats.inc(Stat::Unclassified);
                Ok(Next::User(hyp_exit(kind, vcpu.ctx_ref())))
            }
            Decoded::SysReg { access, iss } => {
                if let Some(next) = self.kernel_sysreg(vm, vcpu, stats, access)? {
                    return Ok(next);
                }
                let ctx = vcpu.ctx_ref();
                let ans = sysemul::answer(access, &self.ids, ctx.el2.vpidr_el2, ctx.el2.vmpidr_el2);
                match ans {
                    SysRegAnswer::Read(v) => {
                        vcpu.set_x(access.rt, v);
                        self.skip_insn(vcpu);
                        stats.inc(Stat::SysRegKernel);
                        Ok(Next::Reenter)
                    }
                    SysRegAnswer::Ignored => {
                        self.skip_insn(vcpu);
                        stats.inc(Stat::SysRegKernel);
                        Ok(Next::Reenter)
                    }
                    SysRegAnswer::Undefined => {
                        inject(vcpu, stats, esr::ESR_UNDEFINED, 0);
                        Ok(Next::Reenter)
                    }
                    SysRegAnswer::ToUser => {
                        stats.inc(Stat::RegEmul);
                        vcpu.pending_advance = INSN_SIZE;
                        let mut e = exit_base(ExitCode::RegEmul, pc, INSN_SIZE as i32);
                        e.u.reg_emul = ExitRegEmul {
                            vre: Vre {
                                inst_syndrome: *iss,
                                dir: if access.read {
                                    VM_DIR_READ
                                } else {
                                    VM_DIR_WRITE
                                },
                                _pad: [0; 3],
                                reg: rt_to_regnum(access.rt),
                            },
                        };
                        Ok(Next::User(e))
                    }
                }
            }
            Decoded::Wfi => {
                stats.inc(Stat::Wfi);
                if vm.mmio_flush_at.load(Ordering::Relaxed) != 0 {
                    // Not asleep with output queued: userspace takes it, then the
                    // guest runs its WFI again.
                    return Ok(Next::User(exit_base(ExitCode::Bogus, pc, 0)));
                }
                if vcpu.halt_exit {
                    vcpu.pending_advance = INSN_SIZE;
                    return Ok(Next::User(exit_base(ExitCode::Wfi, pc, INSN_SIZE as i32)));
                }
                self.skip_insn(vcpu);
                self.wfi_wait(vm, slot, vcpu)
            }
            Decoded::Wfe => {
                stats.inc(Stat::Wfe);
                self.skip_insn(vcpu);
                if self.host.wfe_should_yield() {
                    stats.inc(Stat::WfeYield);
                    let pc = vcpu.ctx_ref().pc;
                    return Ok(Next::User(exit_base(ExitCode::Bogus, pc, 0)));
                }
                Ok(Next::Reenter)
            }
            Decoded::Brk => {
                let mut e = hyp_exit(kind, vcpu.ctx_ref());
                e.exitcode = ExitCode::Brk as i32;
                Ok(Next::User(e))
            }
            Decoded::HiddenFeature => {
                inject(vcpu, stats, esr::ESR_UNDEFINED, 0);
                Ok(Next::Reenter)
            }
            Decoded::DataAbort(a) => self.abort(vm, vcpu, stats, a, true, ram_fault),
            Decoded::InstAbort(a) => self.abort(vm, vcpu, stats, a, false, ram_fault),
        }
    }

    /// Moves the PC past the trapped instruction the kernel just completed.
    fn skip_insn(&self, vcpu: &mut Vcpu) {
        let c = vcpu.ctx();
        c.pc = c.pc.wrapping_add(INSN_SIZE);
    }

    fn smccc_exit(&self, vcpu: &mut Vcpu, stats: &Stats, advance: u64) -> VmExit {
        stats.inc(Stat::Smccc);
        vcpu.pending_advance = advance;
        let c = vcpu.ctx_ref();
        let mut e = exit_base(ExitCode::Smccc, c.pc, INSN_SIZE as i32);
        let mut args = [0u64; 7];
        for (i, a) in args.iter_mut().enumerate() {
            // i < 7, so i + 1 <= 7 < 31.
            #[allow(clippy::arithmetic_side_effects)]
            let r = i + 1;
            *a = c.x.get(r).copied().unwrap_or(0);
        }
        e.u.smccc_call = ExitSmccc {
            func_id: c.x.first().copied().unwrap_or(0),
            args,
        };
        e
    }

    /// A stage-2 abort: guest RAM is handled here, MMIO goes to userspace, and what
    /// nobody can emulate is answered with an abort injected into the guest.
    fn abort(
        &self,
        vm: &Vm<H>,
        vcpu: &mut Vcpu,
        stats: &Stats,
        a: &Abort,
        data: bool,
        ram_fault: &mut (u64, u32),
    ) -> KResult<Next> {
        let at_el0 = from_el0(vcpu.ctx_ref());
        if let FaultKind::Other(_) = a.kind {
            // External aborts, TLB conflicts...: not about our tables.
            stats.inc(Stat::Unclassified);
            let kind = vcpu.ctx_ref().exit.kind;
            return Ok(Next::User(hyp_exit(kind, vcpu.ctx_ref())));
        }
        if a.ipa >= self.cfg.s2.ipa_limit() {
            inject(vcpu, stats, exit::address_size_esr(data, at_el0), a.far);
            return Ok(Next::Reenter);
        }
        // The vGIC's windows are never RAM: no lookup for them.
        if !vm.vgic_windows.contains(a.ipa) {
            let mut mem = vm.mem.lock();
            if let Some(m) = mem.map_at(a.ipa).copied() {
                let p = m.perm();
                let allowed = if !data {
                    p.exec
                } else if a.write {
                    p.write
                } else {
                    p.read
                };
                if !allowed || a.kind == FaultKind::Permission {
                    // A write to read-only memory, a fetch from no-execute memory: what
                    // hardware answers for a bus error.
                    drop(mem);
                    inject(vcpu, stats, exit::external_abort_esr(data, at_el0), a.far);
                    return Ok(Next::Reenter);
                }
                stats.inc(Stat::RamFault);
                let page = a.ipa & !0xfff;
                if ram_fault.0 == page {
                    ram_fault.1 = ram_fault.1.saturating_add(1);
                    if ram_fault.1 > MAX_RAM_FAULT_REPEAT {
                        let (now, freq) = (self.host.counter(), self.host.counter_freq());
                        if vm.noise.allow(GuestNoise::RamFaultLoop, now, freq) {
                            self.host.log(format_args!(
                                "vmm: guest faults repeatedly on its RAM at IPA {page:#x}"
                            ));
                        } else {
                            stats.inc(Stat::LogSuppressed);
                        }
                        return Err(Errno::EFAULT);
                    }
                } else {
                    *ram_fault = (page, 1);
                }
                if mem.s2.translate(&self.host, page).is_none() {
                    // Not in the tables (an earlier mapping failure left a hole): fault
                    // the page in from its segment.
                    let (pa, _, _) = mem.gpa_to_phys(page).ok_or(Errno::EFAULT)?;
                    mem.s2.map(&self.host, page, pa, 4096, p)?;
                }
                return Ok(Next::Reenter);
            }
        }
        if a.kind == FaultKind::Permission {
            // Permission faults come only from valid entries, which only guest RAM maps:
            // the IPA is not a mapping's, so HPFAR did not hold it (Armv8.0 leaves it
            // UNKNOWN for permission faults unless EL2 translates FAR with AT). Never
            // hand userspace an MMIO access at a made-up address.
            inject(vcpu, stats, exit::external_abort_esr(data, at_el0), a.far);
            return Ok(Next::Reenter);
        }
        if !data || a.s1ptw {
            // Instruction fetch from, or the guest's page-table walk through, something
            // that is not memory.
            inject(vcpu, stats, exit::external_abort_esr(data, at_el0), a.far);
            return Ok(Next::Reenter);
        }
        if a.cache_maint {
            // DC maintenance by VA on MMIO: nothing to maintain (as KVM does).
            self.skip_insn(vcpu);
            return Ok(Next::Reenter);
        }
        let Some(da) = a.syndrome else {
            stats.inc(Stat::NoSyndromeAbort);
            inject(vcpu, stats, exit::external_abort_esr(true, at_el0), a.far);
            return Ok(Next::Reenter);
        };
        if self.vgic_mmio(vm, vcpu, a.ipa, &da) {
            stats.inc(Stat::VgicMmio);
            return Ok(Next::Reenter);
        }
        // 8-byte accesses are never handled: no call, no lock.
        if da.size <= 4 {
            if let Some(next) = self.mmio_shortcut(vm, vcpu, stats, a.ipa, &da) {
                return Ok(next);
            }
        }
        Ok(Next::User(self.inst_emul_exit(vcpu, stats, a.ipa, da)))
    }

    /// A 1-, 2- or 4-byte access to a register userspace asked the kernel to handle: a
    /// load answered with the published value, a store queued (or, with the queue
    /// full, a BOGUS exit so userspace takes the queue; the guest then runs the store
    /// again). `None`: not such a register. Not inlined: the run loop's other exits do
    /// not pay for its code.
    #[inline(never)]
    fn mmio_shortcut(
        &self,
        vm: &Vm<H>,
        vcpu: &mut Vcpu,
        stats: &Stats,
        ipa: u64,
        da: &DataAbort,
    ) -> Option<Next> {
        if da.write {
            let value = vcpu.get_x(da.srt);
            let mut mmio = vm.mmio.lock();
            // The deadline is set before the queue opens: the EL2 code adds to an open
            // queue only, and whatever it adds is then taken in time.
            let opening = || {
                let delay = self
                    .host
                    .counter_freq()
                    .saturating_mul(QUEUE_LATENCY_MS)
                    .checked_div(1000)
                    .unwrap_or(0);
                let by = self.host.counter().saturating_add(delay);
                vm.mmio_flush_at.store(by.max(1), Ordering::SeqCst);
            };
            match mmio.store(vm.store_queue(), ipa, da.size, value, opening) {
                Store::Queued => {
                    drop(mmio);
                    self.skip_insn(vcpu);
                    stats.inc(Stat::MmioQueued);
                    Some(Next::Reenter)
                }
                Store::QueueFull => {
                    let pc = vcpu.ctx_ref().pc;
                    Some(Next::User(exit_base(ExitCode::Bogus, pc, 0)))
                }
                Store::NotHandled => None,
            }
        } else {
            let value = vm.mmio.lock().load(ipa, da.size)?;
            vcpu.set_x(da.srt, esr::load_result(value, da));
            self.skip_insn(vcpu);
            stats.inc(Stat::MmioAnswered);
            Some(Next::Reenter)
        }
    }

    fn inst_emul_exit(&self, vcpu: &mut Vcpu, stats: &Stats, gpa: u64, da: DataAbort) -> VmExit {
        stats.inc(Stat::InstEmul);
        vcpu.pending_advance = INSN_SIZE;
        if !da.write {
            vcpu.pending_load = Some(da);
        }
        let c = vcpu.ctx_ref();
        let mut e = exit_base(ExitCode::InstEmul, c.pc, INSN_SIZE as i32);
        e.u.inst_emul = ExitInstEmul {
            gpa,
            paging: paging(c),
            vie: Vie::new(da.size, da.sign_extend, da.write, rt_to_regnum(da.srt)),
        };
        e
    }

    /// WFI: sleep until an interrupt is pending for the guest, the vCPU is notified,
    /// or a signal arrives (then BOGUS, so userspace can take it). With a vGIC, pending
    /// means `Vgic::has_pending` (what the guest would take now), with both timers
    /// driven into it first and the sleep bounded by their deadline; without one, the
    /// `set_irq_pending` flag or the virtual timer's condition.
    fn wfi_wait(&self, vm: &Vm<H>, slot: &VcpuSlot<H>, vcpu: &mut Vcpu) -> KResult<Next> {
        let id = vcpu.id();
        let notified = || {
            slot.shared.kick.load(Ordering::SeqCst)
                || vm.suspend.load(Ordering::SeqCst) != 0
                || vm.debug.load(Ordering::SeqCst) & bit(id) != 0
        };
        loop {
            if notified() {
                return Ok(Next::Reenter);
            }
            let eval = vtimer::evaluate(
                &vcpu.ctx_ref().timer,
                &vcpu.ctx_ref().el2_answers.ptimer,
                self.host.counter(),
            );
            let kicks = {
                let mut g = vm.vgic.lock();
                match g.as_mut() {
                    Some(v) => {
                        let k = vtimer::update_vgic(v, id as usize, &eval)?;
                        // Cleared under the lock every notifier changes the vGIC
                        // under: a later injection sets it again and wakes the sleep.
                        slot.shared.irq_pending.store(false, Ordering::SeqCst);
                        if v.has_pending(id as usize) {
                            return Ok(Next::Reenter);
                        }
                        Some(k)
                    }
                    None => None,
                }
            };
            match kicks {
                Some(k) => vm.kick_irq(&self.host, k, Some(id as usize)),
                None => {
                    if slot.shared.irq_pending.load(Ordering::SeqCst) || eval.virt_level {
                        return Ok(Next::Reenter);
                    }
                }
            }
            // A compare value so far ahead that the host counter cannot express it never
            // fires (`evaluate` gives no deadline): sleep until notified rather than
            // spin on a deadline that wrapped into the past.
            let still = || !notified() && !slot.shared.irq_pending.load(Ordering::SeqCst);
            match self.host.sleep(slot.chan(), eval.deadline, &still) {
                crate::host::SleepResult::Interrupted => {
                    let pc = vcpu.ctx_ref().pc;
                    return Ok(Next::User(exit_base(ExitCode::Bogus, pc, 0)));
                }
                // Woken by an injection for this vCPU (a notifier sets `irq_pending`
                // only for an interrupt the distributor would deliver to it): enter at
                // once, the flush delivers it, rather than look at the whole vGIC again
                // first. Should the guest's own priority mask hide it, its WFI exits
                // again and sleeps, as a spurious wakeup the architecture allows.
                crate::host::SleepResult::Woken
                    if slot.shared.irq_pending.load(Ordering::SeqCst) =>
                {
                    return Ok(Next::Reenter);
                }
                crate::host::SleepResult::Woken | crate::host::SleepResult::TimedOut => {}
            }
        }
    }

    /// Before an entry, under the vGIC lock: clears `irq_pending`, drives both timers
    /// into the vGIC at this moment (a timer that came due while the vCPU was in
    /// userspace or asleep is seen now) and fills the list registers. Returns the
    /// virtual timer's output as driven, or `None` when the VM has no vGIC (nothing to
    /// flush; the list registers and ICH_HCR_EL2 stay zero, so the virtual CPU
    /// interface is off). `EINVAL` for a vCPU the vGIC has no redistributor for.
    fn vgic_flush(
        &self,
        vm: &Vm<H>,
        slot: &VcpuSlot<H>,
        vcpu: &mut Vcpu,
        id: u32,
    ) -> KResult<Option<bool>> {
        let mut g = vm.vgic.lock();
        let Some(v) = g.as_mut() else {
            return Ok(None);
        };
        slot.shared.irq_pending.store(false, Ordering::SeqCst);
        let eval = vtimer::evaluate(
            &vcpu.ctx_ref().timer,
            &vcpu.ctx_ref().el2_answers.ptimer,
            self.host.counter(),
        );
        // Only this vCPU's PPIs change: the flush below is its notification.
        vtimer::update_vgic(v, id as usize, &eval)?;
        v.flush(id as usize, &mut vcpu.ctx().vgic);
        Ok(Some(eval.virt_level))
    }

    /// After an exit: folds the list registers back, then notifies the vCPUs that must
    /// look (an SPI the guest finished may now go elsewhere). The timers' PPIs are
    /// driven where they are looked at: before the next entry (`vgic_flush`) and in a
    /// WFI's wait; they are this vCPU's alone, so nobody else needs them sooner.
    fn vgic_after_exit(&self, vm: &Vm<H>, vcpu: &mut Vcpu, id: u32) {
        let kicks = {
            let mut g = vm.vgic.lock();
            let Some(v) = g.as_mut() else {
                return;
            };
            v.sync(id as usize, &vcpu.ctx_ref().vgic)
        };
        vm.kick_irq(&self.host, kicks, Some(id as usize));
    }

    /// Arms the run's host timer at the first of the emulated physical timer's deadline
    /// (with a vGIC, which takes its PPI; the virtual timer needs none: its own PPI
    /// exits the guest) and the time queued MMIO stores must reach userspace by (the
    /// exit it makes then returns BOGUS), or disarms it when neither is due (a timer off
    /// or already due: the flush has delivered it). Without a host timer (the host could
    /// not make one) both are seen at the guest's next exit.
    fn arm_kick_timer(
        &self,
        vm: &Vm<H>,
        kick: &KickTarget<'_, H>,
        p: &mut KickTimer<H>,
        vcpu: &Vcpu,
        has_vgic: bool,
    ) {
        let flush_at = vm.mmio_flush_at.load(Ordering::Relaxed);
        let ptimer = if has_vgic {
            vcpu.ctx_ref()
                .el2_answers
                .ptimer
                .deadline(self.host.counter())
        } else {
            None
        };
        let flush = Some(flush_at).filter(|&t| t != 0);
        let want = match (ptimer, flush) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if want == p.armed_at {
            return;
        }
        if p.timer.is_none() && want.is_some() {
            let arg = kick as *const KickTarget<'_, H> as usize;
            match self.host.timer_create(kick_timer_fired::<H>, arg) {
                Ok(t) => p.timer = Some(t),
                Err(_) => return,
            }
        }
        if let Some(t) = p.timer.as_ref() {
            match want {
                Some(d) => self.host.timer_arm(t, d),
                None => self.host.timer_cancel(t),
            }
            p.armed_at = want;
        }
    }

    /// Holds or releases the host's virtual-timer PPI on host CPU `cpu` (interrupts are
    /// off), calling the host only when the state there changes.
    fn hold_vtimer(&self, cpu: usize, held: bool) {
        let Some(s) = self.vtimer_held.get(cpu) else {
            return;
        };
        if s.load(Ordering::Relaxed) != held {
            s.store(held, Ordering::Relaxed);
            self.host.hold_vtimer_irq(held);
        }
    }

    /// A data abort with a syndrome outside guest RAM: if it falls in the vGIC's
    /// distributor or redistributor window, emulates it here (a load's value written to
    /// Rt as the instruction would, sign-extended per SSE/SF; XZR discards), moves the
    /// PC past it and notifies the vCPUs a write made something pending for. False when
    /// it is not the vGIC's (INST_EMUL to userspace).
    fn vgic_mmio(&self, vm: &Vm<H>, vcpu: &mut Vcpu, ipa: u64, da: &DataAbort) -> bool {
        let id = vcpu.id() as usize;
        let mut value = if da.write { vcpu.get_x(da.srt) } else { 0 };
        let kicks = {
            let mut g = vm.vgic.lock();
            let Some(v) = g.as_mut() else {
                return false;
            };
            match v.mmio_access(id, ipa, da.size, da.write, &mut value) {
                Some(k) => k,
                None => return false,
            }
        };
        if !da.write {
            vcpu.set_x(da.srt, esr::load_result(value, da));
        }
        self.skip_insn(vcpu);
        vm.kick_irq(&self.host, kicks, Some(id));
        true
    }

    /// Trapped system registers the kernel emulates beyond `sysemul`: the SGI
    /// generation registers (ICC_SGI1R/SGI0R/ASGI1R_EL1, which trap with HCR_EL2.IMO/FMO
    /// while the rest of the ICC registers go to the virtual CPU interface) when a vGIC
    /// is attached, and the EL1 physical timer (CNTP_CTL/CVAL/TVAL_EL0, trapped by
    /// CNTHCTL_EL2.EL1PCEN = 0). `None`: not one of these.
    fn kernel_sysreg(
        &self,
        vm: &Vm<H>,
        vcpu: &mut Vcpu,
        stats: &Stats,
        access: &SysRegAccess,
    ) -> KResult<Option<Next>> {
        let id = vcpu.id() as usize;
        let reg = access.reg;
        if reg == sysreg::ICC_SGI1R_EL1
            || reg == sysreg::ICC_SGI0R_EL1
            || reg == sysreg::ICC_ASGI1R_EL1
        {
            let value = vcpu.get_x(access.rt);
            let kicks: Option<Kicks> = {
                let mut g = vm.vgic.lock();
                match g.as_mut() {
                    // Write-only registers: a read answers zero, as KVM.
                    Some(_) if access.read => Some(Kicks::default()),
                    Some(v) => v.sysreg_write(id, reg, value),
                    None => None,
                }
            };
            let Some(k) = kicks else {
                return Ok(None);
            };
            if access.read {
                vcpu.set_x(access.rt, 0);
            }
            self.skip_insn(vcpu);
            stats.inc(Stat::SysRegKernel);
            // An SGI to itself is seen by the next flush.
            vm.kick_irq(&self.host, k, Some(id));
            return Ok(Some(Next::Reenter));
        }
        let now = self.host.counter();
        let value = vcpu.get_x(access.rt);
        let Some(r) = vcpu
            .ctx()
            .el2_answers
            .ptimer
            .access(reg, access.read, value, now)
        else {
            return Ok(None);
        };
        if access.read {
            vcpu.set_x(access.rt, r);
        }
        self.skip_insn(vcpu);
        stats.inc(Stat::TimerKernel);
        // A write may have raised or lowered PPI 30: the flush before the reentry
        // drives it, as after every exit (the PPI is this vCPU's alone).
        Ok(Some(Next::Reenter))
    }
}
