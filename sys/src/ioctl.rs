//! FreeBSD ioctl request encoding (`sys/ioccom.h`) and the vmm(4) request numbers
//! (`machine/vmm_dev.h`, `dev/vmm/vmm_dev.h`, FreeBSD 15.0).
//!
//! A request word is `inout | (len & IOCPARM_MASK) << 16 | group << 8 | num`. The kernel
//! copies `len` bytes in (IOC_IN) before the handler and out (IOC_OUT) after it, so the
//! length in the word is the size of the argument structure. The testbed channel sends
//! the same word and the same struct bytes.

use crate::abi::*;
use core::mem::size_of;

/// `IOCPARM_SHIFT`: bits of the length field.
pub const IOCPARM_SHIFT: u32 = 13;
/// `IOCPARM_MASK`: the largest argument an ioctl can carry (8191 bytes).
pub const IOCPARM_MASK: u64 = (1 << IOCPARM_SHIFT) - 1;
pub const IOC_VOID: u64 = 0x2000_0000;
pub const IOC_OUT: u64 = 0x4000_0000;
pub const IOC_IN: u64 = 0x8000_0000;
pub const IOC_INOUT: u64 = IOC_IN | IOC_OUT;
pub const IOC_DIRMASK: u64 = IOC_VOID | IOC_OUT | IOC_IN;

/// `_IOC(inout, group, num, len)`.
pub const fn ioc(inout: u64, group: u8, num: u8, len: usize) -> u64 {
    inout | ((len as u64 & IOCPARM_MASK) << 16) | ((group as u64) << 8) | num as u64
}
pub const fn io(group: u8, num: u8) -> u64 {
    ioc(IOC_VOID, group, num, 0)
}
pub const fn ior<T>(group: u8, num: u8) -> u64 {
    ioc(IOC_OUT, group, num, size_of::<T>())
}
pub const fn iow<T>(group: u8, num: u8) -> u64 {
    ioc(IOC_IN, group, num, size_of::<T>())
}
pub const fn iowr<T>(group: u8, num: u8) -> u64 {
    ioc(IOC_INOUT, group, num, size_of::<T>())
}

/// `IOCPARM_LEN(cmd)`: the argument length a request word carries.
pub const fn iocparm_len(cmd: u64) -> usize {
    ((cmd >> 16) & IOCPARM_MASK) as usize
}
/// The group byte of a request word.
pub const fn ioc_group(cmd: u64) -> u8 {
    (cmd >> 8) as u8
}
/// The number byte of a request word.
pub const fn ioc_num(cmd: u64) -> u8 {
    cmd as u8
}

/// Group of the per-VM requests on /dev/vmm/NAME.
pub const VMM_GROUP: u8 = b'v';
/// Group of the control requests on /dev/vmmctl.
pub const VMMCTL_GROUP: u8 = b'V';

/// `IOCNUM_*` values (`machine/vmm_dev.h`).
pub mod nr {
    pub const ABIVERS: u8 = 0;
    pub const RUN: u8 = 1;
    pub const SET_CAPABILITY: u8 = 2;
    pub const GET_CAPABILITY: u8 = 3;
    pub const SUSPEND: u8 = 4;
    pub const REINIT: u8 = 5;
    pub const GET_GPA_PMAP: u8 = 12;
    pub const GLA2GPA_NOFAULT: u8 = 13;
    pub const ALLOC_MEMSEG: u8 = 14;
    pub const GET_MEMSEG: u8 = 15;
    pub const MMAP_MEMSEG: u8 = 16;
    pub const MMAP_GETNEXT: u8 = 17;
    pub const MUNMAP_MEMSEG: u8 = 18;
    pub const SET_REGISTER: u8 = 20;
    pub const GET_REGISTER: u8 = 21;
    pub const SET_REGISTER_SET: u8 = 24;
    pub const GET_REGISTER_SET: u8 = 25;
    pub const VM_STATS: u8 = 50;
    pub const VM_STAT_DESC: u8 = 51;
    pub const SET_TOPOLOGY: u8 = 63;
    pub const GET_TOPOLOGY: u8 = 64;
    pub const ASSERT_IRQ: u8 = 80;
    pub const DEASSERT_IRQ: u8 = 81;
    pub const RAISE_MSI: u8 = 82;
    pub const INJECT_EXCEPTION: u8 = 83;
    pub const ACTIVATE_CPU: u8 = 90;
    pub const GET_CPUSET: u8 = 91;
    pub const SUSPEND_CPU: u8 = 92;
    pub const RESUME_CPU: u8 = 93;
    pub const GET_VGIC_VERSION: u8 = 110;
    pub const ATTACH_VGIC: u8 = 111;
    /// Our extension (not in FreeBSD): list the VMs the kernel holds, on /dev/vmmctl.
    pub const VMMCTL_VM_LIST: u8 = 64;
    /// Our extensions (not in FreeBSD), on /dev/vmm/NAME: device registers the kernel
    /// handles. Far above FreeBSD's numbers, so a future one does not collide.
    pub const SET_MMIO_SHORTCUT: u8 = 200;
    pub const GET_MMIO_STORES: u8 = 201;
}

use VMM_GROUP as G;
pub const VM_RUN: u64 = iowr::<VmRun>(G, nr::RUN);
pub const VM_SET_CAPABILITY: u64 = iow::<VmCapability>(G, nr::SET_CAPABILITY);
pub const VM_GET_CAPABILITY: u64 = iowr::<VmCapability>(G, nr::GET_CAPABILITY);
pub const VM_SUSPEND: u64 = iow::<VmSuspend>(G, nr::SUSPEND);
pub const VM_REINIT: u64 = io(G, nr::REINIT);
pub const VM_GLA2GPA_NOFAULT: u64 = iowr::<VmGla2Gpa>(G, nr::GLA2GPA_NOFAULT);
pub const VM_ALLOC_MEMSEG: u64 = iow::<VmMemseg>(G, nr::ALLOC_MEMSEG);
pub const VM_GET_MEMSEG: u64 = iowr::<VmMemseg>(G, nr::GET_MEMSEG);
pub const VM_MMAP_MEMSEG: u64 = iow::<VmMemmap>(G, nr::MMAP_MEMSEG);
pub const VM_MMAP_GETNEXT: u64 = iowr::<VmMemmap>(G, nr::MMAP_GETNEXT);
pub const VM_MUNMAP_MEMSEG: u64 = iow::<VmMunmap>(G, nr::MUNMAP_MEMSEG);
pub const VM_SET_REGISTER: u64 = iow::<VmRegister>(G, nr::SET_REGISTER);
pub const VM_GET_REGISTER: u64 = iowr::<VmRegister>(G, nr::GET_REGISTER);
pub const VM_SET_REGISTER_SET: u64 = iow::<VmRegisterSet>(G, nr::SET_REGISTER_SET);
pub const VM_GET_REGISTER_SET: u64 = iowr::<VmRegisterSet>(G, nr::GET_REGISTER_SET);
pub const VM_STATS: u64 = iowr::<VmStats>(G, nr::VM_STATS);
pub const VM_STAT_DESC: u64 = iowr::<VmStatDesc>(G, nr::VM_STAT_DESC);
pub const VM_SET_TOPOLOGY: u64 = iow::<VmCpuTopology>(G, nr::SET_TOPOLOGY);
pub const VM_GET_TOPOLOGY: u64 = ior::<VmCpuTopology>(G, nr::GET_TOPOLOGY);
pub const VM_ASSERT_IRQ: u64 = iow::<VmIrq>(G, nr::ASSERT_IRQ);
pub const VM_DEASSERT_IRQ: u64 = iow::<VmIrq>(G, nr::DEASSERT_IRQ);
pub const VM_RAISE_MSI: u64 = iow::<VmMsi>(G, nr::RAISE_MSI);
pub const VM_INJECT_EXCEPTION: u64 = iow::<VmException>(G, nr::INJECT_EXCEPTION);
pub const VM_ACTIVATE_CPU: u64 = iow::<VmActivateCpu>(G, nr::ACTIVATE_CPU);
/// FreeBSD declares VM_GET_CPUS as `_IOW` although the kernel writes through `cpus`.
pub const VM_GET_CPUS: u64 = iow::<VmCpuset>(G, nr::GET_CPUSET);
pub const VM_SUSPEND_CPU: u64 = iow::<VmActivateCpu>(G, nr::SUSPEND_CPU);
pub const VM_RESUME_CPU: u64 = iow::<VmActivateCpu>(G, nr::RESUME_CPU);
pub const VM_GET_VGIC_VERSION: u64 = ior::<VmVgicVersion>(G, nr::GET_VGIC_VERSION);
pub const VM_ATTACH_VGIC: u64 = iow::<VmVgicDescr>(G, nr::ATTACH_VGIC);
/// Our extension: `_IOW('v', 200, struct vm_mmio_shortcut)`.
pub const VM_SET_MMIO_SHORTCUT: u64 = iow::<VmMmioShortcut>(G, nr::SET_MMIO_SHORTCUT);
/// Our extension: `_IOR('v', 201, struct vm_mmio_stores)`.
pub const VM_GET_MMIO_STORES: u64 = ior::<VmMmioStores>(G, nr::GET_MMIO_STORES);

pub const VMMCTL_VM_CREATE: u64 = iowr::<VmmctlVmCreate>(VMMCTL_GROUP, 0);
pub const VMMCTL_VM_DESTROY: u64 = iowr::<VmmctlVmDestroy>(VMMCTL_GROUP, 1);
/// Our extension: `_IOWR('V', 64, struct vmmctl_vm_list)`.
pub const VMMCTL_VM_LIST: u64 = iowr::<VmmctlVmList>(VMMCTL_GROUP, nr::VMMCTL_VM_LIST);

/// Every request /dev/vmm/NAME answers.
pub const VM_REQUESTS: [u64; 31] = [
    VM_RUN,
    VM_SET_CAPABILITY,
    VM_GET_CAPABILITY,
    VM_SUSPEND,
    VM_REINIT,
    VM_GLA2GPA_NOFAULT,
    VM_ALLOC_MEMSEG,
    VM_GET_MEMSEG,
    VM_MMAP_MEMSEG,
    VM_MMAP_GETNEXT,
    VM_MUNMAP_MEMSEG,
    VM_SET_REGISTER,
    VM_GET_REGISTER,
    VM_SET_REGISTER_SET,
    VM_GET_REGISTER_SET,
    VM_STATS,
    VM_STAT_DESC,
    VM_SET_TOPOLOGY,
    VM_GET_TOPOLOGY,
    VM_ASSERT_IRQ,
    VM_DEASSERT_IRQ,
    VM_RAISE_MSI,
    VM_INJECT_EXCEPTION,
    VM_ACTIVATE_CPU,
    VM_GET_CPUS,
    VM_SUSPEND_CPU,
    VM_RESUME_CPU,
    VM_GET_VGIC_VERSION,
    VM_ATTACH_VGIC,
    VM_SET_MMIO_SHORTCUT,
    VM_GET_MMIO_STORES,
];

/// Every request /dev/vmmctl answers.
pub const VMMCTL_REQUESTS: [u64; 3] = [VMMCTL_VM_CREATE, VMMCTL_VM_DESTROY, VMMCTL_VM_LIST];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lists_are_distinct() {
        let mut all = VM_REQUESTS.to_vec();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), VM_REQUESTS.len());
    }

    #[test]
    fn request_words_match_freebsd() {
        // Values computed by hand from sys/ioccom.h for FreeBSD 15.0 LP64.
        assert_eq!(VM_RUN, 0xC020_7601);
        assert_eq!(VM_REINIT, 0x2000_7605);
        assert_eq!(VM_ALLOC_MEMSEG, 0x8038_760E);
        assert_eq!(VM_SET_REGISTER, 0x8010_7614);
        assert_eq!(VM_GET_REGISTER, 0xC010_7615);
        assert_eq!(VM_SET_REGISTER_SET, 0x8018_7618);
        assert_eq!(VM_STATS, 0xC220_7632);
        assert_eq!(VM_GET_TOPOLOGY, 0x4008_7640);
        assert_eq!(VM_ASSERT_IRQ, 0x8004_7650);
        assert_eq!(VM_INJECT_EXCEPTION, 0x8018_7653);
        assert_eq!(VM_ACTIVATE_CPU, 0x8004_765A);
        assert_eq!(VM_GET_CPUS, 0x8010_765B);
        assert_eq!(VM_GET_VGIC_VERSION, 0x4008_766E);
        assert_eq!(VM_ATTACH_VGIC, 0x8028_766F);
        assert_eq!(VMMCTL_VM_CREATE, 0xC128_5600);
        assert_eq!(VMMCTL_VM_DESTROY, 0xC128_5601);
        // Ours: _IOW('v', 200, 24 bytes), _IOR('v', 201, 2056 bytes).
        assert_eq!(VM_SET_MMIO_SHORTCUT, 0x8018_76C8);
        assert_eq!(VM_GET_MMIO_STORES, 0x4808_76C9);
    }

    #[test]
    fn fields_decode() {
        assert_eq!(iocparm_len(VM_RUN), 32);
        assert_eq!(ioc_group(VM_RUN), b'v');
        assert_eq!(ioc_num(VM_RUN), 1);
        assert_eq!(VM_RUN & IOC_DIRMASK, IOC_INOUT);
    }
}
