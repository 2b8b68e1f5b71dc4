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
//!
//! The kernel may answer the line status register's loads (LSR: reading it changes
//! nothing, and only this model changes it) and queue the transmit register's stores
//! (THR, or the divisor latch's low byte under DLAB: the guest sees them only through
//! other registers and the line), as for the PL011: Linux's 8250 console polls LSR and
//! writes THR for every byte. In loopback mode a THR store shows in LSR at once (the
//! byte comes back as received), so LSR is not answered then.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vm_superio::{Serial, Trigger};

use crate::mmio::MmioDevice;
use libvmmapi::MmioShortcut;

/// IIR bit 0: no interrupt pending.
const IIR_NONE: u8 = 1;
/// The UART's registers span 8 bytes.
const REGS: u64 = 8;
/// Offsets of the transmit holding register and the line status register.
const THR: u64 = 0;
const LSR: u64 = 5;
/// MCR bit 4: loopback.
const MCR_LOOP: u8 = 0x10;

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

/// The UART's output, whose flushes are held while a batch of queued stores is
/// written (vm-superio flushes after every byte).
pub struct Batched<W> {
    out: W,
    holding: bool,
}

impl<W: Write> Write for Batched<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.holding {
            return Ok(());
        }
        self.out.flush()
    }
}

pub struct Ns16550<W: Write + Send> {
    serial: Serial<LineLatch, vm_superio::serial::NoEvents, Batched<W>>,
    line: LineLatch,
}

impl<W: Write + Send> Ns16550<W> {
    pub fn new(out: W) -> Self {
        let line = LineLatch::default();
        let out = Batched {
            out,
            holding: false,
        };
        Ns16550 {
            serial: Serial::new(line.clone(), out),
            line,
        }
    }

    pub fn output(&self) -> &W {
        &self.serial.writer().out
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

    fn write_many(&mut self, offset: u64, size: u8, values: &[u64]) {
        self.serial.writer_mut().holding = true;
        for &v in values {
            self.write(offset, size, v);
        }
        let out = self.serial.writer_mut();
        out.holding = false;
        // A failing output loses the bytes, as in `write`.
        let _ = out.flush();
    }

    fn shortcuts(&self, each: &mut dyn FnMut(u64, MmioShortcut)) {
        let s = self.serial.state();
        let lsr = if s.modem_control & MCR_LOOP != 0 {
            MmioShortcut::None
        } else {
            MmioShortcut::AnswerLoads(s.line_status.into())
        };
        each(LSR, lsr);
        each(THR, MmioShortcut::BufferStores);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const MCR: u64 = 4;
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

    fn shortcuts_of(u: &Ns16550<Vec<u8>>) -> Vec<(u64, MmioShortcut)> {
        let mut v = Vec::new();
        u.shortcuts(&mut |off, what| v.push((off, what)));
        v
    }

    /// LSR answered with its value (THR empty, data ready once input came), except in
    /// loopback mode; THR queued; a batch of queued stores written in order, in one
    /// flush, each with its THRE interrupt as a single store's.
    #[test]
    fn lsr_answered_thr_queued_and_a_batch_written_at_once() {
        let mut u = Ns16550::new(Vec::new());
        assert_eq!(
            shortcuts_of(&u),
            [
                (LSR, MmioShortcut::AnswerLoads(0x60)),
                (THR, MmioShortcut::BufferStores)
            ]
        );
        u.push_input(b"x");
        assert_eq!(shortcuts_of(&u)[0], (LSR, MmioShortcut::AnswerLoads(0x61)));
        assert_eq!(u.read(THR, 1), u64::from(b'x'));
        u.write(IER, 1, 0x2);
        assert_eq!(u.read(IIR, 1) & 0xf, 0x2);
        assert!(!u.irq_level());
        u.write_many(THR, 1, &[u64::from(b'o'), u64::from(b'k'), 0x10a]);
        assert_eq!(u.output(), b"ok\n");
        assert!(u.irq_level(), "THR empty again after the batch");
        u.write(MCR, 1, u64::from(MCR_LOOP));
        assert_eq!(shortcuts_of(&u)[0], (LSR, MmioShortcut::None));
        u.write(THR, 1, u64::from(b'z'));
        assert_eq!(u.read(LSR, 1) & 1, 1, "looped back: data ready");
        assert_eq!(u.read(THR, 1), u64::from(b'z'));
        assert_eq!(u.output(), b"ok\n", "nothing sent in loopback");
        u.write(MCR, 1, 0);
        assert_eq!(shortcuts_of(&u)[0], (LSR, MmioShortcut::AnswerLoads(0x60)));
    }
}
