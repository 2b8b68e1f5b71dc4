//! The virtio-mmio register file: identification, negotiation, status, queue setup,
//! interrupts and reset.

use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio as reg;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use crate::rng::Rng;
use crate::testing::{Driver, DATA};

const V1: u64 = 1 << VIRTIO_F_VERSION_1;

#[test]
fn identifies_as_a_modern_device() {
    let mut d = Driver::new(Box::new(Rng));
    assert_eq!(d.rd(reg::VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(d.rd(reg::VIRTIO_MMIO_VERSION), 2);
    assert_eq!(d.rd(reg::VIRTIO_MMIO_DEVICE_ID), 4);
    let f = d.device_features();
    assert_eq!(f, V1 | (1 << VIRTIO_RING_F_EVENT_IDX), "{f:#x}");
    d.wr(reg::VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(d.rd(reg::VIRTIO_MMIO_QUEUE_NUM_MAX), 64);
    d.wr(reg::VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(d.rd(reg::VIRTIO_MMIO_QUEUE_NUM_MAX), 0, "no second queue");
    // Only aligned 32-bit register accesses are answered.
    assert_eq!(d.t.read(0, 2), 0);
    assert_eq!(d.t.read(2, 4), 0);
    assert_eq!(d.rd(reg::VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
}

#[test]
fn features_ok_needs_version_1_and_only_offered_bits() {
    let mut d = Driver::new(Box::new(Rng));
    assert!(!d.negotiate(0), "legacy drivers are refused");
    assert!(
        !d.negotiate(V1 | (1 << 40)),
        "a bit the device did not offer"
    );
    assert!(d.negotiate(V1));
    // Features cannot change after FEATURES_OK.
    d.wr(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    d.wr(reg::VIRTIO_MMIO_DRIVER_FEATURES, 0xffff_ffff);
    let s = d.rd(reg::VIRTIO_MMIO_STATUS);
    d.wr(reg::VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
    assert!(d.t.shared().driver_ok());
    assert_eq!(d.t.shared().features(), V1);
}

#[test]
fn driver_ok_without_features_ok_is_refused() {
    let mut d = Driver::new(Box::new(Rng));
    d.wr(reg::VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    d.wr(
        reg::VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    assert_eq!(d.rd(reg::VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_DRIVER_OK, 0);
    assert!(!d.t.shared().driver_ok());
}

#[test]
fn queue_registers_read_back_and_lock_once_ready() {
    let mut d = Driver::new(Box::new(Rng));
    assert!(d.negotiate(V1));
    let l = Driver::layout(0, 16);
    assert!(d.setup_queue(0, l));
    {
        let q = d.t.shared().queue(0).unwrap();
        use virtio_queue::QueueT;
        assert_eq!(q.queue.size(), 16);
        assert_eq!(q.queue.desc_table(), l.desc);
        assert_eq!(q.queue.avail_ring(), l.avail);
        assert_eq!(q.queue.used_ring(), l.used);
    }
    // A ready queue ignores new addresses.
    d.wr(reg::VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1234_0000);
    use virtio_queue::QueueT;
    assert_eq!(d.t.shared().queue(0).unwrap().queue.desc_table(), l.desc);
}

#[test]
fn interrupt_status_ack_and_the_level() {
    let mut d = Driver::new(Box::new(Rng));
    d.start(V1, 1, 16);
    d.submit(0, 0, &[(DATA, 32, true)]);
    assert_eq!(d.next_used(0), Some((0, 32)));
    // The used-buffer interrupt is raised after the used element is visible; wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while d.rd(reg::VIRTIO_MMIO_INTERRUPT_STATUS) == 0 {
        assert!(std::time::Instant::now() < deadline, "no interrupt");
        std::thread::yield_now();
    }
    assert_eq!(d.rd(reg::VIRTIO_MMIO_INTERRUPT_STATUS), 1);
    assert_eq!(*d.line.0.lock().unwrap(), [true]);
    d.wr(reg::VIRTIO_MMIO_INTERRUPT_ACK, 1);
    assert_eq!(d.rd(reg::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    assert_eq!(*d.line.0.lock().unwrap(), [true, false]);
}

#[test]
fn reset_forgets_everything_and_drops_the_line() {
    let mut d = Driver::new(Box::new(Rng));
    d.start(V1, 1, 16);
    d.submit(0, 0, &[(DATA, 8, true)]);
    assert!(d.next_used(0).is_some());
    d.wr(reg::VIRTIO_MMIO_STATUS, 0);
    assert_eq!(d.rd(reg::VIRTIO_MMIO_STATUS), 0);
    assert_eq!(d.rd(reg::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    assert_eq!(d.line.0.lock().unwrap().last(), Some(&false));
    d.wr(reg::VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(d.rd(reg::VIRTIO_MMIO_QUEUE_READY), 0);
    assert!(!d.t.shared().driver_ok());
    // And the device works again after a fresh setup.
    d.start(V1, 1, 16);
    d.submit(0, 0, &[(DATA, 8, true)]);
    assert_eq!(d.next_used(0), Some((0, 8)));
}

#[test]
fn config_generation_and_out_of_range_config_reads() {
    let mut d = Driver::new(Box::new(Rng));
    assert_eq!(d.rd(reg::VIRTIO_MMIO_CONFIG_GENERATION), 0);
    // rng has no configuration space: reads are zero, writes ignored.
    assert_eq!(d.t.read(0x100, 1), 0);
    d.t.write(0x100, 4, 0xffff_ffff);
    assert_eq!(d.t.read(0x1fc, 4), 0);
}

#[test]
fn event_idx_suppresses_interrupts_the_driver_did_not_ask_for() {
    let mut d = Driver::new(Box::new(Rng));
    d.start(V1 | (1 << VIRTIO_RING_F_EVENT_IDX), 1, 16);
    let l = d.queues[0];
    use vm_memory::{Bytes, GuestAddress};
    // used_event (after the avail ring's entries) = 5: interrupt only once the used
    // index passes 5.
    d.mem
        .write_obj(5u16, GuestAddress(l.avail + 4 + 2 * u64::from(l.size)))
        .unwrap();
    for i in 0..5u16 {
        d.submit(0, i, &[(DATA + u64::from(i) * 64, 8, true)]);
        assert!(d.next_used(0).is_some());
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(
        d.rd(reg::VIRTIO_MMIO_INTERRUPT_STATUS),
        0,
        "not asked for yet"
    );
    d.submit(0, 5, &[(DATA, 8, true)]);
    assert!(d.next_used(0).is_some());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while d.rd(reg::VIRTIO_MMIO_INTERRUPT_STATUS) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no interrupt at used_event"
        );
        std::thread::yield_now();
    }
    // The device moved avail_event (after the used ring) to where it will look next.
    let avail_event: u16 = d
        .mem
        .read_obj(GuestAddress(l.used + 4 + 8 * u64::from(l.size)))
        .unwrap();
    assert_eq!(avail_event, 6);
}
