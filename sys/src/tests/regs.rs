//! The E2H (VHE) layouts of the EL2 trap registers.

use crate::arm64::regs::{cnthctl, cptr};

#[test]
fn cptr_in_the_e2h_layout_keeps_every_trap() {
    // A guest value as vmm-core makes it: FP on, SVE, SME, trace and AMU trapped.
    let v = cptr::RES1 | cptr::TZ | cptr::TTA | cptr::TAM;
    let e = cptr::to_e2h(v);
    assert_eq!((e >> cptr::e2h::FPEN_SHIFT) & 3, 3, "FP not trapped");
    assert_eq!((e >> cptr::e2h::ZEN_SHIFT) & 3, 0, "SVE trapped");
    assert_eq!(
        (e >> cptr::e2h::SMEN_SHIFT) & 3,
        0,
        "SME trapped (TSM is in RES1)"
    );
    assert_ne!(e & cptr::e2h::TTA, 0, "trace trapped");
    assert_ne!(e & cptr::e2h::TAM, 0, "AMU trapped");
    assert_eq!(e & cptr::e2h::TCPAC, 0);
    // FP trapped, nothing else.
    let e = cptr::to_e2h(cptr::TFP);
    assert_eq!((e >> cptr::e2h::FPEN_SHIFT) & 3, 0);
    assert_eq!((e >> cptr::e2h::ZEN_SHIFT) & 3, 3);
    assert_eq!((e >> cptr::e2h::SMEN_SHIFT) & 3, 3);
    assert_eq!(e & cptr::e2h::TTA, 0);
}

#[test]
fn cnthctl_in_the_e2h_layout_moves_the_el1_controls() {
    assert_eq!(cnthctl::to_e2h(cnthctl::EL1PCTEN), cnthctl::e2h::EL1PCTEN);
    assert_eq!(
        cnthctl::to_e2h(cnthctl::EL1PCTEN | cnthctl::EL1PCEN),
        cnthctl::e2h::EL1PCTEN | cnthctl::e2h::EL1PCEN
    );
    assert_eq!(cnthctl::to_e2h(0), 0, "EL0 access bits stay clear");
}
