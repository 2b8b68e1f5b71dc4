//! Opening the VM bhyveload made, checking it against `-c`/`-m`, and building its
//! devices at the guest platform's addresses.

use std::sync::Arc;

use thiserror::Error;

use libvmmapi::{Backend, Vm};
use vmm_virtio::VirtioMmio;

use crate::args::{Args, ConsoleDevice};
use crate::console::Output;
use crate::devices::{ns16550::Ns16550, pl011::Pl011, pl031::Pl031, virtio_empty::EmptySlot};
use crate::mmio::{Bus, BusError, DeviceRef, IrqError, VmSink};
use libvmmapi::{MmioShortcut, MmioStore};

/// Why a VM cannot be run. One line each.
#[derive(Debug, Error)]
pub enum SetupError {
    #[error("vm '{0}' does not exist: create and load it with bhyveload first")]
    NoSuchVm(String),
    #[error("vm '{vm}': {cause}")]
    Vm { vm: String, cause: String },
    #[error("-c {given}: vm '{vm}' has {actual} vCPU(s) (bhyveload -c sets them)")]
    CpuMismatch { vm: String, given: u32, actual: u32 },
    #[error("-m {given}: vm '{vm}' has {actual} bytes of memory (bhyveload -m sets it)")]
    MemMismatch { vm: String, given: u64, actual: u64 },
    #[error("vm '{0}' has no memory: load it with bhyveload first")]
    NoMemory(String),
    #[error("{0}")]
    Backend(String),
    #[error("-s {spec}: {cause}")]
    Slot {
        spec: String,
        cause: crate::slots::OpenError,
    },
    #[error("vm '{vm}' has {ncpus} vCPUs; at most {max} are supported")]
    TooManyCpus { vm: String, ncpus: u32, max: u32 },
}

/// The VM's shape as bhyveload left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub ncpus: u32,
    /// Bytes of system memory mapped into the guest.
    pub memsize: u64,
}

/// A request about VM `vm` refused.
fn refused(vm: &str, e: libvmmapi::Error) -> SetupError {
    match e {
        libvmmapi::Error::NoSuchVm(name) => SetupError::NoSuchVm(name),
        e => SetupError::Vm {
            vm: vm.to_string(),
            cause: e.cause(),
        },
    }
}

fn vm_err(vm: &Vm, e: libvmmapi::Error) -> SetupError {
    refused(vm.name(), e)
}

/// Opens VM `name` through `backend`.
pub fn open(backend: Arc<dyn Backend>, name: &str) -> Result<Vm, SetupError> {
    Vm::open_with(backend, name).map_err(|e| refused(name, e))
}

/// Reads the VM's shape (topology and system memory) and checks `-c`/`-m` against it.
pub fn shape(vm: &Vm, args: &Args) -> Result<Shape, SetupError> {
    let t = vm.get_topology().map_err(|e| vm_err(vm, e))?;
    let ncpus = u32::from(t.sockets) * u32::from(t.cores) * u32::from(t.threads);
    if ncpus == 0 || ncpus > vmm_platform::MAX_VCPUS {
        return Err(SetupError::TooManyCpus {
            vm: vm.name().into(),
            ncpus,
            max: vmm_platform::MAX_VCPUS,
        });
    }
    let mut memsize = 0u64;
    for m in vm.mappings().map_err(|e| vm_err(vm, e))? {
        let seg = vm.get_memseg(m.segid).map_err(|e| vm_err(vm, e))?;
        // Named segments are device memory; system memory has no name.
        if matches!(seg, Some(s) if s.name.is_none()) {
            memsize = memsize.saturating_add(m.len);
        }
    }
    if memsize == 0 {
        return Err(SetupError::NoMemory(vm.name().into()));
    }
    if let Some(given) = args.ncpus {
        if given != ncpus {
            return Err(SetupError::CpuMismatch {
                vm: vm.name().into(),
                given,
                actual: ncpus,
            });
        }
    }
    if let Some(given) = args.memsize {
        if given != memsize {
            return Err(SetupError::MemMismatch {
                vm: vm.name().into(),
                given,
                actual: memsize,
            });
        }
    }
    Ok(Shape { ncpus, memsize })
}

/// The bus's effects on the VM: interrupt levels go to VM_ASSERT_IRQ /
/// VM_DEASSERT_IRQ, the registers the kernel handles to VM_SET_MMIO_SHORTCUT and
/// VM_GET_MMIO_STORES.
pub struct VmLink(pub Vm);

impl VmSink for VmLink {
    fn set_irq(&self, intid: u32, high: bool) -> Result<(), IrqError> {
        let r = if high {
            self.0.assert_irq(intid)
        } else {
            self.0.deassert_irq(intid)
        };
        r.map_err(|e| IrqError {
            intid,
            high,
            cause: e.cause(),
        })
    }

    fn set_shortcut(&self, gpa: u64, what: MmioShortcut) -> Result<bool, BusError> {
        self.0
            .set_mmio_shortcut(gpa, what)
            .map_err(|e| BusError::Shortcut {
                gpa,
                cause: e.cause(),
            })
    }

    fn take_stores(&self) -> Result<Vec<MmioStore>, BusError> {
        self.0
            .take_mmio_stores()
            .map_err(|e| BusError::Stores(e.cause()))
    }
}

/// The platform devices: both UARTs (the console one writes to `out`, the other's
/// output is discarded), the RTC, and every virtio-mmio slot: the `-s` devices in
/// `virtio` by slot number, the rest empty (device ID 0, which guests skip). Returns the
/// bus and the console UART, which the input thread feeds.
pub fn build_bus(
    sink: Arc<dyn VmSink>,
    console: ConsoleDevice,
    out: Output,
    mut virtio: Vec<(u32, VirtioMmio)>,
) -> (Arc<Bus>, DeviceRef) {
    use vmm_platform::{NS16550, NS16550_INTID, PL011, PL011_INTID, PL031, PL031_INTID};
    let (pl011_out, ns_out) = match console {
        ConsoleDevice::Pl011 => (out, Output::Discard),
        ConsoleDevice::Ns16550 => (Output::Discard, out),
    };
    let mut bus = Bus::new(sink);
    let pl011 = bus.attach(
        "pl011",
        PL011,
        Some(PL011_INTID),
        Box::new(Pl011::new(pl011_out)),
    );
    let rtc = Pl031::new();
    let rtc_alarm = rtc.alarm_timer();
    let pl031 = bus.attach("pl031", PL031, Some(PL031_INTID), Box::new(rtc));
    let ns = bus.attach(
        "ns16550",
        NS16550,
        Some(NS16550_INTID),
        Box::new(Ns16550::new(ns_out)),
    );
    for n in 0..vmm_platform::VIRTIO_MMIO_SLOTS {
        let Some(window) = vmm_platform::virtio_mmio_slot(n) else {
            continue;
        };
        // The transport drives its SPI itself (level while InterruptStatus != 0).
        match virtio.iter().position(|(slot, _)| *slot == n) {
            Some(i) => {
                let (_, dev) = virtio.swap_remove(i);
                bus.attach(dev.name(), window, None, Box::new(dev));
            }
            None => {
                bus.attach("virtio-mmio (empty)", window, None, Box::new(EmptySlot));
            }
        }
    }
    let bus = Arc::new(bus);
    let rtc = bus.device(pl031).expect("the RTC was attached just above");
    if let Err(e) = rtc_alarm.start(&rtc) {
        crate::console::warn(&format!(
            "cannot start the RTC alarm thread: {e}; the PL031 raises its alarm \
             interrupt only when the guest next touches it"
        ));
    }
    let index = match console {
        ConsoleDevice::Pl011 => pl011,
        ConsoleDevice::Ns16550 => ns,
    };
    let uart = bus
        .device(index)
        .expect("the console UART was attached just above");
    (bus, uart)
}
