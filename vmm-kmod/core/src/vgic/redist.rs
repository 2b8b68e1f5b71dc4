//! The redistributors (GICR): per vCPU an RD_base frame (control, identification,
//! power management) and an SGI_base frame 64 KiB above it (the SGIs' and PPIs'
//! registers), per IHI 0069. No LPIs: GICR_CTLR.EnableLPIs, PROPBASER and
//! PENDBASER are RAZ/WI and GICR_TYPER.PLPIS is 0.

use super::dist::{BitReg, IIDR, PIDR2};
use super::{Kicks, Vgic, SPI_BASE};

pub const GICR_CTLR: u64 = 0x0000;
pub const GICR_IIDR: u64 = 0x0004;
pub const GICR_TYPER: u64 = 0x0008;
pub const GICR_WAKER: u64 = 0x0014;
pub const GICR_PIDR2: u64 = 0xffe8;
/// The SGI_base frame's offset from RD_base.
pub const SGI_FRAME: u64 = 0x1_0000;
pub const GICR_IPRIORITYR0: u64 = 0x0400;
pub const GICR_ICFGR0: u64 = 0x0c00;
pub const GICR_ICFGR1: u64 = 0x0c04;

/// GICR_TYPER.Last: the highest redistributor of the region.
pub const TYPER_LAST: u64 = 1 << 4;
/// GICR_WAKER.ProcessorSleep and ChildrenAsleep.
pub const WAKER_PS: u64 = 1 << 1;
pub const WAKER_CA: u64 = 1 << 2;

impl Vgic {
    /// GICR_TYPER of redistributor `n`: Affinity_Value [63:32] = Aff3.Aff2.Aff1.Aff0
    /// of the vCPU's MPIDR, Processor_Number [23:8] = n, Last [4] on the final one.
    fn gicr_typer(&self, n: usize) -> u64 {
        let Some(c) = self.cpus.get(n) else {
            return 0;
        };
        let m = c.mpidr;
        let aff = (((m >> 32) & 0xff) << 24) | (m & 0xff_ffff);
        let last = if n.saturating_add(1) == self.cpus.len() {
            TYPER_LAST
        } else {
            0
        };
        (aff << 32) | ((n as u64 & 0xffff) << 8) | last
    }

    /// A read of `size` bytes at offset `off` (< 128 KiB) of redistributor `n`.
    pub(super) fn redist_read(&self, n: usize, off: u64, size: u8) -> u64 {
        let Some(c) = self.cpus.get(n) else {
            return 0;
        };
        let word = size == 4 && off.is_multiple_of(4);
        match off {
            GICR_CTLR | GICR_IIDR | GICR_WAKER | GICR_PIDR2 if !word => 0,
            GICR_CTLR => 0,
            GICR_IIDR => u64::from(IIDR),
            // 64-bit, or 32-bit to either half.
            GICR_TYPER if size == 8 => self.gicr_typer(n),
            GICR_TYPER if word => self.gicr_typer(n) & 0xffff_ffff,
            0x000c if word => self.gicr_typer(n) >> 32,
            GICR_WAKER => {
                if c.asleep {
                    WAKER_PS | WAKER_CA
                } else {
                    0
                }
            }
            GICR_PIDR2 => u64::from(PIDR2),
            _ => match off.checked_sub(SGI_FRAME) {
                Some(s) => self.sgi_frame_read(n, s, size),
                None => 0,
            },
        }
    }

    /// A write to redistributor `n`.
    pub(super) fn redist_write(&mut self, n: usize, off: u64, size: u8, val: u64) -> Kicks {
        if n >= self.cpus.len() {
            return Kicks::default();
        }
        let word = size == 4 && off.is_multiple_of(4);
        match off {
            GICR_WAKER if word => {
                // ChildrenAsleep follows ProcessorSleep at once: there is nothing to
                // quiesce, and Linux's gic_enable_redist() polls until it does.
                let asleep = val & WAKER_PS != 0;
                if let Some(c) = self.cpus.get_mut(n) {
                    c.asleep = asleep;
                }
                self.reroute_any();
                Kicks::default()
            }
            _ => match off.checked_sub(SGI_FRAME) {
                Some(s) => self.sgi_frame_write(n, s, size, val),
                None => Kicks::default(),
            },
        }
    }

    fn sgi_frame_read(&self, n: usize, off: u64, size: u8) -> u64 {
        let word = size == 4 && off.is_multiple_of(4);
        match off {
            // Register 0 of each block: SGIs and PPIs.
            0x0080..0x0400 if word => match BitReg::at(off) {
                Some((kind, 0)) => self.read_bits(n, 0, kind),
                _ => 0,
            },
            GICR_IPRIORITYR0..0x0420 if size == 1 || word => {
                let first = u32::try_from(off.saturating_sub(GICR_IPRIORITYR0)).unwrap_or(SPI_BASE);
                self.read_prio(n, first, size)
            }
            GICR_ICFGR0 if word => self.read_cfg(n, 0),
            GICR_ICFGR1 if word => self.read_cfg(n, 16),
            _ => 0,
        }
    }

    fn sgi_frame_write(&mut self, n: usize, off: u64, size: u8, val: u64) -> Kicks {
        let word = size == 4 && off.is_multiple_of(4);
        match off {
            0x0080..0x0400 if word => match BitReg::at(off) {
                Some((kind, 0)) => self.write_bits(n, 0, kind, val),
                _ => Kicks::default(),
            },
            GICR_IPRIORITYR0..0x0420 if size == 1 || word => {
                let first = u32::try_from(off.saturating_sub(GICR_IPRIORITYR0)).unwrap_or(SPI_BASE);
                self.write_prio(n, first, size, val)
            }
            // ICFGR0 (SGIs) is read-only; write_cfg skips SGIs anyway.
            GICR_ICFGR1 if word => {
                self.write_cfg(n, 16, val);
                Kicks::default()
            }
            _ => Kicks::default(),
        }
    }
}
