//! `FakeVmm`: an in-process [`Backend`] for unit tests of code that drives VMs (bhyve's
//! run loop and devices, bhyveload, bhyvectl). A test double only: the product backends
//! are the FreeBSD one and the testbed.
//!
//! It is the kernel's own core (`vmm_core::Vmm`, the code vmm.ko runs) over the core's
//! fake host (`vmm_core::fake::FakeHost`: fake physical memory, CPUs and EL2), so every
//! request is answered by the dispatcher that ships. A request's buffers become the
//! fake user address space for the one dispatch that executes it (the core reaches them
//! through `copyin`/`copyout` as it would a process's memory); guest memory is the fake
//! physical memory behind the VM's segments, pinned while a [`Mapping`] shows it.
//!
//! Guests are scripted at the guest level: an HVC with x0..x7, an MMIO load or store
//! outside guest RAM, a WFI, a trapped system register, a pending signal
//! ([`vmm_core::fake::Scripted`]). The core classifies each as on hardware and VM_RUN
//! returns what it decides (an SMCCC exit, INST_EMUL, REG_EMUL, ...). A vCPU with
//! nothing scripted idles in the guest without using the CPU until a script arrives,
//! the core kicks it (VM_SUSPEND, destroy, an interrupt for it) or the run timeout
//! passes (an error naming the vCPU, so a test never hangs).
//!
//! Besides the core's state (read through ioctls where the ABI has one, else the
//! core's inspection API), the fake records the requests userspace made that change
//! state (register writes, interrupt lines, MSIs, injected exceptions), so a test can
//! check what a device model or loader asked for. Inspection helpers panic with a clear
//! message when the VM does not exist: they are for tests.

use crate::error::BackendError;
use crate::memory::Mapping;
use crate::request::{self, ptr, Request, Target};
use crate::vm::{Capability, PAGE_SIZE};
use crate::Backend;
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
pub use vmm_core::fake::Scripted;
use vmm_core::fake::{params, FakeHost};
use vmm_core::{DeviceRef, Errno, Vmm};
use vmm_platform::Window;
use vmm_sys::abi::{self, Pod};
use vmm_sys::exit::SuspendHow;
use vmm_sys::ioctl;
use vmm_sys::reg::Reg;

/// Fake physical memory of a [`FakeVmm::new`]: room for a few guests of the sizes tests
/// use (pages never touched cost nothing).
const DEFAULT_MIB: usize = 1024;
/// Host CPUs of the fake (vCPU threads do not need one each).
const NCPU: usize = 2;

/// What userspace asked of one VM, in order (the kernel keeps no such history).
#[derive(Default)]
struct VmLog {
    /// Per vCPU: VM_SET_REGISTER(_SET) writes.
    reg_writes: HashMap<u32, Vec<(Reg, u64)>>,
    /// VM_INJECT_EXCEPTION per vCPU: (esr, far).
    exceptions: HashMap<u32, Vec<(u64, u64)>>,
    /// VM_ASSERT_IRQ (true) / VM_DEASSERT_IRQ (false).
    irqs: Vec<(u32, bool)>,
    /// VM_RAISE_MSI: (addr, msg).
    msis: Vec<(u64, u64)>,
}

/// The in-process vmm. See the module documentation.
pub struct FakeVmm {
    /// Shared with the [`Mapping`]s handed out, which keep the fake memory alive.
    vmm: Arc<Vmm<FakeHost>>,
    run_timeout: Mutex<Duration>,
    logs: Mutex<HashMap<String, VmLog>>,
}

impl std::fmt::Debug for FakeVmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeVmm")
            .field("vms", &self.vmm.vm_count())
            .finish()
    }
}

/// The host's errno for one of the core's (FreeBSD numbers; the tests run on other
/// systems too, whose `libc` constants the callers compare with).
fn host_errno(e: Errno) -> i32 {
    match e {
        Errno::EPERM => libc::EPERM,
        Errno::ENOENT => libc::ENOENT,
        Errno::EINTR => libc::EINTR,
        Errno::EIO => libc::EIO,
        Errno::ENXIO => libc::ENXIO,
        Errno::E2BIG => libc::E2BIG,
        Errno::ENOMEM => libc::ENOMEM,
        Errno::EFAULT => libc::EFAULT,
        Errno::EBUSY => libc::EBUSY,
        Errno::EEXIST => libc::EEXIST,
        Errno::ENODEV => libc::ENODEV,
        Errno::EINVAL => libc::EINVAL,
        Errno::ENOTTY => libc::ENOTTY,
        Errno::ENOSPC => libc::ENOSPC,
        Errno::ERANGE => libc::ERANGE,
        Errno::EALREADY => libc::EALREADY,
        Errno(n) => n,
    }
}

/// The transfer register number a syndrome carries for `reg` (`None` = XZR).
fn rt(reg: Option<Reg>) -> u8 {
    match reg {
        Some(Reg::X(n)) => n,
        Some(Reg::Lr) => 30,
        None => 31,
        Some(r) => panic!("FakeVmm: {r:?} cannot be a transfer register"),
    }
}

/// Keeps guest memory shown by a [`Mapping`] from being reused, and the fake memory
/// itself alive, until the mapping goes.
struct Pin {
    vmm: Arc<Vmm<FakeHost>>,
    pa: u64,
    len: usize,
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.vmm.host().unpin(self.pa, self.len);
    }
}

impl FakeVmm {
    /// A fake with 1 GiB of fake physical memory, shared (`Arc<FakeVmm>` coerces to
    /// `Arc<dyn Backend>`).
    pub fn new() -> Arc<FakeVmm> {
        Self::with_memory(DEFAULT_MIB)
    }

    /// A fake whose host has `mib` MiB of physical memory for all its VMs.
    pub fn with_memory(mib: usize) -> Arc<FakeVmm> {
        let vmm = Vmm::new(FakeHost::new(mib, NCPU), params())
            .unwrap_or_else(|(_, e)| panic!("FakeVmm: the core did not load: {e}"));
        Arc::new(FakeVmm {
            vmm: Arc::new(vmm),
            run_timeout: Mutex::new(Duration::from_secs(10)),
            logs: Mutex::new(HashMap::new()),
        })
    }

    /// This fake as the backend type [`crate::Vm::create_with`] takes.
    pub fn backend(self: &Arc<Self>) -> Arc<dyn Backend> {
        self.clone()
    }

    /// The core itself (its fake host: `vmm().host()`).
    pub fn vmm(&self) -> &Vmm<FakeHost> {
        &self.vmm
    }

    fn logs(&self) -> MutexGuard<'_, HashMap<String, VmLog>> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_log<R>(&self, vm: &str, f: impl FnOnce(&mut VmLog) -> R) -> R {
        self.exists_or_panic(vm);
        f(self.logs().entry(vm.to_string()).or_default())
    }

    fn exists_or_panic(&self, vm: &str) {
        assert!(
            self.vmm.vm_exists(vm.as_bytes()),
            "FakeVmm: vm '{vm}' does not exist"
        );
    }

    /// Executes `req` for an inspection helper (not recorded), panicking on failure.
    fn inspect(&self, mut req: Request, what: &str) -> Request {
        if let Target::Vm(vm) = &req.target {
            self.exists_or_panic(vm);
        }
        if let Err(e) = self.dispatch(&mut req) {
            panic!("FakeVmm: {what}: {e}");
        }
        req
    }

    // ---- scripting ----

    /// Queues a guest-level event for `vcpu` of `vm`: [`Scripted`]'s constructors, or
    /// [`smccc`], [`mmio_read`] and [`mmio_write`] here, which name registers as
    /// libvmmapi does.
    pub fn script(&self, vm: &str, vcpu: u32, s: Scripted) {
        self.exists_or_panic(vm);
        self.vmm.host().script(vm.as_bytes(), vcpu, s);
    }

    /// Queues several events, in order.
    pub fn script_all(&self, vm: &str, vcpu: u32, events: impl IntoIterator<Item = Scripted>) {
        for s in events {
            self.script(vm, vcpu, s);
        }
    }

    /// The guest calls `hvc #0` (SMCCC, PSCI) with x0 = `func_id`, x1... = `args` (at
    /// most 7); the exit reports `pc`.
    pub fn script_smccc(&self, vm: &str, vcpu: u32, pc: u64, func_id: u64, args: &[u64]) {
        self.script(vm, vcpu, smccc(pc, func_id, args));
    }

    /// Scripted events of `vcpu` of `vm` its guest has not played yet.
    pub fn pending_scripts(&self, vm: &str, vcpu: u32) -> usize {
        self.vmm.host().scripted_left(vm.as_bytes(), vcpu)
    }

    /// How long VM_RUN waits in a guest with nothing scripted (default 10 s).
    pub fn set_run_timeout(&self, t: Duration) {
        *self.run_timeout.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }

    // ---- inspection ----

    pub fn vm_exists(&self, vm: &str) -> bool {
        self.vmm.vm_exists(vm.as_bytes())
    }

    /// All VMs, sorted (VMMCTL_VM_LIST).
    pub fn vm_names(&self) -> Vec<String> {
        crate::Vm::list_with(self).unwrap_or_else(|e| panic!("FakeVmm: {e}"))
    }

    /// The input line of SPI `intid` (what VM_ASSERT_IRQ/VM_DEASSERT_IRQ last drove).
    pub fn irq_level(&self, vm: &str, intid: u32) -> bool {
        self.exists_or_panic(vm);
        self.vmm
            .spi_line(vm.as_bytes(), intid)
            .unwrap_or_else(|| panic!("FakeVmm: vm '{vm}' has no vGIC or no SPI {intid}"))
    }

    /// Every VM_ASSERT_IRQ (true) / VM_DEASSERT_IRQ (false) the kernel accepted, in order.
    pub fn irq_log(&self, vm: &str) -> Vec<(u32, bool)> {
        self.with_log(vm, |l| l.irqs.clone())
    }

    /// Every VM_RAISE_MSI the kernel accepted, as (addr, msg).
    pub fn msis(&self, vm: &str) -> Vec<(u64, u64)> {
        self.with_log(vm, |l| l.msis.clone())
    }

    /// Exceptions userspace injected into `vcpu` (VM_INJECT_EXCEPTION) as (esr, far),
    /// oldest first.
    pub fn exceptions(&self, vm: &str, vcpu: u32) -> Vec<(u64, u64)> {
        self.with_log(vm, |l| l.exceptions.get(&vcpu).cloned().unwrap_or_default())
    }

    /// A register's value (VM_GET_REGISTER; the vCPU must not be in VM_RUN).
    pub fn reg(&self, vm: &str, vcpu: u32, reg: Reg) -> u64 {
        let req = self.inspect(
            request::get_register(vm, vcpu as i32, reg.number() as i32),
            "VM_GET_REGISTER",
        );
        req.arg_as::<abi::VmRegister>().unwrap_or_default().regval
    }

    /// Sets a register as the guest would have left it (VM_SET_REGISTER, not recorded
    /// as a write).
    pub fn set_reg(&self, vm: &str, vcpu: u32, reg: Reg, value: u64) {
        self.inspect(
            request::set_register(vm, vcpu as i32, reg.number() as i32, value),
            "VM_SET_REGISTER",
        );
    }

    /// Register writes made through VM_SET_REGISTER(_SET) since the last call.
    pub fn take_reg_writes(&self, vm: &str, vcpu: u32) -> Vec<(Reg, u64)> {
        self.with_log(vm, |l| l.reg_writes.remove(&vcpu).unwrap_or_default())
    }

    /// Whether `vcpu` is in the VM's active set (VM_GET_CPUS).
    pub fn is_active(&self, vm: &str, vcpu: u32) -> bool {
        let req = self.inspect(request::get_cpus(vm, abi::VM_ACTIVE_CPUS), "VM_GET_CPUS");
        let set = &req.buffer(ptr::CPUSET_CPUS).map(|b| b.data.clone());
        set.as_ref()
            .and_then(|s| s.get(vcpu as usize / 8))
            .is_some_and(|b| b & (1 << (vcpu % 8)) != 0)
    }

    /// How the VM was suspended (VM_SUSPEND), if it was.
    pub fn suspended(&self, vm: &str) -> Option<SuspendHow> {
        self.exists_or_panic(vm);
        match self.vmm.suspend_how(vm.as_bytes()) {
            Some(0) | None => None,
            Some(how) => Some(
                SuspendHow::try_from(how)
                    .unwrap_or_else(|h| panic!("FakeVmm: unknown suspend state {h}")),
            ),
        }
    }

    /// The vGIC windows (distributor, redistributors), once attached.
    pub fn vgic(&self, vm: &str) -> Option<(Window, Window)> {
        self.exists_or_panic(vm);
        let w = self.vmm.vgic_windows(vm.as_bytes()).flatten()?;
        Some((Window::new(w.0 .0, w.0 .1), Window::new(w.1 .0, w.1 .1)))
    }

    /// A capability's value (VM_GET_CAPABILITY).
    pub fn capability(&self, vm: &str, vcpu: u32, cap: Capability) -> i32 {
        let req = self.inspect(
            request::simple(
                vm,
                ioctl::VM_GET_CAPABILITY,
                &abi::VmCapability {
                    cpuid: vcpu as i32,
                    captype: cap.number(),
                    ..Default::default()
                },
            ),
            "VM_GET_CAPABILITY",
        );
        req.arg_as::<abi::VmCapability>().unwrap_or_default().capval
    }

    /// (sockets, cores, threads) (VM_GET_TOPOLOGY).
    pub fn topology(&self, vm: &str) -> (u16, u16, u16) {
        let req = self.inspect(
            request::simple(vm, ioctl::VM_GET_TOPOLOGY, &abi::VmCpuTopology::default()),
            "VM_GET_TOPOLOGY",
        );
        let t: abi::VmCpuTopology = req.arg_as().unwrap_or_default();
        (t.sockets, t.cores, t.threads)
    }

    // ---- request execution ----

    /// Executes `req` on the core: its buffers become fake user memory for the one
    /// dispatch, its pointer fields their addresses there.
    fn dispatch(&self, req: &mut Request) -> Result<(), BackendError> {
        req.check().map_err(|_| BackendError::Errno(libc::EINVAL))?;
        let host = self.vmm.host();
        let mut arg = req.arg.clone();
        let mut user = Vec::with_capacity(req.buffers.len());
        for b in &req.buffers {
            let uaddr = host.user_alloc(b.data.len());
            if !b.data.is_empty() {
                host.user_write(uaddr, &b.data);
            }
            arg[b.ptr_offset..b.ptr_offset + 8].copy_from_slice(&uaddr.to_ne_bytes());
            user.push(uaddr);
        }
        let r = match &req.target {
            Target::Ctl => self
                .vmm
                .dispatch(DeviceRef::Ctl, req.cmd, &mut arg)
                .map_err(|e| BackendError::Errno(host_errno(e))),
            Target::Vm(name) => self.vm_dispatch(name, req.cmd, &mut arg),
        };
        for (b, &uaddr) in req.buffers.iter_mut().zip(&user) {
            if r.is_ok() && b.dir.is_out() && !b.data.is_empty() {
                b.data = host.user_read(uaddr, b.data.len());
            }
            host.user_free(uaddr);
        }
        r?;
        if req.copies_out() {
            for b in &req.buffers {
                arg[b.ptr_offset..b.ptr_offset + 8].fill(0);
            }
            req.arg = arg;
        }
        Ok(())
    }

    fn vm_dispatch(&self, name: &str, cmd: u64, arg: &mut [u8]) -> Result<(), BackendError> {
        let vm = name.as_bytes();
        // As opening /dev/vmm/NAME would fail.
        if !self.vmm.vm_exists(vm) {
            return Err(BackendError::NoSuchVm);
        }
        let r = if cmd == ioctl::VM_RUN {
            let vcpu = abi::VmRun::from_bytes(arg).map_or(0, |a| a.cpuid);
            let timeout = *self.run_timeout.lock().unwrap_or_else(|p| p.into_inner());
            let (r, timed_out) = self.vmm.host().run_guest(vm, vcpu as u32, timeout, || {
                self.vmm.dispatch(DeviceRef::Vm(vm), cmd, arg)
            });
            if timed_out {
                return Err(BackendError::Unavailable(format!(
                    "fake vmm: vm '{name}' vcpu {vcpu}: no scripted exit left after waiting {timeout:?}"
                )));
            }
            r
        } else {
            self.vmm.dispatch(DeviceRef::Vm(vm), cmd, arg)
        };
        match r {
            // Destroyed meanwhile: as a node that went away.
            Err(Errno::ENOENT) if !self.vmm.vm_exists(vm) => Err(BackendError::NoSuchVm),
            Err(e) => Err(BackendError::Errno(host_errno(e))),
            Ok(()) => Ok(()),
        }
    }

    /// Records what a request the kernel accepted asked for.
    fn record(&self, req: &Request) {
        let name = match &req.target {
            Target::Ctl => {
                let made_or_gone =
                    matches!(req.cmd, ioctl::VMMCTL_VM_CREATE | ioctl::VMMCTL_VM_DESTROY);
                if let Some(a) = req.arg_as::<abi::VmmctlVmCreate>().filter(|_| made_or_gone) {
                    let n = String::from_utf8_lossy(a.name_bytes()).into_owned();
                    // A VM made again under the name starts with no history or script.
                    self.logs().remove(&n);
                    self.vmm.host().forget_scripts(n.as_bytes());
                }
                return;
            }
            Target::Vm(n) => n,
        };
        let mut logs = self.logs();
        let log = logs.entry(name.clone()).or_default();
        match req.cmd {
            ioctl::VM_SET_REGISTER => {
                if let Some(a) = req.arg_as::<abi::VmRegister>() {
                    log_write(log, a.cpuid, a.regnum, a.regval);
                }
            }
            ioctl::VM_SET_REGISTER_SET => {
                let (Some(a), Some(nums), Some(vals)) = (
                    req.arg_as::<abi::VmRegisterSet>(),
                    req.buffer(ptr::REGSET_REGNUMS),
                    req.buffer(ptr::REGSET_REGVALS),
                ) else {
                    return;
                };
                for (n, v) in nums.data.chunks_exact(4).zip(vals.data.chunks_exact(8)) {
                    let n = i32::from_ne_bytes(n.try_into().unwrap_or_default());
                    let v = u64::from_ne_bytes(v.try_into().unwrap_or_default());
                    log_write(log, a.cpuid, n, v);
                }
            }
            ioctl::VM_INJECT_EXCEPTION => {
                if let Some(a) = req.arg_as::<abi::VmException>() {
                    let c = u32::try_from(a.cpuid).unwrap_or(u32::MAX);
                    log.exceptions.entry(c).or_default().push((a.esr, a.far));
                }
            }
            ioctl::VM_ASSERT_IRQ | ioctl::VM_DEASSERT_IRQ => {
                if let Some(a) = req.arg_as::<abi::VmIrq>() {
                    log.irqs.push((a.irq, req.cmd == ioctl::VM_ASSERT_IRQ));
                }
            }
            ioctl::VM_RAISE_MSI => {
                if let Some(a) = req.arg_as::<abi::VmMsi>() {
                    log.msis.push((a.addr, a.msg));
                }
            }
            ioctl::VM_REINIT => {
                // The vCPUs are back at reset: what was written to them is history.
                log.reg_writes.clear();
                log.exceptions.clear();
            }
            _ => {}
        }
    }
}

fn log_write(log: &mut VmLog, cpuid: i32, regnum: i32, val: u64) {
    if let (Ok(c), Ok(r)) = (u32::try_from(cpuid), Reg::try_from(regnum)) {
        log.reg_writes.entry(c).or_default().push((r, val));
    }
}

/// [`Scripted::hvc`] with x0 = `func_id` and x1... = `args` (at most 7; the other
/// registers stay as the guest has them).
pub fn smccc(pc: u64, func_id: u64, args: &[u64]) -> Scripted {
    let mut x = vec![func_id];
    x.extend_from_slice(args);
    Scripted::hvc(pc, &x)
}

/// [`Scripted::mmio_read`] naming the transfer register as libvmmapi does.
pub fn mmio_read(pc: u64, gpa: u64, size: u8, sign_extend: bool, reg: Option<Reg>) -> Scripted {
    Scripted::mmio_read(pc, gpa, size, sign_extend, rt(reg))
}

/// [`Scripted::mmio_write`] naming the transfer register as libvmmapi does.
pub fn mmio_write(pc: u64, gpa: u64, size: u8, reg: Option<Reg>, value: Option<u64>) -> Scripted {
    Scripted::mmio_write(pc, gpa, size, rt(reg), value)
}

impl Backend for FakeVmm {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn execute(&self, req: &mut Request) -> Result<(), BackendError> {
        self.dispatch(req)?;
        self.record(req);
        Ok(())
    }

    fn map_memory(&self, vm: &str, gpa: u64, len: usize) -> Result<Mapping, BackendError> {
        let name = vm.as_bytes();
        if !self.vmm.vm_exists(name) {
            return Err(BackendError::NoSuchVm);
        }
        let einval = BackendError::Errno(libc::EINVAL);
        let end = gpa.checked_add(len as u64).ok_or(einval.clone())?;
        if len == 0 || !gpa.is_multiple_of(PAGE_SIZE) {
            return Err(einval);
        }
        // The mapping holding the range, and its segment (VM_MMAP_GETNEXT from the
        // mapping at or below gpa, VM_GET_MEMSEG), as d_mmap_single checks them.
        let mut at = 0;
        let map = loop {
            let mut req = request::simple(
                vm,
                ioctl::VM_MMAP_GETNEXT,
                &abi::VmMemmap {
                    gpa: at,
                    ..Default::default()
                },
            );
            self.dispatch(&mut req).map_err(|_| einval.clone())?;
            let m: abi::VmMemmap = req.arg_as().ok_or(einval.clone())?;
            if m.gpa > gpa {
                return Err(einval);
            }
            if gpa < m.gpa + m.len {
                break m;
            }
            at = m.gpa + m.len;
        };
        let mut req = request::simple(
            vm,
            ioctl::VM_GET_MEMSEG,
            &abi::VmMemseg {
                segid: map.segid,
                ..Default::default()
            },
        );
        self.dispatch(&mut req)?;
        let seg: abi::VmMemseg = req.arg_as().ok_or(einval.clone())?;
        if end > map.gpa + map.len || seg.name[0] != 0 {
            // Beyond the mapping, or device memory (not reachable through /dev/vmm/NAME).
            return Err(einval);
        }
        // One host range: the fake's physical memory is one block, so physically
        // contiguous pieces are contiguous here too.
        let (pa, va, _) = self.vmm.gpa_to_pa(name, gpa).ok_or(einval.clone())?;
        let mut next = gpa;
        while next < end {
            let (p, _, n) = self.vmm.gpa_to_pa(name, next).ok_or(einval.clone())?;
            if p != pa + (next - gpa) || n == 0 {
                return Err(BackendError::Unavailable(format!(
                    "fake vmm: vm '{vm}': guest memory at {gpa:#x} is not contiguous in the fake's memory"
                )));
            }
            next += n;
        }
        let ptr = NonNull::new(va).ok_or(einval)?;
        self.vmm.host().pin(pa, len);
        let pin = Arc::new(Pin {
            vmm: self.vmm.clone(),
            pa,
            len,
        });
        // SAFETY: ptr..ptr+len is the fake host's physical memory behind [gpa, gpa+len)
        // (contiguous, checked above); `pin` keeps that memory allocated (it holds the
        // core and so its host) and its pages from being reused after the VM frees them.
        // The guest and the core see it too: it is accessed volatilely.
        Ok(unsafe { Mapping::new(ptr, len, pin) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{self, Dir};
    use vmm_sys::abi::VmExit;

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
        // Missing buffer: the pointer stays NULL.
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
        // A register set round trip: values in through one buffer, out through another.
        let mut r = request::set_register_set("v", 2, &[(3, 0x33), (40, 7), (4, 0x44)]);
        f.execute(&mut r).unwrap();
        let mut r = request::get_register_set("v", 2, &[4, 3, 40]);
        f.execute(&mut r).unwrap();
        let vals = &r.buffer(ptr::REGSET_REGVALS).unwrap().data;
        let got: Vec<u64> = vals
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(got, [0x44, 0x33, 0], "XZR reads zero");
        // A capability type outside the enum is EINVAL; a known one arm64 lacks, ENOENT.
        let cap = |captype| {
            let a = abi::VmCapability {
                captype,
                ..Default::default()
            };
            f.execute(&mut request::simple("v", ioctl::VM_GET_CAPABILITY, &a))
        };
        assert_eq!(cap(99), Err(BackendError::Errno(libc::EINVAL)));
        assert_eq!(
            cap(Capability::UnrestrictedGuest.number()),
            Err(BackendError::Errno(libc::ENOENT))
        );
        // The errno of a FreeBSD-only number is the host's.
        let susp = || request::simple("v", ioctl::VM_SUSPEND, &abi::VmSuspend { how: 1 });
        f.execute(&mut susp()).unwrap();
        assert_eq!(
            f.execute(&mut susp()),
            Err(BackendError::Errno(libc::EALREADY))
        );
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
        // The fake user memory of each dispatch is gone afterwards.
        assert_eq!(f.vmm().host().user_regions(), 0);
    }

    #[test]
    fn guest_memory_is_the_segments_and_outlives_the_vm() {
        let f = fake_with_vm();
        let seg = |segid, len, name: &str| {
            let mut a = abi::VmMemseg {
                segid,
                len,
                ..Default::default()
            };
            a.name[..name.len()].copy_from_slice(name.as_bytes());
            f.execute(&mut request::simple("v", ioctl::VM_ALLOC_MEMSEG, &a))
        };
        let map = |gpa, segid, len| {
            let mut r = request::simple(
                "v",
                ioctl::VM_MMAP_MEMSEG,
                &abi::VmMemmap {
                    gpa,
                    segid,
                    segoff: 0,
                    len,
                    prot: abi::PROT_ALL,
                    ..Default::default()
                },
            );
            f.execute(&mut r)
        };
        seg(0, 4 << 20, "").unwrap();
        seg(1, 4096, "dev").unwrap();
        map(0x8000_0000, 0, 4 << 20).unwrap();
        map(0x1000_0000, 1, 4096).unwrap();
        // Only inside one mapping of system memory.
        let m = f.map_memory("v", 0x8000_0000, 4 << 20).unwrap();
        assert!(f.map_memory("v", 0x8000_1000, 4 << 20).is_err());
        assert!(f.map_memory("v", 0x7fff_f000, 8192).is_err());
        assert!(
            f.map_memory("v", 0x1000_0000, 4096).is_err(),
            "device memory"
        );
        assert_eq!(
            f.map_memory("w", 0, 4096).unwrap_err(),
            BackendError::NoSuchVm
        );
        // It is the segment the core gives the guest.
        // SAFETY: inside the mapping, which is live.
        unsafe { m.as_ptr().add(0x2008).write_volatile(0x5a) };
        let (_, kva, _) = f.vmm().gpa_to_pa(b"v", 0x8000_2008).unwrap();
        assert_eq!(kva, m.as_ptr().wrapping_add(0x2008));
        // Destroying the VM leaves the mapped pages alone until the mapping goes.
        let pages = f.vmm().host().pages_in_use();
        f.execute(&mut request::vm_destroy("v").unwrap()).unwrap();
        // SAFETY: as above; the pin keeps the pages.
        assert_eq!(unsafe { m.as_ptr().add(0x2008).read_volatile() }, 0x5a);
        let after_destroy = f.vmm().host().pages_in_use();
        assert!(after_destroy >= 1024 && after_destroy < pages);
        drop(m);
        assert_eq!(f.vmm().host().pages_in_use(), after_destroy - 1024);
    }
}
