//! Typed VM exits, decoded from `struct vm_exit` with every field checked.
//!
//! **XZR.** In a load/store or MRS/MSR, register number 31 is the zero register, never SP.
//! FreeBSD's `vmm_arm64.c` copies the syndrome's SRT/Rt field into `vie.reg`/`vre.reg`
//! unchanged, so from upstream's vmm.ko Rt=31 arrives as 31 (which is also
//! `VM_REG_GUEST_SP`); our kernel side sends `VM_REG_LAST` (40) for it, as vmm-sys
//! documents. Both decode to `reg: None` here, so a device model writes zero for a store
//! of XZR and discards a load into it instead of touching SP.

use crate::error::BadExit;
use vmm_sys::abi::VmExit;
use vmm_sys::exit::{ExitCode, SuspendHow};
use vmm_sys::reg::{Reg, VM_REG_GUEST_SP, VM_REG_LAST};

/// One VM exit: where the vCPU stopped and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The guest PC of the instruction that exited.
    pub pc: u64,
    /// Length of that instruction (4), so a handler can step over it.
    pub inst_length: i32,
    pub reason: ExitReason,
}

/// Why VM_RUN returned, with the payload of each exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// Nothing for userspace to do: run again.
    Bogus,
    /// An MMIO access to be emulated. `reg` is the transfer register; `None` is XZR.
    InstEmul {
        gpa: u64,
        /// 1, 2, 4 or 8 bytes.
        size: u8,
        write: bool,
        sign_extend: bool,
        reg: Option<Reg>,
    },
    /// A trapped MSR/MRS the kernel does not emulate. `inst_syndrome` is the ESR ISS
    /// (Op0, Op2, Op1, CRn, CRm encode the register); `reg` is Rt, `None` for XZR.
    RegEmul {
        inst_syndrome: u32,
        write: bool,
        reg: Option<Reg>,
    },
    Hvc,
    /// The VM is suspended (every vCPU sees this once VM_SUSPEND was issued).
    Suspended(SuspendHow),
    /// An exception the kernel could not classify.
    Hyp {
        exception_nr: u32,
        esr: u64,
        far: u64,
        hpfar: u64,
    },
    Wfi,
    Paging {
        gpa: u64,
        esr: u64,
    },
    /// An SMCCC call (PSCI): x0 and x1..x7.
    Smccc {
        func_id: u64,
        args: [u64; 7],
    },
    Debug,
    Brk,
    Ss,
}

fn transfer_reg(raw: i32) -> Result<Option<Reg>, BadExit> {
    // See the module documentation: 31 (upstream) and VM_REG_LAST (ours) are XZR.
    if raw == VM_REG_GUEST_SP as i32 || raw == VM_REG_LAST as i32 {
        return Ok(None);
    }
    match Reg::try_from(raw) {
        Ok(r @ (Reg::X(_) | Reg::Lr)) => Ok(Some(r)),
        _ => Err(BadExit::BadRegister(raw)),
    }
}

impl Exit {
    /// Decodes a raw exit. Unknown codes and out-of-range fields are errors.
    pub fn decode(raw: &VmExit) -> Result<Exit, BadExit> {
        let code = ExitCode::try_from(raw.exitcode).map_err(BadExit::UnknownCode)?;
        // SAFETY (for the union reads below, each in its own block): every member of
        // `ExitPayload` is plain integers, so any member may be read whatever was
        // written; the exit code tells which one is meaningful.
        let reason = match code {
            ExitCode::Bogus => ExitReason::Bogus,
            ExitCode::InstEmul => {
                // SAFETY: see above; all-integer union member.
                let ie = unsafe { raw.u.inst_emul };
                let size = ie.vie.access_size();
                if !matches!(size, 1 | 2 | 4 | 8) {
                    return Err(BadExit::BadAccessSize(size));
                }
                ExitReason::InstEmul {
                    gpa: ie.gpa,
                    size,
                    write: ie.vie.is_write(),
                    sign_extend: ie.vie.sign_extend(),
                    reg: transfer_reg(ie.vie.reg)?,
                }
            }
            ExitCode::RegEmul => {
                // SAFETY: see above; all-integer union member.
                let vre = unsafe { raw.u.reg_emul.vre };
                ExitReason::RegEmul {
                    inst_syndrome: vre.inst_syndrome,
                    write: vre.is_write(),
                    reg: transfer_reg(vre.reg)?,
                }
            }
            ExitCode::Hvc => ExitReason::Hvc,
            ExitCode::Suspended => {
                // SAFETY: see above; all-integer union member.
                let how = unsafe { raw.u.suspended.how };
                ExitReason::Suspended(SuspendHow::try_from(how).map_err(BadExit::UnknownSuspend)?)
            }
            ExitCode::Hyp => {
                // SAFETY: see above; all-integer union member.
                let h = unsafe { raw.u.hyp };
                ExitReason::Hyp {
                    exception_nr: h.exception_nr,
                    esr: h.esr_el2,
                    far: h.far_el2,
                    hpfar: h.hpfar_el2,
                }
            }
            ExitCode::Wfi => ExitReason::Wfi,
            ExitCode::Paging => {
                // SAFETY: see above; all-integer union member.
                let p = unsafe { raw.u.paging };
                ExitReason::Paging {
                    gpa: p.gpa,
                    esr: p.esr,
                }
            }
            ExitCode::Smccc => {
                // SAFETY: see above; all-integer union member.
                let s = unsafe { raw.u.smccc_call };
                ExitReason::Smccc {
                    func_id: s.func_id,
                    args: s.args,
                }
            }
            ExitCode::Debug => ExitReason::Debug,
            ExitCode::Brk => ExitReason::Brk,
            ExitCode::Ss => ExitReason::Ss,
        };
        Ok(Exit {
            pc: raw.pc,
            inst_length: raw.inst_length,
            reason,
        })
    }
}

/// Builders of raw exits, as the kernel fills them: for tests of code that consumes
/// exits (decoding, and exits only upstream's kernel makes, which the fake's kernel core
/// never does).
pub mod raw {
    use vmm_sys::abi::*;
    use vmm_sys::exit::{ExitCode, SuspendHow};
    use vmm_sys::reg::{Reg, VM_REG_LAST};

    fn base(code: ExitCode, pc: u64) -> VmExit {
        VmExit {
            exitcode: code as i32,
            inst_length: 4,
            pc,
            ..Default::default()
        }
    }

    /// An exit with no payload (BOGUS, HVC, WFI, DEBUG, BRK, SS).
    pub fn simple(code: ExitCode, pc: u64) -> VmExit {
        base(code, pc)
    }

    /// An MMIO access; `reg: None` is XZR (encoded as our kernel does, VM_REG_LAST).
    pub fn inst_emul(
        pc: u64,
        gpa: u64,
        size: u8,
        write: bool,
        sign_extend: bool,
        reg: Option<Reg>,
    ) -> VmExit {
        let mut e = base(ExitCode::InstEmul, pc);
        let reg = reg.map_or(VM_REG_LAST as i32, |r| r.number() as i32);
        e.u.inst_emul = ExitInstEmul {
            gpa,
            paging: VmGuestPaging::default(),
            vie: Vie::new(size, sign_extend, write, reg),
        };
        e
    }

    pub fn reg_emul(pc: u64, inst_syndrome: u32, write: bool, reg: Option<Reg>) -> VmExit {
        let mut e = base(ExitCode::RegEmul, pc);
        e.u.reg_emul = ExitRegEmul {
            vre: Vre {
                inst_syndrome,
                dir: u8::from(write),
                _pad: [0; 3],
                reg: reg.map_or(VM_REG_LAST as i32, |r| r.number() as i32),
            },
        };
        e
    }

    pub fn smccc(pc: u64, func_id: u64, args: [u64; 7]) -> VmExit {
        let mut e = base(ExitCode::Smccc, pc);
        e.u.smccc_call = ExitSmccc { func_id, args };
        e
    }

    pub fn suspended(pc: u64, how: SuspendHow) -> VmExit {
        let mut e = base(ExitCode::Suspended, pc);
        e.inst_length = 0;
        e.u.suspended = ExitSuspended { how: how as i32 };
        e
    }

    pub fn hyp(pc: u64, exception_nr: u32, esr: u64, far: u64, hpfar: u64) -> VmExit {
        let mut e = base(ExitCode::Hyp, pc);
        e.u.hyp = ExitHyp {
            exception_nr,
            pad: 0,
            esr_el2: esr,
            far_el2: far,
            hpfar_el2: hpfar,
        };
        e
    }

    pub fn paging(pc: u64, gpa: u64, esr: u64) -> VmExit {
        let mut e = base(ExitCode::Paging, pc);
        e.inst_length = 0;
        e.u.paging = ExitPaging { gpa, esr };
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys::abi::Vie;

    #[test]
    fn decodes_every_code() {
        let cases: [(VmExit, ExitReason); 12] = [
            (raw::simple(ExitCode::Bogus, 0), ExitReason::Bogus),
            (
                raw::inst_emul(0, 0x1_0018, 4, true, false, Some(Reg::X(3))),
                ExitReason::InstEmul {
                    gpa: 0x1_0018,
                    size: 4,
                    write: true,
                    sign_extend: false,
                    reg: Some(Reg::X(3)),
                },
            ),
            (
                raw::reg_emul(0, 0x30_0000, false, Some(Reg::Lr)),
                ExitReason::RegEmul {
                    inst_syndrome: 0x30_0000,
                    write: false,
                    reg: Some(Reg::Lr),
                },
            ),
            (raw::simple(ExitCode::Hvc, 0), ExitReason::Hvc),
            (
                raw::suspended(0, SuspendHow::Poweroff),
                ExitReason::Suspended(SuspendHow::Poweroff),
            ),
            (
                raw::hyp(0, 4, 0x9600_0000, 0x10, 0x20),
                ExitReason::Hyp {
                    exception_nr: 4,
                    esr: 0x9600_0000,
                    far: 0x10,
                    hpfar: 0x20,
                },
            ),
            (raw::simple(ExitCode::Wfi, 0), ExitReason::Wfi),
            (
                raw::paging(0, 0x8000_1000, 0x9300_0007),
                ExitReason::Paging {
                    gpa: 0x8000_1000,
                    esr: 0x9300_0007,
                },
            ),
            (
                raw::smccc(0, 0x8400_0008, [1, 2, 3, 4, 5, 6, 7]),
                ExitReason::Smccc {
                    func_id: 0x8400_0008,
                    args: [1, 2, 3, 4, 5, 6, 7],
                },
            ),
            (raw::simple(ExitCode::Debug, 0), ExitReason::Debug),
            (raw::simple(ExitCode::Brk, 0), ExitReason::Brk),
            (raw::simple(ExitCode::Ss, 0), ExitReason::Ss),
        ];
        for (i, (mut e, want)) in cases.into_iter().enumerate() {
            e.pc = 0x8000_0000 + i as u64 * 4;
            let got = Exit::decode(&e).unwrap();
            assert_eq!(got.reason, want, "code {i}");
            assert_eq!(got.pc, e.pc);
            assert_eq!(got.inst_length, e.inst_length);
        }
    }

    #[test]
    fn xzr_both_encodings_and_bad_registers() {
        let mut e = raw::inst_emul(0, 0, 8, true, false, None);
        let d = Exit::decode(&e).unwrap();
        assert!(matches!(d.reason, ExitReason::InstEmul { reg: None, .. }));
        // Upstream vmm.ko: Rt=31 copied unchanged.
        e.u.inst_emul.vie = Vie::new(8, false, true, 31);
        let d = Exit::decode(&e).unwrap();
        assert!(matches!(d.reason, ExitReason::InstEmul { reg: None, .. }));
        // PC (32) or anything past the enum is not a transfer register.
        for bad in [32, 39, 41, -1] {
            e.u.inst_emul.vie = Vie::new(8, false, true, bad);
            assert_eq!(Exit::decode(&e), Err(BadExit::BadRegister(bad)));
        }
        let mut r = raw::reg_emul(0, 0, true, None);
        assert!(matches!(
            Exit::decode(&r).unwrap().reason,
            ExitReason::RegEmul {
                reg: None,
                write: true,
                ..
            }
        ));
        r.u.reg_emul.vre.reg = 31;
        assert!(matches!(
            Exit::decode(&r).unwrap().reason,
            ExitReason::RegEmul { reg: None, .. }
        ));
    }

    #[test]
    fn unknown_codes_and_fields_are_errors() {
        let mut e = VmExit {
            exitcode: 12,
            ..Default::default()
        };
        assert_eq!(Exit::decode(&e), Err(BadExit::UnknownCode(12)));
        e.exitcode = -1;
        assert_eq!(Exit::decode(&e), Err(BadExit::UnknownCode(-1)));
        let mut s = raw::suspended(0, SuspendHow::Halt);
        s.u.suspended.how = 9;
        assert_eq!(Exit::decode(&s), Err(BadExit::UnknownSuspend(9)));
        for size in [0u8, 3, 5, 15] {
            let e = raw::inst_emul(0, 0, size, false, false, Some(Reg::X(0)));
            assert_eq!(Exit::decode(&e), Err(BadExit::BadAccessSize(size)));
        }
    }
}
