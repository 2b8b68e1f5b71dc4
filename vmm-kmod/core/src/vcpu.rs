//! A vCPU: its world-switch context (in a host page EL2 can reach), reset state,
//! register access by ABI number, queued exception injection, capabilities and counters.

use crate::el2::IdRegs;
use crate::errno::{Errno, KResult};
use crate::host::{alloc_for_el2, free_for_el2, Host, PhysMem, PAGE_SIZE};
use vmm_sys::arm64::regs::{
    cnthctl, cptr, el2_optional, hcr, mdcr, mpam2, mpamhcr, mpamidr, pstate,
};
use vmm_sys::hyp::{OptionalTraps, VcpuContext};
use vmm_sys::reg::{self, Reg};

// The context must fit the page it lives in.
const _: () = assert!(core::mem::size_of::<VcpuContext>() <= PAGE_SIZE);

/// SCTLR_EL1 RES1 bits on Armv8.0 (11, 20, 22, 23, 28, 29): MMU, caches and alignment
/// checks off, as a CPU comes out of reset.
pub const SCTLR_EL1_RESET: u64 =
    (1 << 11) | (1 << 20) | (1 << 22) | (1 << 23) | (1 << 28) | (1 << 29);

/// SCTLR_EL1.SPAN: 0 = set PSTATE.PAN on taking an exception to EL1.
const SCTLR_EL1_SPAN: u64 = 1 << 23;
/// PSTATE.PAN (SPSR bit 22).
const PSTATE_PAN: u64 = 1 << 22;

/// HCR_EL2 for a guest (FreeBSD's vmm_reset.c set, plus TSC and TIDCP):
/// * VM: stage 2 on. SWIO: set/way invalidates become clean+invalidate.
/// * FMO, IMO, AMO: physical FIQ/IRQ/SError go to EL2 (the host), virtual ones to the guest.
/// * FB, BSU_IS: broadcast TLB/cache maintenance inner shareable (the vCPU may move).
/// * TWI: WFI traps, so an idle vCPU sleeps in the host instead of owning the CPU.
/// * TID3: ID registers trap and read sanitised values.
/// * TSC: SMC traps (else a guest's SMC would reach the host's firmware: PSCI CPU_OFF of
///   a physical CPU); it becomes an SMCCC exit like HVC.
/// * TIDCP: implementation-defined system registers trap (REG_EMUL), so a guest cannot
///   touch the physical CPU's.
/// * RW: EL1 is AArch64.
pub const GUEST_HCR: u64 = hcr::VM
    | hcr::SWIO
    | hcr::FMO
    | hcr::IMO
    | hcr::AMO
    | hcr::FB
    | hcr::BSU_IS
    | hcr::TWI
    | hcr::TID3
    | hcr::TSC
    | hcr::TIDCP
    | hcr::RW;

/// MDCR_EL2: debug registers (TDA), OS lock/double lock (TDOSA), debug ROM (TDRA), PMU
/// (TPM, TPMCR), profiling (TPMS) and trace filter (TTRF) accesses trap; the core answers
/// debug and OS-lock registers as read-as-zero/write-ignored and the guest sees no PMU.
pub const GUEST_MDCR: u64 =
    mdcr::TDA | mdcr::TDOSA | mdcr::TDRA | mdcr::TPM | mdcr::TPMCR | mdcr::TPMS | mdcr::TTRF;

/// CPTR_EL2: FP/SIMD not trapped (the world switch saves it on every exit), trace
/// registers trapped (TTA; answered read-as-zero), SVE trapped (TZ: the switch keeps
/// no Z/P/FFR registers or ZCR_EL1, so a guest running SVE would use and see the host's;
/// the guest is shown no SVE and gets an UNDEF). SME is trapped by TSM, which is part of
/// RES1 (it is RES1 where SME is absent).
pub const GUEST_CPTR: u64 = cptr::RES1 | cptr::TTA | cptr::TZ;

/// The traps of the features a host CPU may have that the guest is not shown. Each bit
/// is set only where the host implements its feature (elsewhere it is RES0), so the
/// values depend on the host's ID registers. docs/isolation.md has the whole policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostTraps {
    /// [`GUEST_HCR`] plus TACR (ACTLR_EL1, implementation defined: read as zero),
    /// TERR and TEA with FEAT_RAS (error records read as zero; external aborts reach
    /// the host), TLOR with FEAT_LOR (UNDEF), TID5 with FEAT_MTE2 (GMID_EL1 UNDEF).
    /// HCR_EL2.ATA stays clear: MTE tag accesses are refused, its registers trap.
    /// API and APK with pointer authentication: the guest is shown it and runs with its
    /// own keys (switched, `el2_optional::PAUTH`); without it they stay clear (RES0).
    pub hcr: u64,
    /// [`GUEST_CPTR`] plus TAM with FEAT_AMUv1 (the activity monitors trap: UNDEF).
    pub cptr: u64,
    /// The trap registers of optional features, where the host has them:
    /// * FEAT_FGT: the five fine-grained trap registers all zero: no register the
    ///   coarse traps leave alone traps, and every negative-polarity (nXXX) control
    ///   traps, which are all registers of features the guest is not shown (SME's
    ///   SMPRI_EL1 and TPIDR2_EL0, LS64's ACCDATA_EL1, S1PIE/S1POE, BRBE, SPE's
    ///   PMSNEVFR_EL1): UNDEF. The host's own values, whatever they are, come back
    ///   after the guest's run.
    /// * FEAT_MPAM: MPAM2_EL2 traps MPAM0_EL1 and MPAM1_EL1 (UNDEF), and MPAMIDR_EL1
    ///   through MPAMHCR_EL2 where MPAMIDR_EL1.HAS_HCR says it exists, else through
    ///   MPAM2_EL2.TIDR where HAS_TIDR does (as KVM); the guest's memory traffic keeps
    ///   the host's partition.
    pub optional: OptionalTraps,
}

impl HostTraps {
    pub fn new(host: &IdRegs) -> HostTraps {
        let field = |v: u64, shift: u32| (v >> shift) & 0xf;
        let mut hcr = GUEST_HCR | hcr::TACR;
        if field(host.pfr0, 28) != 0 {
            hcr |= hcr::TERR | hcr::TEA;
        }
        if field(host.mmfr1, 16) != 0 {
            hcr |= hcr::TLOR;
        }
        if field(host.pfr1, 8) >= 2 {
            hcr |= hcr::TID5;
        }
        let mut cptr = GUEST_CPTR;
        if field(host.pfr0, 44) != 0 {
            cptr |= cptr::TAM;
        }
        let mut optional = OptionalTraps::default();
        if host_has_pauth(host) {
            hcr |= hcr::API | hcr::APK;
            optional.present |= el2_optional::PAUTH;
        }
        if field(host.mmfr0, 56) != 0 {
            optional.present |= el2_optional::FGT;
        }
        if IdRegs::has_mpam(host.pfr0, host.pfr1) {
            optional.present |= el2_optional::MPAM;
            optional.mpam2_el2 = mpam2::TRAPMPAM0EL1 | mpam2::TRAPMPAM1EL1;
            if host.mpamidr & mpamidr::HAS_HCR != 0 {
                optional.present |= el2_optional::MPAM_HCR;
                optional.mpamhcr_el2 = mpamhcr::TRAP_MPAMIDR_EL1;
            } else if host.mpamidr & mpamidr::HAS_TIDR != 0 {
                optional.mpam2_el2 |= mpam2::TIDR;
            }
        }
        HostTraps {
            hcr,
            cptr,
            optional,
        }
    }
}

/// FEAT_PAuth: an address (ISAR1.APA, API; ISAR2.APA3) or generic (ISAR1.GPA, GPI;
/// ISAR2.GPA3) authentication algorithm.
pub fn host_has_pauth(host: &IdRegs) -> bool {
    host.isar1 & PAUTH_ISAR1 != 0 || host.isar2 & PAUTH_ISAR2 != 0
}

/// ID_AA64ISAR1_EL1.APA [7:4], API [11:8], GPA [27:24], GPI [31:28].
pub const PAUTH_ISAR1: u64 = (0xff << 4) | (0xff << 24);
/// ID_AA64ISAR2_EL1.GPA3 [11:8], APA3 [15:12].
pub const PAUTH_ISAR2: u64 = 0xff << 8;

/// CNTHCTL_EL2: the physical counter is readable, the physical timer traps (EL1PCEN
/// clear; the guest uses its virtual timer, as Linux and FreeBSD do at EL1).
pub const GUEST_CNTHCTL: u64 = cnthctl::EL1PCTEN;

/// What every vCPU on this host starts from, computed once at load from the host's
/// ID registers and EL2 configuration.
#[derive(Debug, Clone, Copy)]
pub struct HostVcpu {
    /// VTCR_EL2 for the stage-2 tables the core builds.
    pub vtcr: u64,
    /// The MIDR_EL1 guests read (VPIDR_EL2).
    pub midr: u64,
    /// The guest sees FEAT_PAN (ID_AA64MMFR1_EL1.PAN != 0): exception entry may set
    /// PSTATE.PAN.
    pub has_pan: bool,
    pub traps: HostTraps,
    /// The ID registers guests read; the EL2 code answers their traps from a copy
    /// (`sysemul::el2_answers`).
    pub ids: crate::sysemul::GuestIdRegs,
}

/// Per-vCPU values fixed by the VM.
#[derive(Debug, Clone, Copy)]
pub struct VcpuInit {
    pub id: u32,
    pub vttbr: u64,
    pub cntvoff: u64,
    pub host: HostVcpu,
}

pub struct Vcpu {
    id: u32,
    /// The page holding the `VcpuContext` (mapped for EL2; `Host::enter_guest` takes it).
    page: PhysMem,
    init: VcpuInit,
    /// Bytes to add to the PC before the next entry: the trapped instruction a kernel or
    /// userspace emulation completed (FreeBSD's `nextpc = pc + inst_length`).
    pub pending_advance: u64,
    /// The MMIO load userspace is completing: at the next entry the value it put in the
    /// register is masked to the access size and sign-extended as the instruction would
    /// (SSE to 32 or 64 bits per SF), so a `ldrsb w0` gets a W-register result whatever
    /// userspace wrote. Dropped if userspace sets the PC or injects an exception.
    pub pending_load: Option<vmm_sys::arm64::esr::DataAbort>,
    /// An exception to deliver at the next entry (ESR, FAR).
    pub pending_exception: Option<(u64, u64)>,
    /// An exit that waits behind the BOGUS one that made userspace take the queued
    /// MMIO stores first (`mmio_shortcut`): the next VM_RUN returns it without entering
    /// the guest.
    pub held_exit: Option<vmm_sys::abi::VmExit>,
    /// The VM's `mmio_gen` the context's EL2 MMIO rows were filled at.
    pub mmio_gen: u64,
    pub halt_exit: bool,
    pub brk_exit: bool,
}

impl Vcpu {
    pub fn new<H: Host>(host: &H, init: VcpuInit) -> KResult<Vcpu> {
        let page = alloc_for_el2(host, PAGE_SIZE)?;
        let mut v = Vcpu {
            id: init.id,
            page,
            init,
            pending_advance: 0,
            pending_load: None,
            pending_exception: None,
            held_exit: None,
            mmio_gen: u64::MAX,
            halt_exit: false,
            brk_exit: false,
        };
        v.reset();
        Ok(v)
    }

    pub fn free<H: Host>(self, host: &H) {
        free_for_el2(host, self.page);
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// The page holding the context (its physical address is its EL2 address on an
    /// nVHE host), as [`crate::Host::enter_guest`] takes it.
    pub fn ctx_page(&self) -> &PhysMem {
        &self.page
    }

    pub fn ctx(&mut self) -> &mut VcpuContext {
        // SAFETY: the page is ours, page-aligned (so aligned for VcpuContext, align 16),
        // large enough (checked at compile time), zero-initialised by the host and then
        // only written as a VcpuContext (all-integer, every bit pattern valid). EL2 writes
        // it only during a guest entry, which `&mut self` excludes here.
        unsafe { &mut *self.page.va.as_ptr().cast::<VcpuContext>() }
    }

    pub fn ctx_ref(&self) -> &VcpuContext {
        // SAFETY: as in `ctx`, shared.
        unsafe { &*self.page.va.as_ptr().cast::<VcpuContext>() }
    }

    /// The architectural reset state (FreeBSD vmm_reset.c): all registers zero, PC 0,
    /// EL1h with DAIF masked, MMU and caches off, the EL2 controls for a guest.
    /// CPACR_EL1 is 0 (FP/SIMD traps to the guest's own EL1 until it enables it), as on
    /// KVM; the guest kernel sets it up.
    pub fn reset(&mut self) {
        let init = self.init;
        let brk = self.brk_exit;
        let c = self.ctx();
        *c = VcpuContext::default();
        c.pstate = pstate::GUEST_RESET;
        c.el1.sctlr_el1 = SCTLR_EL1_RESET;
        c.el2.hcr_el2 = init.host.traps.hcr;
        c.el2.mdcr_el2 = GUEST_MDCR | if brk { mdcr::TDE } else { 0 };
        c.el2.cptr_el2 = init.host.traps.cptr;
        c.el2.cnthctl_el2 = GUEST_CNTHCTL;
        c.el2.vpidr_el2 = init.host.midr;
        c.el2.vmpidr_el2 = vmm_platform::vcpu_mpidr(init.id);
        c.el2.vttbr_el2 = init.vttbr;
        c.el2.vtcr_el2 = init.host.vtcr;
        c.optional = init.host.traps.optional;
        c.el2_answers = crate::sysemul::el2_answers(&init.host.ids);
        c.timer.cntvoff_el2 = init.cntvoff;
        // The EL2 MMIO rows were emptied: filled again before the next entry.
        self.mmio_gen = u64::MAX;
        self.pending_advance = 0;
        self.pending_load = None;
        self.pending_exception = None;
    }

    /// Sets the BRK-exit capability: MDCR_EL2.TDE routes the guest's debug exceptions,
    /// BRK included, to EL2.
    pub fn set_brk_exit(&mut self, on: bool) {
        self.brk_exit = on;
        let c = self.ctx();
        if on {
            c.el2.mdcr_el2 |= mdcr::TDE;
        } else {
            c.el2.mdcr_el2 &= !mdcr::TDE;
        }
    }

    /// VM_GET_REGISTER. Number `VM_REG_LAST` is our XZR extension (reads zero): an
    /// INST_EMUL/REG_EMUL exit names it for Rt = 31, so a handler that gets and sets
    /// `vie.reg` blindly does the right thing.
    pub fn get_reg(&self, regnum: i32) -> KResult<u64> {
        if regnum == reg::VM_REG_LAST as i32 {
            return Ok(0);
        }
        let r = Reg::try_from(regnum).map_err(|_| Errno::EINVAL)?;
        let c = self.ctx_ref();
        Ok(match r {
            Reg::X(n) => c.x.get(usize::from(n)).copied().ok_or(Errno::EINVAL)?,
            Reg::Lr => c.x.get(30).copied().ok_or(Errno::EINVAL)?,
            Reg::Sp => c.sp_el1,
            Reg::Pc => c.pc,
            Reg::Cpsr => c.pstate,
            Reg::SctlrEl1 => c.el1.sctlr_el1,
            Reg::Ttbr0El1 => c.el1.ttbr0_el1,
            Reg::Ttbr1El1 => c.el1.ttbr1_el1,
            Reg::TcrEl1 => c.el1.tcr_el1,
            // No FEAT_TCR2 is offered to the guest: the register reads as zero.
            Reg::Tcr2El1 => 0,
            Reg::MpidrEl1 => c.el2.vmpidr_el2,
        })
    }

    /// Whether VM_SET_REGISTER may put `val` in register `regnum`: a known number, TCR2
    /// only 0, and a PSTATE whose mode is one a guest may run in. The world switch
    /// returns to the guest with ERET using this PSTATE as SPSR_EL2: a mode of EL2 would
    /// run guest-chosen code at EL2, and AArch32 modes are not offered (ID_AA64PFR0 says
    /// AArch64 only), so only EL0t, EL1t and EL1h are accepted.
    pub fn check_set(regnum: i32, val: u64) -> KResult<()> {
        if regnum == reg::VM_REG_LAST as i32 {
            return Ok(());
        }
        match Reg::try_from(regnum).map_err(|_| Errno::EINVAL)? {
            Reg::Tcr2El1 if val != 0 => Err(Errno::EINVAL),
            Reg::Cpsr => match val & 0x1f {
                pstate::M_EL0T | pstate::M_EL1T | pstate::M_EL1H => Ok(()),
                _ => Err(Errno::EINVAL),
            },
            _ => Ok(()),
        }
    }

    /// VM_SET_REGISTER. Setting the PC cancels a pending advance past a trapped
    /// instruction (FreeBSD sets `nextpc` too). XZR (`VM_REG_LAST`) ignores writes.
    pub fn set_reg(&mut self, regnum: i32, val: u64) -> KResult<()> {
        Self::check_set(regnum, val)?;
        if regnum == reg::VM_REG_LAST as i32 {
            return Ok(());
        }
        let r = Reg::try_from(regnum).map_err(|_| Errno::EINVAL)?;
        if r == Reg::Pc {
            self.pending_advance = 0;
            self.pending_load = None;
        }
        let c = self.ctx();
        match r {
            Reg::X(n) => *c.x.get_mut(usize::from(n)).ok_or(Errno::EINVAL)? = val,
            Reg::Lr => *c.x.get_mut(30).ok_or(Errno::EINVAL)? = val,
            Reg::Sp => c.sp_el1 = val,
            Reg::Pc => c.pc = val,
            Reg::Cpsr => c.pstate = val,
            Reg::SctlrEl1 => c.el1.sctlr_el1 = val,
            Reg::Ttbr0El1 => c.el1.ttbr0_el1 = val,
            Reg::Ttbr1El1 => c.el1.ttbr1_el1 = val,
            Reg::TcrEl1 => c.el1.tcr_el1 = val,
            Reg::Tcr2El1 => {}
            Reg::MpidrEl1 => c.el2.vmpidr_el2 = val,
        }
        Ok(())
    }

    /// Writes guest register Rt (0..=30; 31 is XZR and discards), for in-kernel emulation.
    pub fn set_x(&mut self, rt: u8, val: u64) {
        if let Some(x) = self.ctx().x.get_mut(usize::from(rt)) {
            *x = val;
        }
    }

    /// Reads guest register Rt (31 reads zero).
    pub fn get_x(&self, rt: u8) -> u64 {
        self.ctx_ref().x.get(usize::from(rt)).copied().unwrap_or(0)
    }

    /// VM_INJECT_EXCEPTION: queues a synchronous exception, delivered at the next entry.
    pub fn inject(&mut self, esr: u64, far: u64) {
        self.pending_exception = Some((esr, far));
    }

    /// Prepares the context for entry: applies a pending PC advance or delivers a
    /// pending exception. A delivered exception takes precedence and cancels the advance:
    /// its preferred return address is the trapped instruction itself (ELR_EL1 = PC),
    /// which is right for an UNDEFINED answer to an unemulated register or an abort
    /// answer to an MMIO access.
    pub fn prepare_entry(&mut self) {
        let load = self.pending_load.take();
        if let Some((esr, far)) = self.pending_exception.take() {
            self.pending_advance = 0;
            let pan = self.init.host.has_pan;
            deliver_exception(self.ctx(), esr, far, pan);
        } else if self.pending_advance != 0 {
            if let Some(da) = load {
                let raw = self.get_x(da.srt);
                self.set_x(da.srt, vmm_sys::arm64::esr::load_result(raw, &da));
            }
            let adv = self.pending_advance;
            self.pending_advance = 0;
            let c = self.ctx();
            c.pc = c.pc.wrapping_add(adv);
        }
    }
}

/// Takes a synchronous exception to EL1 the way the architecture does: ESR_EL1/FAR_EL1
/// set, ELR_EL1 = the PC, SPSR_EL1 = PSTATE, PC = VBAR_EL1 + the vector offset for where
/// the exception came from (current EL with SP_EL0: 0x000, current EL with SP_ELx:
/// 0x200, lower EL AArch64: 0x400, lower EL AArch32: 0x600), PSTATE = EL1h with DAIF
/// masked, NZCV kept, and PAN set when the guest has FEAT_PAN and SCTLR_EL1.SPAN is 0
/// (SS, IL, UAO and the rest cleared, as on a real exception entry).
pub fn deliver_exception(c: &mut VcpuContext, esr: u64, far: u64, has_pan: bool) {
    c.el1.esr_el1 = esr;
    c.el1.far_el1 = far;
    c.el1.elr_el1 = c.pc;
    c.el1.spsr_el1 = c.pstate;
    let mode = c.pstate & 0x1f;
    let offset = if mode & 0x10 != 0 {
        0x600 // AArch32 EL0
    } else {
        match mode {
            pstate::M_EL1T => 0x000,
            pstate::M_EL0T => 0x400,
            _ => 0x200,
        }
    };
    c.pc = c.el1.vbar_el1.wrapping_add(offset);
    let pan = if has_pan && c.el1.sctlr_el1 & SCTLR_EL1_SPAN == 0 {
        PSTATE_PAN
    } else {
        c.pstate & PSTATE_PAN
    };
    c.pstate = (c.pstate & 0xf000_0000) | pstate::DAIF | pstate::M_EL1H | pan;
}

/// Whether the guest was at EL0 when it exited (for choosing the "lower EL" classes).
pub fn from_el0(c: &VcpuContext) -> bool {
    c.pstate & 0xf == pstate::M_EL0T || c.pstate & 0x10 != 0
}
