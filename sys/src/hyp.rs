//! The hypercall ABI between the host kernel (EL1) and our EL2 code: `hvc #0` with a
//! function number in x0 and arguments in x1..x7, result in x0. The numbers follow
//! FreeBSD's `sys/arm64/vmm/hyp.h` where the service is the same, so a reader of one
//! recognises the other.
//!
//! Before our vectors are installed only FreeBSD's hyp stub answers, and its single
//! service is `hvc #0` with x0 = the physical address of new EL2 vectors.

use crate::arm64::timer::PhysTimer;
use crate::mmio_queue::{MmioStoreQueue, Push};

pub const HYP_CLEANUP: u64 = 0x1;
pub const HYP_ENTER_GUEST: u64 = 0x2;
pub const HYP_READ_REGISTER: u64 = 0x3;
pub const HYP_REG_ICH_VTR: u64 = 0x1;
pub const HYP_REG_CNTHCTL: u64 = 0x2;
pub const HYP_CLEAN_S2_TLBI: u64 = 0x4;
pub const HYP_DC_CIVAC: u64 = 0x5;
pub const HYP_EL2_TLBI: u64 = 0x6;
/// Empties every list register and active-priority register of this CPU's GIC virtual
/// CPU interface (ours; FreeBSD has no such call). Done once per CPU at load: from then
/// on the world switch keeps the list registers past [`VgicCpuRegs::lr_used`] empty.
pub const HYP_VGIC_CLEAR: u64 = 0x7;
/// HYP_EL2_TLBI x1: flush every EL2 entry, or x2..x2+x3 by VA (FreeBSD's values).
pub const HYP_EL2_TLBI_ALL: u64 = 0x1;
pub const HYP_EL2_TLBI_VA: u64 = 0x2;
pub const HYP_S2_TLBI_RANGE: u64 = 0x10;
pub const HYP_S2_TLBI_ALL: u64 = 0x11;

/// Exception kinds an exit records (FreeBSD's `EXCP_TYPE_*`).
pub mod excp {
    pub const EL1_SYNC: u32 = 0;
    pub const EL1_IRQ: u32 = 1;
    pub const EL1_FIQ: u32 = 2;
    pub const EL1_ERROR: u32 = 3;
    pub const EL2_SYNC: u32 = 4;
    pub const EL2_IRQ: u32 = 5;
    pub const EL2_FIQ: u32 = 6;
    pub const EL2_ERROR: u32 = 7;
    pub const MAINT_IRQ: u32 = 8;
    pub const REENTER: u32 = 9;
}

/// Returned in x0 for an unknown hypercall.
pub const HYP_RET_UNKNOWN: u64 = u64::MAX;

/// Number of GICv3 list registers and active-priority registers the context can hold
/// (the architectural maxima; ICH_VTR_EL2 says how many a CPU has).
pub const ICH_LR_MAX: usize = 16;
pub const ICH_APR_MAX: usize = 4;

/// A vCPU's state as the world switch saves and restores it. Shared by the kernel core
/// (EL1, which fills it and reads exits) and the EL2 code (which switches it), so it is
/// `#[repr(C)]` with offsets checked by tests: assembly reaches fields by offset.
/// The EL2 code gets this structure's physical (EL2 identity) address, never a kernel
/// virtual address.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct VcpuContext {
    /// x0..x30.
    pub x: [u64; 31],
    pub sp_el0: u64,
    pub sp_el1: u64,
    /// Guest PC (ELR_EL2 while in EL2).
    pub pc: u64,
    /// Guest PSTATE (SPSR_EL2 while in EL2).
    pub pstate: u64,
    pub el1: El1Regs,
    pub el2: El2Controls,
    pub timer: VtimerRegs,
    pub vgic: VgicCpuRegs,
    pub fp: FpRegs,
    /// Filled by the EL2 code on every exit.
    pub exit: ExitInfo,
    pub optional: OptionalTraps,
    /// The guest's pointer-authentication keys, switched when `optional.present` has
    /// `el2_optional::PAUTH`.
    pub pac: PacKeys,
    /// System registers the EL2 code answers without leaving the guest's world.
    pub el2_answers: El2Answers,
}

/// Rows of [`El2Answers::mmio`]: device registers whose loads the EL2 code answers.
pub const EL2_MMIO_ROWS: usize = 4;
/// Rows of [`El2Answers::store_ipa`]: device registers whose stores the EL2 code queues.
pub const EL2_STORE_ROWS: usize = 4;

/// A device register the EL2 code answers loads of: 1-, 2- and 4-byte loads at exactly
/// `ipa` read `value`'s low bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct El2MmioAnswer {
    pub ipa: u64,
    pub value: u64,
}

/// Rows of [`El2Answers::id`]: the ID registers HCR_EL2.TID3 traps, op0 3, op1 0, CRn 0,
/// CRm 1..=7, op2 0..=7, at `(CRm - 1) * 8 + op2`.
pub const EL2_ID_ROWS: usize = 56;

/// The trapped system-register accesses the EL2 code answers in place, returning to the
/// guest without the world switch: reads of the TID3 ID registers (values the core
/// computed), every debug/OS-lock/trace access (op0 2: reads give zero, or `oslsr` for
/// OSLSR_EL1; writes are ignored) and reads of the emulated EL1 physical timer
/// (CNTP_CTL/CVAL/TVAL_EL0, from `ptimer` and the physical count); and loads of the
/// device registers in `mmio` (the first `mmio_rows`: registers userspace had the core
/// answer, VM_SET_MMIO_SHORTCUT), on a stage-2 translation fault with a valid
/// syndrome; and it queues stores to the device registers in `store_ipa` in the VM's
/// queue ([`MmioStoreQueue`]) while that is open. The core fills the table with exactly
/// what its own run loop would answer; `enabled` 0 sends every access to the core. The
/// EL2 code counts what it answered in `answered` and, of those, the device-register
/// loads in `answered_mmio` and stores in `queued_mmio`; the core takes them after each
/// entry.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct El2Answers {
    pub enabled: u64,
    pub answered: u64,
    pub oslsr: u64,
    pub id: [u64; EL2_ID_ROWS],
    /// The vCPU's emulated physical timer itself (the core's only copy: it handles the
    /// writes, which arm its host timer and drive PPI 30).
    pub ptimer: PhysTimer,
    pub answered_mmio: u64,
    pub mmio_rows: u64,
    pub mmio: [El2MmioAnswer; EL2_MMIO_ROWS],
    /// Of `answered`, the device-register stores queued.
    pub queued_mmio: u64,
    /// Addresses of device registers whose stores the EL2 code queues, the first
    /// `store_rows` of them, in the VM's queue at EL2 address `store_queue` (0: none).
    pub store_rows: u64,
    pub store_ipa: [u64; EL2_STORE_ROWS],
    pub store_queue: u64,
}

impl Default for El2Answers {
    fn default() -> Self {
        El2Answers {
            enabled: 0,
            answered: 0,
            oslsr: 0,
            id: [0; EL2_ID_ROWS],
            ptimer: PhysTimer::new(),
            answered_mmio: 0,
            mmio_rows: 0,
            mmio: [El2MmioAnswer::default(); EL2_MMIO_ROWS],
            queued_mmio: 0,
            store_rows: 0,
            store_ipa: [0; EL2_STORE_ROWS],
            store_queue: 0,
        }
    }
}

/// What the EL2 code does with a trapped access ([`El2Answers::answer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum El2Answer {
    /// Put `value` in Xt (`rt` 31 is XZR: nothing) and step past the instruction.
    Read { rt: u8, value: u64 },
    /// Step past the instruction.
    Ignored,
}

impl El2Answers {
    /// The answer to the MSR/MRS trap with syndrome `esr` (EC 0x18), or `None` when the
    /// core must see it. `count` reads the physical count (CNTPCT_EL0, the core's
    /// `Host::counter`), asked only for a timer read.
    #[inline]
    pub fn answer(&self, esr: u64, count: impl FnOnce() -> u64) -> Option<El2Answer> {
        use crate::arm64::esr::decode_sys64;
        if self.enabled == 0 || crate::arm64::esr::esr_ec(esr) != crate::arm64::esr::ec::SYS64 {
            return None;
        }
        let a = decode_sys64(crate::arm64::esr::esr_iss(esr));
        let r = a.reg;
        let value = if r.op0() == 2 {
            if !a.read {
                return Some(El2Answer::Ignored);
            }
            if r == crate::arm64::sysreg::OSLSR_EL1 {
                self.oslsr
            } else {
                0
            }
        } else if r.is_id_reg() && r.crm() != 0 && a.read {
            let row = usize::from(r.crm() - 1) * 8 + usize::from(r.op2());
            *self.id.get(row)?
        } else if a.read && r.crn() == 14 {
            self.ptimer.read(r, count())?
        } else {
            return None;
        };
        Some(El2Answer::Read { rt: a.rt, value })
    }

    /// The device-register access a data abort with syndrome `esr` (EC 0x24) is, if
    /// the EL2 code may handle it: a load (`write` false) or store with a valid
    /// syndrome of 1, 2 or 4 bytes, on a stage-2 translation fault outside a stage-1
    /// walk and not cache maintenance.
    #[inline]
    fn device_access(&self, esr: u64, write: bool) -> Option<crate::arm64::esr::DataAbort> {
        use crate::arm64::esr::{self as e, dabt};
        let iss = e::esr_iss(esr);
        // The cheapest refusal first: every exit for an 8-byte access (never
        // handled) passes here on its way out.
        if (iss >> dabt::SAS_SHIFT) & dabt::SAS_MASK == 3
            || self.enabled == 0
            || e::esr_ec(esr) != e::ec::DABT_LOW
        {
            return None;
        }
        let unanswerable = dabt::S1PTW | dabt::CM | dabt::FNV | dabt::EA;
        let translation = dabt::fsc::TRANS_L0..=dabt::fsc::TRANS_L3;
        if iss & unanswerable != 0 || !translation.contains(&(iss & dabt::DFSC_MASK)) {
            return None;
        }
        let da = e::decode_data_abort(iss)?;
        (da.write == write).then_some(da)
    }

    /// The answer to the data abort with syndrome `esr` at the IPA `fault_ipa`
    /// computes, or `None` when the core must see it: only a device load
    /// ([`device_access`](Self::device_access)) at exactly one of the first `mmio_rows`
    /// rows' IPA. The value is what the load leaves in Xt (`esr::load_result`).
    #[inline]
    pub fn answer_load(&self, esr: u64, fault_ipa: impl FnOnce() -> u64) -> Option<El2Answer> {
        if self.mmio_rows == 0 {
            return None;
        }
        let da = self.device_access(esr, false)?;
        let ipa = fault_ipa();
        let n = usize::try_from(self.mmio_rows).unwrap_or(0);
        let row = self.mmio.get(..n)?.iter().find(|r| r.ipa == ipa)?;
        Some(El2Answer::Read {
            rt: da.srt,
            value: crate::arm64::esr::load_result(row.value, &da),
        })
    }

    /// Queues the store the data abort with syndrome `esr` is, when it is a device
    /// store ([`device_access`](Self::device_access)) at exactly one of the first
    /// `store_rows` addresses and `queue` (the VM's, asked only then) takes it:
    /// `Ignored` (the guest steps past it). `None` sends it to the core: not such a
    /// store, no queue, or the queue closed or full. `x` is the guest's x0..x30.
    #[inline]
    pub fn answer_store<'q>(
        &self,
        esr: u64,
        fault_ipa: impl FnOnce() -> u64,
        x: &[u64; 31],
        queue: impl FnOnce() -> Option<&'q MmioStoreQueue>,
    ) -> Option<El2Answer> {
        if self.store_rows == 0 {
            return None;
        }
        let da = self.device_access(esr, true)?;
        let ipa = fault_ipa();
        let n = usize::try_from(self.store_rows).unwrap_or(0);
        if !self.store_ipa.get(..n)?.contains(&ipa) {
            return None;
        }
        // Rt 31 is XZR: x has 31 entries.
        let value = x.get(usize::from(da.srt)).copied().unwrap_or(0);
        match queue()?.push(ipa, da.size, value, false) {
            Push::Queued => Some(El2Answer::Ignored),
            Push::Full | Push::Closed => None,
        }
    }
}

/// The five pointer-authentication keys (APIAKey, APIBKey, APDAKey, APDBKey, APGAKey;
/// each Lo then Hi).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacKeys {
    pub keys: [u64; 10],
}

/// The trap registers of optional EL2 features (`arm64::regs::el2_optional`): loaded
/// for the guest only for the features in `present`, which the core sets where the host
/// CPU has them; the switch then saves the host's values and restores them after the
/// guest's run. `present` also says whether the guest's [`PacKeys`] are switched. With
/// `present` 0 the switch touches none of them.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OptionalTraps {
    pub present: u64,
    pub hfgrtr_el2: u64,
    pub hfgwtr_el2: u64,
    pub hfgitr_el2: u64,
    pub hdfgrtr_el2: u64,
    pub hdfgwtr_el2: u64,
    pub mpam2_el2: u64,
    pub mpamhcr_el2: u64,
}

/// The guest's EL1/EL0 system registers.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct El1Regs {
    pub elr_el1: u64,
    pub spsr_el1: u64,
    pub sctlr_el1: u64,
    pub ttbr0_el1: u64,
    pub ttbr1_el1: u64,
    pub tcr_el1: u64,
    pub mair_el1: u64,
    pub amair_el1: u64,
    pub vbar_el1: u64,
    pub contextidr_el1: u64,
    pub cpacr_el1: u64,
    pub esr_el1: u64,
    pub far_el1: u64,
    pub afsr0_el1: u64,
    pub afsr1_el1: u64,
    pub par_el1: u64,
    pub tpidr_el0: u64,
    pub tpidrro_el0: u64,
    pub tpidr_el1: u64,
    /// Not switched: guests run with HCR_EL2.TACR (their ACTLR_EL1 accesses are
    /// answered read-as-zero), so the CPU keeps the host's implementation-defined
    /// controls. The field keeps the layout the EL2 code's offsets were computed for.
    pub actlr_el1: u64,
    pub csselr_el1: u64,
    pub mdscr_el1: u64,
    pub cntkctl_el1: u64,
}

/// Per-guest EL2 controls, loaded on entry.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct El2Controls {
    pub hcr_el2: u64,
    pub vmpidr_el2: u64,
    pub vpidr_el2: u64,
    pub cptr_el2: u64,
    pub mdcr_el2: u64,
    pub cnthctl_el2: u64,
    /// Stage-2 table base | VMID << 48.
    pub vttbr_el2: u64,
    /// The stage-2 translation control (IPA size, start level, granule) this VM's
    /// tables were built for. Loaded with VTTBR_EL2 on every entry, so that no EL2
    /// regime needs it set per CPU beforehand.
    pub vtcr_el2: u64,
}

/// The guest's virtual timer.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct VtimerRegs {
    pub cntv_ctl_el0: u64,
    pub cntv_cval_el0: u64,
    pub cntvoff_el2: u64,
}

/// The GICv3 virtual CPU interface.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct VgicCpuRegs {
    pub ich_hcr_el2: u64,
    pub ich_vmcr_el2: u64,
    /// How many list registers, from LR0, hold what the core put there. The switch loads
    /// and saves only those; the CPU's others are empty (cleared at load, and emptied
    /// by every save), so an exit with no interrupt in flight touches none.
    pub lr_used: u64,
    pub ich_lr_el2: [u64; ICH_LR_MAX],
    pub ich_ap0r_el2: [u64; ICH_APR_MAX],
    pub ich_ap1r_el2: [u64; ICH_APR_MAX],
}

/// FP/SIMD state: V0..V31 as pairs of 64-bit halves (low first), FPCR, FPSR.
/// 16-byte aligned so the world switch can use `stp q, q` on it.
#[repr(C, align(16))]
#[derive(Debug, Clone, Copy, Default)]
pub struct FpRegs {
    pub v: [[u64; 2]; 32],
    pub fpcr: u64,
    pub fpsr: u64,
}

/// What the EL2 code records when the guest exits.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ExitInfo {
    /// One of [`excp`].
    pub kind: u32,
    pub _pad0: u32,
    pub esr_el2: u64,
    pub far_el2: u64,
    pub hpfar_el2: u64,
}

/// Byte offsets of [`VcpuContext`] fields, for the world-switch assembly.
pub mod ctx_off {
    use super::*;
    use core::mem::offset_of;
    pub const X: usize = offset_of!(VcpuContext, x);
    pub const SP_EL0: usize = offset_of!(VcpuContext, sp_el0);
    pub const SP_EL1: usize = offset_of!(VcpuContext, sp_el1);
    pub const PC: usize = offset_of!(VcpuContext, pc);
    pub const PSTATE: usize = offset_of!(VcpuContext, pstate);
    pub const EL1: usize = offset_of!(VcpuContext, el1);
    pub const EL2: usize = offset_of!(VcpuContext, el2);
    pub const TIMER: usize = offset_of!(VcpuContext, timer);
    pub const VGIC: usize = offset_of!(VcpuContext, vgic);
    pub const FP: usize = offset_of!(VcpuContext, fp);
    pub const EXIT: usize = offset_of!(VcpuContext, exit);
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn context_layout() {
        assert_eq!(ctx_off::X, 0);
        assert_eq!(ctx_off::SP_EL0, 248);
        assert_eq!(ctx_off::PC, 264);
        assert_eq!(ctx_off::EL1, 280);
        assert_eq!(size_of::<El1Regs>(), 23 * 8);
        assert_eq!(ctx_off::EL2, 280 + 184);
        assert_eq!(
            ctx_off::FP % 16,
            0,
            "q registers are stored with stp q, 16-byte aligned"
        );
        assert_eq!(size_of::<FpRegs>(), 528);
        assert_eq!(core::mem::align_of::<VcpuContext>(), 16);
        assert_eq!(size_of::<ExitInfo>(), 32);
    }
}
