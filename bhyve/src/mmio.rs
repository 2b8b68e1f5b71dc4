//! The MMIO bus: guest physical address -> device model, each device's interrupt line
//! and the register the kernel may answer for it.
//!
//! The kernel hands userspace every MMIO access outside the vGIC (INST_EMUL exits). vCPU
//! threads and the console input thread reach the devices through this bus; each device
//! sits behind its own lock, and its interrupt level is recomputed under that lock after
//! every access so that the VM sees exactly one assert or deassert per level change.
//! Before that, a device's answered register (a UART's flag register) is published to
//! the kernel when its value changed, so that the guest reads it without an exit and
//! never reads a value older than the interrupt that follows.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use thiserror::Error;
use vmm_platform::Window;

/// A device model reached by MMIO. Offsets are relative to the device's window; `size`
/// is 1, 2, 4 or 8 and the access lies inside the window.
pub trait MmioDevice: Send {
    fn read(&mut self, offset: u64, size: u8) -> u64;
    fn write(&mut self, offset: u64, size: u8, value: u64);
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
    /// A register the kernel may answer the guest's loads of, and its value now:
    /// `(offset, value)`, the offset always the same. Only for a register whose reads
    /// change nothing and whose value changes only in this model's own calls (accesses,
    /// input), after each of which the bus publishes it again.
    fn answered_register(&self) -> Option<(u64, u32)> {
        None
    }
}

/// Where the bus's effects on the VM go: interrupt levels (assert/deassert) and the
/// loads the kernel answers.
pub trait VmSink: Send + Sync {
    fn set_irq(&self, intid: u32, high: bool) -> Result<(), IrqError>;
    /// Has the kernel answer loads at `gpa` with `value`. `Ok(false)`: it cannot (the
    /// kernel lacks the extension), and the loads keep coming as exits.
    fn answer_loads(&self, _gpa: u64, _value: u32) -> Result<bool, AnswerError> {
        Ok(false)
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

/// The VM refused to answer a register's loads.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("cannot have the kernel answer loads at 0x{gpa:x}: {cause}")]
pub struct AnswerError {
    pub gpa: u64,
    pub cause: String,
}

/// What the bus could not tell the VM after an access.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BusError {
    #[error(transparent)]
    Irq(#[from] IrqError),
    #[error(transparent)]
    Answer(#[from] AnswerError),
}

struct Attached {
    dev: Box<dyn MmioDevice>,
    /// The level last sent to the sink.
    level: bool,
    /// The answered register's value last published to the kernel.
    answered: Option<u32>,
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
    /// The kernel answers loads (cleared for good when it says it cannot).
    kernel_answers: AtomicBool,
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
            kernel_answers: AtomicBool::new(true),
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
                answered: None,
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

    fn access(
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

    /// After anything that may have changed a device: its answered register, then its
    /// interrupt line (a guest taking the interrupt reads the new value).
    fn settle(&self, index: usize, att: &mut Attached) -> Result<(), BusError> {
        self.publish_answer(index, att)?;
        self.update_irq(index, att)?;
        Ok(())
    }

    fn publish_answer(&self, index: usize, att: &mut Attached) -> Result<(), AnswerError> {
        let Some((offset, value)) = att.dev.answered_register() else {
            return Ok(());
        };
        if att.answered == Some(value) || !self.kernel_answers.load(Ordering::Relaxed) {
            return Ok(());
        }
        let gpa = self.entries[index].window.base + offset;
        if self.sink.answer_loads(gpa, value)? {
            att.answered = Some(value);
        } else {
            self.kernel_answers.store(false, Ordering::Relaxed);
        }
        Ok(())
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

    /// Records interrupt levels and answered registers in one order; answers loads
    /// only if `kernel_answers`.
    struct AnsweringSink {
        kernel_answers: bool,
        log: Mutex<Vec<String>>,
    }
    impl VmSink for AnsweringSink {
        fn set_irq(&self, intid: u32, high: bool) -> Result<(), IrqError> {
            self.log.lock().unwrap().push(format!("irq {intid} {high}"));
            Ok(())
        }
        fn answer_loads(&self, gpa: u64, value: u32) -> Result<bool, AnswerError> {
            self.log
                .lock()
                .unwrap()
                .push(format!("answer {gpa:#x} {value:#x}"));
            Ok(self.kernel_answers)
        }
    }

    #[test]
    fn a_changed_answered_register_is_published_before_the_interrupt() {
        use crate::devices::pl011::{self, Pl011};
        let sink = Arc::new(AnsweringSink {
            kernel_answers: true,
            log: Mutex::default(),
        });
        let mut bus = Bus::new(sink.clone());
        let i = bus.attach(
            "pl011",
            Window::new(0x9000, 0x1000),
            Some(33),
            Box::new(Pl011::new(std::io::sink())),
        );
        let bus = Arc::new(bus);
        let fr = 0x9000 + pl011::FR;
        let empty = pl011::fr::TXFE | pl011::fr::RXFE;
        bus.write(0x9000 + pl011::IMSC, 4, pl011::int::RX.into())
            .unwrap();
        // Output does not change FR: published once, at the first access.
        for b in b"hi" {
            bus.write(0x9000 + pl011::DR, 4, u64::from(*b)).unwrap();
        }
        assert_eq!(
            *sink.log.lock().unwrap(),
            [format!("answer {fr:#x} {empty:#x}")]
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
    fn a_kernel_without_answers_is_asked_once() {
        use crate::devices::pl011::{self, Pl011};
        let sink = Arc::new(AnsweringSink {
            kernel_answers: false,
            log: Mutex::default(),
        });
        let mut bus = Bus::new(sink.clone());
        let i = bus.attach(
            "pl011",
            Window::new(0x9000, 0x1000),
            None,
            Box::new(Pl011::new(std::io::sink())),
        );
        let bus = Arc::new(bus);
        assert_eq!(
            bus.read(0x9000 + pl011::FR, 2).unwrap(),
            Access::Device((pl011::fr::TXFE | pl011::fr::RXFE).into())
        );
        bus.device(i).unwrap().push_input(b"x").unwrap();
        bus.read(0x9000 + pl011::FR, 2).unwrap();
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
