//! The NS16550A UART, the alternative console (`-o console=ns16550`), built on
//! vm-superio's `Serial`.
//!
//! Registers sit at byte offsets 0..7 of the window (devicetree `reg-shift` 0, the
//! default for "ns16550a"); a wider access reads or writes the register at its offset
//! through its low byte.
//!
//! vm-superio signals an interrupt through its `Trigger` (an edge: "an interrupt became
//! pending"), while our line is a level. The trigger latches the line high; after every
//! access the line drops again once the UART shows no pending interrupt in IIR, which is
//! how a 16550's INTR output behaves.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vm_superio::{Serial, Trigger};

use crate::mmio::MmioDevice;

/// IIR bit 0: no interrupt pending.
const IIR_NONE: u8 = 1;
/// The UART's registers span 8 bytes.
const REGS: u64 = 8;

/// vm-superio's interrupt trigger: latches the line.
#[derive(Clone, Default)]
pub struct LineLatch(Arc<AtomicBool>);

impl Trigger for LineLatch {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.store(true, Ordering::Relaxed);
        Ok(())
    }
}

pub struct Ns16550<W: Write + Send> {
    serial: Serial<LineLatch, vm_superio::serial::NoEvents, W>,
    line: LineLatch,
}

impl<W: Write + Send> Ns16550<W> {
    pub fn new(out: W) -> Self {
        let line = LineLatch::default();
        Ns16550 {
            serial: Serial::new(line.clone(), out),
            line,
        }
    }

    pub fn output(&self) -> &W {
        self.serial.writer()
    }

    /// Drops the latched line when the UART has nothing pending.
    fn settle(&mut self) {
        if self.serial.state().interrupt_identification & IIR_NONE != 0 {
            self.line.0.store(false, Ordering::Relaxed);
        }
    }
}

impl<W: Write + Send> MmioDevice for Ns16550<W> {
    fn read(&mut self, offset: u64, _size: u8) -> u64 {
        if offset >= REGS {
            return 0;
        }
        let v = self.serial.read(offset as u8);
        self.settle();
        v.into()
    }

    fn write(&mut self, offset: u64, _size: u8, value: u64) {
        if offset >= REGS {
            return;
        }
        // The only errors are a failing output (the byte is lost, as on a disconnected
        // line) and a trigger failure, which LineLatch cannot produce.
        let _ = self.serial.write(offset as u8, value as u8);
        self.settle();
    }

    fn irq_level(&self) -> bool {
        self.line.0.load(Ordering::Relaxed)
    }

    fn rx_space(&self) -> usize {
        self.serial.fifo_capacity()
    }

    fn push_input(&mut self, bytes: &[u8]) -> usize {
        let n = self.serial.enqueue_raw_bytes(bytes).unwrap_or(0);
        self.settle();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THR: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const LSR: u64 = 5;
    const SCR: u64 = 7;

    #[test]
    fn transmit_and_thre_interrupt() {
        let mut u = Ns16550::new(Vec::new());
        u.write(THR, 1, b'h'.into());
        assert!(!u.irq_level(), "THRE interrupt not enabled");
        u.write(IER, 1, 0x2);
        assert!(
            u.irq_level(),
            "enabling THRE with an empty THR raises the line"
        );
        assert_eq!(u.read(IIR, 1) & 0xf, 0x2);
        assert!(!u.irq_level(), "reading IIR acknowledges THRE");
        u.write(THR, 1, b'i'.into());
        assert!(u.irq_level());
        assert_eq!(u.output(), b"hi");
        assert_eq!(u.read(LSR, 1) & 0x60, 0x60);
    }

    #[test]
    fn receive_and_rda_interrupt() {
        let mut u = Ns16550::new(Vec::new());
        u.write(IER, 1, 0x1);
        assert!(!u.irq_level());
        assert_eq!(u.push_input(b"ab"), 2);
        assert!(u.irq_level());
        assert_eq!(u.read(LSR, 1) & 1, 1);
        assert_eq!(u.read(THR, 1), u64::from(b'a'));
        assert!(!u.irq_level(), "reading RBR acknowledges RDA");
        assert_eq!(u.read(THR, 1), u64::from(b'b'));
        assert_eq!(u.read(LSR, 1) & 1, 0);
        assert_eq!(u.rx_space(), 64);
    }

    #[test]
    fn plain_registers_and_range() {
        let mut u = Ns16550::new(Vec::new());
        u.write(SCR, 1, 0x5a);
        assert_eq!(u.read(SCR, 1), 0x5a);
        u.write(LCR, 4, 0x1_0003);
        assert_eq!(u.read(LCR, 4), 0x03);
        u.write(0x100, 1, 1);
        assert_eq!(u.read(0x100, 1), 0);
    }
}
