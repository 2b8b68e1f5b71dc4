//! Per-vCPU counters (VM_STATS) and their descriptions (VM_STAT_DESC).

use core::sync::atomic::{AtomicU64, Ordering};

/// The counters, in VM_STATS index order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Stat {
    Exits = 0,
    ExitsToUser,
    HostIrq,
    Smccc,
    RamFault,
    InstEmul,
    SysRegKernel,
    RegEmul,
    Wfi,
    Injected,
    NoSyndromeAbort,
    Unclassified,
    Kicks,
    VmRun,
    VgicMmio,
    TimerKernel,
    LogSuppressed,
    SysRegEl2,
    /// WFE trapped: only where the host asks (`Host::traps_wfe`).
    Wfe,
    /// A trapped WFE returned to userspace so other runs got the CPU.
    WfeYield,
    /// A device register's load answered from VM_SET_MMIO_SHORTCUT's value.
    MmioAnswered,
    /// A device register's store queued for userspace (VM_GET_MMIO_STORES).
    MmioQueued,
    /// Of `MmioAnswered` and `MmioQueued`, those the EL2 code handled without the world
    /// switch.
    MmioEl2,
}

pub const NSTATS: usize = 23;

/// Descriptions, as `bhyvectl --get-stats` prints them.
pub const DESC: [&str; NSTATS] = [
    "total number of vm exits",
    "vm exits returned to userspace",
    "vm exits due to host interrupts",
    "hvc/smc calls (SMCCC exits)",
    "stage-2 faults on guest memory handled in kernel",
    "mmio accesses emulated in userspace (INST_EMUL)",
    "system register accesses emulated in kernel",
    "system register accesses emulated in userspace (REG_EMUL)",
    "wfi instructions executed",
    "exceptions injected into the guest",
    "aborts without a valid syndrome answered with an abort",
    "exits not classified (HYP)",
    "times the vcpu was kicked out of the guest",
    "VM_RUN calls",
    "interrupt controller (vGIC) mmio accesses emulated in kernel",
    "physical timer (CNTP_*) accesses emulated in kernel",
    "guest-triggered kernel messages not logged (at most one per kind a second)",
    "system register accesses answered at EL2 without a world switch (in the total)",
    "wfe instructions trapped",
    "trapped wfe that gave the cpu to others",
    "mmio loads answered in kernel (VM_SET_MMIO_SHORTCUT)",
    "mmio stores queued in kernel for userspace (VM_GET_MMIO_STORES)",
    "mmio accesses handled at EL2 without a world switch (in the loads answered and stores queued)",
];

/// The counters of one vCPU. Atomic so VM_STATS reads them while the vCPU runs (as
/// FreeBSD's, which reads them without freezing the vCPU); only the thread holding the
/// vCPU counts.
#[derive(Debug)]
pub struct Stats {
    v: [AtomicU64; NSTATS],
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            v: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Stats {
    pub fn inc(&self, s: Stat) {
        if let Some(c) = self.v.get(s as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
    pub fn add(&self, s: Stat, n: u64) {
        if let Some(c) = self.v.get(s as usize) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }
    pub fn get(&self, s: Stat) -> u64 {
        self.v
            .get(s as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
    /// Every counter, in index order.
    pub fn snapshot(&self) -> [u64; NSTATS] {
        core::array::from_fn(|i| self.v.get(i).map_or(0, |c| c.load(Ordering::Relaxed)))
    }
    pub fn clear(&self) {
        for c in &self.v {
            c.store(0, Ordering::Relaxed);
        }
    }
}
