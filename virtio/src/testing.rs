//! Test doubles: guest RAM in anonymous memory and a guest driver that sets devices up
//! through the transport's registers and builds virtqueues by hand (well-formed or not).

use std::ptr::NonNull;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libvmmapi::memory::{Mapping, MmapOwner};
use libvmmapi::{VmMemory, VmRegion};
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio as reg;
use vm_memory::{Bytes, GuestAddress};

use crate::irq::tests::RecordingLine;
use crate::queue::DmaObserver;
use crate::transport::{Device, VirtioMmio};

pub const RAM_BASE: u64 = 0x4000_0000;
pub const RAM_SIZE: usize = 8 << 20;
/// Where test data buffers start (queues live below).
pub const DATA: u64 = RAM_BASE + 0x10_0000;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;

/// `RAM_SIZE` bytes of zeroed guest RAM at `RAM_BASE`.
pub fn ram() -> VmMemory {
    let owner = Arc::new(MmapOwner::anonymous(RAM_SIZE).unwrap());
    let ptr = NonNull::new(owner.as_ptr()).unwrap();
    // SAFETY: ptr..ptr+RAM_SIZE is the fresh anonymous mapping `owner` keeps alive.
    let map = unsafe { Mapping::new(ptr, RAM_SIZE, owner) };
    VmMemory::from_regions(vec![VmRegion::new(GuestAddress(RAM_BASE), map).unwrap()]).unwrap()
}

/// Every range the device reported writing.
#[derive(Default)]
pub struct RecordingDma(pub Mutex<Vec<(u64, u64)>>);
impl DmaObserver for RecordingDma {
    fn wrote(&self, ranges: &[(u64, u64)]) {
        self.0.lock().unwrap().extend_from_slice(ranges);
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub size: u16,
}

/// A driver for one device on its transport.
pub struct Driver {
    pub t: VirtioMmio,
    pub mem: VmMemory,
    pub line: Arc<RecordingLine>,
    pub dma: Arc<RecordingDma>,
    pub queues: Vec<Layout>,
    avail_idx: Vec<u16>,
    last_used: Vec<u16>,
}

impl Driver {
    pub fn new(device: Box<dyn Device>) -> Driver {
        let mem = ram();
        let line = Arc::new(RecordingLine::default());
        let dma = Arc::new(RecordingDma::default());
        let t = VirtioMmio::new(
            device,
            mem.clone(),
            line.clone(),
            Some(dma.clone() as Arc<dyn DmaObserver>),
        )
        .unwrap();
        Driver {
            t,
            mem,
            line,
            dma,
            queues: Vec::new(),
            avail_idx: Vec::new(),
            last_used: Vec::new(),
        }
    }

    pub fn rd(&mut self, off: u32) -> u32 {
        self.t.read(u64::from(off), 4) as u32
    }

    pub fn wr(&mut self, off: u32, v: u32) {
        self.t.write(u64::from(off), 4, u64::from(v));
    }

    pub fn device_features(&mut self) -> u64 {
        self.wr(reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        let lo = self.rd(reg::VIRTIO_MMIO_DEVICE_FEATURES);
        self.wr(reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let hi = self.rd(reg::VIRTIO_MMIO_DEVICE_FEATURES);
        u64::from(lo) | (u64::from(hi) << 32)
    }

    /// ACKNOWLEDGE, DRIVER, features; returns whether FEATURES_OK stuck.
    pub fn negotiate(&mut self, features: u64) -> bool {
        self.wr(reg::VIRTIO_MMIO_STATUS, 0);
        self.wr(reg::VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.wr(
            reg::VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        self.wr(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        self.wr(reg::VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
        self.wr(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        self.wr(reg::VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        self.wr(reg::VIRTIO_MMIO_STATUS, s);
        self.rd(reg::VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK != 0
    }

    /// The standard layout of queue `n` with `size` entries.
    pub fn layout(n: u32, size: u16) -> Layout {
        let base = RAM_BASE + u64::from(n) * 0x1_0000;
        Layout {
            desc: base,
            avail: base + 0x4000,
            used: base + 0x8000,
            size,
        }
    }

    /// Sets queue `n` up at `l`; returns whether QueueReady reads back 1.
    pub fn setup_queue(&mut self, n: u32, l: Layout) -> bool {
        // As a driver does, rings start zeroed (inside RAM; hostile layouts may not be).
        for (at, len) in [(l.desc, 0x4000), (l.avail, 0x4000), (l.used, 0x8000)] {
            let _ = self.mem.write_slice(&vec![0u8; len], GuestAddress(at));
        }
        self.wr(reg::VIRTIO_MMIO_QUEUE_SEL, n);
        self.wr(reg::VIRTIO_MMIO_QUEUE_NUM, u32::from(l.size));
        for (lo, v) in [
            (reg::VIRTIO_MMIO_QUEUE_DESC_LOW, l.desc),
            (reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW, l.avail),
            (reg::VIRTIO_MMIO_QUEUE_USED_LOW, l.used),
        ] {
            self.wr(lo, v as u32);
            self.wr(lo + 4, (v >> 32) as u32);
        }
        self.wr(reg::VIRTIO_MMIO_QUEUE_READY, 1);
        let n = n as usize;
        if self.queues.len() <= n {
            self.queues.resize(n + 1, l);
            self.avail_idx.resize(n + 1, 0);
            self.last_used.resize(n + 1, 0);
        }
        self.queues[n] = l;
        self.avail_idx[n] = 0;
        self.last_used[n] = 0;
        self.rd(reg::VIRTIO_MMIO_QUEUE_READY) == 1
    }

    pub fn driver_ok(&mut self) {
        let s = self.rd(reg::VIRTIO_MMIO_STATUS);
        self.wr(reg::VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
    }

    /// Negotiates `features`, sets up `nqueues` queues of `size` and sets DRIVER_OK.
    pub fn start(&mut self, features: u64, nqueues: u32, size: u16) {
        assert!(self.negotiate(features), "FEATURES_OK refused");
        for n in 0..nqueues {
            assert!(self.setup_queue(n, Self::layout(n, size)), "queue {n}");
        }
        self.driver_ok();
    }

    /// Writes descriptor `i` of queue `q`.
    pub fn put_desc(&self, q: usize, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(self.queues[q].desc + u64::from(i) * 16);
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&d, at).unwrap();
    }

    /// Makes `head` available in queue `q` and sets the avail index to its next value.
    pub fn offer(&mut self, q: usize, head: u16) {
        let l = self.queues[q];
        let idx = self.avail_idx[q];
        let slot = GuestAddress(l.avail + 4 + u64::from(idx % l.size) * 2);
        self.mem.write_obj(head, slot).unwrap();
        self.avail_idx[q] = idx.wrapping_add(1);
        self.set_avail_idx(q, self.avail_idx[q]);
    }

    /// Writes the avail ring's idx (hostile tests set any value).
    pub fn set_avail_idx(&self, q: usize, idx: u16) {
        self.mem
            .write_obj(idx, GuestAddress(self.queues[q].avail + 2))
            .unwrap();
    }

    /// Writes a chain of (addr, len, writable) at descriptors `first..`, offers it and
    /// notifies queue `q`.
    pub fn submit(&mut self, q: usize, first: u16, descs: &[(u64, u32, bool)]) {
        for (k, &(addr, len, w)) in descs.iter().enumerate() {
            let i = first + k as u16;
            let more = k + 1 < descs.len();
            let flags = if w { F_WRITE } else { 0 } | if more { F_NEXT } else { 0 };
            self.put_desc(q, i, addr, len, flags, if more { i + 1 } else { 0 });
        }
        self.offer(q, first);
        self.notify(q);
    }

    pub fn notify(&mut self, q: usize) {
        self.wr(reg::VIRTIO_MMIO_QUEUE_NOTIFY, q as u32);
    }

    /// The used ring's idx.
    pub fn used_idx(&self, q: usize) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.queues[q].used + 2))
            .unwrap()
    }

    /// Waits (up to 5 s) for the next used element of queue `q`: (id, len).
    pub fn next_used(&mut self, q: usize) -> Option<(u32, u32)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.used_idx(q) == self.last_used[q] {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let l = self.queues[q];
        let at = l.used + 4 + u64::from(self.last_used[q] % l.size) * 8;
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        self.last_used[q] = self.last_used[q].wrapping_add(1);
        Some((id, len))
    }

    /// Waits (up to 5 s) for DEVICE_NEEDS_RESET.
    pub fn wait_needs_reset(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.rd(reg::VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET != 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    pub fn read_mem(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(gpa)).unwrap();
        v
    }

    pub fn write_mem(&self, gpa: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(gpa)).unwrap();
    }
}
