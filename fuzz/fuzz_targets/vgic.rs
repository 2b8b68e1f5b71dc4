//! The vGIC against a reference model: two vCPUs, sixteen SPIs (edge or level, as the
//! input configures them), device lines raised and lowered, the list registers flushed
//! into "running" vCPUs, acknowledged and EOIed by a simulated guest and synced back,
//! and the distributor programmed between runs (enables, set/clear pending, routing),
//! all in an order the input chooses, with distributor and redistributor reads of any
//! offset interleaved. Invariants: nothing panics; an INTID is in at most one list
//! register of all running vCPUs; the guest never acknowledges an edge SPI more often
//! than it was triggered (a trigger that races a guest's acknowledge may count twice);
//! and, after the lines drop and the guest drains every vCPU, no enabled edge SPI that
//! was surely triggered is left undelivered.
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use vmm_core::vgic::dist::*;
use vmm_core::vgic::lr::{LR_ACTIVE, LR_PENDING};
use vmm_core::vgic::redist::*;
use vmm_core::vgic::{Vgic, REDIST_STRIDE, SPI_BASE};
use vmm_sys::hyp::VgicCpuRegs;

const D: u64 = 0x2f00_0000;
const R: u64 = 0x2f10_0000;
const NCPU: usize = 2;
const NSPI: u32 = 16;
/// ICH_VTR_EL2 with four list registers.
const VTR: u64 = 3;

fn wr(g: &mut Vgic, gpa: u64, val: u64) {
    let mut v = val;
    g.mmio_access(0, gpa, 4, true, &mut v)
        .expect("a vGIC address");
}

fn vmcr() -> u64 {
    (0xf0 << 24) | 3
}

#[derive(Default, Clone, Copy)]
struct Spi {
    edge: bool,
    line: bool,
    enabled: bool,
    /// Edge: acknowledges the guest may still make.
    credit: u8,
    /// Edge: triggered and not delivered since, for certain.
    sure: bool,
}

struct Model {
    spi: [Spi; NSPI as usize],
    running: [Option<VgicCpuRegs>; NCPU],
}

impl Model {
    /// The list-register state of SPI `s` in a running vCPU: (pending, active).
    fn in_flight(&self, s: u32) -> Option<(bool, bool)> {
        self.running.iter().flatten().find_map(|r| {
            let used = (r.lr_used as usize).min(r.ich_lr_el2.len());
            r.ich_lr_el2[..used]
                .iter()
                .find(|&&lr| lr as u32 == SPI_BASE + s && lr & (LR_PENDING | LR_ACTIVE) != 0)
                .map(|&lr| (lr & LR_PENDING != 0, lr & LR_ACTIVE != 0))
        })
    }

    fn trigger(&mut self, s: u32) {
        let flight = self.in_flight(s);
        let m = &mut self.spi[s as usize];
        if !m.edge {
            return;
        }
        match flight {
            // Pending in a running guest's list register: this edge may be coalesced
            // with it or, if the guest acknowledges first, delivered again.
            Some((true, _)) => m.credit = (m.credit + 1).min(2),
            _ => {
                m.credit = m.credit.max(1);
                m.sure = true;
            }
        }
    }

    fn ack(&mut self, s: u32) {
        let m = &mut self.spi[s as usize];
        if m.edge {
            assert!(
                m.credit > 0,
                "edge SPI {} delivered more often than triggered",
                SPI_BASE + s
            );
            m.credit -= 1;
            m.sure = false;
        }
    }

    /// No INTID twice in the list registers of the running vCPUs.
    fn check_unique(&self) {
        let mut seen = std::collections::HashSet::new();
        for r in self.running.iter().flatten() {
            let used = (r.lr_used as usize).min(r.ich_lr_el2.len());
            for &lr in &r.ich_lr_el2[..used] {
                if lr & (LR_PENDING | LR_ACTIVE) != 0 {
                    assert!(
                        seen.insert(lr as u32),
                        "INTID {} in two list registers",
                        lr as u32
                    );
                }
            }
            for &lr in &r.ich_lr_el2[used..] {
                assert_eq!(lr, 0, "a list register past lr_used is not empty");
            }
        }
    }
}

fn setup(u: &mut Unstructured<'_>) -> Result<(Vgic, Model)> {
    let mpidrs: Vec<u64> = (0..NCPU as u32).map(vmm_platform::vcpu_mpidr).collect();
    let mut g = Vgic::new(&mpidrs, D, R, VTR).expect("a vGIC");
    wr(
        &mut g,
        D + GICD_CTLR,
        u64::from(CTLR_ENABLE_G0 | CTLR_ENABLE_G1 | CTLR_ARE),
    );
    wr(&mut g, D + GICD_IGROUPR + 4, 0xffff_ffff);
    for b in (0..NSPI as u64).step_by(4) {
        wr(
            &mut g,
            D + GICD_IPRIORITYR + u64::from(SPI_BASE) + b,
            0xa0a0_a0a0,
        );
    }
    for c in 0..NCPU as u64 {
        let mut v = 0;
        g.mmio_access(
            c as usize,
            R + c * REDIST_STRIDE + GICR_WAKER,
            4,
            true,
            &mut v,
        );
        let regs = VgicCpuRegs {
            ich_vmcr_el2: vmcr(),
            ..Default::default()
        };
        g.sync(c as usize, &regs);
    }
    let edges: u16 = u.arbitrary()?;
    let mut cfg = 0u64;
    for s in 0..NSPI {
        if edges & (1 << s) != 0 {
            cfg |= 2 << (2 * s);
        }
    }
    // ICFGR2: INTIDs 32..47, bit 1 of each field = edge.
    wr(&mut g, D + GICD_ICFGR + 8, cfg);
    let mut spi = [Spi::default(); NSPI as usize];
    for (s, m) in spi.iter_mut().enumerate() {
        m.edge = edges & (1 << s) != 0;
    }
    Ok((
        g,
        Model {
            spi,
            running: [None; NCPU],
        },
    ))
}

/// `VGIC_TRACE=1` prints every step (to read a crash input).
fn trace() -> bool {
    static T: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *T.get_or_init(|| std::env::var_os("VGIC_TRACE").is_some())
}

fn op(u: &mut Unstructured<'_>, g: &mut Vgic, m: &mut Model) -> Result<()> {
    let s = u.int_in_range(0..=NSPI - 1)?;
    let v = u.int_in_range(0..=NCPU - 1)?;
    let idle = m.running.iter().all(Option::is_none);
    let which = u.int_in_range(0u8..=13)?;
    if trace() {
        eprintln!(
            "op {which} spi {} vcpu {v} idle {idle} running {:x?}",
            SPI_BASE + s,
            m.running
                .iter()
                .map(|r| r.map(|r| (r.lr_used, r.ich_lr_el2[..4].to_vec())))
                .collect::<Vec<_>>()
        );
    }
    match which {
        0 | 1 => {
            if !m.spi[s as usize].line {
                m.trigger(s);
            }
            m.spi[s as usize].line = true;
            g.assert_spi(SPI_BASE + s).expect("an SPI");
        }
        2 => {
            m.spi[s as usize].line = false;
            g.deassert_spi(SPI_BASE + s).expect("an SPI");
        }
        3 | 4 if m.running[v].is_none() => {
            let mut regs = VgicCpuRegs {
                ich_vmcr_el2: vmcr(),
                lr_used: 7,
                ..Default::default()
            };
            g.flush(v, &mut regs);
            m.running[v] = Some(regs);
            m.check_unique();
        }
        5 | 6 => {
            let k = u.int_in_range(0usize..=3)?;
            let Some(regs) = m.running[v].as_mut() else {
                return Ok(());
            };
            let lr = regs.ich_lr_el2[k];
            // The guest takes a pending, inactive interrupt (IAR), as the CPU offers it.
            if k < regs.lr_used as usize && lr & (LR_PENDING | LR_ACTIVE) == LR_PENDING {
                regs.ich_lr_el2[k] = (lr & !LR_PENDING) | LR_ACTIVE;
                let intid = lr as u32;
                if (SPI_BASE..SPI_BASE + NSPI).contains(&intid) {
                    m.ack(intid - SPI_BASE);
                }
            }
        }
        7 => {
            let k = u.int_in_range(0usize..=3)?;
            if let Some(regs) = m.running[v].as_mut() {
                if k < regs.lr_used as usize && regs.ich_lr_el2[k] & LR_ACTIVE != 0 {
                    regs.ich_lr_el2[k] &= !LR_ACTIVE;
                }
            }
        }
        8 | 9 => {
            if let Some(regs) = m.running[v].take() {
                g.sync(v, &regs);
            }
        }
        10 if idle => {
            let reg = if u.arbitrary()? {
                GICD_ISENABLER
            } else {
                GICD_ICENABLER
            };
            m.spi[s as usize].enabled = reg == GICD_ISENABLER;
            wr(g, D + reg + 4, 1 << s);
        }
        11 if idle => {
            if u.arbitrary()? {
                m.trigger(s);
                wr(g, D + GICD_ISPENDR + 4, 1 << s);
            } else {
                let sp = &mut m.spi[s as usize];
                sp.credit = 0;
                sp.sure = false;
                wr(g, D + GICD_ICPENDR + 4, 1 << s);
            }
        }
        12 if idle => {
            let aff = vmm_platform::vcpu_mpidr(v as u32) & vmm_core::vgic::AFF_MASK;
            let mut val = aff;
            g.mmio_access(
                0,
                D + GICD_IROUTER + 8 * u64::from(SPI_BASE + s),
                8,
                true,
                &mut val,
            );
        }
        _ => {
            // A read anywhere in the windows changes nothing.
            let gpa = if u.arbitrary()? {
                D + u64::from(u.arbitrary::<u16>()?)
            } else {
                R + u64::from(u.arbitrary::<u32>()?) % (NCPU as u64 * REDIST_STRIDE)
            };
            let size = *u.choose(&[1u8, 2, 4, 8])?;
            let mut val = 0;
            g.mmio_access(v, gpa, size, false, &mut val);
        }
    }
    Ok(())
}

fn drain(g: &mut Vgic, m: &mut Model) {
    for v in 0..NCPU {
        if let Some(regs) = m.running[v].take() {
            g.sync(v, &regs);
        }
    }
    for s in 0..NSPI {
        m.spi[s as usize].line = false;
        g.deassert_spi(SPI_BASE + s).expect("an SPI");
    }
    for _ in 0..2 * NSPI {
        for v in 0..NCPU {
            let mut regs = VgicCpuRegs {
                ich_vmcr_el2: vmcr(),
                ..Default::default()
            };
            g.flush(v, &mut regs);
            m.running[v] = Some(regs);
            m.check_unique();
            let mut regs = m.running[v].take().expect("flushed");
            for k in 0..regs.lr_used as usize {
                // The guest EOIs what it has active (a pending part stays), then takes
                // and EOIs what is pending.
                let lr = regs.ich_lr_el2[k] & !LR_ACTIVE;
                if lr & LR_PENDING != 0 {
                    let intid = lr as u32;
                    if (SPI_BASE..SPI_BASE + NSPI).contains(&intid) {
                        m.ack(intid - SPI_BASE);
                    }
                }
                regs.ich_lr_el2[k] = lr & !LR_PENDING;
            }
            g.sync(v, &regs);
        }
    }
    for (s, sp) in m.spi.iter().enumerate() {
        if sp.edge && sp.enabled {
            assert!(
                !sp.sure,
                "edge SPI {} triggered and never delivered",
                SPI_BASE + s as u32
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok((mut g, mut m)) = setup(&mut u) else {
        return;
    };
    while !u.is_empty() {
        if op(&mut u, &mut g, &mut m).is_err() {
            break;
        }
    }
    drain(&mut g, &mut m);
});
