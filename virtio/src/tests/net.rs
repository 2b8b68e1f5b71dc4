//! virtio-net over a datagram socket pair standing in for the tap: frames both ways,
//! mergeable receive buffers, frames waiting for buffers, options and addresses.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF};

use crate::net::{generated_mac, parse_mac, Net, NetOptions, HDR_LEN, RX, TX};
use crate::testing::{Driver, DATA};
use crate::OptionError;

const MAC: [u8; 6] = [0x58, 0x9c, 0xfc, 1, 2, 3];

/// The device on one end of a SOCK_DGRAM pair (non-blocking, one frame per message);
/// the test holds the other end as "the network".
fn net(features: u64) -> (Driver, OwnedFd) {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_NONBLOCK,
    )
    .unwrap();
    let mut d = Driver::new(Box::new(Net::new(a, MAC)));
    d.start(features | (1 << VIRTIO_F_VERSION_1), 2, 256);
    (d, b)
}

fn recv_wire(wire: &OwnedFd) -> Vec<u8> {
    let mut buf = vec![0u8; 70_000];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match nix::unistd::read(wire.as_raw_fd(), &mut buf) {
            Ok(n) => return buf[..n].to_vec(),
            Err(nix::errno::Errno::EAGAIN) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(1))
            }
            Err(e) => panic!("nothing on the wire: {e}"),
        }
    }
}

#[test]
fn config_space_has_the_mac_and_link_up() {
    let (mut d, _wire) = net(0);
    let f = d.device_features();
    assert!(f & (1 << VIRTIO_NET_F_MAC) != 0 && f & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0);
    let mac: Vec<u8> = (0..6).map(|i| d.t.read(0x100 + i, 1) as u8).collect();
    assert_eq!(mac, MAC);
    assert_eq!(d.t.read(0x106, 2), 1, "VIRTIO_NET_S_LINK_UP");
}

#[test]
fn transmit_skips_the_header_and_sends_one_frame_per_chain() {
    let (mut d, wire) = net(0);
    let frame: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
    d.write_mem(DATA, &[0u8; HDR_LEN]);
    d.write_mem(DATA + 0x100, &frame[..600]);
    d.write_mem(DATA + 0x1000, &frame[600..]);
    d.submit(
        TX,
        0,
        &[
            (DATA, HDR_LEN as u32, false),
            (DATA + 0x100, 600, false),
            (DATA + 0x1000, 900, false),
        ],
    );
    assert_eq!(d.next_used(TX), Some((0, 0)));
    assert_eq!(recv_wire(&wire), frame);
    // Header and frame in one descriptor, as Linux sends small frames.
    let mut both = vec![0u8; HDR_LEN];
    both.extend_from_slice(b"hello, wire");
    d.write_mem(DATA, &both);
    d.submit(TX, 4, &[(DATA, both.len() as u32, false)]);
    assert_eq!(d.next_used(TX), Some((4, 0)));
    assert_eq!(recv_wire(&wire), b"hello, wire");
    // A device-writable transmit buffer is not sent; the chain still comes back.
    d.submit(TX, 8, &[(DATA, 64, true)]);
    assert_eq!(d.next_used(TX), Some((8, 0)));
    assert!(
        nix::unistd::read(wire.as_raw_fd(), &mut [0u8; 100]).is_err(),
        "nothing sent"
    );
}

#[test]
fn receive_into_one_buffer_with_num_buffers_1() {
    let (mut d, wire) = net(1 << VIRTIO_NET_F_MRG_RXBUF);
    d.submit(RX, 0, &[(DATA, 2048, true)]);
    nix::unistd::write(&wire, b"frame one").unwrap();
    assert_eq!(d.next_used(RX), Some((0, (HDR_LEN + 9) as u32)));
    let got = d.read_mem(DATA, HDR_LEN + 9);
    assert_eq!(&got[10..12], &[1, 0], "num_buffers");
    assert_eq!(&got[HDR_LEN..], b"frame one");
}

#[test]
fn mergeable_frames_span_buffers_and_wait_for_room() {
    let (mut d, wire) = net(1 << VIRTIO_NET_F_MRG_RXBUF);
    let frame: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    // The frame arrives before any buffer: it waits.
    nix::unistd::write(&wire, &frame).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    // One 1 KiB buffer is not enough: still waiting, nothing used.
    d.submit(RX, 0, &[(DATA, 1024, true)]);
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(d.used_idx(RX), 0);
    // Two more make room: three chains used, num_buffers 3.
    d.submit(RX, 1, &[(DATA + 0x1000, 1024, true)]);
    d.submit(RX, 2, &[(DATA + 0x2000, 2048, true)]);
    assert_eq!(d.next_used(RX), Some((0, 1024)));
    assert_eq!(d.next_used(RX), Some((1, 1024)));
    assert_eq!(d.next_used(RX), Some((2, (HDR_LEN + 3000 - 2048) as u32)));
    let mut got = d.read_mem(DATA, 1024);
    got.extend(d.read_mem(DATA + 0x1000, 1024));
    got.extend(d.read_mem(DATA + 0x2000, HDR_LEN + 3000 - 2048));
    assert_eq!(&got[10..12], &[3, 0]);
    assert_eq!(&got[HDR_LEN..], &frame[..]);
}

#[test]
fn without_mergeable_buffers_a_frame_too_big_is_dropped() {
    let (mut d, wire) = net(0);
    d.submit(RX, 0, &[(DATA, 100, true)]);
    nix::unistd::write(&wire, &[1u8; 500]).unwrap();
    assert_eq!(
        d.next_used(RX),
        Some((0, 0)),
        "dropped, the buffer comes back"
    );
    d.submit(RX, 1, &[(DATA, 600, true)]);
    nix::unistd::write(&wire, &[2u8; 500]).unwrap();
    assert_eq!(d.next_used(RX), Some((1, 512)));
}

#[test]
fn receive_buffers_outside_ram_drop_the_frame_only() {
    let (mut d, wire) = net(1 << VIRTIO_NET_F_MRG_RXBUF);
    d.submit(RX, 0, &[(0x10, 2048, true)]);
    nix::unistd::write(&wire, b"lost").unwrap();
    assert_eq!(d.next_used(RX), Some((0, 0)));
    d.submit(RX, 1, &[(DATA, 2048, true)]);
    nix::unistd::write(&wire, b"kept").unwrap();
    assert_eq!(d.next_used(RX), Some((1, (HDR_LEN + 4) as u32)));
    assert_eq!(d.read_mem(DATA + HDR_LEN as u64, 4), b"kept");
}

#[test]
fn options_and_addresses() {
    assert_eq!(
        NetOptions::parse(Some("tap0,mac=02:00:00:00:00:01")).unwrap(),
        NetOptions {
            tap: "tap0".into(),
            mac: Some([2, 0, 0, 0, 0, 1])
        }
    );
    assert_eq!(NetOptions::parse(Some("tap3")).unwrap().mac, None);
    assert!(NetOptions::parse(None)
        .unwrap_err()
        .to_string()
        .starts_with("virtio-net needs a tap: "));
    assert_eq!(
        NetOptions::parse(Some("tap0,speed=10"))
            .unwrap_err()
            .to_string(),
        "virtio-net: unknown option 'speed=10' (known: mac=)"
    );
    for bad in [
        "01:00:00:00:00:01",
        "00:00:00:00:00:00",
        "1:2:3:4:5:6",
        "02:00:00:00:00",
        "zz:00:00:00:00:01",
    ] {
        assert_eq!(
            parse_mac(bad),
            Err(OptionError::BadMac(bad.into())),
            "{bad}"
        );
    }
    // `printf 3-0-vm | md5sum` = 04745a...: OUI 58:9c:fc and the first three bytes.
    assert_eq!(generated_mac(3, "vm"), [0x58, 0x9c, 0xfc, 0x04, 0x74, 0x5a]);
}
