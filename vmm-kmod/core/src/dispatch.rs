//! The ioctl dispatcher shared by every host: one FreeBSD request word and the bytes of
//! its argument structure (already copied in, `IOCPARM_LEN(cmd)` long, copied back out
//! by the caller for `_IOR`/`_IOWR` requests). Pointer members are user addresses,
//! reached only through `Host::copyin`/`copyout`. Every length, id and address is checked
//! here; an unknown request is `ENOTTY`, as a cdev answers it.

use crate::errno::{Errno, KResult};
use crate::host::Host;
use crate::mmio_shortcut::Shortcut;
use crate::stats::DESC;
use crate::vgic;
use crate::vm::{bit, Vm};
use crate::vmm::{DeviceRef, Vmm};
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use vmm_sys::abi::*;
use vmm_sys::exit::{ExitCode, VM_SUSPEND_LAST};
use vmm_sys::ioctl::{self, iocparm_len};
use vmm_sys::reg::VM_REG_LAST;
use vmm_sys::VM_MAXCPU;

/// Reads the request structure `T` out of `arg` (whose length was checked).
fn get<T: Pod>(arg: &[u8]) -> KResult<T> {
    T::from_bytes(arg).ok_or(Errno::EINVAL)
}

/// Writes `v` back into `arg`.
fn put<T: Pod>(arg: &mut [u8], v: &T) -> KResult<()> {
    let b = v.as_bytes();
    if b.len() != arg.len() {
        return Err(Errno::EINVAL);
    }
    arg.copy_from_slice(b);
    Ok(())
}

/// A zeroed buffer of `n` bytes, `ENOMEM` if the allocation fails.
fn zeroed_buf(n: usize) -> KResult<Vec<u8>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Errno::ENOMEM)?;
    v.resize(n, 0);
    Ok(v)
}

impl<H: Host> Vmm<H> {
    /// Handles one ioctl. `arg` holds the argument structure's bytes and must be exactly
    /// `IOCPARM_LEN(cmd)` long (`EINVAL` otherwise).
    pub fn dispatch(&self, dev: DeviceRef<'_>, cmd: u64, arg: &mut [u8]) -> KResult<()> {
        if arg.len() != iocparm_len(cmd) {
            return Err(Errno::EINVAL);
        }
        match dev {
            DeviceRef::Ctl => self.dispatch_ctl(cmd, arg),
            DeviceRef::Vm(name) => {
                let vm = self.lookup(name)?;
                self.dispatch_vm(&vm, cmd, arg)
            }
        }
    }

    fn dispatch_ctl(&self, cmd: u64, arg: &mut [u8]) -> KResult<()> {
        match cmd {
            ioctl::VMMCTL_VM_CREATE | ioctl::VMMCTL_VM_DESTROY => {
                let req: VmmctlVmCreate = get(arg)?;
                if req.reserved.iter().any(|&r| r != 0) {
                    return Err(Errno::EINVAL);
                }
                let name = req.name_bytes();
                vmm_sys::validate_vm_name(name).map_err(|_| Errno::EINVAL)?;
                if cmd == ioctl::VMMCTL_VM_CREATE {
                    self.create_vm(name)
                } else {
                    self.destroy_vm(name)
                }
            }
            ioctl::VMMCTL_VM_LIST => {
                let mut req: VmmctlVmList = get(arg)?;
                self.check_up()?;
                let mut names: Vec<Vec<u8>> = Vec::new();
                {
                    let reg = self.reg.lock();
                    names
                        .try_reserve_exact(reg.vms.len())
                        .map_err(|_| Errno::ENOMEM)?;
                    for vm in reg.vms.iter() {
                        let mut n = Vec::new();
                        n.try_reserve_exact(vm.name.len())
                            .map_err(|_| Errno::ENOMEM)?;
                        n.extend_from_slice(&vm.name);
                        names.push(n);
                    }
                }
                names.sort();
                // Whole NUL-terminated names while they fit; `needed` counts all.
                let mut out: Vec<u8> = Vec::new();
                let mut needed: u64 = 0;
                let mut fits = true;
                for n in &names {
                    let len = (n.len() as u64).saturating_add(1);
                    let next = needed.saturating_add(len);
                    if fits && next <= req.buflen {
                        out.try_reserve(n.len().saturating_add(1))
                            .map_err(|_| Errno::ENOMEM)?;
                        out.extend_from_slice(n);
                        out.push(0);
                    } else {
                        fits = false;
                    }
                    needed = next;
                }
                if !out.is_empty() {
                    self.host.copyout(&out, req.buf)?;
                }
                req.needed = needed;
                req.count = u32::try_from(names.len()).unwrap_or(u32::MAX);
                put(arg, &req)
            }
            _ => Err(Errno::ENOTTY),
        }
    }

    fn dispatch_vm(&self, vm: &Vm<H>, cmd: u64, arg: &mut [u8]) -> KResult<()> {
        let host = &self.host;
        match cmd {
            ioctl::VM_RUN => {
                let req: VmRun = get(arg)?;
                let exit = self.run(vm, req.cpuid)?;
                self.host.copyout(exit.as_bytes(), req.vm_exit)?;
                let set = if exit.exitcode == ExitCode::Suspended as i32 {
                    Some(vm.suspended.load(Ordering::SeqCst))
                } else if exit.exitcode == ExitCode::Debug as i32 {
                    Some(vm.debug.load(Ordering::SeqCst))
                } else {
                    None
                };
                if let Some(set) = set {
                    if req.cpusetsize > 0 {
                        let n = usize::try_from(req.cpusetsize)
                            .unwrap_or(usize::MAX)
                            .min(CPUSET_SIZE);
                        self.copyout_cpuset(set, n, req.cpuset)?;
                    }
                }
                Ok(())
            }
            ioctl::VM_SUSPEND => {
                let req: VmSuspend = get(arg)?;
                if req.how <= 0 || req.how >= VM_SUSPEND_LAST {
                    return Err(Errno::EINVAL);
                }
                vm.suspend
                    .compare_exchange(0, req.how, Ordering::SeqCst, Ordering::SeqCst)
                    .map_err(|_| Errno::EALREADY)?;
                vm.notify_all(host);
                Ok(())
            }
            ioctl::VM_REINIT => self.reinit(vm),
            ioctl::VM_ALLOC_MEMSEG => {
                let req: VmMemseg = get(arg)?;
                if !req.name.contains(&0) {
                    return Err(Errno::EINVAL);
                }
                let len = req.len;
                // Counted against the limit once valid, before anything is allocated.
                let reserved = core::cell::Cell::new(false);
                let reserve = |n: u64| {
                    self.reserve_guest_mem(n)?;
                    reserved.set(true);
                    Ok(())
                };
                let r = vm
                    .mem
                    .lock()
                    .alloc_segment(host, req.segid, len, req.name, &reserve);
                if r.is_err() && reserved.get() {
                    self.release_guest_mem(len);
                }
                r
            }
            ioctl::VM_GET_MEMSEG => {
                let mut req: VmMemseg = get(arg)?;
                let (len, name) = vm.mem.lock().get_segment(req.segid)?;
                req.len = len;
                req.name = name;
                put(arg, &req)
            }
            ioctl::VM_MMAP_MEMSEG => {
                let req: VmMemmap = get(arg)?;
                let m = crate::mem::Memmap {
                    gpa: req.gpa,
                    segid: req.segid,
                    segoff: req.segoff,
                    len: req.len,
                    prot: req.prot,
                    flags: req.flags,
                };
                // Lock order vGIC, then memory (as VM_ATTACH_VGIC): a mapping over the
                // vGIC's windows would hide them (RAM is looked up first on a fault).
                let g = vm.vgic.lock();
                if let Some(v) = g.as_ref() {
                    let end = m.gpa.checked_add(m.len).ok_or(Errno::EINVAL)?;
                    for (base, size) in [v.dist_window(), v.redist_window()] {
                        if m.gpa < base.saturating_add(size) && base < end {
                            return Err(Errno::EINVAL);
                        }
                    }
                }
                vm.mem.lock().map(host, m)?;
                drop(g);
                vm.needs_cache_sync.store(true, Ordering::SeqCst);
                Ok(())
            }
            ioctl::VM_MMAP_GETNEXT => {
                let mut req: VmMemmap = get(arg)?;
                let m = vm.mem.lock().next_map(req.gpa)?;
                req.gpa = m.gpa;
                req.segid = m.segid;
                req.segoff = m.segoff;
                req.len = m.len;
                req.prot = m.prot;
                req.flags = m.flags;
                put(arg, &req)
            }
            ioctl::VM_MUNMAP_MEMSEG => {
                let req: VmMunmap = get(arg)?;
                vm.mem.lock().unmap(host, req.gpa, req.len)
            }
            ioctl::VM_SET_REGISTER => {
                let req: VmRegister = get(arg)?;
                vm.with_vcpu(host, req.cpuid, |v| v.set_reg(req.regnum, req.regval))
            }
            ioctl::VM_GET_REGISTER => {
                let mut req: VmRegister = get(arg)?;
                req.regval = vm.with_vcpu(host, req.cpuid, |v| v.get_reg(req.regnum))?;
                put(arg, &req)
            }
            ioctl::VM_SET_REGISTER_SET | ioctl::VM_GET_REGISTER_SET => {
                let req: VmRegisterSet = get(arg)?;
                self.register_set(vm, &req, cmd == ioctl::VM_SET_REGISTER_SET)
            }
            ioctl::VM_ACTIVATE_CPU => {
                let req: VmActivateCpu = get(arg)?;
                let id = self.vcpu_index(vm, req.vcpuid)?;
                // Create it now so a later VM_RUN cannot fail for memory.
                vm.with_vcpu(host, req.vcpuid, |_| Ok(()))?;
                let prev = vm.active.fetch_or(bit(id), Ordering::SeqCst);
                if prev & bit(id) != 0 {
                    return Err(Errno::EBUSY);
                }
                Ok(())
            }
            ioctl::VM_GET_CPUS => {
                let req: VmCpuset = get(arg)?;
                let set = match req.which {
                    VM_ACTIVE_CPUS => vm.active.load(Ordering::SeqCst),
                    VM_SUSPENDED_CPUS => vm.suspended.load(Ordering::SeqCst),
                    VM_DEBUG_CPUS => vm.debug.load(Ordering::SeqCst),
                    _ => return Err(Errno::EINVAL),
                };
                let size = usize::try_from(req.cpusetsize).map_err(|_| Errno::ERANGE)?;
                if !(1..=CPUSET_SIZE).contains(&size) {
                    return Err(Errno::ERANGE);
                }
                self.copyout_cpuset(set, size, req.cpus)
            }
            ioctl::VM_SUSPEND_CPU => {
                let req: VmActivateCpu = get(arg)?;
                if req.vcpuid == -1 {
                    let active = vm.active.load(Ordering::SeqCst);
                    vm.debug.store(active, Ordering::SeqCst);
                    vm.notify_all(host);
                    return Ok(());
                }
                let id = self.vcpu_index(vm, req.vcpuid)?;
                if vm.active.load(Ordering::SeqCst) & bit(id) == 0 {
                    return Err(Errno::EINVAL);
                }
                vm.debug.fetch_or(bit(id), Ordering::SeqCst);
                vm.notify(host, id as usize, false);
                Ok(())
            }
            ioctl::VM_RESUME_CPU => {
                let req: VmActivateCpu = get(arg)?;
                if req.vcpuid == -1 {
                    vm.debug.store(0, Ordering::SeqCst);
                    return Ok(());
                }
                let id = self.vcpu_index(vm, req.vcpuid)?;
                let prev = vm.debug.fetch_and(!bit(id), Ordering::SeqCst);
                if prev & bit(id) == 0 {
                    return Err(Errno::EINVAL);
                }
                Ok(())
            }
            ioctl::VM_INJECT_EXCEPTION => {
                let req: VmException = get(arg)?;
                vm.with_vcpu(host, req.cpuid, |v| {
                    v.inject(req.esr, req.far);
                    Ok(())
                })?;
                vm.slot(req.cpuid)?
                    .shared
                    .stats
                    .inc(crate::stats::Stat::Injected);
                Ok(())
            }
            ioctl::VM_GET_CAPABILITY => {
                let mut req: VmCapability = get(arg)?;
                let cap = req.captype;
                let val = vm.with_vcpu(host, req.cpuid, |v| match cap {
                    cap::HALT_EXIT => Ok(v.halt_exit),
                    cap::BRK_EXIT => Ok(v.brk_exit),
                    c if (0..cap::MAX).contains(&c) => Err(Errno::ENOENT),
                    _ => Err(Errno::EINVAL),
                })?;
                req.capval = i32::from(val);
                put(arg, &req)
            }
            ioctl::VM_SET_CAPABILITY => {
                let req: VmCapability = get(arg)?;
                if !(0..cap::MAX).contains(&req.captype) {
                    return Err(Errno::EINVAL);
                }
                if req.captype != cap::HALT_EXIT && req.captype != cap::BRK_EXIT {
                    return Err(Errno::ENOENT);
                }
                let on = req.capval != 0;
                let apply = |v: &mut crate::vcpu::Vcpu| {
                    if req.captype == cap::HALT_EXIT {
                        v.halt_exit = on;
                    } else {
                        v.set_brk_exit(on);
                    }
                    Ok(())
                };
                if req.allcpus != 0 {
                    for id in 0..VM_MAXCPU as i32 {
                        vm.with_vcpu(host, id, apply)?;
                    }
                    Ok(())
                } else {
                    vm.with_vcpu(host, req.cpuid, apply)
                }
            }
            ioctl::VM_STATS => {
                let mut req: VmStats = get(arg)?;
                // Read without taking the vCPU: counters of a running vCPU are fine.
                let stats = vm.slot(req.cpuid)?.shared.stats.snapshot();
                let start = usize::try_from(req.index).map_err(|_| Errno::EINVAL)?;
                req.statbuf = [0; MAX_VM_STATS];
                let mut n = 0i32;
                for (dst, src) in req.statbuf.iter_mut().zip(stats.iter().skip(start)) {
                    *dst = *src;
                    n = n.saturating_add(1);
                }
                req.num_entries = n;
                req.tv = self.now_timeval();
                put(arg, &req)
            }
            ioctl::VM_STAT_DESC => {
                let mut req: VmStatDesc = get(arg)?;
                let i = usize::try_from(req.index).map_err(|_| Errno::EINVAL)?;
                let d = DESC.get(i).ok_or(Errno::EINVAL)?;
                req.desc = [0; 128];
                let n = d.len().min(127);
                if let (Some(dst), Some(src)) = (req.desc.get_mut(..n), d.as_bytes().get(..n)) {
                    dst.copy_from_slice(src);
                }
                put(arg, &req)
            }
            ioctl::VM_SET_TOPOLOGY => {
                let req: VmCpuTopology = get(arg)?;
                let n = u32::from(req.sockets)
                    .checked_mul(u32::from(req.cores))
                    .and_then(|x| x.checked_mul(u32::from(req.threads)))
                    .ok_or(Errno::EINVAL)?;
                if n == 0 || n > VM_MAXCPU as u32 {
                    return Err(Errno::EINVAL);
                }
                let mut cfg = vm.cfg.lock();
                cfg.topology.sockets = req.sockets;
                cfg.topology.cores = req.cores;
                cfg.topology.threads = req.threads;
                Ok(())
            }
            ioctl::VM_GET_TOPOLOGY => {
                let t = vm.cfg.lock().topology;
                put(arg, &t)
            }
            ioctl::VM_ATTACH_VGIC => {
                let req: VmVgicDescr = get(arg)?;
                self.attach_vgic(vm, &req)
            }
            ioctl::VM_GET_VGIC_VERSION => put(
                arg,
                &VmVgicVersion {
                    version: vgic::VGIC_VERSION,
                    flags: 0,
                },
            ),
            ioctl::VM_ASSERT_IRQ | ioctl::VM_DEASSERT_IRQ => {
                let req: VmIrq = get(arg)?;
                let assert = cmd == ioctl::VM_ASSERT_IRQ;
                self.with_vgic(vm, |g| {
                    if assert {
                        g.assert_spi(req.irq)
                    } else {
                        g.deassert_spi(req.irq)
                    }
                })
            }
            ioctl::VM_RAISE_MSI => {
                let req: VmMsi = get(arg)?;
                self.with_vgic(vm, |g| g.raise_msi(req.addr, req.msg))
            }
            ioctl::VM_SET_MMIO_SHORTCUT => {
                let req: VmMmioShortcut = get(arg)?;
                // Accesses there would never reach the shortcuts: the vGIC's windows
                // are the kernel's own, past the IPA limit the guest gets an abort,
                // and guest RAM is memory (the EL2 code answers before any lookup).
                if req.gpa >= self.cfg.s2.ipa_limit()
                    || vm.vgic_windows.contains(req.gpa)
                    || vm.mem.lock().map_at(req.gpa).is_some()
                {
                    return Err(Errno::EINVAL);
                }
                const MIRROR: u32 = MMIO_ANSWER_LOADS | MMIO_BUFFER_STORES;
                let what = match req.flags {
                    0 => None,
                    MMIO_ANSWER_LOADS => Some(Shortcut::AnswerLoads(req.value)),
                    MMIO_BUFFER_STORES => Some(Shortcut::BufferStores),
                    MIRROR => Some(Shortcut::Mirror {
                        value: req.value & req.mask,
                        mask: req.mask,
                    }),
                    _ => return Err(Errno::EINVAL),
                };
                let mut mmio = vm.mmio.lock();
                match what {
                    Some(w) => mmio.set(req.gpa, w)?,
                    None => mmio.clear(req.gpa),
                }
                vm.mmio_gen.fetch_add(1, Ordering::SeqCst);
                drop(mmio);
                // A vCPU in the guest answers from the rows its entry copied: IPIed, it
                // takes the new ones (one entering now sees the new generation in its
                // re-check with `running_on` published).
                for slot in vm.vcpus.iter() {
                    let cpu = slot.shared.running_on.load(Ordering::SeqCst);
                    if cpu != crate::vm::NOT_RUNNING {
                        host.kick_cpu(cpu);
                    }
                }
                Ok(())
            }
            ioctl::VM_GET_MMIO_STORES => {
                let mut mmio = vm.mmio.lock();
                let lost = mmio.take_into(vm.store_queue(), arg)?;
                vm.mmio_flush_at.store(0, Ordering::SeqCst);
                drop(mmio);
                if lost != 0 {
                    host.log(format_args!(
                        "vmm: {lost} queued MMIO stores lost: a CPU never finished writing them"
                    ));
                }
                Ok(())
            }
            _ => Err(Errno::ENOTTY),
        }
    }

    /// VM_ATTACH_VGIC: `EEXIST` if the VM has one. The vGIC serves as many vCPUs as the
    /// redistributor window holds 128 KiB frames (bhyveload sizes it for the guest's
    /// vCPUs; `EINVAL` unless a whole number of frames, 1..=16), with vCPU n's
    /// affinity `vcpu_mpidr(n)`; the windows must lie in the IPA space, apart from each
    /// other and from every guest memory mapping (`Vgic::attach`).
    fn attach_vgic(&self, vm: &Vm<H>, req: &VmVgicDescr) -> KResult<()> {
        let stride = vgic::REDIST_STRIDE;
        let size = req.v3_regs.redist_size;
        if size == 0 || !size.is_multiple_of(stride) {
            return Err(Errno::EINVAL);
        }
        let n = usize::try_from(size / stride).map_err(|_| Errno::EINVAL)?;
        if n > vgic::MAX_CPUS {
            return Err(Errno::EINVAL);
        }
        let mut mpidrs = [0u64; vgic::MAX_CPUS];
        for (i, m) in mpidrs.iter_mut().enumerate() {
            *m = vmm_platform::vcpu_mpidr(u32::try_from(i).unwrap_or(0));
        }
        let mpidrs = mpidrs.get(..n).ok_or(Errno::EINVAL)?;
        // Lock order: the vGIC, then memory (VM_MMAP_MEMSEG too, so a mapping cannot
        // slip in between the check and the attach; the run loop never holds both).
        let mut g = vm.vgic.lock();
        if g.is_some() {
            return Err(Errno::EEXIST);
        }
        let mut ram = [(0u64, 0u64); crate::mem::VM_MAX_MEMMAPS];
        {
            let mem = vm.mem.lock();
            for (r, m) in ram.iter_mut().zip(mem.maps.iter()) {
                if let Some(m) = m {
                    *r = (m.gpa, m.len);
                }
            }
        }
        let v = vgic::Vgic::attach(req, mpidrs, &ram, self.cfg.s2.ipa_limit(), self.ich_vtr)?;
        vm.vgic_windows.set(v.dist_window(), v.redist_window());
        *g = Some(v);
        Ok(())
    }

    /// Runs an injection on the VM's vGIC (`EINVAL` without one) and notifies the
    /// vCPUs it names once the lock is dropped.
    fn with_vgic(
        &self,
        vm: &Vm<H>,
        f: impl FnOnce(&mut vgic::Vgic) -> KResult<vgic::Kicks>,
    ) -> KResult<()> {
        let kicks = {
            let mut g = vm.vgic.lock();
            f(g.as_mut().ok_or(Errno::EINVAL)?)?
        };
        vm.kick_irq(&self.host, kicks, None);
        Ok(())
    }

    /// A vCPU id as a bit index, `EINVAL` outside 0..VM_MAXCPU.
    fn vcpu_index(&self, vm: &Vm<H>, id: i32) -> KResult<u32> {
        vm.slot(id)?;
        u32::try_from(id).map_err(|_| Errno::EINVAL)
    }

    /// Copies the set `set` (bit n = vCPU n) out as the first `size` bytes of a
    /// `cpuset_t` (little-endian words, so byte k holds vCPUs 8k..8k+7).
    fn copyout_cpuset(&self, set: u32, size: usize, uaddr: u64) -> KResult<()> {
        let mut buf = zeroed_buf(size)?;
        for (dst, src) in buf.iter_mut().zip(set.to_le_bytes()) {
            *dst = src;
        }
        self.host.copyout(&buf, uaddr)
    }

    fn register_set(&self, vm: &Vm<H>, req: &VmRegisterSet, set: bool) -> KResult<()> {
        if req.count > VM_REG_LAST {
            return Err(Errno::EINVAL);
        }
        let count = req.count as usize; // at most 40
        let mut nums = zeroed_buf(count.saturating_mul(4))?;
        self.host.copyin(req.regnums, &mut nums)?;
        let mut vals = zeroed_buf(count.saturating_mul(8))?;
        let regnums: Vec<i32> = nums
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap_or([0xff; 4])))
            .collect();
        if set {
            self.host.copyin(req.regvals, &mut vals)?;
            vm.with_vcpu(&self.host, req.cpuid, |v| {
                // Validate every number and value first: all or nothing.
                for (&n, c) in regnums.iter().zip(vals.chunks_exact(8)) {
                    crate::vcpu::Vcpu::check_set(
                        n,
                        u64::from_le_bytes(c.try_into().unwrap_or([0; 8])),
                    )?;
                }
                for (&n, c) in regnums.iter().zip(vals.chunks_exact(8)) {
                    v.set_reg(n, u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))?;
                }
                Ok(())
            })
        } else {
            vm.with_vcpu(&self.host, req.cpuid, |v| {
                for (&n, c) in regnums.iter().zip(vals.chunks_exact_mut(8)) {
                    c.copy_from_slice(&v.get_reg(n)?.to_le_bytes());
                }
                Ok(())
            })?;
            self.host.copyout(&vals, req.regvals)
        }
    }

    /// VM_REINIT (FreeBSD `vm_reinit`): only when every active vCPU has left with
    /// SUSPENDED (or none is active) and none is in VM_RUN; resets every vCPU to its
    /// power-on state, clears the vCPU sets and the suspend state, and removes device
    /// memory mappings. Guest system memory and its contents stay.
    fn reinit(&self, vm: &Vm<H>) -> KResult<()> {
        let active = vm.active.load(Ordering::SeqCst);
        if vm.suspended.load(Ordering::SeqCst) != active || vm.any_running() {
            return Err(Errno::EBUSY);
        }
        // Take every vCPU first (without waiting: VM_RUN takes a vCPU and then the
        // memory lock, so waiting here could deadlock), so that either all are reset or
        // nothing changes.
        let mut guards = Vec::new();
        guards
            .try_reserve_exact(vm.vcpus.len())
            .map_err(|_| Errno::ENOMEM)?;
        for slot in vm.vcpus.iter() {
            guards.push(slot.vcpu.try_lock().ok_or(Errno::EBUSY)?);
        }
        for (g, slot) in guards.iter_mut().zip(vm.vcpus.iter()) {
            if let Some(v) = g.take() {
                v.free(&self.host);
            }
            slot.shared.kick.store(false, Ordering::SeqCst);
            slot.shared.irq_pending.store(false, Ordering::SeqCst);
            slot.shared.stats.clear();
        }
        vm.mem.lock().unmap_devmem(&self.host);
        // The device models that published them are gone with the old machine.
        {
            let mut mmio = vm.mmio.lock();
            mmio.clear_all(vm.store_queue());
            vm.mmio_flush_at.store(0, Ordering::SeqCst);
            vm.mmio_gen.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(g) = vm.vgic.lock().as_mut() {
            // Stays attached at the same windows, back to its reset state.
            g.reset();
        }
        vm.active.store(0, Ordering::SeqCst);
        vm.suspended.store(0, Ordering::SeqCst);
        vm.debug.store(0, Ordering::SeqCst);
        vm.suspend.store(0, Ordering::SeqCst);
        vm.needs_cache_sync.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn now_timeval(&self) -> Timeval {
        let f = self.host.counter_freq();
        let c = self.host.counter();
        if f == 0 {
            return Timeval::default();
        }
        let secs = c.checked_div(f).unwrap_or(0);
        let rem = c.checked_rem(f).unwrap_or(0);
        let usec = u128::from(rem)
            .checked_mul(1_000_000)
            .and_then(|x| x.checked_div(u128::from(f)))
            .unwrap_or(0);
        Timeval {
            tv_sec: i64::try_from(secs).unwrap_or(i64::MAX),
            tv_usec: i64::try_from(usec).unwrap_or(0),
        }
    }
}
