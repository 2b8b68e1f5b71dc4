//! The world switch body. Order on entry: save the host's EL1
//! state, EL2 controls and virtual timer; load the guest's
//! EL1 registers, virtual timer and GIC virtual CPU interface; then the guest's EL2
//! controls (HCR, VPIDR/VMPIDR, CPTR, MDCR, CNTHCTL, VTTBR); `eret` in assembly.
//! On exit the same in reverse; the host's EL2 controls come back first so VTTBR_EL2 is
//! 0 ("host running") and CPTR_EL2 cannot trap the FP save.
//!
//! FP/SIMD is switched lazily, as KVM does: the guest runs with CPTR_EL2.TFP set; its
//! first FP access traps to `el2_fp_trap` (vectors.rs), which saves the host's
//! registers, loads the guest's and returns to the guest without a full exit. Only if
//! that happened are they swapped back on exit. If the host itself asks for TFP in
//! the guest's CPTR_EL2, FP traps are real exits instead.

use crate::entry::{el2_guest_enter, FP_EAGER_TRAP, FP_GUEST_LOADED, FP_LAZY_ARMED};
use crate::fp::{el2_fp_load, el2_fp_save};
use core::mem::MaybeUninit;
use vmm_arm64::barrier::isb;
use vmm_arm64::mrs;
use vmm_sys::arm64::regs::pstate;
use vmm_sys::arm64::regs::{cptr, el2_optional};
use vmm_sys::hyp::{
    El1Regs, El2Answer, El2Controls, FpRegs, OptionalTraps, PacKeys, VcpuContext, VgicCpuRegs,
    VtimerRegs, ICH_APR_MAX, ICH_LR_MAX,
};

/// Writes a system register as part of the world switch.
macro_rules! msr {
    ($reg:literal, $val:expr) => {
        // SAFETY: the world switch writes EL1 and EL2 state that only takes effect for
        // the lower ELs or after the next `eret`; EL2's own translation and vectors are
        // never written here.
        unsafe { vmm_arm64::msr!($reg, $val) }
    };
}

/// Reads an EL1 (or EL0 timer) register that HCR_EL2.E2H redirects to its EL2
/// counterpart: by its own name on an nVHE host, by its *_EL12/*_EL02 encoding on a
/// VHE host. `VHE` is a const generic, so each body has one instruction.
macro_rules! rd1 {
    ($vhe:expr, $el1:literal, $el12:literal) => {
        if $vhe {
            mrs!($el12)
        } else {
            mrs!($el1)
        }
    };
}

/// Writes such a register (see `rd1!`).
macro_rules! wr1 {
    ($vhe:expr, $el1:literal, $el12:literal, $v:expr) => {
        if $vhe {
            msr!($el12, $v)
        } else {
            msr!($el1, $v)
        }
    };
}

/// What the host had before the guest ran; lives on the EL2 stack for one entry.
#[derive(Default)]
pub(crate) struct HostState {
    pub(crate) el1: El1Regs,
    pub(crate) sp_el0: u64,
    pub(crate) sp_el1: u64,
    pub(crate) el2: El2Controls,
    pub(crate) optional: OptionalTraps,
    pub(crate) pac: PacKeys,
    pub(crate) timer: VtimerRegs,
}

/// A guest's whole EL1 state: [`save_el1_kept`] and the exception registers.
pub(crate) fn save_el1<const VHE: bool>(r: &mut El1Regs) {
    r.elr_el1 = rd1!(VHE, "elr_el1", "S3_5_C4_C0_1");
    r.spsr_el1 = rd1!(VHE, "spsr_el1", "S3_5_C4_C0_0");
    r.esr_el1 = rd1!(VHE, "esr_el1", "S3_5_C5_C2_0");
    r.far_el1 = rd1!(VHE, "far_el1", "S3_5_C6_C0_0");
    r.afsr0_el1 = rd1!(VHE, "afsr0_el1", "S3_5_C5_C1_0");
    r.afsr1_el1 = rd1!(VHE, "afsr1_el1", "S3_5_C5_C1_1");
    save_el1_kept::<VHE>(r);
}

/// The EL1 registers an nVHE host kernel relies on across its hypercall: all but the
/// exception registers (ELR, SPSR, ESR, FAR, AFSR0/1_EL1), which every exception entry
/// writes afresh and a kernel reads only right after one; the hypercall is not inside
/// such a window (its own entry state is in the kernel's trap frame).
pub(crate) fn save_el1_kept<const VHE: bool>(r: &mut El1Regs) {
    r.sctlr_el1 = rd1!(VHE, "sctlr_el1", "S3_5_C1_C0_0");
    r.ttbr0_el1 = rd1!(VHE, "ttbr0_el1", "S3_5_C2_C0_0");
    r.ttbr1_el1 = rd1!(VHE, "ttbr1_el1", "S3_5_C2_C0_1");
    r.tcr_el1 = rd1!(VHE, "tcr_el1", "S3_5_C2_C0_2");
    r.mair_el1 = rd1!(VHE, "mair_el1", "S3_5_C10_C2_0");
    r.amair_el1 = rd1!(VHE, "amair_el1", "S3_5_C10_C3_0");
    r.vbar_el1 = rd1!(VHE, "vbar_el1", "S3_5_C12_C0_0");
    r.contextidr_el1 = rd1!(VHE, "contextidr_el1", "S3_5_C13_C0_1");
    r.cpacr_el1 = rd1!(VHE, "cpacr_el1", "S3_5_C1_C0_2");
    save_unredirected_el1(r);
    r.cntkctl_el1 = rd1!(VHE, "cntkctl_el1", "S3_5_C14_C1_0");
}

/// A guest's whole EL1 state: [`load_el1_kept`] and the exception registers.
pub(crate) fn load_el1<const VHE: bool>(r: &El1Regs) {
    wr1!(VHE, "elr_el1", "S3_5_C4_C0_1", r.elr_el1);
    wr1!(VHE, "spsr_el1", "S3_5_C4_C0_0", r.spsr_el1);
    wr1!(VHE, "esr_el1", "S3_5_C5_C2_0", r.esr_el1);
    wr1!(VHE, "far_el1", "S3_5_C6_C0_0", r.far_el1);
    wr1!(VHE, "afsr0_el1", "S3_5_C5_C1_0", r.afsr0_el1);
    wr1!(VHE, "afsr1_el1", "S3_5_C5_C1_1", r.afsr1_el1);
    load_el1_kept::<VHE>(r);
}

/// What [`save_el1_kept`] saved.
pub(crate) fn load_el1_kept<const VHE: bool>(r: &El1Regs) {
    wr1!(VHE, "sctlr_el1", "S3_5_C1_C0_0", r.sctlr_el1);
    wr1!(VHE, "ttbr0_el1", "S3_5_C2_C0_0", r.ttbr0_el1);
    wr1!(VHE, "ttbr1_el1", "S3_5_C2_C0_1", r.ttbr1_el1);
    // Only when it changes: QEMU's TCG empties its whole TLB on every TCR_EL1 write,
    // and on a VHE host the guest's value is still there from its last run.
    if rd1!(VHE, "tcr_el1", "S3_5_C2_C0_2") != r.tcr_el1 {
        wr1!(VHE, "tcr_el1", "S3_5_C2_C0_2", r.tcr_el1);
    }
    wr1!(VHE, "mair_el1", "S3_5_C10_C2_0", r.mair_el1);
    wr1!(VHE, "amair_el1", "S3_5_C10_C3_0", r.amair_el1);
    wr1!(VHE, "vbar_el1", "S3_5_C12_C0_0", r.vbar_el1);
    wr1!(VHE, "contextidr_el1", "S3_5_C13_C0_1", r.contextidr_el1);
    wr1!(VHE, "cpacr_el1", "S3_5_C1_C0_2", r.cpacr_el1);
    load_unredirected_el1(r);
    wr1!(VHE, "cntkctl_el1", "S3_5_C14_C1_0", r.cntkctl_el1);
}

/// The EL1 registers HCR_EL2.E2H does not redirect (the same encodings in both
/// regimes): all a VHE host keeps of its EL1 state across a guest's run.
pub(crate) fn save_unredirected_el1(r: &mut El1Regs) {
    r.par_el1 = mrs!("par_el1");
    r.tpidr_el0 = mrs!("tpidr_el0");
    r.tpidrro_el0 = mrs!("tpidrro_el0");
    r.tpidr_el1 = mrs!("tpidr_el1");
    r.csselr_el1 = mrs!("csselr_el1");
    r.mdscr_el1 = mrs!("mdscr_el1");
}

pub(crate) fn load_unredirected_el1(r: &El1Regs) {
    msr!("par_el1", r.par_el1);
    msr!("tpidr_el0", r.tpidr_el0);
    msr!("tpidrro_el0", r.tpidrro_el0);
    msr!("tpidr_el1", r.tpidr_el1);
    msr!("csselr_el1", r.csselr_el1);
    msr!("mdscr_el1", r.mdscr_el1);
}

pub(crate) fn save_el2(r: &mut El2Controls) {
    r.hcr_el2 = mrs!("hcr_el2");
    r.vmpidr_el2 = mrs!("vmpidr_el2");
    r.vpidr_el2 = mrs!("vpidr_el2");
    r.cptr_el2 = mrs!("cptr_el2");
    r.mdcr_el2 = mrs!("mdcr_el2");
    r.cnthctl_el2 = mrs!("cnthctl_el2");
    r.vttbr_el2 = mrs!("vttbr_el2");
}

/// Entry, after the host's EL2 controls are saved: for what the guest's
/// `optional.present` names, saves the host's trap registers and loads the guest's.
/// Nothing on a CPU without those features (the registers would be UNDEFINED there).
/// `load_el2`'s `isb` follows. The PAC keys are the caller's to switch
/// ([`switch_keys`]).
pub(crate) fn optional_to_guest(c: &VcpuContext, host: &mut HostState) {
    let present = c.optional.present;
    host.optional.present = present;
    if present == 0 {
        return;
    }
    save_traps(&mut host.optional, present);
    load_traps(&c.optional);
}

/// Exit, before the host's EL2 controls are back (their `isb` follows): the host's
/// trap registers again.
pub(crate) fn optional_to_host(host: &HostState) {
    if host.optional.present != 0 {
        load_traps(&host.optional);
    }
}

fn save_traps(host: &mut OptionalTraps, present: u64) {
    if present & el2_optional::FGT != 0 {
        host.hfgrtr_el2 = mrs!("S3_4_C1_C1_4");
        host.hfgwtr_el2 = mrs!("S3_4_C1_C1_5");
        host.hfgitr_el2 = mrs!("S3_4_C1_C1_6");
        host.hdfgrtr_el2 = mrs!("S3_4_C3_C1_4");
        host.hdfgwtr_el2 = mrs!("S3_4_C3_C1_5");
    }
    if present & el2_optional::MPAM != 0 {
        host.mpam2_el2 = mrs!("S3_4_C10_C5_0");
    }
    if present & el2_optional::MPAM_HCR != 0 {
        host.mpamhcr_el2 = mrs!("S3_4_C10_C4_0");
    }
}

fn load_traps(r: &OptionalTraps) {
    let present = r.present;
    if present & el2_optional::FGT != 0 {
        msr!("S3_4_C1_C1_4", r.hfgrtr_el2);
        msr!("S3_4_C1_C1_5", r.hfgwtr_el2);
        msr!("S3_4_C1_C1_6", r.hfgitr_el2);
        msr!("S3_4_C3_C1_4", r.hdfgrtr_el2);
        msr!("S3_4_C3_C1_5", r.hdfgwtr_el2);
    }
    if present & el2_optional::MPAM != 0 {
        msr!("S3_4_C10_C5_0", r.mpam2_el2);
    }
    if present & el2_optional::MPAM_HCR != 0 {
        msr!("S3_4_C10_C4_0", r.mpamhcr_el2);
    }
}

/// Stores the CPU's pointer-authentication keys in `out` and loads `new`'s. The keys
/// are EL1 registers on either host (a VHE kernel's EL2&0 regime uses them too, and
/// they have no *_EL12 form).
///
/// Called only from the body of an `enter_guest`, whose own frame spans both switches
/// (host keys when it signs its return address, host keys again when it checks it):
/// vmm.ko is built with `-Zbranch-protection=pac-ret`, and a function that signed its
/// return address with one key and checked it with the other would fail. This function
/// is a leaf (no return address signed) and calls nothing; the `isb` of `load_el2` or
/// the `eret` into the guest makes the new keys take effect.
pub(crate) fn switch_keys(out: &mut PacKeys, new: &PacKeys) {
    let [o0, o1, o2, o3, o4, o5, o6, o7, o8, o9] = &mut out.keys;
    *o0 = mrs!("S3_0_C2_C1_0"); // APIAKeyLo_EL1
    *o1 = mrs!("S3_0_C2_C1_1");
    *o2 = mrs!("S3_0_C2_C1_2"); // APIBKeyLo_EL1
    *o3 = mrs!("S3_0_C2_C1_3");
    *o4 = mrs!("S3_0_C2_C2_0"); // APDAKeyLo_EL1
    *o5 = mrs!("S3_0_C2_C2_1");
    *o6 = mrs!("S3_0_C2_C2_2"); // APDBKeyLo_EL1
    *o7 = mrs!("S3_0_C2_C2_3");
    *o8 = mrs!("S3_0_C2_C3_0"); // APGAKeyLo_EL1
    *o9 = mrs!("S3_0_C2_C3_1");
    let [n0, n1, n2, n3, n4, n5, n6, n7, n8, n9] = new.keys;
    msr!("S3_0_C2_C1_0", n0);
    msr!("S3_0_C2_C1_1", n1);
    msr!("S3_0_C2_C1_2", n2);
    msr!("S3_0_C2_C1_3", n3);
    msr!("S3_0_C2_C2_0", n4);
    msr!("S3_0_C2_C2_1", n5);
    msr!("S3_0_C2_C2_2", n6);
    msr!("S3_0_C2_C2_3", n7);
    msr!("S3_0_C2_C3_0", n8);
    msr!("S3_0_C2_C3_1", n9);
}

/// Sets VTCR_EL2 for the guest about to run, only when it differs from what the CPU
/// has: the host does not use it (stage 2 is off while the host runs), and writing it
/// can cost a TLB flush. Before `load_el2`, whose `isb` covers it.
pub(crate) fn set_vtcr(vtcr: u64) {
    if mrs!("vtcr_el2") != vtcr {
        msr!("vtcr_el2", vtcr);
    }
}

pub(crate) fn load_el2(r: &El2Controls) {
    msr!("hcr_el2", r.hcr_el2);
    msr!("vmpidr_el2", r.vmpidr_el2);
    msr!("vpidr_el2", r.vpidr_el2);
    msr!("cptr_el2", r.cptr_el2);
    msr!("mdcr_el2", r.mdcr_el2);
    msr!("cnthctl_el2", r.cnthctl_el2);
    msr!("vttbr_el2", r.vttbr_el2);
    isb();
}

pub(crate) fn save_timer<const VHE: bool>(t: &mut VtimerRegs) {
    t.cntv_ctl_el0 = rd1!(VHE, "cntv_ctl_el0", "S3_5_C14_C3_1");
    t.cntv_cval_el0 = rd1!(VHE, "cntv_cval_el0", "S3_5_C14_C3_2");
    t.cntvoff_el2 = mrs!("cntvoff_el2");
}

pub(crate) fn load_timer<const VHE: bool>(t: &VtimerRegs) {
    msr!("cntvoff_el2", t.cntvoff_el2);
    wr1!(VHE, "cntv_cval_el0", "S3_5_C14_C3_2", t.cntv_cval_el0);
    wr1!(VHE, "cntv_ctl_el0", "S3_5_C14_C3_1", t.cntv_ctl_el0);
}

/// How many list registers and active-priority registers this CPU has (ICH_VTR_EL2).
pub(crate) fn vgic_shape() -> (usize, usize) {
    let vtr = mrs!("ich_vtr_el2");
    // ListRegs is 5 bits: at most 31 + 1.
    let lrs = ((vtr & 0x1f) as usize).saturating_add(1);
    // PREbits: 5 -> 1 APR register per group, 6 -> 2, 7 -> 4.
    let aprs = match ((vtr >> 26) & 7).saturating_add(1) {
        7 => 4,
        6 => 2,
        _ => 1,
    };
    (lrs.min(ICH_LR_MAX), aprs.min(ICH_APR_MAX))
}

macro_rules! lr_access {
    ($n:expr, $op:ident, $($arg:tt)*) => {
        match $n {
            0 => $op!("ich_lr0_el2" $($arg)*),
            1 => $op!("ich_lr1_el2" $($arg)*),
            2 => $op!("ich_lr2_el2" $($arg)*),
            3 => $op!("ich_lr3_el2" $($arg)*),
            4 => $op!("ich_lr4_el2" $($arg)*),
            5 => $op!("ich_lr5_el2" $($arg)*),
            6 => $op!("ich_lr6_el2" $($arg)*),
            7 => $op!("ich_lr7_el2" $($arg)*),
            8 => $op!("ich_lr8_el2" $($arg)*),
            9 => $op!("ich_lr9_el2" $($arg)*),
            10 => $op!("ich_lr10_el2" $($arg)*),
            11 => $op!("ich_lr11_el2" $($arg)*),
            12 => $op!("ich_lr12_el2" $($arg)*),
            13 => $op!("ich_lr13_el2" $($arg)*),
            14 => $op!("ich_lr14_el2" $($arg)*),
            _ => $op!("ich_lr15_el2" $($arg)*),
        }
    };
}

fn write_lr(n: usize, v: u64) {
    lr_access!(n, msr, , v)
}

fn read_lr(n: usize) -> u64 {
    lr_access!(n, mrs,)
}

fn write_apr(n: usize, ap0: u64, ap1: u64) {
    match n {
        0 => {
            msr!("ich_ap0r0_el2", ap0);
            msr!("ich_ap1r0_el2", ap1);
        }
        1 => {
            msr!("ich_ap0r1_el2", ap0);
            msr!("ich_ap1r1_el2", ap1);
        }
        2 => {
            msr!("ich_ap0r2_el2", ap0);
            msr!("ich_ap1r2_el2", ap1);
        }
        _ => {
            msr!("ich_ap0r3_el2", ap0);
            msr!("ich_ap1r3_el2", ap1);
        }
    }
}

fn read_apr(n: usize) -> (u64, u64) {
    match n {
        0 => (mrs!("ich_ap0r0_el2"), mrs!("ich_ap1r0_el2")),
        1 => (mrs!("ich_ap0r1_el2"), mrs!("ich_ap1r1_el2")),
        2 => (mrs!("ich_ap0r2_el2"), mrs!("ich_ap1r2_el2")),
        _ => (mrs!("ich_ap0r3_el2"), mrs!("ich_ap1r3_el2")),
    }
}

/// The list registers the core filled, at most the CPU's `lrs`.
fn lrs_in_use(g: &VgicCpuRegs, lrs: usize) -> usize {
    usize::try_from(g.lr_used).map_or(lrs, |n| n.min(lrs))
}

pub(crate) fn vgic_load(g: &VgicCpuRegs, lrs: usize, aprs: usize) {
    for (n, lr) in g.ich_lr_el2.iter().enumerate().take(lrs_in_use(g, lrs)) {
        write_lr(n, *lr);
    }
    for (n, (ap0, ap1)) in g
        .ich_ap0r_el2
        .iter()
        .zip(g.ich_ap1r_el2.iter())
        .enumerate()
        .take(aprs)
    {
        write_apr(n, *ap0, *ap1);
    }
    msr!("ich_vmcr_el2", g.ich_vmcr_el2);
    msr!("ich_hcr_el2", g.ich_hcr_el2);
}

pub(crate) fn vgic_save(g: &mut VgicCpuRegs, lrs: usize, aprs: usize) {
    g.ich_vmcr_el2 = mrs!("ich_vmcr_el2");
    let used = lrs_in_use(g, lrs);
    for (n, lr) in g.ich_lr_el2.iter_mut().enumerate().take(used) {
        *lr = read_lr(n);
        // Leave the host, and the next guest, no stale virtual interrupt.
        write_lr(n, 0);
    }
    for (n, (ap0, ap1)) in g
        .ich_ap0r_el2
        .iter_mut()
        .zip(g.ich_ap1r_el2.iter_mut())
        .enumerate()
        .take(aprs)
    {
        (*ap0, *ap1) = read_apr(n);
        write_apr(n, 0, 0);
    }
    // The host uses the physical CPU interface only.
    msr!("ich_hcr_el2", 0);
}

/// HYP_VGIC_CLEAR: every list and active-priority register of this CPU empty, the
/// state [`vgic_load`] relies on for the list registers a guest does not use.
pub fn vgic_clear() {
    let (lrs, aprs) = vgic_shape();
    for n in 0..lrs {
        write_lr(n, 0);
    }
    for n in 0..aprs {
        write_apr(n, 0, 0);
    }
}

/// The guest's timer after an exit: its control and compare value; CNTVOFF_EL2 is the
/// core's to set and stays as it was.
pub(crate) fn save_guest_timer<const VHE: bool>(t: &mut VtimerRegs) {
    t.cntv_ctl_el0 = rd1!(VHE, "cntv_ctl_el0", "S3_5_C14_C3_1");
    t.cntv_cval_el0 = rd1!(VHE, "cntv_cval_el0", "S3_5_C14_C3_2");
}

/// A guest may only be entered at EL0 or EL1, AArch64 (M[4] = 0). Anything else in the
/// context would let the guest's registers run at EL2, so it is forced to EL1h.
pub(crate) fn guest_pstate(p: u64) -> u64 {
    match p & 0x1f {
        pstate::M_EL0T | pstate::M_EL1T | pstate::M_EL1H => p,
        _ => (p & !0x1f) | pstate::M_EL1H,
    }
}

/// Loads the guest's EL1 state, virtual timer and GIC virtual CPU interface, forces its
/// PSTATE to EL0/EL1, and returns its EL2 controls with CPTR_EL2.TFP added for lazy
/// FP switching (in the non-VHE layout), with the lazy-FP state to start from.
pub(crate) fn load_guest<const VHE: bool>(
    c: &mut VcpuContext,
    lrs: usize,
    aprs: usize,
) -> (El2Controls, u64) {
    load_el1::<VHE>(&c.el1);
    load_timer::<VHE>(&c.timer);
    vgic_load(&c.vgic, lrs, aprs);
    c.pstate = guest_pstate(c.pstate);
    let mut el2 = c.el2;
    let fp_state = if el2.cptr_el2 & cptr::TFP == 0 {
        el2.cptr_el2 |= cptr::TFP;
        FP_LAZY_ARMED
    } else {
        FP_EAGER_TRAP
    };
    (el2, fp_state)
}

/// Right after an exit, before the host's EL2 controls are back: if the trap path
/// switched them in, saves the guest's FP registers and puts the host's back. The
/// guest's CPTR_EL2 is still in force then, and the trap path left FP enabled at EL2 in
/// it; the host's may not be: a VHE kernel whose thread has no live FP runs with
/// CPTR_EL2.FPEN trapping EL2 itself (FreeBSD's `vfp_disable`).
pub(crate) fn fp_back_to_host(c: &mut VcpuContext, host_fp: &MaybeUninit<FpRegs>, fp_state: u64) {
    if fp_state == FP_GUEST_LOADED {
        // SAFETY: the trap path filled host_fp before loading the guest's registers and
        // enabled FP at EL2 in the CPTR_EL2 still loaded.
        unsafe {
            el2_fp_save(&mut c.fp);
            el2_fp_load(host_fp.as_ptr());
        }
    }
}

/// After an exit, with the host's EL2 controls back: saves the guest's GIC virtual CPU
/// interface, timer and EL1 state, then puts the host's timer back. The host's EL1
/// state is the caller's to restore.
pub(crate) fn save_guest<const VHE: bool>(
    c: &mut VcpuContext,
    host: &HostState,
    lrs: usize,
    aprs: usize,
) {
    vgic_save(&mut c.vgic, lrs, aprs);
    save_guest_timer::<VHE>(&mut c.timer);
    save_el1::<VHE>(&mut c.el1);
    load_timer::<VHE>(&host.timer);
}

/// HYP_ENTER_GUEST: runs the guest in `ctx` until it exits; returns the exit kind
/// (also stored in `ctx.exit.kind`).
///
/// # Safety
/// `ctx` must be the EL2 (identity) address of a `VcpuContext` nobody else touches
/// while the guest runs.
pub unsafe fn enter_guest(ctx: *mut VcpuContext) -> u64 {
    // SAFETY: guaranteed by the caller.
    let c = unsafe { &mut *ctx };
    let mut host = HostState::default();
    let (lrs, aprs) = vgic_shape();

    save_el1_kept::<false>(&mut host.el1);
    host.sp_el0 = mrs!("sp_el0");
    host.sp_el1 = mrs!("sp_el1");
    save_el2(&mut host.el2);
    optional_to_guest(c, &mut host);
    if c.optional.present & el2_optional::PAUTH != 0 {
        switch_keys(&mut host.pac, &c.pac);
    }
    save_timer::<false>(&mut host.timer);
    // Written by el2_fp_trap only if the guest uses FP (then fp_state says so).
    let mut host_fp = MaybeUninit::<FpRegs>::uninit();

    let (el2, fp_state) = load_guest::<false>(c, lrs, aprs);
    set_vtcr(el2.vtcr_el2);
    load_el2(&el2);

    // SAFETY: every register the guest sees is loaded; ctx stays valid (caller);
    // host_fp is a 16-byte aligned FpRegs-sized area on this stack.
    let r = unsafe { el2_guest_enter(ctx, host_fp.as_mut_ptr(), fp_state) };

    fp_back_to_host(c, &host_fp, r.fp_state);
    if host.optional.present & el2_optional::PAUTH != 0 {
        switch_keys(&mut c.pac, &host.pac);
    }
    optional_to_host(&host);
    load_el2(&host.el2);
    save_guest::<false>(c, &host, lrs, aprs);
    load_el1_kept::<false>(&host.el1);
    msr!("sp_el0", host.sp_el0);
    msr!("sp_el1", host.sp_el1);
    r.kind
}

/// Called by `el2_answer_trap` (entry.rs) with the guest's x0..x30 saved in `ctx`:
/// answers the trapped system-register access or device-register load from
/// `ctx.el2_answers` (the core's own answers, computed ahead), or queues the
/// device-register store in the VM's queue, stepping the guest past the instruction,
/// and returns 1; or returns 0 for a full exit. Runs in the guest's world (its EL1
/// state, PAC keys and EL2 controls loaded): it touches only the context, the VM's
/// store queue, ESR_EL2, FAR_EL2, HPFAR_EL2 and ELR_EL2.
///
/// # Safety
/// `ctx` is the context of the guest that trapped, which `el2_guest_enter`'s caller
/// owns for the whole run; its `el2_answers.store_queue` is 0 or the EL2 address of
/// its VM's queue, which outlives every run of the VM's vCPUs.
#[no_mangle]
pub unsafe extern "C" fn el2_answer(ctx: *mut VcpuContext) -> u64 {
    use vmm_sys::arm64::esr::{self, dabt};
    // SAFETY: guaranteed by the caller (the trampoline passes its frame's context).
    let c = unsafe { &mut *ctx };
    let esr = mrs!("esr_el2");
    let a = &mut c.el2_answers;
    let ipa = || esr::fault_ipa(mrs!("hpfar_el2"), mrs!("far_el2"));
    let answer = if esr::esr_ec(esr) == esr::ec::SYS64 {
        a.answer(esr, || mrs!("cntpct_el0"))
    } else if esr::esr_iss(esr) & dabt::WNR == 0 {
        let r = a.answer_load(esr, ipa);
        if r.is_some() {
            a.answered_mmio = a.answered_mmio.wrapping_add(1);
        }
        r
    } else {
        let queue = || {
            // SAFETY: the core's address of the VM's queue, mapped for EL2 and alive
            // for the run (this function's contract); only its atomics are used.
            (a.store_queue != 0)
                .then(|| unsafe { &*(a.store_queue as *const vmm_sys::mmio_queue::MmioStoreQueue) })
        };
        let r = a.answer_store(esr, ipa, &c.x, queue);
        if r.is_some() {
            a.queued_mmio = a.queued_mmio.wrapping_add(1);
        }
        r
    };
    let Some(answer) = answer else {
        return 0;
    };
    // Every answer, the device-register accesses among them (`answered_mmio`,
    // `queued_mmio`).
    a.answered = a.answered.wrapping_add(1);
    if let El2Answer::Read { rt, value } = answer {
        // Rt 31 is XZR: the read is discarded (x has 31 entries).
        if let Some(x) = c.x.get_mut(usize::from(rt)) {
            *x = value;
        }
    }
    msr!("elr_el2", mrs!("elr_el2").wrapping_add(4));
    1
}
