//! The request encoding is enough for a remote executor: a backend that serialises every
//! request (`Request::encode`), has it decoded and executed "on the other side" (the
//! fake), and applies the serialised answer drives a VM through the whole API. This is
//! the shape of the future testbed transport.

use libvmmapi::fake::FakeVmm;
use libvmmapi::{Backend, BackendError, ExitReason, Mapping, Reg, Request, Vm};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress};

#[derive(Debug)]
struct Loopback {
    server: Arc<FakeVmm>,
    bytes_sent: AtomicUsize,
}

impl Backend for Loopback {
    fn name(&self) -> &'static str {
        "loopback"
    }

    fn execute(&self, req: &mut Request) -> Result<(), BackendError> {
        let wire = req.encode();
        self.bytes_sent.fetch_add(wire.len(), Ordering::Relaxed);
        // Server side: only the bytes cross.
        let mut served = Request::decode(&wire).expect("server decodes");
        let answer = match self.server.execute(&mut served) {
            Ok(()) => served.encode_response(0),
            Err(BackendError::Errno(e)) => served.encode_response(e),
            Err(other) => return Err(other),
        };
        match req.apply_response(&answer).expect("client decodes") {
            0 => Ok(()),
            e => Err(BackendError::Errno(e)),
        }
    }

    fn map_memory(&self, vm: &str, gpa: u64, len: usize) -> Result<Mapping, BackendError> {
        self.server.map_memory(vm, gpa, len)
    }
}

#[test]
fn whole_api_over_serialised_requests() {
    let fake = FakeVmm::new();
    let lb = Arc::new(Loopback {
        server: fake.clone(),
        bytes_sent: AtomicUsize::new(0),
    });
    let vm = Vm::create_with(lb.clone(), "wire").unwrap();
    assert_eq!(Vm::list_with(&*lb).unwrap(), ["wire"]);
    vm.setup_memory(0x8000_0000, 1 << 20).unwrap();
    vm.guest_memory()
        .unwrap()
        .write_obj(0xabcdu16, GuestAddress(0x8000_0010))
        .unwrap();
    let c = vm.vcpu(0).unwrap();
    c.set_regs(&[(Reg::Pc, 0x8000_0000), (Reg::X(0), 0x8010_0000)])
        .unwrap();
    assert_eq!(
        c.get_regs(&[Reg::X(0), Reg::Pc]).unwrap(),
        [0x8010_0000, 0x8000_0000]
    );
    c.activate().unwrap();
    assert_eq!(vm.active_cpus().unwrap(), [0]);
    fake.script_smccc("wire", 0, 0x8000_0000, 0x8400_0000, &[9; 7]);
    assert_eq!(
        c.run().unwrap().reason,
        ExitReason::Smccc {
            func_id: 0x8400_0000,
            args: [9; 7]
        }
    );
    // Errors travel as errnos.
    assert_eq!(c.activate().unwrap_err().errno(), Some(libc::EBUSY));
    assert!(matches!(
        Vm::create_with(lb.clone(), "wire"),
        Err(libvmmapi::Error::VmExists(_))
    ));
    let stats = vm.stats(0).unwrap();
    assert!(
        stats.contains(&("VM_RUN calls".to_string(), 1)),
        "{stats:?}"
    );
    vm.destroy().unwrap();
    assert!(!fake.vm_exists("wire"));
    assert!(lb.bytes_sent.load(Ordering::Relaxed) > 0);
}
