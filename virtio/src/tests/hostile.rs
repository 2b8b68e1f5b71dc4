//! Hostile queues: every malformed chain or ring fails its request (IOERR) or puts the
//! device in DEVICE_NEEDS_RESET; nothing outside guest RAM is touched, nothing panics,
//! and other devices go on.

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_mmio as reg;

use super::blk::{blk, header, image, status, BUF, HDR, STATUS};
use crate::rng::Rng;
use crate::testing::{Driver, DATA, F_NEXT, F_WRITE, RAM_BASE, RAM_SIZE};

const OUTSIDE: u64 = RAM_BASE + RAM_SIZE as u64;

/// Submits a read of sector 0 whose data descriptor is `data`; expects IOERR.
fn read_fails(d: &mut Driver, head: u16, data: (u64, u32, bool)) {
    header(d, VIRTIO_BLK_T_IN, 0);
    d.submit(0, head, &[(HDR, 16, false), data, (STATUS, 1, true)]);
    assert_eq!(d.next_used(0), Some((u32::from(head), 1)), "{data:x?}");
    assert_eq!(status(d), VIRTIO_BLK_S_IOERR, "{data:x?}");
}

#[test]
fn bad_buffers_fail_the_request_only() {
    let img = image("hostile-bufs");
    let mut d = blk(&img, false);
    read_fails(&mut d, 0, (OUTSIDE, 512, true)); // outside guest RAM
    read_fails(&mut d, 4, (OUTSIDE - 256, 512, true)); // straddles RAM's end
    read_fails(&mut d, 8, (u64::MAX - 100, 512, true)); // wraps
    read_fails(&mut d, 12, (0, 512, true)); // below RAM
    read_fails(&mut d, 16, (BUF, 0, true)); // zero length
    read_fails(&mut d, 20, (BUF, 512, false)); // device-readable where writable is needed
                                               // A write whose data is device-writable.
    header(&d, VIRTIO_BLK_T_OUT, 0);
    d.submit(
        0,
        24,
        &[(HDR, 16, false), (BUF, 512, true), (STATUS, 1, true)],
    );
    assert_eq!(d.next_used(0), Some((24, 1)));
    assert_eq!(status(&d), VIRTIO_BLK_S_IOERR);
    // A header that is device-writable.
    header(&d, VIRTIO_BLK_T_IN, 0);
    d.submit(
        0,
        28,
        &[(HDR, 16, true), (BUF, 512, true), (STATUS, 1, true)],
    );
    assert_eq!(d.next_used(0), Some((28, 1)));
    assert_eq!(status(&d), VIRTIO_BLK_S_IOERR);
    // A header shorter than 16 bytes.
    d.submit(0, 32, &[(HDR, 8, false), (STATUS, 1, true)]);
    assert_eq!(d.next_used(0), Some((32, 1)));
    assert_eq!(status(&d), VIRTIO_BLK_S_IOERR);
    // The status byte outside RAM: nothing can be reported, the chain comes back empty.
    header(&d, VIRTIO_BLK_T_IN, 0);
    d.submit(
        0,
        36,
        &[(HDR, 16, false), (BUF, 512, true), (OUTSIDE, 1, true)],
    );
    assert_eq!(d.next_used(0), Some((36, 0)));
    // A status that is device-readable.
    d.submit(0, 40, &[(HDR, 16, false), (STATUS, 1, false)]);
    assert_eq!(d.next_used(0), Some((40, 0)));
    // Through all of it the device never reported writing outside RAM.
    for &(gpa, len) in d.dma.0.lock().unwrap().iter() {
        assert!(gpa >= RAM_BASE && gpa + len <= OUTSIDE, "{gpa:#x}+{len}");
    }
    // And it still serves a good request.
    header(&d, VIRTIO_BLK_T_IN, 1);
    d.submit(
        0,
        44,
        &[(HDR, 16, false), (BUF, 512, true), (STATUS, 1, true)],
    );
    assert_eq!(d.next_used(0), Some((44, 513)));
    assert_eq!(status(&d), VIRTIO_BLK_S_OK);
}

fn needs_reset_then_recovers(d: &mut Driver, what: &str) {
    assert!(d.wait_needs_reset(), "{what}: DEVICE_NEEDS_RESET");
    assert_eq!(
        d.rd(reg::VIRTIO_MMIO_INTERRUPT_STATUS) & 2,
        2,
        "{what}: configuration-change interrupt"
    );
    // The driver resets and sets the device up again: it works.
    let features = 1 << VIRTIO_F_VERSION_1;
    d.start(features, 1, 256);
    header(d, VIRTIO_BLK_T_IN, 1);
    d.submit(
        0,
        0,
        &[(HDR, 16, false), (BUF, 512, true), (STATUS, 1, true)],
    );
    assert_eq!(d.next_used(0), Some((0, 513)), "{what}: after reset");
}

#[test]
fn looping_chains_need_a_reset() {
    let img = image("hostile-loop");
    let mut d = blk(&img, false);
    header(&d, VIRTIO_BLK_T_IN, 0);
    // 0 -> 1 -> 0 -> ...
    d.put_desc(0, 0, HDR, 16, F_NEXT, 1);
    d.put_desc(0, 1, BUF, 512, F_NEXT | F_WRITE, 0);
    d.offer(0, 0);
    d.notify(0);
    needs_reset_then_recovers(&mut d, "loop");
}

#[test]
fn chains_leaving_the_table_need_a_reset() {
    let img = image("hostile-next");
    let mut d = blk(&img, false);
    header(&d, VIRTIO_BLK_T_IN, 0);
    d.put_desc(0, 0, HDR, 16, F_NEXT, 300); // next past the 256-entry table
    d.offer(0, 0);
    d.notify(0);
    needs_reset_then_recovers(&mut d, "next out of range");
    // A head index past the table.
    d.offer(0, 999);
    d.notify(0);
    needs_reset_then_recovers(&mut d, "head out of range");
}

#[test]
fn avail_index_jumps_need_a_reset() {
    let img = image("hostile-avail");
    let mut d = blk(&img, false);
    d.set_avail_idx(0, 257);
    d.notify(0);
    needs_reset_then_recovers(&mut d, "avail idx +257");
}

#[test]
fn queue_sizes_and_rings_are_checked_at_queue_ready() {
    let img = image("hostile-size");
    let mut d = blk(&img, false);
    for (what, size, desc) in [
        ("not a power of two", 100u16, None),
        ("above the maximum", 512, None),
        ("zero", 0, None),
        ("rings outside RAM", 256, Some(OUTSIDE)),
        ("misaligned descriptor table", 256, Some(RAM_BASE + 8)),
    ] {
        assert!(d.negotiate(1 << VIRTIO_F_VERSION_1));
        let mut l = Driver::layout(0, size);
        if let Some(a) = desc {
            l.desc = a;
        }
        assert!(
            !d.setup_queue(0, l),
            "{what}: the queue must not become ready"
        );
        assert!(d.wait_needs_reset(), "{what}");
        d.wr(reg::VIRTIO_MMIO_STATUS, 0);
    }
}

/// A misaligned ring address is not replaced by the good one written before it: the
/// queue does not become ready on the stale address.
#[test]
fn a_misaligned_address_after_a_good_one_is_not_ignored() {
    let img = image("hostile-realign");
    let mut d = blk(&img, false);
    assert!(d.negotiate(1 << VIRTIO_F_VERSION_1));
    let l = Driver::layout(0, 256);
    d.wr(reg::VIRTIO_MMIO_QUEUE_SEL, 0);
    d.wr(reg::VIRTIO_MMIO_QUEUE_NUM, 256);
    d.wr(reg::VIRTIO_MMIO_QUEUE_DESC_LOW, l.desc as u32);
    d.wr(reg::VIRTIO_MMIO_QUEUE_DESC_LOW, (l.desc + 8) as u32);
    d.wr(reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW, l.avail as u32);
    d.wr(reg::VIRTIO_MMIO_QUEUE_USED_LOW, l.used as u32);
    d.wr(reg::VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(
        d.rd(reg::VIRTIO_MMIO_QUEUE_READY),
        0,
        "ready on a stale address"
    );
    assert!(d.wait_needs_reset());
}

#[test]
fn a_broken_device_does_not_stop_another() {
    let img = image("hostile-other");
    let mut bad = blk(&img, false);
    let mut good = Driver::new(Box::new(Rng));
    good.start(1 << VIRTIO_F_VERSION_1, 1, 64);
    bad.set_avail_idx(0, 4000);
    bad.notify(0);
    assert!(bad.wait_needs_reset());
    good.submit(0, 0, &[(DATA, 32, true)]);
    assert_eq!(good.next_used(0), Some((0, 32)));
    // A notify for a queue that does not exist is ignored.
    good.wr(reg::VIRTIO_MMIO_QUEUE_NOTIFY, 7);
    good.submit(0, 1, &[(DATA, 32, true)]);
    assert_eq!(good.next_used(0), Some((1, 32)));
}

#[test]
fn any_register_access_is_answered() {
    // Every offset, size and value the guest can produce, on a live device.
    let img = image("hostile-regs");
    let mut d = blk(&img, false);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for offset in 0..0x200u64 {
        for size in [1u8, 2, 4, 8] {
            if offset + u64::from(size) > 0x200 {
                continue;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Keep status and notify writes from restarting the device every time.
            if offset != u64::from(reg::VIRTIO_MMIO_STATUS) {
                d.t.write(offset, size, x);
            }
            let v = d.t.read(offset, size);
            if size < 8 {
                assert!(v < 1 << (u32::from(size) * 8), "{offset:#x}/{size}");
            }
        }
    }
}
