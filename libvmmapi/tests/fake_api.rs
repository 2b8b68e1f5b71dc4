//! The public API exercised end to end against the in-process fake (the kernel's core
//! over a fake host): the path bhyveload, bhyve and bhyvectl take, with every request
//! going through the shared encoding.

use libvmmapi::fake::{self, FakeVmm, Scripted};
use libvmmapi::{
    Backend, BackendError, Capability, Error, ExitReason, Mapping, MemMap, MemSeg, Reg, Request,
    SuspendHow, Topology, Vm, Window,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys::abi::PROT_ALL;

fn vm(fake: &Arc<FakeVmm>, name: &str) -> Vm {
    Vm::create_with(fake.backend(), name).unwrap()
}

#[test]
fn lifecycle_and_names() {
    let fake = FakeVmm::new();
    let a = vm(&fake, "b-vm");
    vm(&fake, "a-vm");
    assert_eq!(Vm::list_with(&*fake).unwrap(), ["a-vm", "b-vm"]);
    assert!(matches!(
        Vm::create_with(fake.backend(), "a-vm"),
        Err(Error::VmExists(n)) if n == "a-vm"
    ));
    let e = Vm::open_with(fake.backend(), "nope").unwrap_err();
    assert_eq!(e.to_string(), "vm 'nope' does not exist");
    assert_eq!(e.cause(), "does not exist");
    assert_eq!(
        Vm::open_with(fake.backend(), "b-vm").unwrap().name(),
        "b-vm"
    );
    a.destroy().unwrap();
    assert!(matches!(
        Vm::destroy_by_name_with(fake.backend(), "b-vm"),
        Err(Error::NoSuchVm(_))
    ));
    Vm::destroy_by_name_with(fake.backend(), "a-vm").unwrap();
    assert!(Vm::list_with(&*fake).unwrap().is_empty());
}

#[test]
fn bad_names_touch_nothing() {
    let fake = FakeVmm::new();
    for bad in ["", "a/b", "x\0y", &"n".repeat(230)] {
        let e = Vm::create_with(fake.backend(), bad).unwrap_err();
        assert!(matches!(e, Error::BadName { .. }), "{bad:?}: {e}");
        assert!(matches!(
            Vm::destroy_by_name_with(fake.backend(), bad),
            Err(Error::BadName { .. })
        ));
    }
    assert!(fake.vm_names().is_empty());
    // Many names: the list request is retried with a larger buffer.
    for i in 0..200 {
        vm(&fake, &format!("vm-with-a-longish-name-{i:03}"));
    }
    let names = Vm::list_with(&*fake).unwrap();
    assert_eq!(names.len(), 200);
    assert_eq!(names[199], "vm-with-a-longish-name-199");
}

#[test]
fn memory_setup_and_guest_memory() {
    let fake = FakeVmm::new();
    let v = vm(&fake, "mem");
    assert!(matches!(v.guest_memory(), Err(Error::Memory { .. })));
    v.setup_memory(0x8000_0000, 16 << 20).unwrap();
    // Idempotent, as on a reinitialised VM.
    v.setup_memory(0x8000_0000, 16 << 20).unwrap();
    assert!(matches!(
        v.setup_memory(0x8000_0000, 32 << 20),
        Err(Error::Invalid { .. })
    ));
    assert!(v.setup_memory(0x8000_0001, 4096).is_err());
    assert_eq!(
        v.get_memseg(0).unwrap(),
        Some(MemSeg {
            segid: 0,
            len: 16 << 20,
            name: None
        })
    );
    assert_eq!(v.get_memseg(1).unwrap(), None);
    assert_eq!(
        v.mappings().unwrap(),
        [MemMap {
            gpa: 0x8000_0000,
            segid: 0,
            segoff: 0,
            len: 16 << 20,
            prot: PROT_ALL,
            flags: 0
        }]
    );

    // A second segment mapped elsewhere, and a device segment left out of guest memory.
    v.alloc_memseg(1, 1 << 20, None).unwrap();
    v.mmap_memseg(0x4000_0000, 1, 0, 1 << 20, PROT_ALL).unwrap();
    v.alloc_memseg(2, 4096, Some("fb")).unwrap();
    assert_eq!(
        v.get_memseg(2).unwrap().unwrap().name.as_deref(),
        Some("fb")
    );
    v.mmap_memseg(0x2000_0000, 2, 0, 4096, PROT_ALL).unwrap();
    assert!(v.alloc_memseg(3, 4096, Some("bad/name")).is_err());
    // Overlapping mappings are refused by the "kernel".
    let e = v
        .mmap_memseg(0x8000_1000, 1, 0, 4096, PROT_ALL)
        .unwrap_err();
    assert_eq!(e.errno(), Some(libc::EFAULT));

    let mem = v.guest_memory().unwrap();
    assert_eq!(mem.num_regions(), 2);
    mem.write_obj(0x1122_3344_5566_7788u64, GuestAddress(0x8000_0ff8))
        .unwrap();
    mem.write_slice(b"hello", GuestAddress(0x4000_0000))
        .unwrap();
    assert!(mem.write_obj(1u8, GuestAddress(0x2000_0000)).is_err());
    // A second view sees the same memory (it is the VM's, not a copy).
    let again = v.guest_memory().unwrap();
    assert_eq!(
        again.read_obj::<u64>(GuestAddress(0x8000_0ff8)).unwrap(),
        0x1122_3344_5566_7788
    );
    let mut b = [0u8; 5];
    again.read_slice(&mut b, GuestAddress(0x4000_0000)).unwrap();
    assert_eq!(&b, b"hello");

    v.munmap_memseg(0x4000_0000, 1 << 20).unwrap();
    assert_eq!(v.guest_memory().unwrap().num_regions(), 1);
    assert!(v.munmap_memseg(0x4000_0000, 1 << 20).is_err());
    // Memory handed out stays valid after the VM is gone.
    v.destroy().unwrap();
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x8000_0ff8)).unwrap(), 0x88);
}

#[test]
fn registers_single_and_sets() {
    let fake = FakeVmm::new();
    let v = vm(&fake, "regs");
    let c = v.vcpu(1).unwrap();
    c.set_reg(Reg::Pc, 0x8020_0000).unwrap();
    c.set_regs(&[(Reg::X(0), 0x8800_0000), (Reg::X(1), 0), (Reg::Cpsr, 0x3c5)])
        .unwrap();
    assert_eq!(c.get_reg(Reg::Pc).unwrap(), 0x8020_0000);
    assert_eq!(
        c.get_regs(&[Reg::X(0), Reg::Cpsr, Reg::Pc, Reg::Sp])
            .unwrap(),
        [0x8800_0000, 0x3c5, 0x8020_0000, 0]
    );
    assert_eq!(fake.reg("regs", 1, Reg::X(0)), 0x8800_0000);
    assert_eq!(fake.reg("regs", 0, Reg::Pc), 0, "other vCPUs untouched");
    assert_eq!(
        fake.take_reg_writes("regs", 1),
        [
            (Reg::Pc, 0x8020_0000),
            (Reg::X(0), 0x8800_0000),
            (Reg::X(1), 0),
            (Reg::Cpsr, 0x3c5)
        ]
    );
    assert!(fake.take_reg_writes("regs", 1).is_empty());
    assert!(v.vcpu(16).is_err());
    let all: Vec<Reg> = Reg::all().collect();
    assert_eq!(c.get_regs(&all).unwrap().len(), 40);
}

/// Passes requests to the fake, but makes VM_RUN's exit code 99 when `garble` is set:
/// a kernel newer than this library.
#[derive(Debug)]
struct Garbling {
    fake: Arc<FakeVmm>,
    garble: std::sync::atomic::AtomicBool,
}

impl Backend for Garbling {
    fn name(&self) -> &'static str {
        "garbling"
    }
    fn execute(&self, req: &mut Request) -> Result<(), BackendError> {
        self.fake.execute(req)?;
        if req.cmd == vmm_sys::ioctl::VM_RUN
            && self.garble.load(std::sync::atomic::Ordering::SeqCst)
        {
            let exit = &mut req.buffers[1].data;
            exit[..4].copy_from_slice(&99i32.to_ne_bytes());
        }
        Ok(())
    }
    fn map_memory(&self, vm: &str, gpa: u64, len: usize) -> Result<Mapping, BackendError> {
        self.fake.map_memory(vm, gpa, len)
    }
}

#[test]
fn run_returns_what_the_kernel_makes_of_the_scripted_guest() {
    let fake = FakeVmm::new();
    let garbling = Arc::new(Garbling {
        fake: fake.clone(),
        garble: false.into(),
    });
    let v = Vm::create_with(garbling.clone(), "run").unwrap();
    let c = v.vcpu(0).unwrap();
    // Not activated: the kernel refuses.
    assert_eq!(c.run().unwrap_err().errno(), Some(libc::EINVAL));
    c.activate().unwrap();
    assert_eq!(c.activate().unwrap_err().errno(), Some(libc::EBUSY));
    assert_eq!(v.active_cpus().unwrap(), [0]);
    // WFI comes to userspace only when asked for.
    c.set_capability(Capability::HaltExit, 1).unwrap();

    // What the guest has in x0 and at which PC, at each of its exits.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s1, s2) = (seen.clone(), seen.clone());
    fake.script_all(
        "run",
        0,
        [
            fake::mmio_read(0x8000_0000, 0x1_0000, 4, false, Some(Reg::X(0))).then(move |ctx| {
                s1.lock().unwrap().push(ctx.x[0]);
                ctx.x[1] = 0x55; // the guest changes x1
            }),
            Scripted::wfi(0x8000_0004).then(move |ctx| s2.lock().unwrap().push(ctx.x[0])),
        ],
    );
    let e = c.run().unwrap();
    assert_eq!(e.pc, 0x8000_0000);
    assert_eq!(e.inst_length, 4);
    assert_eq!(
        e.reason,
        ExitReason::InstEmul {
            gpa: 0x1_0000,
            size: 4,
            write: false,
            sign_extend: false,
            reg: Some(Reg::X(0))
        }
    );
    // The MMIO read is answered by writing x0; the guest has it at its next exit, the
    // kernel having moved it past the load.
    c.set_reg(Reg::X(0), 0x41).unwrap();
    let e = c.run().unwrap();
    assert_eq!((e.reason, e.pc), (ExitReason::Wfi, 0x8000_0004));
    assert_eq!(*seen.lock().unwrap(), [0, 0x41]);
    assert_eq!(c.get_reg(Reg::X(1)).unwrap(), 0x55);
    assert_eq!(fake.pending_scripts("run", 0), 0);

    // Nothing scripted: a clear error after the timeout, never a hang.
    fake.set_run_timeout(Duration::from_millis(20));
    let e = c.run().unwrap_err().to_string();
    assert!(
        e.contains("vm 'run': VM_RUN") && e.contains("no scripted exit"),
        "{e}"
    );

    // An exit the library cannot decode is an error, not a panic.
    fake.script_smccc("run", 0, 0x8000_0008, 0x8400_0000, &[]);
    garbling
        .garble
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let e = c.run().unwrap_err();
    assert!(matches!(e, Error::BadExit { vcpu: 0, .. }), "{e}");
    assert!(e.to_string().contains("unknown exit code 99"));

    let stats = v.stats(0).unwrap();
    let stat = |name: &str| stats.iter().find(|(n, _)| n == name).unwrap().1;
    // The refused first run is not counted; the timed-out one is.
    assert_eq!(stat("VM_RUN calls"), 4);
    assert_eq!(stat("vm exits returned to userspace"), 3);
}

/// The VM_RUN calls vCPU `cpu` has made.
fn run_calls(v: &Vm, cpu: u32) -> u64 {
    let stats = v.stats(cpu).unwrap();
    stats.iter().find(|(n, _)| n == "VM_RUN calls").unwrap().1
}

/// Waits until a VM_RUN started on another thread is inside the fake (counted), so it
/// sees what follows as a running vCPU would; a fixed sleep is not enough under load.
fn wait_for_run(v: &Vm, cpu: u32, before: u64) {
    let t = std::time::Instant::now();
    while run_calls(v, cpu) == before {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "VM_RUN never started"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn suspend_wakes_blocked_vcpus_and_reinit_resets() {
    let fake = FakeVmm::new();
    let v = vm(&fake, "susp");
    let (c0, c1) = (v.vcpu(0).unwrap(), v.vcpu(1).unwrap());
    c0.activate().unwrap();
    c1.activate().unwrap();
    assert_eq!(v.reinit().unwrap_err().errno(), Some(libc::EBUSY));
    let runs = run_calls(&v, 1);
    let t = std::thread::spawn(move || c1.run().unwrap());
    wait_for_run(&v, 1, runs);
    v.suspend(SuspendHow::Poweroff).unwrap();
    assert_eq!(
        t.join().unwrap().reason,
        ExitReason::Suspended(SuspendHow::Poweroff)
    );
    // As FreeBSD's vm_reinit: every active vCPU must have left with SUSPENDED first.
    assert_eq!(v.suspended_cpus().unwrap(), [1]);
    assert_eq!(v.reinit().unwrap_err().errno(), Some(libc::EBUSY));
    assert_eq!(
        c0.run().unwrap().reason,
        ExitReason::Suspended(SuspendHow::Poweroff)
    );
    assert_eq!(v.suspended_cpus().unwrap(), [0, 1]);
    // As FreeBSD's vm_run: a vCPU that has left with SUSPENDED does not run again.
    assert_eq!(c0.run().unwrap_err().errno(), Some(libc::EINVAL));
    assert_eq!(
        v.suspend(SuspendHow::Reset).unwrap_err().errno(),
        Some(libc::EALREADY)
    );
    v.reinit().unwrap();
    assert!(v.active_cpus().unwrap().is_empty());
    assert_eq!(fake.suspended("susp"), None);

    // Destroying a VM whose vCPU is blocked in VM_RUN ends that run.
    let c = v.vcpu(0).unwrap();
    c.activate().unwrap();
    let runs = run_calls(&v, 0);
    let t = std::thread::spawn(move || c.run().unwrap());
    // A destroy before the run has looked the VM up would be a plain "no such VM".
    wait_for_run(&v, 0, runs);
    v.destroy().unwrap();
    assert_eq!(
        t.join().unwrap().reason,
        ExitReason::Suspended(SuspendHow::Destroy)
    );
}

#[test]
fn vcpu_suspend_resume_and_debug_exit() {
    let fake = FakeVmm::new();
    let v = vm(&fake, "dbg");
    let c = v.vcpu(2).unwrap();
    assert!(c.suspend_cpu().is_err(), "inactive vCPU");
    c.activate().unwrap();
    c.suspend_cpu().unwrap();
    assert_eq!(c.run().unwrap().reason, ExitReason::Debug);
    c.resume_cpu().unwrap();
    assert!(c.resume_cpu().is_err());
}

#[test]
fn interrupts_vgic_exceptions_topology_caps() {
    let fake = FakeVmm::new();
    let v = vm(&fake, "irq");
    // No interrupt lines before the vGIC is attached.
    assert_eq!(v.assert_irq(40).unwrap_err().errno(), Some(libc::EINVAL));
    assert!(fake.irq_log("irq").is_empty());
    assert_eq!(v.vgic_version().unwrap(), 3);
    let dist = vmm_platform::GICD;
    let redist = vmm_platform::gicr(2);
    assert!(v
        .attach_vgic(Window::new(dist.base, 0x2000), redist)
        .is_err());
    v.attach_vgic(dist, redist).unwrap();
    assert_eq!(fake.vgic("irq"), Some((dist, redist)));
    assert_eq!(
        v.attach_vgic(dist, redist).unwrap_err().errno(),
        Some(libc::EEXIST)
    );
    v.assert_irq(33).unwrap();
    assert!(fake.irq_level("irq", 33));
    v.deassert_irq(33).unwrap();
    assert!(!fake.irq_level("irq", 33));
    assert_eq!(fake.irq_log("irq"), [(33, true), (33, false)]);
    assert_eq!(v.assert_irq(27).unwrap_err().errno(), Some(libc::EINVAL));
    v.raise_msi(0x2f00_0040, 64).unwrap();
    assert_eq!(fake.msis("irq"), [(0x2f00_0040, 64)]);

    let c = v.vcpu(0).unwrap();
    c.inject_exception(0x0200_0000, 0).unwrap();
    assert_eq!(fake.exceptions("irq", 0), [(0x0200_0000, 0)]);

    assert_eq!(
        v.get_topology().unwrap(),
        Topology {
            sockets: 1,
            cores: 1,
            threads: 1,
            maxcpus: 16
        }
    );
    let t = Topology {
        sockets: 1,
        cores: 4,
        threads: 1,
        maxcpus: 0,
    };
    v.set_topology(t).unwrap();
    assert_eq!(v.get_topology().unwrap().cores, 4);
    assert!(v.set_topology(Topology { cores: 17, ..t }).is_err());

    // arm64 has HALT_EXIT (WFI to userspace) and BRK_EXIT; the others are unknown here.
    assert_eq!(
        c.get_capability(Capability::UnrestrictedGuest)
            .unwrap_err()
            .errno(),
        Some(libc::ENOENT)
    );
    c.set_capability(Capability::BrkExit, 1).unwrap();
    assert_eq!(c.get_capability(Capability::BrkExit).unwrap(), 1);
    assert_eq!(fake.capability("irq", 0, Capability::BrkExit), 1);
    assert_eq!(fake.capability("irq", 1, Capability::BrkExit), 0);
    c.set_capability(Capability::HaltExit, 1).unwrap();
    assert_eq!(fake.capability("irq", 0, Capability::HaltExit), 1);
    assert_eq!(
        c.set_capability(Capability::SsExit, 1).unwrap_err().errno(),
        Some(libc::ENOENT)
    );
    assert_eq!(
        c.get_capability(Capability::PauseExit).unwrap_err().errno(),
        Some(libc::ENOENT)
    );
}
