//! [`Vm`] and [`Vcpu`]: the safe API over the requests.

use crate::backend::{backend_from_env, Backend};
use crate::error::{BackendError, Error, Result};
use crate::exit::Exit;
use crate::memory::{VmMemory, VmRegion};
use crate::request::{self, ptr, Request};
use std::sync::Arc;
use vm_memory::GuestAddress;
use vmm_platform::Window;
use vmm_sys::abi::{self, Pod};
use vmm_sys::exit::SuspendHow;
use vmm_sys::ioctl;
use vmm_sys::reg::Reg;

/// The system-memory segment id (FreeBSD's `VM_SYSMEM`).
pub const VM_SYSMEM: i32 = 0;
/// Segment ids a VM may use (FreeBSD 15: `VM_MAX_MEMSEGS`).
pub const VM_MAX_MEMSEGS: i32 = 4;
/// Mappings a VM may have (FreeBSD 15: `VM_MAX_MEMMAPS`).
pub const VM_MAX_MEMMAPS: usize = 8;
/// Guest page size for segment and mapping alignment.
pub const PAGE_SIZE: u64 = 4096;

/// A memory segment as VM_GET_MEMSEG reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemSeg {
    pub segid: i32,
    pub len: u64,
    /// `None` for system memory; a name for device memory.
    pub name: Option<String>,
}

/// A guest-physical mapping of (part of) a segment, as VM_MMAP_GETNEXT reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemMap {
    pub gpa: u64,
    pub segid: i32,
    pub segoff: u64,
    pub len: u64,
    /// `PROT_*` bits as FreeBSD defines them (`vmm_sys::abi::PROT_*`).
    pub prot: i32,
    pub flags: i32,
}

/// What the kernel does with one device register (VM_SET_MMIO_SHORTCUT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioShortcut {
    /// Nothing: accesses are INST_EMUL exits.
    None,
    /// The guest's 1-, 2- and 4-byte loads read this value's low bytes. For a register
    /// whose reads have no side effect and whose value only the device model changes.
    AnswerLoads(u32),
    /// The guest's 1-, 2- and 4-byte stores are queued for [`Vm::take_mmio_stores`];
    /// while any is queued, every exit comes after a BOGUS one. For a register whose
    /// stores the guest sees only through other registers and the interrupt line.
    BufferStores,
    /// Stores queued as with `BufferStores`, each making `value` the stored bits
    /// `& mask`; loads read `value`. For a register that holds what the guest stores in
    /// it and does nothing else.
    Mirror { value: u32, mask: u32 },
}

/// A store the kernel queued (VM_GET_MMIO_STORES).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioStore {
    pub gpa: u64,
    /// 1, 2 or 4.
    pub size: u8,
    pub value: u32,
}

/// The vCPU topology (VM_SET/GET_TOPOLOGY).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub sockets: u16,
    pub cores: u16,
    pub threads: u16,
    /// Read-only: the most vCPUs this VM can have (must be 0 when setting).
    pub maxcpus: u16,
}

/// Per-vCPU capabilities (`enum vm_cap_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    HaltExit,
    PauseExit,
    UnrestrictedGuest,
    BrkExit,
    SsExit,
    MaskHwintr,
}

impl Capability {
    pub fn number(self) -> i32 {
        use vmm_sys::abi::cap;
        match self {
            Capability::HaltExit => cap::HALT_EXIT,
            Capability::PauseExit => cap::PAUSE_EXIT,
            Capability::UnrestrictedGuest => cap::UNRESTRICTED_GUEST,
            Capability::BrkExit => cap::BRK_EXIT,
            Capability::SsExit => cap::SS_EXIT,
            Capability::MaskHwintr => cap::MASK_HWINTR,
        }
    }
}

fn check_name(name: &str) -> Result<()> {
    vmm_sys::validate_vm_name(name.as_bytes()).map_err(|cause| Error::BadName {
        name: name.to_string(),
        cause,
    })
}

/// Decodes a `cpuset_t` (an array of little-endian longs) into CPU numbers.
pub(crate) fn cpuset_to_vec(bytes: &[u8]) -> Vec<u32> {
    let mut out = Vec::new();
    for (i, b) in bytes.iter().enumerate() {
        for bit in 0..8 {
            if b & (1 << bit) != 0 {
                out.push((i * 8 + bit) as u32);
            }
        }
    }
    out
}

/// A handle on one VM. Cheap to clone; all clones talk to the same VM. The VM outlives
/// the handle: dropping it does not destroy the VM ([`Vm::destroy`] does).
#[derive(Debug, Clone)]
pub struct Vm {
    backend: Arc<dyn Backend>,
    name: String,
}

impl Vm {
    /// Creates VM `name` through [`backend_from_env`].
    pub fn create(name: &str) -> Result<Vm> {
        check_name(name)?;
        Vm::create_with(backend_from_env()?, name)
    }

    /// Creates VM `name` through `backend`.
    pub fn create_with(backend: Arc<dyn Backend>, name: &str) -> Result<Vm> {
        check_name(name)?;
        let mut req = request::vm_create(name).ok_or_else(|| bad_len(name))?;
        match backend.execute(&mut req) {
            Ok(()) => Ok(Vm {
                backend,
                name: name.to_string(),
            }),
            Err(BackendError::Errno(libc::EEXIST)) => Err(Error::VmExists(name.to_string())),
            Err(source) => Err(Error::Request {
                vm: name.to_string(),
                op: "create",
                source,
            }),
        }
    }

    /// Opens the existing VM `name` through [`backend_from_env`].
    pub fn open(name: &str) -> Result<Vm> {
        check_name(name)?;
        Vm::open_with(backend_from_env()?, name)
    }

    /// Opens the existing VM `name` through `backend`; fails with
    /// [`Error::NoSuchVm`] if there is none.
    pub fn open_with(backend: Arc<dyn Backend>, name: &str) -> Result<Vm> {
        check_name(name)?;
        let vm = Vm {
            backend,
            name: name.to_string(),
        };
        // Any cheap request proves the node exists; topology is always answerable.
        let mut req = request::simple(name, ioctl::VM_GET_TOPOLOGY, &abi::VmCpuTopology::default());
        vm.execute("open", &mut req)?;
        Ok(vm)
    }

    /// Destroys this VM (every vCPU still running exits with `Suspended(Destroy)`).
    pub fn destroy(self) -> Result<()> {
        Vm::destroy_by_name_with(self.backend, &self.name)
    }

    /// Destroys VM `name` through [`backend_from_env`].
    pub fn destroy_by_name(name: &str) -> Result<()> {
        check_name(name)?;
        Vm::destroy_by_name_with(backend_from_env()?, name)
    }

    /// Destroys VM `name` through `backend`.
    pub fn destroy_by_name_with(backend: Arc<dyn Backend>, name: &str) -> Result<()> {
        check_name(name)?;
        let mut req = request::vm_destroy(name).ok_or_else(|| bad_len(name))?;
        match backend.execute(&mut req) {
            Ok(()) => Ok(()),
            Err(BackendError::Errno(libc::ENOENT | libc::EINVAL) | BackendError::NoSuchVm) => {
                Err(Error::NoSuchVm(name.to_string()))
            }
            Err(source) => Err(Error::Request {
                vm: name.to_string(),
                op: "destroy",
                source,
            }),
        }
    }

    /// Names of all VMs, sorted, through [`backend_from_env`].
    pub fn list() -> Result<Vec<String>> {
        Vm::list_with(&*backend_from_env()?)
    }

    /// Names of all VMs, sorted (VMMCTL_VM_LIST; the FreeBSD backend reads /dev/vmm).
    pub fn list_with(backend: &dyn Backend) -> Result<Vec<String>> {
        let mut buflen = 4096;
        loop {
            let mut req = request::vm_list(buflen);
            backend.execute(&mut req).map_err(|source| Error::Backend {
                op: "list VMs",
                source,
            })?;
            let ans: abi::VmmctlVmList = req.arg_as().ok_or(Error::Backend {
                op: "list VMs",
                source: BackendError::Errno(libc::EIO),
            })?;
            if ans.needed as usize > buflen {
                // The list grew past our buffer: retry with what the kernel asked for.
                if ans.needed as usize > request::MAX_BUFFER {
                    return Err(Error::Backend {
                        op: "list VMs",
                        source: BackendError::Errno(libc::E2BIG),
                    });
                }
                buflen = ans.needed as usize;
                continue;
            }
            let data = req
                .buffer(ptr::VM_LIST_BUF)
                .map(|b| &b.data[..])
                .unwrap_or(&[]);
            let used = data.get(..ans.needed as usize).unwrap_or(data);
            let mut names: Vec<String> = used
                .split(|&c| c == 0)
                .filter(|n| !n.is_empty())
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .collect();
            names.sort();
            return Ok(names);
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The descriptor this process reaches the VM through, if the backend has one
    /// ([`Backend::descriptor`]).
    pub fn descriptor(&self) -> Option<std::os::fd::RawFd> {
        self.backend.descriptor(&self.name)
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Executes a request on this VM, mapping "no such node" to [`Error::NoSuchVm`].
    pub fn execute(&self, op: &'static str, req: &mut Request) -> Result<()> {
        self.backend.execute(req).map_err(|source| match source {
            BackendError::NoSuchVm => Error::NoSuchVm(self.name.clone()),
            source => Error::Request {
                vm: self.name.clone(),
                op,
                source,
            },
        })
    }

    fn simple<T: Pod>(&self, op: &'static str, cmd: u64, arg: &T) -> Result<T> {
        let mut req = request::simple(&self.name, cmd, arg);
        self.execute(op, &mut req)?;
        Ok(req.arg_as().unwrap_or(*arg))
    }

    fn invalid(&self, what: impl Into<String>) -> Error {
        Error::Invalid {
            vm: self.name.clone(),
            what: what.into(),
        }
    }

    /// Resets the VM for another boot (VM_REINIT): vCPUs back to reset state, memory
    /// kept. The kernel refuses (EBUSY) while a vCPU is active and not suspended.
    pub fn reinit(&self) -> Result<()> {
        let mut req = request::reinit(&self.name);
        self.execute("VM_REINIT", &mut req)
    }

    /// Suspends the VM (VM_SUSPEND): every vCPU's VM_RUN returns `Suspended(how)`.
    pub fn suspend(&self, how: SuspendHow) -> Result<()> {
        self.simple(
            "VM_SUSPEND",
            ioctl::VM_SUSPEND,
            &abi::VmSuspend { how: how as i32 },
        )
        .map(drop)
    }

    // ---- memory ----

    /// Allocates segment `segid` of `len` bytes (VM_ALLOC_MEMSEG); `name` = None for
    /// system memory. Like FreeBSD's libvmmapi, an existing segment with the same length
    /// and name is accepted (a reinitialised VM keeps its memory).
    pub fn alloc_memseg(&self, segid: i32, len: u64, name: Option<&str>) -> Result<()> {
        let mut seg = abi::VmMemseg {
            segid,
            len,
            ..Default::default()
        };
        if let Some(n) = name {
            if n.is_empty() || n.len() > vmm_sys::VM_MAX_SUFFIXLEN || n.contains(['/', '\0']) {
                return Err(self.invalid(format!("bad memory segment name {n:?}")));
            }
            seg.name[..n.len()].copy_from_slice(n.as_bytes());
        }
        if let Some(have) = self.get_memseg(segid)? {
            if have.len == len && have.name.as_deref() == name {
                return Ok(());
            }
            return Err(self.invalid(format!(
                "memory segment {segid} already exists with {:#x} bytes",
                have.len
            )));
        }
        self.simple("VM_ALLOC_MEMSEG", ioctl::VM_ALLOC_MEMSEG, &seg)
            .map(drop)
    }

    /// Segment `segid`, or `None` if it is not allocated (VM_GET_MEMSEG).
    pub fn get_memseg(&self, segid: i32) -> Result<Option<MemSeg>> {
        let seg = self.simple(
            "VM_GET_MEMSEG",
            ioctl::VM_GET_MEMSEG,
            &abi::VmMemseg {
                segid,
                ..Default::default()
            },
        )?;
        if seg.len == 0 {
            return Ok(None);
        }
        let end = seg
            .name
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(seg.name.len());
        let name = (end > 0).then(|| String::from_utf8_lossy(&seg.name[..end]).into_owned());
        Ok(Some(MemSeg {
            segid,
            len: seg.len,
            name,
        }))
    }

    /// Maps `len` bytes of segment `segid` from `segoff` at guest physical `gpa`
    /// (VM_MMAP_MEMSEG). An identical existing mapping is accepted, as in FreeBSD's
    /// libvmmapi.
    pub fn mmap_memseg(
        &self,
        gpa: u64,
        segid: i32,
        segoff: u64,
        len: u64,
        prot: i32,
    ) -> Result<()> {
        if let Some(m) = self.mmap_getnext(gpa)? {
            if m.gpa == gpa && m.segid == segid && m.segoff == segoff && m.len == len {
                return Ok(());
            }
        }
        let map = abi::VmMemmap {
            gpa,
            segid,
            segoff,
            len,
            prot,
            ..Default::default()
        };
        self.simple("VM_MMAP_MEMSEG", ioctl::VM_MMAP_MEMSEG, &map)
            .map(drop)
    }

    /// The first mapping at or above `gpa`, or `None` (VM_MMAP_GETNEXT).
    pub fn mmap_getnext(&self, gpa: u64) -> Result<Option<MemMap>> {
        let mut req = request::simple(
            &self.name,
            ioctl::VM_MMAP_GETNEXT,
            &abi::VmMemmap {
                gpa,
                ..Default::default()
            },
        );
        match self.backend.execute(&mut req) {
            Ok(()) => {}
            Err(BackendError::Errno(libc::ENOENT)) => return Ok(None),
            Err(BackendError::NoSuchVm) => return Err(Error::NoSuchVm(self.name.clone())),
            Err(source) => {
                return Err(Error::Request {
                    vm: self.name.clone(),
                    op: "VM_MMAP_GETNEXT",
                    source,
                })
            }
        }
        let m: abi::VmMemmap = req
            .arg_as()
            .ok_or_else(|| self.invalid("short VM_MMAP_GETNEXT"))?;
        Ok(Some(MemMap {
            gpa: m.gpa,
            segid: m.segid,
            segoff: m.segoff,
            len: m.len,
            prot: m.prot,
            flags: m.flags,
        }))
    }

    /// Every mapping, in guest physical order.
    pub fn mappings(&self) -> Result<Vec<MemMap>> {
        let mut out = Vec::new();
        let mut gpa = 0u64;
        while let Some(m) = self.mmap_getnext(gpa)? {
            // Each answer must move forward, so a confused kernel cannot loop us forever.
            let next = m
                .gpa
                .checked_add(m.len)
                .filter(|&n| m.gpa >= gpa && n > m.gpa);
            let (Some(next), true) = (next, out.len() < VM_MAX_MEMMAPS * 4) else {
                return Err(self.invalid(format!(
                    "VM_MMAP_GETNEXT from {gpa:#x} answered {:#x}+{:#x}",
                    m.gpa, m.len
                )));
            };
            out.push(m);
            gpa = next;
        }
        Ok(out)
    }

    /// Removes the mapping at `gpa` of `len` bytes (VM_MUNMAP_MEMSEG).
    pub fn munmap_memseg(&self, gpa: u64, len: u64) -> Result<()> {
        self.simple(
            "VM_MUNMAP_MEMSEG",
            ioctl::VM_MUNMAP_MEMSEG,
            &abi::VmMunmap { gpa, len },
        )
        .map(drop)
    }

    /// Allocates system memory (segment [`VM_SYSMEM`]) of `size` bytes and maps it
    /// read/write/execute at guest physical `base`, as FreeBSD's `vm_setup_memory`.
    pub fn setup_memory(&self, base: u64, size: u64) -> Result<()> {
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) || !base.is_multiple_of(PAGE_SIZE) {
            return Err(self.invalid(format!(
                "memory {base:#x}+{size:#x} is empty or not page aligned"
            )));
        }
        if base.checked_add(size).is_none() {
            return Err(self.invalid("memory range wraps around"));
        }
        self.alloc_memseg(VM_SYSMEM, size, None)?;
        self.mmap_memseg(base, VM_SYSMEM, 0, size, abi::PROT_ALL)
    }

    /// The guest's system memory mapped into this process, as vm-memory's
    /// `GuestMemory` + `Bytes<GuestAddress>`. Device-memory segments are left out.
    pub fn guest_memory(&self) -> Result<VmMemory> {
        let mut regions = Vec::new();
        for m in self.mappings()? {
            let sysmem = matches!(self.get_memseg(m.segid)?, Some(MemSeg { name: None, .. }));
            if !sysmem {
                continue;
            }
            let len = usize::try_from(m.len).map_err(|_| self.invalid("mapping too large"))?;
            let map = self
                .backend
                .map_memory(&self.name, m.gpa, len)
                .map_err(|source| Error::Request {
                    vm: self.name.clone(),
                    op: "mmap guest memory",
                    source,
                })?;
            regions.push(
                VmRegion::new(GuestAddress(m.gpa), map).ok_or_else(|| Error::Memory {
                    vm: self.name.clone(),
                    what: format!("mapping at {:#x} wraps", m.gpa),
                })?,
            );
        }
        VmMemory::from_regions(regions).map_err(|e| Error::Memory {
            vm: self.name.clone(),
            what: match e {
                vm_memory::GuestRegionCollectionError::NoMemoryRegion => {
                    "no system memory is mapped".to_string()
                }
                e => e.to_string(),
            },
        })
    }

    /// Tells the backend a device wrote these `(gpa, len)` ranges of guest memory (see
    /// [`Backend::device_wrote`]).
    pub fn device_wrote(&self, ranges: &[(u64, u64)]) -> Result<()> {
        self.backend
            .device_wrote(&self.name, ranges)
            .map_err(|source| Error::Request {
                vm: self.name.clone(),
                op: "sync device write",
                source,
            })
    }

    // ---- vCPUs ----

    /// A handle on vCPU `id` (0..VM_MAXCPU).
    pub fn vcpu(&self, id: u32) -> Result<Vcpu> {
        if id as usize >= vmm_sys::VM_MAXCPU {
            return Err(self.invalid(format!(
                "vcpu {id} out of range (at most {} vCPUs)",
                vmm_sys::VM_MAXCPU
            )));
        }
        Ok(Vcpu {
            vm: self.clone(),
            id: id as i32,
        })
    }

    fn cpus(&self, which: i32) -> Result<Vec<u32>> {
        let mut req = request::get_cpus(&self.name, which);
        self.execute("VM_GET_CPUS", &mut req)?;
        Ok(req
            .buffer(ptr::CPUSET_CPUS)
            .map(|b| cpuset_to_vec(&b.data))
            .unwrap_or_default())
    }

    /// vCPUs activated with VM_ACTIVATE_CPU.
    pub fn active_cpus(&self) -> Result<Vec<u32>> {
        self.cpus(abi::VM_ACTIVE_CPUS)
    }

    /// vCPUs suspended (VM_SUSPEND_CPU, or all after VM_SUSPEND).
    pub fn suspended_cpus(&self) -> Result<Vec<u32>> {
        self.cpus(abi::VM_SUSPENDED_CPUS)
    }

    /// Sets sockets x cores x threads (VM_SET_TOPOLOGY); `maxcpus` is ignored.
    pub fn set_topology(&self, t: Topology) -> Result<()> {
        let arg = abi::VmCpuTopology {
            sockets: t.sockets,
            cores: t.cores,
            threads: t.threads,
            maxcpus: 0,
        };
        self.simple("VM_SET_TOPOLOGY", ioctl::VM_SET_TOPOLOGY, &arg)
            .map(drop)
    }

    pub fn get_topology(&self) -> Result<Topology> {
        let t = self.simple(
            "VM_GET_TOPOLOGY",
            ioctl::VM_GET_TOPOLOGY,
            &abi::VmCpuTopology::default(),
        )?;
        Ok(Topology {
            sockets: t.sockets,
            cores: t.cores,
            threads: t.threads,
            maxcpus: t.maxcpus,
        })
    }

    // ---- interrupts ----

    /// Raises the level of shared interrupt `intid` (an SPI, 32..1019).
    pub fn assert_irq(&self, intid: u32) -> Result<()> {
        self.simple(
            "VM_ASSERT_IRQ",
            ioctl::VM_ASSERT_IRQ,
            &abi::VmIrq { irq: intid },
        )
        .map(drop)
    }

    pub fn deassert_irq(&self, intid: u32) -> Result<()> {
        self.simple(
            "VM_DEASSERT_IRQ",
            ioctl::VM_DEASSERT_IRQ,
            &abi::VmIrq { irq: intid },
        )
        .map(drop)
    }

    /// Delivers an MSI: `msg` written to doorbell `addr` (VM_RAISE_MSI).
    pub fn raise_msi(&self, addr: u64, msg: u64) -> Result<()> {
        let arg = abi::VmMsi {
            msg,
            addr,
            ..Default::default()
        };
        self.simple("VM_RAISE_MSI", ioctl::VM_RAISE_MSI, &arg)
            .map(drop)
    }

    /// Has the kernel handle the device register at `gpa` as `what` instead of with
    /// INST_EMUL exits (VM_SET_MMIO_SHORTCUT, our extension). `Ok(false)`: this kernel
    /// does not have the extension (FreeBSD's own vmm answers ENOTTY), and the accesses
    /// keep coming to userspace.
    pub fn set_mmio_shortcut(&self, gpa: u64, what: MmioShortcut) -> Result<bool> {
        let (value, flags, mask) = match what {
            MmioShortcut::None => (0, 0, 0),
            MmioShortcut::AnswerLoads(v) => (v, abi::MMIO_ANSWER_LOADS, 0),
            MmioShortcut::BufferStores => (0, abi::MMIO_BUFFER_STORES, 0),
            MmioShortcut::Mirror { value, mask } => (
                value,
                abi::MMIO_ANSWER_LOADS | abi::MMIO_BUFFER_STORES,
                mask,
            ),
        };
        let arg = abi::VmMmioShortcut {
            gpa,
            value,
            flags,
            mask,
            _pad: 0,
        };
        match self.simple("VM_SET_MMIO_SHORTCUT", ioctl::VM_SET_MMIO_SHORTCUT, &arg) {
            Ok(_) => Ok(true),
            Err(Error::Request {
                source: BackendError::Errno(libc::ENOTTY),
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Takes the stores the kernel queued for registers it buffers, oldest first
    /// (VM_GET_MMIO_STORES); empty when there are none.
    pub fn take_mmio_stores(&self) -> Result<Vec<MmioStore>> {
        let st = self.simple(
            "VM_GET_MMIO_STORES",
            ioctl::VM_GET_MMIO_STORES,
            &abi::VmMmioStores::default(),
        )?;
        let n = (st.count as usize).min(st.stores.len());
        Ok(st.stores[..n]
            .iter()
            .map(|s| MmioStore {
                gpa: s.gpa,
                size: s.size,
                value: s.value,
            })
            .collect())
    }

    /// Attaches a GICv3 with distributor `dist` and redistributors `redist`
    /// (VM_ATTACH_VGIC).
    pub fn attach_vgic(&self, dist: Window, redist: Window) -> Result<()> {
        let arg = abi::VmVgicDescr {
            ver: abi::VmVgicVersion {
                version: 3,
                flags: 0,
            },
            v3_regs: abi::VgicV3Regs {
                dist_start: dist.base,
                dist_size: dist.size,
                redist_start: redist.base,
                redist_size: redist.size,
            },
        };
        self.simple("VM_ATTACH_VGIC", ioctl::VM_ATTACH_VGIC, &arg)
            .map(drop)
    }

    /// The vGIC version the kernel offers (VM_GET_VGIC_VERSION).
    pub fn vgic_version(&self) -> Result<u32> {
        self.simple(
            "VM_GET_VGIC_VERSION",
            ioctl::VM_GET_VGIC_VERSION,
            &abi::VmVgicVersion::default(),
        )
        .map(|v| v.version)
    }

    // ---- statistics ----

    /// The statistics of vCPU `vcpu` as (description, value), in kernel order
    /// (VM_STATS, names from VM_STAT_DESC).
    pub fn stats(&self, vcpu: u32) -> Result<Vec<(String, u64)>> {
        let mut values = Vec::new();
        loop {
            let arg = abi::VmStats {
                cpuid: vcpu as i32,
                index: values.len() as i32,
                ..Default::default()
            };
            let got = self.simple("VM_STATS", ioctl::VM_STATS, &arg)?;
            let n = usize::try_from(got.num_entries)
                .unwrap_or(0)
                .min(abi::MAX_VM_STATS);
            values.extend_from_slice(&got.statbuf[..n]);
            if n < abi::MAX_VM_STATS {
                break;
            }
        }
        let mut out = Vec::with_capacity(values.len());
        for (i, v) in values.into_iter().enumerate() {
            let d = self.simple(
                "VM_STAT_DESC",
                ioctl::VM_STAT_DESC,
                &abi::VmStatDesc {
                    index: i as i32,
                    ..Default::default()
                },
            )?;
            let end = d.desc.iter().position(|&c| c == 0).unwrap_or(d.desc.len());
            out.push((String::from_utf8_lossy(&d.desc[..end]).into_owned(), v));
        }
        Ok(out)
    }
}

fn bad_len(name: &str) -> Error {
    Error::BadName {
        name: name.to_string(),
        cause: vmm_sys::NameError::TooLong,
    }
}

/// A handle on one vCPU of a VM. `Send`, so each vCPU can run on its own thread.
#[derive(Debug, Clone)]
pub struct Vcpu {
    vm: Vm,
    id: i32,
}

impl Vcpu {
    pub fn id(&self) -> u32 {
        self.id as u32
    }

    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    fn simple<T: Pod>(&self, op: &'static str, cmd: u64, arg: &T) -> Result<T> {
        self.vm.simple(op, cmd, arg)
    }

    pub fn get_reg(&self, reg: Reg) -> Result<u64> {
        let mut req = request::get_register(&self.vm.name, self.id, reg.number() as i32);
        self.vm.execute("VM_GET_REGISTER", &mut req)?;
        let r: abi::VmRegister = req
            .arg_as()
            .ok_or_else(|| self.vm.invalid("short VM_GET_REGISTER answer"))?;
        Ok(r.regval)
    }

    pub fn set_reg(&self, reg: Reg, value: u64) -> Result<()> {
        let mut req = request::set_register(&self.vm.name, self.id, reg.number() as i32, value);
        self.vm.execute("VM_SET_REGISTER", &mut req)
    }

    /// Reads several registers in one request (VM_GET_REGISTER_SET).
    pub fn get_regs(&self, regs: &[Reg]) -> Result<Vec<u64>> {
        if regs.len() > abi::VM_REGISTER_SET_MAX as usize {
            return Err(self.vm.invalid("too many registers in one set"));
        }
        let nums: Vec<i32> = regs.iter().map(|r| r.number() as i32).collect();
        let mut req = request::get_register_set(&self.vm.name, self.id, &nums);
        self.vm.execute("VM_GET_REGISTER_SET", &mut req)?;
        let vals = req
            .buffer(ptr::REGSET_REGVALS)
            .map(|b| b.data.clone())
            .unwrap_or_default();
        Ok(vals
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8])))
            .collect())
    }

    /// Writes several registers in one request (VM_SET_REGISTER_SET).
    pub fn set_regs(&self, regs: &[(Reg, u64)]) -> Result<()> {
        if regs.len() > abi::VM_REGISTER_SET_MAX as usize {
            return Err(self.vm.invalid("too many registers in one set"));
        }
        let raw: Vec<(i32, u64)> = regs.iter().map(|(r, v)| (r.number() as i32, *v)).collect();
        let mut req = request::set_register_set(&self.vm.name, self.id, &raw);
        self.vm.execute("VM_SET_REGISTER_SET", &mut req)
    }

    /// Makes the vCPU runnable (VM_ACTIVATE_CPU).
    pub fn activate(&self) -> Result<()> {
        self.simple(
            "VM_ACTIVATE_CPU",
            ioctl::VM_ACTIVATE_CPU,
            &abi::VmActivateCpu { vcpuid: self.id },
        )
        .map(drop)
    }

    /// Suspends this vCPU (VM_SUSPEND_CPU): its VM_RUN returns until resumed.
    pub fn suspend_cpu(&self) -> Result<()> {
        self.simple(
            "VM_SUSPEND_CPU",
            ioctl::VM_SUSPEND_CPU,
            &abi::VmActivateCpu { vcpuid: self.id },
        )
        .map(drop)
    }

    pub fn resume_cpu(&self) -> Result<()> {
        self.simple(
            "VM_RESUME_CPU",
            ioctl::VM_RESUME_CPU,
            &abi::VmActivateCpu { vcpuid: self.id },
        )
        .map(drop)
    }

    /// Runs the vCPU until the next exit userspace must handle (VM_RUN), raw.
    pub fn run_raw(&self) -> Result<abi::VmExit> {
        let mut req = request::run(&self.vm.name, self.id);
        self.vm.execute("VM_RUN", &mut req)?;
        req.buffer(ptr::RUN_VM_EXIT)
            .and_then(|b| abi::VmExit::from_bytes(&b.data))
            .ok_or_else(|| self.vm.invalid("VM_RUN returned no exit"))
    }

    /// Runs the vCPU until the next exit userspace must handle, decoded.
    pub fn run(&self) -> Result<Exit> {
        let raw = self.run_raw()?;
        Exit::decode(&raw).map_err(|cause| Error::BadExit {
            vm: self.vm.name.clone(),
            vcpu: self.id,
            cause,
        })
    }

    /// Makes the vCPU take a synchronous exception with syndrome `esr` and fault address
    /// `far` at its next entry (VM_INJECT_EXCEPTION), e.g. UNDEFINED for an unknown
    /// system register.
    pub fn inject_exception(&self, esr: u64, far: u64) -> Result<()> {
        self.simple(
            "VM_INJECT_EXCEPTION",
            ioctl::VM_INJECT_EXCEPTION,
            &abi::VmException {
                cpuid: self.id,
                _pad0: 0,
                esr,
                far,
            },
        )
        .map(drop)
    }

    pub fn get_capability(&self, cap: Capability) -> Result<i32> {
        self.simple(
            "VM_GET_CAPABILITY",
            ioctl::VM_GET_CAPABILITY,
            &abi::VmCapability {
                cpuid: self.id,
                captype: cap.number(),
                capval: 0,
                allcpus: 0,
            },
        )
        .map(|c| c.capval)
    }

    pub fn set_capability(&self, cap: Capability, value: i32) -> Result<()> {
        self.simple(
            "VM_SET_CAPABILITY",
            ioctl::VM_SET_CAPABILITY,
            &abi::VmCapability {
                cpuid: self.id,
                captype: cap.number(),
                capval: value,
                allcpus: 0,
            },
        )
        .map(drop)
    }
}
