//! The `-s` slots: each device's options, its backend opened before the guest runs, and
//! the device put on its virtio-mmio slot (vmm-virtio) once bhyve runs.
//!
//! Opening is split from starting on purpose: [`open`] runs in `prepare`, before the
//! terminal is touched and before any thread exists, so a bad disk fails bhyve in one
//! line with nothing half-made; [`OpenSlot::start`] creates the transports and their worker
//! threads, after the signal mask is set.

use std::sync::Arc;

use libvmmapi::Vm;
use vmm_virtio::blk::{Block, BlockOptions};
use vmm_virtio::console::{Console, ConsoleInput, ConsoleOptions, PortSocket};
use vmm_virtio::disk::Disk;
use vmm_virtio::net::{generated_mac, Net, NetOptions};
use vmm_virtio::rng::Rng;
use vmm_virtio::{Device, DmaObserver, IrqLine, VirtioMmio};

use crate::args::SlotSpec;
use crate::console::Output;
use crate::mmio::MmioDevice;

/// The device names `-s` takes.
pub const DEVICES: &[&str] = &["virtio-blk", "virtio-console", "virtio-net", "virtio-rnd"];

/// Checks a slot's options without touching any file (the command-line check).
pub fn check_options(slot: &SlotSpec) -> Result<(), String> {
    match slot.device.as_str() {
        "virtio-blk" => BlockOptions::parse(slot.options.as_deref()).map(drop),
        "virtio-net" => NetOptions::parse(slot.options.as_deref()).map(drop),
        "virtio-rnd" => match slot.options.as_deref() {
            None | Some("") => Ok(()),
            Some(_) => Err("virtio-rnd takes no options".into()),
        },
        "virtio-console" => ConsoleOptions::parse(slot.options.as_deref()).map(drop),
        other => Err(format!("unknown device '{other}'")),
    }
}

/// Refuses a second console: bhyve has one console, and one virtio-console may be it.
pub fn check_slots(slots: &[SlotSpec]) -> Result<(), (SlotSpec, String)> {
    let mut consoles = slots.iter().filter(|s| s.device == "virtio-console");
    if let (Some(_), Some(second)) = (consoles.next(), consoles.next()) {
        return Err((
            second.clone(),
            "only one virtio-console can be bhyve's console".into(),
        ));
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
pub fn open(slots: &[SlotSpec], vmname: &str) -> Result<Vec<OpenSlot>, (SlotSpec, String)> {
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

fn open_one(slot: &SlotSpec, vmname: &str) -> Result<Opened, String> {
    if slot.device == "virtio-console" {
        let o = ConsoleOptions::parse(slot.options.as_deref())?;
        let mut sockets = Vec::with_capacity(o.ports.len());
        for (name, path) in &o.ports {
            // On an error the sockets made so far are dropped, which removes them.
            sockets.push(PortSocket::create(name, path)?);
        }
        return Ok(Opened::Console(sockets));
    }
    open_device(slot, vmname).map(Opened::Device)
}

fn open_device(slot: &SlotSpec, vmname: &str) -> Result<Box<dyn Device>, String> {
    match slot.device.as_str() {
        "virtio-net" => {
            let o = NetOptions::parse(slot.options.as_deref())?;
            let fd = vmm_virtio::tap::open(&o.tap).map_err(|e| e.to_string())?;
            let mac = o.mac.unwrap_or_else(|| generated_mac(slot.slot, vmname));
            Ok(Box::new(Net::new(fd, mac)))
        }
        "virtio-blk" => {
            let o = BlockOptions::parse(slot.options.as_deref())?;
            let disk = Disk::open(&o.path, o.read_only).map_err(|e| e.to_string())?;
            Ok(Box::new(Block::new(disk, &o.path.to_string_lossy())))
        }
        "virtio-rnd" => {
            check_options(slot)?;
            Ok(Box::new(Rng))
        }
        other => Err(format!("unknown device '{other}'")),
    }
}

/// A slot's SPI, driven through VM_ASSERT_IRQ / VM_DEASSERT_IRQ.
struct SlotIrq {
    vm: Vm,
    intid: u32,
}

impl IrqLine for SlotIrq {
    fn set_level(&self, high: bool) -> Result<(), String> {
        let r = if high {
            self.vm.assert_irq(self.intid)
        } else {
            self.vm.deassert_irq(self.intid)
        };
        r.map_err(|e| e.cause())
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
    /// Puts the device on its virtio-mmio slot of `vm` and starts its worker; a virtio
    /// console writes to `out`.
    pub fn start(self, vm: &Vm, mem: libvmmapi::VmMemory, out: &Output) -> Result<Started, String> {
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
        let device = VirtioMmio::new(device, mem, line, Some(dma))
            .map_err(|e| format!("slot {}: cannot start the device: {e}", self.slot))?;
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
