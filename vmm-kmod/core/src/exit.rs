//! Exit decoding: what the EL2 code recorded (exception kind, ESR_EL2, FAR_EL2,
//! HPFAR_EL2) turned into what happened, without deciding yet who handles it (that needs
//! the VM's memory map: see `run.rs`). Pure functions over plain values, so every
//! class is unit-tested.

use vmm_sys::arm64::esr::{self, dabt, ec, DataAbort, SysRegAccess};
use vmm_sys::hyp::{excp, ExitInfo};

/// The stage-2 fault class of a data or instruction abort (DFSC/IFSC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Translation,
    AccessFlag,
    Permission,
    AddressSize,
    /// Anything else (external abort, TLB conflict, ...): not a stage-2 miss.
    Other(u32),
}

impl FaultKind {
    pub fn from_fsc(fsc: u32) -> FaultKind {
        match fsc & dabt::DFSC_MASK {
            0x00..=0x03 => FaultKind::AddressSize,
            0x04..=0x07 => FaultKind::Translation,
            0x08..=0x0b => FaultKind::AccessFlag,
            0x0c..=0x0f => FaultKind::Permission,
            other => FaultKind::Other(other),
        }
    }
}

/// A guest abort taken to EL2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abort {
    /// The faulting IPA: HPFAR_EL2's page with FAR_EL2's offset.
    pub ipa: u64,
    /// The guest virtual address (FAR_EL2).
    pub far: u64,
    pub kind: FaultKind,
    /// The fault happened on the guest's own stage-1 table walk.
    pub s1ptw: bool,
    /// A cache maintenance instruction (DC ...) faulted.
    pub cache_maint: bool,
    /// The decoded syndrome (data aborts with ISV = 1 only).
    pub syndrome: Option<DataAbort>,
    pub write: bool,
    pub iss: u32,
}

/// What one exit was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// A physical interrupt (IRQ, FIQ, GIC maintenance) or an EL2 request to re-enter:
    /// nothing happened to the guest.
    Interrupt,
    /// HVC #imm: ELR already points past the instruction.
    Hvc {
        imm: u16,
    },
    /// SMC #imm trapped by HCR_EL2.TSC: ELR points at the instruction.
    Smc {
        imm: u16,
    },
    /// MSR/MRS trapped.
    SysReg {
        access: SysRegAccess,
        iss: u32,
    },
    Wfi,
    Wfe,
    DataAbort(Abort),
    InstAbort(Abort),
    /// BRK #imm (with the BRK-exit capability, MDCR_EL2.TDE).
    Brk,
    /// An instruction of a feature the guest is not shown, trapped so that it cannot
    /// reach the host's state: SVE (CPTR_EL2.TZ), SME (TSM), pointer authentication
    /// (HCR_EL2.API/APK clear). The guest gets the UNDEF its ID registers promise.
    HiddenFeature,
    /// Anything else: reported to userspace as a HYP exit.
    Other,
}

/// IPA of a stage-2 fault (`esr::fault_ipa`).
pub fn fault_ipa(info: &ExitInfo) -> u64 {
    esr::fault_ipa(info.hpfar_el2, info.far_el2)
}

fn abort(info: &ExitInfo, iss: u32, data: bool) -> Abort {
    Abort {
        ipa: fault_ipa(info),
        far: info.far_el2,
        kind: FaultKind::from_fsc(iss),
        s1ptw: iss & dabt::S1PTW != 0,
        cache_maint: data && iss & dabt::CM != 0,
        syndrome: if data {
            esr::decode_data_abort(iss)
        } else {
            None
        },
        write: data && iss & dabt::WNR != 0,
        iss,
    }
}

/// Decodes the exit of kind `kind` (a `hyp::excp` value) with `info`.
pub fn decode(kind: u32, info: &ExitInfo) -> Decoded {
    match kind {
        excp::EL1_IRQ | excp::EL1_FIQ | excp::MAINT_IRQ | excp::REENTER => {
            return Decoded::Interrupt
        }
        excp::EL1_SYNC => {}
        _ => return Decoded::Other,
    }
    let e = info.esr_el2;
    let iss = esr::esr_iss(e);
    let imm = (iss & 0xffff) as u16;
    match esr::esr_ec(e) {
        ec::HVC64 => Decoded::Hvc { imm },
        ec::SMC64 => Decoded::Smc { imm },
        ec::SYS64 => Decoded::SysReg {
            access: esr::decode_sys64(iss),
            iss,
        },
        // ISS bit 0 (TI): 0 WFI, 1 WFE (WFIT/WFET, 2 and 3, never trap on Armv8.0).
        ec::WFX if iss & 1 == 0 => Decoded::Wfi,
        ec::WFX => Decoded::Wfe,
        ec::DABT_LOW => Decoded::DataAbort(abort(info, iss, true)),
        ec::IABT_LOW => Decoded::InstAbort(abort(info, iss, false)),
        ec::BRK64 => Decoded::Brk,
        ec::SVE | ec::SME | ec::PAC => Decoded::HiddenFeature,
        _ => Decoded::Other,
    }
}

/// ESR of a synchronous external abort (DFSC/IFSC 0x10) injected into the guest for an
/// access that cannot be emulated: a data abort or an instruction abort, "current EL" or
/// "lower EL" class depending on where the guest was, IL set.
pub fn external_abort_esr(data: bool, guest_at_el0: bool) -> u64 {
    let class = match (data, guest_at_el0) {
        (true, false) => ec::DABT_CUR,
        (true, true) => ec::DABT_LOW,
        (false, false) => ec::IABT_CUR,
        (false, true) => ec::IABT_LOW,
    };
    esr::esr(class, true, dabt::fsc::SYNC_EXTERNAL)
}

/// ESR of an address size fault (level 0) for an access past the guest's IPA space.
pub fn address_size_esr(data: bool, guest_at_el0: bool) -> u64 {
    let class = match (data, guest_at_el0) {
        (true, false) => ec::DABT_CUR,
        (true, true) => ec::DABT_LOW,
        (false, false) => ec::IABT_CUR,
        (false, true) => ec::IABT_LOW,
    };
    esr::esr(class, true, dabt::fsc::ADDR_SIZE_L0)
}
