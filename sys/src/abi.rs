//! The structures /dev/vmm requests carry, byte for byte as FreeBSD 15.0 lays them out on
//! arm64 (LP64). Pointer members are `u64` user addresses: the kernel never dereferences
//! them, it copies through them (copyin/copyout), and a fixed-width integer keeps the
//! layout identical whichever host compiles this crate.
//!
//! C `enum` members are kept as raw `i32`/`u32`: values arriving from the other side of
//! the boundary are checked with the `TryFrom` conversions in [`crate::reg`] and
//! [`crate::exit`], never transmuted.

use crate::{VM_MAX_NAMELEN, VM_MAX_SUFFIXLEN};

/// `struct vm_memmap` (`machine/vmm_dev.h`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmMemmap {
    pub gpa: u64,
    pub segid: i32,
    pub _pad0: u32,
    pub segoff: u64,
    pub len: u64,
    pub prot: i32,
    pub flags: i32,
}
pub const VM_MEMMAP_F_WIRED: i32 = 0x01;
/// `PROT_READ`, `PROT_WRITE`, `PROT_EXEC` as FreeBSD defines them (`sys/mman.h`).
pub const PROT_READ: i32 = 1;
pub const PROT_WRITE: i32 = 2;
pub const PROT_EXEC: i32 = 4;
pub const PROT_ALL: i32 = PROT_READ | PROT_WRITE | PROT_EXEC;

/// `struct vm_munmap`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmMunmap {
    pub gpa: u64,
    pub len: u64,
}

/// `struct vm_memseg`, FreeBSD 15.0 (with the NUMA domain-set fields).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmMemseg {
    pub segid: i32,
    pub _pad0: u32,
    pub len: u64,
    /// NUL-terminated; empty for guest system memory, a name for device memory.
    pub name: [u8; VM_MAX_SUFFIXLEN + 1],
    /// `domainset_t *`: NULL for the default policy.
    pub ds_mask: u64,
    pub ds_mask_size: u64,
    pub ds_policy: i32,
    pub _pad1: u32,
}

/// `struct vm_register`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmRegister {
    pub cpuid: i32,
    pub regnum: i32,
    pub regval: u64,
}

/// `struct vm_register_set`: `regnums` and `regvals` point to `count` entries each.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmRegisterSet {
    pub cpuid: i32,
    pub count: u32,
    pub regnums: u64,
    pub regvals: u64,
}
/// Upper bound on `vm_register_set.count` (FreeBSD: `VM_REG_LAST`).
pub const VM_REGISTER_SET_MAX: u32 = crate::reg::VM_REG_LAST;

/// `struct vm_run`: the kernel copies the exit out to `vm_exit` and, for suspend or
/// debug exits, the CPU set to `cpuset` (`cpusetsize` bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmRun {
    pub cpuid: i32,
    pub _pad0: u32,
    pub cpuset: u64,
    pub cpusetsize: u64,
    pub vm_exit: u64,
}

/// `struct vm_exception`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmException {
    pub cpuid: i32,
    pub _pad0: u32,
    pub esr: u64,
    pub far: u64,
}

/// `struct vm_msi`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmMsi {
    pub msg: u64,
    pub addr: u64,
    pub bus: i32,
    pub slot: i32,
    pub func: i32,
    pub _pad0: u32,
}

/// `struct vm_capability`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmCapability {
    pub cpuid: i32,
    pub captype: i32,
    pub capval: i32,
    pub allcpus: i32,
}

/// `enum vm_cap_type`.
pub mod cap {
    pub const HALT_EXIT: i32 = 0;
    pub const PAUSE_EXIT: i32 = 1;
    pub const UNRESTRICTED_GUEST: i32 = 2;
    pub const BRK_EXIT: i32 = 3;
    pub const SS_EXIT: i32 = 4;
    pub const MASK_HWINTR: i32 = 5;
    pub const MAX: i32 = 6;
}

/// `struct timeval` on FreeBSD LP64.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeval {
    pub tv_sec: i64,
    pub tv_usec: i64,
}

/// `MAX_VM_STATS`.
pub const MAX_VM_STATS: usize = 64;

/// `struct vm_stats`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmStats {
    pub cpuid: i32,
    pub index: i32,
    pub num_entries: i32,
    pub _pad0: u32,
    pub tv: Timeval,
    pub statbuf: [u64; MAX_VM_STATS],
}
impl Default for VmStats {
    fn default() -> Self {
        VmStats {
            cpuid: 0,
            index: 0,
            num_entries: 0,
            _pad0: 0,
            tv: Timeval::default(),
            statbuf: [0; MAX_VM_STATS],
        }
    }
}

/// `struct vm_stat_desc`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmStatDesc {
    pub index: i32,
    pub desc: [u8; 128],
}
impl Default for VmStatDesc {
    fn default() -> Self {
        VmStatDesc {
            index: 0,
            desc: [0; 128],
        }
    }
}

/// `struct vm_suspend`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmSuspend {
    /// `enum vm_suspend_how`, see [`crate::exit::SuspendHow`].
    pub how: i32,
}

/// `struct vm_guest_paging`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmGuestPaging {
    pub ttbr0_addr: u64,
    pub ttbr1_addr: u64,
    pub tcr_el1: u64,
    pub tcr2_el1: u64,
    pub flags: i32,
    pub padding: i32,
}
pub const VM_GP_M_MASK: i32 = 0x1f;
pub const VM_GP_MMU_ENABLED: i32 = 1 << 5;

/// `struct vm_gla2gpa`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmGla2Gpa {
    pub vcpuid: i32,
    pub prot: i32,
    pub gla: u64,
    pub paging: VmGuestPaging,
    pub fault: i32,
    pub _pad0: u32,
    pub gpa: u64,
}

/// `struct vm_activate_cpu`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmActivateCpu {
    pub vcpuid: i32,
}

/// `struct vm_cpuset`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmCpuset {
    pub which: i32,
    pub cpusetsize: i32,
    pub cpus: u64,
}
pub const VM_ACTIVE_CPUS: i32 = 0;
pub const VM_SUSPENDED_CPUS: i32 = 1;
pub const VM_DEBUG_CPUS: i32 = 2;
/// `sizeof(cpuset_t)` on FreeBSD 15 (`CPU_MAXSIZE` 1024 bits).
pub const CPUSET_SIZE: usize = 128;

/// `struct vm_vgic_version`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmVgicVersion {
    pub version: u32,
    pub flags: u32,
}

/// The `v3_regs` member of `struct vm_vgic_descr`'s union (its only member).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VgicV3Regs {
    pub dist_start: u64,
    pub dist_size: u64,
    pub redist_start: u64,
    pub redist_size: u64,
}

/// `struct vm_vgic_descr`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmVgicDescr {
    pub ver: VmVgicVersion,
    pub v3_regs: VgicV3Regs,
}

/// `struct vm_irq`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmIrq {
    pub irq: u32,
}

/// `struct vm_cpu_topology`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmCpuTopology {
    pub sockets: u16,
    pub cores: u16,
    pub threads: u16,
    pub maxcpus: u16,
}

/// `struct vmmctl_vm_create` (`dev/vmm/vmm_dev.h`); `reserved` must be zero.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmctlVmCreate {
    pub name: [u8; VM_MAX_NAMELEN + 1],
    pub _pad0: [u8; 2],
    pub reserved: [i32; 16],
}
/// `struct vmmctl_vm_destroy`: same layout as create.
pub type VmmctlVmDestroy = VmmctlVmCreate;

impl VmmctlVmCreate {
    /// The request for `name`, or `None` if it does not fit (the caller validates the
    /// name's characters with [`crate::validate_vm_name`]).
    pub fn new(name: &[u8]) -> Option<Self> {
        if name.len() > VM_MAX_NAMELEN {
            return None;
        }
        let mut req = VmmctlVmCreate {
            name: [0; VM_MAX_NAMELEN + 1],
            _pad0: [0; 2],
            reserved: [0; 16],
        };
        req.name.get_mut(..name.len())?.copy_from_slice(name);
        Some(req)
    }
    /// The name up to its first NUL.
    pub fn name_bytes(&self) -> &[u8] {
        let end = self
            .name
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(self.name.len());
        self.name.get(..end).unwrap_or(&[])
    }
}

/// Our extension, `VMMCTL_VM_LIST` on /dev/vmmctl: the kernel writes the names of all
/// VMs, each NUL-terminated, into the user buffer `buf` of `buflen` bytes, and reports
/// how many there are and how many bytes they need (so a caller can retry larger).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmmctlVmList {
    pub buf: u64,
    pub buflen: u64,
    pub needed: u64,
    pub count: u32,
    pub reserved: u32,
}

/// Our extension, `VM_SET_MMIO_SHORTCUT` on /dev/vmm/NAME: a device register the
/// kernel handles without an INST_EMUL exit, by `flags`:
/// * [`MMIO_ANSWER_LOADS`]: a guest load of 1, 2 or 4 bytes at exactly `gpa` reads
///   `value` (its low bytes, as the load's width and sign extension take them); for a
///   register whose reads have no side effect and whose value only the device model
///   changes (a UART's flag register, polled before every byte), which the model sets
///   again whenever it changes;
/// * [`MMIO_BUFFER_STORES`]: the guest's 1-, 2- and 4-byte stores at exactly `gpa` are
///   queued for userspace to take with `VM_GET_MMIO_STORES`; for a register whose
///   stores the guest sees only through other registers and the interrupt line (a
///   UART's data register);
/// * both: a register that holds what the guest stored in it and does nothing else (a
///   UART's control register, saved and restored around every line): loads read
///   `value`, and each store, queued as above, makes it the stored bits `& mask`.
///
/// With neither flag, the kernel stops handling `gpa`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmMmioShortcut {
    pub gpa: u64,
    pub value: u32,
    pub flags: u32,
    pub mask: u32,
    pub _pad: u32,
}
/// [`VmMmioShortcut::flags`]: answer loads at `gpa` with `value`.
pub const MMIO_ANSWER_LOADS: u32 = 1;
/// [`VmMmioShortcut::flags`]: queue stores at `gpa`.
pub const MMIO_BUFFER_STORES: u32 = 2;

/// One store the kernel queued (see [`VmMmioShortcut`]), in the order the guest made
/// them, whichever vCPU made each.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmMmioStore {
    pub gpa: u64,
    pub value: u32,
    /// Bytes stored: 1, 2 or 4.
    pub size: u8,
    pub _pad: [u8; 3],
}
/// Stores the kernel queues for a VM before a store waits for userspace to take them.
pub const MMIO_STORES_MAX: usize = 128;

/// Our extension, `VM_GET_MMIO_STORES`: the kernel moves the VM's queued stores, oldest
/// first, into `stores` and says how many there are. While any is queued, every exit
/// to userspace is preceded by a BOGUS one (the exit itself comes with the next
/// VM_RUN), so a VMM that takes them at BOGUS emulates them before anything after them.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmMmioStores {
    pub count: u32,
    pub _pad: u32,
    pub stores: [VmMmioStore; MMIO_STORES_MAX],
}
impl Default for VmMmioStores {
    fn default() -> Self {
        VmMmioStores {
            count: 0,
            _pad: 0,
            stores: [VmMmioStore::default(); MMIO_STORES_MAX],
        }
    }
}

/// `struct vie`: the decoded data-abort syndrome of an INST_EMUL exit. In C the first
/// byte is the bit-field `access_size:4, sign_extend:1, dir:1, unused:2` (low bits first,
/// as clang allocates bit-fields on little-endian arm64 and amd64).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Vie {
    pub bits: u8,
    pub _pad: [u8; 3],
    /// `enum vm_reg_name`; `VM_REG_LAST` marks XZR/WZR (FreeBSD's encoding for Rt=31).
    pub reg: i32,
}
impl Vie {
    pub fn new(access_size: u8, sign_extend: bool, write: bool, reg: i32) -> Vie {
        let bits = (access_size & 0xf) | (u8::from(sign_extend) << 4) | (u8::from(write) << 5);
        Vie {
            bits,
            _pad: [0; 3],
            reg,
        }
    }
    /// Access size in bytes (1, 2, 4 or 8).
    pub fn access_size(&self) -> u8 {
        self.bits & 0xf
    }
    pub fn sign_extend(&self) -> bool {
        self.bits & 0x10 != 0
    }
    /// `VM_DIR_WRITE` when set.
    pub fn is_write(&self) -> bool {
        self.bits & 0x20 != 0
    }
}

/// `struct vre`: a trapped system-register access (REG_EMUL exit).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Vre {
    /// ESR_EL2 ISS with the direction bit, as FreeBSD stores it.
    pub inst_syndrome: u32,
    /// Bit 0: `dir` (1 = write, MSR).
    pub dir: u8,
    pub _pad: [u8; 3],
    pub reg: i32,
}
impl Vre {
    pub fn is_write(&self) -> bool {
        self.dir & 1 != 0
    }
}

pub const VM_DIR_READ: u8 = 0;
pub const VM_DIR_WRITE: u8 = 1;

/// `u.hyp` of `struct vm_exit`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitHyp {
    pub exception_nr: u32,
    pub pad: u32,
    pub esr_el2: u64,
    pub far_el2: u64,
    pub hpfar_el2: u64,
}

/// `u.reg_emul`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitRegEmul {
    pub vre: Vre,
}

/// `u.paging`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitPaging {
    pub gpa: u64,
    pub esr: u64,
}

/// `u.inst_emul`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitInstEmul {
    pub gpa: u64,
    pub paging: VmGuestPaging,
    pub vie: Vie,
}

/// `u.smccc_call`: x0 and x1..x7 of an HVC/SMC.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitSmccc {
    pub func_id: u64,
    pub args: [u64; 7],
}

/// `u.suspended`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitSuspended {
    pub how: i32,
}

/// The union `u` of `struct vm_exit`, 64 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub union ExitPayload {
    pub hyp: ExitHyp,
    pub reg_emul: ExitRegEmul,
    pub paging: ExitPaging,
    pub inst_emul: ExitInstEmul,
    pub smccc_call: ExitSmccc,
    pub suspended: ExitSuspended,
    /// The whole union as words: every bit pattern is valid for every member (they are
    /// all plain integers), so any member may be read after any other was written.
    pub raw: [u64; 8],
}

/// `struct vm_exit`, 80 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VmExit {
    /// `enum vm_exitcode`, see [`crate::exit::ExitCode`].
    pub exitcode: i32,
    pub inst_length: i32,
    pub pc: u64,
    pub u: ExitPayload,
}

impl Default for VmExit {
    fn default() -> Self {
        VmExit {
            exitcode: 0,
            inst_length: 0,
            pc: 0,
            u: ExitPayload { raw: [0; 8] },
        }
    }
}

impl core::fmt::Debug for VmExit {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // SAFETY: `raw` covers the whole union and every member is plain integers, so
        // reading it is valid whichever member was written.
        let raw = unsafe { self.u.raw };
        f.debug_struct("VmExit")
            .field("exitcode", &self.exitcode)
            .field("inst_length", &self.inst_length)
            .field("pc", &format_args!("{:#x}", self.pc))
            .field("u", &raw)
            .finish()
    }
}

/// Views a `#[repr(C)]` ABI structure as bytes and back. Implemented only for the
/// structures above, which have no invalid bit patterns (integers, arrays of integers,
/// and a union of such), so any byte string of the right length is a valid value.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, `Copy`, valid for every bit pattern, and have no
/// implicit padding (padding is declared as `_pad` fields).
pub unsafe trait Pod: Copy + 'static {
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: Self is repr(C) plain data with every padding byte spelled out as a
        // field (the layout tests check there is none left), so all bytes are
        // initialised; the slice covers exactly the value and lives as long as the borrow.
        unsafe {
            core::slice::from_raw_parts(
                self as *const Self as *const u8,
                core::mem::size_of::<Self>(),
            )
        }
    }
    /// A value with every byte zero.
    fn zeroed() -> Self {
        // SAFETY: all-zero is a valid bit pattern per the trait's contract.
        unsafe { core::mem::zeroed() }
    }
    /// The value held in `bytes`, or `None` if the length differs.
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != core::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: the length matches and every bit pattern is valid per the trait's
        // contract; read_unaligned copes with any alignment of `bytes`.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr() as *const Self) })
    }
    /// Overwrites the value from `bytes`; false (value unchanged) if the length differs.
    fn copy_from_bytes(&mut self, bytes: &[u8]) -> bool {
        match Self::from_bytes(bytes) {
            Some(v) => {
                *self = v;
                true
            }
            None => false,
        }
    }
}

macro_rules! pod {
    ($($t:ty),* $(,)?) => {
        // SAFETY: each listed type is repr(C), Copy, and built only from integers,
        // integer arrays, other listed types, or the all-integer ExitPayload union.
        $(unsafe impl Pod for $t {})*
    };
}
pod!(
    VmMemmap,
    VmMunmap,
    VmMemseg,
    VmRegister,
    VmRegisterSet,
    VmRun,
    VmException,
    VmMsi,
    VmCapability,
    Timeval,
    VmStats,
    VmStatDesc,
    VmSuspend,
    VmGuestPaging,
    VmGla2Gpa,
    VmActivateCpu,
    VmCpuset,
    VmVgicVersion,
    VgicV3Regs,
    VmVgicDescr,
    VmIrq,
    VmCpuTopology,
    VmmctlVmCreate,
    VmmctlVmList,
    VmMmioShortcut,
    VmMmioStore,
    VmMmioStores,
    Vie,
    Vre,
    ExitHyp,
    ExitRegEmul,
    ExitPaging,
    ExitInstEmul,
    ExitSmccc,
    ExitSuspended,
    VmExit,
    u32,
    u64,
    i32,
);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    // Sizes and offsets from FreeBSD 15.0's headers on LP64 (arm64), worked out by hand
    // from the C declarations; see docs/ABI.md.
    #[test]
    fn memory_structs() {
        assert_eq!(size_of::<VmMemmap>(), 40);
        assert_eq!(offset_of!(VmMemmap, gpa), 0);
        assert_eq!(offset_of!(VmMemmap, segid), 8);
        assert_eq!(offset_of!(VmMemmap, segoff), 16);
        assert_eq!(offset_of!(VmMemmap, len), 24);
        assert_eq!(offset_of!(VmMemmap, prot), 32);
        assert_eq!(offset_of!(VmMemmap, flags), 36);
        assert_eq!(size_of::<VmMunmap>(), 16);
        assert_eq!(size_of::<VmMemseg>(), 56);
        assert_eq!(offset_of!(VmMemseg, segid), 0);
        assert_eq!(offset_of!(VmMemseg, len), 8);
        assert_eq!(offset_of!(VmMemseg, name), 16);
        assert_eq!(offset_of!(VmMemseg, ds_mask), 32);
        assert_eq!(offset_of!(VmMemseg, ds_mask_size), 40);
        assert_eq!(offset_of!(VmMemseg, ds_policy), 48);
    }

    #[test]
    fn register_and_run_structs() {
        assert_eq!(size_of::<VmRegister>(), 16);
        assert_eq!(offset_of!(VmRegister, regnum), 4);
        assert_eq!(offset_of!(VmRegister, regval), 8);
        assert_eq!(size_of::<VmRegisterSet>(), 24);
        assert_eq!(offset_of!(VmRegisterSet, count), 4);
        assert_eq!(offset_of!(VmRegisterSet, regnums), 8);
        assert_eq!(offset_of!(VmRegisterSet, regvals), 16);
        assert_eq!(size_of::<VmRun>(), 32);
        assert_eq!(offset_of!(VmRun, cpuset), 8);
        assert_eq!(offset_of!(VmRun, cpusetsize), 16);
        assert_eq!(offset_of!(VmRun, vm_exit), 24);
        assert_eq!(size_of::<VmException>(), 24);
        assert_eq!(offset_of!(VmException, esr), 8);
        assert_eq!(offset_of!(VmException, far), 16);
        assert_eq!(size_of::<VmMsi>(), 32);
        assert_eq!(offset_of!(VmMsi, bus), 16);
        assert_eq!(offset_of!(VmMsi, func), 24);
        assert_eq!(size_of::<VmCapability>(), 16);
        assert_eq!(offset_of!(VmCapability, allcpus), 12);
    }

    #[test]
    fn misc_structs() {
        assert_eq!(size_of::<VmStats>(), 544);
        assert_eq!(offset_of!(VmStats, num_entries), 8);
        assert_eq!(offset_of!(VmStats, tv), 16);
        assert_eq!(offset_of!(VmStats, statbuf), 32);
        assert_eq!(size_of::<VmStatDesc>(), 132);
        assert_eq!(offset_of!(VmStatDesc, desc), 4);
        assert_eq!(size_of::<VmSuspend>(), 4);
        assert_eq!(size_of::<VmGuestPaging>(), 40);
        assert_eq!(offset_of!(VmGuestPaging, flags), 32);
        assert_eq!(size_of::<VmGla2Gpa>(), 72);
        assert_eq!(offset_of!(VmGla2Gpa, gla), 8);
        assert_eq!(offset_of!(VmGla2Gpa, paging), 16);
        assert_eq!(offset_of!(VmGla2Gpa, fault), 56);
        assert_eq!(offset_of!(VmGla2Gpa, gpa), 64);
        assert_eq!(size_of::<VmActivateCpu>(), 4);
        assert_eq!(size_of::<VmCpuset>(), 16);
        assert_eq!(offset_of!(VmCpuset, cpus), 8);
        assert_eq!(size_of::<VmVgicVersion>(), 8);
        assert_eq!(size_of::<VmVgicDescr>(), 40);
        assert_eq!(offset_of!(VmVgicDescr, v3_regs), 8);
        assert_eq!(size_of::<VmIrq>(), 4);
        assert_eq!(size_of::<VmCpuTopology>(), 8);
        assert_eq!(offset_of!(VmCpuTopology, maxcpus), 6);
        assert_eq!(size_of::<VmmctlVmCreate>(), 296);
        assert_eq!(offset_of!(VmmctlVmCreate, reserved), 232);
        assert_eq!(size_of::<VmmctlVmList>(), 32);
        assert_eq!(size_of::<VmMmioShortcut>(), 24);
        assert_eq!(offset_of!(VmMmioShortcut, flags), 12);
        assert_eq!(offset_of!(VmMmioShortcut, mask), 16);
        assert_eq!(size_of::<VmMmioStore>(), 16);
        assert_eq!(offset_of!(VmMmioStore, size), 12);
        assert_eq!(size_of::<VmMmioStores>(), 8 + 16 * MMIO_STORES_MAX);
    }

    #[test]
    fn vm_exit_layout() {
        assert_eq!(size_of::<VmExit>(), 80);
        assert_eq!(offset_of!(VmExit, inst_length), 4);
        assert_eq!(offset_of!(VmExit, pc), 8);
        assert_eq!(offset_of!(VmExit, u), 16);
        assert_eq!(size_of::<ExitPayload>(), 64);
        assert_eq!(size_of::<ExitHyp>(), 32);
        assert_eq!(offset_of!(ExitHyp, esr_el2), 8);
        assert_eq!(offset_of!(ExitHyp, hpfar_el2), 24);
        assert_eq!(size_of::<Vre>(), 12);
        assert_eq!(offset_of!(Vre, dir), 4);
        assert_eq!(offset_of!(Vre, reg), 8);
        assert_eq!(size_of::<Vie>(), 8);
        assert_eq!(offset_of!(Vie, reg), 4);
        assert_eq!(size_of::<ExitInstEmul>(), 56);
        assert_eq!(offset_of!(ExitInstEmul, paging), 8);
        assert_eq!(offset_of!(ExitInstEmul, vie), 48);
        assert_eq!(size_of::<ExitSmccc>(), 64);
        assert_eq!(offset_of!(ExitSmccc, args), 8);
        assert_eq!(size_of::<ExitPaging>(), 16);
    }

    #[test]
    fn vie_bitfield() {
        let v = Vie::new(4, true, true, 7);
        assert_eq!(v.bits, 0b0011_0100);
        assert_eq!(v.access_size(), 4);
        assert!(v.sign_extend() && v.is_write());
        let r = Vie::new(8, false, false, 0);
        assert!(!r.sign_extend() && !r.is_write());
    }

    #[test]
    fn pod_round_trip() {
        let r = VmRegister {
            cpuid: 1,
            regnum: 32,
            regval: 0x8000_0000,
        };
        let back = VmRegister::from_bytes(r.as_bytes()).unwrap();
        assert_eq!(r, back);
        assert!(VmRegister::from_bytes(&[0; 15]).is_none());
        let c = VmmctlVmCreate::new(b"vm0").unwrap();
        assert_eq!(c.name_bytes(), b"vm0");
        assert!(VmmctlVmCreate::new(&[b'a'; 230]).is_none());
    }
}
