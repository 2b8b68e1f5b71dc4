//! virtio-console: output reaches the writer a buffer at a time, input waits for
//! receive buffers and is never lost.

use std::io::Write;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

use crate::console::{Console, INPUT_CAP};

const RX: usize = 0;
const TX: usize = 1;
use crate::testing::{Driver, DATA};

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);
impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn console() -> (Driver, Shared, crate::console::ConsoleInput) {
    let out = Shared::default();
    let (dev, input) = Console::new(Box::new(out.clone()), Vec::new());
    let mut d = Driver::new(Box::new(dev));
    d.start(1 << VIRTIO_F_VERSION_1, 2, 128);
    (d, out, input)
}

#[test]
fn output_a_buffer_per_chain() {
    let (mut d, out, _) = console();
    d.write_mem(DATA, b"hello, ");
    d.write_mem(DATA + 0x100, b"console\r\n");
    d.submit(TX, 0, &[(DATA, 7, false), (DATA + 0x100, 9, false)]);
    assert_eq!(d.next_used(TX), Some((0, 0)));
    assert_eq!(*out.0.lock().unwrap(), b"hello, console\r\n");
    // A device-writable transmit buffer is not printed.
    d.submit(TX, 2, &[(DATA, 7, true)]);
    assert_eq!(d.next_used(TX), Some((2, 0)));
    assert_eq!(out.0.lock().unwrap().len(), 16);
}

/// Linux's driver spins until its buffer is back: the notifying thread writes it and
/// returns it before the notify returns, with no worker to wait for.
#[test]
fn output_is_back_before_the_notify_returns() {
    let (mut d, out, _) = console();
    for (i, line) in [&b"one\r\n"[..], b"two\r\n"].iter().enumerate() {
        d.write_mem(DATA, line);
        d.submit(TX, i as u16, &[(DATA, 5, false)]);
        assert_eq!(d.used_idx(TX), i as u16 + 1, "buffer {i} not used yet");
    }
    assert_eq!(*out.0.lock().unwrap(), b"one\r\ntwo\r\n");
}

#[test]
fn input_waits_for_buffers_and_arrives_whole() {
    let (mut d, _, input) = console();
    let typed: Vec<u8> = (0..100u8).collect();
    assert_eq!(input.push(&typed), 100);
    // A 40-byte buffer takes the first 40; more buffers take the rest.
    d.submit(RX, 0, &[(DATA, 40, true)]);
    assert_eq!(d.next_used(RX), Some((0, 40)));
    d.submit(RX, 1, &[(DATA + 0x100, 100, true)]);
    assert_eq!(d.next_used(RX), Some((1, 60)));
    let mut got = d.read_mem(DATA, 40);
    got.extend(d.read_mem(DATA + 0x100, 60));
    assert_eq!(got, typed);
    // Input typed while a buffer is already posted goes straight in.
    d.submit(RX, 2, &[(DATA, 64, true)]);
    std::thread::sleep(std::time::Duration::from_millis(10));
    assert_eq!(input.push(b"ls\r"), 3);
    assert_eq!(d.next_used(RX), Some((2, 3)));
    assert_eq!(d.read_mem(DATA, 3), b"ls\r");
    // Backpressure: no more than INPUT_CAP bytes wait.
    assert_eq!(input.push(&vec![b'x'; INPUT_CAP + 10]), INPUT_CAP);
    assert_eq!(input.push(b"y"), 0);
}

mod ports {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

    use super::Shared;
    use crate::console::{event, rx_queue, Console, ConsoleOptions, PortSocket, F_MULTIPORT};
    use crate::testing::{Driver, DATA};
    use crate::OptionError;

    const CTRL_RX: usize = 2;
    const CTRL_TX: usize = 3;

    fn msg(id: u32, ev: u16, value: u16) -> Vec<u8> {
        let mut m = id.to_le_bytes().to_vec();
        m.extend_from_slice(&ev.to_le_bytes());
        m.extend_from_slice(&value.to_le_bytes());
        m
    }

    struct Rig {
        d: Driver,
        next_rx: u16,
        next_tx: u16,
        path: std::path::PathBuf,
    }

    impl Rig {
        fn new(tag: &str) -> Rig {
            let path =
                std::env::temp_dir().join(format!("vmm-vcon-{tag}-{}.sock", std::process::id()));
            let _ = std::fs::remove_file(&path);
            let sock = PortSocket::create("org.test.port", &path).unwrap();
            let (dev, _) = Console::new(Box::new(Shared::default()), vec![sock]);
            let mut d = Driver::new(Box::new(dev));
            assert!(d.device_features() & (1 << F_MULTIPORT) != 0);
            assert_eq!(d.t.read(0x104, 4), 2, "max_nr_ports");
            d.start((1 << VIRTIO_F_VERSION_1) | (1 << F_MULTIPORT), 6, 128);
            // Control receive buffers at descriptors 0..16, 64 bytes each.
            let mut r = Rig {
                d,
                next_rx: 0,
                next_tx: 0,
                path,
            };
            for _ in 0..16 {
                r.post_ctrl_rx();
            }
            r
        }

        fn post_ctrl_rx(&mut self) {
            let i = self.next_rx;
            self.next_rx += 1;
            self.d.submit(
                CTRL_RX,
                i,
                &[(DATA + 0x10000 + u64::from(i) * 64, 64, true)],
            );
        }

        fn send(&mut self, m: &[u8]) {
            let i = self.next_tx;
            self.next_tx += 1;
            let at = DATA + 0x20000 + u64::from(i) * 64;
            self.d.write_mem(at, m);
            self.d.submit(CTRL_TX, i, &[(at, m.len() as u32, false)]);
            assert!(self.d.next_used(CTRL_TX).is_some());
        }

        /// The next control message from the device.
        fn recv(&mut self) -> Vec<u8> {
            let (id, len) = self.d.next_used(CTRL_RX).expect("a control message");
            self.d
                .read_mem(DATA + 0x10000 + u64::from(id) * 64, len as usize)
        }
    }

    #[test]
    fn named_port_handshake_and_data_both_ways() {
        let mut r = Rig::new("flow");
        r.send(&msg(0, event::DEVICE_READY, 1));
        assert_eq!(r.recv(), msg(0, event::DEVICE_ADD, 0));
        assert_eq!(r.recv(), msg(1, event::DEVICE_ADD, 0));
        r.send(&msg(0, event::PORT_READY, 1));
        assert_eq!(r.recv(), msg(0, event::CONSOLE_PORT, 1));
        assert_eq!(r.recv(), msg(0, event::PORT_OPEN, 1));
        r.send(&msg(1, event::PORT_READY, 1));
        let mut name = msg(1, event::PORT_NAME, 1);
        name.extend_from_slice(b"org.test.port");
        assert_eq!(r.recv(), name);
        assert_eq!(
            r.recv(),
            msg(1, event::PORT_OPEN, 0),
            "nobody connected yet"
        );

        let mut client = UnixStream::connect(&r.path).unwrap();
        assert_eq!(r.recv(), msg(1, event::PORT_OPEN, 1));
        // A second client is closed at once.
        let mut second = UnixStream::connect(&r.path).unwrap();
        second
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(second.read(&mut [0u8; 8]).unwrap(), 0);

        // Client to guest.
        let rxq = rx_queue(1);
        r.d.submit(rxq, 0, &[(DATA, 64, true)]);
        client.write_all(b"to the guest").unwrap();
        assert_eq!(r.d.next_used(rxq), Some((0, 12)));
        assert_eq!(r.d.read_mem(DATA, 12), b"to the guest");
        // Guest to client.
        r.d.write_mem(DATA + 0x100, b"to the host");
        r.d.submit(rxq + 1, 0, &[(DATA + 0x100, 11, false)]);
        assert_eq!(r.d.next_used(rxq + 1), Some((0, 0)));
        let mut got = [0u8; 11];
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"to the host");
        // The client leaves: the guest is told.
        drop(client);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let m = r.recv();
            if m == msg(1, event::PORT_OPEN, 0) {
                break;
            }
            assert!(Instant::now() < deadline, "no PORT_OPEN 0: {m:?}");
        }
    }

    #[test]
    fn sockets_are_refused_if_they_exist_and_removed_on_drop() {
        let path = std::env::temp_dir().join(format!("vmm-vcon-exists-{}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        let e = PortSocket::create("p", &path).unwrap_err();
        assert!(
            e.to_string()
                .contains("exists; bhyve creates the port's socket there"),
            "{e}"
        );
        std::fs::remove_file(&path).unwrap();
        let s = PortSocket::create("p", &path).unwrap();
        assert!(path.exists());
        drop(s);
        assert!(!path.exists());
    }

    #[test]
    fn options() {
        let o = ConsoleOptions::parse(Some("a=/tmp/a.sock,b.c=/tmp/b")).unwrap();
        assert_eq!(o.ports.len(), 2);
        assert_eq!(ConsoleOptions::parse(None).unwrap().ports.len(), 0);
        let many: Vec<String> = (0..16).map(|i| format!("p{i}=/tmp/{i}")).collect();
        let e = ConsoleOptions::parse(Some(&many.join(","))).unwrap_err();
        assert_eq!(e, OptionError::TooManyPorts(15));
        assert_eq!(e.to_string(), "virtio-console: at most 15 named ports");
        assert_eq!(
            ConsoleOptions::parse(Some("p=")).unwrap_err(),
            OptionError::NoSocketPath("p".into())
        );
        assert_eq!(
            ConsoleOptions::parse(Some("p=/a,p=/b")).unwrap_err(),
            OptionError::PortNamedTwice("p".into())
        );
        assert_eq!(
            ConsoleOptions::parse(Some("p q=/a")).unwrap_err(),
            OptionError::BadPortName("p q".into())
        );
        assert_eq!(
            ConsoleOptions::parse(Some("/a")).unwrap_err(),
            OptionError::NotNamePath("/a".into())
        );
    }
}
