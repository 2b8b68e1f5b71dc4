//! System registers answered in the kernel: the debug, OS-lock and trace registers
//! (read as zero, writes ignored, as KVM does for a guest without debug support) and the
//! ID registers HCR_EL2.TID3 traps (sanitised copies of the host's, as FreeBSD's
//! `vmm_special_regs` does). Everything else goes to userspace as REG_EMUL.

use crate::el2::IdRegs;
use vmm_sys::arm64::esr::SysRegAccess;
use vmm_sys::arm64::sysreg::{self, SysReg};
use vmm_sys::hyp::{El2Answers, EL2_ID_ROWS};

/// How the kernel answers a trapped access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysRegAnswer {
    /// A read: this value goes to Rt.
    Read(u64),
    /// A write the kernel ignores.
    Ignored,
    /// Architecturally UNDEFINED (a write to a read-only ID register): inject it.
    Undefined,
    /// Not the kernel's: REG_EMUL to userspace.
    ToUser,
}

/// Replaces the 4-bit field at `shift` of `v` with `val`.
const fn field(v: u64, shift: u32, val: u64) -> u64 {
    (v & !(0xf << shift)) | ((val & 0xf) << shift)
}

/// The ID register values a guest reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestIdRegs {
    pub pfr0: u64,
    pub pfr1: u64,
    pub dfr0: u64,
    pub isar0: u64,
    pub isar1: u64,
    pub isar2: u64,
    pub mmfr0: u64,
    pub mmfr1: u64,
    pub mmfr2: u64,
}

impl GuestIdRegs {
    /// Derives the guest's view from the host's ID registers for an IPA space of
    /// `ipa_bits`:
    /// * PFR0: EL0 and EL1 AArch64 only, no EL2/EL3, no SVE, RAS, SEL2, MPAM, AMU, RME;
    ///   FP, AdvSIMD, GIC system registers, DIT, CSV2/CSV3 as the host.
    /// * PFR1: zero (no BTI, SSBS, MTE, SME).
    /// * DFR0: debug architecture v8.0 (6) and nothing else: no PMU, trace, SPE.
    /// * ISAR0 and ISAR1 as the host (pointer authentication included: the guest's keys
    ///   are switched); of ISAR2 only the QARMA3 pointer-authentication fields.
    /// * MMFR0 with PARange no larger than the IPA space; MMFR1 without VHE and
    ///   LORegions; MMFR2 without nested virtualisation.
    pub fn new(host: &IdRegs, ipa_bits: u32) -> GuestIdRegs {
        const KEEP_PFR0: u64 = (0xf << 16) // FP
            | (0xf << 20) // AdvSIMD
            | (0xf << 24) // GIC
            | (0xf << 48) // DIT
            | (0xf << 56) // CSV2
            | (0xf << 60); // CSV3
        let pfr0 = field(field(host.pfr0 & KEEP_PFR0, 0, 1), 4, 1);
        let host_pa = host.mmfr0 & 0xf;
        // The largest PARange encoding whose width fits the IPA space.
        let guest_pa = [(0u64, 32u32), (1, 36), (2, 40), (3, 42), (4, 44), (5, 48)]
            .iter()
            .filter(|(_, bits)| *bits <= ipa_bits)
            .map(|(enc, _)| *enc)
            .max()
            .unwrap_or(0)
            .min(host_pa);
        GuestIdRegs {
            pfr0,
            pfr1: 0,
            dfr0: 6,
            isar0: host.isar0,
            isar1: host.isar1,
            isar2: host.isar2 & crate::vcpu::PAUTH_ISAR2,
            mmfr0: field(host.mmfr0, 0, guest_pa),
            mmfr1: field(field(host.mmfr1, 8, 0), 16, 0),
            mmfr2: field(host.mmfr2, 24, 0),
        }
    }

    /// The value of ID register `r` (op0 3, op1 0, CRn 0, CRm 1..7); unallocated and
    /// AArch32 ID registers read as zero.
    pub fn read(&self, r: SysReg) -> u64 {
        match (r.crm(), r.op2()) {
            (4, 0) => self.pfr0,
            (4, 1) => self.pfr1,
            (5, 0) => self.dfr0,
            (6, 0) => self.isar0,
            (6, 1) => self.isar1,
            (6, 2) => self.isar2,
            (7, 0) => self.mmfr0,
            (7, 1) => self.mmfr1,
            (7, 2) => self.mmfr2,
            _ => 0,
        }
    }
}

/// OSLSR_EL1 value: OS lock implemented (OSLM = 0b10), unlocked.
pub const OSLSR_VALUE: u64 = 0x8;

/// The table the EL2 code answers the commonest traps from without the world switch
/// (`El2Answers`): the same values [`answer`] gives for the TID3 ID registers and
/// OSLSR_EL1 (unit tests check the two agree on every encoding), a physical timer at
/// reset, and no device registers yet (the run loop fills them from the VM's
/// shortcuts).
pub fn el2_answers(ids: &GuestIdRegs) -> El2Answers {
    let id: [u64; EL2_ID_ROWS] = core::array::from_fn(|row| {
        // row < 56: CRm 1..=7, op2 0..=7.
        let crm = ((row / 8) as u8).wrapping_add(1);
        let op2 = (row % 8) as u8;
        ids.read(SysReg::new(3, 0, 0, crm, op2))
    });
    El2Answers {
        enabled: 1,
        answered: 0,
        oslsr: OSLSR_VALUE,
        id,
        ..El2Answers::default()
    }
}

/// The answer for a register of a feature the guest is not shown, trapped by the
/// host's traps (`vcpu::HostTraps`), or `None` for any other register:
/// * read as zero, writes ignored: ACTLR_EL1 (implementation defined; TACR), the RAS
///   error records ERRIDR/ERRSELR/ERX* (CRn 5, CRm 3..=5; TERR), as KVM does;
/// * UNDEFINED, as on a CPU without the feature: the LORegion registers (CRn 10, CRm 4,
///   op2 0..=3 and 7; TLOR), the pointer-authentication keys (CRn 2, CRm 1..=3; APK
///   clear), the MTE registers RGSR/GCR/TFSR/TFSRE0/GMID_EL1 (ATA clear, TID5), the
///   activity monitors (op1 3, CRn 13, CRm 2..=15; TAM), MPAM's MPAMIDR/MPAM1/MPAM0/
///   MPAMSM_EL1 (MPAM2_EL2 and MPAMHCR_EL2 traps), and what the fine-grained traps'
///   negative-polarity controls trap: SME's SMPRI_EL1 and TPIDR2_EL0, LS64's
///   ACCDATA_EL1, S1PIE's PIRE0/PIR_EL1, S1POE's POR_EL0/POR_EL1.
pub fn hidden_feature(r: SysReg) -> Option<SysRegAnswer> {
    let raz_wi = Some(SysRegAnswer::Read(0));
    let undef = Some(SysRegAnswer::Undefined);
    if r.op0() != 3 {
        return None;
    }
    match (r.op1(), r.crn(), r.crm(), r.op2()) {
        (0, 1, 0, 1) => raz_wi,
        (0, 5, 3..=5, _) => raz_wi,
        (0, 10, 4, 0..=3 | 7) => undef,
        (0, 2, 1..=3, _) => undef,
        (0, 1, 0, 5 | 6) | (0, 5, 6, 0 | 1) | (1, 0, 0, 4) => undef,
        (3, 13, 2..=15, _) => undef,
        (0, 10, 4, 4) | (0, 10, 5, 0 | 1 | 3) => undef,
        (0, 1, 2, 4) | (3, 13, 0, 5) | (0, 13, 0, 5) => undef,
        (0, 10, 2, 2..=4) | (3, 10, 2, 4) => undef,
        _ => None,
    }
}

/// Decides how the kernel answers `a`. `midr`/`mpidr` are the vCPU's VPIDR/VMPIDR, for
/// the CRm 0 ID registers should they trap.
pub fn answer(a: &SysRegAccess, ids: &GuestIdRegs, midr: u64, mpidr: u64) -> SysRegAnswer {
    let r = a.reg;
    // op0 = 2: debug, OS lock, trace and the debug communication channel.
    if r.op0() == 2 {
        return if a.read {
            SysRegAnswer::Read(if r == sysreg::OSLSR_EL1 {
                OSLSR_VALUE
            } else {
                0
            })
        } else {
            SysRegAnswer::Ignored
        };
    }
    if r.is_id_reg() {
        if !a.read {
            return SysRegAnswer::Undefined;
        }
        return SysRegAnswer::Read(match (r.crm(), r.op2()) {
            (0, 0) => midr,
            (0, 5) => mpidr,
            (0, _) => 0,
            _ => ids.read(r),
        });
    }
    if let Some(ans) = hidden_feature(r) {
        return match ans {
            SysRegAnswer::Read(_) if !a.read => SysRegAnswer::Ignored,
            ans => ans,
        };
    }
    SysRegAnswer::ToUser
}
