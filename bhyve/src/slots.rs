//! The `-s` slots: each device's options, its backend opened before the guest runs, and
//! the device put on its virtio-mmio slot (vmm-virtio) once bhyve runs.
//!
//! Opening is split from starting on purpose: [`open`] runs in `prepare`, before the
//! terminal is touched and before any thread exists, so a bad disk fails bhyve in one
//! line with nothing half-made; [`OpenSlot::start`] creates the transports and their worker
//! threads, after the signal mask is set.

use std::sync::Arc;

use libvmmapi::Vm;
use thiserror::Error;
use vmm_virtio::blk::{Block, BlockOptions};
use vmm_virtio::console::{Console, ConsoleInput, ConsoleOptions, PortSocket};
use vmm_virtio::disk::{Disk, DiskError};
use vmm_virtio::net::{generated_mac, Net, NetOptions};
use vmm_virtio::rng::Rng;
use vmm_virtio::tap::TapError;
use vmm_virtio::{Device, DmaObserver, IrqLine, VirtioMmio};

use crate::args::SlotSpec;
use crate::console::Output;
use crate::mmio::MmioDevice;
use crate::vcpu::RunError;

/// The device names `-s` takes.
pub const DEVICES: &[&str] = &["virtio-blk", "virtio-console", "virtio-net", "virtio-rnd"];

/// Options a device refuses (the command-line check, no file touched).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum OptionError {
    /// The device model's own complaint (vmm-virtio's option parsers).
    #[error(transparent)]
    Device(#[from] vmm_virtio::OptionError),
    #[error("virtio-rnd takes no options")]
    RndTakesNone,
    #[error("unknown device '{0}'")]
    UnknownDevice(String),
}

/// Why a slot's backend cannot be opened.
#[derive(Debug, Error)]
pub enum OpenError {
    #[error(transparent)]
    Options(#[from] OptionError),
    #[error("only one virtio-console can be bhyve's console")]
    SecondConsole,
    /// A virtio-console port's socket (vmm-virtio says which and why).
    #[error(transparent)]
    PortSocket(#[from] vmm_virtio::console::PortSocketError),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error(transparent)]
    Disk(#[from] DiskError),
}

/// Checks a slot's options without touching any file (the command-line check).
pub fn check_options(slot: &SlotSpec) -> Result<(), OptionError> {
    let options = slot.options.as_deref();
    match slot.device.as_str() {
        "virtio-blk" => BlockOptions::parse(options).map(drop),
        "virtio-net" => NetOptions::parse(options).map(drop),
        "virtio-rnd" => match options {
            None | Some("") => Ok(()),
            Some(_) => return Err(OptionError::RndTakesNone),
        },
        "virtio-console" => ConsoleOptions::parse(options).map(drop),
        other => return Err(OptionError::UnknownDevice(other.into())),
    }
    .map_err(OptionError::Device)
}

/// Refuses a second console: bhyve has one console, and one virtio-console may be it.
pub fn check_slots(slots: &[SlotSpec]) -> Result<(), (SlotSpec, OpenError)> {
    let mut consoles = slots.iter().filter(|s| s.device == "virtio-console");
    if let (Some(_), Some(second)) = (consoles.next(), consoles.next()) {
        return Err((second.clone(), OpenError::SecondConsole));
    }
    Ok(())
}

/// A slot's device with its backend open, not yet running.
pub struct OpenSlot {
    pub slot: u32,
    device: Opened,
}

enum Opened {
    Device(Box<dyn Device>),
    /// The virtio console with its named ports' sockets: made when bhyve's console
    /// output is known.
    Console(Vec<PortSocket>),
}

/// Opens every slot's backend for VM `vmname`, in command-line order. The first
/// failure is returned as `(spec, cause)`; backends already opened are closed (dropped)
/// with it.
pub fn open(slots: &[SlotSpec], vmname: &str) -> Result<Vec<OpenSlot>, (SlotSpec, OpenError)> {
    check_slots(slots)?;
    slots
        .iter()
        .map(|s| {
            open_one(s, vmname)
                .map(|device| OpenSlot {
                    slot: s.slot,
                    device,
                })
                .map_err(|e| (s.clone(), e))
        })
        .collect()
}

fn open_one(slot: &SlotSpec, vmname: &str) -> Result<Opened, OpenError> {
    if slot.device == "virtio-console" {
        let o = ConsoleOptions::parse(slot.options.as_deref()).map_err(OptionError::Device)?;
        let mut sockets = Vec::with_capacity(o.ports.len());
        for (name, path) in &o.ports {
            // On an error the sockets made so far are dropped, which removes them.
            sockets.push(PortSocket::create(name, path).map_err(OpenError::PortSocket)?);
        }
        return Ok(Opened::Console(sockets));
    }
    open_device(slot, vmname).map(Opened::Device)
}

fn open_device(slot: &SlotSpec, vmname: &str) -> Result<Box<dyn Device>, OpenError> {
    match slot.device.as_str() {
        "virtio-net" => {
            let o = NetOptions::parse(slot.options.as_deref()).map_err(OptionError::Device)?;
            let fd = vmm_virtio::tap::open(&o.tap)?;
            let mac = o.mac.unwrap_or_else(|| generated_mac(slot.slot, vmname));
            Ok(Box::new(Net::new(fd, mac)))
        }
        "virtio-blk" => {
            let o = BlockOptions::parse(slot.options.as_deref()).map_err(OptionError::Device)?;
            let disk = Disk::open(&o.path, o.read_only)?;
            Ok(Box::new(Block::new(disk, &o.path.to_string_lossy())))
        }
        "virtio-rnd" => {
            check_options(slot)?;
            Ok(Box::new(Rng))
        }
        other => Err(OptionError::UnknownDevice(other.into()).into()),
    }
}

/// A slot's SPI, driven through VM_ASSERT_IRQ / VM_DEASSERT_IRQ.
struct SlotIrq {
    vm: Vm,
    intid: u32,
}

impl IrqLine for SlotIrq {
    fn set_level(&self, high: bool) -> libvmmapi::Result<()> {
        if high {
            self.vm.assert_irq(self.intid)
        } else {
            self.vm.deassert_irq(self.intid)
        }
    }
}

/// Device writes to guest memory, reported to the backend (the testbed syncs them).
struct VmDma(Vm);

impl DmaObserver for VmDma {
    fn wrote(&self, ranges: &[(u64, u64)]) {
        // A failure here means the VM is going away; the request's data is written.
        let _ = self.0.device_wrote(ranges);
    }
}

/// A device started on its slot, and the console input it takes if it is the console.
pub struct Started {
    pub slot: u32,
    pub device: VirtioMmio,
    pub console_input: Option<ConsoleInput>,
}

impl OpenSlot {
    /// The host descriptors the slot's backend keeps (for the sandbox).
    pub fn host_fds(&self) -> Vec<vmm_virtio::transport::HostFd> {
        match &self.device {
            Opened::Device(d) => d.host_fds(),
            Opened::Console(ports) => ports
                .iter()
                .flat_map(|p| p.descriptors())
                .map(vmm_virtio::transport::HostFd::Socket)
                .collect(),
        }
    }

    /// Puts the device on its virtio-mmio slot of `vm` and starts its worker; a virtio
    /// console writes to `out`.
    pub fn start(
        self,
        vm: &Vm,
        mem: libvmmapi::VmMemory,
        out: &Output,
    ) -> Result<Started, RunError> {
        let (device, console_input): (Box<dyn Device>, _) = match self.device {
            Opened::Device(d) => (d, None),
            Opened::Console(ports) => {
                let (c, input) = Console::new(Box::new(out.clone()), ports);
                (Box::new(c), Some(input))
            }
        };
        let line = Arc::new(SlotIrq {
            vm: vm.clone(),
            intid: vmm_platform::virtio_mmio_intid(self.slot),
        });
        let dma: Arc<dyn DmaObserver> = Arc::new(VmDma(vm.clone()));
        let device =
            VirtioMmio::new(device, mem, line, Some(dma)).map_err(|e| RunError::StartDevice {
                slot: self.slot,
                cause: e.to_string(),
            })?;
        Ok(Started {
            slot: self.slot,
            device,
            console_input,
        })
    }
}

impl MmioDevice for VirtioMmio {
    fn read(&mut self, offset: u64, size: u8) -> u64 {
        VirtioMmio::read(self, offset, size)
    }
    fn write(&mut self, offset: u64, size: u8, value: u64) {
        VirtioMmio::write(self, offset, size, value)
    }
    // The level is the transport's own (vmm_virtio::irq): the bus attaches virtio
    // slots without an INTID, so irq_level is never asked.
}
