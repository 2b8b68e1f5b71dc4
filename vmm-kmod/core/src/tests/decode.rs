//! Exit decoding (every class), the in-kernel system register answers, vCPU reset state
//! and exception delivery.

use crate::exit::{decode, fault_ipa, Decoded, FaultKind};
use crate::fake::params;
use crate::sysemul::{answer, GuestIdRegs, SysRegAnswer, OSLSR_VALUE};
use crate::vcpu::{deliver_exception, SCTLR_EL1_RESET};
use vmm_sys::arm64::esr::{self, dabt, decode_sys64, ec, esr as mk, SysRegAccess};
use vmm_sys::arm64::regs::{hcr, mdcr, pstate};
use vmm_sys::arm64::sysreg::{self, SysReg};
use vmm_sys::hyp::{excp, ExitInfo, VcpuContext};

fn info(esr: u64) -> ExitInfo {
    ExitInfo {
        kind: excp::EL1_SYNC,
        esr_el2: esr,
        ..Default::default()
    }
}

/// ISS of an MSR/MRS of `r` with Rt `rt`.
pub fn sys_iss(r: SysReg, rt: u8, read: bool) -> u32 {
    r.0 | (u32::from(rt) << 5) | u32::from(read)
}

#[test]
fn interrupts_and_unknown_kinds() {
    for k in [excp::EL1_IRQ, excp::EL1_FIQ, excp::MAINT_IRQ, excp::REENTER] {
        assert_eq!(decode(k, &ExitInfo::default()), Decoded::Interrupt);
    }
    for k in [
        excp::EL1_ERROR,
        excp::EL2_SYNC,
        excp::EL2_IRQ,
        excp::EL2_ERROR,
        99,
    ] {
        assert_eq!(decode(k, &ExitInfo::default()), Decoded::Other);
    }
}

#[test]
fn calls_wfx_brk_unknown() {
    assert_eq!(
        decode(excp::EL1_SYNC, &info(mk(ec::HVC64, true, 0))),
        Decoded::Hvc { imm: 0 }
    );
    assert_eq!(
        decode(excp::EL1_SYNC, &info(mk(ec::HVC64, true, 0x1234))),
        Decoded::Hvc { imm: 0x1234 }
    );
    assert_eq!(
        decode(excp::EL1_SYNC, &info(mk(ec::SMC64, true, 0))),
        Decoded::Smc { imm: 0 }
    );
    assert_eq!(
        decode(excp::EL1_SYNC, &info(mk(ec::WFX, true, 0))),
        Decoded::Wfi
    );
    assert_eq!(
        decode(excp::EL1_SYNC, &info(mk(ec::WFX, true, 1))),
        Decoded::Wfe
    );
    assert_eq!(
        decode(excp::EL1_SYNC, &info(mk(ec::BRK64, true, 7))),
        Decoded::Brk
    );
    for c in [
        ec::UNKNOWN,
        ec::FP_ASIMD,
        ec::HVC32,
        ec::SVC64,
        ec::PC_ALIGN,
        ec::SERROR,
        ec::DABT_CUR,
    ] {
        assert_eq!(
            decode(excp::EL1_SYNC, &info(mk(c, true, 0))),
            Decoded::Other,
            "EC {c:#x}"
        );
    }
}

#[test]
fn sysreg_traps() {
    let iss = sys_iss(sysreg::OSLAR_EL1, 4, false);
    match decode(excp::EL1_SYNC, &info(mk(ec::SYS64, true, iss))) {
        Decoded::SysReg { access, iss: i } => {
            assert_eq!(i, iss);
            assert_eq!(
                access,
                SysRegAccess {
                    reg: sysreg::OSLAR_EL1,
                    rt: 4,
                    read: false
                }
            );
        }
        d => panic!("{d:?}"),
    }
}

#[test]
fn data_aborts() {
    // ldrsh x7, [x1] on an unmapped IPA: ISV, SAS=1, SSE, SF, SRT=7, translation L3.
    let iss =
        dabt::ISV | (1 << dabt::SAS_SHIFT) | dabt::SSE | dabt::SF | (7 << dabt::SRT_SHIFT) | 0x07;
    let i = ExitInfo {
        kind: excp::EL1_SYNC,
        esr_el2: mk(ec::DABT_LOW, true, iss),
        far_el2: 0xffff_0000_dead_babe,
        hpfar_el2: (0x0a00_0000u64 >> 12) << 4,
        ..Default::default()
    };
    assert_eq!(fault_ipa(&i), 0x0a00_0abe);
    let Decoded::DataAbort(a) = decode(excp::EL1_SYNC, &i) else {
        panic!()
    };
    assert_eq!(a.ipa, 0x0a00_0abe);
    assert_eq!(a.kind, FaultKind::Translation);
    assert!(!a.write && !a.s1ptw && !a.cache_maint);
    let da = a.syndrome.unwrap();
    assert_eq!(
        (da.size, da.sign_extend, da.sixty_four, da.srt, da.write),
        (2, true, true, 7, false)
    );
    // strb wzr: WnR, SRT 31; no syndrome; stage-1 walk; cache maintenance.
    let Decoded::DataAbort(a) = decode(
        excp::EL1_SYNC,
        &info(mk(
            ec::DABT_LOW,
            true,
            dabt::ISV | dabt::WNR | (31 << 16) | 0x06,
        )),
    ) else {
        panic!()
    };
    assert!(a.write);
    assert_eq!(a.syndrome.unwrap().srt, 31);
    let Decoded::DataAbort(a) = decode(excp::EL1_SYNC, &info(mk(ec::DABT_LOW, true, 0x06))) else {
        panic!()
    };
    assert!(a.syndrome.is_none());
    let Decoded::DataAbort(a) = decode(
        excp::EL1_SYNC,
        &info(mk(ec::DABT_LOW, true, dabt::S1PTW | 0x05)),
    ) else {
        panic!()
    };
    assert!(a.s1ptw);
    let Decoded::DataAbort(a) = decode(
        excp::EL1_SYNC,
        &info(mk(ec::DABT_LOW, true, dabt::CM | 0x07)),
    ) else {
        panic!()
    };
    assert!(a.cache_maint);
    // Instruction abort: never a syndrome, never a write.
    let Decoded::InstAbort(a) = decode(
        excp::EL1_SYNC,
        &info(mk(ec::IABT_LOW, true, 0x0f | dabt::WNR)),
    ) else {
        panic!()
    };
    assert_eq!(a.kind, FaultKind::Permission);
    assert!(!a.write && a.syndrome.is_none());
}

#[test]
fn fault_status_classes() {
    for (fsc, k) in [
        (0x00, FaultKind::AddressSize),
        (0x03, FaultKind::AddressSize),
        (0x04, FaultKind::Translation),
        (0x07, FaultKind::Translation),
        (0x09, FaultKind::AccessFlag),
        (0x0b, FaultKind::AccessFlag),
        (0x0d, FaultKind::Permission),
        (0x0f, FaultKind::Permission),
        (0x10, FaultKind::Other(0x10)),
        (0x30, FaultKind::Other(0x30)),
    ] {
        assert_eq!(FaultKind::from_fsc(fsc), k, "fsc {fsc:#x}");
    }
}

#[test]
fn debug_and_id_registers() {
    let ids = GuestIdRegs::new(&params().id_regs, 39);
    let a =
        |r: SysReg, read: bool| answer(&decode_sys64(sys_iss(r, 2, read)), &ids, 0x41, 0x8000_0001);
    assert_eq!(a(sysreg::OSLAR_EL1, false), SysRegAnswer::Ignored);
    assert_eq!(a(sysreg::OSLSR_EL1, true), SysRegAnswer::Read(OSLSR_VALUE));
    for r in [
        sysreg::OSDLR_EL1,
        sysreg::MDSCR_EL1,
        sysreg::MDCCINT_EL1,
        sysreg::DBGPRCR_EL1,
        sysreg::DBGCLAIMSET_EL1,
        sysreg::DBGCLAIMCLR_EL1,
        sysreg::DBGAUTHSTATUS_EL1,
        sysreg::dbgbvr_el1(3),
        sysreg::dbgbcr_el1(15),
        sysreg::dbgwvr_el1(0),
        sysreg::dbgwcr_el1(1),
    ] {
        assert_eq!(a(r, true), SysRegAnswer::Read(0), "{r}");
        assert_eq!(a(r, false), SysRegAnswer::Ignored, "{r}");
    }
    // ID registers: sanitised.
    let SysRegAnswer::Read(pfr0) = a(sysreg::ID_AA64PFR0_EL1, true) else {
        panic!()
    };
    assert_eq!(pfr0 & 0xffff, 0x0011, "EL0/EL1 AArch64 only, no EL2/EL3");
    assert_eq!((pfr0 >> 24) & 0xf, 1, "GIC system registers kept");
    let SysRegAnswer::Read(isar1) = a(sysreg::ID_AA64ISAR1_EL1, true) else {
        panic!()
    };
    assert_eq!(
        isar1 & ((0xff << 4) | (0xff << 24)),
        0,
        "no pointer auth on an Armv8.0 host"
    );
    assert_eq!(isar1 & 0xf, 0, "DPB as the host");
    let SysRegAnswer::Read(mmfr0) = a(sysreg::ID_AA64MMFR0_EL1, true) else {
        panic!()
    };
    assert_eq!(
        mmfr0 & 0xf,
        1,
        "PARange capped to 36 bits for a 39-bit IPA space"
    );
    assert_eq!(mmfr0 & !0xf, 0x1120);
    let SysRegAnswer::Read(mmfr1) = a(sysreg::ID_AA64MMFR1_EL1, true) else {
        panic!()
    };
    assert_eq!((mmfr1 >> 8) & 0xf, 0, "no VHE");
    let SysRegAnswer::Read(mmfr2) = a(sysreg::ID_AA64MMFR2_EL1, true) else {
        panic!()
    };
    assert_eq!((mmfr2 >> 24) & 0xf, 0, "no nested virtualisation");
    let SysRegAnswer::Read(dfr0) = a(sysreg::ID_AA64DFR0_EL1, true) else {
        panic!()
    };
    assert_eq!(dfr0, 6, "debug v8.0, no PMU/trace/SPE");
    assert_eq!(a(sysreg::ID_AA64PFR1_EL1, true), SysRegAnswer::Read(0));
    assert_eq!(
        a(SysReg::new(3, 0, 0, 1, 0), true),
        SysRegAnswer::Read(0),
        "AArch32 ID_PFR0"
    );
    assert_eq!(a(sysreg::MIDR_EL1, true), SysRegAnswer::Read(0x41));
    assert_eq!(a(sysreg::MPIDR_EL1, true), SysRegAnswer::Read(0x8000_0001));
    assert_eq!(a(sysreg::ID_AA64MMFR0_EL1, false), SysRegAnswer::Undefined);
    // Not the kernel's.
    for r in [
        sysreg::ICC_SGI1R_EL1,
        sysreg::CNTP_CTL_EL0,
        sysreg::PMCR_EL0,
        SysReg::new(3, 1, 15, 2, 0),
    ] {
        assert_eq!(a(r, true), SysRegAnswer::ToUser, "{r}");
    }
}

#[test]
fn exception_delivery_vectors() {
    let mut c = VcpuContext::default();
    for (mode, off) in [
        (pstate::M_EL1H, 0x200u64),
        (pstate::M_EL1T, 0x000),
        (pstate::M_EL0T, 0x400),
        (0x10, 0x600), // AArch32 user
    ] {
        c.pc = 0x4000_1000;
        c.pstate = 0x6000_0000 | mode;
        c.el1.vbar_el1 = 0xffff_0000_0010_0000;
        deliver_exception(&mut c, esr::ESR_UNDEFINED, 0x1234, false);
        assert_eq!(c.pc, 0xffff_0000_0010_0000 + off, "mode {mode:#x}");
        assert_eq!(c.el1.elr_el1, 0x4000_1000);
        assert_eq!(c.el1.spsr_el1, 0x6000_0000 | mode);
        assert_eq!(c.el1.esr_el1, esr::ESR_UNDEFINED);
        assert_eq!(c.el1.far_el1, 0x1234);
        assert_eq!(c.pstate, 0x6000_0000 | pstate::DAIF | pstate::M_EL1H);
    }
}

#[test]
fn exception_entry_sets_pan_as_the_guest_configured() {
    let mut c = VcpuContext {
        pstate: 0x3c5,
        ..Default::default()
    };
    // FEAT_PAN and SCTLR_EL1.SPAN = 0: PAN set.
    c.el1.sctlr_el1 = 0;
    deliver_exception(&mut c, 0, 0, true);
    assert_ne!(c.pstate & (1 << 22), 0);
    // SPAN = 1: PAN unchanged (here clear).
    c.pstate = 0x3c5;
    c.el1.sctlr_el1 = 1 << 23;
    deliver_exception(&mut c, 0, 0, true);
    assert_eq!(c.pstate & (1 << 22), 0);
    // No FEAT_PAN: never set.
    c.el1.sctlr_el1 = 0;
    deliver_exception(&mut c, 0, 0, false);
    assert_eq!(c.pstate & (1 << 22), 0);
    // UAO and SS are cleared by the entry.
    c.pstate = 0x3c5 | (1 << 23) | (1 << 21);
    deliver_exception(&mut c, 0, 0, false);
    assert_eq!(c.pstate, 0x3c5);
}

#[test]
fn guest_control_registers() {
    let h = GUEST_CHECK;
    assert_eq!(h & (hcr::TWE | hcr::E2H | hcr::TGE), 0);
    for b in [
        hcr::VM,
        hcr::RW,
        hcr::TWI,
        hcr::TID3,
        hcr::TSC,
        hcr::IMO,
        hcr::FMO,
        hcr::AMO,
        hcr::BSU_IS,
        hcr::FB,
        hcr::SWIO,
    ] {
        assert_ne!(h & b, 0);
    }
    let m = crate::vcpu::GUEST_MDCR;
    for b in [mdcr::TDA, mdcr::TDOSA, mdcr::TDRA, mdcr::TPM] {
        assert_ne!(m & b, 0);
    }
    assert_eq!(m & mdcr::TDE, 0);
    assert_eq!(SCTLR_EL1_RESET & 1, 0, "guest MMU off");
    assert_eq!(
        crate::vcpu::GUEST_CNTHCTL,
        1,
        "EL1PCTEN only: physical timer traps"
    );
}

const GUEST_CHECK: u64 = crate::vcpu::GUEST_HCR;

/// The EL2 code's table (`sysemul::el2_answers`) answers exactly as the run loop's
/// `answer` does (its physical timer's reads as the run loop's timer emulation), for
/// every MSR/MRS encoding in both directions, and covers every debug/OS-lock access,
/// every read of a TID3 ID register and the physical timer's reads; what it does not cover
/// (everything else, and any exception class but 0x18) goes to the core.
#[test]
fn el2_answers_agree_with_the_run_loop() {
    use vmm_sys::hyp::{El2Answer, El2Answers};
    const NOW: u64 = 5_000;
    let ids = GuestIdRegs::new(&params().id_regs, 40);
    let table = crate::sysemul::el2_answers(&ids);
    let (midr, mpidr) = (0x410f_d070, 0x8000_0001);
    let mut answered = 0;
    for op0 in 0..4u8 {
        for op1 in 0..8u8 {
            for crn in 0..16u8 {
                for crm in 0..16u8 {
                    for op2 in 0..8u8 {
                        for read in [false, true] {
                            let r = SysReg::new(op0, op1, crn, crm, op2);
                            // Every Rt, XZR (31) included, across the encodings.
                            let rt = (op2 * 16 + crm + crn) % 32;
                            let iss = sys_iss(r, rt, read);
                            let core = answer(&decode_sys64(iss), &ids, midr, mpidr);
                            let mut ptimer = table.ptimer;
                            let timer_read = read && ptimer.access(r, true, 0, NOW).is_some();
                            let covered =
                                op0 == 2 || (r.is_id_reg() && crm != 0 && read) || timer_read;
                            match table.answer(mk(ec::SYS64, true, iss), || NOW) {
                                None => assert!(!covered, "{r} read {read}: not answered at EL2"),
                                Some(El2Answer::Ignored) => {
                                    assert!(!read, "{r}");
                                    assert_eq!(core, SysRegAnswer::Ignored, "{r}");
                                    answered += 1;
                                }
                                Some(El2Answer::Read { rt: t, value }) => {
                                    assert!(read && covered, "{r}");
                                    assert_eq!(t, rt, "{r}");
                                    if timer_read {
                                        // What the run loop's timer emulation reads.
                                        assert_eq!(ptimer.access(r, true, 0, NOW), Some(value));
                                    } else {
                                        assert_eq!(core, SysRegAnswer::Read(value), "{r}");
                                    }
                                    answered += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    // op0 2: 8 * 16 * 16 * 8 encodings, both directions; TID3: 7 * 8 reads; the
    // physical timer: 3 reads.
    assert_eq!(answered, 8 * 16 * 16 * 8 * 2 + 56 + 3);
    let oslsr = sys_iss(sysreg::OSLSR_EL1, 3, true);
    assert_eq!(
        table.answer(mk(ec::SYS64, true, oslsr), || NOW),
        Some(El2Answer::Read {
            rt: 3,
            value: OSLSR_VALUE
        })
    );
    // Off until the core fills it; other exception classes are never answered.
    assert_eq!(
        El2Answers::default().answer(mk(ec::SYS64, true, oslsr), || NOW),
        None
    );
    assert_eq!(table.answer(mk(ec::DABT_LOW, true, oslsr), || NOW), None);
}
