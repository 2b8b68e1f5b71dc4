//! A virtio-mmio slot's interrupt: the InterruptStatus bits and the level-triggered SPI
//! that follows them.
//!
//! The line is high exactly while InterruptStatus is non-zero. Device workers set bits
//! (used buffers, configuration change) and the vCPU thread clears them (InterruptACK);
//! both go through one mutex that also holds the level last sent, so each change of
//! level reaches the VM once, in order: no notification is lost and none is delivered
//! twice.

use std::sync::{Arc, Mutex, MutexGuard};

/// InterruptStatus bit: the device used buffers in a queue.
pub const INT_VRING: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
/// InterruptStatus bit: the device's configuration changed (or it needs a reset).
pub const INT_CONFIG: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

/// Where the level goes: VM_ASSERT_IRQ / VM_DEASSERT_IRQ of the slot's SPI in bhyve.
pub trait IrqLine: Send + Sync {
    /// Sets the line's level. An error means the VM refused it (it is being destroyed,
    /// typically); the device goes on and the level is retried at the next change.
    fn set_level(&self, high: bool) -> libvmmapi::Result<()>;
}

#[derive(Debug, Default)]
struct State {
    status: u32,
    /// The level the VM has.
    level: bool,
}

/// InterruptStatus and the line it drives.
pub struct Interrupt {
    state: Mutex<State>,
    line: Arc<dyn IrqLine>,
}

impl Interrupt {
    pub fn new(line: Arc<dyn IrqLine>) -> Interrupt {
        Interrupt {
            state: Mutex::new(State::default()),
            line,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is two plain values, consistent at every instant: take it over.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// InterruptStatus as the guest reads it.
    pub fn status(&self) -> u32 {
        self.lock().status
    }

    /// Sets `bits` in InterruptStatus (raising the line if it was low).
    pub fn raise(&self, bits: u32) {
        let mut st = self.lock();
        st.status |= bits;
        self.follow(&mut st);
    }

    /// InterruptACK: clears `bits` (lowering the line once nothing is left).
    pub fn ack(&self, bits: u32) {
        let mut st = self.lock();
        st.status &= !bits;
        self.follow(&mut st);
    }

    /// Device reset: nothing pending, line low.
    pub fn reset(&self) {
        self.ack(u32::MAX);
    }

    fn follow(&self, st: &mut State) {
        let want = st.status != 0;
        if want != st.level && self.line.set_level(want).is_ok() {
            st.level = want;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Records every level the VM would see.
    #[derive(Default)]
    pub struct RecordingLine(pub Mutex<Vec<bool>>);
    impl IrqLine for RecordingLine {
        fn set_level(&self, high: bool) -> libvmmapi::Result<()> {
            self.0.lock().unwrap().push(high);
            Ok(())
        }
    }

    #[test]
    fn level_follows_status_once_per_change() {
        let line = Arc::new(RecordingLine::default());
        let irq = Interrupt::new(line.clone());
        irq.raise(INT_VRING);
        irq.raise(INT_VRING); // already high: nothing sent
        irq.raise(INT_CONFIG);
        irq.ack(INT_VRING); // CONFIG still pending: stays high
        assert_eq!(irq.status(), INT_CONFIG);
        irq.ack(INT_CONFIG);
        irq.ack(INT_CONFIG); // already low
        assert_eq!(*line.0.lock().unwrap(), [true, false]);
    }

    #[test]
    fn raced_raise_and_ack_end_consistent() {
        let line = Arc::new(RecordingLine::default());
        let irq = Arc::new(Interrupt::new(line.clone()));
        let worker = {
            let irq = irq.clone();
            std::thread::spawn(move || {
                for _ in 0..10_000 {
                    irq.raise(INT_VRING);
                }
            })
        };
        for _ in 0..10_000 {
            irq.ack(INT_VRING);
        }
        worker.join().unwrap();
        let levels = line.0.lock().unwrap().clone();
        // Strictly alternating, starting high, ending at the status's level.
        for (i, l) in levels.iter().enumerate() {
            assert_eq!(*l, i % 2 == 0, "change {i}: {levels:?}");
        }
        assert_eq!(levels.last().copied().unwrap_or(false), irq.status() != 0);
    }
}
