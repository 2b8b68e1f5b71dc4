//! PSCI 1.0 (Arm DEN0022) and the SMCCC 1.1 discovery calls (Arm DEN0028), which the
//! guest makes with `hvc #0` and the kernel hands to userspace as SMCCC exits.
//!
//! This module decides what a call means; the run loop ([`crate::vcpu`]) carries it
//! out (starts vCPUs, stops the VM) and writes the result to x0.

use vmm_sys::arm64::psci::{self, ret};

/// The bits of an MPIDR that name a CPU (Aff3, Aff2, Aff1, Aff0); what guests pass to
/// CPU_ON and AFFINITY_INFO (Linux's MPIDR_HWID_BITMASK). Bit 31 (RES1) and the MT/U
/// bits are not part of the name.
pub const MPIDR_AFF_MASK: u64 = 0xff_00ff_ffff;

/// What the run loop must do for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Write this value to x0 and run on.
    Return(u64),
    /// CPU_ON for vCPU `target`: start it at `entry` with x0 = `context`, then return
    /// SUCCESS (or ALREADY_ON if it is running).
    CpuOn {
        target: u32,
        entry: u64,
        context: u64,
    },
    /// CPU_OFF: this vCPU stops until a CPU_ON names it again.
    CpuOff,
    /// SYSTEM_OFF: power the VM off (bhyve exits 1).
    SystemOff,
    /// SYSTEM_RESET: the VM reboots (bhyve exits 0 and its caller starts it again).
    SystemReset,
}

/// What PSCI needs to know about the VM's vCPUs.
pub trait Cpus {
    /// How many vCPUs the VM has.
    fn count(&self) -> u32;
    /// The MPIDR_EL1 of vCPU `n`.
    fn mpidr(&self, n: u32) -> u64;
    /// True while vCPU `n` is on (started and not turned off).
    fn is_on(&self, n: u32) -> bool;
    /// True if a CPU may start executing at `addr` (it is guest RAM).
    fn is_ram(&self, addr: u64) -> bool;
}

fn r(code: i64) -> Action {
    Action::Return(code as u64)
}

/// Decodes one SMCCC call: `func_id` is w0, `args` x1..x7.
pub fn handle(func_id: u64, args: &[u64; 7], cpus: &dyn Cpus) -> Action {
    // SMCCC: the function id is w0; the upper half of x0 is ignored.
    let fid = func_id as u32;
    // SMC32/HVC32 calls take 32-bit arguments: the upper halves are undefined.
    let arg = |i: usize| {
        if fid & psci::SMC64 != 0 {
            args[i]
        } else {
            args[i] & 0xffff_ffff
        }
    };
    match fid {
        psci::PSCI_VERSION => Action::Return(psci::PSCI_VERSION_1_0),
        psci::PSCI_FEATURES => Action::Return(features(args[0] as u32)),
        // A power-down or standby request may return at once, as a wake-up would.
        psci::CPU_SUSPEND_32 | psci::CPU_SUSPEND_64 => r(ret::SUCCESS),
        psci::CPU_OFF => Action::CpuOff,
        psci::CPU_ON_32 | psci::CPU_ON_64 => {
            let target = arg(0) & MPIDR_AFF_MASK;
            match (0..cpus.count()).find(|&n| cpus.mpidr(n) & MPIDR_AFF_MASK == target) {
                None => r(ret::INVALID_PARAMETERS),
                Some(n) if cpus.is_on(n) => r(ret::ALREADY_ON),
                Some(_) if !cpus.is_ram(arg(1)) => r(ret::INVALID_ADDRESS),
                Some(n) => Action::CpuOn {
                    target: n,
                    entry: arg(1),
                    context: arg(2),
                },
            }
        }
        psci::AFFINITY_INFO_32 | psci::AFFINITY_INFO_64 => {
            Action::Return(affinity_info(arg(0), arg(1), cpus))
        }
        psci::MIGRATE_INFO_TYPE => Action::Return(psci::MIGRATE_TOS_NOT_PRESENT),
        psci::SYSTEM_OFF => Action::SystemOff,
        psci::SYSTEM_RESET => Action::SystemReset,
        psci::SMCCC_VERSION => Action::Return(psci::SMCCC_VERSION_1_1),
        // No architectural workarounds (ARCH_WORKAROUND_1/2/3) are offered.
        psci::SMCCC_ARCH_FEATURES => Action::Return(psci::SMCCC_RET_NOT_SUPPORTED),
        _ => Action::Return(psci::SMCCC_RET_NOT_SUPPORTED),
    }
}

/// PSCI_FEATURES: SUCCESS (0; for CPU_SUSPEND, feature flags 0 = original power-state
/// format, platform-coordinated) for every function handled here, NOT_SUPPORTED else.
/// Linux asks for SMCCC_VERSION here before it calls it.
fn features(fid: u32) -> u64 {
    match fid {
        psci::PSCI_VERSION
        | psci::PSCI_FEATURES
        | psci::CPU_SUSPEND_32
        | psci::CPU_SUSPEND_64
        | psci::CPU_OFF
        | psci::CPU_ON_32
        | psci::CPU_ON_64
        | psci::AFFINITY_INFO_32
        | psci::AFFINITY_INFO_64
        | psci::MIGRATE_INFO_TYPE
        | psci::SYSTEM_OFF
        | psci::SYSTEM_RESET
        | psci::SMCCC_VERSION => ret::SUCCESS as u64,
        _ => ret::NOT_SUPPORTED as u64,
    }
}

/// AFFINITY_INFO: ON if any vCPU whose affinity matches `target` at and above
/// `lowest_level` is on, else OFF.
fn affinity_info(target: u64, lowest_level: u64, cpus: &dyn Cpus) -> u64 {
    const AFF: [u64; 4] = [0xff, 0xff00, 0xff_0000, 0xff_0000_0000];
    if lowest_level >= AFF.len() as u64 {
        return ret::INVALID_PARAMETERS as u64;
    }
    let levels = &AFF[lowest_level as usize..];
    let mask: u64 = levels.iter().fold(0, |m, a| m | a);
    let any_on = (0..cpus.count()).any(|n| cpus.mpidr(n) & mask == target & mask && cpus.is_on(n));
    if any_on {
        psci::AFFINITY_ON
    } else {
        psci::AFFINITY_OFF
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_platform::vcpu_mpidr;

    struct Table(Vec<bool>);
    impl Cpus for Table {
        fn is_ram(&self, addr: u64) -> bool {
            (4..0x1_0000_0000).contains(&addr)
        }
        fn count(&self) -> u32 {
            self.0.len() as u32
        }
        fn mpidr(&self, n: u32) -> u64 {
            vcpu_mpidr(n)
        }
        fn is_on(&self, n: u32) -> bool {
            self.0[n as usize]
        }
    }

    fn call(fid: u32, a: &[u64], t: &Table) -> Action {
        let mut args = [0u64; 7];
        args[..a.len()].copy_from_slice(a);
        handle(u64::from(fid), &args, t)
    }

    const NEG: fn(i64) -> Action = |c| Action::Return(c as u64);

    #[test]
    fn versions_and_features() {
        let t = Table(vec![true]);
        assert_eq!(call(psci::PSCI_VERSION, &[], &t), Action::Return(0x1_0000));
        assert_eq!(call(psci::SMCCC_VERSION, &[], &t), Action::Return(0x1_0001));
        assert_eq!(call(psci::SMCCC_ARCH_FEATURES, &[0x8000_8000], &t), NEG(-1));
        for f in [psci::CPU_ON_64, psci::SYSTEM_OFF, psci::SMCCC_VERSION] {
            assert_eq!(
                call(psci::PSCI_FEATURES, &[f.into()], &t),
                Action::Return(0)
            );
        }
        assert_eq!(call(psci::PSCI_FEATURES, &[0x8400_0010], &t), NEG(-1));
        assert_eq!(
            call(psci::MIGRATE_INFO_TYPE, &[], &t),
            Action::Return(psci::MIGRATE_TOS_NOT_PRESENT)
        );
        assert_eq!(call(psci::CPU_SUSPEND_64, &[0, 0x1234], &t), NEG(0));
        // Unknown ids, including vendor ranges, answer NOT_SUPPORTED.
        assert_eq!(call(0xc200_0000, &[], &t), NEG(-1));
        assert_eq!(call(0x8400_0007, &[], &t), NEG(-1));
        // The upper half of x0 is not part of the function id.
        assert_eq!(
            handle(
                0xffff_ffff_0000_0000 | u64::from(psci::PSCI_VERSION),
                &[0; 7],
                &t
            ),
            Action::Return(0x1_0000)
        );
    }

    /// PSCI_FEATURES says SUCCESS exactly for the functions `handle` implements, over
    /// the whole PSCI range (32- and 64-bit) and SMCCC_VERSION.
    #[test]
    fn features_match_what_is_implemented() {
        let t = Table(vec![true, false]);
        let mut ids: Vec<u32> = (0..0x20).map(|n| 0x8400_0000 + n).collect();
        ids.extend((0..0x20).map(|n| 0xc400_0000 + n));
        ids.push(psci::SMCCC_VERSION);
        let mut supported = Vec::new();
        for fid in ids {
            // Arguments valid for every call (PSCI_FEATURES asks about PSCI_VERSION).
            let a = if fid == psci::PSCI_FEATURES {
                [psci::PSCI_VERSION.into(), 0, 0]
            } else {
                [1, 0x8000_0000, 0]
            };
            let implemented = call(fid, &a, &t) != NEG(-1);
            let feature = call(psci::PSCI_FEATURES, &[fid.into()], &t);
            assert_eq!(
                feature,
                if implemented { NEG(0) } else { NEG(-1) },
                "PSCI_FEATURES({fid:#x})"
            );
            if implemented {
                supported.push(fid);
            }
        }
        // The calls bhyve(8) lists, plus CPU_SUSPEND (a standby that returns at once).
        assert_eq!(
            supported,
            [
                psci::PSCI_VERSION,
                psci::CPU_SUSPEND_32,
                psci::CPU_OFF,
                psci::CPU_ON_32,
                psci::AFFINITY_INFO_32,
                psci::MIGRATE_INFO_TYPE,
                psci::SYSTEM_OFF,
                psci::SYSTEM_RESET,
                psci::PSCI_FEATURES,
                psci::CPU_SUSPEND_64,
                psci::CPU_ON_64,
                psci::AFFINITY_INFO_64,
                psci::SMCCC_VERSION,
            ]
        );
    }

    #[test]
    fn cpu_on() {
        let t = Table(vec![true, false, false]);
        assert_eq!(
            call(psci::CPU_ON_64, &[1, 0x8020_0000, 0xabcd], &t),
            Action::CpuOn {
                target: 1,
                entry: 0x8020_0000,
                context: 0xabcd
            }
        );
        // With bit 31 set, as MPIDR_EL1 reads.
        assert_eq!(
            call(psci::CPU_ON_64, &[0x8000_0002, 4, 5], &t),
            Action::CpuOn {
                target: 2,
                entry: 4,
                context: 5
            }
        );
        assert_eq!(call(psci::CPU_ON_64, &[0, 4, 5], &t), NEG(-4));
        assert_eq!(call(psci::CPU_ON_64, &[3, 4, 5], &t), NEG(-2));
        assert_eq!(call(psci::CPU_ON_64, &[0x100, 4, 5], &t), NEG(-2));
        // An entry point outside RAM.
        assert_eq!(call(psci::CPU_ON_64, &[1, 0, 5], &t), NEG(-9));
        assert_eq!(call(psci::CPU_ON_64, &[1, 0x1_0000_0000, 5], &t), NEG(-9));
        // SMC32: 32-bit arguments.
        assert_eq!(
            call(
                psci::CPU_ON_32,
                &[0xdead_0000_0000_0001, 0xffff_ffff_8000_0000, 0x1_0000_0007],
                &t
            ),
            Action::CpuOn {
                target: 1,
                entry: 0x8000_0000,
                context: 7
            }
        );
    }

    #[test]
    fn affinity_info() {
        let t = Table(vec![true, false]);
        assert_eq!(
            call(psci::AFFINITY_INFO_64, &[0, 0], &t),
            Action::Return(psci::AFFINITY_ON)
        );
        assert_eq!(
            call(psci::AFFINITY_INFO_64, &[1, 0], &t),
            Action::Return(psci::AFFINITY_OFF)
        );
        // Level 1: every CPU of cluster 0, and one is on.
        assert_eq!(
            call(psci::AFFINITY_INFO_64, &[1, 1], &t),
            Action::Return(psci::AFFINITY_ON)
        );
        assert_eq!(call(psci::AFFINITY_INFO_64, &[0, 4], &t), NEG(-2));
        assert_eq!(
            call(psci::AFFINITY_INFO_32, &[0x1_0000_0000, 0], &t),
            Action::Return(psci::AFFINITY_ON),
            "32-bit arguments drop the upper half"
        );
    }

    #[test]
    fn power() {
        let t = Table(vec![true]);
        assert_eq!(call(psci::CPU_OFF, &[], &t), Action::CpuOff);
        assert_eq!(call(psci::SYSTEM_OFF, &[], &t), Action::SystemOff);
        assert_eq!(call(psci::SYSTEM_RESET, &[], &t), Action::SystemReset);
    }
}
