//! The run loop and devices driven through libvmmapi's backend seam by its in-process
//! fake, which is the kernel's core over a fake host: scripted guests in (HVCs, MMIO
//! loads and stores, trapped instructions), the exits the kernel makes of them, and
//! register writes, interrupt lines, injected exceptions and console bytes out. The
//! same path `bhyve` takes, minus the hardware.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bhyve::args::{self, Command, ConsoleDevice};
use bhyve::console::Output;
use bhyve::devices::pl011;
use bhyve::machine::{self, SetupError, VmLink};
use bhyve::mmio::{Bus, DeviceRef};
use bhyve::vcpu::{self, Stop};
use libvmmapi::exit::raw;
use libvmmapi::fake::{self, FakeVmm, Scripted};
use libvmmapi::{
    Backend, BackendError, Capability, Mapping, Reg, Request, SuspendHow, Topology, Vm,
};
use vmm_sys::abi::Pod;
use vmm_sys::abi::VmExit;
use vmm_sys::arm64::esr::ESR_UNDEFINED;
use vmm_sys::arm64::psci;
use vmm_sys::exit::ExitCode;

const PC: u64 = 0x8000_1000;
const UART: u64 = 0x1_0000;
const INTID: u32 = 32;

/// The fake kernel as bhyve sees it, plus what upstream's vmm.ko could say that ours
/// never does: each BOGUS exit is replaced by the next queued exit (PAGING, SS...), and
/// the VM_RUN calls the kernel refuses (EINVAL: the vCPU already left with SUSPENDED,
/// which FreeBSD's vm_run refuses) are counted.
#[derive(Debug)]
struct Kernel {
    fake: Arc<FakeVmm>,
    instead_of_bogus: Mutex<VecDeque<VmExit>>,
    refused: Mutex<u32>,
}

impl Backend for Kernel {
    fn name(&self) -> &'static str {
        "rig"
    }
    fn execute(&self, req: &mut Request) -> Result<(), BackendError> {
        let r = self.fake.execute(req);
        if req.cmd != vmm_sys::ioctl::VM_RUN {
            return r;
        }
        if matches!(r, Err(BackendError::Errno(libc::EINVAL))) {
            *self.refused.lock().unwrap() += 1;
        }
        let exit = &mut req.buffers[1].data;
        if r.is_ok() && exit[..4] == (ExitCode::Bogus as i32).to_ne_bytes() {
            if let Some(e) = self.instead_of_bogus.lock().unwrap().pop_front() {
                exit.copy_from_slice(e.as_bytes());
            }
        }
        r
    }
    fn map_memory(&self, vm: &str, gpa: u64, len: usize) -> Result<Mapping, BackendError> {
        self.fake.map_memory(vm, gpa, len)
    }
}

struct Rig {
    fake: Arc<FakeVmm>,
    kernel: Arc<Kernel>,
    vm: Vm,
    bus: Arc<Bus>,
    uart: DeviceRef,
    out: Arc<Mutex<Vec<u8>>>,
}

fn rig(name: &str, ncpus: u16, console: ConsoleDevice) -> Rig {
    let fake = FakeVmm::new();
    fake.set_run_timeout(Duration::from_secs(5));
    let kernel = Arc::new(Kernel {
        fake: fake.clone(),
        instead_of_bogus: Mutex::new(VecDeque::new()),
        refused: Mutex::new(0),
    });
    let vm = Vm::create_with(kernel.clone(), name).unwrap();
    vm.set_topology(Topology {
        sockets: 1,
        cores: ncpus,
        threads: 1,
        maxcpus: 0,
    })
    .unwrap();
    vm.setup_memory(0x8000_0000, 128 << 20).unwrap();
    // As bhyveload does: without a vGIC the VM has no interrupt lines.
    vm.attach_vgic(vmm_platform::GICD, vmm_platform::gicr(ncpus.into()))
        .unwrap();
    let out = Arc::new(Mutex::new(Vec::new()));
    let (bus, uart) = machine::build_bus(
        Arc::new(VmLink(vm.clone())),
        console,
        Output::Buffer(out.clone()),
        Vec::new(),
    );
    Rig {
        fake,
        kernel,
        vm,
        bus,
        uart,
        out,
    }
}

impl Rig {
    fn run(&self, ncpus: u32) -> Stop {
        vcpu::run(self.vm.clone(), ncpus, self.bus.clone())
    }
    fn name(&self) -> String {
        self.vm.name().to_string()
    }
    /// x0 values written to `vcpu`, in order.
    fn x0_writes(&self, vcpu: u32) -> Vec<u64> {
        self.fake
            .take_reg_writes(&self.name(), vcpu)
            .into_iter()
            .filter(|(r, _)| *r == Reg::X(0))
            .map(|(_, v)| v)
            .collect()
    }
}

/// The guest calls SMCCC function `fid` with `hvc #0` (the exit reports `PC`).
fn call(fid: u32, a: &[u64]) -> Scripted {
    fake::smccc(PC, u64::from(fid), a)
}

/// The guest stores `size` bytes of `reg`, holding `value`, to the UART at `off`.
fn mmio_write(off: u64, size: u8, reg: Option<Reg>, value: u64) -> Scripted {
    fake::mmio_write(PC, UART + off, size, reg, Some(value))
}

/// The guest loads `size` bytes from the UART at `off` into `reg`.
fn mmio_read(off: u64, size: u8, sign: bool, reg: Option<Reg>) -> Scripted {
    fake::mmio_read(PC, UART + off, size, sign, reg)
}

/// The guest calls SMCCC function `fid` with `hvc #0` where it stands, and `entered`
/// gets (PC, x0) as it entered there.
fn call_here(fid: u32, entered: Arc<Mutex<Vec<(u64, u64)>>>) -> Scripted {
    Scripted::hvc(0, &[]).with(move |c| {
        entered.lock().unwrap().push((c.pc, c.x[0]));
        c.x[0] = u64::from(fid);
        c.pc += 4;
    })
}

const NOT_SUPPORTED: u64 = u64::MAX;

#[test]
fn psci_calls_answer_in_x0_and_system_off_is_status_1() {
    let r = rig("psci", 1, ConsoleDevice::Pl011);
    // WFI comes to userspace (bhyve's own capability choice would keep it in the kernel).
    r.vm.vcpu(0)
        .unwrap()
        .set_capability(Capability::HaltExit, 1)
        .unwrap();
    // Upstream's kernel also sends PAGING; ours never does.
    r.kernel
        .instead_of_bogus
        .lock()
        .unwrap()
        .push_back(raw::paging(PC, 0x8000_0000, 0));
    r.fake.script_all(
        "psci",
        0,
        [
            call(psci::PSCI_VERSION, &[]),
            call(psci::PSCI_FEATURES, &[psci::SMCCC_VERSION.into()]),
            call(psci::SMCCC_VERSION, &[]),
            call(psci::SMCCC_ARCH_FEATURES, &[0x8000_8000]),
            call(psci::MIGRATE_INFO_TYPE, &[]),
            call(psci::CPU_SUSPEND_64, &[0, 0, 0]),
            call(psci::AFFINITY_INFO_64, &[0, 0]),
            call(psci::AFFINITY_INFO_64, &[0x100, 0]),
            call(0xc200_0000, &[]),
            Scripted::wfi(PC),
            // A signal for the vCPU thread: BOGUS (the first made PAGING above).
            Scripted::signal(PC),
            Scripted::signal(PC),
            call(psci::SYSTEM_OFF, &[]),
        ],
    );
    let stop = r.run(1);
    assert_eq!(stop, Stop::Poweroff);
    assert_eq!(stop.status(), 1);
    assert_eq!(
        r.x0_writes(0),
        [
            0x1_0000,
            0,
            0x1_0001,
            NOT_SUPPORTED,
            psci::MIGRATE_TOS_NOT_PRESENT,
            0,
            psci::AFFINITY_ON,
            psci::AFFINITY_OFF,
            NOT_SUPPORTED,
            0
        ]
    );
    assert_eq!(r.fake.suspended("psci"), Some(SuspendHow::Poweroff));
    assert_eq!(r.fake.pending_scripts("psci", 0), 0);
    assert!(r.kernel.instead_of_bogus.lock().unwrap().is_empty());
}

#[test]
fn system_reset_is_status_0() {
    let r = rig("reset", 1, ConsoleDevice::Pl011);
    r.fake.script("reset", 0, call(psci::SYSTEM_RESET, &[]));
    let stop = r.run(1);
    assert_eq!((stop.clone(), stop.status()), (Stop::Reset, 0));
    assert_eq!(r.fake.suspended("reset"), Some(SuspendHow::Reset));
    // As after a reboot: bhyveload reinitialises the VM.
    r.vm.reinit().unwrap();
}

#[test]
fn suspended_exits_map_to_bhyve_statuses() {
    for (how, stop, status) in [
        (SuspendHow::Halt, Stop::Halt, 2),
        (SuspendHow::Poweroff, Stop::Poweroff, 1),
        (SuspendHow::Reset, Stop::Reset, 0),
        (SuspendHow::Destroy, Stop::Destroyed, 4),
    ] {
        let r = rig("susp", 1, ConsoleDevice::Pl011);
        // From outside (bhyvectl --force-*, a destroy): the first VM_RUN sees it.
        r.vm.suspend(how).unwrap();
        let got = r.run(1);
        assert_eq!(got, stop, "{how:?}");
        assert_eq!(got.status(), status);
    }
}

#[test]
fn debug_exits_are_errors() {
    for code in [ExitCode::Debug, ExitCode::Brk, ExitCode::Ss] {
        let r = rig("dbg", 1, ConsoleDevice::Pl011);
        r.fake.set_reg("dbg", 0, Reg::Pc, 0x8000_2000);
        match code {
            // A debugger holds the vCPU (VM_SUSPEND_CPU) once it runs.
            ExitCode::Debug => {
                let vm = r.vm.clone();
                std::thread::spawn(move || {
                    let deadline = std::time::Instant::now() + Duration::from_secs(5);
                    let c = vm.vcpu(0).unwrap();
                    while c.suspend_cpu().is_err() {
                        assert!(std::time::Instant::now() < deadline, "vCPU 0 never ran");
                        std::thread::sleep(Duration::from_millis(1));
                    }
                });
            }
            ExitCode::Brk => {
                let c = r.vm.vcpu(0).unwrap();
                c.set_capability(Capability::BrkExit, 1).unwrap();
                r.fake.script("dbg", 0, Scripted::brk(0x8000_2000, 0));
            }
            // Single-step exits come from upstream's kernel only.
            _ => {
                r.kernel
                    .instead_of_bogus
                    .lock()
                    .unwrap()
                    .push_back(raw::simple(code, 0x8000_2000));
                r.fake.script("dbg", 0, Scripted::signal(0x8000_2000));
            }
        }
        match r.run(1) {
            Stop::Error(e) => {
                let m = e.to_string();
                assert!(m.contains("no debugger") && m.contains("0x80002000"), "{m}")
            }
            s => panic!("{code:?}: {s:?}"),
        }
        // The other vCPUs were told to stop.
        assert_eq!(r.fake.suspended("dbg"), Some(SuspendHow::Halt));
    }
}

#[test]
fn unknown_system_register_gets_undefined() {
    let r = rig("undef", 1, ConsoleDevice::Pl011);
    // mrs x3, s3_0_c15_c2_0 (an IMPLEMENTATION DEFINED register)
    let iss = (3 << 20) | (15 << 10) | (2 << 1) | (3 << 5) | 1;
    // An instruction abort taken at EL2 from EL2's own view: nothing the kernel
    // classifies (HYP), with FAR.
    let mut abort = Scripted::sync(0x8600_0000).with(|c| c.pc = 0x8000_4000);
    abort.far = 0xdead_0000;
    r.fake.script_all(
        "undef",
        0,
        [
            Scripted::sysreg(0x8000_3000, iss),
            abort,
            call(psci::SYSTEM_OFF, &[]),
        ],
    );
    assert_eq!(r.run(1), Stop::Poweroff);
    assert_eq!(
        r.fake.exceptions("undef", 0),
        [(ESR_UNDEFINED, 0), (ESR_UNDEFINED, 0xdead_0000)]
    );
    let pcs: Vec<u64> = r
        .fake
        .take_reg_writes("undef", 0)
        .into_iter()
        .filter(|(reg, _)| *reg == Reg::Pc)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        pcs,
        [0x8000_3000, 0x8000_4000],
        "taken at the trapping instruction"
    );
}

#[test]
fn pl011_transmit_reaches_the_console_and_raises_its_interrupt() {
    let r = rig("tx", 1, ConsoleDevice::Pl011);
    r.fake.script_all(
        "tx",
        0,
        [
            mmio_write(pl011::IMSC, 4, Some(Reg::X(4)), pl011::int::TX.into()),
            mmio_write(pl011::DR, 2, Some(Reg::X(1)), u64::from(b'h')),
            // Only the access size reaches the device: the upper bits of x2 are not sent.
            mmio_write(
                pl011::DR,
                1,
                Some(Reg::X(2)),
                0x1_0000_0000 | u64::from(b'i'),
            ),
            mmio_write(pl011::ICR, 4, Some(Reg::X(5)), pl011::int::TX.into()),
            // A store of XZR writes zero.
            mmio_write(pl011::DR, 1, None, 0),
            mmio_read(pl011::FR, 2, false, Some(Reg::X(6))),
            call(psci::SYSTEM_OFF, &[]),
        ],
    );
    assert_eq!(r.run(1), Stop::Poweroff);
    assert_eq!(*r.out.lock().unwrap(), b"hi\0");
    assert_eq!(
        r.fake.irq_log("tx"),
        [(INTID, true), (INTID, false), (INTID, true)]
    );
    assert!(r.fake.irq_level("tx", INTID));
    assert_eq!(
        r.fake.reg("tx", 0, Reg::X(6)),
        u64::from(pl011::fr::TXFE | pl011::fr::RXFE)
    );
}

#[test]
fn pl011_receive_reaches_the_guest_register() {
    let r = rig("rx", 1, ConsoleDevice::Pl011);
    r.fake.set_reg("rx", 0, Reg::X(9), 0x5555);
    assert_eq!(r.uart.push_input(b"k").unwrap(), 1);
    r.fake.script_all(
        "rx",
        0,
        [
            mmio_write(
                pl011::IMSC,
                4,
                Some(Reg::X(4)),
                (pl011::int::RX | pl011::int::RT).into(),
            ),
            mmio_read(pl011::FR, 4, false, Some(Reg::X(6))),
            mmio_read(pl011::DR, 4, false, Some(Reg::X(7))),
            mmio_read(pl011::FR, 4, false, Some(Reg::X(8))),
            call(psci::SYSTEM_OFF, &[]),
        ],
    );
    assert_eq!(r.run(1), Stop::Poweroff);
    // FIFOs off (LCR_H.FEN clear): one byte fills the holding register.
    assert_eq!(
        r.fake.reg("rx", 0, Reg::X(6)),
        u64::from(pl011::fr::TXFE | pl011::fr::RXFF)
    );
    assert_eq!(r.fake.reg("rx", 0, Reg::X(7)), u64::from(b'k'));
    assert_eq!(
        r.fake.reg("rx", 0, Reg::X(8)),
        u64::from(pl011::fr::TXFE | pl011::fr::RXFE)
    );
    // Enabling the RX interrupts with a byte waiting raised the line; reading it lowered it.
    assert_eq!(r.fake.irq_log("rx"), [(INTID, true), (INTID, false)]);
    assert_eq!(r.fake.reg("rx", 0, Reg::X(9)), 0x5555);
}

#[test]
fn loads_are_sign_extended_and_xzr_loads_discarded() {
    let r = rig("sx", 1, ConsoleDevice::Pl011);
    r.uart.push_input(&[0xfe]).unwrap();
    r.fake.set_reg("sx", 0, Reg::X(3), 7);
    r.fake.script_all(
        "sx",
        0,
        [
            // ldrsb x2, [DR]
            mmio_read(pl011::DR, 1, true, Some(Reg::X(2))),
            // ldr xzr-style discard of the RX FIFO: nothing is written.
            mmio_read(pl011::FR, 4, false, None),
            // ldrsh x3 of PeriphID0 (0x11): positive, zero-extended.
            mmio_read(pl011::ID_BASE, 2, true, Some(Reg::X(3))),
            call(psci::SYSTEM_OFF, &[]),
        ],
    );
    assert_eq!(r.run(1), Stop::Poweroff);
    let writes = r.fake.take_reg_writes("sx", 0);
    assert_eq!(
        writes,
        [
            (Reg::X(2), 0xffff_ffff_ffff_fffe),
            (Reg::X(3), 0x11),
            (Reg::X(0), 0)
        ]
    );
}

#[test]
fn accesses_where_no_device_is_read_zero_and_are_counted() {
    let r = rig("hole", 1, ConsoleDevice::Pl011);
    r.fake.set_reg("hole", 0, Reg::X(1), 0x1234);
    r.fake.script_all(
        "hole",
        0,
        [
            fake::mmio_read(PC, 0x3000_0000, 4, false, Some(Reg::X(1))),
            fake::mmio_write(PC, 0x3000_0000, 4, Some(Reg::X(1)), Some(0x5678)),
            call(psci::SYSTEM_OFF, &[]),
        ],
    );
    assert_eq!(r.run(1), Stop::Poweroff);
    assert_eq!(
        r.fake.take_reg_writes("hole", 0),
        [(Reg::X(1), 0), (Reg::X(0), 0)],
        "the load read zero; the store changed nothing"
    );
    assert_eq!(r.bus.unhandled_count(), 2);
}

#[test]
fn every_virtio_mmio_slot_answers_device_id_0() {
    let r = rig("slots", 1, ConsoleDevice::Pl011);
    let mut exits = Vec::new();
    for n in 0..vmm_platform::VIRTIO_MMIO_SLOTS {
        let base = vmm_platform::virtio_mmio_slot(n).unwrap().base;
        for (off, reg) in [(0, 1), (4, 2), (8, 3)] {
            exits.push(fake::mmio_read(PC, base + off, 4, false, Some(Reg::X(reg))));
        }
        // The guest stores x1 as it is (the magic it just read).
        exits.push(fake::mmio_write(PC, base + 0x70, 4, Some(Reg::X(1)), None));
    }
    exits.push(call(psci::SYSTEM_OFF, &[]));
    r.fake.set_reg("slots", 0, Reg::X(3), 0xdead);
    r.fake.script_all("slots", 0, exits);
    assert_eq!(r.run(1), Stop::Poweroff);
    assert_eq!(
        r.fake.reg("slots", 0, Reg::X(1)),
        0x7472_6976,
        "magic \"virt\""
    );
    assert_eq!(r.fake.reg("slots", 0, Reg::X(2)), 2, "version");
    assert_eq!(
        r.fake.reg("slots", 0, Reg::X(3)),
        0,
        "device ID 0: no device"
    );
    assert_eq!(r.bus.unhandled_count(), 0);
}

#[test]
fn ns16550_console_when_selected() {
    let r = rig("ns", 1, ConsoleDevice::Ns16550);
    let z = Some(u64::from(b'z'));
    let ns = vmm_platform::NS16550.base;
    let pl = vmm_platform::PL011.base;
    r.fake.script_all(
        "ns",
        0,
        [
            // IER: THR empty.
            fake::mmio_write(PC, ns + 1, 1, Some(Reg::X(2)), Some(0x2)),
            fake::mmio_write(PC, ns, 1, Some(Reg::X(1)), z),
            // The PL011 is still there, its output discarded.
            fake::mmio_write(PC, pl, 1, Some(Reg::X(1)), z),
            fake::mmio_read(PC, ns + 2, 1, false, Some(Reg::X(3))),
            call(psci::SYSTEM_OFF, &[]),
        ],
    );
    assert_eq!(r.run(1), Stop::Poweroff);
    assert_eq!(*r.out.lock().unwrap(), b"z");
    assert_eq!(r.fake.reg("ns", 0, Reg::X(3)) & 0xf, 0x2, "IIR: THR empty");
    let intid = vmm_platform::NS16550_INTID;
    assert_eq!(r.fake.irq_log("ns"), [(intid, true), (intid, false)]);
}

#[test]
fn cpu_on_starts_the_target_with_entry_and_context() {
    let r = rig("smp", 2, ConsoleDevice::Pl011);
    r.fake.script_all(
        "smp",
        0,
        [
            // Unknown MPIDR, ourselves (already on), then vCPU 1.
            call(psci::CPU_ON_64, &[5, 0x8020_0000, 0x1234]),
            call(psci::CPU_ON_64, &[0, 0x8020_0000, 0x1234]),
            call(psci::CPU_ON_64, &[1, 0x8020_0000, 0x1234]),
        ],
    );
    // vCPU 1 powers the VM off; vCPU 0 is then still in VM_RUN and must be brought back.
    let entered = Arc::new(Mutex::new(Vec::new()));
    r.fake
        .script("smp", 1, call_here(psci::SYSTEM_OFF, entered.clone()));
    assert!(!r.fake.is_active("smp", 1));
    assert_eq!(r.run(2), Stop::Poweroff);
    assert!(r.fake.is_active("smp", 1));
    assert_eq!(
        r.x0_writes(0),
        [
            psci::ret::INVALID_PARAMETERS as u64,
            psci::ret::ALREADY_ON as u64,
            0
        ]
    );
    let w1 = r.fake.take_reg_writes("smp", 1);
    assert!(w1.contains(&(Reg::Pc, 0x8020_0000)), "{w1:?}");
    assert!(w1.contains(&(Reg::X(0), 0x1234)), "{w1:?}");
    assert!(w1.contains(&(Reg::Cpsr, 0x3c5)), "{w1:?}");
    // The guest of vCPU 1 started at the entry point with the context ID in x0.
    assert_eq!(*entered.lock().unwrap(), [(0x8020_0000, 0x1234)]);
}

#[test]
fn last_cpu_off_halts() {
    let r = rig("off", 1, ConsoleDevice::Pl011);
    r.fake.script("off", 0, call(psci::CPU_OFF, &[]));
    assert_eq!(r.run(1), Stop::Halt);
    // The parked vCPU went through VM_RUN once more, so bhyveload can reinitialise.
    r.vm.reinit().unwrap();
}

#[test]
fn every_active_vcpu_leaves_with_suspended_so_a_reboot_can_reinit() {
    // Three vCPUs: 0 starts 1 and 2 and then reboots (PSCI SYSTEM_RESET, or bhyvectl
    // --force-reset from outside); 1 turns itself off (parked in bhyve, not in VM_RUN);
    // 2 waits in VM_RUN for an exit that never comes. FreeBSD's vm_reinit (bhyveload's
    // next load) needs all three counted as suspended, and a vCPU that has left with
    // SUSPENDED must not be run again.
    for (name, forced) in [("reboot", false), ("forced", true)] {
        let r = rig(name, 3, ConsoleDevice::Pl011);
        let vm = r.vm.clone();
        r.fake.script(name, 1, call(psci::CPU_OFF, &[]));
        r.fake.script_all(
            name,
            0,
            [
                call(psci::CPU_ON_64, &[1, 0x8020_0000, 0]),
                call(psci::CPU_ON_64, &[2, 0x8020_0000, 0]),
            ],
        );
        if !forced {
            r.fake.script(name, 0, call(psci::SYSTEM_RESET, &[]));
        }
        let runner = {
            let (vm, bus) = (vm.clone(), r.bus.clone());
            std::thread::spawn(move || vcpu::run(vm, 3, bus))
        };
        if forced {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while vm.active_cpus().unwrap() != [0, 1, 2] || r.fake.pending_scripts(name, 1) > 0 {
                assert!(std::time::Instant::now() < deadline, "vCPUs did not start");
                std::thread::sleep(Duration::from_millis(1));
            }
            vm.suspend(SuspendHow::Reset).unwrap();
        }
        assert_eq!(runner.join().unwrap(), Stop::Reset, "{name}");
        assert_eq!(vm.active_cpus().unwrap(), [0, 1, 2], "{name}");
        assert_eq!(vm.suspended_cpus().unwrap(), [0, 1, 2], "{name}");
        assert_eq!(*r.kernel.refused.lock().unwrap(), 0, "{name}");
        vm.reinit().unwrap();
    }
}

#[test]
fn missing_vm_is_one_line() {
    let fake = FakeVmm::new();
    let e = machine::open(fake.backend(), "nope").unwrap_err();
    assert!(matches!(e, SetupError::NoSuchVm(_)));
    assert_eq!(
        e.to_string(),
        "vm 'nope' does not exist: create and load it with bhyveload first"
    );
}

fn parsed(argv: &[&str]) -> args::Args {
    match args::parse(argv.iter().copied()).unwrap() {
        Command::Run(a) => a,
        Command::Help(_) => unreachable!(),
    }
}

#[test]
fn shape_comes_from_the_vm_and_must_match() {
    let r = rig("shape", 2, ConsoleDevice::Pl011);
    let s = machine::shape(&r.vm, &parsed(&["bhyve", "shape"])).unwrap();
    assert_eq!((s.ncpus, s.memsize), (2, 128 << 20));
    assert!(machine::shape(&r.vm, &parsed(&["bhyve", "-c", "2", "-m", "128M", "shape"])).is_ok());
    let e = machine::shape(&r.vm, &parsed(&["bhyve", "-c", "1", "shape"])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "-c 1: vm 'shape' has 2 vCPU(s) (bhyveload -c sets them)"
    );
    let e = machine::shape(&r.vm, &parsed(&["bhyve", "-m", "256M", "shape"])).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("-m 268435456: vm 'shape' has 134217728"),
        "{e}"
    );

    let fake = FakeVmm::new();
    let vm = Vm::create_with(fake.backend(), "empty").unwrap();
    let e = machine::shape(&vm, &parsed(&["bhyve", "empty"])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "vm 'empty' has no memory: load it with bhyveload first"
    );
}

#[test]
fn cpu_off_then_cpu_on_restarts_the_parked_vcpu() {
    let r = Arc::new(rig("hotplug", 2, ConsoleDevice::Pl011));
    r.fake.set_reg("hotplug", 1, Reg::SctlrEl1, 0x30d0_1805);
    // vCPU 1 turns itself off, and after its restart powers the VM off.
    let entered = Arc::new(Mutex::new(Vec::new()));
    r.fake.script_all(
        "hotplug",
        1,
        [
            call_here(psci::CPU_OFF, entered.clone()),
            call_here(psci::SYSTEM_OFF, entered.clone()),
        ],
    );
    r.fake
        .script("hotplug", 0, call(psci::CPU_ON_64, &[1, 0x8020_0000, 1]));
    let runner = {
        let r = r.clone();
        std::thread::spawn(move || r.run(2))
    };
    // Ask AFFINITY_INFO until vCPU 1 reports off (parked), as a guest would.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut answers = Vec::new(); // every x0 vCPU 0 got: CPU_ON's, then AFFINITY_INFO's
    let mut asked = 1;
    loop {
        r.fake
            .script("hotplug", 0, call(psci::AFFINITY_INFO_64, &[1, 0]));
        asked += 1;
        while answers.len() < asked {
            assert!(
                std::time::Instant::now() < deadline,
                "no answer: {answers:?}"
            );
            answers.extend(r.x0_writes(0));
            std::thread::sleep(Duration::from_millis(1));
        }
        if answers.last() == Some(&psci::AFFINITY_OFF) {
            break;
        }
    }
    assert_eq!(answers[0], 0, "the first CPU_ON succeeded");
    r.fake
        .script("hotplug", 0, call(psci::CPU_ON_64, &[1, 0x8030_0000, 2]));
    assert_eq!(runner.join().unwrap(), Stop::Poweroff);
    let w1 = r.fake.take_reg_writes("hotplug", 1);
    // Started at the first entry, restarted at the second with the MMU and caches off.
    let pcs: Vec<u64> = w1
        .iter()
        .filter(|(reg, _)| *reg == Reg::Pc)
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(pcs, [0x8020_0000, 0x8030_0000]);
    assert!(w1.contains(&(Reg::X(0), 2)), "{w1:?}");
    assert!(w1.contains(&(Reg::SctlrEl1, 0x30d0_0800)), "{w1:?}");
    // What the guest found at each start: the entry point and its context ID.
    assert_eq!(
        *entered.lock().unwrap(),
        [(0x8020_0000, 1), (0x8030_0000, 2)]
    );
}

#[test]
fn the_whole_path_echoes_console_input() {
    // What `bhyve -b -c 1 -m 128M echo` does, with the fake for the kernel and bytes
    // for the terminal.
    let r = rig("echo", 1, ConsoleDevice::Pl011);
    let a = parsed(&["bhyve", "-b", "-c", "1", "-m", "128M", "echo"]);
    let prepared = bhyve::prepare(&a, r.fake.backend()).unwrap();
    assert_eq!(prepared.shape.ncpus, 1);
    r.fake.script(
        "echo",
        0,
        mmio_write(
            pl011::IMSC,
            4,
            Some(Reg::X(4)),
            (pl011::int::RX | pl011::int::RT).into(),
        ),
    );
    let out = Arc::new(Mutex::new(Vec::new()));
    let runner = {
        let out = out.clone();
        std::thread::spawn(move || prepared.run(&a, Output::Buffer(out), Some(Box::new(&b"q"[..]))))
    };
    // The guest's interrupt handler runs once the typed byte raised the line.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !r.fake.irq_level("echo", INTID) {
        assert!(std::time::Instant::now() < deadline, "no RX interrupt");
        std::thread::sleep(Duration::from_millis(1));
    }
    r.fake.script_all(
        "echo",
        0,
        [
            mmio_read(pl011::DR, 4, false, Some(Reg::X(1))),
            // The guest echoes what it read.
            fake::mmio_write(PC, UART + pl011::DR, 4, Some(Reg::X(1)), None),
            call(psci::SYSTEM_OFF, &[]),
        ],
    );
    assert_eq!(runner.join().unwrap(), Stop::Poweroff);
    assert_eq!(*out.lock().unwrap(), b"q");
    assert!(!r.fake.irq_level("echo", INTID));
}

#[test]
fn a_vm_that_already_ran_must_be_reloaded() {
    let r = rig("again", 1, ConsoleDevice::Pl011);
    r.vm.vcpu(0).unwrap().activate().unwrap();
    match r.run(1) {
        Stop::Error(e) => assert!(e.to_string().contains("run bhyveload again"), "{e}"),
        s => panic!("{s:?}"),
    }
}

#[test]
fn cpu_on_outside_ram_is_invalid_address() {
    let r = rig("badentry", 2, ConsoleDevice::Pl011);
    r.fake.script_all(
        "badentry",
        0,
        [
            call(psci::CPU_ON_64, &[1, 0x1000, 0]),
            call(psci::CPU_ON_64, &[1, 0x8000_0000 + (128 << 20), 0]),
            call(psci::SYSTEM_OFF, &[]),
        ],
    );
    assert_eq!(r.run(2), Stop::Poweroff);
    let invalid = psci::ret::INVALID_ADDRESS as u64;
    assert_eq!(r.x0_writes(0), [invalid, invalid, 0]);
    assert!(!r.fake.is_active("badentry", 1));
}

/// `hvc #1` (a hypercall nobody implements) gets an UNDEF at the HVC itself: the exit
/// reports the PC past it. A guest looping on such exits gets one warning a second,
/// not one per exit.
#[test]
fn unhandled_hvc_is_undefined_at_the_hvc_and_warned_once() {
    let r = rig("hvc1", 1, ConsoleDevice::Pl011);
    let hvc1 = || {
        Scripted::sync(vmm_sys::arm64::esr::esr(
            vmm_sys::arm64::esr::ec::HVC64,
            true,
            1,
        ))
        .with(|c| c.pc = 0x8000_5004)
    };
    let mut script: Vec<Scripted> = (0..50).map(|_| hvc1()).collect();
    script.push(call(psci::SYSTEM_OFF, &[]));
    r.fake.script_all("hvc1", 0, script);
    assert_eq!(r.run(1), Stop::Poweroff);
    assert_eq!(r.fake.exceptions("hvc1", 0).len(), 50);
    let pcs: Vec<u64> = r
        .fake
        .take_reg_writes("hvc1", 0)
        .into_iter()
        .filter(|(reg, _)| *reg == Reg::Pc)
        .map(|(_, v)| v)
        .collect();
    assert!(
        pcs.iter().all(|&pc| pc == 0x8000_5000),
        "UNDEF taken at the HVC: {pcs:x?}"
    );
}
