//! The distributor (GICD) register map, and the per-interrupt register blocks it
//! shares with the redistributors' SGI_base frame (GICv3 spec IHI 0069).
//!
//! Affinity routing is always on (GICD_CTLR.ARE RAO/WI) and the GIC has one security
//! state (GICD_CTLR.DS RAO/WI), as KVM presents it. So the distributor's registers for
//! INTIDs 0..31 are RAZ/WI (they live in the redistributors), ITARGETSR, SGIR,
//! CPENDSGIR/SPENDSGIR, IGRPMODR and NSACR are RAZ/WI, and SGIs come from the ICC_SGIxR
//! system registers.

use super::{irq::Irq, Kicks, Vgic, AFF_MASK, IROUTER_IRM, NR_IRQS, PRIORITY_MASK, SPI_BASE};

pub const GICD_CTLR: u64 = 0x0000;
pub const GICD_TYPER: u64 = 0x0004;
pub const GICD_IIDR: u64 = 0x0008;
pub const GICD_TYPER2: u64 = 0x000c;
pub const GICD_STATUSR: u64 = 0x0010;
pub const GICD_SETSPI_NSR: u64 = 0x0040;
pub const GICD_CLRSPI_NSR: u64 = 0x0048;
pub const GICD_IGROUPR: u64 = 0x0080;
pub const GICD_ISENABLER: u64 = 0x0100;
pub const GICD_ICENABLER: u64 = 0x0180;
pub const GICD_ISPENDR: u64 = 0x0200;
pub const GICD_ICPENDR: u64 = 0x0280;
pub const GICD_ISACTIVER: u64 = 0x0300;
pub const GICD_ICACTIVER: u64 = 0x0380;
pub const GICD_IPRIORITYR: u64 = 0x0400;
pub const GICD_ITARGETSR: u64 = 0x0800;
pub const GICD_ICFGR: u64 = 0x0c00;
pub const GICD_IGRPMODR: u64 = 0x0d00;
pub const GICD_IROUTER: u64 = 0x6000;
pub const GICD_PIDR2: u64 = 0xffe8;

/// GICD_CTLR: EnableGrp0 and EnableGrp1 (the DS = 1 layout), ARE, DS.
pub const CTLR_ENABLE_G0: u32 = 1 << 0;
pub const CTLR_ENABLE_G1: u32 = 1 << 1;
pub const CTLR_ARE: u32 = 1 << 4;
pub const CTLR_DS: u32 = 1 << 6;

/// GICD_IIDR and GICR_IIDR: implementer Arm (JEP106 0x43b) as KVM, product 0x42
/// ('B'hyve), revision 0.
pub const IIDR: u32 = (0x42 << 24) | 0x43b;
/// GICD_PIDR2 and GICR_PIDR2: ArchRev [7:4] = 3 (GICv3), JEDEC [3] = 1, DES_1 = 3.
pub const PIDR2: u32 = 0x3b;
/// GICD_TYPER.IDbits: INTIDs are 10 bits (no LPIs), encoded minus one.
const TYPER_IDBITS: u32 = 9 << 19;
/// GICD_TYPER.MBIS: message-based SPIs through GICD_SETSPI_NSR/CLRSPI_NSR.
const TYPER_MBIS: u32 = 1 << 16;
/// SETSPI/CLRSPI: the INTID field.
pub const SETSPI_INTID_MASK: u64 = 0x1fff;
/// The GICD_IROUTER bits that hold state (Aff3, IRM, Aff2..Aff0).
const IROUTER_MASK: u64 = AFF_MASK | IROUTER_IRM;

/// The seven one-bit-per-interrupt register blocks at 0x080..0x400 of the GICD and of
/// the SGI_base frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitReg {
    Group,
    SetEnable,
    ClearEnable,
    SetPending,
    ClearPending,
    SetActive,
    ClearActive,
}

impl BitReg {
    /// The block at `off` (0x080..0x400) and the register index within it.
    pub fn at(off: u64) -> Option<(BitReg, u64)> {
        let kind = match off >> 7 {
            1 => BitReg::Group,
            2 => BitReg::SetEnable,
            3 => BitReg::ClearEnable,
            4 => BitReg::SetPending,
            5 => BitReg::ClearPending,
            6 => BitReg::SetActive,
            7 => BitReg::ClearActive,
            _ => return None,
        };
        Some((kind, (off & 0x7f) >> 2))
    }

    fn get(self, i: &Irq) -> bool {
        match self {
            BitReg::Group => i.group1,
            BitReg::SetEnable | BitReg::ClearEnable => i.enabled,
            BitReg::SetPending | BitReg::ClearPending => i.pending(),
            BitReg::SetActive | BitReg::ClearActive => i.active,
        }
    }

    /// Applies a written bit: the value for IGROUPR, a 1 for the others (W1S/W1C;
    /// a written 0 leaves the interrupt alone).
    fn put(self, i: &mut Irq, bit: bool) {
        match self {
            BitReg::Group => i.group1 = bit,
            _ if !bit => {}
            BitReg::SetEnable => i.enabled = true,
            BitReg::ClearEnable => i.enabled = false,
            // Software pending: the latch (a level line stays as it is).
            BitReg::SetPending => i.latch = true,
            BitReg::ClearPending => i.latch = false,
            BitReg::SetActive => i.active = true,
            BitReg::ClearActive => i.active = false,
        }
    }
}

/// Whether an access of `size` bytes at `off` is one the register allows: a 32-bit
/// register takes aligned 32-bit accesses; byte-accessible ones also single bytes.
fn word_ok(off: u64, size: u8) -> bool {
    size == 4 && off.is_multiple_of(4)
}

fn byte_or_word_ok(off: u64, size: u8) -> bool {
    size == 1 || word_ok(off, size)
}

impl Vgic {
    /// Reads the 32 bits of block `kind` for INTIDs `first..first + 32` as `vcpu`
    /// sees them; INTIDs past the last read as zero.
    pub(super) fn read_bits(&self, vcpu: usize, first: u32, kind: BitReg) -> u64 {
        (0..32u32)
            .filter(|&b| {
                first
                    .checked_add(b)
                    .and_then(|n| self.irq(vcpu, n))
                    .is_some_and(|i| kind.get(i))
            })
            .fold(0, |v, b| v | (1u64 << b))
    }

    pub(super) fn write_bits(&mut self, vcpu: usize, first: u32, kind: BitReg, val: u64) -> Kicks {
        let mut k = Kicks::default();
        for b in 0..32u32 {
            let Some(n) = first.checked_add(b) else { break };
            if let Some(i) = self.irq_mut(vcpu, n) {
                kind.put(i, (val >> b) & 1 != 0);
                self.note(&mut k, vcpu, n);
            }
        }
        k
    }

    /// IPRIORITYR: one byte per interrupt from `first`, `size` (1 or 4) of them.
    pub(super) fn read_prio(&self, vcpu: usize, first: u32, size: u8) -> u64 {
        (0..u32::from(size))
            .map(|b| {
                let p = first
                    .checked_add(b)
                    .and_then(|n| self.irq(vcpu, n))
                    .map_or(0, |i| i.priority);
                u64::from(p) << b.wrapping_mul(8)
            })
            .fold(0, |v, x| v | x)
    }

    pub(super) fn write_prio(&mut self, vcpu: usize, first: u32, size: u8, val: u64) -> Kicks {
        let mut k = Kicks::default();
        for b in 0..u32::from(size).min(4) {
            let Some(n) = first.checked_add(b) else { break };
            if let Some(i) = self.irq_mut(vcpu, n) {
                i.priority = ((val >> b.wrapping_mul(8)) & 0xff) as u8 & PRIORITY_MASK;
                self.note(&mut k, vcpu, n);
            }
        }
        k
    }

    /// ICFGR: two bits per interrupt from `first` (bit 2n + 1 = edge-triggered). SGIs
    /// are always edge: their field reads 0b10 and ignores writes.
    pub(super) fn read_cfg(&self, vcpu: usize, first: u32) -> u64 {
        (0..16u32)
            .filter(|&b| {
                first
                    .checked_add(b)
                    .and_then(|n| self.irq(vcpu, n))
                    .is_some_and(|i| i.edge)
            })
            .fold(0, |v, b| v | (2u64 << b.wrapping_mul(2)))
    }

    pub(super) fn write_cfg(&mut self, vcpu: usize, first: u32, val: u64) {
        for b in 0..16u32 {
            let Some(n) = first.checked_add(b) else { break };
            if n < 16 {
                continue;
            }
            if let Some(i) = self.irq_mut(vcpu, n) {
                i.edge = (val >> b.wrapping_mul(2).wrapping_add(1)) & 1 != 0;
            }
        }
    }

    /// A distributor read at offset `off` (< 64 KiB) of `size` bytes (1, 2, 4, 8).
    pub(super) fn dist_read(&self, off: u64, size: u8) -> u64 {
        match off {
            GICD_CTLR if word_ok(off, size) => u64::from(self.ctlr | CTLR_ARE | CTLR_DS),
            GICD_TYPER if word_ok(off, size) => {
                // ITLinesNumber: 32 * (N + 1) INTIDs. CPUNumber: the PEs legacy
                // (ARE = 0) targeting could reach, at most 8, minus one.
                let lines = (NR_IRQS / 32).saturating_sub(1);
                let cpus = u32::try_from(self.cpus.len().clamp(1, 8))
                    .unwrap_or(1)
                    .saturating_sub(1);
                u64::from(lines | (cpus << 5) | TYPER_MBIS | TYPER_IDBITS)
            }
            GICD_IIDR if word_ok(off, size) => u64::from(IIDR),
            GICD_PIDR2 if word_ok(off, size) => u64::from(PIDR2),
            0x0080..0x0400 if word_ok(off, size) => match BitReg::at(off) {
                // Register 0 (INTIDs 0..31) is the redistributors' with ARE = 1.
                Some((kind, idx)) if idx > 0 => self.read_bits(0, idx_to_intid(idx, 32), kind),
                _ => 0,
            },
            GICD_IPRIORITYR..GICD_ITARGETSR if byte_or_word_ok(off, size) => {
                match u32::try_from(off.wrapping_sub(GICD_IPRIORITYR)) {
                    Ok(first) if first >= SPI_BASE => self.read_prio(0, first, size),
                    _ => 0,
                }
            }
            GICD_ICFGR..GICD_IGRPMODR if word_ok(off, size) => {
                let idx = off.wrapping_sub(GICD_ICFGR) >> 2;
                if idx >= 2 {
                    self.read_cfg(0, idx_to_intid(idx, 16))
                } else {
                    0
                }
            }
            GICD_IROUTER..0x8000 => match self.irouter_at(off, size) {
                Some((intid, shift)) => self.spi(intid).map_or(0, |s| s.route >> shift),
                None => 0,
            },
            _ => 0,
        }
    }

    /// A distributor write; returns the vCPUs that may now have work.
    pub(super) fn dist_write(&mut self, off: u64, size: u8, val: u64) -> Kicks {
        let mut k = Kicks::default();
        match off {
            GICD_CTLR if word_ok(off, size) => {
                self.ctlr = (val as u32) & (CTLR_ENABLE_G0 | CTLR_ENABLE_G1);
                // Enabling a group may release pending interrupts anywhere.
                for n in SPI_BASE..NR_IRQS {
                    self.note(&mut k, 0, n);
                }
                for c in 0..self.cpus.len() {
                    for n in 0..SPI_BASE {
                        self.note(&mut k, c, n);
                    }
                }
            }
            GICD_SETSPI_NSR | GICD_CLRSPI_NSR if word_ok(off, size) => {
                let set = off == GICD_SETSPI_NSR;
                let intid = u32::try_from(val & SETSPI_INTID_MASK).unwrap_or(0);
                if let Some(s) = self.spi_mut(intid) {
                    s.irq.latch = set;
                    self.note(&mut k, 0, intid);
                }
            }
            0x0080..0x0400 if word_ok(off, size) => {
                if let Some((kind, idx)) = BitReg::at(off) {
                    if idx > 0 {
                        k = self.write_bits(0, idx_to_intid(idx, 32), kind, val);
                    }
                }
            }
            GICD_IPRIORITYR..GICD_ITARGETSR if byte_or_word_ok(off, size) => {
                if let Ok(first) = u32::try_from(off.wrapping_sub(GICD_IPRIORITYR)) {
                    if first >= SPI_BASE {
                        k = self.write_prio(0, first, size, val);
                    }
                }
            }
            GICD_ICFGR..GICD_IGRPMODR if word_ok(off, size) => {
                let idx = off.wrapping_sub(GICD_ICFGR) >> 2;
                if idx >= 2 {
                    self.write_cfg(0, idx_to_intid(idx, 16), val);
                }
            }
            GICD_IROUTER..0x8000 => {
                if let Some((intid, shift)) = self.irouter_at(off, size) {
                    let keep = if size == 8 {
                        0
                    } else {
                        !(0xffff_ffffu64 << shift)
                    };
                    let route = self.spi(intid).map_or(0, |s| s.route);
                    let new = ((route & keep) | (val << shift)) & IROUTER_MASK;
                    let target = self.resolve_route(new);
                    if let Some(s) = self.spi_mut(intid) {
                        s.route = new;
                        s.target = target;
                    }
                    self.note(&mut k, 0, intid);
                }
            }
            _ => {}
        }
        k
    }

    /// GICD_IROUTER<n> at `off` for a `size`-byte access: a 64-bit access to the
    /// whole register or a 32-bit one to either half (the shift of that half). SPIs
    /// only: IROUTER0..31 are reserved.
    fn irouter_at(&self, off: u64, size: u8) -> Option<(u32, u32)> {
        let rel = off.checked_sub(GICD_IROUTER)?;
        let shift = match size {
            8 if rel.is_multiple_of(8) => 0,
            4 if rel.is_multiple_of(4) => {
                if rel.is_multiple_of(8) {
                    0
                } else {
                    32
                }
            }
            _ => return None,
        };
        let intid = u32::try_from(rel >> 3).ok()?;
        (SPI_BASE..NR_IRQS)
            .contains(&intid)
            .then_some((intid, shift))
    }
}

/// The first INTID of register `idx` in a block of `per_reg` interrupts per register.
fn idx_to_intid(idx: u64, per_reg: u64) -> u32 {
    u32::try_from(idx.saturating_mul(per_reg)).unwrap_or(u32::MAX)
}
