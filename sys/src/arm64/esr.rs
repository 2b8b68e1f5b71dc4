//! ESR_ELx: exception classes and the ISS fields of the syndromes we decode.

/// ESR.EC, bits [31:26].
pub const EC_SHIFT: u32 = 26;
pub const EC_MASK: u64 = 0x3f;
/// ESR.IL, bit 25: 1 for a 32-bit instruction.
pub const IL: u64 = 1 << 25;
/// ESR.ISS, bits [24:0].
pub const ISS_MASK: u64 = 0x1ff_ffff;

/// Exception classes.
pub mod ec {
    pub const UNKNOWN: u8 = 0x00;
    pub const WFX: u8 = 0x01;
    pub const CP15_32: u8 = 0x03;
    pub const CP15_64: u8 = 0x04;
    pub const CP14_MR: u8 = 0x05;
    pub const CP14_LS: u8 = 0x06;
    pub const FP_ASIMD: u8 = 0x07;
    pub const CP10_ID: u8 = 0x08;
    pub const PAC: u8 = 0x09;
    pub const CP14_64: u8 = 0x0c;
    pub const ILL: u8 = 0x0e;
    pub const SVC32: u8 = 0x11;
    pub const HVC32: u8 = 0x12;
    pub const SMC32: u8 = 0x13;
    pub const SVC64: u8 = 0x15;
    pub const HVC64: u8 = 0x16;
    pub const SMC64: u8 = 0x17;
    /// MSR, MRS or system instruction trapped (AArch64).
    pub const SYS64: u8 = 0x18;
    pub const SVE: u8 = 0x19;
    pub const SME: u8 = 0x1d;
    pub const IABT_LOW: u8 = 0x20;
    pub const IABT_CUR: u8 = 0x21;
    pub const PC_ALIGN: u8 = 0x22;
    pub const DABT_LOW: u8 = 0x24;
    pub const DABT_CUR: u8 = 0x25;
    pub const SP_ALIGN: u8 = 0x26;
    pub const FP_EXC64: u8 = 0x2c;
    pub const SERROR: u8 = 0x2f;
    pub const BREAKPT_LOW: u8 = 0x30;
    pub const SOFTSTP_LOW: u8 = 0x32;
    pub const WATCHPT_LOW: u8 = 0x34;
    pub const BRK64: u8 = 0x3c;
}

/// The exception class of an ESR value.
pub const fn esr_ec(esr: u64) -> u8 {
    ((esr >> EC_SHIFT) & EC_MASK) as u8
}
/// The ISS of an ESR value.
pub const fn esr_iss(esr: u64) -> u32 {
    (esr & ISS_MASK) as u32
}
/// Builds an ESR from class, IL and ISS.
pub const fn esr(ec: u8, il32: bool, iss: u32) -> u64 {
    ((ec as u64) << EC_SHIFT) | if il32 { IL } else { 0 } | (iss as u64 & ISS_MASK)
}

/// Data abort ISS fields.
pub mod dabt {
    /// Instruction syndrome valid: SAS/SSE/SRT/SF/AR hold.
    pub const ISV: u32 = 1 << 24;
    /// Syndrome access size, bits [23:22]: log2 of bytes.
    pub const SAS_SHIFT: u32 = 22;
    pub const SAS_MASK: u32 = 0x3;
    /// Syndrome sign extend.
    pub const SSE: u32 = 1 << 21;
    /// Syndrome register transfer, bits [20:16]; 31 means XZR/WZR.
    pub const SRT_SHIFT: u32 = 16;
    pub const SRT_MASK: u32 = 0x1f;
    /// Sixty-four bit register: the destination is an X register.
    pub const SF: u32 = 1 << 15;
    /// Acquire/release.
    pub const AR: u32 = 1 << 14;
    /// The fault was on a stage-1 translation table walk.
    pub const S1PTW: u32 = 1 << 7;
    /// Cache maintenance.
    pub const CM: u32 = 1 << 8;
    /// Write not read.
    pub const WNR: u32 = 1 << 6;
    /// FAR not valid.
    pub const FNV: u32 = 1 << 10;
    /// External abort.
    pub const EA: u32 = 1 << 9;
    /// Data/instruction fault status code, bits [5:0].
    pub const DFSC_MASK: u32 = 0x3f;

    /// Fault status codes.
    pub mod fsc {
        pub const ADDR_SIZE_L0: u32 = 0x00;
        pub const TRANS_L0: u32 = 0x04;
        pub const TRANS_L1: u32 = 0x05;
        pub const TRANS_L2: u32 = 0x06;
        pub const TRANS_L3: u32 = 0x07;
        pub const ACCESS_L1: u32 = 0x09;
        pub const ACCESS_L2: u32 = 0x0a;
        pub const ACCESS_L3: u32 = 0x0b;
        pub const PERM_L1: u32 = 0x0d;
        pub const PERM_L2: u32 = 0x0e;
        pub const PERM_L3: u32 = 0x0f;
        pub const SYNC_EXTERNAL: u32 = 0x10;
        pub const ALIGNMENT: u32 = 0x21;
    }
}

/// A decoded data abort with a valid instruction syndrome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataAbort {
    /// Bytes accessed: 1, 2, 4 or 8.
    pub size: u8,
    pub write: bool,
    /// Sign-extend a load to the register width.
    pub sign_extend: bool,
    /// Register number; 31 is XZR/WZR (reads as zero, writes discarded).
    pub srt: u8,
    /// The destination is a 64-bit (X) register.
    pub sixty_four: bool,
    pub acquire_release: bool,
}

/// IPA of a stage-2 fault: HPFAR_EL2.FIPA (bits [43:4], IPA[51:12]) with the page offset
/// from FAR_EL2.
pub const fn fault_ipa(hpfar_el2: u64, far_el2: u64) -> u64 {
    let page = (hpfar_el2 >> 4) & ((1u64 << 40) - 1);
    (page << 12) | (far_el2 & 0xfff)
}

/// Decodes a data-abort ISS; `None` when ISV is clear (no syndrome: the kernel must
/// decode the instruction or inject an abort).
pub const fn decode_data_abort(iss: u32) -> Option<DataAbort> {
    if iss & dabt::ISV == 0 {
        return None;
    }
    Some(DataAbort {
        size: 1 << ((iss >> dabt::SAS_SHIFT) & dabt::SAS_MASK),
        write: iss & dabt::WNR != 0,
        sign_extend: iss & dabt::SSE != 0,
        srt: ((iss >> dabt::SRT_SHIFT) & dabt::SRT_MASK) as u8,
        sixty_four: iss & dabt::SF != 0,
        acquire_release: iss & dabt::AR != 0,
    })
}

/// `size` bytes of `raw` as a 64-bit value: zero-extended, or sign-extended when
/// `sign_extend` (SSE). This is what userspace answers an MMIO load with (INST_EMUL has
/// no SF bit); the register's final width is the kernel's to apply ([`load_result`]).
pub const fn extend_load(raw: u64, size: u8, sign_extend: bool) -> u64 {
    let bits = (size as u32) * 8;
    if bits >= 64 {
        return raw;
    }
    let v = raw & ((1u64 << bits) - 1);
    if !sign_extend {
        return v;
    }
    let shift = 64 - bits;
    (((v << shift) as i64) >> shift) as u64
}

/// The value a load of `size` bytes puts in the destination register: zero-extended,
/// or sign-extended to 64 bits (SF=1) or 32 bits (SF=0, upper half zero). The one place
/// the width rule is applied: the kernel applies it to its own emulation's loads and,
/// on re-entry, to what userspace wrote back ([`extend_load`]).
pub const fn load_result(raw: u64, da: &DataAbort) -> u64 {
    let ext = extend_load(raw, da.size, da.sign_extend);
    if da.sign_extend && !da.sixty_four && da.size < 8 {
        ext & 0xffff_ffff
    } else {
        ext
    }
}

/// Trapped MSR/MRS (EC 0x18) ISS fields.
pub mod sys64 {
    pub const OP0_SHIFT: u32 = 20;
    pub const OP2_SHIFT: u32 = 17;
    pub const OP1_SHIFT: u32 = 14;
    pub const CRN_SHIFT: u32 = 10;
    pub const RT_SHIFT: u32 = 5;
    pub const CRM_SHIFT: u32 = 1;
    /// Direction: 1 = read (MRS), 0 = write (MSR).
    pub const DIR_READ: u32 = 1;
    /// The bits that name the register (op0, op2, op1, CRn, CRm).
    pub const REG_MASK: u32 = (0x3 << OP0_SHIFT)
        | (0x7 << OP2_SHIFT)
        | (0x7 << OP1_SHIFT)
        | (0xf << CRN_SHIFT)
        | (0xf << CRM_SHIFT);
}

/// A decoded MSR/MRS trap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysRegAccess {
    /// The register as [`super::sysreg::SysReg`] encodes it.
    pub reg: super::sysreg::SysReg,
    pub rt: u8,
    pub read: bool,
}

pub const fn decode_sys64(iss: u32) -> SysRegAccess {
    SysRegAccess {
        reg: super::sysreg::SysReg::new(
            ((iss >> sys64::OP0_SHIFT) & 3) as u8,
            ((iss >> sys64::OP1_SHIFT) & 7) as u8,
            ((iss >> sys64::CRN_SHIFT) & 0xf) as u8,
            ((iss >> sys64::CRM_SHIFT) & 0xf) as u8,
            ((iss >> sys64::OP2_SHIFT) & 7) as u8,
        ),
        rt: ((iss >> sys64::RT_SHIFT) & 0x1f) as u8,
        read: iss & sys64::DIR_READ != 0,
    }
}

/// ISS of an UNDEFINED (EC=0) exception, injected for a register nobody emulates.
pub const ESR_UNDEFINED: u64 = esr(ec::UNKNOWN, true, 0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_fields() {
        // ldr w1, [x0] faulting at stage 2: EC=0x24, IL, ISV, SAS=2, SRT=1.
        let e = esr(ec::DABT_LOW, true, dabt::ISV | (2 << 22) | (1 << 16) | 0x06);
        assert_eq!(esr_ec(e), 0x24);
        let da = decode_data_abort(esr_iss(e)).unwrap();
        assert_eq!(
            (da.size, da.write, da.srt, da.sign_extend),
            (4, false, 1, false)
        );
        assert!(decode_data_abort(0x06).is_none());
        // strb wzr, [x0]
        let da = decode_data_abort(dabt::ISV | dabt::WNR | (31 << 16)).unwrap();
        assert_eq!((da.size, da.write, da.srt), (1, true, 31));
    }

    #[test]
    fn sign_extension() {
        let mut da = decode_data_abort(dabt::ISV | dabt::SSE | dabt::SF).unwrap();
        assert_eq!(extend_load(0x80, 1, true), 0xffff_ffff_ffff_ff80);
        assert_eq!(extend_load(0x1_80, 1, false), 0x80);
        assert_eq!(extend_load(0x8000_0000, 4, true), 0xffff_ffff_8000_0000);
        assert_eq!(extend_load(u64::MAX, 8, true), u64::MAX);
        assert_eq!(load_result(0x80, &da), 0xffff_ffff_ffff_ff80);
        da.sixty_four = false; // ldrsb w0
        assert_eq!(load_result(0x80, &da), 0xffff_ff80);
        da.size = 2;
        assert_eq!(load_result(0x1234_7fff, &da), 0x7fff);
        da.sign_extend = false;
        da.size = 4;
        assert_eq!(load_result(0xdead_beef_8000_0000, &da), 0x8000_0000);
        da.size = 8;
        assert_eq!(load_result(u64::MAX, &da), u64::MAX);
    }

    #[test]
    fn sysreg_trap() {
        // mrs x3, osdlr_el1: op0=2 op1=0 CRn=1 CRm=3 op2=4
        let iss = (2 << 20) | (4 << 17) | (1 << 10) | (3 << 5) | (3 << 1) | 1;
        let a = decode_sys64(iss);
        assert_eq!(a.reg, crate::arm64::sysreg::OSDLR_EL1);
        assert_eq!(a.rt, 3);
        assert!(a.read);
        assert_eq!(esr_ec(ESR_UNDEFINED), ec::UNKNOWN);
    }
}
