//! The virtio-mmio transport, version 2 (virtio 1.x "MMIO Device Register Layout"): the
//! register file a vCPU reaches by MMIO, feature negotiation, the status state machine,
//! queue setup, InterruptStatus/InterruptACK, device reset and the configuration space.
//!
//! Everything here runs on the vCPU thread that made the access and never blocks on
//! device I/O: QueueNotify only rings the worker's doorbell, except for a device's
//! inline queue ([`InlineQueue`]: a console's output, written as the UART's is).

use std::os::fd::RawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use libvmmapi::VmMemory;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio as reg;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::GuestAddress;

use crate::irq::{Interrupt, IrqLine};
use crate::queue::{DeviceShared, DmaObserver};

/// "virt", little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The virtio 1.x (non-legacy) MMIO interface.
pub const VERSION: u32 = 2;
/// VendorID: "BHYV" in ASCII, little-endian. virtio has no vendor registry; Linux only
/// shows it (sysfs `vendor`) and matches drivers on the device ID.
pub const VENDOR_ID: u32 = 0x5659_4842;

/// Features every device offers through this transport.
pub const TRANSPORT_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX);

/// What a device model tells the transport about itself.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// virtio device ID (virtio_ids).
    pub id: u32,
    /// A short name for thread names and messages ("virtio-blk").
    pub name: &'static str,
    /// Device-specific feature bits (the transport adds [`TRANSPORT_FEATURES`]).
    pub features: u64,
    /// Each queue's maximum size (powers of two, at most 32768).
    pub queue_sizes: Vec<u16>,
    /// The device-specific configuration space, read-only to the driver.
    pub config: Vec<u8>,
}

/// A host descriptor a device's backend keeps, and what the device does with it: what
/// bhyve limits it to before it enters capability mode (FreeBSD's Capsicum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostFd {
    /// A disk image or device: positioned reads, `fsync`, `fstat`; writes (and
    /// deallocation) unless read-only.
    Disk { fd: RawFd, writable: bool },
    /// A tap: reads, writes, polling.
    Tap(RawFd),
    /// A stream socket or a listening one: accept, reads, writes, polling.
    Socket(RawFd),
}

/// A queue the vCPU thread that notifies it serves itself, before the guest runs again,
/// rather than ringing the worker. For a console's output: Linux's virtio_console waits
/// for each buffer back in a busy loop (it holds a spin lock), so a worker's wakeup
/// would be time the guest spins away; FreeBSD's bhyve and QEMU also serve it on the
/// notifying vCPU's thread, as a UART's data register is.
pub struct InlineQueue {
    pub queue: u32,
    /// Serves the queue's available buffers (`DeviceShared::pop` says when it is empty
    /// or the driver is not ready).
    pub serve: Box<dyn Fn(&DeviceShared) + Send + Sync>,
}

/// A device model: describes itself, then serves its queues on a worker thread of its
/// own until the doorbell says stop.
pub trait Device: Send + 'static {
    fn info(&self) -> DeviceInfo;
    /// The queue this device's notifications are served inline on the vCPU thread
    /// (none by default); asked once, before the worker starts.
    fn inline_queue(&mut self) -> Option<InlineQueue> {
        None
    }
    /// The worker: waits on `dev.bell`, serves the queues, returns on stop.
    fn run(self: Box<Self>, dev: Arc<DeviceShared>);
    /// The host descriptors the device keeps (none by default).
    fn host_fds(&self) -> Vec<HostFd> {
        Vec::new()
    }
}

/// One virtio-mmio slot with its device.
pub struct VirtioMmio {
    info: DeviceInfo,
    dev: Arc<DeviceShared>,
    inline: Option<InlineQueue>,
    worker: Option<JoinHandle<()>>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    shm_sel: u32,
    config_generation: u32,
}

impl VirtioMmio {
    /// Puts `device` on a transport and starts its worker. `line` is the slot's SPI.
    pub fn new(
        mut device: Box<dyn Device>,
        mem: VmMemory,
        line: Arc<dyn IrqLine>,
        dma: Option<Arc<dyn DmaObserver>>,
    ) -> std::io::Result<VirtioMmio> {
        let info = device.info();
        let inline = device.inline_queue();
        let dev = Arc::new(DeviceShared::new(
            mem,
            Interrupt::new(line),
            &info.queue_sizes,
            dma,
        )?);
        let worker = {
            let dev = Arc::clone(&dev);
            std::thread::Builder::new()
                .name(info.name.to_string())
                .spawn(move || device.run(dev))?
        };
        Ok(VirtioMmio {
            info,
            dev,
            inline,
            worker: Some(worker),
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            shm_sel: 0,
            config_generation: 0,
        })
    }

    /// What the device and the worker share (tests look at it).
    pub fn shared(&self) -> &Arc<DeviceShared> {
        &self.dev
    }

    pub fn name(&self) -> &'static str {
        self.info.name
    }

    fn offered(&self) -> u64 {
        self.info.features | TRANSPORT_FEATURES
    }

    fn status(&self) -> u32 {
        let mut s = self.status;
        if self.dev.needs_reset() {
            s |= VIRTIO_CONFIG_S_NEEDS_RESET;
        }
        s
    }

    /// A guest read of `size` bytes at `offset` in the slot.
    pub fn read(&mut self, offset: u64, size: u8) -> u64 {
        if offset >= u64::from(reg::VIRTIO_MMIO_CONFIG) {
            return self.read_config(offset - u64::from(reg::VIRTIO_MMIO_CONFIG), size);
        }
        // The registers below the configuration space are 32-bit, aligned.
        if size != 4 || !offset.is_multiple_of(4) {
            return 0;
        }
        let Ok(off) = u32::try_from(offset) else {
            return 0;
        };
        let v: u32 = match off {
            reg::VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            reg::VIRTIO_MMIO_VERSION => VERSION,
            reg::VIRTIO_MMIO_DEVICE_ID => self.info.id,
            reg::VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            reg::VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered() as u32,
                1 => (self.offered() >> 32) as u32,
                _ => 0,
            },
            reg::VIRTIO_MMIO_QUEUE_NUM_MAX => self.with_queue(|q| q.queue.max_size().into()),
            reg::VIRTIO_MMIO_QUEUE_READY => self.with_queue(|q| q.queue.ready().into()),
            reg::VIRTIO_MMIO_INTERRUPT_STATUS => self.dev.irq.status(),
            reg::VIRTIO_MMIO_STATUS => self.status(),
            // No shared memory regions: length all ones (virtio 1.x 4.2.2).
            reg::VIRTIO_MMIO_SHM_LEN_LOW | reg::VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            reg::VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        v.into()
    }

    /// A guest write of `size` bytes at `offset` in the slot.
    pub fn write(&mut self, offset: u64, size: u8, value: u64) {
        if offset >= u64::from(reg::VIRTIO_MMIO_CONFIG) {
            // The configuration spaces offered are read-only.
            return;
        }
        if size != 4 || !offset.is_multiple_of(4) {
            return;
        }
        let Ok(off) = u32::try_from(offset) else {
            return;
        };
        let v = value as u32;
        match off {
            reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(v),
            reg::VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            reg::VIRTIO_MMIO_QUEUE_NUM => self.write_queue_num(v),
            reg::VIRTIO_MMIO_QUEUE_READY => self.write_queue_ready(v),
            reg::VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(v),
            reg::VIRTIO_MMIO_INTERRUPT_ACK => self.dev.irq.ack(v),
            reg::VIRTIO_MMIO_STATUS => self.write_status(v),
            reg::VIRTIO_MMIO_QUEUE_DESC_LOW
            | reg::VIRTIO_MMIO_QUEUE_DESC_HIGH
            | reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | reg::VIRTIO_MMIO_QUEUE_USED_LOW
            | reg::VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_queue_address(off, v),
            reg::VIRTIO_MMIO_SHM_SEL => self.shm_sel = v,
            _ => {}
        }
    }

    fn read_config(&self, offset: u64, size: u8) -> u64 {
        let Ok(start) = usize::try_from(offset) else {
            return 0;
        };
        let mut bytes = [0u8; 8];
        for (i, b) in bytes.iter_mut().enumerate().take(usize::from(size.min(8))) {
            *b = start
                .checked_add(i)
                .and_then(|at| self.info.config.get(at))
                .copied()
                .unwrap_or(0);
        }
        u64::from_le_bytes(bytes)
    }

    fn with_queue(&self, f: impl FnOnce(&crate::queue::QueueSlot) -> u32) -> u32 {
        self.dev.queue(self.queue_sel as usize).map_or(0, |q| f(&q))
    }

    /// Queue registers may change only while the queue is not ready and the driver has
    /// not set DRIVER_OK.
    fn queue_writable(&self) -> Option<std::sync::MutexGuard<'_, crate::queue::QueueSlot>> {
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            return None;
        }
        let q = self.dev.queue(self.queue_sel as usize)?;
        (!q.queue.ready()).then_some(q)
    }

    fn write_driver_features(&mut self, v: u32) {
        // Only between DRIVER and FEATURES_OK.
        if self.status & VIRTIO_CONFIG_S_DRIVER == 0
            || self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
        {
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
            _ => {}
        }
    }

    fn write_queue_num(&mut self, v: u32) {
        if let Some(mut q) = self.queue_writable() {
            let max = u32::from(q.queue.max_size());
            if v == 0 || v > max || !v.is_power_of_two() {
                q.bad_size = true;
            } else {
                q.bad_size = false;
                q.queue.set_size(v as u16);
            }
        }
    }

    fn write_queue_address(&mut self, off: u32, v: u32) {
        enum Ring {
            Desc,
            Avail,
            Used,
        }
        let (ring, low) = match off {
            reg::VIRTIO_MMIO_QUEUE_DESC_LOW => (Ring::Desc, true),
            reg::VIRTIO_MMIO_QUEUE_DESC_HIGH => (Ring::Desc, false),
            reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW => (Ring::Avail, true),
            reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH => (Ring::Avail, false),
            reg::VIRTIO_MMIO_QUEUE_USED_LOW => (Ring::Used, true),
            _ => (Ring::Used, false),
        };
        let Some(mut q) = self.queue_writable() else {
            return;
        };
        let old = match ring {
            Ring::Desc => q.queue.desc_table(),
            Ring::Avail => q.queue.avail_ring(),
            Ring::Used => q.queue.used_ring(),
        };
        let a = GuestAddress(if low {
            (old & !0xffff_ffff) | u64::from(v)
        } else {
            (old & 0xffff_ffff) | (u64::from(v) << 32)
        });
        let set = match ring {
            Ring::Desc => q.queue.try_set_desc_table_address(a),
            Ring::Avail => q.queue.try_set_avail_ring_address(a),
            Ring::Used => q.queue.try_set_used_ring_address(a),
        };
        // The crate refuses a misaligned address and keeps the old one, which must not
        // be used instead: the queue cannot become ready until a reset.
        if set.is_err() {
            q.bad_address = true;
        }
    }

    fn write_queue_ready(&mut self, v: u32) {
        let Some(mut q) = self.dev.queue(self.queue_sel as usize) else {
            return;
        };
        if v == 0 {
            q.queue.set_ready(false);
            return;
        }
        if q.queue.ready() || self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            return;
        }
        q.queue
            .set_event_idx(self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
        q.queue.set_ready(true);
        // A size the device cannot take, or rings outside guest RAM or misaligned: the
        // queue stays unusable and the driver is told to reset the device.
        let usable = !q.bad_size && !q.bad_address && q.queue.is_valid(&self.dev.mem);
        if !usable {
            q.queue.set_ready(false);
            drop(q);
            self.dev.fail();
        }
    }

    fn notify(&self, v: u32) {
        // With VIRTIO_F_NOTIFICATION_DATA (not offered) the high half would carry more.
        let queue = v & 0xffff;
        if (queue as usize) < self.dev.num_queues() {
            self.serve_or_ring(queue);
        }
    }

    /// Serves queue `queue` here if it is the device's inline queue, else wakes the
    /// worker for it.
    fn serve_or_ring(&self, queue: u32) {
        match &self.inline {
            Some(inline) if inline.queue == queue => (inline.serve)(&self.dev),
            _ => self.dev.bell.ring(queue),
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // Bits are only ever added until the next reset; NEEDS_RESET is the device's.
        let v = v & !VIRTIO_CONFIG_S_NEEDS_RESET;
        let added = v & !self.status;
        if v & self.status != self.status {
            return;
        }
        let mut status = v;
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let acceptable = self.driver_features & !self.offered() == 0
                && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0;
            if !acceptable {
                // The driver reads FEATURES_OK back, finds it clear, and gives up.
                status &= !VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            if status & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
                status &= !VIRTIO_CONFIG_S_DRIVER_OK;
            } else {
                self.dev.start(self.driver_features);
                // Buffers made available before DRIVER_OK are served now.
                for n in 0..self.dev.num_queues() {
                    self.serve_or_ring(n as u32);
                }
            }
        }
        self.status = status;
    }

    fn reset(&mut self) {
        self.dev.reset();
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.shm_sel = 0;
        // Tell the worker: a device with state of its own (pending receive) restarts it.
        self.dev.bell.ring(crate::doorbell::RESET_BIT);
    }
}

impl Drop for VirtioMmio {
    fn drop(&mut self) {
        self.dev.bell.stop();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
