//! A virtio-mmio transport and its split virtqueues over guest RAM the input fills: the
//! driver's register writes (status, features, queue selection, sizes, ring addresses,
//! ready, notify, interrupt acknowledge) and the device's side (pop each chain,
//! write into its device-writable descriptors through guest memory, complete it) in any
//! order, the way a vCPU thread and a device worker interleave. Invariants: nothing
//! panics; every popped chain is non-empty, no longer than its queue, and its head is a
//! queue index; a device writes only inside guest RAM (vm-memory refuses the rest); a
//! malformed queue puts the device in DEVICE_NEEDS_RESET and it pops nothing more until
//! a reset.
#![no_main]

use std::ptr::NonNull;
use std::sync::Arc;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use libvmmapi::memory::{Mapping, MmapOwner};
use libvmmapi::{VmMemory, VmRegion};
use virtio_bindings::virtio_mmio as reg;
use vm_memory::{Bytes, GuestAddress};
use vmm_virtio::irq::IrqLine;
use vmm_virtio::transport::{Device, DeviceInfo, VirtioMmio};

const RAM_BASE: u64 = 0x4000_0000;
const RAM_SIZE: usize = 64 << 10;
const QUEUE_MAX: u16 = 16;

/// A device whose worker does nothing: the target plays the worker itself, in step
/// with the driver's accesses.
struct Inert;
impl Device for Inert {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            id: 4,
            name: "fuzz",
            features: 0,
            queue_sizes: vec![QUEUE_MAX, 4],
            config: vec![1, 2, 3, 4],
        }
    }
    fn run(self: Box<Self>, _dev: Arc<vmm_virtio::queue::DeviceShared>) {}
}

struct Line;
impl IrqLine for Line {
    fn set_level(&self, _high: bool) -> libvmmapi::Result<()> {
        Ok(())
    }
}

fn ram(fill: &[u8]) -> VmMemory {
    let owner = Arc::new(MmapOwner::anonymous(RAM_SIZE).expect("anonymous memory"));
    let ptr = NonNull::new(owner.as_ptr()).expect("mapping");
    // SAFETY: ptr..ptr + RAM_SIZE is the fresh anonymous mapping `owner` keeps alive.
    let map = unsafe { Mapping::new(ptr, RAM_SIZE, owner) };
    let mem = VmMemory::from_regions(vec![
        VmRegion::new(GuestAddress(RAM_BASE), map).expect("region")
    ])
    .expect("memory");
    mem.write_slice(fill, GuestAddress(RAM_BASE)).expect("fill");
    mem
}

const REGS: [u32; 18] = [
    reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL,
    reg::VIRTIO_MMIO_DRIVER_FEATURES,
    reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL,
    reg::VIRTIO_MMIO_QUEUE_SEL,
    reg::VIRTIO_MMIO_QUEUE_NUM,
    reg::VIRTIO_MMIO_QUEUE_READY,
    reg::VIRTIO_MMIO_QUEUE_NOTIFY,
    reg::VIRTIO_MMIO_INTERRUPT_ACK,
    reg::VIRTIO_MMIO_STATUS,
    reg::VIRTIO_MMIO_QUEUE_DESC_LOW,
    reg::VIRTIO_MMIO_QUEUE_DESC_HIGH,
    reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW,
    reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
    reg::VIRTIO_MMIO_QUEUE_USED_LOW,
    reg::VIRTIO_MMIO_QUEUE_USED_HIGH,
    reg::VIRTIO_MMIO_SHM_SEL,
    reg::VIRTIO_MMIO_CONFIG_GENERATION,
    reg::VIRTIO_MMIO_CONFIG,
];

fn step(u: &mut Unstructured<'_>, t: &mut VirtioMmio) -> Result<()> {
    let dev = Arc::clone(t.shared());
    match u.int_in_range(0u8..=9)? {
        0..=4 => {
            let r = *u.choose(&REGS)?;
            // Ring addresses mostly inside RAM, so the queues get used.
            let v: u32 = match r {
                reg::VIRTIO_MMIO_QUEUE_DESC_LOW
                | reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW
                | reg::VIRTIO_MMIO_QUEUE_USED_LOW
                    if u.ratio(3u8, 4)? =>
                {
                    RAM_BASE as u32 + u32::from(u.arbitrary::<u16>()?)
                }
                _ => u.arbitrary()?,
            };
            let size = if u.ratio(7u8, 8)? {
                4
            } else {
                *u.choose(&[1u8, 2, 8])?
            };
            // Into the configuration space at any of its words.
            let at = if r == reg::VIRTIO_MMIO_CONFIG {
                u64::from(r) + u64::from(u.int_in_range(0u8..=3)?) * 4
            } else {
                u64::from(r)
            };
            t.write(at, size, u64::from(v));
        }
        5 => {
            let off = u64::from(u.int_in_range(0u16..=0x1ff)?);
            let size = *u.choose(&[1u8, 2, 4, 8])?;
            let v = t.read(off, size);
            if size < 8 {
                assert_eq!(
                    v >> (u32::from(size) * 8),
                    0,
                    "{size}-byte read at {off:#x} gave {v:#x}"
                );
            }
        }
        _ => {
            let q = u.int_in_range(0usize..=1)?;
            let was_failed = dev.needs_reset();
            let Some(p) = dev.pop(q) else {
                return Ok(());
            };
            assert!(
                !was_failed,
                "a chain popped from a device that needs a reset"
            );
            let size = usize::from(if q == 0 { QUEUE_MAX } else { 4 });
            assert!(!p.chain.descs.is_empty(), "an empty chain");
            assert!(
                p.chain.descs.len() <= size,
                "a chain of {} descriptors in a queue of {size}",
                p.chain.descs.len()
            );
            assert!(
                usize::from(p.chain.head) < size,
                "head {} in a queue of {size}",
                p.chain.head
            );
            let mut written = 0u32;
            if let Some((_, w)) = p.chain.split() {
                for d in w {
                    let n = (d.len as usize).min(256);
                    // vm-memory checks the range: outside RAM it is an error, not a write.
                    if dev
                        .mem
                        .write_slice(&vec![0xa5; n], GuestAddress(d.addr))
                        .is_ok()
                    {
                        assert!(
                            d.addr >= RAM_BASE && d.addr + n as u64 <= RAM_BASE + RAM_SIZE as u64
                        );
                        written = written.saturating_add(n as u32);
                    }
                }
            }
            dev.complete(q, &p, written);
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let fill_len = u.int_in_range(0usize..=4096).unwrap_or(0).min(u.len());
    let fill = u.bytes(fill_len).unwrap_or(&[]);
    let mem = ram(fill);
    let mut t = VirtioMmio::new(Box::new(Inert), mem, Arc::new(Line), None).expect("transport");
    for _ in 0..256 {
        if u.is_empty() || step(&mut u, &mut t).is_err() {
            break;
        }
    }
});
