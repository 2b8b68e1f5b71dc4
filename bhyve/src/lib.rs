//! bhyve: runs a VM that bhyveload created and loaded.
//!
//! * [`args`]: the command line.
//! * [`machine`]: opening the VM, checking `-c`/`-m`, building the devices.
//! * [`vcpu`]: the run loop (vCPU threads, exits, stopping the VM).
//! * [`mmio`]: the address -> device bus and interrupt lines.
//! * [`devices`]: PL011 (console), NS16550A (alternative console), PL031 (RTC).
//! * [`slots`]: the `-s` virtio devices (models in the vmm-virtio crate).
//! * [`psci`]: PSCI 1.0 / SMCCC 1.1 calls.
//! * [`console`]: the terminal, raw mode and its restoration, console input.
//! * [`sandbox`]: capability mode (Capsicum) on FreeBSD once everything is open.
//!
//! `main` is [`prepare`] (everything that can fail before the guest runs), then the
//! terminal, then [`Prepared::run`]; tests take the same path with libvmmapi's fake.

pub mod args;
pub mod console;
pub mod devices;
pub mod machine;
pub mod mmio;
pub mod psci;
pub mod sandbox;
pub mod slots;
pub mod vcpu;

use std::io::Read;
use std::sync::Arc;

use libvmmapi::{Backend, Vm};

use crate::args::Args;
use crate::console::Output;
use crate::machine::{SetupError, Shape};
use crate::vcpu::{RunError, Stop};

/// A VM opened and checked against the command line, with every `-s` backend open,
/// ready to run.
pub struct Prepared {
    pub vm: Vm,
    pub shape: Shape,
    pub slots: Vec<slots::OpenSlot>,
}

/// Opens every `-s` device's backend (disk images are locked from here on), then
/// `args.vmname` through `backend`, and checks the VM against `-c`/`-m`.
pub fn prepare(args: &Args, backend: Arc<dyn Backend>) -> Result<Prepared, SetupError> {
    prepare_with(args, || Ok(backend))
}

/// [`prepare`], connecting to the vmm (`backend`) only once the device backends are
/// open: a bad disk is reported whether or not the vmm or the VM exists.
pub fn prepare_with(
    args: &Args,
    backend: impl FnOnce() -> Result<Arc<dyn Backend>, libvmmapi::Error>,
) -> Result<Prepared, SetupError> {
    let slots = slots::open(&args.slots, &args.vmname).map_err(|(s, cause)| SetupError::Slot {
        spec: s.spec(),
        cause,
    })?;
    let backend = backend().map_err(|e| SetupError::Backend(e.to_string()))?;
    let vm = machine::open(backend, &args.vmname)?;
    let shape = machine::shape(&vm, args)?;
    Ok(Prepared { vm, shape, slots })
}

impl Prepared {
    /// Builds the devices (the console UART selected by `args` writes to `out` and,
    /// with `input`, reads from it on a thread of its own) and runs the VM to its end.
    pub fn run(self, args: &Args, out: Output, input: Option<Box<dyn Read + Send>>) -> Stop {
        let sink = Arc::new(machine::VmLink(self.vm.clone()));
        let host_fds: Vec<_> = self.slots.iter().flat_map(|s| s.host_fds()).collect();
        let mut virtio = Vec::new();
        let mut virtio_console = None;
        if !self.slots.is_empty() {
            let mem = match self.vm.guest_memory() {
                Ok(m) => m,
                Err(e) => return Stop::Error(RunError::GuestMemory(e.cause())),
            };
            for s in self.slots {
                match s.start(&self.vm, mem.clone(), &out) {
                    Ok(started) => {
                        virtio_console = virtio_console.or(started.console_input);
                        virtio.push((started.slot, started.device));
                    }
                    Err(e) => return Stop::Error(e),
                }
            }
        }
        let (bus, uart) = machine::build_bus(sink, args.console, out, virtio);
        // Typing goes to the virtio console when there is one, else to the UART.
        if let Some(input) = input {
            let started = match virtio_console {
                Some(c) => console::spawn_input_thread(input, c),
                None => console::spawn_input_thread(input, uart),
            };
            if let Err(e) = started {
                return Stop::Error(RunError::InputThread(e.to_string()));
            }
        }
        // Everything the VM needs is open: no new files, sockets or paths from here.
        let dirs = vmm_virtio::console::socket_dirs();
        if let Err(e) = sandbox::enter(self.vm.descriptor(), &host_fds, &dirs) {
            return Stop::Error(RunError::Sandbox(e.to_string()));
        }
        vcpu::run(self.vm, self.shape.ncpus, bus)
    }
}
