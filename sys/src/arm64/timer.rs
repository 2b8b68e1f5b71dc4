//! The generic timer's control bits and the emulated EL1 physical timer, shared by the
//! core (which emulates it) and the EL2 code (which answers its reads in the guest's
//! world, `hyp::El2Answers`).
//!
//! Timer output (Arm ARM, the Generic Timer chapter): the condition is met when the
//! count >= CVAL (CTL.ISTATUS shows it whenever ENABLE is set); the interrupt is
//! asserted while ENABLE = 1, IMASK = 0 and the condition is met. TVAL is CVAL - count
//! as a signed 32-bit value; writing it sets CVAL = count + sign-extended TVAL.

use crate::arm64::sysreg::{self, SysReg};

/// CNTx_CTL_EL0 bits.
pub const CTL_ENABLE: u64 = 1 << 0;
pub const CTL_IMASK: u64 = 1 << 1;
pub const CTL_ISTATUS: u64 = 1 << 2;

/// Whether a timer with `ctl`/`cval` asserts its interrupt at count `count`.
pub const fn output(ctl: u64, cval: u64, count: u64) -> bool {
    ctl & (CTL_ENABLE | CTL_IMASK) == CTL_ENABLE && count >= cval
}

/// The emulated EL1 physical timer of one vCPU (CNTP_CTL_EL0, CNTP_CVAL_EL0).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhysTimer {
    /// ENABLE and IMASK as the guest wrote them (ISTATUS is computed).
    ctl: u64,
    cval: u64,
}

impl PhysTimer {
    /// The reset state: disabled. (CVAL is UNKNOWN at reset; zero here.)
    pub const fn new() -> PhysTimer {
        PhysTimer { ctl: 0, cval: 0 }
    }

    /// CNTP_CTL_EL0 as read at count `now`: ENABLE, IMASK, and ISTATUS when enabled
    /// and the condition is met.
    pub fn read_ctl(&self, now: u64) -> u64 {
        let mut v = self.ctl;
        if self.ctl & CTL_ENABLE != 0 && now >= self.cval {
            v |= CTL_ISTATUS;
        }
        v
    }

    /// A write to CNTP_CTL_EL0: ENABLE and IMASK are writable, ISTATUS is read-only,
    /// the rest RES0.
    pub fn write_ctl(&mut self, v: u64) {
        self.ctl = v & (CTL_ENABLE | CTL_IMASK);
    }

    pub fn read_cval(&self) -> u64 {
        self.cval
    }

    pub fn write_cval(&mut self, v: u64) {
        self.cval = v;
    }

    /// CNTP_TVAL_EL0 at count `now`: the low 32 bits of CVAL - count (bits [63:32]
    /// RES0).
    pub fn read_tval(&self, now: u64) -> u64 {
        self.cval.wrapping_sub(now) & 0xffff_ffff
    }

    /// A write to CNTP_TVAL_EL0 at count `now`: CVAL = count + TVAL[31:0] sign-extended.
    pub fn write_tval(&mut self, v: u64, now: u64) {
        let delta = i64::from(v as u32 as i32) as u64;
        self.cval = now.wrapping_add(delta);
    }

    /// The output (PPI 30's line) at `now`.
    pub fn level(&self, now: u64) -> bool {
        output(self.ctl, self.cval, now)
    }

    /// The count at which the output will assert, if armed and not yet due.
    pub fn deadline(&self, now: u64) -> Option<u64> {
        if self.ctl & (CTL_ENABLE | CTL_IMASK) != CTL_ENABLE || self.level(now) {
            return None;
        }
        Some(self.cval)
    }

    /// A read of CNTP register `reg` at count `now`; `None` if `reg` is not one.
    pub fn read(&self, reg: SysReg, now: u64) -> Option<u64> {
        if reg == sysreg::CNTP_CTL_EL0 {
            Some(self.read_ctl(now))
        } else if reg == sysreg::CNTP_CVAL_EL0 {
            Some(self.read_cval())
        } else if reg == sysreg::CNTP_TVAL_EL0 {
            Some(self.read_tval(now))
        } else {
            None
        }
    }

    /// A trapped access to one of the CNTP registers at count `now`: for a read the
    /// value for Rt, for a write `value` is taken and `Some(0)` returned. `None` if
    /// `reg` is not a physical timer register (then it is not this module's).
    pub fn access(&mut self, reg: SysReg, read: bool, value: u64, now: u64) -> Option<u64> {
        if read {
            return self.read(reg, now);
        }
        if reg == sysreg::CNTP_CTL_EL0 {
            self.write_ctl(value);
        } else if reg == sysreg::CNTP_CVAL_EL0 {
            self.write_cval(value);
        } else if reg == sysreg::CNTP_TVAL_EL0 {
            self.write_tval(value, now);
        } else {
            return None;
        }
        Some(0)
    }
}
