//! `enum vm_exitcode` and `enum vm_suspend_how` (FreeBSD 15.0 `machine/vmm.h`).

/// Why VM_RUN returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum ExitCode {
    /// Nothing for userspace to do (a host interrupt, a kick): run again.
    Bogus = 0,
    /// An MMIO access outside kernel-emulated devices, decoded (`u.inst_emul`).
    InstEmul = 1,
    /// A system register access the kernel does not emulate (`u.reg_emul`).
    RegEmul = 2,
    Hvc = 3,
    /// The VM was suspended (`u.suspended.how`).
    Suspended = 4,
    /// An exception the kernel could not classify (`u.hyp`).
    Hyp = 5,
    Wfi = 6,
    Paging = 7,
    /// An SMCCC call by HVC or SMC (`u.smccc_call`): PSCI lives in userspace.
    Smccc = 8,
    Debug = 9,
    Brk = 10,
    Ss = 11,
}
pub const VM_EXITCODE_MAX: i32 = 12;

impl TryFrom<i32> for ExitCode {
    type Error = i32;
    fn try_from(n: i32) -> Result<Self, i32> {
        Ok(match n {
            0 => ExitCode::Bogus,
            1 => ExitCode::InstEmul,
            2 => ExitCode::RegEmul,
            3 => ExitCode::Hvc,
            4 => ExitCode::Suspended,
            5 => ExitCode::Hyp,
            6 => ExitCode::Wfi,
            7 => ExitCode::Paging,
            8 => ExitCode::Smccc,
            9 => ExitCode::Debug,
            10 => ExitCode::Brk,
            11 => ExitCode::Ss,
            _ => return Err(n),
        })
    }
}

/// How a VM was suspended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum SuspendHow {
    None = 0,
    Reset = 1,
    Poweroff = 2,
    Halt = 3,
    /// The VM is being destroyed (bhyvectl --destroy while bhyve runs it).
    Destroy = 4,
}
pub const VM_SUSPEND_LAST: i32 = 5;

impl TryFrom<i32> for SuspendHow {
    type Error = i32;
    fn try_from(n: i32) -> Result<Self, i32> {
        Ok(match n {
            0 => SuspendHow::None,
            1 => SuspendHow::Reset,
            2 => SuspendHow::Poweroff,
            3 => SuspendHow::Halt,
            4 => SuspendHow::Destroy,
            _ => return Err(n),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_round_trip() {
        for n in 0..VM_EXITCODE_MAX {
            assert_eq!(ExitCode::try_from(n).map(|c| c as i32), Ok(n));
        }
        assert_eq!(ExitCode::try_from(VM_EXITCODE_MAX), Err(12));
        for n in 0..VM_SUSPEND_LAST {
            assert_eq!(SuspendHow::try_from(n).map(|c| c as i32), Ok(n));
        }
        assert!(SuspendHow::try_from(-1).is_err());
    }
}
