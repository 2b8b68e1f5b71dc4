//! The MMIO bus: guest physical address -> device model, each device's interrupt line
//! and the registers the kernel may handle for it.
//!
//! The kernel hands userspace every MMIO access outside the vGIC (INST_EMUL exits). vCPU
//! threads and the console input thread reach the devices through this bus; each device
//! sits behind its own lock, and its interrupt level is recomputed under that lock after
//! every access so that the VM sees exactly one assert or deassert per level change.
//! Before that, a device's answered register (a UART's flag register) is published to
//! the kernel when its value changed, so that the guest reads it without an exit and
//! never reads a value older than the interrupt that follows. A device's buffered
//! register (the UART's data register; a mirrored one, its control register, too) has
//! its stores queued by the kernel; the vCPU thread that gets the BOGUS exit the kernel
//! puts before any later exit takes them ([`Bus::drain_stores`]) and emulates them in
//! order, with every other access waiting until it is done, so no access overtakes a
//! store the guest made before it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

use libvmmapi::{MmioShortcut, MmioStore};

use thiserror::Error;
use vmm_platform::Window;

/// A device model reached by MMIO. Offsets are relative to the device's window; `size`
/// is 1, 2, 4 or 8 and the access lies inside the window.
pub trait MmioDevice: Send {
    fn read(&mut self, offset: u64, size: u8) -> u64;
    fn write(&mut self, offset: u64, size: u8, value: u64);
    /// Several writes of `size` bytes at `offset`, in order: the stores the kernel
    /// queued for a buffered register. A model may take them at once (a UART writes
    /// its output in one go).
    fn write_many(&mut self, offset: u64, size: u8, values: &[u64]) {
        for &v in values {
            self.write(offset, size, v);
        }
    }
    /// The level of the device's interrupt output now.
    fn irq_level(&self) -> bool {
        false
    }
    /// Room for console input, for a UART; 0 for other devices.
    fn rx_space(&self) -> usize {
        0
    }
    /// Queues console input for the guest; returns how many bytes were taken.
    fn push_input(&mut self, _bytes: &[u8]) -> usize {
        0
    }
    /// The registers the kernel may handle for this model: `each(offset, what)` for
    /// each, the offsets always the same. `AnswerLoads` with the value now, for a
    /// register whose reads change nothing and whose value changes only in this
    /// model's own calls (accesses, input), after each of which the bus publishes it
    /// again if it changed; `BufferStores` for a register whose stores the guest sees
    /// only through other registers and the interrupt line (they reach the model later,
    /// in order, before any later access); `Mirror` with the value now and the mask of
    /// its bits, for a register that holds what the guest stores in it and does
    /// nothing else (these two published once: from then on the kernel is ahead of the
    /// model). `None` for an answered register whose loads must come to the model for
    /// now (published when it changes, as a value is).
    fn shortcuts(&self, _each: &mut dyn FnMut(u64, MmioShortcut)) {}
}

/// Where the bus's effects on the VM go: interrupt levels (assert/deassert) and the
/// registers the kernel handles.
pub trait VmSink: Send + Sync {
    fn set_irq(&self, intid: u32, high: bool) -> Result<(), IrqError>;
    /// Has the kernel handle the register at `gpa` as `what`. `Ok(false)`: it cannot
    /// (the kernel lacks the extension), and the accesses keep coming as exits.
    fn set_shortcut(&self, _gpa: u64, _what: MmioShortcut) -> Result<bool, BusError> {
        Ok(false)
    }
    /// The stores the kernel queued, oldest first.
    fn take_stores(&self) -> Result<Vec<MmioStore>, BusError> {
        Ok(Vec::new())
    }
}

/// The VM refused an interrupt change.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("cannot {} interrupt {intid}: {cause}", if *.high { "assert" } else { "deassert" })]
pub struct IrqError {
    pub intid: u32,
    pub high: bool,
    pub cause: String,
}

/// What the bus could not tell the VM, or get from it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BusError {
    #[error(transparent)]
    Irq(#[from] IrqError),
    #[error("cannot have the kernel handle the register at 0x{gpa:x}: {cause}")]
    Shortcut { gpa: u64, cause: String },
    #[error("cannot take the device stores the kernel queued: {0}")]
    Stores(String),
}

struct Attached {
    dev: Box<dyn MmioDevice>,
    /// The level last sent to the sink.
    level: bool,
    /// The shortcuts published to the kernel, by offset.
    published: Vec<(u64, MmioShortcut)>,
}

struct Entry {
    name: &'static str,
    window: Window,
    intid: Option<u32>,
    dev: Mutex<Attached>,
}

/// The devices of one VM, by address.
pub struct Bus {
    entries: Vec<Entry>,
    sink: Arc<dyn VmSink>,
    /// The kernel handles registers (cleared for good when it says it cannot).
    kernel_shortcuts: AtomicBool,
    /// Some device's stores are queued by the kernel: accesses take `order`.
    buffering: AtomicBool,
    /// Held for reading by every access while stores may be queued, for writing while
    /// they are taken and emulated.
    order: RwLock<()>,
    unhandled: AtomicU64,
    warned: AtomicBool,
}

/// A handle on one attached device (the console input thread holds one).
#[derive(Clone)]
pub struct DeviceRef {
    bus: Arc<Bus>,
    index: usize,
}

/// A handle on one attached device that does not keep the bus alive: a device's own
/// timer thread holds one, so that the thread ends once the VM's bus is gone.
#[derive(Clone)]
pub struct WeakDeviceRef {
    bus: Weak<Bus>,
    index: usize,
}

/// What an access did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A device answered; for a read, the value.
    Device(u64),
    /// No device is there: a read gives 0, a write is dropped.
    Unhandled,
}

impl Bus {
    pub fn new(sink: Arc<dyn VmSink>) -> Bus {
        Bus {
            entries: Vec::new(),
            sink,
            kernel_shortcuts: AtomicBool::new(true),
            buffering: AtomicBool::new(false),
            order: RwLock::new(()),
            unhandled: AtomicU64::new(0),
            warned: AtomicBool::new(false),
        }
    }

    /// Attaches a device at `window`, raising `intid` when it has one.
    ///
    /// # Panics
    /// If the window overlaps a device already attached: the platform layout is fixed at
    /// build time, so that is a programming error.
    pub fn attach(
        &mut self,
        name: &'static str,
        window: Window,
        intid: Option<u32>,
        dev: Box<dyn MmioDevice>,
    ) -> usize {
        assert!(
            !self
                .entries
                .iter()
                .any(|e| e.window.overlaps(window.base, window.size)),
            "{name} overlaps another device"
        );
        self.entries.push(Entry {
            name,
            window,
            intid,
            dev: Mutex::new(Attached {
                dev,
                level: false,
                published: Vec::new(),
            }),
        });
        self.entries.len() - 1
    }

    /// A handle on the device attached as `index` (what [`Bus::attach`] returned).
    pub fn device(self: &Arc<Self>, index: usize) -> Option<DeviceRef> {
        (index < self.entries.len()).then(|| DeviceRef {
            bus: Arc::clone(self),
            index,
        })
    }

    /// The name of the device at `gpa`, if any.
    pub fn name_at(&self, gpa: u64) -> Option<&'static str> {
        self.entries
            .iter()
            .find(|e| e.window.contains(gpa))
            .map(|e| e.name)
    }

    /// Accesses that hit no device so far.
    pub fn unhandled_count(&self) -> u64 {
        self.unhandled.load(Ordering::Relaxed)
    }

    /// A guest read of `size` bytes at `gpa`.
    pub fn read(&self, gpa: u64, size: u8) -> Result<Access, BusError> {
        self.access(gpa, size, |d, off| d.read(off, size))
    }

    /// A guest write of `size` bytes at `gpa`.
    pub fn write(&self, gpa: u64, size: u8, value: u64) -> Result<Access, BusError> {
        self.access(gpa, size, |d, off| {
            d.write(off, size, value);
            0
        })
    }

    /// Takes the stores the kernel queued and emulates them, oldest first; every other
    /// access waits meanwhile. At a BOGUS exit, and once the vCPUs have stopped.
    pub fn drain_stores(&self) -> Result<(), BusError> {
        if !self.buffering.load(Ordering::Acquire) {
            return Ok(());
        }
        let _order = self.order.write().unwrap_or_else(|p| p.into_inner());
        let stores = self.sink.take_stores()?;
        // Each run of stores to one register goes to its model in one call.
        let mut values = Vec::with_capacity(stores.len());
        for run in stores.chunk_by(|a, b| (a.gpa, a.size) == (b.gpa, b.size)) {
            values.clear();
            values.extend(run.iter().map(|s| u64::from(s.value)));
            let (gpa, size) = (run[0].gpa, run[0].size);
            self.access_in_order(gpa, size, |d, off| {
                d.write_many(off, size, &values);
                0
            })?;
        }
        Ok(())
    }

    fn access(
        &self,
        gpa: u64,
        size: u8,
        f: impl FnOnce(&mut dyn MmioDevice, u64) -> u64,
    ) -> Result<Access, BusError> {
        let _order = self
            .buffering
            .load(Ordering::Acquire)
            .then(|| self.order.read().unwrap_or_else(|p| p.into_inner()));
        self.access_in_order(gpa, size, f)
    }

    fn access_in_order(
        &self,
        gpa: u64,
        size: u8,
        f: impl FnOnce(&mut dyn MmioDevice, u64) -> u64,
    ) -> Result<Access, BusError> {
        let found = self.entries.iter().enumerate().find(|(_, e)| {
            matches!(size, 1 | 2 | 4 | 8) && e.window.contains_range(gpa, u64::from(size))
        });
        let Some((index, entry)) = found else {
            self.note_unhandled(gpa, size);
            return Ok(Access::Unhandled);
        };
        let mut att = lock(&entry.dev);
        let v = f(att.dev.as_mut(), gpa - entry.window.base);
        self.settle(index, &mut att)?;
        Ok(Access::Device(v))
    }

    /// After anything that may have changed a device: the registers the kernel
    /// handles for it, then its interrupt line (a guest taking the interrupt reads the
    /// new value).
    fn settle(&self, index: usize, att: &mut Attached) -> Result<(), BusError> {
        self.publish_shortcuts(index, att)?;
        self.update_irq(index, att)?;
        Ok(())
    }

    /// Tells the kernel about the device's registers it may handle: each once, and an
    /// answered register again whenever its value changed or it stopped or started
    /// being answered.
    fn publish_shortcuts(&self, index: usize, att: &mut Attached) -> Result<(), BusError> {
        if !self.kernel_shortcuts.load(Ordering::Relaxed) {
            return Ok(());
        }
        let base = self.entries[index].window.base;
        let Attached { dev, published, .. } = att;
        let mut result = Ok(());
        dev.shortcuts(&mut |offset, what| {
            let known = published.iter_mut().find(|p| p.0 == offset);
            let follows =
                |w: &MmioShortcut| matches!(w, MmioShortcut::AnswerLoads(_) | MmioShortcut::None);
            let due = match &known {
                None => true,
                Some(p) => p.1 != what && follows(&p.1) && follows(&what),
            };
            if !due || result.is_err() || !self.kernel_shortcuts.load(Ordering::Relaxed) {
                return;
            }
            match self.sink.set_shortcut(base + offset, what) {
                Ok(true) => {
                    // Stores may be queued from now on.
                    if !follows(&what) {
                        self.buffering.store(true, Ordering::Release);
                    }
                    match known {
                        Some(p) => p.1 = what,
                        None => published.push((offset, what)),
                    }
                }
                Ok(false) => self.kernel_shortcuts.store(false, Ordering::Relaxed),
                Err(e) => result = Err(e),
            }
        });
        result
    }

    fn update_irq(&self, index: usize, att: &mut Attached) -> Result<(), IrqError> {
        let Some(intid) = self.entries[index].intid else {
            return Ok(());
        };
        let level = att.dev.irq_level();
        if level != att.level {
            self.sink.set_irq(intid, level)?;
            att.level = level;
        }
        Ok(())
    }

    fn note_unhandled(&self, gpa: u64, size: u8) {
        self.unhandled.fetch_add(1, Ordering::Relaxed);
        if !self.warned.swap(true, Ordering::Relaxed) {
            crate::console::warn(&format!(
                "guest accessed {size} byte(s) at 0x{gpa:x} where no device is; \
                 reads return 0, writes are ignored (further accesses are counted, not logged)"
            ));
        }
    }
}

impl DeviceRef {
    /// Room for console input in the device.
    pub fn rx_space(&self) -> usize {
        lock(&self.bus.entries[self.index].dev).dev.rx_space()
    }

    /// Queues console input and updates the answered register and interrupt line.
    pub fn push_input(&self, bytes: &[u8]) -> Result<usize, BusError> {
        let mut att = lock(&self.bus.entries[self.index].dev);
        let n = att.dev.push_input(bytes);
        self.bus.settle(self.index, &mut att)?;
        Ok(n)
    }

    /// Recomputes the device's interrupt level under its lock and tells the VM if it
    /// changed. The bus does this after every access; this is for a device whose level
    /// also changes with time (the PL031's alarm), called by its timer when the time
    /// comes.
    pub fn update_irq(&self) -> Result<(), IrqError> {
        let mut att = lock(&self.bus.entries[self.index].dev);
        self.bus.update_irq(self.index, &mut att)
    }

    /// A handle on the same device that does not keep the bus alive.
    pub fn downgrade(&self) -> WeakDeviceRef {
        WeakDeviceRef {
            bus: Arc::downgrade(&self.bus),
            index: self.index,
        }
    }
}

impl WeakDeviceRef {
    /// The device, while its bus still exists.
    pub fn upgrade(&self) -> Option<DeviceRef> {
        self.bus.upgrade().map(|bus| DeviceRef {
            bus,
            index: self.index,
        })
    }
}

/// Locks a device. A panic in another thread while it held the lock leaves register
/// state that is still well-formed (plain integers and queues), so a poisoned lock is
/// taken over rather than propagated.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Records every level change, as the VM would see it.
    #[derive(Default)]
    pub struct RecordingSink(pub Mutex<Vec<(u32, bool)>>);
    impl VmSink for RecordingSink {
        fn set_irq(&self, intid: u32, high: bool) -> Result<(), IrqError> {
            self.0.lock().unwrap().push((intid, high));
            Ok(())
        }
    }

    /// A register file of 4 words; offset 0 raises the line while nonzero.
    struct Regs([u64; 4]);
    impl MmioDevice for Regs {
        fn read(&mut self, offset: u64, _size: u8) -> u64 {
            self.0[(offset / 8) as usize]
        }
        fn write(&mut self, offset: u64, _size: u8, value: u64) {
            self.0[(offset / 8) as usize] = value;
        }
        fn irq_level(&self) -> bool {
            self.0[0] != 0
        }
    }

    #[test]
    fn dispatch_by_address_and_irq_edges() {
        let sink = Arc::new(RecordingSink::default());
        let mut bus = Bus::new(sink.clone());
        bus.attach(
            "regs",
            Window::new(0x1000, 32),
            Some(40),
            Box::new(Regs([0; 4])),
        );
        assert_eq!(bus.write(0x1008, 8, 7).unwrap(), Access::Device(0));
        assert_eq!(bus.read(0x1008, 8).unwrap(), Access::Device(7));
        assert!(sink.0.lock().unwrap().is_empty());
        bus.write(0x1000, 8, 1).unwrap();
        bus.write(0x1000, 8, 2).unwrap(); // still high: no second assert
        bus.write(0x1000, 8, 0).unwrap();
        assert_eq!(*sink.0.lock().unwrap(), [(40, true), (40, false)]);
        assert_eq!(bus.name_at(0x101f), Some("regs"));
        assert_eq!(bus.name_at(0x1020), None);
    }

    /// Raises its line while the shared flag is set: a level that changes without an
    /// access.
    struct Flag(Arc<AtomicBool>);
    impl MmioDevice for Flag {
        fn read(&mut self, _offset: u64, _size: u8) -> u64 {
            0
        }
        fn write(&mut self, _offset: u64, _size: u8, _value: u64) {}
        fn irq_level(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn update_irq_sends_level_changes_made_without_an_access() {
        let sink = Arc::new(RecordingSink::default());
        let mut bus = Bus::new(sink.clone());
        let flag = Arc::new(AtomicBool::new(false));
        let i = bus.attach(
            "flag",
            Window::new(0x1000, 32),
            Some(41),
            Box::new(Flag(flag.clone())),
        );
        let bus = Arc::new(bus);
        let dev = bus.device(i).unwrap();
        dev.update_irq().unwrap();
        assert!(sink.0.lock().unwrap().is_empty(), "no change, nothing sent");
        flag.store(true, Ordering::Relaxed);
        dev.update_irq().unwrap();
        dev.update_irq().unwrap(); // still high: no second assert
        bus.read(0x1000, 4).unwrap(); // an access sees the same level
        flag.store(false, Ordering::Relaxed);
        dev.downgrade().upgrade().unwrap().update_irq().unwrap();
        assert_eq!(*sink.0.lock().unwrap(), [(41, true), (41, false)]);

        let weak = dev.downgrade();
        drop((dev, bus));
        assert!(
            weak.upgrade().is_none(),
            "a weak handle does not keep the bus"
        );
    }

    /// Records interrupt levels and the registers the kernel handles in one order;
    /// handles them only if `kernel_shortcuts`, and hands out `queued` as the kernel's
    /// queued stores.
    #[derive(Default)]
    struct ShortcutSink {
        kernel_shortcuts: bool,
        log: Mutex<Vec<String>>,
        queued: Mutex<Vec<MmioStore>>,
    }
    impl VmSink for ShortcutSink {
        fn set_irq(&self, intid: u32, high: bool) -> Result<(), IrqError> {
            self.log.lock().unwrap().push(format!("irq {intid} {high}"));
            Ok(())
        }
        fn set_shortcut(&self, gpa: u64, what: MmioShortcut) -> Result<bool, BusError> {
            let line = match what {
                MmioShortcut::AnswerLoads(v) => format!("answer {gpa:#x} {v:#x}"),
                w => format!("{w:?} {gpa:#x}"),
            };
            self.log.lock().unwrap().push(line);
            Ok(self.kernel_shortcuts)
        }
        fn take_stores(&self) -> Result<Vec<MmioStore>, BusError> {
            Ok(std::mem::take(&mut *self.queued.lock().unwrap()))
        }
    }

    /// A console output the test reads while the UART owns it: each write call.
    #[derive(Clone, Default)]
    struct SharedOut(Arc<Mutex<Vec<Vec<u8>>>>);
    impl std::io::Write for SharedOut {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn pl011_bus(sink: &Arc<ShortcutSink>, out: SharedOut) -> (Arc<Bus>, usize) {
        let mut bus = Bus::new(sink.clone());
        let i = bus.attach(
            "pl011",
            Window::new(0x9000, 0x1000),
            Some(33),
            Box::new(crate::devices::pl011::Pl011::new(out)),
        );
        (Arc::new(bus), i)
    }

    #[test]
    fn a_changed_answered_register_is_published_before_the_interrupt() {
        use crate::devices::pl011;
        let sink = Arc::new(ShortcutSink {
            kernel_shortcuts: true,
            ..Default::default()
        });
        let (bus, i) = pl011_bus(&sink, SharedOut::default());
        let fr = 0x9000 + pl011::FR;
        let empty = pl011::fr::TXFE | pl011::fr::RXFE;
        bus.write(0x9000 + pl011::IMSC, 4, pl011::int::RX.into())
            .unwrap();
        // Output does not change FR: FR, DR and CR published once, at the first access.
        for b in b"hi" {
            bus.write(0x9000 + pl011::DR, 4, u64::from(*b)).unwrap();
        }
        assert_eq!(
            *sink.log.lock().unwrap(),
            [
                format!("answer {fr:#x} {empty:#x}"),
                format!("BufferStores {:#x}", 0x9000 + pl011::DR),
                format!(
                    "Mirror {{ value: {}, mask: {} }} {:#x}",
                    pl011::CR_RESET,
                    pl011::CR_MASK,
                    0x9000 + pl011::CR
                ),
            ]
        );
        sink.log.lock().unwrap().clear();
        // Input: the new FR reaches the kernel before the interrupt is raised.
        bus.device(i).unwrap().push_input(b"x").unwrap();
        bus.read(0x9000 + pl011::DR, 4).unwrap();
        assert_eq!(
            *sink.log.lock().unwrap(),
            [
                format!("answer {fr:#x} {:#x}", pl011::fr::TXFE | pl011::fr::RXFF),
                "irq 33 true".to_string(),
                format!("answer {fr:#x} {empty:#x}"),
                "irq 33 false".to_string(),
            ]
        );
    }

    #[test]
    fn queued_stores_are_emulated_in_order_before_a_later_access() {
        use crate::devices::pl011;
        let sink = Arc::new(ShortcutSink {
            kernel_shortcuts: true,
            ..Default::default()
        });
        let out = SharedOut::default();
        let (bus, _) = pl011_bus(&sink, out.clone());
        let dr = 0x9000 + pl011::DR;
        bus.drain_stores().unwrap();
        bus.write(dr, 1, b'a'.into()).unwrap();
        bus.write(0x9000 + pl011::IMSC, 4, pl011::int::TX.into())
            .unwrap();
        bus.write(0x9000 + pl011::ICR, 4, pl011::int::TX.into())
            .unwrap();
        // The kernel queued "bc": nothing happens until they are taken, then they are
        // written in order, in one write, and raise TXIS as the writes themselves
        // would have.
        *sink.queued.lock().unwrap() = [b'b', b'c']
            .map(|c| MmioStore {
                gpa: dr,
                size: 1,
                value: c.into(),
            })
            .to_vec();
        sink.log.lock().unwrap().clear();
        bus.drain_stores().unwrap();
        assert_eq!(*out.0.lock().unwrap(), [b"a".to_vec(), b"bc".to_vec()]);
        assert_eq!(*sink.log.lock().unwrap(), ["irq 33 true"]);
        assert!(sink.queued.lock().unwrap().is_empty());
    }

    /// The NS16550's line status register stops being answered in loopback mode (a
    /// transmitted byte then shows in it at once) and is answered again after; its
    /// transmit register is queued, published once.
    #[test]
    fn an_answered_register_can_stop_and_start_being_answered() {
        let sink = Arc::new(ShortcutSink {
            kernel_shortcuts: true,
            ..Default::default()
        });
        let mut bus = Bus::new(sink.clone());
        bus.attach(
            "ns16550",
            Window::new(0x9000, 0x1000),
            Some(34),
            Box::new(crate::devices::ns16550::Ns16550::new(SharedOut::default())),
        );
        let (thr, mcr, lsr) = (0x9000, 0x9004, 0x9005);
        bus.write(mcr, 1, 0x10).unwrap();
        bus.write(mcr, 1, 0).unwrap();
        assert_eq!(
            *sink.log.lock().unwrap(),
            [
                format!("None {lsr:#x}"),
                format!("BufferStores {thr:#x}"),
                format!("answer {lsr:#x} 0x60"),
            ]
        );
    }

    #[test]
    fn a_kernel_without_shortcuts_is_asked_once() {
        use crate::devices::pl011;
        let sink = Arc::new(ShortcutSink::default());
        let (bus, i) = pl011_bus(&sink, SharedOut::default());
        assert_eq!(
            bus.read(0x9000 + pl011::FR, 2).unwrap(),
            Access::Device((pl011::fr::TXFE | pl011::fr::RXFE).into())
        );
        bus.device(i).unwrap().push_input(b"x").unwrap();
        bus.read(0x9000 + pl011::FR, 2).unwrap();
        bus.drain_stores().unwrap();
        assert_eq!(sink.log.lock().unwrap().len(), 1, "{:?}", sink.log);
    }

    #[test]
    fn unhandled_accesses_are_counted() {
        let sink = Arc::new(RecordingSink::default());
        let mut bus = Bus::new(sink);
        bus.attach(
            "regs",
            Window::new(0x1000, 32),
            None,
            Box::new(Regs([0; 4])),
        );
        assert_eq!(bus.read(0x5000, 4).unwrap(), Access::Unhandled);
        assert_eq!(bus.write(0x5000, 4, 1).unwrap(), Access::Unhandled);
        // Straddling the window's end, or a size the architecture cannot produce.
        assert_eq!(bus.read(0x101c, 8).unwrap(), Access::Unhandled);
        assert_eq!(bus.read(0x1000, 3).unwrap(), Access::Unhandled);
        assert_eq!(bus.unhandled_count(), 4);
    }
}
