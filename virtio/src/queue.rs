//! What the transport and a device's worker share: guest memory, the split virtqueues
//! (rust-vmm's `virtio_queue::Queue`), the interrupt, the doorbell, and checked
//! descriptor chains.
//!
//! The vCPU thread configures a queue through the transport's registers; the worker
//! pops chains and returns them, each under the queue's lock, and does its I/O without
//! the lock. A device reset bumps the queue's epoch: a request that was in flight across
//! the reset is dropped instead of being returned into the new queue.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use libvmmapi::VmMemory;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::doorbell::Doorbell;
use crate::irq::{Interrupt, INT_CONFIG, INT_VRING};

/// Told about the ranges of guest memory a device wrote, `(gpa, len)`, a request at a
/// time (the testbed must rewrite such ranges through its CPU before the guest may
/// execute them: docs/testbed.md).
pub trait DmaObserver: Send + Sync {
    fn wrote(&self, ranges: &[(u64, u64)]);
}

/// One descriptor as the driver wrote it (not yet checked against guest memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    /// Device-writable (VIRTQ_DESC_F_WRITE).
    pub writable: bool,
}

/// A descriptor chain popped from a queue: its head (returned in the used ring) and its
/// descriptors in order, readable ones first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub descs: Vec<Desc>,
}

impl Chain {
    /// The readable descriptors and the writable ones, or `None` when a readable one
    /// follows a writable one (the spec puts all readable descriptors first).
    pub fn split(&self) -> Option<(&[Desc], &[Desc])> {
        let first_writable = self
            .descs
            .iter()
            .position(|d| d.writable)
            .unwrap_or(self.descs.len());
        let (r, w) = self.descs.split_at(first_writable);
        w.iter().all(|d| d.writable).then_some((r, w))
    }
}

/// The bytes of `descs` taken as one stream, less the first `skip` and the last `trim`
/// bytes, as (guest address, length) pieces in order. `None` when the descriptors hold
/// fewer than `skip + trim` bytes. Pieces are not checked against guest memory here.
pub fn pieces(descs: &[Desc], skip: u64, trim: u64) -> Option<Vec<(u64, u32)>> {
    let total: u64 = descs.iter().map(|d| u64::from(d.len)).sum();
    let end = total.checked_sub(trim)?;
    if skip > end {
        return None;
    }
    let mut out = Vec::new();
    let mut at = 0u64;
    for d in descs {
        let (lo, hi) = (at, at + u64::from(d.len));
        at = hi;
        let from = lo.max(skip);
        let to = hi.min(end);
        if from < to {
            out.push((d.addr.checked_add(from - lo)?, (to - from) as u32));
        }
    }
    Some(out)
}

/// A queue with the state the transport keeps beside it.
#[derive(Debug)]
pub struct QueueSlot {
    pub queue: Queue,
    /// Bumped by every reset; a completion carries the epoch of its pop.
    pub epoch: u64,
    /// The driver wrote a QueueNum the device cannot take (not a power of two, zero,
    /// or above the maximum).
    pub bad_size: bool,
    /// The driver wrote a misaligned ring address (kept until the device is reset).
    pub bad_address: bool,
}

/// A chain popped from a queue, with the epoch to hand back on completion.
#[derive(Debug)]
pub struct Popped {
    pub chain: Chain,
    pub epoch: u64,
}

/// The state a transport and its device's worker share.
pub struct DeviceShared {
    pub mem: VmMemory,
    pub irq: Interrupt,
    pub bell: Doorbell,
    queues: Vec<Mutex<QueueSlot>>,
    /// DRIVER_OK is set (and FEATURES_OK was accepted).
    driver_ok: AtomicBool,
    /// The features the driver accepted (valid once `driver_ok`).
    features: AtomicU64,
    /// The device found the driver's queues unusable: DEVICE_NEEDS_RESET.
    needs_reset: AtomicBool,
    dma: Option<Arc<dyn DmaObserver>>,
}

impl DeviceShared {
    /// `queue_sizes` are the maximum sizes, powers of two (checked by the caller).
    pub fn new(
        mem: VmMemory,
        irq: Interrupt,
        queue_sizes: &[u16],
        dma: Option<Arc<dyn DmaObserver>>,
    ) -> std::io::Result<DeviceShared> {
        let mut queues = Vec::with_capacity(queue_sizes.len());
        for &size in queue_sizes {
            let queue = Queue::new(size)
                .map_err(|e| std::io::Error::other(format!("queue size {size}: {e}")))?;
            queues.push(Mutex::new(QueueSlot {
                queue,
                epoch: 0,
                bad_size: false,
                bad_address: false,
            }));
        }
        Ok(DeviceShared {
            mem,
            irq,
            bell: Doorbell::new()?,
            queues,
            driver_ok: AtomicBool::new(false),
            features: AtomicU64::new(0),
            needs_reset: AtomicBool::new(false),
            dma,
        })
    }

    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// Queue `n`, locked; `None` past the last queue.
    pub fn queue(&self, n: usize) -> Option<MutexGuard<'_, QueueSlot>> {
        // A worker that panicked mid-update leaves a queue whose indices are still
        // plain integers; take it over rather than propagate the panic to a vCPU.
        self.queues
            .get(n)
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn driver_ok(&self) -> bool {
        self.driver_ok.load(Ordering::Acquire)
    }

    /// The negotiated features.
    pub fn features(&self) -> u64 {
        self.features.load(Ordering::Acquire)
    }

    pub fn has_feature(&self, bit: u32) -> bool {
        bit < 64 && self.features() & (1 << bit) != 0
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    /// The transport: DRIVER_OK with these features.
    pub(crate) fn start(&self, features: u64) {
        self.features.store(features, Ordering::Release);
        self.driver_ok.store(true, Ordering::Release);
    }

    /// The transport: a device reset. Queues forget their configuration and in-flight
    /// requests, the interrupt drops.
    pub(crate) fn reset(&self) {
        self.driver_ok.store(false, Ordering::Release);
        self.features.store(0, Ordering::Release);
        self.needs_reset.store(false, Ordering::Release);
        for n in 0..self.queues.len() {
            if let Some(mut q) = self.queue(n) {
                q.queue.reset();
                q.epoch = q.epoch.wrapping_add(1);
                q.bad_size = false;
                q.bad_address = false;
            }
        }
        self.irq.reset();
    }

    /// The driver broke the protocol: DEVICE_NEEDS_RESET and a configuration-change
    /// interrupt (virtio 1.x 2.1.2). The device uses no queue until the reset.
    pub fn fail(&self) {
        if !self.needs_reset.swap(true, Ordering::AcqRel) {
            self.irq.raise(INT_CONFIG);
        }
    }

    /// The next available chain of queue `n`, or `None` when the queue is empty (with
    /// notifications re-enabled: under VIRTIO_F_EVENT_IDX the avail_event is moved to
    /// here), not ready, or the device is stopped. A driver error puts the device in
    /// DEVICE_NEEDS_RESET and returns `None`.
    pub fn pop(&self, n: usize) -> Option<Popped> {
        if !self.driver_ok() || self.needs_reset() {
            return None;
        }
        let mut slot = self.queue(n)?;
        if !slot.queue.ready() {
            return None;
        }
        let epoch = slot.epoch;
        loop {
            let next = match slot.queue.iter(&self.mem) {
                Ok(mut it) => it.next(),
                // The available index moved by more than the queue size, or the ring
                // is not in guest RAM.
                Err(_) => {
                    drop(slot);
                    self.fail();
                    return None;
                }
            };
            if let Some(dc) = next {
                let head = dc.head_index();
                let size = slot.queue.size();
                let mut descs = Vec::new();
                let mut ended = false;
                for d in dc {
                    descs.push(Desc {
                        addr: d.addr().0,
                        len: d.len(),
                        writable: d.is_write_only(),
                    });
                    if !d.has_next() {
                        ended = true;
                    }
                    // The crate stops after `size` descriptors (or the indirect table's
                    // length); a longer chain is a loop.
                    if descs.len() > usize::from(size) {
                        break;
                    }
                }
                if !ended || descs.is_empty() {
                    drop(slot);
                    self.fail();
                    return None;
                }
                return Some(Popped {
                    chain: Chain { head, descs },
                    epoch,
                });
            }
            match slot.queue.enable_notification(&self.mem) {
                Ok(true) => continue,
                Ok(false) => return None,
                Err(_) => {
                    drop(slot);
                    self.fail();
                    return None;
                }
            }
        }
    }

    /// Returns a chain popped from queue `n` with `len` bytes written into it, and
    /// interrupts the driver if it asked to be (EVENT_IDX or the NO_INTERRUPT flag).
    /// A chain from before a reset is dropped.
    pub fn complete(&self, n: usize, popped: &Popped, len: u32) {
        self.complete_all(n, &[(popped, len)]);
    }

    /// Gives back `popped`, the last chains popped from `queue`, unused (a received
    /// frame did not fit them), unless a reset came between.
    pub fn unpop(&self, queue: usize, popped: &[Popped]) {
        let Some(mut slot) = self.queue(queue) else {
            return;
        };
        if popped.iter().any(|p| p.epoch != slot.epoch) {
            return;
        }
        let back = slot.queue.next_avail().wrapping_sub(popped.len() as u16);
        slot.queue.set_next_avail(back);
    }

    /// Returns several popped chains of queue `n` with the bytes written into each, in
    /// order, then interrupts the driver once if it asked to be.
    pub fn complete_all(&self, n: usize, done: &[(&Popped, u32)]) {
        let Some(mut slot) = self.queue(n) else {
            return;
        };
        if !slot.queue.ready() || self.needs_reset() {
            return;
        }
        for (p, len) in done {
            if p.epoch != slot.epoch {
                return;
            }
            if slot.queue.add_used(&self.mem, p.chain.head, *len).is_err() {
                drop(slot);
                self.fail();
                return;
            }
        }
        let notify = slot.queue.needs_notification(&self.mem).unwrap_or(true);
        drop(slot);
        if notify {
            self.irq.raise(INT_VRING);
        }
    }

    /// The worker of a device with one request queue (queue 0) and no other event:
    /// serves every chain the guest makes available with `serve` (which returns the
    /// bytes it wrote into the chain) until the doorbell says stop.
    pub fn serve_requests(&self, mut serve: impl FnMut(&DeviceShared, &Chain) -> u32) {
        loop {
            let wake = self.bell.wait(&[], None);
            if wake.stop {
                return;
            }
            if wake.queues & !(1 << crate::doorbell::RESET_BIT) == 0 {
                continue;
            }
            while let Some(p) = self.pop(0) {
                let len = serve(self, &p.chain);
                self.complete(0, &p, len);
            }
        }
    }

    /// Reads `buf.len()` bytes at guest physical `gpa`, all inside guest RAM.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        use vm_memory::Bytes;
        self.mem.read_slice(buf, GuestAddress(gpa)).is_ok()
    }

    /// Writes `buf` at guest physical `gpa`, all inside guest RAM.
    pub fn write(&self, gpa: u64, buf: &[u8]) -> bool {
        use vm_memory::Bytes;
        self.mem.write_slice(buf, GuestAddress(gpa)).is_ok()
    }

    /// Reports what a request's I/O wrote into guest memory, `(gpa, len)` ranges, to the
    /// DMA observer.
    pub fn wrote(&self, ranges: &[(u64, u64)]) {
        if let (Some(o), false) = (&self.dma, ranges.is_empty()) {
            o.wrote(ranges);
        }
    }

    /// The host address of `[gpa, gpa + len)` when it lies inside one region of guest
    /// RAM; `None` otherwise (outside RAM, wrapping, or across regions).
    pub fn host_range(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        let region = self.mem.find_region(GuestAddress(gpa))?;
        let offset = gpa.checked_sub(region.start_addr().0)?;
        let end = offset.checked_add(len as u64)?;
        if end > region.len() {
            return None;
        }
        region
            .get_host_address(vm_memory::MemoryRegionAddress(offset))
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_skip_and_trim_across_descriptors() {
        let d = |addr, len| Desc {
            addr,
            len,
            writable: false,
        };
        let descs = [d(0x1000, 16), d(0x2000, 100), d(0x3000, 1)];
        // A block request: 16-byte header, data, 1-byte status.
        assert_eq!(pieces(&descs, 16, 1), Some(vec![(0x2000, 100)]));
        // Header and data in one descriptor.
        assert_eq!(
            pieces(&[d(0x1000, 116), d(0x3000, 1)], 16, 1),
            Some(vec![(0x1010, 100)])
        );
        assert_eq!(pieces(&descs, 0, 0).unwrap().len(), 3);
        assert_eq!(pieces(&descs, 117, 0), Some(vec![]));
        assert_eq!(pieces(&descs, 100, 20), None);
        assert_eq!(pieces(&[], 0, 1), None);
    }

    #[test]
    fn split_requires_readable_first() {
        let d = |writable| Desc {
            addr: 0,
            len: 1,
            writable,
        };
        let c = Chain {
            head: 0,
            descs: vec![d(false), d(false), d(true)],
        };
        let (r, w) = c.split().unwrap();
        assert_eq!((r.len(), w.len()), (2, 1));
        let c = Chain {
            head: 0,
            descs: vec![d(true), d(false)],
        };
        assert!(c.split().is_none());
    }

    // Whole-queue behaviour (hostile chains, event index, resets) is tested through
    // the transport and the devices (transport.rs, blk.rs, rng.rs).
}
