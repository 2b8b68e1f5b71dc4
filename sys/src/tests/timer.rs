//! The emulated EL1 physical timer, and the EL2 code's answers to its reads.

use crate::arm64::esr::ec;
use crate::arm64::sysreg;
use crate::arm64::timer::*;
use crate::hyp::{El2Answer, El2Answers};

#[test]
fn physical_timer_registers() {
    let mut p = PhysTimer::new();
    assert_eq!(p.read_ctl(0), 0);
    assert!(!p.level(0));
    // TVAL write: CVAL = now + 100.
    p.write_tval(100, 1000);
    assert_eq!(p.read_cval(), 1100);
    assert_eq!(p.read_tval(1050), 50);
    // Negative TVAL (sign-extended 32-bit): CVAL in the past.
    p.write_tval(0xffff_ff9c, 1000); // -100
    assert_eq!(p.read_cval(), 900);
    assert_eq!(p.read_tval(1000), 0xffff_ff9c);
    // Upper bits of a TVAL write are ignored.
    p.write_tval(0xdead_0000_0000_0010, 0);
    assert_eq!(p.read_cval(), 16);

    p.write_cval(2000);
    p.write_ctl(CTL_ENABLE | CTL_ISTATUS | 0xf0);
    assert_eq!(
        p.read_ctl(1999),
        CTL_ENABLE,
        "ISTATUS is not writable, RES0 ignored"
    );
    assert_eq!(p.read_ctl(2000), CTL_ENABLE | CTL_ISTATUS);
    assert!(!p.level(1999));
    assert!(p.level(2000));
    assert_eq!(p.deadline(1500), Some(2000));
    assert_eq!(p.deadline(2000), None);
    p.write_ctl(CTL_ENABLE | CTL_IMASK);
    assert!(!p.level(3000), "masked");
    assert_eq!(
        p.read_ctl(3000),
        CTL_ENABLE | CTL_IMASK | CTL_ISTATUS,
        "ISTATUS shows through IMASK"
    );
    assert_eq!(p.deadline(0), None);
}

#[test]
fn physical_timer_sysreg_access() {
    let mut p = PhysTimer::new();
    assert_eq!(p.access(sysreg::CNTP_CVAL_EL0, false, 500, 0), Some(0));
    assert_eq!(
        p.access(sysreg::CNTP_CTL_EL0, false, CTL_ENABLE, 0),
        Some(0)
    );
    assert_eq!(
        p.access(sysreg::CNTP_CTL_EL0, true, 0, 600),
        Some(CTL_ENABLE | CTL_ISTATUS)
    );
    assert_eq!(p.access(sysreg::CNTP_TVAL_EL0, true, 0, 400), Some(100));
    assert_eq!(p.access(sysreg::CNTP_TVAL_EL0, false, 10, 400), Some(0));
    assert_eq!(p.access(sysreg::CNTP_CVAL_EL0, true, 0, 0), Some(410));
    assert_eq!(p.access(sysreg::CNTPCT_EL0, true, 0, 0), None);
    assert_eq!(p.access(sysreg::MIDR_EL1, true, 0, 0), None);
}

/// The syndrome of a trapped MRS (`read`) or MSR of `reg` with Rt `rt`.
fn sys64(reg: sysreg::SysReg, read: bool, rt: u64) -> u64 {
    let iss = (u64::from(reg.op0()) << 20)
        | (u64::from(reg.op2()) << 17)
        | (u64::from(reg.op1()) << 14)
        | (u64::from(reg.crn()) << 10)
        | (rt << 5)
        | (u64::from(reg.crm()) << 1)
        | u64::from(read);
    (u64::from(ec::SYS64) << 26) | (1 << 25) | iss
}

#[test]
fn el2_answers_timer_reads_from_the_state_the_core_keeps() {
    let mut t = El2Answers {
        enabled: 1,
        ..El2Answers::default()
    };
    t.ptimer.write_cval(1000);
    t.ptimer.write_ctl(CTL_ENABLE);
    let at = |n: u64| move || n;
    assert_eq!(
        t.answer(sys64(sysreg::CNTP_CTL_EL0, true, 3), at(999)),
        Some(El2Answer::Read {
            rt: 3,
            value: CTL_ENABLE
        })
    );
    assert_eq!(
        t.answer(sys64(sysreg::CNTP_CTL_EL0, true, 3), at(1000)),
        Some(El2Answer::Read {
            rt: 3,
            value: CTL_ENABLE | CTL_ISTATUS
        }),
        "ISTATUS from the count the EL2 code reads"
    );
    assert_eq!(
        t.answer(sys64(sysreg::CNTP_CVAL_EL0, true, 0), at(0)),
        Some(El2Answer::Read { rt: 0, value: 1000 })
    );
    assert_eq!(
        t.answer(sys64(sysreg::CNTP_TVAL_EL0, true, 31), at(900)),
        Some(El2Answer::Read { rt: 31, value: 100 })
    );
    // Writes arm the host timer and drive PPI 30: the core's.
    for reg in [
        sysreg::CNTP_CTL_EL0,
        sysreg::CNTP_CVAL_EL0,
        sysreg::CNTP_TVAL_EL0,
    ] {
        assert_eq!(t.answer(sys64(reg, false, 1), at(0)), None);
    }
    // Neither the counter registers nor the virtual timer are the table's.
    assert_eq!(t.answer(sys64(sysreg::CNTPCT_EL0, true, 1), at(0)), None);
    assert_eq!(
        t.answer(sys64(sysreg::SysReg::new(3, 3, 14, 3, 1), true, 1), at(0)),
        None
    );
    // The count is read only for a timer register.
    let never = || -> u64 { panic!("count read for an ID register") };
    assert!(t
        .answer(sys64(sysreg::ID_AA64PFR0_EL1, true, 1), never)
        .is_some());
    t.enabled = 0;
    assert_eq!(t.answer(sys64(sysreg::CNTP_CTL_EL0, true, 3), at(0)), None);
}

/// The syndrome of a data abort from a lower EL: ISV, `sas` (log2 bytes), SSE, SF,
/// Rt, and `extra` ISS bits (WnR, S1PTW...), with DFSC `dfsc`.
pub(super) fn dabt_esr(sas: u32, sse: bool, sf: bool, rt: u32, extra: u32, dfsc: u32) -> u64 {
    use crate::arm64::esr::dabt;
    let iss = dabt::ISV
        | (sas << dabt::SAS_SHIFT)
        | if sse { dabt::SSE } else { 0 }
        | if sf { dabt::SF } else { 0 }
        | (rt << dabt::SRT_SHIFT)
        | extra
        | dfsc;
    (u64::from(ec::DABT_LOW) << 26) | (1 << 25) | u64::from(iss)
}

/// The device-register loads the EL2 code answers: only a load of 1, 2 or 4 bytes with
/// a syndrome, on a stage-2 translation fault outside a stage-1 walk, at exactly one of
/// the rows in use; the value as the load leaves it in Xt.
#[test]
fn el2_answers_device_loads_only_at_its_rows() {
    use crate::arm64::esr::dabt;
    use crate::hyp::El2MmioAnswer;
    let mut t = El2Answers {
        enabled: 1,
        ..El2Answers::default()
    };
    t.mmio[0] = El2MmioAnswer {
        ipa: 0x1_0018,
        value: 0x8190,
    };
    t.mmio[1] = El2MmioAnswer {
        ipa: 0x2_0000,
        value: 7,
    };
    let fr = || 0x1_0018;
    let ldr_w = dabt_esr(2, false, false, 5, 0, 0x07);
    assert_eq!(t.answer_load(ldr_w, fr), None, "no row in use");
    t.mmio_rows = 1;
    assert_eq!(
        t.answer_load(ldr_w, fr),
        Some(El2Answer::Read {
            rt: 5,
            value: 0x8190
        })
    );
    let read = |esr: u64, ipa: u64| t.answer_load(esr, || ipa);
    // Widths and sign extension: ldrb, ldrsh x, ldrsh w.
    let value = |a: Option<El2Answer>| match a {
        Some(El2Answer::Read { value, .. }) => Some(value),
        _ => None,
    };
    assert_eq!(
        value(read(dabt_esr(0, false, false, 1, 0, 0x06), 0x1_0018)),
        Some(0x90)
    );
    assert_eq!(
        value(read(dabt_esr(1, true, true, 1, 0, 0x05), 0x1_0018)),
        Some(0xffff_ffff_ffff_8190)
    );
    assert_eq!(
        value(read(dabt_esr(1, true, false, 1, 0, 0x04), 0x1_0018)),
        Some(0xffff_8190)
    );
    // Not answered: another address, a row not in use, 8 bytes, a store, a stage-1
    // walk, cache maintenance, no valid FAR, an external abort, a permission or
    // access-flag fault, no syndrome, a sysreg trap.
    assert_eq!(read(ldr_w, 0x1_0019), None);
    assert_eq!(read(ldr_w, 0x2_0000), None, "row 1 not in use");
    assert_eq!(read(dabt_esr(3, false, true, 1, 0, 0x07), 0x1_0018), None);
    for extra in [dabt::WNR, dabt::S1PTW, dabt::CM, dabt::FNV, dabt::EA] {
        assert_eq!(
            read(dabt_esr(2, false, false, 1, extra, 0x07), 0x1_0018),
            None
        );
    }
    for dfsc in [0x0f, 0x0b, 0x00, 0x10] {
        assert_eq!(read(dabt_esr(2, false, false, 1, 0, dfsc), 0x1_0018), None);
    }
    let no_isv = dabt_esr(2, false, false, 1, 0, 0x07) & !u64::from(dabt::ISV);
    assert_eq!(read(no_isv, 0x1_0018), None);
    assert_eq!(read(sys64(sysreg::MIDR_EL1, true, 1), 0x1_0018), None);
    t.enabled = 0;
    assert_eq!(t.answer_load(ldr_w, fr), None, "disabled");
}
