//! Every ioctl the API issues, recorded on its way to the fake: the word, the target,
//! the argument length, the directions the word declares, and the pointer buffers.

use libvmmapi::fake::FakeVmm;
use libvmmapi::{
    Backend, BackendError, Capability, Dir, Mapping, MmioShortcut, Reg, Request, SuspendHow,
    Target, Topology, Vm,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use vmm_sys::ioctl::{self, *};

#[derive(Debug)]
struct Recorder {
    inner: Arc<FakeVmm>,
    log: Mutex<Vec<Request>>,
}

impl Backend for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn execute(&self, req: &mut Request) -> Result<(), BackendError> {
        self.log.lock().unwrap().push(req.clone());
        self.inner.execute(req)
    }
    fn map_memory(&self, vm: &str, gpa: u64, len: usize) -> Result<Mapping, BackendError> {
        self.inner.map_memory(vm, gpa, len)
    }
}

/// (word, copies in, copies out, pointer buffers as (offset, dir)).
type Shape = (bool, bool, Vec<(usize, Dir)>);

#[test]
fn every_ioctl_has_its_shape() {
    let fake = FakeVmm::new();
    let rec = Arc::new(Recorder {
        inner: fake.clone(),
        log: Mutex::new(Vec::new()),
    });
    let vm = Vm::create_with(rec.clone(), "enc").unwrap();
    Vm::list_with(&*rec).unwrap();
    Vm::open_with(rec.clone(), "enc")
        .unwrap()
        .get_topology()
        .unwrap();
    vm.setup_memory(0x8000_0000, 1 << 20).unwrap();
    vm.guest_memory().unwrap();
    vm.munmap_memseg(0x8000_0000, 1 << 20).unwrap();
    vm.set_topology(Topology {
        sockets: 1,
        cores: 2,
        threads: 1,
        maxcpus: 0,
    })
    .unwrap();
    vm.attach_vgic(vmm_platform::GICD, vmm_platform::gicr(2))
        .unwrap();
    vm.vgic_version().unwrap();
    vm.assert_irq(40).unwrap();
    vm.deassert_irq(40).unwrap();
    // The distributor's GICD_SETSPI_NSR with an SPI: the one doorbell the vGIC has.
    vm.raise_msi(vmm_platform::GICD.base + 0x40, 41).unwrap();
    let fr = vmm_platform::PL011.base + 0x18;
    assert!(
        vm.set_mmio_shortcut(fr, MmioShortcut::AnswerLoads(0x90))
            .unwrap(),
        "the core has it"
    );
    assert!(vm.set_mmio_shortcut(fr, MmioShortcut::None).unwrap());
    assert!(vm.take_mmio_stores().unwrap().is_empty());
    let c = vm.vcpu(1).unwrap();
    c.set_reg(Reg::Pc, 1).unwrap();
    c.get_reg(Reg::Pc).unwrap();
    c.set_regs(&[(Reg::X(0), 2)]).unwrap();
    c.get_regs(&[Reg::X(0)]).unwrap();
    c.set_capability(Capability::BrkExit, 1).unwrap();
    c.get_capability(Capability::BrkExit).unwrap();
    c.activate().unwrap();
    fake.script_smccc("enc", 1, 0x8000_0004, 0x8400_0000, &[]);
    c.run().unwrap();
    c.inject_exception(0x0200_0000, 0).unwrap();
    c.suspend_cpu().unwrap();
    c.resume_cpu().unwrap();
    vm.active_cpus().unwrap();
    vm.stats(1).unwrap();
    vm.suspend(SuspendHow::Halt).unwrap();
    // VM_REINIT waits for every active vCPU to leave VM_RUN with SUSPENDED.
    c.run().unwrap();
    vm.reinit().unwrap();
    vm.destroy().unwrap();

    let want: BTreeMap<u64, Shape> = [
        (VMMCTL_VM_CREATE, (true, true, vec![])),
        (VMMCTL_VM_DESTROY, (true, true, vec![])),
        (VMMCTL_VM_LIST, (true, true, vec![(0, Dir::Out)])),
        (VM_GET_TOPOLOGY, (false, true, vec![])),
        (VM_SET_TOPOLOGY, (true, false, vec![])),
        (VM_ALLOC_MEMSEG, (true, false, vec![])),
        (VM_GET_MEMSEG, (true, true, vec![])),
        (VM_MMAP_MEMSEG, (true, false, vec![])),
        (VM_MMAP_GETNEXT, (true, true, vec![])),
        (VM_MUNMAP_MEMSEG, (true, false, vec![])),
        (VM_ATTACH_VGIC, (true, false, vec![])),
        (VM_SET_MMIO_SHORTCUT, (true, false, vec![])),
        (VM_GET_MMIO_STORES, (false, true, vec![])),
        (VM_GET_VGIC_VERSION, (false, true, vec![])),
        (VM_ASSERT_IRQ, (true, false, vec![])),
        (VM_DEASSERT_IRQ, (true, false, vec![])),
        (VM_RAISE_MSI, (true, false, vec![])),
        (VM_SET_REGISTER, (true, false, vec![])),
        (VM_GET_REGISTER, (true, true, vec![])),
        (
            VM_SET_REGISTER_SET,
            (true, false, vec![(8, Dir::In), (16, Dir::In)]),
        ),
        (
            VM_GET_REGISTER_SET,
            (true, true, vec![(8, Dir::In), (16, Dir::Out)]),
        ),
        (VM_SET_CAPABILITY, (true, false, vec![])),
        (VM_GET_CAPABILITY, (true, true, vec![])),
        (VM_ACTIVATE_CPU, (true, false, vec![])),
        (VM_RUN, (true, true, vec![(8, Dir::Out), (24, Dir::Out)])),
        (VM_INJECT_EXCEPTION, (true, false, vec![])),
        (VM_SUSPEND_CPU, (true, false, vec![])),
        (VM_RESUME_CPU, (true, false, vec![])),
        // FreeBSD declares it _IOW although the kernel writes through `cpus`.
        (VM_GET_CPUS, (true, false, vec![(8, Dir::Out)])),
        (VM_STATS, (true, true, vec![])),
        (VM_STAT_DESC, (true, true, vec![])),
        (VM_SUSPEND, (true, false, vec![])),
        (VM_REINIT, (false, false, vec![])),
    ]
    .into_iter()
    .collect();

    let log = rec.log.lock().unwrap();
    let mut seen = BTreeMap::new();
    for r in log.iter() {
        r.check().unwrap();
        assert_eq!(r.arg.len(), iocparm_len(r.cmd));
        let ctl = ioctl::ioc_group(r.cmd) == VMMCTL_GROUP;
        assert_eq!(
            r.target,
            if ctl {
                Target::Ctl
            } else {
                Target::Vm("enc".into())
            }
        );
        // Pointer fields travel as zero.
        for b in &r.buffers {
            assert!(r.arg[b.ptr_offset..b.ptr_offset + 8]
                .iter()
                .all(|&x| x == 0));
        }
        let shape: Shape = (
            r.copies_in(),
            r.copies_out(),
            r.buffers.iter().map(|b| (b.ptr_offset, b.dir)).collect(),
        );
        seen.insert(r.cmd, shape);
    }
    for (cmd, shape) in &want {
        assert_eq!(seen.get(cmd), Some(shape), "ioctl {cmd:#x}");
    }
    assert_eq!(seen.len(), want.len(), "unexpected ioctls: {seen:x?}");
}

/// A kernel that answers VM_MMAP_GETNEXT with the same mapping forever, and VM_RUN with
/// a truncated exit.
#[derive(Debug)]
struct Confused(Arc<FakeVmm>);

impl Backend for Confused {
    fn name(&self) -> &'static str {
        "confused"
    }
    fn execute(&self, req: &mut Request) -> Result<(), BackendError> {
        match req.cmd {
            VM_MMAP_GETNEXT => {
                let m = vmm_sys::abi::VmMemmap {
                    gpa: 0,
                    len: 4096,
                    ..Default::default()
                };
                req.arg = vmm_sys::abi::Pod::as_bytes(&m).to_vec();
                Ok(())
            }
            VM_RUN => {
                req.buffers[1].data.truncate(10);
                Ok(())
            }
            _ => self.0.execute(req),
        }
    }
    fn map_memory(&self, vm: &str, gpa: u64, len: usize) -> Result<Mapping, BackendError> {
        self.0.map_memory(vm, gpa, len)
    }
}

#[test]
fn a_confused_kernel_is_an_error_not_a_hang() {
    let b = Arc::new(Confused(FakeVmm::new()));
    let vm = Vm::create_with(b, "c").unwrap();
    let e = vm.mappings().unwrap_err();
    assert!(e.to_string().contains("VM_MMAP_GETNEXT from 0x1000"), "{e}");
    assert!(vm.guest_memory().is_err());
    let e = vm.vcpu(0).unwrap().run().unwrap_err();
    assert!(e.to_string().contains("VM_RUN returned no exit"), "{e}");
}
