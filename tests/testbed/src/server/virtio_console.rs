//! A driver for port 0 of QEMU's virtio console (`-device virtio-serial-device -device
//! virtconsole,chardev=...`) over virtio-mmio version 2 ("modern"; QEMU 7.2 needs
//! `-global virtio-mmio.force-legacy=false`, or it offers the legacy interface, which
//! this driver refuses). No MULTIPORT: the console is port 0, on queues 0 (receive)
//! and 1 (transmit), and QEMU marks it open as soon as the driver is ready.
//!
//! The byte stream is the broker's channel (server.rs). Received bytes come from a
//! ring of page buffers; sends are synchronous (the device copies a buffer out to the
//! chardev before it is reused). The device's interrupt, an SPI of the virt board's
//! virtio-mmio slot, is configured edge-triggered: the server acknowledges the device
//! (`ack`) before it looks at the rings, so every later event is a new edge that ends
//! its WFI, and the GIC never sees a level it cannot lower.

use crate::kernel::mm::{self, pa_to_va, PAGE};
use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};

/// QEMU virt: 32 virtio-mmio slots of 0x200 bytes from 0x0a00_0000, SPI 16 + slot.
const MMIO_BASE: u64 = 0x0a00_0000;
const MMIO_STRIDE: u64 = 0x200;
const MMIO_SLOTS: u64 = 32;
const SPI_BASE_INTID: u32 = 32 + 16;

const MAGIC: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC: u64 = 0x080;
const QUEUE_DRIVER: u64 = 0x090;
const QUEUE_DEVICE: u64 = 0x0a0;

const ST_ACK: u32 = 1;
const ST_DRIVER: u32 = 2;
const ST_DRIVER_OK: u32 = 4;
const ST_FEATURES_OK: u32 = 8;
const DEVICE_CONSOLE: u32 = 3;
/// VIRTIO_F_VERSION_1 is feature bit 32: bit 0 of feature word 1.
const F_VERSION_1_WORD1: u32 = 1;
const DESC_F_WRITE: u16 = 2;

const QSIZE: u16 = 64;
const _: () = assert!(16 * QSIZE as u64 <= PAGE && 6 + 8 * QSIZE as u64 <= PAGE);
const RXQ: u32 = 0;
const TXQ: u32 = 1;
/// Bytes of the transmit bounce buffer (one descriptor per chunk).
const TX_BUF: usize = 64 * 1024;

/// GICv3 distributor registers for the SPI.
const GICD: u64 = 0x0800_0000;
const GICD_IGROUPR: u64 = 0x080;
const GICD_ISENABLER: u64 = 0x100;
const GICD_IPRIORITYR: u64 = 0x400;
const GICD_ICFGR: u64 = 0xc00;
const GICD_IROUTER: u64 = 0x6000;

fn r32(pa: u64) -> u32 {
    // SAFETY: device registers in the direct map's device half.
    unsafe { core::ptr::read_volatile(pa_to_va(pa) as *const u32) }
}
fn w32(pa: u64, v: u32) {
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(pa_to_va(pa) as *mut u32, v) }
}

/// One split virtqueue in zeroed pages the driver owns.
struct Queue {
    desc_pa: u64,
    avail_pa: u64,
    used_pa: u64,
    /// Next used-ring index to look at.
    last_used: u16,
    /// Next avail-ring index to fill.
    next_avail: u16,
}

impl Queue {
    fn new() -> Option<Queue> {
        // Descriptors 16n, avail 6 + 2n, used 6 + 8n: one page each (checked below).
        let base = mm::alloc_pages(3)?;
        Some(Queue {
            desc_pa: base,
            avail_pa: base + PAGE,
            used_pa: base + 2 * PAGE,
            last_used: 0,
            next_avail: 0,
        })
    }

    fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16) {
        let d = pa_to_va(self.desc_pa + 16 * u64::from(i));
        // SAFETY: descriptor i < QSIZE lies in the descriptor page we own.
        unsafe {
            core::ptr::write_volatile(d as *mut u64, addr);
            core::ptr::write_volatile((d + 8) as *mut u32, len);
            core::ptr::write_volatile((d + 12) as *mut u16, flags);
            core::ptr::write_volatile((d + 14) as *mut u16, 0);
        }
    }

    /// Makes descriptor `i` available to the device.
    fn push_avail(&mut self, i: u16) {
        let a = pa_to_va(self.avail_pa);
        let slot = u64::from(self.next_avail % QSIZE);
        // SAFETY: the avail ring (flags, idx, ring[QSIZE]) lies in its page.
        unsafe { core::ptr::write_volatile((a + 4 + 2 * slot) as *mut u16, i) };
        self.next_avail = self.next_avail.wrapping_add(1);
        fence(Ordering::SeqCst);
        // SAFETY: as above (idx field).
        unsafe { core::ptr::write_volatile((a + 2) as *mut u16, self.next_avail) };
        fence(Ordering::SeqCst);
    }

    /// The next used element (descriptor id, length written), if any.
    fn pop_used(&mut self) -> Option<(u16, u32)> {
        let u = pa_to_va(self.used_pa);
        fence(Ordering::SeqCst);
        // SAFETY: the used ring (flags, idx, ring[QSIZE] of {u32 id, u32 len}) is ours.
        let idx = unsafe { core::ptr::read_volatile((u + 2) as *const u16) };
        if idx == self.last_used {
            return None;
        }
        fence(Ordering::SeqCst);
        let slot = u64::from(self.last_used % QSIZE);
        // SAFETY: as above.
        let (id, len) = unsafe {
            (
                core::ptr::read_volatile((u + 4 + 8 * slot) as *const u32),
                core::ptr::read_volatile((u + 8 + 8 * slot) as *const u32),
            )
        };
        self.last_used = self.last_used.wrapping_add(1);
        Some(((id % u32::from(QSIZE)) as u16, len))
    }
}

pub struct VirtioConsole {
    base: u64,
    pub intid: u32,
    rx: Queue,
    tx: Queue,
    /// Physical address of receive buffer i (one page each).
    rx_bufs: [u64; QSIZE as usize],
    tx_buf: u64,
}

impl VirtioConsole {
    /// Finds the console among the virtio-mmio slots and brings it up.
    pub fn probe() -> Result<VirtioConsole, &'static str> {
        let mut legacy = false;
        for slot in 0..MMIO_SLOTS {
            let base = MMIO_BASE + slot * MMIO_STRIDE;
            if r32(base + MAGIC) != 0x7472_6976 || r32(base + DEVICE_ID) != DEVICE_CONSOLE {
                continue;
            }
            if r32(base + VERSION) != 2 {
                legacy = true;
                continue;
            }
            return Self::init(base, SPI_BASE_INTID + slot as u32);
        }
        Err(if legacy {
            "virtio console is legacy (add -global virtio-mmio.force-legacy=false)"
        } else {
            "no virtio console on virtio-mmio"
        })
    }

    fn init(base: u64, intid: u32) -> Result<VirtioConsole, &'static str> {
        w32(base + STATUS, 0);
        w32(base + STATUS, ST_ACK);
        w32(base + STATUS, ST_ACK | ST_DRIVER);
        w32(base + DEVICE_FEATURES_SEL, 1);
        if r32(base + DEVICE_FEATURES) & F_VERSION_1_WORD1 == 0 {
            return Err("virtio console without VERSION_1");
        }
        w32(base + DRIVER_FEATURES_SEL, 0);
        w32(base + DRIVER_FEATURES, 0);
        w32(base + DRIVER_FEATURES_SEL, 1);
        w32(base + DRIVER_FEATURES, F_VERSION_1_WORD1);
        w32(base + STATUS, ST_ACK | ST_DRIVER | ST_FEATURES_OK);
        if r32(base + STATUS) & ST_FEATURES_OK == 0 {
            return Err("virtio console refused our features");
        }
        let rx = Queue::new().ok_or("no memory for the receive queue")?;
        let tx = Queue::new().ok_or("no memory for the transmit queue")?;
        for (q, qu) in [(RXQ, &rx), (TXQ, &tx)] {
            w32(base + QUEUE_SEL, q);
            if r32(base + QUEUE_NUM_MAX) < u32::from(QSIZE) {
                return Err("virtio console queue too small");
            }
            w32(base + QUEUE_NUM, u32::from(QSIZE));
            for (reg, pa) in [
                (QUEUE_DESC, qu.desc_pa),
                (QUEUE_DRIVER, qu.avail_pa),
                (QUEUE_DEVICE, qu.used_pa),
            ] {
                w32(base + reg, pa as u32);
                w32(base + reg + 4, (pa >> 32) as u32);
            }
            w32(base + QUEUE_READY, 1);
        }
        let tx_buf = mm::alloc_pages(TX_BUF / PAGE as usize).ok_or("no memory for tx")?;
        let mut con = VirtioConsole {
            base,
            intid,
            rx,
            tx,
            rx_bufs: [0; QSIZE as usize],
            tx_buf,
        };
        for i in 0..QSIZE {
            let pa = mm::alloc_pages(1).ok_or("no memory for rx buffers")?;
            con.rx_bufs[usize::from(i)] = pa;
            con.rx.set_desc(i, pa, PAGE as u32, DESC_F_WRITE);
            con.rx.push_avail(i);
        }
        w32(
            base + STATUS,
            ST_ACK | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK,
        );
        w32(base + QUEUE_NOTIFY, RXQ);
        con.enable_irq();
        Ok(con)
    }

    /// Routes the slot's SPI to CPU 0, group 1, edge-triggered, and enables it.
    fn enable_irq(&self) {
        let n = u64::from(self.intid);
        let bit = 1u32 << (n % 32);
        let grp = GICD + GICD_IGROUPR + 4 * (n / 32);
        w32(grp, r32(grp) | bit);
        let pr = GICD + GICD_IPRIORITYR + (n & !3);
        let shift = 8 * (n % 4);
        w32(pr, (r32(pr) & !(0xff << shift)) | (0x80 << shift));
        let cfg = GICD + GICD_ICFGR + 4 * (n / 16);
        w32(cfg, r32(cfg) | (2 << (2 * (n % 16))));
        let aff = crate::kernel::cpu::mpidr() & 0xff_00ff_ffff;
        w32(GICD + GICD_IROUTER + 8 * n, aff as u32);
        w32(GICD + GICD_IROUTER + 8 * n + 4, (aff >> 32) as u32);
        w32(GICD + GICD_ISENABLER + 4 * (n / 32), bit);
    }

    /// Acknowledges the device's interrupt (lowers its line).
    pub fn ack(&self) {
        let s = r32(self.base + INTERRUPT_STATUS);
        if s != 0 {
            w32(self.base + INTERRUPT_ACK, s);
        }
    }

    /// Whether there is something to look at before sleeping: receive buffers returned
    /// and not yet taken, or an interrupt not yet acknowledged. The GIC takes this
    /// device's line as edge-triggered, and the device keeps it high until the ack: with
    /// the line already high (a transmit completed after the last ack, its interrupt
    /// taken), bytes arriving now make no new edge, so a WFI would wait for them forever.
    pub fn pending(&self) -> bool {
        if r32(self.base + INTERRUPT_STATUS) != 0 {
            return true;
        }
        fence(Ordering::SeqCst);
        // SAFETY: the used ring's idx field lies in the used page we own.
        let idx =
            unsafe { core::ptr::read_volatile((pa_to_va(self.rx.used_pa) + 2) as *const u16) };
        idx != self.rx.last_used
    }

    /// Appends every byte received so far to `out`; returns whether any came.
    pub fn receive(&mut self, out: &mut Vec<u8>) -> bool {
        let mut any = false;
        while let Some((id, len)) = self.rx.pop_used() {
            let pa = self.rx_bufs[usize::from(id)];
            let len = (len as usize).min(PAGE as usize);
            // SAFETY: the device wrote `len` bytes into our page-sized buffer.
            let bytes = unsafe { core::slice::from_raw_parts(pa_to_va(pa) as *const u8, len) };
            out.extend_from_slice(bytes);
            self.rx.set_desc(id, pa, PAGE as u32, DESC_F_WRITE);
            self.rx.push_avail(id);
            any = true;
        }
        if any {
            w32(self.base + QUEUE_NOTIFY, RXQ);
        }
        any
    }

    /// Sends `parts` as one stream, waiting until the device has taken every chunk.
    pub fn send(&mut self, parts: &[&[u8]]) {
        let mut fill = 0usize;
        for p in parts {
            let mut p = *p;
            while !p.is_empty() {
                let n = p.len().min(TX_BUF - fill);
                // SAFETY: fill + n <= TX_BUF, inside the bounce buffer we own.
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        p.as_ptr(),
                        (pa_to_va(self.tx_buf) as *mut u8).add(fill),
                        n,
                    )
                };
                fill += n;
                p = &p[n..];
                if fill == TX_BUF {
                    self.flush(fill);
                    fill = 0;
                }
            }
        }
        if fill > 0 {
            self.flush(fill);
        }
    }

    fn flush(&mut self, len: usize) {
        self.tx.set_desc(0, self.tx_buf, len as u32, 0);
        self.tx.push_avail(0);
        w32(self.base + QUEUE_NOTIFY, TXQ);
        while self.tx.pop_used().is_none() {
            core::hint::spin_loop();
        }
    }
}
