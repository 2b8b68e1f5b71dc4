//! Unit tests of the vGIC: every register's semantics through `mmio_access` (the path a
//! guest's access takes), injection, list-register flush/sync against a simulated
//! guest, and a sweep of every offset and size that must never panic.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use crate::errno::Errno;
use crate::vgic::dist::*;
use crate::vgic::lr::*;
use crate::vgic::redist::*;
use crate::vgic::*;
use vmm_sys::abi::{VgicV3Regs, VmVgicDescr, VmVgicVersion};
use vmm_sys::arm64::sysreg;
use vmm_sys::hyp::VgicCpuRegs;

const D: u64 = 0x2f00_0000;
const R: u64 = 0x2f10_0000;
/// ICH_VTR_EL2 with ListRegs = 3: four list registers (QEMU's cortex-a57).
const VTR_4_LRS: u64 = 3;

fn mpidrs(n: u32) -> Vec<u64> {
    (0..n).map(vmm_platform::vcpu_mpidr).collect()
}

fn vgic(n: u32) -> Vgic {
    Vgic::new(&mpidrs(n), D, R, VTR_4_LRS).unwrap()
}

fn rd(g: &mut Vgic, vcpu: usize, gpa: u64, size: u8) -> u64 {
    let mut v = 0xdead_beef_dead_beef;
    g.mmio_access(vcpu, gpa, size, false, &mut v)
        .expect("a vGIC address");
    v
}

fn wr(g: &mut Vgic, vcpu: usize, gpa: u64, size: u8, val: u64) -> Kicks {
    let mut v = val;
    g.mmio_access(vcpu, gpa, size, true, &mut v)
        .expect("a vGIC address")
}

fn rd_base(n: u64) -> u64 {
    R + n * REDIST_STRIDE
}

fn sgi_base(n: u64) -> u64 {
    rd_base(n) + SGI_FRAME
}

/// ICH_VMCR_EL2 with priority mask `pmr` and both groups enabled at the CPU interface.
fn vmcr(pmr: u8) -> u64 {
    (u64::from(pmr) << 24) | 3
}

/// What Linux's GICv3 driver does at boot, reduced: distributor groups on, every
/// interrupt group 1 with priority 0xa0, the redistributors awake, and each CPU
/// interface on with PMR 0xf0 (told to the vGIC through `sync`, as after an exit).
fn linux_like(g: &mut Vgic) {
    let n = g.ncpus();
    wr(
        g,
        0,
        D + GICD_CTLR,
        4,
        u64::from(CTLR_ENABLE_G0 | CTLR_ENABLE_G1 | CTLR_ARE),
    );
    for reg in 1..(NR_IRQS as u64 / 32) {
        wr(g, 0, D + GICD_IGROUPR + 4 * reg, 4, 0xffff_ffff);
    }
    for b in (SPI_BASE as u64..NR_IRQS as u64).step_by(4) {
        wr(g, 0, D + GICD_IPRIORITYR + b, 4, 0xa0a0_a0a0);
    }
    for c in 0..n as u64 {
        wr(g, c as usize, rd_base(c) + GICR_WAKER, 4, 0);
        wr(g, c as usize, sgi_base(c) + GICD_IGROUPR, 4, 0xffff_ffff);
        for b in (0..32).step_by(4) {
            wr(
                g,
                c as usize,
                sgi_base(c) + GICR_IPRIORITYR0 + b,
                4,
                0xa0a0_a0a0,
            );
        }
        let regs = VgicCpuRegs {
            ich_vmcr_el2: vmcr(0xf0),
            ..Default::default()
        };
        g.sync(c as usize, &regs);
    }
}

fn enable_spi(g: &mut Vgic, intid: u32) -> Kicks {
    let reg = u64::from(intid / 32) * 4;
    wr(g, 0, D + GICD_ISENABLER + reg, 4, 1 << (intid % 32))
}

fn lr_state(lr: u64) -> u64 {
    lr >> 62
}

fn lr_intid(lr: u64) -> u32 {
    lr as u32
}

fn lr_prio(lr: u64) -> u8 {
    (lr >> 48) as u8
}

fn descr(ds: u64, dsz: u64, rs: u64, rsz: u64) -> VmVgicDescr {
    VmVgicDescr {
        ver: VmVgicVersion {
            version: 3,
            flags: 0,
        },
        v3_regs: VgicV3Regs {
            dist_start: ds,
            dist_size: dsz,
            redist_start: rs,
            redist_size: rsz,
        },
    }
}

// --- Attach -------------------------------------------------------------------------

#[test]
fn attach_validates_windows() {
    let ram = [(0x8000_0000u64, 256u64 << 20)];
    let lim = 1u64 << 39;
    let ok = descr(D, DIST_SIZE, R, 2 * REDIST_STRIDE);
    assert_eq!(validate_attach(&ok, 2, &ram, lim), Ok(()));
    let g = Vgic::attach(&ok, &mpidrs(2), &ram, lim, VTR_4_LRS).unwrap();
    assert_eq!(g.dist_window(), (D, 0x1_0000));
    assert_eq!(g.redist_window(), (R, 0x4_0000));
    assert_eq!(g.nr_lrs(), 4);

    let bad = |d: VmVgicDescr, n: usize| validate_attach(&d, n, &ram, lim);
    let mut v2 = ok;
    v2.ver.version = 2;
    assert_eq!(bad(v2, 2), Err(Errno::EINVAL), "version 2");
    assert_eq!(
        bad(descr(D, 0x2_0000, R, 0x4_0000), 2),
        Err(Errno::EINVAL),
        "dist size"
    );
    assert_eq!(
        bad(descr(D, DIST_SIZE, R, 0x2_0000), 2),
        Err(Errno::EINVAL),
        "redist for 1 of 2"
    );
    assert_eq!(
        bad(descr(D, DIST_SIZE, R, 0x6_0000), 2),
        Err(Errno::EINVAL),
        "redist for 3 of 2"
    );
    assert_eq!(
        bad(descr(D + 0x1000, DIST_SIZE, R, 0x4_0000), 2),
        Err(Errno::EINVAL),
        "dist align"
    );
    assert_eq!(
        bad(descr(D, DIST_SIZE, R + 0x8000, 0x4_0000), 2),
        Err(Errno::EINVAL),
        "redist align"
    );
    assert_eq!(
        bad(descr(R, DIST_SIZE, R, 0x4_0000), 2),
        Err(Errno::EINVAL),
        "dist inside redist"
    );
    assert_eq!(
        bad(descr(D, DIST_SIZE, D - 0x1_0000, 0x4_0000), 2),
        Err(Errno::EINVAL),
        "redist over dist"
    );
    assert_eq!(
        bad(descr(0x8010_0000, DIST_SIZE, R, 0x4_0000), 2),
        Err(Errno::EINVAL),
        "dist in RAM"
    );
    assert_eq!(
        bad(descr(D, DIST_SIZE, 0x8fff_0000, 0x4_0000), 2),
        Err(Errno::EINVAL),
        "redist into RAM"
    );
    assert_eq!(
        bad(descr(lim - 0x1_0000, DIST_SIZE, R, 0x4_0000), 2),
        Ok(()),
        "dist at the very top"
    );
    assert_eq!(
        bad(descr(lim, DIST_SIZE, R, 0x4_0000), 2),
        Err(Errno::EINVAL),
        "dist past the IPA space"
    );
    assert_eq!(
        bad(descr(u64::MAX - 0xffff, DIST_SIZE, R, 0x4_0000), 2),
        Err(Errno::EINVAL),
        "overflow"
    );
    assert_eq!(
        bad(descr(D, DIST_SIZE, u64::MAX - 0xffff, 0x4_0000), 2),
        Err(Errno::EINVAL),
        "overflow"
    );
    assert_eq!(bad(ok, 0), Err(Errno::EINVAL), "no vCPUs");
    assert_eq!(
        bad(descr(D, DIST_SIZE, R, 17 * REDIST_STRIDE), 17),
        Err(Errno::EINVAL),
        "17 vCPUs"
    );
    assert_eq!(bad(descr(D, DIST_SIZE, R, 16 * REDIST_STRIDE), 16), Ok(()));
}

#[test]
fn new_rejects_bad_shapes() {
    assert_eq!(Vgic::new(&[], D, R, 3).err(), Some(Errno::EINVAL));
    assert_eq!(Vgic::new(&mpidrs(17), D, R, 3).err(), Some(Errno::EINVAL));
    assert_eq!(
        Vgic::new(&[0x8000_0001, 0x1], D, R, 3).err(),
        Some(Errno::EINVAL),
        "same affinity"
    );
    assert_eq!(
        Vgic::new(&mpidrs(1), D + 4, R, 3).err(),
        Some(Errno::EINVAL)
    );
    // ICH_VTR_EL2.ListRegs is capped at what the context holds.
    assert_eq!(Vgic::new(&mpidrs(1), D, R, 0x1f).unwrap().nr_lrs(), 16);
    assert_eq!(Vgic::new(&mpidrs(1), D, R, 0).unwrap().nr_lrs(), 1);
    assert_eq!(VGIC_VERSION, 3);
}

#[test]
fn addresses_outside_the_windows_are_not_ours() {
    let mut g = vgic(2);
    let mut v = 7;
    for gpa in [
        D - 1,
        D + DIST_SIZE,
        R - 1,
        R + 2 * REDIST_STRIDE,
        0,
        u64::MAX,
    ] {
        assert_eq!(g.mmio_access(0, gpa, 4, false, &mut v), None, "{gpa:#x}");
        assert_eq!(g.mmio_access(0, gpa, 4, true, &mut v), None, "{gpa:#x}");
    }
    assert_eq!(v, 7, "untouched");
    assert!(g.mmio_access(0, D, 4, false, &mut v).is_some());
    assert!(g
        .mmio_access(0, R + 2 * REDIST_STRIDE - 1, 1, false, &mut v)
        .is_some());
}

// --- Distributor ----------------------------------------------------------------------

#[test]
fn gicd_ctlr() {
    let mut g = vgic(1);
    // Reset: groups off, ARE and DS read as one, RWP zero.
    assert_eq!(rd(&mut g, 0, D + GICD_CTLR, 4), 0x50);
    wr(&mut g, 0, D + GICD_CTLR, 4, 0xffff_ffff);
    assert_eq!(
        rd(&mut g, 0, D + GICD_CTLR, 4),
        0x53,
        "only the enables stick; RWP 0"
    );
    wr(&mut g, 0, D + GICD_CTLR, 4, 0);
    assert_eq!(
        rd(&mut g, 0, D + GICD_CTLR, 4),
        0x50,
        "ARE cannot be cleared"
    );
    // Linux's value: ARE_NS | EnableGrp1A | EnableGrp1 in the NS view = bits 4, 1, 0.
    wr(&mut g, 0, D + GICD_CTLR, 4, 0x13);
    assert_eq!(rd(&mut g, 0, D + GICD_CTLR, 4), 0x53);
    // Wrong widths are RAZ/WI.
    assert_eq!(rd(&mut g, 0, D + GICD_CTLR, 1), 0);
    assert_eq!(rd(&mut g, 0, D + GICD_CTLR, 8), 0);
    wr(&mut g, 0, D + GICD_CTLR, 1, 0);
    wr(&mut g, 0, D + GICD_CTLR, 2, 0);
    assert_eq!(rd(&mut g, 0, D + GICD_CTLR, 4), 0x53);
}

#[test]
fn gicd_identification() {
    let mut g = vgic(2);
    let typer = rd(&mut g, 0, D + GICD_TYPER, 4);
    assert_eq!(typer & 0x1f, 3, "ITLinesNumber: 128 INTIDs");
    assert_eq!((typer & 0x1f) as u32 + 1, NR_IRQS / 32);
    assert_eq!((typer >> 5) & 7, 1, "CPUNumber: 2 PEs");
    assert_eq!((typer >> 19) & 0x1f, 9, "IDbits: 10-bit INTIDs");
    assert_eq!(typer & (1 << 17), 0, "no LPIs");
    assert_ne!(typer & (1 << 16), 0, "MBIS: SETSPI_NSR works");
    assert_eq!(typer & (1 << 8), 0, "no extended SPIs");
    let mut g16 = vgic(16);
    assert_eq!(
        (rd(&mut g16, 0, D + GICD_TYPER, 4) >> 5) & 7,
        7,
        "CPUNumber caps at 8 PEs"
    );
    assert_eq!(rd(&mut g, 0, D + GICD_IIDR, 4), u64::from(IIDR));
    assert_eq!(rd(&mut g, 0, D + GICD_IIDR, 4) & 0xfff, 0x43b);
    assert_eq!(rd(&mut g, 0, D + GICD_PIDR2, 4) & 0xf0, 0x30, "ArchRev 3");
    assert_eq!(rd(&mut g, 0, D + GICD_TYPER2, 4), 0);
    assert_eq!(rd(&mut g, 0, D + GICD_STATUSR, 4), 0);
    // Read-only: writes change nothing.
    wr(&mut g, 0, D + GICD_TYPER, 4, 0);
    wr(&mut g, 0, D + GICD_PIDR2, 4, 0);
    assert_eq!(rd(&mut g, 0, D + GICD_TYPER, 4), typer);
    assert_eq!(rd(&mut g, 0, D + GICD_PIDR2, 4), u64::from(PIDR2));
}

#[test]
fn gicd_set_clear_registers() {
    let mut g = vgic(1);
    let pairs = [
        (GICD_ISENABLER, GICD_ICENABLER),
        (GICD_ISPENDR, GICD_ICPENDR),
        (GICD_ISACTIVER, GICD_ICACTIVER),
    ];
    for (set, clr) in pairs {
        // Register 1: INTIDs 32..63. W1S sets, a zero bit leaves the state alone.
        wr(&mut g, 0, D + set + 4, 4, 0x8000_0011);
        assert_eq!(rd(&mut g, 0, D + set + 4, 4), 0x8000_0011, "{set:#x}");
        assert_eq!(
            rd(&mut g, 0, D + clr + 4, 4),
            0x8000_0011,
            "{clr:#x} reads the state too"
        );
        wr(&mut g, 0, D + set + 4, 4, 0x2);
        assert_eq!(rd(&mut g, 0, D + set + 4, 4), 0x8000_0013);
        // W1C clears only the ones written.
        wr(&mut g, 0, D + clr + 4, 4, 0x8000_0001);
        assert_eq!(rd(&mut g, 0, D + set + 4, 4), 0x12);
        wr(&mut g, 0, D + clr + 4, 4, 0);
        assert_eq!(rd(&mut g, 0, D + set + 4, 4), 0x12);
        // Register 3: INTIDs 96..127, the last implemented.
        wr(&mut g, 0, D + set + 12, 4, 0xffff_ffff);
        assert_eq!(rd(&mut g, 0, D + set + 12, 4), 0xffff_ffff);
        // Register 0 (the redistributors' with ARE) and past NR_IRQS: RAZ/WI.
        wr(&mut g, 0, D + set, 4, 0xffff_ffff);
        assert_eq!(rd(&mut g, 0, D + set, 4), 0);
        wr(&mut g, 0, D + set + 16, 4, 0xffff_ffff);
        assert_eq!(rd(&mut g, 0, D + set + 16, 4), 0);
        // Byte and 64-bit accesses: RAZ/WI.
        assert_eq!(rd(&mut g, 0, D + set + 4, 1), 0);
        assert_eq!(rd(&mut g, 0, D + set + 4, 8), 0);
        wr(&mut g, 0, D + clr + 4, 1, 0xff);
        wr(&mut g, 0, D + clr + 12, 8, u64::MAX);
        assert_eq!(rd(&mut g, 0, D + set + 4, 4), 0x12);
        assert_eq!(rd(&mut g, 0, D + set + 12, 4), 0xffff_ffff);
        // The SGI frame of vCPU 0 did not see any of it.
        assert_eq!(rd(&mut g, 0, sgi_base(0) + set, 4), 0);
    }
    // IGROUPR is read/write.
    wr(&mut g, 0, D + GICD_IGROUPR + 8, 4, 0x1234_5678);
    assert_eq!(rd(&mut g, 0, D + GICD_IGROUPR + 8, 4), 0x1234_5678);
    wr(&mut g, 0, D + GICD_IGROUPR + 8, 4, 0);
    assert_eq!(rd(&mut g, 0, D + GICD_IGROUPR + 8, 4), 0);
    assert_eq!(
        rd(&mut g, 0, D + GICD_IGROUPR, 4),
        0,
        "IGROUPR0 RAZ/WI with ARE"
    );
}

#[test]
fn pending_of_level_and_edge_spis() {
    let mut g = vgic(1);
    // SPI 40 level (reset config), SPI 41 edge.
    wr(&mut g, 0, D + GICD_ICFGR + 8, 4, 2 << (2 * (41 - 32)));
    assert_eq!(rd(&mut g, 0, D + GICD_ICFGR + 8, 4), 2 << 18);
    let ispendr1 = D + GICD_ISPENDR + 4;
    g.assert_spi(40).unwrap();
    g.assert_spi(41).unwrap();
    assert_eq!(rd(&mut g, 0, ispendr1, 4), (1 << 8) | (1 << 9));
    // ICPENDR cannot clear a level interrupt whose line is high; it clears the edge.
    wr(&mut g, 0, D + GICD_ICPENDR + 4, 4, (1 << 8) | (1 << 9));
    assert_eq!(rd(&mut g, 0, ispendr1, 4), 1 << 8);
    g.deassert_spi(40).unwrap();
    g.deassert_spi(41).unwrap();
    assert_eq!(
        rd(&mut g, 0, ispendr1, 4),
        0,
        "a level line low is not pending"
    );
    // ISPENDR on a level interrupt: pending although the line is low, until ICPENDR.
    wr(&mut g, 0, ispendr1, 4, 1 << 8);
    assert_eq!(rd(&mut g, 0, ispendr1, 4), 1 << 8);
    g.assert_spi(40).unwrap();
    g.deassert_spi(40).unwrap();
    assert_eq!(
        rd(&mut g, 0, ispendr1, 4),
        1 << 8,
        "software pending outlives the line"
    );
    wr(&mut g, 0, D + GICD_ICPENDR + 4, 4, 1 << 8);
    assert_eq!(rd(&mut g, 0, ispendr1, 4), 0);
    // Edge: a held line is one edge.
    g.assert_spi(41).unwrap();
    wr(&mut g, 0, D + GICD_ICPENDR + 4, 4, 1 << 9);
    g.assert_spi(41).unwrap();
    assert_eq!(rd(&mut g, 0, ispendr1, 4), 0);
    // Out of range lines are refused.
    for bad in [0, 15, 16, 31, NR_IRQS, 1020, u32::MAX] {
        assert_eq!(g.assert_spi(bad), Err(Errno::EINVAL), "{bad}");
        assert_eq!(g.deassert_spi(bad), Err(Errno::EINVAL), "{bad}");
    }
    assert!(g.assert_spi(NR_IRQS - 1).is_ok());
}

#[test]
fn gicd_ipriorityr() {
    let mut g = vgic(1);
    let p = D + GICD_IPRIORITYR;
    // Byte writes, 5 implemented bits.
    wr(&mut g, 0, p + 32, 1, 0xff);
    wr(&mut g, 0, p + 33, 1, 0x47);
    assert_eq!(rd(&mut g, 0, p + 32, 1), 0xf8);
    assert_eq!(rd(&mut g, 0, p + 33, 1), 0x40);
    assert_eq!(rd(&mut g, 0, p + 32, 4), 0x40f8);
    // Word write covers four interrupts.
    wr(&mut g, 0, p + 36, 4, 0x1020_3040);
    for (i, want) in [0x40, 0x30, 0x20, 0x10].iter().enumerate() {
        assert_eq!(rd(&mut g, 0, p + 36 + i as u64, 1), *want);
    }
    // The last implemented INTID, and past it.
    wr(&mut g, 0, p + u64::from(NR_IRQS) - 1, 1, 0x80);
    assert_eq!(rd(&mut g, 0, p + u64::from(NR_IRQS) - 4, 4), 0x8000_0000);
    wr(&mut g, 0, p + u64::from(NR_IRQS), 4, 0xffff_ffff);
    assert_eq!(rd(&mut g, 0, p + u64::from(NR_IRQS), 4), 0);
    // SGIs/PPIs in the distributor: RAZ/WI.
    wr(&mut g, 0, p, 4, 0xffff_ffff);
    wr(&mut g, 0, p + 27, 1, 0xff);
    assert_eq!(rd(&mut g, 0, p, 4), 0);
    assert_eq!(rd(&mut g, 0, p + 27, 1), 0);
    assert_eq!(rd(&mut g, 0, sgi_base(0) + GICR_IPRIORITYR0 + 24, 4), 0);
    // Halfword, doubleword and unaligned word accesses: RAZ/WI.
    wr(&mut g, 0, p + 40, 2, 0xffff);
    wr(&mut g, 0, p + 40, 8, u64::MAX);
    wr(&mut g, 0, p + 41, 4, 0xffff_ffff);
    assert_eq!(rd(&mut g, 0, p + 40, 4), 0);
    assert_eq!(rd(&mut g, 0, p + 36, 2), 0);
    assert_eq!(rd(&mut g, 0, p + 37, 4), 0);
}

#[test]
fn gicd_icfgr_igrpmodr_itargetsr() {
    let mut g = vgic(1);
    // ICFGR2 (INTIDs 32..47): the edge bit (2n + 1) is writable, bit 2n is RES0.
    wr(&mut g, 0, D + GICD_ICFGR + 8, 4, 0xffff_ffff);
    assert_eq!(rd(&mut g, 0, D + GICD_ICFGR + 8, 4), 0xaaaa_aaaa);
    wr(&mut g, 0, D + GICD_ICFGR + 8, 4, 0x8);
    assert_eq!(rd(&mut g, 0, D + GICD_ICFGR + 8, 4), 0x8);
    // ICFGR0/1 (SGIs, PPIs) belong to the redistributor.
    assert_eq!(rd(&mut g, 0, D + GICD_ICFGR, 4), 0);
    wr(&mut g, 0, D + GICD_ICFGR + 4, 4, 0xffff_ffff);
    assert_eq!(rd(&mut g, 0, D + GICD_ICFGR + 4, 4), 0);
    assert_eq!(
        rd(&mut g, 0, sgi_base(0) + GICR_ICFGR1, 4),
        0,
        "PPIs still level"
    );
    // The last ICFGR (INTIDs 112..127) and one past it.
    wr(&mut g, 0, D + GICD_ICFGR + 28, 4, 0xaaaa_aaaa);
    assert_eq!(rd(&mut g, 0, D + GICD_ICFGR + 28, 4), 0xaaaa_aaaa);
    wr(&mut g, 0, D + GICD_ICFGR + 32, 4, 0xaaaa_aaaa);
    assert_eq!(rd(&mut g, 0, D + GICD_ICFGR + 32, 4), 0);
    assert_eq!(rd(&mut g, 0, D + GICD_ICFGR + 8, 1), 0, "byte: RAZ");
    // IGRPMODR and ITARGETSR: RAZ/WI (DS = 1, ARE = 1).
    wr(&mut g, 0, D + GICD_IGRPMODR + 4, 4, 0xffff_ffff);
    assert_eq!(rd(&mut g, 0, D + GICD_IGRPMODR + 4, 4), 0);
    wr(&mut g, 0, D + GICD_ITARGETSR + 32, 4, 0x0101_0101);
    wr(&mut g, 0, D + GICD_ITARGETSR + 33, 1, 0x1);
    assert_eq!(rd(&mut g, 0, D + GICD_ITARGETSR + 32, 4), 0);
    // GICD_SGIR: no SGI from the distributor with ARE.
    linux_like(&mut g);
    let k = wr(&mut g, 0, D + 0xf00, 4, 0x0001_0001);
    assert!(k.is_empty());
    assert!(!g.has_pending(0));
}

#[test]
fn gicd_irouter() {
    let mut g = vgic(4);
    let r = |intid: u64| D + GICD_IROUTER + 8 * intid;
    assert_eq!(rd(&mut g, 0, r(40), 8), 0, "reset: Aff 0.0.0.0");
    // 64-bit: Aff3 [39:32], IRM [31], Aff2..0; other bits RES0.
    wr(&mut g, 0, r(40), 8, u64::MAX);
    assert_eq!(rd(&mut g, 0, r(40), 8), 0xff_80ff_ffff);
    // 32-bit halves.
    wr(&mut g, 0, r(40), 4, 0x0000_0002);
    assert_eq!(rd(&mut g, 0, r(40), 8), 0xff_0000_0002);
    assert_eq!(rd(&mut g, 0, r(40) + 4, 4), 0xff);
    wr(&mut g, 0, r(40) + 4, 4, 0);
    assert_eq!(rd(&mut g, 0, r(40), 8), 2);
    assert_eq!(rd(&mut g, 0, r(40), 4), 2);
    // Bad widths and alignments: RAZ/WI.
    wr(&mut g, 0, r(40), 1, 3);
    wr(&mut g, 0, r(40) + 2, 4, 3);
    wr(&mut g, 0, r(40) + 4, 8, 3);
    assert_eq!(rd(&mut g, 0, r(40), 8), 2);
    assert_eq!(rd(&mut g, 0, r(40), 2), 0);
    // IROUTER<n> for SGIs/PPIs is reserved, and past the last SPI nothing exists.
    wr(&mut g, 0, r(31), 8, 1);
    wr(&mut g, 0, r(u64::from(NR_IRQS)), 8, 1);
    assert_eq!(rd(&mut g, 0, r(31), 8), 0);
    assert_eq!(rd(&mut g, 0, r(u64::from(NR_IRQS)), 8), 0);
    wr(&mut g, 0, r(u64::from(NR_IRQS) - 1), 8, 3);
    assert_eq!(rd(&mut g, 0, r(u64::from(NR_IRQS) - 1), 8), 3);
}

#[test]
fn spis_go_where_irouter_says() {
    let mut g = vgic(4);
    linux_like(&mut g);
    let r = |intid: u64| D + GICD_IROUTER + 8 * intid;
    enable_spi(&mut g, 48);
    wr(&mut g, 0, r(48), 8, vmm_platform::vcpu_mpidr(2) & AFF_MASK);
    let k = g.assert_spi(48).unwrap();
    assert_eq!(k, Kicks(1 << 2), "vCPU 2 must look");
    assert!(g.has_pending(2));
    assert!(!g.has_pending(0) && !g.has_pending(1) && !g.has_pending(3));
    let mut regs = VgicCpuRegs::default();
    g.flush(0, &mut regs);
    assert_eq!(regs.ich_lr_el2[0], 0, "not vCPU 0's");
    g.flush(2, &mut regs);
    assert_eq!(lr_intid(regs.ich_lr_el2[0]), 48);
    g.sync(2, &regs);
    // A route to an affinity no vCPU has: not forwarded anywhere.
    g.deassert_spi(48).unwrap();
    wr(&mut g, 0, r(48), 8, 0x7f);
    assert!(g.assert_spi(48).unwrap().is_empty());
    assert!((0..4).all(|c| !g.has_pending(c)));
    // IRM = 1 (any PE): the first vCPU whose redistributor is awake.
    let k = wr(&mut g, 0, r(48), 8, IROUTER_IRM);
    assert_eq!(k, Kicks(1), "vCPU 0 is awake");
    wr(&mut g, 0, rd_base(0) + GICR_WAKER, 4, WAKER_PS);
    assert!(
        g.has_pending(1) && !g.has_pending(0),
        "vCPU 0 went to sleep: vCPU 1 takes it"
    );
    // Re-routing with the interrupt pending kicks the new target.
    let k = wr(&mut g, 0, r(48), 8, vmm_platform::vcpu_mpidr(3) & AFF_MASK);
    assert_eq!(k, Kicks(1 << 3));
}

#[test]
fn setspi_clrspi_and_msi() {
    let mut g = vgic(2);
    linux_like(&mut g);
    enable_spi(&mut g, 100);
    let k = wr(&mut g, 1, D + GICD_SETSPI_NSR, 4, 100);
    assert_eq!(k, Kicks(1), "routed to vCPU 0 by the reset IROUTER");
    assert_eq!(rd(&mut g, 0, D + GICD_ISPENDR + 12, 4), 1 << 4);
    assert_eq!(rd(&mut g, 0, D + GICD_SETSPI_NSR, 4), 0, "write-only: RAZ");
    wr(&mut g, 0, D + GICD_CLRSPI_NSR, 4, 100);
    assert_eq!(rd(&mut g, 0, D + GICD_ISPENDR + 12, 4), 0);
    // Non-SPI INTIDs and bad widths are ignored.
    for v in [0, 27, u64::from(NR_IRQS), 1023, 0xffff_ffff] {
        assert!(wr(&mut g, 0, D + GICD_SETSPI_NSR, 4, v).is_empty());
    }
    wr(&mut g, 0, D + GICD_SETSPI_NSR, 8, 100);
    wr(&mut g, 0, D + GICD_SETSPI_NSR, 2, 100);
    assert_eq!(rd(&mut g, 0, D + GICD_ISPENDR + 12, 4), 0);
    // VM_RAISE_MSI to the doorbell.
    assert_eq!(g.raise_msi(D + GICD_SETSPI_NSR, 100), Ok(Kicks(1)));
    assert_eq!(rd(&mut g, 0, D + GICD_ISPENDR + 12, 4), 1 << 4);
    assert_eq!(g.raise_msi(D + GICD_CLRSPI_NSR, 100), Err(Errno::EINVAL));
    assert_eq!(g.raise_msi(D + GICD_SETSPI_NSR, 20), Err(Errno::EINVAL));
    assert_eq!(
        g.raise_msi(D + GICD_SETSPI_NSR, u64::MAX),
        Err(Errno::EINVAL)
    );
}

// --- Redistributors ---------------------------------------------------------------------

#[test]
fn gicr_typer_affinity_and_last() {
    let mut g = vgic(3);
    for n in 0..3u64 {
        let t = rd(&mut g, 0, rd_base(n) + GICR_TYPER, 8);
        assert_eq!(t >> 32, n, "Affinity_Value = Aff0 {n}");
        assert_eq!((t >> 8) & 0xffff, n, "Processor_Number");
        assert_eq!(t & TYPER_LAST != 0, n == 2, "Last only on the final one");
        assert_eq!(t & 1, 0, "no PLPIS");
        // 32-bit halves.
        assert_eq!(rd(&mut g, 0, rd_base(n) + GICR_TYPER, 4), t & 0xffff_ffff);
        assert_eq!(rd(&mut g, 0, rd_base(n) + GICR_TYPER + 4, 4), t >> 32);
        // Read-only.
        wr(&mut g, 0, rd_base(n) + GICR_TYPER, 8, 0);
        assert_eq!(rd(&mut g, 0, rd_base(n) + GICR_TYPER, 8), t);
        assert_eq!(rd(&mut g, 0, rd_base(n) + GICR_TYPER, 2), 0);
    }
    // Aff1..Aff3 land in Affinity_Value's upper bytes.
    let mut h = Vgic::new(&[0x0000_00aa_80bb_ccdd, 0x8000_0000], D, R, 3).unwrap();
    assert_eq!(rd(&mut h, 0, rd_base(0) + GICR_TYPER, 8) >> 32, 0xaabb_ccdd);
    let mut one = vgic(1);
    assert_ne!(rd(&mut one, 0, rd_base(0) + GICR_TYPER, 8) & TYPER_LAST, 0);
    // Linux finds its redistributor by walking frames until Last: one per vCPU.
    let mut frames = 0;
    loop {
        let t = rd(&mut g, 0, rd_base(frames) + GICR_TYPER, 8);
        frames += 1;
        if t & TYPER_LAST != 0 {
            break;
        }
    }
    assert_eq!(frames, 3);
}

#[test]
fn gicr_waker_handshake() {
    let mut g = vgic(2);
    let waker = rd_base(1) + GICR_WAKER;
    // Reset: asleep, children asleep.
    assert_eq!(rd(&mut g, 1, waker, 4), WAKER_PS | WAKER_CA);
    // Linux gic_enable_redist(): clear ProcessorSleep, poll until ChildrenAsleep is 0.
    let v = rd(&mut g, 1, waker, 4);
    wr(&mut g, 1, waker, 4, v & !WAKER_PS);
    let mut polls = 0;
    while rd(&mut g, 1, waker, 4) & WAKER_CA != 0 {
        polls += 1;
        assert!(polls < 10, "ChildrenAsleep never cleared");
    }
    assert_eq!(rd(&mut g, 1, waker, 4), 0);
    assert_eq!(
        rd(&mut g, 0, rd_base(0) + GICR_WAKER, 4),
        WAKER_PS | WAKER_CA,
        "per redistributor"
    );
    // And back to sleep (gic_enable_redist(false) on CPU offline).
    wr(&mut g, 1, waker, 4, WAKER_PS);
    assert_eq!(rd(&mut g, 1, waker, 4), WAKER_PS | WAKER_CA);
    // ChildrenAsleep is read-only; bad widths are RAZ/WI.
    wr(&mut g, 1, waker, 4, WAKER_CA);
    assert_eq!(rd(&mut g, 1, waker, 4), 0);
    wr(&mut g, 1, waker, 1, WAKER_PS);
    assert_eq!(rd(&mut g, 1, waker, 4), 0);
    assert_eq!(rd(&mut g, 1, waker, 8), 0);
}

#[test]
fn gicr_misc_registers() {
    let mut g = vgic(1);
    assert_eq!(rd(&mut g, 0, rd_base(0) + GICR_CTLR, 4), 0);
    wr(&mut g, 0, rd_base(0) + GICR_CTLR, 4, 1);
    assert_eq!(
        rd(&mut g, 0, rd_base(0) + GICR_CTLR, 4),
        0,
        "EnableLPIs RAZ/WI: no LPIs"
    );
    assert_eq!(rd(&mut g, 0, rd_base(0) + GICR_IIDR, 4), u64::from(IIDR));
    assert_eq!(rd(&mut g, 0, rd_base(0) + GICR_PIDR2, 4) & 0xf0, 0x30);
    // PROPBASER/PENDBASER: RAZ/WI.
    wr(&mut g, 0, rd_base(0) + 0x70, 8, u64::MAX);
    assert_eq!(rd(&mut g, 0, rd_base(0) + 0x70, 8), 0);
    assert_eq!(rd(&mut g, 0, rd_base(0) + 0x78, 8), 0);
    // SGI frame's PIDR2 is not the RD frame's: RAZ.
    assert_eq!(rd(&mut g, 0, sgi_base(0) + GICR_PIDR2, 4), 0);
}

#[test]
fn gicr_sgi_frame_registers() {
    let mut g = vgic(2);
    let s = sgi_base(1);
    for (set, clr) in [
        (GICD_ISENABLER, GICD_ICENABLER),
        (GICD_ISPENDR, GICD_ICPENDR),
        (GICD_ISACTIVER, GICD_ICACTIVER),
    ] {
        wr(&mut g, 1, s + set, 4, 0x0801_0003);
        assert_eq!(rd(&mut g, 1, s + set, 4), 0x0801_0003, "{set:#x}");
        assert_eq!(rd(&mut g, 1, s + clr, 4), 0x0801_0003);
        wr(&mut g, 1, s + clr, 4, 0x0000_0001);
        assert_eq!(rd(&mut g, 1, s + set, 4), 0x0801_0002);
        // Only register 0 exists in the SGI frame.
        wr(&mut g, 1, s + set + 4, 4, 0xffff_ffff);
        assert_eq!(rd(&mut g, 1, s + set + 4, 4), 0);
        // vCPU 0's copy is separate; and the accessing vCPU does not matter, the
        // frame does.
        assert_eq!(rd(&mut g, 1, sgi_base(0) + set, 4), 0);
        assert_eq!(rd(&mut g, 0, s + set, 4), 0x0801_0002);
    }
    wr(&mut g, 1, s + GICD_IGROUPR, 4, 0xffff_0000);
    assert_eq!(rd(&mut g, 1, s + GICD_IGROUPR, 4), 0xffff_0000);
    // IPRIORITYR0..7: byte and word.
    wr(&mut g, 1, s + GICR_IPRIORITYR0 + 27, 1, 0xa7);
    assert_eq!(rd(&mut g, 1, s + GICR_IPRIORITYR0 + 24, 4), 0xa0 << 24);
    wr(&mut g, 1, s + GICR_IPRIORITYR0 + 28, 4, 0x1122_3344);
    assert_eq!(rd(&mut g, 1, s + GICR_IPRIORITYR0 + 28, 4), 0x1020_3040);
    assert_eq!(
        rd(&mut g, 1, s + GICR_IPRIORITYR0 + 32, 4),
        0,
        "IPRIORITYR8: nothing"
    );
    // ICFGR0: SGIs are edge, read-only. ICFGR1: PPIs' edge bits writable.
    assert_eq!(rd(&mut g, 1, s + GICR_ICFGR0, 4), 0xaaaa_aaaa);
    wr(&mut g, 1, s + GICR_ICFGR0, 4, 0);
    assert_eq!(rd(&mut g, 1, s + GICR_ICFGR0, 4), 0xaaaa_aaaa);
    wr(&mut g, 1, s + GICR_ICFGR1, 4, 0xffff_ffff);
    assert_eq!(rd(&mut g, 1, s + GICR_ICFGR1, 4), 0xaaaa_aaaa);
    wr(&mut g, 1, s + GICR_ICFGR1, 4, 0);
    assert_eq!(rd(&mut g, 1, s + GICR_ICFGR1, 4), 0);
    // IGRPMODR0 and NSACR: RAZ/WI (DS = 1).
    wr(&mut g, 1, s + GICD_IGRPMODR, 4, 0xffff_ffff);
    assert_eq!(rd(&mut g, 1, s + GICD_IGRPMODR, 4), 0);
    wr(&mut g, 1, s + 0xe00, 4, 0xffff_ffff);
    assert_eq!(rd(&mut g, 1, s + 0xe00, 4), 0);
}

// --- Injection and list registers ------------------------------------------------------------

/// The CPU interface registers as the world switch saves them for a guest that set
/// PMR 0xf0 and enabled both groups.
fn regs() -> VgicCpuRegs {
    VgicCpuRegs {
        ich_vmcr_el2: vmcr(0xf0),
        ..Default::default()
    }
}

/// Simulates the guest acknowledging the interrupt in list register `n` (pending ->
/// active) as ICC_IAR1_EL1 does.
fn guest_ack(regs: &mut VgicCpuRegs, n: usize) {
    let lr = &mut regs.ich_lr_el2[n];
    assert_eq!(
        *lr & LR_PENDING,
        LR_PENDING,
        "acknowledging a pending interrupt"
    );
    *lr = (*lr & !LR_PENDING) | LR_ACTIVE;
}

/// Simulates the guest's EOI (EOImode 0: priority drop and deactivate).
fn guest_eoi(regs: &mut VgicCpuRegs, n: usize) {
    let lr = &mut regs.ich_lr_el2[n];
    assert_eq!(*lr & LR_ACTIVE, LR_ACTIVE);
    *lr &= !LR_ACTIVE;
}

#[test]
fn flush_orders_by_priority_and_overflows() {
    let mut g = vgic(1);
    linux_like(&mut g);
    // Six pending SPIs with distinct priorities, four list registers.
    let prios = [
        (40u32, 0x80u8),
        (41, 0x20),
        (42, 0x60),
        (43, 0x20),
        (44, 0xe0),
        (45, 0x40),
    ];
    for (intid, prio) in prios {
        wr(
            &mut g,
            0,
            D + GICD_IPRIORITYR + u64::from(intid),
            1,
            u64::from(prio),
        );
        wr(&mut g, 0, D + GICD_ICFGR + 8, 4, 0xaaaa_aaaa); // edge
        enable_spi(&mut g, intid);
        g.assert_spi(intid).unwrap();
    }
    let mut regs = regs();
    g.flush(0, &mut regs);
    let got: Vec<(u32, u8)> = regs.ich_lr_el2[..4]
        .iter()
        .map(|&l| (lr_intid(l), lr_prio(l)))
        .collect();
    assert_eq!(
        got,
        [(41, 0x20), (43, 0x20), (45, 0x40), (42, 0x60)],
        "priority, then INTID"
    );
    for lr in &regs.ich_lr_el2[..4] {
        assert_eq!(lr_state(*lr), 1, "pending");
        assert_ne!(lr & LR_GROUP1, 0, "group 1");
        assert_eq!(lr & LR_HW, 0, "HW = 0");
        assert_ne!(lr & LR_EOI, 0, "overflow: EOI maintenance on every entry");
    }
    assert!(
        regs.ich_lr_el2[4..].iter().all(|&l| l == 0),
        "beyond ListRegs: empty"
    );
    assert_eq!(
        regs.lr_used, 4,
        "the switch loads and saves the four filled"
    );
    assert_eq!(regs.ich_hcr_el2, HCR_EN | HCR_UIE | HCR_NPIE);

    // The guest takes two, EOIs them; the maintenance exit refills.
    guest_ack(&mut regs, 0);
    guest_ack(&mut regs, 1);
    guest_eoi(&mut regs, 0);
    guest_eoi(&mut regs, 1);
    let k = g.sync(0, &regs);
    assert!(k.contains(0) || k.is_empty());
    g.flush(0, &mut regs);
    let got: Vec<u32> = regs.ich_lr_el2[..4].iter().map(|&l| lr_intid(l)).collect();
    assert_eq!(got, [45, 42, 40, 44]);
    assert_eq!(
        regs.ich_hcr_el2, HCR_EN,
        "everything fits: no underflow interrupts"
    );
    assert!(
        regs.ich_lr_el2[..4].iter().all(|&l| l & LR_EOI == 0),
        "edge, no overflow: no EOI bit"
    );
}

#[test]
fn active_interrupts_keep_their_list_registers() {
    let mut g = vgic(1);
    linux_like(&mut g);
    wr(&mut g, 0, D + GICD_ICFGR + 8, 4, 0xaaaa_aaaa);
    for intid in 32..38 {
        enable_spi(&mut g, intid);
    }
    // A low-priority interrupt the guest is in the middle of handling...
    wr(&mut g, 0, D + GICD_IPRIORITYR + 37, 1, 0xe0);
    g.assert_spi(37).unwrap();
    let mut regs = regs();
    g.flush(0, &mut regs);
    guest_ack(&mut regs, 0);
    g.sync(0, &regs);
    // ...then five higher-priority ones arrive: the active one still gets a slot.
    for intid in 32..37 {
        wr(&mut g, 0, D + GICD_IPRIORITYR + u64::from(intid), 1, 0x10);
        g.assert_spi(intid).unwrap();
    }
    g.flush(0, &mut regs);
    assert_eq!(lr_intid(regs.ich_lr_el2[0]), 37);
    assert_eq!(lr_state(regs.ich_lr_el2[0]), 2, "active");
    let rest: Vec<u32> = regs.ich_lr_el2[1..4].iter().map(|&l| lr_intid(l)).collect();
    assert_eq!(rest, [32, 33, 34]);
    assert_eq!(regs.ich_hcr_el2, HCR_EN | HCR_UIE | HCR_NPIE);
}

#[test]
fn one_list_register_never_sets_uie() {
    // With a single list register UIE would fire at once on every entry.
    let mut g = Vgic::new(&mpidrs(1), D, R, 0).unwrap();
    linux_like(&mut g);
    enable_spi(&mut g, 40);
    enable_spi(&mut g, 41);
    g.assert_spi(40).unwrap();
    g.assert_spi(41).unwrap();
    let mut regs = regs();
    g.flush(0, &mut regs);
    assert_eq!(lr_intid(regs.ich_lr_el2[0]), 40);
    assert_eq!(regs.ich_lr_el2[1], 0);
    assert_eq!(regs.ich_hcr_el2, HCR_EN | HCR_NPIE);
    // Once acknowledged (and the line low), nothing is pending in the LRs: no NPIE
    // either, but the EOI bit brings the guest back when it is done.
    guest_ack(&mut regs, 0);
    g.deassert_spi(40).unwrap();
    g.sync(0, &regs);
    g.flush(0, &mut regs);
    assert_eq!(lr_state(regs.ich_lr_el2[0]), 2);
    assert_ne!(regs.ich_lr_el2[0] & LR_EOI, 0);
    assert_eq!(regs.ich_hcr_el2, HCR_EN);
}

#[test]
fn level_interrupt_eoi_with_line_high_repends() {
    let mut g = vgic(1);
    linux_like(&mut g);
    enable_spi(&mut g, 32); // the PL011, level-sensitive
    let k = g.assert_spi(32).unwrap();
    assert_eq!(k, Kicks(1));
    let mut regs = regs();
    g.flush(0, &mut regs);
    let lr = regs.ich_lr_el2[0];
    assert_eq!((lr_intid(lr), lr_state(lr)), (32, 1));
    assert_ne!(
        lr & LR_EOI,
        0,
        "level: EOI maintenance so the line is looked at again"
    );
    assert_eq!(lr_prio(lr), 0xa0);
    assert_eq!(regs.ich_hcr_el2, HCR_EN);
    // Acknowledged: active, and (line still high) pending again.
    guest_ack(&mut regs, 0);
    g.sync(0, &regs);
    assert!(g.has_pending(0));
    g.flush(0, &mut regs);
    assert_eq!(lr_state(regs.ich_lr_el2[0]), 3, "pending and active");
    // The guest EOIs without quieting the device: pending again, not active.
    regs.ich_lr_el2[0] &= !LR_ACTIVE;
    regs.ich_lr_el2[0] &= !LR_PENDING; // as if taken and EOId twice; the line decides
    g.sync(0, &regs);
    g.flush(0, &mut regs);
    assert_eq!(
        (lr_intid(regs.ich_lr_el2[0]), lr_state(regs.ich_lr_el2[0])),
        (32, 1)
    );
    // Now the device is quieted (VM_DEASSERT_IRQ) before the guest EOIs.
    guest_ack(&mut regs, 0);
    g.sync(0, &regs);
    g.deassert_spi(32).unwrap();
    g.flush(0, &mut regs);
    assert_eq!(lr_state(regs.ich_lr_el2[0]), 2, "active only");
    guest_eoi(&mut regs, 0);
    g.sync(0, &regs);
    assert!(!g.has_pending(0));
    g.flush(0, &mut regs);
    assert_eq!(regs.ich_lr_el2[0], 0, "nothing left");
    assert_eq!(rd(&mut g, 0, D + GICD_ISACTIVER + 4, 4), 0);
}

#[test]
fn level_software_pending_ends_with_the_acknowledge() {
    let mut g = vgic(1);
    linux_like(&mut g);
    enable_spi(&mut g, 33);
    wr(&mut g, 0, D + GICD_ISPENDR + 4, 4, 1 << 1);
    let mut regs = regs();
    g.flush(0, &mut regs);
    assert_eq!(lr_state(regs.ich_lr_el2[0]), 1);
    guest_ack(&mut regs, 0);
    g.sync(0, &regs);
    assert!(!g.has_pending(0), "line low, latch consumed");
    assert_eq!(
        rd(&mut g, 0, D + GICD_ISACTIVER + 4, 4),
        1 << 1,
        "active shows in ISACTIVER"
    );
}

#[test]
fn edge_latch_moves_into_the_list_register() {
    let mut g = vgic(1);
    linux_like(&mut g);
    wr(&mut g, 0, D + GICD_ICFGR + 12, 4, 0xaaaa_aaaa); // 48..63 edge
    enable_spi(&mut g, 50);
    g.assert_spi(50).unwrap();
    g.deassert_spi(50).unwrap();
    let mut regs = regs();
    g.flush(0, &mut regs);
    assert_eq!(lr_state(regs.ich_lr_el2[0]), 1);
    assert_eq!(regs.ich_lr_el2[0] & LR_EOI, 0, "edge: no EOI maintenance");
    // While the guest runs (the LR holds it), another edge arrives.
    let k = g.assert_spi(50).unwrap();
    assert_eq!(k, Kicks(1));
    guest_ack(&mut regs, 0);
    g.sync(0, &regs);
    g.flush(0, &mut regs);
    assert_eq!(
        lr_state(regs.ich_lr_el2[0]),
        3,
        "the second edge is pending behind the first"
    );
    // The guest exits before taking anything: pending stays pending (latched back).
    g.deassert_spi(50).unwrap();
    regs.ich_lr_el2[0] &= !LR_ACTIVE; // EOI of the first
    g.sync(0, &regs);
    assert_eq!(rd(&mut g, 0, D + GICD_ISPENDR + 4, 4), 1 << 18);
    g.flush(0, &mut regs);
    guest_ack(&mut regs, 0);
    guest_eoi(&mut regs, 0);
    g.sync(0, &regs);
    g.flush(0, &mut regs);
    assert_eq!(regs.ich_lr_el2[0], 0);
    assert!(!g.has_pending(0));
}

#[test]
fn disabled_or_group_off_interrupts_stay_out() {
    let mut g = vgic(1);
    linux_like(&mut g);
    g.assert_spi(40).unwrap();
    let mut regs = regs();
    g.flush(0, &mut regs);
    assert_eq!(regs.ich_lr_el2[0], 0, "not enabled");
    assert!(!g.has_pending(0));
    let k = enable_spi(&mut g, 40);
    assert_eq!(k, Kicks(1), "enabling a pending interrupt kicks its vCPU");
    wr(&mut g, 0, D + GICD_CTLR, 4, 0);
    g.flush(0, &mut regs);
    assert_eq!(regs.ich_lr_el2[0], 0, "distributor group 1 off");
    let k = wr(&mut g, 0, D + GICD_CTLR, 4, u64::from(CTLR_ENABLE_G1));
    assert_eq!(k, Kicks(1));
    // Group 0 interrupts need EnableGrp0, and show as group 0 in the LR.
    wr(&mut g, 0, D + GICD_IGROUPR + 4, 4, 0);
    g.flush(0, &mut regs);
    assert_eq!(regs.ich_lr_el2[0], 0);
    wr(&mut g, 0, D + GICD_CTLR, 4, u64::from(CTLR_ENABLE_G0));
    g.flush(0, &mut regs);
    assert_eq!(lr_intid(regs.ich_lr_el2[0]), 40);
    assert_eq!(regs.ich_lr_el2[0] & LR_GROUP1, 0);
}

#[test]
fn has_pending_follows_the_cpu_interface() {
    let mut g = vgic(1);
    linux_like(&mut g);
    enable_spi(&mut g, 40);
    g.assert_spi(40).unwrap(); // priority 0xa0
    assert!(g.has_pending(0));
    let sync_vmcr = |g: &mut Vgic, v: u64| {
        g.sync(
            0,
            &VgicCpuRegs {
                ich_vmcr_el2: v,
                ..Default::default()
            },
        );
    };
    sync_vmcr(&mut g, vmcr(0xa0));
    assert!(
        !g.has_pending(0),
        "PMR masks priority 0xa0 (must be strictly higher)"
    );
    sync_vmcr(&mut g, vmcr(0xa8));
    assert!(g.has_pending(0));
    sync_vmcr(&mut g, (0xf0 << 24) | 1);
    assert!(!g.has_pending(0), "guest's group 1 off (VENG1)");
    sync_vmcr(&mut g, 0);
    assert!(!g.has_pending(0), "reset VMCR: PMR 0 masks everything");
    assert!(!g.has_pending(5), "no such vCPU");
}

#[test]
fn ppis_are_per_vcpu() {
    let mut g = vgic(2);
    linux_like(&mut g);
    wr(&mut g, 1, sgi_base(1) + GICD_ISENABLER, 4, 1 << 27);
    assert_eq!(g.set_ppi_level(1, 27, true), Ok(Kicks(1 << 1)));
    assert!(g.has_pending(1) && !g.has_pending(0));
    assert_eq!(rd(&mut g, 0, sgi_base(1) + GICD_ISPENDR, 4), 1 << 27);
    assert_eq!(rd(&mut g, 0, sgi_base(0) + GICD_ISPENDR, 4), 0);
    // Not enabled on vCPU 0: pending but no kick.
    assert_eq!(g.set_ppi_level(0, 27, true), Ok(Kicks(0)));
    assert_eq!(rd(&mut g, 0, sgi_base(0) + GICD_ISPENDR, 4), 1 << 27);
    assert_eq!(g.set_ppi_level(1, 27, false), Ok(Kicks(0)));
    assert!(!g.has_pending(1));
    for bad in [0, 15, 32, 100] {
        assert_eq!(g.set_ppi_level(0, bad, true), Err(Errno::EINVAL));
    }
    assert_eq!(g.set_ppi_level(2, 27, true), Err(Errno::EINVAL));
}

#[test]
fn sgi_targeting() {
    let mut g = vgic(4);
    linux_like(&mut g);
    for c in 0..4 {
        wr(&mut g, c as usize, sgi_base(c) + GICD_ISENABLER, 4, 0xffff);
    }
    let pend = |g: &mut Vgic, c: u64| rd(g, 0, sgi_base(c) + GICD_ISPENDR, 4);
    // TargetList bits 1 and 3, INTID 5.
    let k = g.sgi1r_write(0, (5 << 24) | 0b1010);
    assert_eq!(k, Kicks(0b1010));
    assert_eq!(pend(&mut g, 1), 1 << 5);
    assert_eq!(pend(&mut g, 3), 1 << 5);
    assert_eq!(pend(&mut g, 0) | pend(&mut g, 2), 0);
    // IRM = 1: everyone but the sender.
    let k = g.sgi1r_write(2, (1 << 40) | (7 << 24) | 0b1);
    assert_eq!(k, Kicks(0b1011));
    assert_eq!(pend(&mut g, 2) & (1 << 7), 0);
    assert_eq!(pend(&mut g, 0), 1 << 7);
    // Self-targeted.
    assert_eq!(g.sgi1r_write(2, (3 << 24) | 0b100), Kicks(0b100));
    // Aff1 = 1 or RS = 1 names PEs these vCPUs are not (Aff0 16..31, Aff1 1).
    assert!(g.sgi1r_write(0, (1 << 16) | (9 << 24) | 0xffff).is_empty());
    assert!(g.sgi1r_write(0, (1 << 44) | (9 << 24) | 0xffff).is_empty());
    assert!(
        g.sgi1r_write(0, (1 << 32) | (9 << 24) | 0xffff).is_empty(),
        "Aff2"
    );
    assert!(
        g.sgi1r_write(0, (1 << 48) | (9 << 24) | 0xffff).is_empty(),
        "Aff3"
    );
    assert_eq!((0..4).map(|c| pend(&mut g, c) & (1 << 9)).sum::<u64>(), 0);
    // Groups (DS = 1): SGI0R and ASGI1R only pend group 0 SGIs; SGI1R pends either.
    wr(&mut g, 1, sgi_base(1) + GICD_IGROUPR, 4, 0xffff_fffe);
    assert!(g.sgi0r_write(0, (4 << 24) | 0b10).is_empty());
    assert_eq!(
        g.sysreg_write(0, sysreg::ICC_ASGI1R_EL1, (4 << 24) | 0b10),
        Some(Kicks(0))
    );
    assert_eq!(
        pend(&mut g, 1) & (1 << 4),
        0,
        "group 1 SGI 4 untouched by group 0 requests"
    );
    assert_eq!(g.sgi0r_write(0, 0b10), Kicks(0b10));
    assert_eq!(pend(&mut g, 1) & 1, 1);
    wr(&mut g, 1, sgi_base(1) + GICD_ICPENDR, 4, 1);
    assert_eq!(
        g.sysreg_write(0, sysreg::ICC_SGI1R_EL1, 0b10),
        Some(Kicks(0b10))
    );
    assert_eq!(pend(&mut g, 1) & 1, 1, "SGI1R reaches a group 0 SGI");
    assert_eq!(
        g.sysreg_write(0, sysreg::ICC_SGI1R_EL1, (4 << 24) | 0b10),
        Some(Kicks(0b10))
    );
    assert_eq!(g.sysreg_write(0, sysreg::MIDR_EL1, 0b10), None);
    // A disabled SGI latches without a kick; an unknown sender does nothing.
    wr(&mut g, 3, sgi_base(3) + GICD_ICENABLER, 4, 1 << 11);
    assert!(g.sgi1r_write(0, (11 << 24) | 0b1000).is_empty());
    assert_eq!(pend(&mut g, 3) & (1 << 11), 1 << 11);
    assert!(g.sgi1r_write(9, (1 << 40) | (12 << 24)).is_empty());
    // Through the list registers: an SGI is edge, and shows its INTID.
    let mut regs = regs();
    g.flush(1, &mut regs);
    let ids: Vec<u32> = regs.ich_lr_el2[..4].iter().map(|&l| lr_intid(l)).collect();
    assert_eq!(ids, [0, 4, 5, 7]);
    assert!(regs.ich_lr_el2[..4]
        .iter()
        .all(|&l| lr_state(l) == 1 && l & LR_EOI == 0));
    assert_eq!(
        regs.ich_lr_el2[0] & LR_GROUP1,
        0,
        "SGI 0 is group 0 on vCPU 1 now"
    );
}

#[test]
fn sgi_to_second_cluster() {
    // 16 vCPUs: vcpu_mpidr packs 16 per cluster, so Aff0 0..15.
    let mut g = vgic(16);
    linux_like(&mut g);
    wr(&mut g, 15, sgi_base(15) + GICD_ISENABLER, 4, 0xffff);
    assert_eq!(g.sgi1r_write(0, (2 << 24) | (1 << 15)), Kicks(1 << 15));
    // A hand-made topology with Aff1 = 1: RS = 0, Aff1 = 1 reaches it.
    let mut h = Vgic::new(&[0x8000_0000, 0x8000_0100], D, R, 3).unwrap();
    linux_like(&mut h);
    wr(&mut h, 1, sgi_base(1) + GICD_ISENABLER, 4, 0xffff);
    assert_eq!(h.sgi1r_write(0, (1 << 16) | (2 << 24) | 1), Kicks(0b10));
    assert!(
        h.sgi1r_write(0, (2 << 24) | 0b10).is_empty(),
        "Aff1 0 Aff0 1: nobody"
    );
}

#[test]
fn active_spi_stays_with_its_vcpu_until_done() {
    let mut g = vgic(2);
    linux_like(&mut g);
    enable_spi(&mut g, 60);
    wr(&mut g, 0, D + GICD_ICFGR + 12, 4, 0xaaaa_aaaa); // 48..63 edge
    g.assert_spi(60).unwrap();
    let mut r0 = regs();
    g.flush(0, &mut r0);
    assert_eq!(lr_intid(r0.ich_lr_el2[0]), 60);
    guest_ack(&mut r0, 0);
    g.sync(0, &r0);
    // The guest (vCPU 0, handling it) moves it to vCPU 1, and a new edge comes.
    wr(&mut g, 0, D + GICD_IROUTER + 8 * 60, 8, 1);
    g.deassert_spi(60).unwrap();
    let k = g.assert_spi(60).unwrap();
    assert_eq!(k, Kicks(1), "still vCPU 0's while active there");
    let mut r1 = regs();
    g.flush(1, &mut r1);
    assert_eq!(
        r1.ich_lr_el2[0], 0,
        "vCPU 1 must not see it while vCPU 0 has it active"
    );
    g.flush(0, &mut r0);
    assert_eq!(lr_state(r0.ich_lr_el2[0]), 3);
    // vCPU 0 EOIs the first and exits with the second still pending in its LR:
    // it goes back to the distributor and on to vCPU 1.
    r0.ich_lr_el2[0] &= !LR_ACTIVE;
    let k = g.sync(0, &r0);
    assert_eq!(k, Kicks(1 << 1));
    g.flush(0, &mut r0);
    assert_eq!(r0.ich_lr_el2[0], 0);
    g.flush(1, &mut r1);
    assert_eq!(
        (lr_intid(r1.ich_lr_el2[0]), lr_state(r1.ich_lr_el2[0])),
        (60, 1)
    );
}

#[test]
fn reset_restores_everything() {
    let mut g = vgic(2);
    linux_like(&mut g);
    enable_spi(&mut g, 40);
    g.assert_spi(40).unwrap();
    wr(&mut g, 0, D + GICD_IROUTER + 8 * 40, 8, 1);
    g.reset();
    assert_eq!(rd(&mut g, 0, D + GICD_CTLR, 4), 0x50);
    assert_eq!(rd(&mut g, 0, D + GICD_ISENABLER + 4, 4), 0);
    assert_eq!(rd(&mut g, 0, D + GICD_ISPENDR + 4, 4), 0);
    assert_eq!(rd(&mut g, 0, D + GICD_IROUTER + 8 * 40, 8), 0);
    assert_eq!(
        rd(&mut g, 0, rd_base(1) + GICR_WAKER, 4),
        WAKER_PS | WAKER_CA
    );
    assert_eq!(rd(&mut g, 0, sgi_base(1) + GICR_ICFGR0, 4), 0xaaaa_aaaa);
    assert!(!g.has_pending(0));
}

#[test]
fn kicks_set() {
    let mut k = Kicks::default();
    assert!(k.is_empty());
    k.add(0);
    k.add(15);
    k.add(99);
    assert!(k.contains(0) && k.contains(15) && !k.contains(1) && !k.contains(99));
    assert_eq!(k.iter().collect::<Vec<_>>(), [0, 15]);
    k.merge(Kicks(0b10));
    assert_eq!(k.0, 0b1000_0000_0000_0011);
}

// --- Robustness ----------------------------------------------------------------------------

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn no_offset_size_or_value_panics() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut g = vgic(2);
    linux_like(&mut g);
    let sizes = [0u8, 1, 2, 3, 4, 5, 7, 8, 16, 255];
    let one = |g: &mut Vgic, vcpu: usize, gpa: u64, rng: &mut XorShift| {
        for &size in &sizes {
            let mut v = 0;
            assert!(g.mmio_access(vcpu, gpa, size, false, &mut v).is_some());
            for val in [0, u64::MAX, rng.next()] {
                let mut v = val;
                assert!(g.mmio_access(vcpu, gpa, size, true, &mut v).is_some());
            }
        }
    };
    // Every byte of the distributor.
    for off in 0..DIST_SIZE {
        one(&mut g, (off & 1) as usize, D + off, &mut rng);
    }
    // Every byte of the register pages of both redistributor frames of both vCPUs,
    // and a stride through the rest.
    for n in 0..2u64 {
        for frame in [0, SGI_FRAME] {
            let base = rd_base(n) + frame;
            for off in 0..0x1000 {
                one(&mut g, 0, base + off, &mut rng);
            }
            for off in (0x1000..0x1_0000).step_by(0x3c) {
                one(&mut g, 1, base + off, &mut rng);
            }
            one(&mut g, 1, base + 0xffff, &mut rng);
        }
    }
    // An out-of-range accessing vCPU.
    let mut v = 5;
    assert_eq!(g.mmio_access(7, D, 4, false, &mut v), Some(Kicks(0)));
    assert_eq!(v, 0);
    assert!(g.mmio_access(usize::MAX, R, 4, true, &mut v).is_some());
    // Injection with arbitrary numbers.
    for _ in 0..2000 {
        let x = rng.next();
        let _ = g.assert_spi(x as u32);
        let _ = g.deassert_spi((x >> 32) as u32);
        let _ = g.set_ppi_level((x >> 8) as usize % 4, (x >> 16) as u32 % 40, x & 1 != 0);
        let _ = g.raise_msi(D + GICD_SETSPI_NSR, x >> 3);
        let _ = g.sgi1r_write((x % 3) as usize, rng.next());
        let _ = g.sgi0r_write((x % 5) as usize, rng.next());
    }
    // Flush and sync with whatever the "hardware" hands back, for every LR count.
    for vtr in [0u64, 1, 3, 15, 31, u64::MAX] {
        let mut h = Vgic::new(&mpidrs(2), D, R, vtr).unwrap();
        linux_like(&mut h);
        for intid in SPI_BASE..NR_IRQS {
            let _ = h.assert_spi(intid);
        }
        for reg in 1..4u64 {
            wr(&mut h, 0, D + GICD_ISENABLER + 4 * reg, 4, 0xffff_ffff);
        }
        for round in 0..200 {
            let vcpu = round % 3; // 2 is not a vCPU
            let mut regs = regs();
            h.flush(vcpu, &mut regs);
            for lr in regs.ich_lr_el2.iter_mut() {
                if rng.next() & 1 == 0 {
                    *lr = rng.next();
                }
            }
            regs.ich_vmcr_el2 = rng.next();
            let _ = h.sync(vcpu, &regs);
            let _ = h.has_pending(vcpu);
        }
    }
}

/// The flush fast path (skip the scan while nothing changed since an idle flush) must
/// give exactly what a full scan gives, whatever happens in between: random guest
/// register writes, injections, SGIs and guest acknowledges/EOIs, each followed by a
/// flush compared with one on a clone that forgot it was idle.
#[test]
fn idle_fast_path_matches_a_full_scan() {
    let mut rng = XorShift(0x1234_5678_9abc_def1);
    let mut g = vgic(3);
    linux_like(&mut g);
    let mut regs: Vec<VgicCpuRegs> = (0..3).map(|_| regs()).collect();
    let mut fast_hits = 0;
    for _ in 0..20_000 {
        let x = rng.next();
        let vcpu = (x % 3) as usize;
        // Mostly runs (exits and entries), as in life.
        match (x >> 8) % 40 {
            0 => {
                let _ = g.assert_spi(32 + ((x >> 16) % 96) as u32);
            }
            1 => {
                let _ = g.deassert_spi(32 + ((x >> 16) % 96) as u32);
            }
            2 => {
                let _ = g.set_ppi_level(vcpu, 16 + ((x >> 16) % 16) as u32, x & (1 << 40) != 0);
            }
            3 => {
                let _ = g.sgi1r_write(vcpu, ((x >> 16) & 0xf) << 24 | (x >> 32) & 0x7);
            }
            4 => {
                // A guest write somewhere in the enable/pending/active/config/route space.
                let regs_at = [
                    GICD_ISENABLER + 4 + 4 * ((x >> 16) % 3),
                    GICD_ICENABLER + 4 + 4 * ((x >> 16) % 3),
                    GICD_ICPENDR + 4 + 4 * ((x >> 16) % 3),
                    GICD_ICFGR + 8 + 4 * ((x >> 16) % 6),
                    GICD_IROUTER + 8 * (32 + (x >> 16) % 96),
                ];
                let off = regs_at[((x >> 24) % 5) as usize];
                let size = if off >= GICD_IROUTER { 8 } else { 4 };
                wr(&mut g, vcpu, D + off, size, rng.next() & 0x3);
            }
            5 => {
                let c = (x >> 16) % 3;
                wr(&mut g, vcpu, sgi_base(c) + GICD_ISENABLER, 4, rng.next());
            }
            6 => {
                let ctlr = if x & (1 << 20) != 0 { 3 } else { 2 };
                wr(&mut g, vcpu, D + GICD_CTLR, 4, ctlr);
            }
            7 => {
                // Devices quiet down: every line low, software pending cleared.
                for intid in SPI_BASE..NR_IRQS {
                    let _ = g.deassert_spi(intid);
                }
                for c in 0..3 {
                    for ppi in 16..32 {
                        let _ = g.set_ppi_level(c, ppi, false);
                    }
                    wr(&mut g, c, sgi_base(c as u64) + GICD_ICPENDR, 4, 0xffff_ffff);
                }
                for reg in 1..4 {
                    wr(&mut g, 0, D + GICD_ICPENDR + 4 * reg, 4, 0xffff_ffff);
                }
            }
            _ => {
                // The vCPU runs: the guest acknowledges or EOIs some list registers,
                // then exits and is entered again.
                let r = &mut regs[vcpu];
                for lr in r.ich_lr_el2.iter_mut().take(4) {
                    match rng.next() % 4 {
                        0 if *lr & LR_PENDING != 0 => *lr = (*lr & !LR_PENDING) | LR_ACTIVE,
                        1 if *lr & LR_ACTIVE != 0 => *lr &= !LR_ACTIVE,
                        _ => {}
                    }
                }
                g.sync(vcpu, r);
                let mut slow = g.clone();
                for c in slow.cpus.iter_mut() {
                    c.idle_epoch = None;
                }
                let was_idle = g.cpus[vcpu].idle_epoch == Some(g.epoch);
                fast_hits += usize::from(was_idle);
                let mut slow_regs = *r;
                slow.flush(vcpu, &mut slow_regs);
                g.flush(vcpu, r);
                assert_eq!(r.ich_lr_el2, slow_regs.ich_lr_el2);
                assert_eq!(r.ich_hcr_el2, slow_regs.ich_hcr_el2);
                assert_eq!(format!("{:?}", g.spis), format!("{:?}", slow.spis));
                assert_eq!(
                    format!("{:?}", g.cpus[vcpu].private),
                    format!("{:?}", slow.cpus[vcpu].private)
                );
            }
        }
    }
    assert!(fast_hits > 100, "the fast path was exercised ({fast_hits})");
}

#[test]
fn idle_flush_skips_until_something_changes() {
    let mut g = vgic(2);
    linux_like(&mut g);
    let mut r = regs();
    g.flush(0, &mut r);
    let e = g.epoch;
    assert_eq!(g.cpus[0].idle_epoch, Some(e));
    // Exits with nothing in the list registers and timer levels that stay low change
    // nothing.
    g.sync(0, &r);
    g.set_ppi_level(0, 27, false).unwrap();
    g.deassert_spi(40).unwrap();
    assert_eq!(g.epoch, e);
    r.lr_used = 3; // whatever the last entry left
    g.flush(0, &mut r);
    assert_eq!(r.ich_lr_el2, [0; 16]);
    assert_eq!(r.lr_used, 0, "the switch touches no list register");
    // An assertion does, and the next flush sees it.
    enable_spi(&mut g, 40);
    g.assert_spi(40).unwrap();
    assert_ne!(g.epoch, e);
    g.flush(0, &mut r);
    assert_eq!(lr_intid(r.ich_lr_el2[0]), 40);
    assert_eq!(r.lr_used, 1);
    assert_eq!(g.cpus[0].idle_epoch, None);
}
