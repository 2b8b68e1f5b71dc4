//! `FakeVmm`: an in-process [`Backend`] for unit tests of code that drives VMs (bhyve's
//! run loop and devices, bhyveload, bhyvectl). A test double only: the product backends
//! are the FreeBSD one and the testbed.
//!
//! It executes the same [`Request`]s the kernel would (decoding the argument bytes and
//! honouring the pointed-to buffers), answering with the errnos FreeBSD's vmm(4) gives,
//! so tests exercise the request encoding too. It keeps:
//!
//! * VMs by name, with memory segments backed by anonymous shared memory (so
//!   [`crate::Vm::guest_memory`] works and tests can inspect what a loader wrote);
//! * per vCPU: registers, activation, suspension, capabilities, injected exceptions, a
//!   log of register writes, and a queue of scripted exits that VM_RUN returns;
//! * interrupt lines (levels and a log), MSIs, the vGIC attachment, the topology.
//!
//! VM_RUN returns the next scripted exit; with none left it waits (a vCPU thread
//! blocked in the guest) until an exit is pushed, the VM is suspended or destroyed (then
//! it returns `Suspended(how)` as the kernel does), or the run timeout passes (an error
//! naming the vCPU, so a test never hangs). A run hook sees and may change the vCPU's
//! registers at every VM_RUN, i.e. between two exits.
//!
//! Inspection helpers panic with a clear message when the VM does not exist: they are
//! for tests.

use crate::error::BackendError;
use crate::exit::raw;
use crate::freebsd::fill_vm_list;
use crate::memory::{Mapping, MmapOwner};
use crate::request::{ptr, Request, Target};
use crate::vm::{Capability, PAGE_SIZE, VM_MAX_MEMMAPS, VM_MAX_MEMSEGS};
use crate::Backend;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ptr::NonNull;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use vmm_platform::Window;
use vmm_sys::abi::{self, Pod, VmExit};
use vmm_sys::exit::SuspendHow;
use vmm_sys::ioctl;
use vmm_sys::reg::{Reg, VM_REG_GUEST_PC, VM_REG_LAST};
use vmm_sys::VM_MAXCPU;

const NREGS: usize = VM_REG_LAST as usize;
/// The guest physical address space the fake accepts mappings in (39-bit IPA).
const IPA_LIMIT: u64 = 1 << 39;
/// INTIDs a VM_ASSERT_IRQ may name: SPIs.
const SPI_FIRST: u32 = 32;
const SPI_END: u32 = 1020;

/// The statistics the fake keeps per vCPU, in VM_STAT_DESC order.
pub const STAT_NAMES: [&str; 4] = [
    "VM_RUN calls",
    "exits returned",
    "register writes",
    "exceptions injected",
];

/// Called at every VM_RUN with the VM's name, the vCPU and its registers (indexed by
/// ABI register number), which it may change. It runs with the fake locked: it must not
/// call back into the [`FakeVmm`].
pub type RunHook = dyn FnMut(&str, u32, &mut [u64; NREGS]) + Send;

struct Seg {
    len: u64,
    name: [u8; vmm_sys::VM_MAX_SUFFIXLEN + 1],
    mem: Arc<MmapOwner>,
}

struct FakeVcpu {
    regs: [u64; NREGS],
    active: bool,
    /// VM_SUSPEND_CPU (FreeBSD's debug suspension).
    suspended: bool,
    /// Left VM_RUN with SUSPENDED after a VM_SUSPEND (FreeBSD's `suspended_cpus`): its
    /// VM_RUN is refused from then on, and VM_REINIT waits for every active vCPU to be here.
    left_suspended: bool,
    exits: VecDeque<VmExit>,
    exceptions: Vec<(u64, u64)>,
    reg_writes: Vec<(Reg, u64)>,
    caps: BTreeMap<i32, i32>,
    stats: [u64; STAT_NAMES.len()],
}

impl Default for FakeVcpu {
    fn default() -> Self {
        FakeVcpu {
            regs: [0; NREGS],
            active: false,
            suspended: false,
            left_suspended: false,
            exits: VecDeque::new(),
            exceptions: Vec::new(),
            reg_writes: Vec::new(),
            caps: BTreeMap::new(),
            stats: [0; STAT_NAMES.len()],
        }
    }
}

struct FakeVm {
    /// Distinguishes this VM from a later one of the same name (for blocked VM_RUNs).
    id: u64,
    segs: BTreeMap<i32, Seg>,
    maps: Vec<abi::VmMemmap>,
    vcpus: Vec<FakeVcpu>,
    irqs: BTreeSet<u32>,
    irq_log: Vec<(u32, bool)>,
    msis: Vec<(u64, u64)>,
    vgic: Option<(Window, Window)>,
    topology: (u16, u16, u16),
    suspended: Option<SuspendHow>,
}

impl FakeVm {
    fn new(id: u64) -> FakeVm {
        FakeVm {
            id,
            segs: BTreeMap::new(),
            maps: Vec::new(),
            vcpus: (0..VM_MAXCPU).map(|_| FakeVcpu::default()).collect(),
            irqs: BTreeSet::new(),
            irq_log: Vec::new(),
            msis: Vec::new(),
            vgic: None,
            topology: (1, 1, 1),
            suspended: None,
        }
    }

    fn vcpu(&mut self, id: i32) -> Result<&mut FakeVcpu, BackendError> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.vcpus.get_mut(i))
            .ok_or(BackendError::Errno(libc::EINVAL))
    }
}

struct State {
    vms: BTreeMap<String, FakeVm>,
    next_id: u64,
    run_hook: Option<Box<RunHook>>,
    run_timeout: Duration,
}

/// The in-process vmm. See the module documentation.
pub struct FakeVmm {
    state: Mutex<State>,
    wake: Condvar,
}

impl std::fmt::Debug for FakeVmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.lock().vms.keys().cloned().collect();
        f.debug_struct("FakeVmm").field("vms", &names).finish()
    }
}

fn errno<T>(e: i32) -> Result<T, BackendError> {
    Err(BackendError::Errno(e))
}

fn arg<T: Pod>(req: &Request) -> Result<T, BackendError> {
    req.arg_as().ok_or(BackendError::Errno(libc::EINVAL))
}

fn put<T: Pod>(req: &mut Request, v: &T) {
    req.arg = v.as_bytes().to_vec();
}

fn buf(req: &mut Request, off: usize, len: usize) -> Result<&mut Vec<u8>, BackendError> {
    match req.buffer_mut(off) {
        Some(b) if b.data.len() == len => Ok(&mut b.data),
        _ => errno(libc::EFAULT),
    }
}

fn set_bits(bytes: &mut [u8], cpus: impl Iterator<Item = usize>) {
    bytes.fill(0);
    for c in cpus {
        if let Some(b) = bytes.get_mut(c / 8) {
            *b |= 1 << (c % 8);
        }
    }
}

impl FakeVmm {
    /// An empty fake, shared (`Arc<FakeVmm>` coerces to `Arc<dyn Backend>`).
    pub fn new() -> Arc<FakeVmm> {
        Arc::new(FakeVmm {
            state: Mutex::new(State {
                vms: BTreeMap::new(),
                next_id: 1,
                run_hook: None,
                run_timeout: Duration::from_secs(10),
            }),
            wake: Condvar::new(),
        })
    }

    /// This fake as the backend type [`crate::Vm::create_with`] takes.
    pub fn backend(self: &Arc<Self>) -> Arc<dyn Backend> {
        self.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_vm<R>(&self, vm: &str, f: impl FnOnce(&mut FakeVm) -> R) -> R {
        let mut st = self.lock();
        let v = st
            .vms
            .get_mut(vm)
            .unwrap_or_else(|| panic!("FakeVmm: vm '{vm}' does not exist"));
        f(v)
    }

    fn with_vcpu<R>(&self, vm: &str, vcpu: u32, f: impl FnOnce(&mut FakeVcpu) -> R) -> R {
        self.with_vm(vm, |v| {
            let c = v
                .vcpus
                .get_mut(vcpu as usize)
                .unwrap_or_else(|| panic!("FakeVmm: vcpu {vcpu} out of range"));
            f(c)
        })
    }

    // ---- scripting and inspection ----

    /// Queues an exit for VM_RUN on `vcpu` of `vm` to return.
    pub fn push_exit(&self, vm: &str, vcpu: u32, exit: VmExit) {
        self.with_vcpu(vm, vcpu, |c| c.exits.push_back(exit));
        self.wake.notify_all();
    }

    /// Queues several exits, in order.
    pub fn push_exits(&self, vm: &str, vcpu: u32, exits: impl IntoIterator<Item = VmExit>) {
        self.with_vcpu(vm, vcpu, |c| c.exits.extend(exits));
        self.wake.notify_all();
    }

    /// Scripted exits not yet returned.
    pub fn pending_exits(&self, vm: &str, vcpu: u32) -> usize {
        self.with_vcpu(vm, vcpu, |c| c.exits.len())
    }

    /// Installs the run hook (see [`RunHook`]).
    pub fn set_run_hook(&self, hook: impl FnMut(&str, u32, &mut [u64; NREGS]) + Send + 'static) {
        self.lock().run_hook = Some(Box::new(hook));
    }

    /// How long VM_RUN waits for an exit when none is scripted (default 10 s).
    pub fn set_run_timeout(&self, t: Duration) {
        self.lock().run_timeout = t;
    }

    pub fn vm_exists(&self, vm: &str) -> bool {
        self.lock().vms.contains_key(vm)
    }

    pub fn vm_names(&self) -> Vec<String> {
        self.lock().vms.keys().cloned().collect()
    }

    /// The current level of interrupt line `intid`.
    pub fn irq_level(&self, vm: &str, intid: u32) -> bool {
        self.with_vm(vm, |v| v.irqs.contains(&intid))
    }

    /// Every VM_ASSERT_IRQ (true) / VM_DEASSERT_IRQ (false), in order.
    pub fn irq_log(&self, vm: &str) -> Vec<(u32, bool)> {
        self.with_vm(vm, |v| v.irq_log.clone())
    }

    /// Every VM_RAISE_MSI as (addr, msg).
    pub fn msis(&self, vm: &str) -> Vec<(u64, u64)> {
        self.with_vm(vm, |v| v.msis.clone())
    }

    /// Exceptions injected into `vcpu` as (esr, far), oldest first.
    pub fn exceptions(&self, vm: &str, vcpu: u32) -> Vec<(u64, u64)> {
        self.with_vcpu(vm, vcpu, |c| c.exceptions.clone())
    }

    /// A register's value, without logging.
    pub fn reg(&self, vm: &str, vcpu: u32, reg: Reg) -> u64 {
        self.with_vcpu(vm, vcpu, |c| c.regs[reg.number() as usize])
    }

    /// Sets a register as the guest would have left it (not logged as a write).
    pub fn set_reg(&self, vm: &str, vcpu: u32, reg: Reg, value: u64) {
        self.with_vcpu(vm, vcpu, |c| c.regs[reg.number() as usize] = value);
    }

    /// Register writes made through VM_SET_REGISTER(_SET) since the last call.
    pub fn take_reg_writes(&self, vm: &str, vcpu: u32) -> Vec<(Reg, u64)> {
        self.with_vcpu(vm, vcpu, |c| std::mem::take(&mut c.reg_writes))
    }

    pub fn is_active(&self, vm: &str, vcpu: u32) -> bool {
        self.with_vcpu(vm, vcpu, |c| c.active)
    }

    /// How the VM was suspended (VM_SUSPEND), if it was.
    pub fn suspended(&self, vm: &str) -> Option<SuspendHow> {
        self.with_vm(vm, |v| v.suspended)
    }

    /// The vGIC windows (distributor, redistributors), once attached.
    pub fn vgic(&self, vm: &str) -> Option<(Window, Window)> {
        self.with_vm(vm, |v| v.vgic)
    }

    pub fn capability(&self, vm: &str, vcpu: u32, cap: Capability) -> i32 {
        self.with_vcpu(vm, vcpu, |c| {
            c.caps.get(&cap.number()).copied().unwrap_or(0)
        })
    }

    /// (sockets, cores, threads).
    pub fn topology(&self, vm: &str) -> (u16, u16, u16) {
        self.with_vm(vm, |v| v.topology)
    }

    // ---- request handling ----

    fn ctl(&self, req: &mut Request) -> Result<(), BackendError> {
        let mut st = self.lock();
        match req.cmd {
            ioctl::VMMCTL_VM_CREATE | ioctl::VMMCTL_VM_DESTROY => {
                let a: abi::VmmctlVmCreate = arg(req)?;
                if a.reserved.iter().any(|&r| r != 0) {
                    return errno(libc::EINVAL);
                }
                let name = a.name_bytes();
                vmm_sys::validate_vm_name(name).map_err(|_| BackendError::Errno(libc::EINVAL))?;
                let name = String::from_utf8(name.to_vec())
                    .map_err(|_| BackendError::Errno(libc::EINVAL))?;
                if req.cmd == ioctl::VMMCTL_VM_CREATE {
                    if st.vms.contains_key(&name) {
                        return errno(libc::EEXIST);
                    }
                    let id = st.next_id;
                    st.next_id += 1;
                    st.vms.insert(name, FakeVm::new(id));
                } else {
                    if st.vms.remove(&name).is_none() {
                        return errno(libc::ENOENT);
                    }
                    self.wake.notify_all();
                }
                Ok(())
            }
            ioctl::VMMCTL_VM_LIST => {
                let names: Vec<Vec<u8>> = st.vms.keys().map(|k| k.as_bytes().to_vec()).collect();
                fill_vm_list(req, &names)
            }
            _ => errno(libc::ENOTTY),
        }
    }

    fn run(&self, name: &str, req: &mut Request) -> Result<(), BackendError> {
        let a: abi::VmRun = arg(req)?;
        if a.cpusetsize as usize != abi::CPUSET_SIZE {
            return errno(libc::EINVAL);
        }
        buf(req, ptr::RUN_CPUSET, abi::CPUSET_SIZE)?;
        buf(req, ptr::RUN_VM_EXIT, std::mem::size_of::<VmExit>())?;
        let idx = usize::try_from(a.cpuid)
            .ok()
            .filter(|&i| i < VM_MAXCPU)
            .ok_or(BackendError::Errno(libc::EINVAL))?;
        let mut st = self.lock();
        let timeout = st.run_timeout;
        let vm_id = {
            let vm = st.vms.get_mut(name).ok_or(BackendError::NoSuchVm)?;
            // FreeBSD's vm_run: an inactive vCPU, or one that has already left with
            // SUSPENDED, is refused.
            if !vm.vcpus[idx].active || vm.vcpus[idx].left_suspended {
                return errno(libc::EINVAL);
            }
            vm.vcpus[idx].stats[0] += 1;
            vm.id
        };
        if let Some(mut hook) = st.run_hook.take() {
            if let Some(vm) = st.vms.get_mut(name) {
                hook(name, idx as u32, &mut vm.vcpus[idx].regs);
            }
            st.run_hook = Some(hook);
        }
        let deadline = Instant::now() + timeout;
        let (exit, cpuset) = loop {
            let vm = match st.vms.get_mut(name) {
                Some(vm) if vm.id == vm_id => vm,
                // Destroyed while this vCPU ran: as the kernel, report the suspension.
                _ => break (raw::suspended(0, SuspendHow::Destroy), Vec::new()),
            };
            let pc = vm.vcpus[idx].regs[VM_REG_GUEST_PC as usize];
            if let Some(how) = vm.suspended {
                vm.vcpus[idx].left_suspended = true;
                let set: Vec<usize> = (0..VM_MAXCPU)
                    .filter(|&i| vm.vcpus[i].left_suspended)
                    .collect();
                break (raw::suspended(pc, how), set);
            }
            // A vCPU held by VM_SUSPEND_CPU does not enter the guest.
            if vm.vcpus[idx].suspended {
                let set: Vec<usize> = (0..VM_MAXCPU).filter(|&i| vm.vcpus[i].suspended).collect();
                break (raw::simple(vmm_sys::exit::ExitCode::Debug, pc), set);
            }
            if let Some(e) = vm.vcpus[idx].exits.pop_front() {
                break (e, Vec::new());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(BackendError::Unavailable(format!(
                    "fake vmm: vm '{name}' vcpu {idx}: no scripted exit left after waiting {timeout:?}"
                )));
            }
            st = self
                .wake
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        if let Some(vm) = st.vms.get_mut(name) {
            if vm.id == vm_id {
                vm.vcpus[idx].stats[1] += 1;
            }
        }
        drop(st);
        set_bits(
            buf(req, ptr::RUN_CPUSET, abi::CPUSET_SIZE)?,
            cpuset.into_iter(),
        );
        buf(req, ptr::RUN_VM_EXIT, std::mem::size_of::<VmExit>())?.copy_from_slice(exit.as_bytes());
        Ok(())
    }

    fn vm_request(&self, name: &str, req: &mut Request) -> Result<(), BackendError> {
        if req.cmd == ioctl::VM_RUN {
            return self.run(name, req);
        }
        let mut st = self.lock();
        let vm = st.vms.get_mut(name).ok_or(BackendError::NoSuchVm)?;
        let r = handle(vm, req);
        if matches!(req.cmd, ioctl::VM_SUSPEND | ioctl::VM_RESUME_CPU) || r.is_ok() {
            self.wake.notify_all();
        }
        r
    }
}

fn reg_index(n: i32) -> Result<usize, BackendError> {
    usize::try_from(n)
        .ok()
        .filter(|&i| i < NREGS)
        .ok_or(BackendError::Errno(libc::EINVAL))
}

fn log_write(c: &mut FakeVcpu, idx: usize, val: u64) {
    c.regs[idx] = val;
    if let Ok(r) = Reg::try_from(idx as u32) {
        c.reg_writes.push((r, val));
    }
    c.stats[2] += 1;
}

/// One per-VM request other than VM_RUN, with the fake locked.
fn handle(vm: &mut FakeVm, req: &mut Request) -> Result<(), BackendError> {
    match req.cmd {
        ioctl::VM_SET_CAPABILITY | ioctl::VM_GET_CAPABILITY => {
            let mut a: abi::VmCapability = arg(req)?;
            if !(0..abi::cap::MAX).contains(&a.captype) {
                return errno(libc::ENOENT);
            }
            let c = vm.vcpu(a.cpuid)?;
            // arm64 has no halt/pause exits, and UNRESTRICTED_GUEST is fixed at 1.
            let settable = matches!(
                a.captype,
                abi::cap::BRK_EXIT | abi::cap::SS_EXIT | abi::cap::MASK_HWINTR
            );
            if req.cmd == ioctl::VM_SET_CAPABILITY {
                if !settable {
                    return errno(libc::ENOENT);
                }
                c.caps.insert(a.captype, a.capval);
            } else {
                a.capval = if a.captype == abi::cap::UNRESTRICTED_GUEST {
                    1
                } else if settable {
                    c.caps.get(&a.captype).copied().unwrap_or(0)
                } else {
                    return errno(libc::ENOENT);
                };
                put(req, &a);
            }
            Ok(())
        }
        ioctl::VM_SUSPEND => {
            let a: abi::VmSuspend = arg(req)?;
            let how = SuspendHow::try_from(a.how).map_err(|_| BackendError::Errno(libc::EINVAL))?;
            if how == SuspendHow::None {
                return errno(libc::EINVAL);
            }
            if vm.suspended.is_some() {
                return errno(libc::EALREADY);
            }
            vm.suspended = Some(how);
            Ok(())
        }
        ioctl::VM_REINIT => {
            // FreeBSD's vm_reinit: allowed only when every active vCPU has left VM_RUN
            // with SUSPENDED (suspended_cpus == active_cpus).
            if vm.vcpus.iter().any(|c| c.active && !c.left_suspended) {
                return errno(libc::EBUSY);
            }
            // Memory stays; vCPUs, interrupts, the vGIC and the suspension are reset.
            vm.vcpus = (0..VM_MAXCPU).map(|_| FakeVcpu::default()).collect();
            vm.irqs.clear();
            vm.vgic = None;
            vm.suspended = None;
            Ok(())
        }
        ioctl::VM_ALLOC_MEMSEG => {
            let a: abi::VmMemseg = arg(req)?;
            if !(0..VM_MAX_MEMSEGS).contains(&a.segid)
                || a.len == 0
                || !a.len.is_multiple_of(PAGE_SIZE)
            {
                return errno(libc::EINVAL);
            }
            if a.ds_mask != 0 {
                return errno(libc::EINVAL);
            }
            if let Some(s) = vm.segs.get(&a.segid) {
                return errno(if s.len == a.len && s.name == a.name {
                    libc::EEXIST
                } else {
                    libc::EINVAL
                });
            }
            let len = usize::try_from(a.len).map_err(|_| BackendError::Errno(libc::ENOMEM))?;
            let mem = anon(len).map_err(|_| BackendError::Errno(libc::ENOMEM))?;
            vm.segs.insert(
                a.segid,
                Seg {
                    len: a.len,
                    name: a.name,
                    mem: Arc::new(mem),
                },
            );
            Ok(())
        }
        ioctl::VM_GET_MEMSEG => {
            let mut a: abi::VmMemseg = arg(req)?;
            if !(0..VM_MAX_MEMSEGS).contains(&a.segid) {
                return errno(libc::EINVAL);
            }
            match vm.segs.get(&a.segid) {
                Some(s) => {
                    a.len = s.len;
                    a.name = s.name;
                }
                None => {
                    a.len = 0;
                    a.name = [0; 16];
                }
            }
            put(req, &a);
            Ok(())
        }
        ioctl::VM_MMAP_MEMSEG => {
            let a: abi::VmMemmap = arg(req)?;
            let seg = vm
                .segs
                .get(&a.segid)
                .ok_or(BackendError::Errno(libc::EINVAL))?;
            let aligned = a.gpa.is_multiple_of(PAGE_SIZE)
                && a.len.is_multiple_of(PAGE_SIZE)
                && a.segoff.is_multiple_of(PAGE_SIZE);
            let fits = a.segoff.checked_add(a.len).is_some_and(|e| e <= seg.len)
                && a.gpa.checked_add(a.len).is_some_and(|e| e <= IPA_LIMIT);
            if !aligned || a.len == 0 || !fits || a.prot & !abi::PROT_ALL != 0 {
                return errno(libc::EINVAL);
            }
            if vm.maps.len() >= VM_MAX_MEMMAPS {
                return errno(libc::ENOSPC);
            }
            if vm
                .maps
                .iter()
                .any(|m| a.gpa < m.gpa + m.len && m.gpa < a.gpa + a.len)
            {
                return errno(libc::EFAULT);
            }
            vm.maps.push(a);
            vm.maps.sort_by_key(|m| m.gpa);
            Ok(())
        }
        ioctl::VM_MMAP_GETNEXT => {
            let a: abi::VmMemmap = arg(req)?;
            let m = *vm
                .maps
                .iter()
                .find(|m| m.gpa >= a.gpa)
                .ok_or(BackendError::Errno(libc::ENOENT))?;
            put(req, &m);
            Ok(())
        }
        ioctl::VM_MUNMAP_MEMSEG => {
            let a: abi::VmMunmap = arg(req)?;
            let i = vm
                .maps
                .iter()
                .position(|m| m.gpa == a.gpa && m.len == a.len)
                .ok_or(BackendError::Errno(libc::EINVAL))?;
            vm.maps.remove(i);
            Ok(())
        }
        ioctl::VM_SET_REGISTER => {
            let a: abi::VmRegister = arg(req)?;
            let i = reg_index(a.regnum)?;
            log_write(vm.vcpu(a.cpuid)?, i, a.regval);
            Ok(())
        }
        ioctl::VM_GET_REGISTER => {
            let mut a: abi::VmRegister = arg(req)?;
            let i = reg_index(a.regnum)?;
            a.regval = vm.vcpu(a.cpuid)?.regs[i];
            put(req, &a);
            Ok(())
        }
        ioctl::VM_SET_REGISTER_SET | ioctl::VM_GET_REGISTER_SET => {
            let a: abi::VmRegisterSet = arg(req)?;
            if a.count > abi::VM_REGISTER_SET_MAX {
                return errno(libc::EINVAL);
            }
            let n = a.count as usize;
            let nums: Vec<usize> = buf(req, ptr::REGSET_REGNUMS, n * 4)?
                .chunks_exact(4)
                .map(|c| reg_index(i32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
                .collect::<Result<_, _>>()?;
            let c = vm.vcpu(a.cpuid)?;
            if req.cmd == ioctl::VM_SET_REGISTER_SET {
                let vals: Vec<u64> = buf(req, ptr::REGSET_REGVALS, n * 8)?
                    .chunks_exact(8)
                    .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect();
                for (i, v) in nums.into_iter().zip(vals) {
                    log_write(c, i, v);
                }
            } else {
                let vals: Vec<u8> = nums.iter().flat_map(|&i| c.regs[i].to_ne_bytes()).collect();
                buf(req, ptr::REGSET_REGVALS, n * 8)?.copy_from_slice(&vals);
            }
            Ok(())
        }
        ioctl::VM_STATS => {
            let mut a: abi::VmStats = arg(req)?;
            let c = vm.vcpu(a.cpuid)?;
            let start = usize::try_from(a.index).map_err(|_| BackendError::Errno(libc::EINVAL))?;
            let rest = c.stats.get(start..).unwrap_or(&[]);
            let n = rest.len().min(abi::MAX_VM_STATS);
            a.statbuf = [0; abi::MAX_VM_STATS];
            a.statbuf[..n].copy_from_slice(&rest[..n]);
            a.num_entries = n as i32;
            put(req, &a);
            Ok(())
        }
        ioctl::VM_STAT_DESC => {
            let mut a: abi::VmStatDesc = arg(req)?;
            let d = usize::try_from(a.index)
                .ok()
                .and_then(|i| STAT_NAMES.get(i))
                .ok_or(BackendError::Errno(libc::EINVAL))?;
            a.desc = [0; 128];
            a.desc[..d.len()].copy_from_slice(d.as_bytes());
            put(req, &a);
            Ok(())
        }
        ioctl::VM_SET_TOPOLOGY => {
            let a: abi::VmCpuTopology = arg(req)?;
            let n = u32::from(a.sockets) * u32::from(a.cores) * u32::from(a.threads);
            if a.maxcpus != 0 || n == 0 || n as usize > VM_MAXCPU {
                return errno(libc::EINVAL);
            }
            vm.topology = (a.sockets, a.cores, a.threads);
            Ok(())
        }
        ioctl::VM_GET_TOPOLOGY => {
            let (sockets, cores, threads) = vm.topology;
            put(
                req,
                &abi::VmCpuTopology {
                    sockets,
                    cores,
                    threads,
                    maxcpus: VM_MAXCPU as u16,
                },
            );
            Ok(())
        }
        ioctl::VM_ASSERT_IRQ | ioctl::VM_DEASSERT_IRQ => {
            let a: abi::VmIrq = arg(req)?;
            if vm.vgic.is_none() {
                return errno(libc::ENODEV);
            }
            if !(SPI_FIRST..SPI_END).contains(&a.irq) {
                return errno(libc::EINVAL);
            }
            let level = req.cmd == ioctl::VM_ASSERT_IRQ;
            if level {
                vm.irqs.insert(a.irq);
            } else {
                vm.irqs.remove(&a.irq);
            }
            vm.irq_log.push((a.irq, level));
            Ok(())
        }
        ioctl::VM_RAISE_MSI => {
            let a: abi::VmMsi = arg(req)?;
            if vm.vgic.is_none() {
                return errno(libc::ENODEV);
            }
            vm.msis.push((a.addr, a.msg));
            Ok(())
        }
        ioctl::VM_INJECT_EXCEPTION => {
            let a: abi::VmException = arg(req)?;
            let c = vm.vcpu(a.cpuid)?;
            c.exceptions.push((a.esr, a.far));
            c.stats[3] += 1;
            Ok(())
        }
        ioctl::VM_ACTIVATE_CPU => {
            let a: abi::VmActivateCpu = arg(req)?;
            let c = vm.vcpu(a.vcpuid)?;
            if c.active {
                return errno(libc::EBUSY);
            }
            c.active = true;
            Ok(())
        }
        ioctl::VM_SUSPEND_CPU | ioctl::VM_RESUME_CPU => {
            let a: abi::VmActivateCpu = arg(req)?;
            let suspend = req.cmd == ioctl::VM_SUSPEND_CPU;
            if a.vcpuid == -1 {
                for c in vm.vcpus.iter_mut().filter(|c| c.active) {
                    c.suspended = suspend;
                }
                return Ok(());
            }
            let c = vm.vcpu(a.vcpuid)?;
            if !c.active || (!suspend && !c.suspended) {
                return errno(libc::EINVAL);
            }
            c.suspended = suspend;
            Ok(())
        }
        ioctl::VM_GET_CPUS => {
            let a: abi::VmCpuset = arg(req)?;
            let len =
                usize::try_from(a.cpusetsize).map_err(|_| BackendError::Errno(libc::EINVAL))?;
            if len < VM_MAXCPU.div_ceil(8) || len > abi::CPUSET_SIZE {
                return errno(libc::ERANGE);
            }
            let which: Vec<usize> = match a.which {
                abi::VM_ACTIVE_CPUS => (0..VM_MAXCPU).filter(|&i| vm.vcpus[i].active).collect(),
                abi::VM_SUSPENDED_CPUS => (0..VM_MAXCPU)
                    .filter(|&i| vm.vcpus[i].left_suspended)
                    .collect(),
                abi::VM_DEBUG_CPUS => (0..VM_MAXCPU).filter(|&i| vm.vcpus[i].suspended).collect(),
                _ => return errno(libc::EINVAL),
            };
            set_bits(buf(req, ptr::CPUSET_CPUS, len)?, which.into_iter());
            Ok(())
        }
        ioctl::VM_GET_VGIC_VERSION => {
            put(
                req,
                &abi::VmVgicVersion {
                    version: 3,
                    flags: 0,
                },
            );
            Ok(())
        }
        ioctl::VM_ATTACH_VGIC => {
            let a: abi::VmVgicDescr = arg(req)?;
            let r = a.v3_regs;
            let stride = vmm_platform::GICR_STRIDE;
            if a.ver.version != 3
                || r.dist_size != 0x1_0000
                || r.redist_size == 0
                || !r.redist_size.is_multiple_of(stride)
                || !r.dist_start.is_multiple_of(0x1_0000)
                || !r.redist_start.is_multiple_of(0x1_0000)
            {
                return errno(libc::EINVAL);
            }
            if vm.vgic.is_some() {
                return errno(libc::EEXIST);
            }
            vm.vgic = Some((
                Window::new(r.dist_start, r.dist_size),
                Window::new(r.redist_start, r.redist_size),
            ));
            Ok(())
        }
        _ => errno(libc::ENOTTY),
    }
}

fn anon(len: usize) -> std::io::Result<MmapOwner> {
    // Untouched pages cost nothing, so tests may give guests a realistic size.
    #[cfg(target_os = "linux")]
    let flags = libc::MAP_ANON | libc::MAP_NORESERVE;
    #[cfg(not(target_os = "linux"))]
    let flags = libc::MAP_ANON;
    MmapOwner::map(-1, 0, len, flags)
}

impl Backend for FakeVmm {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn execute(&self, req: &mut Request) -> Result<(), BackendError> {
        req.check().map_err(|_| BackendError::Errno(libc::EINVAL))?;
        match req.target.clone() {
            Target::Ctl => self.ctl(req),
            Target::Vm(name) => self.vm_request(&name, req),
        }
    }

    fn map_memory(&self, vm: &str, gpa: u64, len: usize) -> Result<Mapping, BackendError> {
        let st = self.lock();
        let v = st.vms.get(vm).ok_or(BackendError::NoSuchVm)?;
        let end = gpa
            .checked_add(len as u64)
            .ok_or(BackendError::Errno(libc::EINVAL))?;
        let m = v
            .maps
            .iter()
            .find(|m| m.gpa <= gpa && end <= m.gpa + m.len)
            .ok_or(BackendError::Errno(libc::EINVAL))?;
        let seg = v
            .segs
            .get(&m.segid)
            .ok_or(BackendError::Errno(libc::EINVAL))?;
        if seg.name[0] != 0 || len == 0 {
            // Device memory is not reachable through /dev/vmm/NAME.
            return Err(BackendError::Errno(libc::EINVAL));
        }
        let off = (m.segoff + (gpa - m.gpa)) as usize;
        // SAFETY: off + len <= segoff + map len <= segment len (checked when the map was
        // made), so the pointer stays inside the segment's mapping.
        let p = unsafe { seg.mem.as_ptr().add(off) };
        let ptr = NonNull::new(p).ok_or(BackendError::Errno(libc::EFAULT))?;
        // SAFETY: ptr..ptr+len lies in the segment's shared anonymous memory, which the
        // cloned Arc keeps mapped; it is guest memory, accessed volatilely.
        Ok(unsafe { Mapping::new(ptr, len, seg.mem.clone()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{self, Dir};

    fn fake_with_vm() -> Arc<FakeVmm> {
        let f = FakeVmm::new();
        f.execute(&mut request::vm_create("v").unwrap()).unwrap();
        f
    }

    #[test]
    fn honours_buffers_and_refuses_malformed_requests() {
        let f = fake_with_vm();
        // A register set whose regvals buffer is too short: EFAULT, as a bad pointer.
        let mut r = request::get_register_set("v", 0, &[0, 1]);
        r.buffer_mut(ptr::REGSET_REGVALS).unwrap().data.truncate(8);
        assert_eq!(f.execute(&mut r), Err(BackendError::Errno(libc::EFAULT)));
        // Missing buffer.
        let mut r = request::get_register_set("v", 0, &[0]);
        r.buffers.remove(1);
        assert_eq!(f.execute(&mut r), Err(BackendError::Errno(libc::EFAULT)));
        // A bad register number inside the buffer.
        let mut r = request::get_register_set("v", 0, &[41]);
        assert_eq!(f.execute(&mut r), Err(BackendError::Errno(libc::EINVAL)));
        // Argument length differing from the ioctl word.
        let mut r = request::get_register("v", 0, 0);
        r.arg.push(0);
        assert_eq!(f.execute(&mut r), Err(BackendError::Errno(libc::EINVAL)));
        // Count over VM_REG_LAST.
        let mut r = request::get_register_set("v", 0, &[0; 41]);
        assert_eq!(f.execute(&mut r), Err(BackendError::Errno(libc::EINVAL)));
        // Unknown ioctl.
        let mut r = Request::void(Target::Vm("v".into()), ioctl::io(b'v', 200));
        assert_eq!(f.execute(&mut r), Err(BackendError::Errno(libc::ENOTTY)));
        // Unknown VM.
        let mut r = request::get_register("w", 0, 0);
        assert_eq!(f.execute(&mut r), Err(BackendError::NoSuchVm));
        // Reserved bits in a create request.
        let mut r = request::vm_create("x").unwrap();
        let last = r.arg.len() - 1;
        r.arg[last] = 1;
        assert_eq!(f.execute(&mut r), Err(BackendError::Errno(libc::EINVAL)));
    }

    #[test]
    fn run_fills_exit_and_cpuset_buffers() {
        let f = fake_with_vm();
        let mut r = request::simple(
            "v",
            ioctl::VM_ACTIVATE_CPU,
            &abi::VmActivateCpu { vcpuid: 3 },
        );
        f.execute(&mut r).unwrap();
        let mut r = request::simple("v", ioctl::VM_SUSPEND, &abi::VmSuspend { how: 3 });
        f.execute(&mut r).unwrap();
        let mut r = request::run("v", 3);
        f.execute(&mut r).unwrap();
        let exit = VmExit::from_bytes(&r.buffer(ptr::RUN_VM_EXIT).unwrap().data).unwrap();
        assert_eq!(exit.exitcode, vmm_sys::exit::ExitCode::Suspended as i32);
        // SAFETY: all-integer union member.
        assert_eq!(unsafe { exit.u.suspended.how }, 3);
        let set = &r.buffer(ptr::RUN_CPUSET).unwrap().data;
        assert_eq!(set[0], 1 << 3);
        assert!(set[1..].iter().all(|&b| b == 0));
        // The argument's pointer fields stay zero: nothing local leaks into a request.
        let a: abi::VmRun = r.arg_as().unwrap();
        assert_eq!((a.cpuset, a.vm_exit), (0, 0));
        assert_eq!(r.buffer(ptr::RUN_VM_EXIT).unwrap().dir, Dir::Out);
    }

    #[test]
    fn memory_rules() {
        let f = fake_with_vm();
        let seg = |segid, len| {
            let mut r = request::simple(
                "v",
                ioctl::VM_ALLOC_MEMSEG,
                &abi::VmMemseg {
                    segid,
                    len,
                    ..Default::default()
                },
            );
            f.execute(&mut r)
        };
        assert_eq!(seg(0, 4095), Err(BackendError::Errno(libc::EINVAL)));
        assert_eq!(seg(4, 4096), Err(BackendError::Errno(libc::EINVAL)));
        assert_eq!(seg(0, 8192), Ok(()));
        assert_eq!(seg(0, 8192), Err(BackendError::Errno(libc::EEXIST)));
        assert_eq!(seg(0, 4096), Err(BackendError::Errno(libc::EINVAL)));
        let map = |gpa, segoff, len| {
            let mut r = request::simple(
                "v",
                ioctl::VM_MMAP_MEMSEG,
                &abi::VmMemmap {
                    gpa,
                    segid: 0,
                    segoff,
                    len,
                    prot: abi::PROT_ALL,
                    ..Default::default()
                },
            );
            f.execute(&mut r)
        };
        assert_eq!(
            map(0x1000, 4096, 8192),
            Err(BackendError::Errno(libc::EINVAL))
        );
        assert_eq!(
            map(1 << 39, 0, 4096),
            Err(BackendError::Errno(libc::EINVAL))
        );
        assert_eq!(map(0x1001, 0, 4096), Err(BackendError::Errno(libc::EINVAL)));
        assert_eq!(map(0x1000, 0, 8192), Ok(()));
        // map_memory only inside one mapping.
        assert!(f.map_memory("v", 0x1000, 8192).is_ok());
        assert!(f.map_memory("v", 0x2000, 8192).is_err());
        assert!(f.map_memory("v", 0, 4096).is_err());
        for i in 1..VM_MAX_MEMMAPS as u64 {
            assert_eq!(map(0x10_0000 * i, 0, 4096), Ok(()));
        }
        assert_eq!(
            map(0x1000_0000, 0, 4096),
            Err(BackendError::Errno(libc::ENOSPC))
        );
    }
}
