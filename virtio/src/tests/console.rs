//! virtio-console: output reaches the writer a buffer at a time, input waits for
//! receive buffers and is never lost.

use std::io::Write;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

use crate::console::{Console, INPUT_CAP, RX, TX};
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
    let (dev, input) = Console::new(Box::new(out.clone()));
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
