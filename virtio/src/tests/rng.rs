//! virtio-rng: buffers come back full of entropy.

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

use crate::rng::{Rng, MAX_REQUEST};
use crate::testing::{Driver, DATA};

#[test]
fn fills_what_the_guest_offers() {
    let mut d = Driver::new(Box::new(Rng));
    d.start(1 << VIRTIO_F_VERSION_1, 1, 64);
    d.submit(0, 0, &[(DATA, 64, true), (DATA + 0x1000, 64, true)]);
    assert_eq!(d.next_used(0), Some((0, 128)));
    let a = d.read_mem(DATA, 64);
    let b = d.read_mem(DATA + 0x1000, 64);
    assert!(a.iter().any(|&x| x != 0) && b.iter().any(|&x| x != 0));
    assert_ne!(a, b);
    // A huge request gets the cap, not more.
    d.submit(0, 2, &[(DATA, 1 << 20, true)]);
    assert_eq!(d.next_used(0), Some((2, MAX_REQUEST as u32)));
}

#[test]
fn device_readable_or_bad_buffers_get_nothing() {
    let mut d = Driver::new(Box::new(Rng));
    d.start(1 << VIRTIO_F_VERSION_1, 1, 64);
    d.submit(0, 0, &[(DATA, 64, false)]);
    assert_eq!(d.next_used(0), Some((0, 0)));
    d.submit(0, 1, &[(0x10, 64, true)]);
    assert_eq!(d.next_used(0), Some((1, 0)), "outside guest RAM");
    d.submit(0, 2, &[(DATA, 0, true)]);
    assert_eq!(d.next_used(0), Some((2, 0)), "zero length");
    // And it still works.
    d.submit(0, 3, &[(DATA, 16, true)]);
    assert_eq!(d.next_used(0), Some((3, 16)));
}
