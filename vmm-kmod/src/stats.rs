//! Per-vCPU counters (VM_STATS) and their descriptions (VM_STAT_DESC).

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
}

pub const NSTATS: usize = 14;

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
];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub v: [u64; NSTATS],
}

impl Stats {
    pub fn inc(&mut self, s: Stat) {
        if let Some(c) = self.v.get_mut(s as usize) {
            *c = c.wrapping_add(1);
        }
    }
    pub fn get(&self, s: Stat) -> u64 {
        self.v.get(s as usize).copied().unwrap_or(0)
    }
}
