//! An Arm PrimeCell UART (PL011, Arm DDI 0183), the guest console.
//!
//! vm-superio has no PL011, so this is our own model. Transmission is instantaneous: a
//! byte written to DR goes straight to the console output, so the TX FIFO is always
//! empty (FR.TXFE set, TXFF/BUSY clear). Received bytes wait in a 32-entry FIFO (one
//! holding register while LCR_H.FEN is clear). Interrupts:
//!
//! * RXIS is raised while the RX FIFO holds at least the IFLS trigger level;
//! * RTIS (receive timeout) is raised while the RX FIFO is not empty: input arrives in
//!   bursts from the terminal, so "no more data for a while" is true as soon as it is
//!   queued;
//! * TXIS is raised by every write to DR (the FIFO drained past its trigger level at
//!   once) and cleared by ICR, as QEMU's PL011 does and as Linux's amba-pl011 driver
//!   and FreeBSD's uart_dev_pl011 expect.
//!
//! Linux reads FR before every byte it prints and writes the byte to DR, and saves, sets
//! and restores CR around every line, so all three are registers the kernel handles
//! (`MmioDevice::shortcuts`): FR's reads change nothing and it answers them; a write to
//! DR shows only in the output, RIS/MIS and the interrupt line, so it queues them and
//! the bus emulates them before any later access; CR only holds what was written (its
//! enable bits are not enforced), so the kernel keeps it and queues its writes too.
//!
//! The output line is RIS & IMSC != 0. Linux's driver uses 16-bit accesses for
//! "arm,pl011" (32-bit with reg-io-width = 4): every register answers 1-, 2- and 4-byte
//! accesses at its offset. The enable bits in CR are stored but not enforced: early
//! consoles write DR before anyone sets UARTEN.

use std::collections::VecDeque;
use std::io::Write;

use crate::mmio::MmioDevice;
use libvmmapi::MmioShortcut;

pub const DR: u64 = 0x000;
pub const RSR_ECR: u64 = 0x004;
pub const FR: u64 = 0x018;
pub const ILPR: u64 = 0x020;
pub const IBRD: u64 = 0x024;
pub const FBRD: u64 = 0x028;
pub const LCR_H: u64 = 0x02c;
pub const CR: u64 = 0x030;
pub const IFLS: u64 = 0x034;
pub const IMSC: u64 = 0x038;
pub const RIS: u64 = 0x03c;
pub const MIS: u64 = 0x040;
pub const ICR: u64 = 0x044;
pub const DMACR: u64 = 0x048;
/// PeriphID0..3 then PCellID0..3, one byte per word.
pub const ID_BASE: u64 = 0xfe0;
pub const ID_BYTES: [u8; 8] = [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1];

/// Flag register bits.
pub mod fr {
    pub const BUSY: u32 = 1 << 3;
    pub const RXFE: u32 = 1 << 4;
    pub const TXFF: u32 = 1 << 5;
    pub const RXFF: u32 = 1 << 6;
    pub const TXFE: u32 = 1 << 7;
}
/// Interrupt bits (IMSC, RIS, MIS, ICR).
pub mod int {
    pub const RX: u32 = 1 << 4;
    pub const TX: u32 = 1 << 5;
    pub const RT: u32 = 1 << 6;
    /// Every interrupt the PL011 defines (modem, RX, TX, RT, error bits).
    pub const ALL: u32 = 0x7ff;
}
/// LCR_H.FEN: FIFOs enabled.
pub const LCR_H_FEN: u32 = 1 << 4;
/// CR's bits: what a write keeps (the kernel's copy keeps the same).
pub const CR_MASK: u32 = 0xffff;
/// CR after reset: TXE | RXE.
pub const CR_RESET: u32 = 0x300;
/// IFLS after reset: both trigger levels at half full.
pub const IFLS_RESET: u32 = 0x12;
pub const FIFO_DEPTH: usize = 32;

/// The PL011 model; `W` is the console output.
pub struct Pl011<W: Write + Send> {
    out: W,
    rx: VecDeque<u8>,
    ilpr: u32,
    ibrd: u32,
    fbrd: u32,
    lcr_h: u32,
    cr: u32,
    ifls: u32,
    imsc: u32,
    dmacr: u32,
    /// TXIS is an event latched until ICR; the RX bits follow the FIFO.
    tx_pending: bool,
    /// Output that could not be written (the console sink failed); counted, not fatal.
    tx_lost: u64,
}

impl<W: Write + Send> Pl011<W> {
    pub fn new(out: W) -> Self {
        Pl011 {
            out,
            rx: VecDeque::with_capacity(FIFO_DEPTH),
            ilpr: 0,
            ibrd: 0,
            fbrd: 0,
            lcr_h: 0,
            cr: CR_RESET,
            ifls: IFLS_RESET,
            imsc: 0,
            dmacr: 0,
            tx_pending: false,
            tx_lost: 0,
        }
    }

    /// Bytes of console output dropped because the output failed.
    pub fn tx_lost(&self) -> u64 {
        self.tx_lost
    }

    pub fn output(&self) -> &W {
        &self.out
    }

    fn fifo_depth(&self) -> usize {
        if self.lcr_h & LCR_H_FEN != 0 {
            FIFO_DEPTH
        } else {
            1
        }
    }

    /// The RX trigger level in bytes (IFLS.RXIFLSEL: 1/8, 1/4, 1/2, 3/4, 7/8 full).
    fn rx_trigger(&self) -> usize {
        if self.lcr_h & LCR_H_FEN == 0 {
            return 1;
        }
        match (self.ifls >> 3) & 7 {
            0 => FIFO_DEPTH / 8,
            1 => FIFO_DEPTH / 4,
            2 => FIFO_DEPTH / 2,
            3 => FIFO_DEPTH * 3 / 4,
            _ => FIFO_DEPTH * 7 / 8,
        }
    }

    fn ris(&self) -> u32 {
        let mut ris = 0;
        if self.rx.len() >= self.rx_trigger() {
            ris |= int::RX;
        }
        if !self.rx.is_empty() {
            ris |= int::RT;
        }
        if self.tx_pending {
            ris |= int::TX;
        }
        ris
    }

    fn flags(&self) -> u32 {
        let mut f = fr::TXFE;
        if self.rx.is_empty() {
            f |= fr::RXFE;
        }
        if self.rx.len() >= self.fifo_depth() {
            f |= fr::RXFF;
        }
        f
    }

    fn read_reg(&mut self, reg: u64) -> u32 {
        match reg {
            DR => self.rx.pop_front().map_or(0, u32::from),
            // No framing, parity, break or overrun errors happen here.
            RSR_ECR => 0,
            FR => self.flags(),
            ILPR => self.ilpr,
            IBRD => self.ibrd,
            FBRD => self.fbrd,
            LCR_H => self.lcr_h,
            CR => self.cr,
            IFLS => self.ifls,
            IMSC => self.imsc,
            RIS => self.ris(),
            MIS => self.ris() & self.imsc,
            DMACR => self.dmacr,
            ID_BASE..=0xffc => ID_BYTES[((reg - ID_BASE) / 4) as usize].into(),
            // ICR is write-only; reserved offsets read as zero.
            _ => 0,
        }
    }

    /// Transmits `bytes` (one console write: a byte at a time costs a system call
    /// each).
    fn transmit(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.out.write_all(bytes).is_err() || self.out.flush().is_err() {
            self.tx_lost += bytes.len() as u64;
        }
        self.tx_pending = true;
    }

    fn write_reg(&mut self, reg: u64, v: u32) {
        match reg {
            DR => self.transmit(&[v as u8]),
            RSR_ECR => {} // clears error bits, of which there are none
            ILPR => self.ilpr = v & 0xff,
            IBRD => self.ibrd = v & 0xffff,
            FBRD => self.fbrd = v & 0x3f,
            LCR_H => self.lcr_h = v & 0xff,
            CR => self.cr = v & CR_MASK,
            IFLS => self.ifls = v & 0x3f,
            IMSC => self.imsc = v & int::ALL,
            // The RX bits follow the FIFO; only TXIS is latched.
            ICR if v & int::TX != 0 => self.tx_pending = false,
            DMACR => self.dmacr = v & 0x7,
            _ => {} // read-only or reserved
        }
    }
}

impl<W: Write + Send> MmioDevice for Pl011<W> {
    fn read(&mut self, offset: u64, size: u8) -> u64 {
        let reg = offset & !3;
        let shift = (offset & 3) * 8;
        let v = u64::from(self.read_reg(reg)) >> shift;
        match size {
            1 => v & 0xff,
            2 => v & 0xffff,
            _ => v,
        }
    }

    fn write(&mut self, offset: u64, _size: u8, value: u64) {
        // A narrower write at the register's offset writes its low bits; one inside a
        // register (offset not a multiple of 4) has no meaning for this device.
        if offset & 3 == 0 {
            self.write_reg(offset, value as u32);
        }
    }

    fn write_many(&mut self, offset: u64, size: u8, values: &[u64]) {
        if offset != DR {
            for &v in values {
                self.write(offset, size, v);
            }
            return;
        }
        let bytes: Vec<u8> = values.iter().map(|&v| v as u8).collect();
        self.transmit(&bytes);
    }

    fn irq_level(&self) -> bool {
        self.ris() & self.imsc != 0
    }

    fn rx_space(&self) -> usize {
        self.fifo_depth().saturating_sub(self.rx.len())
    }

    fn push_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.rx_space());
        self.rx.extend(&bytes[..n]);
        n
    }

    fn shortcuts(&self, each: &mut dyn FnMut(u64, MmioShortcut)) {
        each(FR, MmioShortcut::AnswerLoads(self.flags()));
        each(DR, MmioShortcut::BufferStores);
        each(
            CR,
            MmioShortcut::Mirror {
                value: self.cr,
                mask: CR_MASK,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uart() -> Pl011<Vec<u8>> {
        Pl011::new(Vec::new())
    }

    fn rd(u: &mut Pl011<Vec<u8>>, reg: u64) -> u32 {
        u.read(reg, 4) as u32
    }

    #[test]
    fn ids_for_the_amba_bus() {
        let mut u = uart();
        let ids: Vec<u32> = (0..8).map(|i| rd(&mut u, ID_BASE + 4 * i)).collect();
        assert_eq!(ids, [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
        // Linux's amba bus assembles them into periphid 0x00141011, cid 0xb105f00d.
        let pid = ids[..4]
            .iter()
            .enumerate()
            .fold(0u32, |a, (i, b)| a | (b << (8 * i)));
        assert_eq!(pid, 0x0014_1011);
        assert_eq!(u.read(0xfe0, 2), 0x11);
        assert_eq!(u.read(0xfe0, 1), 0x11);
    }

    #[test]
    fn transmit_goes_to_the_output() {
        let mut u = uart();
        for b in b"ok\n" {
            u.write(DR, 2, u64::from(*b));
        }
        assert_eq!(u.output(), b"ok\n");
        assert_eq!(rd(&mut u, FR) & (fr::TXFE | fr::TXFF | fr::BUSY), fr::TXFE);
        assert_eq!(u.tx_lost(), 0);
    }

    #[test]
    fn tx_interrupt_latches_until_icr() {
        let mut u = uart();
        u.write(IMSC, 4, int::TX.into());
        assert!(!u.irq_level());
        u.write(DR, 4, b'x'.into());
        assert_eq!(rd(&mut u, RIS) & int::TX, int::TX);
        assert_eq!(rd(&mut u, MIS), int::TX);
        assert!(u.irq_level());
        u.write(ICR, 4, int::TX.into());
        assert_eq!(rd(&mut u, RIS), 0);
        assert!(!u.irq_level());
        // Masked: raw status set, line low.
        u.write(IMSC, 4, 0);
        u.write(DR, 4, b'y'.into());
        assert_eq!(rd(&mut u, RIS), int::TX);
        assert_eq!(rd(&mut u, MIS), 0);
        assert!(!u.irq_level());
    }

    #[test]
    fn receive_fifo_and_interrupts() {
        let mut u = uart();
        assert_eq!(rd(&mut u, FR) & fr::RXFE, fr::RXFE);
        // FIFOs off: one holding register.
        assert_eq!(u.rx_space(), 1);
        assert_eq!(u.push_input(b"ab"), 1);
        assert_eq!(rd(&mut u, FR) & (fr::RXFE | fr::RXFF), fr::RXFF);
        assert_eq!(rd(&mut u, RIS), int::RX | int::RT);
        assert_eq!(rd(&mut u, DR), u32::from(b'a'));
        assert_eq!(rd(&mut u, DR), 0, "empty FIFO reads 0");
        // FIFOs on, trigger at 1/2 (16 bytes), RX and RT enabled.
        u.write(LCR_H, 4, (LCR_H_FEN | 0x60).into());
        u.write(IMSC, 4, (int::RX | int::RT).into());
        assert_eq!(u.rx_space(), 32);
        assert_eq!(u.push_input(b"hello"), 5);
        assert_eq!(rd(&mut u, RIS), int::RT, "below the trigger: timeout only");
        assert!(u.irq_level());
        assert_eq!(u.push_input(&[b'.'; 40]), 27);
        assert_eq!(rd(&mut u, RIS), int::RX | int::RT);
        assert_eq!(rd(&mut u, FR) & fr::RXFF, fr::RXFF);
        let got: Vec<u8> = (0..5).map(|_| rd(&mut u, DR) as u8).collect();
        assert_eq!(got, b"hello");
        while rd(&mut u, FR) & fr::RXFE == 0 {
            rd(&mut u, DR);
        }
        assert_eq!(rd(&mut u, RIS), 0);
        assert!(!u.irq_level());
        // IFLS selects the RX trigger: 1/8 = 4 bytes.
        u.write(IFLS, 4, 0);
        u.push_input(b"abc");
        assert_eq!(rd(&mut u, RIS), int::RT);
        u.push_input(b"d");
        assert_eq!(rd(&mut u, RIS), int::RX | int::RT);
    }

    /// The kernel answers FR from `shortcuts`: it must be what a read gives, and a read
    /// must change nothing, whatever happened before; CR is what was last written
    /// under the mask the kernel applies.
    #[test]
    fn the_answered_register_is_fr_and_reading_it_changes_nothing() {
        let mut u = uart();
        let answered = |u: &Pl011<Vec<u8>>| {
            let mut fr = None;
            u.shortcuts(&mut |off, what| {
                if let MmioShortcut::AnswerLoads(v) = what {
                    fr = Some((off, v));
                }
            });
            fr
        };
        let check = |u: &mut Pl011<Vec<u8>>, when: &str| {
            let (offset, value) = answered(u).unwrap();
            assert_eq!(offset, FR, "{when}");
            assert_eq!(value, rd(u, FR), "{when}");
            assert_eq!(
                (rd(u, FR), rd(u, RIS)),
                (value, u.ris()),
                "{when}: read twice"
            );
        };
        check(&mut u, "reset");
        u.push_input(b"a");
        check(&mut u, "holding register full");
        u.write(LCR_H, 4, LCR_H_FEN.into());
        u.push_input(&[b'.'; 40]);
        check(&mut u, "FIFO full");
        rd(&mut u, DR);
        check(&mut u, "one byte read");
        u.write(DR, 4, b'z'.into());
        check(&mut u, "after output");
        u.write(CR, 2, 0x1_0b01);
        let mut cr = None;
        u.shortcuts(&mut |off, what| {
            if let MmioShortcut::Mirror { value, mask } = what {
                cr = Some((off, value, mask));
            }
        });
        assert_eq!(cr, Some((CR, rd(&mut u, CR), CR_MASK)));
        assert_eq!(rd(&mut u, CR), 0x1_0b01 & CR_MASK);
    }

    #[test]
    fn control_registers_keep_their_bits() {
        let mut u = uart();
        assert_eq!(rd(&mut u, CR), CR_RESET);
        assert_eq!(rd(&mut u, IFLS), IFLS_RESET);
        for (reg, mask) in [
            (ILPR, 0xff),
            (IBRD, 0xffff),
            (FBRD, 0x3f),
            (LCR_H, 0xff),
            (CR, 0xffff),
            (IFLS, 0x3f),
            (IMSC, 0x7ff),
            (DMACR, 0x7),
        ] {
            u.write(reg, 4, 0xffff_ffff);
            assert_eq!(rd(&mut u, reg), mask, "register 0x{reg:x}");
        }
        // Read-only and write-only registers.
        u.write(RIS, 4, 0xffff);
        u.write(FR, 4, 0);
        assert_eq!(rd(&mut u, RIS), 0);
        assert_eq!(rd(&mut u, FR), fr::TXFE | fr::RXFE);
        assert_eq!(rd(&mut u, ICR), 0);
        assert_eq!(rd(&mut u, RSR_ECR), 0);
        assert_eq!(rd(&mut u, 0x100), 0);
        // 16-bit access at a register's offset.
        u.write(IBRD, 2, 0x1234);
        assert_eq!(u.read(IBRD, 2), 0x1234);
        assert_eq!(u.read(IBRD + 1, 1), 0x12);
    }

    #[test]
    fn failing_output_is_counted() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut u = Pl011::new(Broken);
        u.write(DR, 4, 0x41);
        assert_eq!(u.tx_lost(), 1);
        assert_eq!(u.read(RIS, 4) as u32, int::TX);
    }
}
