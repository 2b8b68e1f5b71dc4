//! Features a host CPU may have that the guest is not shown: the traps the vCPU runs
//! with, the answers to the trapped instructions and registers, and the ID values the
//! guest reads, on an Armv8.0 host and on one with every feature (docs/isolation.md).

use super::*;
use crate::fake::{FakeHost, Scripted};
use crate::sysemul::{answer, hidden_feature, GuestIdRegs, SysRegAnswer};
use crate::vcpu::{HostTraps, GUEST_CPTR, GUEST_HCR};
use vmm_sys::arm64::esr::{self, decode_sys64, ec, esr as mk};
use vmm_sys::arm64::regs::{cptr, el2_optional, hcr};
use vmm_sys::arm64::sysreg::SysReg;
use vmm_sys::hyp::VcpuContext;
use vmm_sys::reg;

/// A host with SVE, RAS, AMU (PFR0), MTE2 and SME (PFR1), LOR (MMFR1) and pointer
/// authentication (ISAR1, ISAR2), as QEMU's `-cpu max` has.
fn modern_host() -> crate::IdRegs {
    let base = crate::fake::params().id_regs;
    crate::IdRegs {
        pfr0: base.pfr0 | (1 << 28) | (1 << 32) | (1 << 44),
        pfr1: (2 << 8) | (1 << 24),
        isar1: base.isar1 | (1 << 4) | (1 << 8),
        isar2: 1 << 12,
        mmfr1: base.mmfr1 | (1 << 16),
        ..base
    }
}

fn sys_iss(r: SysReg, rt: u8, read: bool) -> u32 {
    r.0 | (u32::from(rt) << 5) | u32::from(read)
}

#[test]
fn traps_follow_the_host_features() {
    let old = HostTraps::new(&crate::fake::params().id_regs);
    assert_eq!(old.hcr, GUEST_HCR | hcr::TACR, "Armv8.0: only TACR added");
    assert_eq!(old.cptr, GUEST_CPTR);
    assert_ne!(old.cptr & cptr::TZ, 0, "SVE traps (RES1 where absent)");
    assert_ne!(old.cptr & cptr::TSM, 0, "SME traps (RES1 where absent)");
    let new = HostTraps::new(&modern_host());
    for (bit, name) in [
        (hcr::TACR, "TACR"),
        (hcr::TERR, "TERR"),
        (hcr::TEA, "TEA"),
        (hcr::TLOR, "TLOR"),
        (hcr::TID5, "TID5"),
    ] {
        assert_ne!(new.hcr & bit, 0, "{name}");
    }
    assert_eq!(
        new.hcr & hcr::ATA,
        0,
        "ATA clear: MTE's tag accesses are refused"
    );
    assert_eq!(
        new.hcr & (hcr::API | hcr::APK),
        hcr::API | hcr::APK,
        "pointer authentication shown: its instructions and keys do not trap"
    );
    assert_eq!(
        new.optional.present & el2_optional::PAUTH,
        el2_optional::PAUTH,
        "and the keys are switched"
    );
    assert_eq!(old.hcr & (hcr::API | hcr::APK), 0, "RES0 without PAC");
    assert_eq!(old.optional.present, 0);
    assert_ne!(new.cptr & cptr::TAM, 0, "AMU traps");
    assert_eq!(new.cptr & cptr::TFP, 0, "FP is switched, not trapped");
}

/// The traps are what the vCPU is entered with.
#[test]
fn the_guest_runs_with_the_traps() {
    let mut params = crate::fake::params();
    params.id_regs = modern_host();
    let v = Vmm::new(FakeHost::new(64, 2), params).ok().unwrap();
    setup(&v, "g", 4);
    set_reg(&v, "g", 0, reg::VM_REG_GUEST_PC, RAM).unwrap();
    v.host()
        .push(Scripted::sync(mk(ec::HVC64, true, 0)).with(|c| c.pc += 4));
    run(&v, "g", 0).unwrap();
    let c: VcpuContext = v.host().entries.lock().unwrap()[0];
    let want = HostTraps::new(&modern_host());
    assert_eq!((c.el2.hcr_el2, c.el2.cptr_el2), (want.hcr, want.cptr));
    assert_eq!(c.optional, want.optional);
}

/// Fine-grained traps and MPAM (QEMU 7.2 has neither: unit tests only, docs/isolation.md).
#[test]
fn optional_trap_registers_where_the_host_has_them() {
    use vmm_sys::arm64::regs::{mpam2, mpamhcr, mpamidr};
    const PAUTH: u64 = el2_optional::PAUTH;
    let none = HostTraps::new(&modern_host()).optional;
    assert_eq!(none.present, PAUTH, "QEMU's -cpu max: no FGT, no MPAM");
    assert_eq!(
        none,
        vmm_sys::hyp::OptionalTraps {
            present: PAUTH,
            ..Default::default()
        }
    );

    let fgt = HostTraps::new(&crate::IdRegs {
        mmfr0: modern_host().mmfr0 | (1 << 56),
        ..modern_host()
    })
    .optional;
    assert_eq!(fgt.present, el2_optional::FGT | PAUTH);
    assert_eq!(
        [
            fgt.hfgrtr_el2,
            fgt.hfgwtr_el2,
            fgt.hfgitr_el2,
            fgt.hdfgrtr_el2,
            fgt.hdfgwtr_el2
        ],
        [0; 5],
        "no positive trap, every nXXX control trapping"
    );

    let mpam_hcr = HostTraps::new(&crate::IdRegs {
        pfr0: modern_host().pfr0 | (1 << 40),
        mpamidr: mpamidr::HAS_HCR | mpamidr::HAS_TIDR | 0x3f,
        ..modern_host()
    })
    .optional;
    assert_eq!(
        mpam_hcr.present,
        el2_optional::MPAM | el2_optional::MPAM_HCR | PAUTH
    );
    assert_eq!(
        mpam_hcr.mpam2_el2,
        mpam2::TRAPMPAM0EL1 | mpam2::TRAPMPAM1EL1
    );
    assert_eq!(mpam_hcr.mpamhcr_el2, mpamhcr::TRAP_MPAMIDR_EL1);

    // MPAM v0.1 (PFR1.MPAM_frac only), with TIDR and no HCR.
    let mpam_tidr = HostTraps::new(&crate::IdRegs {
        pfr1: modern_host().pfr1 | (1 << 16),
        mpamidr: mpamidr::HAS_TIDR,
        ..modern_host()
    })
    .optional;
    assert_eq!(mpam_tidr.present, el2_optional::MPAM | PAUTH);
    assert_eq!(
        mpam_tidr.mpam2_el2,
        mpam2::TRAPMPAM0EL1 | mpam2::TRAPMPAM1EL1 | mpam2::TIDR
    );
    assert_eq!(mpam_tidr.mpamhcr_el2, 0);
    // The guest is shown no MPAM either way.
    let ids = GuestIdRegs::new(
        &crate::IdRegs {
            pfr0: modern_host().pfr0 | (1 << 40),
            pfr1: modern_host().pfr1 | (1 << 16),
            ..modern_host()
        },
        39,
    );
    assert_eq!(((ids.pfr0 >> 40) & 0xf, (ids.pfr1 >> 16) & 0xf), (0, 0));
}

/// SVE, SME and pointer-authentication instructions trap; each gets an UNDEF at its
/// own address, and the run goes on in the guest.
#[test]
fn hidden_instructions_are_undefined() {
    let v = vmm();
    setup(&v, "g", 4);
    set_reg(&v, "g", 0, reg::VM_REG_GUEST_PC, RAM).unwrap();
    for (n, class) in [ec::SVE, ec::SME, ec::PAC].into_iter().enumerate() {
        let pc = RAM + 0x100 * (n as u64 + 1);
        v.host()
            .push(Scripted::sync(mk(class, true, 0)).with(move |c| {
                c.pc = pc;
                c.el1.vbar_el1 = RAM + 0x800;
            }));
    }
    v.host()
        .push(Scripted::sync(mk(ec::HVC64, true, 0)).with(|c| c.pc += 4));
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(
        exitcode(&e),
        vmm_sys::exit::ExitCode::Smccc,
        "no exit to userspace"
    );
    let en = v.host().entries.lock().unwrap().clone();
    for n in 0..3u64 {
        let c = en[n as usize + 1];
        assert_eq!(
            (c.el1.esr_el1, c.el1.elr_el1, c.pc),
            (esr::ESR_UNDEFINED, RAM + 0x100 * (n + 1), RAM + 0xa00),
            "exit {n}: UNDEF at the instruction, taken at VBAR + 0x200"
        );
    }
}

#[test]
fn hidden_registers_read_as_zero_or_are_undefined() {
    let ids = GuestIdRegs::new(&modern_host(), 39);
    let a = |r: SysReg, read: bool| answer(&decode_sys64(sys_iss(r, 2, read)), &ids, 0, 0);
    let raz_wi = [
        ("ACTLR_EL1", SysReg::new(3, 0, 1, 0, 1)),
        ("ERRIDR_EL1", SysReg::new(3, 0, 5, 3, 0)),
        ("ERRSELR_EL1", SysReg::new(3, 0, 5, 3, 1)),
        ("ERXSTATUS_EL1", SysReg::new(3, 0, 5, 4, 2)),
        ("ERXMISC3_EL1", SysReg::new(3, 0, 5, 5, 3)),
    ];
    for (name, r) in raz_wi {
        assert_eq!(a(r, true), SysRegAnswer::Read(0), "{name}");
        assert_eq!(a(r, false), SysRegAnswer::Ignored, "{name}");
    }
    let undefined = [
        ("LORSA_EL1", SysReg::new(3, 0, 10, 4, 0)),
        ("LORC_EL1", SysReg::new(3, 0, 10, 4, 3)),
        ("LORID_EL1", SysReg::new(3, 0, 10, 4, 7)),
        ("APIAKeyLo_EL1", SysReg::new(3, 0, 2, 1, 0)),
        ("APGAKeyHi_EL1", SysReg::new(3, 0, 2, 3, 1)),
        ("RGSR_EL1", SysReg::new(3, 0, 1, 0, 5)),
        ("GCR_EL1", SysReg::new(3, 0, 1, 0, 6)),
        ("TFSR_EL1", SysReg::new(3, 0, 5, 6, 0)),
        ("TFSRE0_EL1", SysReg::new(3, 0, 5, 6, 1)),
        ("GMID_EL1", SysReg::new(3, 1, 0, 0, 4)),
        ("AMCR_EL0", SysReg::new(3, 3, 13, 2, 0)),
        ("AMEVCNTR00_EL0", SysReg::new(3, 3, 13, 4, 0)),
        ("AMEVTYPER115_EL0", SysReg::new(3, 3, 13, 15, 7)),
        ("MPAMIDR_EL1", SysReg::new(3, 0, 10, 4, 4)),
        ("MPAM1_EL1", SysReg::new(3, 0, 10, 5, 0)),
        ("MPAM0_EL1", SysReg::new(3, 0, 10, 5, 1)),
        ("MPAMSM_EL1", SysReg::new(3, 0, 10, 5, 3)),
        ("SMPRI_EL1", SysReg::new(3, 0, 1, 2, 4)),
        ("TPIDR2_EL0", SysReg::new(3, 3, 13, 0, 5)),
        ("ACCDATA_EL1", SysReg::new(3, 0, 13, 0, 5)),
        ("PIRE0_EL1", SysReg::new(3, 0, 10, 2, 2)),
        ("PIR_EL1", SysReg::new(3, 0, 10, 2, 3)),
        ("POR_EL1", SysReg::new(3, 0, 10, 2, 4)),
        ("POR_EL0", SysReg::new(3, 3, 10, 2, 4)),
    ];
    for (name, r) in undefined {
        assert_eq!(a(r, true), SysRegAnswer::Undefined, "{name} read");
        assert_eq!(a(r, false), SysRegAnswer::Undefined, "{name} write");
    }
    // Neighbours that are not hidden features are not caught.
    for (name, r) in [
        ("SCTLR_EL1", SysReg::new(3, 0, 1, 0, 0)),
        ("CPACR_EL1", SysReg::new(3, 0, 1, 0, 2)),
        ("ESR_EL1", SysReg::new(3, 0, 5, 2, 0)),
        ("MAIR_EL1", SysReg::new(3, 0, 10, 2, 0)),
        ("AMAIR_EL1", SysReg::new(3, 0, 10, 3, 0)),
        ("TPIDR_EL0", SysReg::new(3, 3, 13, 0, 2)),
        ("CONTEXTIDR_EL1", SysReg::new(3, 0, 13, 0, 1)),
        ("TTBR0_EL1", SysReg::new(3, 0, 2, 0, 0)),
    ] {
        assert_eq!(hidden_feature(r), None, "{name}");
    }
}

#[test]
fn a_modern_host_shows_the_guest_none_of_its_hidden_features() {
    let ids = GuestIdRegs::new(&modern_host(), 39);
    let f = |v: u64, shift: u32| (v >> shift) & 0xf;
    assert_eq!(f(ids.pfr0, 28), 0, "RAS");
    assert_eq!(f(ids.pfr0, 32), 0, "SVE");
    assert_eq!(f(ids.pfr0, 44), 0, "AMU");
    assert_eq!(ids.pfr1, 0, "MTE, SME, BTI, SSBS");
    // Pointer authentication is shown (the keys are switched), the rest of ISAR2 not.
    assert_eq!(
        ids.isar1 & ((0xff << 4) | (0xff << 24)),
        modern_host().isar1 & ((0xff << 4) | (0xff << 24)),
        "PAC as the host"
    );
    assert_eq!(
        ids.read(SysReg::new(3, 0, 0, 6, 2)),
        1 << 12,
        "QARMA3 PAC as the host"
    );
    let more = GuestIdRegs::new(
        &crate::IdRegs {
            isar2: modern_host().isar2 | 0xff | (0xf << 16),
            ..modern_host()
        },
        39,
    );
    assert_eq!(more.isar2, 1 << 12, "only ISAR2's PAC fields");
    assert_eq!(f(ids.mmfr1, 16), 0, "LOR");
    assert_eq!(ids.read(SysReg::new(3, 0, 0, 4, 4)), 0, "ID_AA64ZFR0_EL1");
    assert_eq!(ids.read(SysReg::new(3, 0, 0, 4, 5)), 0, "ID_AA64SMFR0_EL1");
    assert_eq!(ids.dfr0, 6, "debug v8.0, no PMU, SPE, TRBE, trace");
}

/// Debug, PMU, SPE, TRBE and trace registers trap: MDCR_EL2 as the vCPU gets it.
#[test]
fn debug_pmu_spe_and_trace_registers_trap() {
    use crate::vcpu::GUEST_MDCR;
    use vmm_sys::arm64::regs::mdcr;
    for (bit, name) in [
        (mdcr::TDA, "TDA"),
        (mdcr::TDOSA, "TDOSA"),
        (mdcr::TDRA, "TDRA"),
        (mdcr::TPM, "TPM"),
        (mdcr::TPMCR, "TPMCR"),
        (mdcr::TPMS, "TPMS"),
        (mdcr::TTRF, "TTRF"),
    ] {
        assert_ne!(GUEST_MDCR & bit, 0, "{name}");
    }
    assert_eq!(
        (GUEST_MDCR >> 12) & 3,
        0,
        "E2PB 0: the profiling buffer is EL2's"
    );
    assert_eq!(
        (GUEST_MDCR >> 24) & 3,
        0,
        "E2TB 0: the trace buffer is EL2's"
    );
    assert_eq!(
        GUEST_MDCR & mdcr::HPMN_MASK,
        0,
        "no PMU counters for the guest"
    );
}

/// A VHE host: nothing to bring up or take down (the fake fails on any stub or blob
/// call), no EL2 stacks, and a guest still runs with the same EL2 controls.
#[test]
fn a_vhe_host_needs_no_stub_and_runs_guests() {
    let host = FakeHost::new_vhe(64, 2);
    let params = crate::InitParams {
        regime: crate::El2Regime::Vhe,
        id_regs: modern_host(),
        max_guest_mem: u64::MAX,
    };
    let v = Vmm::new(host, params).ok().unwrap();
    assert_eq!(v.host().pages_in_use(), 0, "no EL2 stacks");
    setup(&v, "g", 4);
    set_reg(&v, "g", 0, reg::VM_REG_GUEST_PC, RAM).unwrap();
    v.host()
        .push(Scripted::sync(mk(ec::HVC64, true, 0)).with(|c| c.pc += 4));
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), vmm_sys::exit::ExitCode::Smccc);
    let c: VcpuContext = v.host().entries.lock().unwrap()[0];
    assert_eq!(c.el2.vtcr_el2, v.el2_config().vtcr_el2);
    assert_eq!(c.el2.hcr_el2, HostTraps::new(&modern_host()).hcr);
    destroy(&v, "g").unwrap();
    v.shutdown().unwrap();
    let h = v.into_host().ok().unwrap();
    assert_eq!(h.pages_in_use(), 0);
}
