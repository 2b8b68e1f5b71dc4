//! virtio-console (virtio 1.x 5.3), the console port alone: Linux's hvc0. What the guest
//! transmits goes to bhyve's console output (the terminal with `-b`); what is typed
//! reaches the guest through [`ConsoleInput`], which bhyve's console input thread feeds.
//!
//! A guest printing through hvc0 hands over a whole buffer per queue notification,
//! where a UART costs an exit per byte or two.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;

use crate::doorbell::RESET_BIT;
use crate::queue::DeviceShared;
use crate::transport::{Device, DeviceInfo};

pub const RX: usize = 0;
pub const TX: usize = 1;
/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 128;
/// Input held for the guest before typing is pushed back (as a UART's FIFO does).
pub const INPUT_CAP: usize = 4096;
/// The doorbell bit input arrival rings (no queue has this number).
const INPUT_BIT: u32 = 30;

#[derive(Default)]
struct Input {
    bytes: VecDeque<u8>,
    /// The running device, once its worker started.
    dev: Option<Arc<DeviceShared>>,
}

/// Where console input goes: bytes wait here until the guest posts receive buffers.
#[derive(Clone, Default)]
pub struct ConsoleInput(Arc<Mutex<Input>>);

impl ConsoleInput {
    fn lock(&self) -> MutexGuard<'_, Input> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues what fits of `bytes` for the guest; returns how many were taken (0 when
    /// [`INPUT_CAP`] bytes already wait: the caller retries later).
    pub fn push(&self, bytes: &[u8]) -> usize {
        let mut input = self.lock();
        let n = bytes.len().min(INPUT_CAP - input.bytes.len());
        input.bytes.extend(&bytes[..n]);
        if n > 0 {
            if let Some(dev) = &input.dev {
                dev.bell.ring(INPUT_BIT);
            }
        }
        n
    }
}

/// The console device.
pub struct Console {
    out: Box<dyn Write + Send>,
    input: ConsoleInput,
    buf: Vec<u8>,
}

impl Console {
    /// A console writing to `out`; feed its input through the returned handle.
    pub fn new(out: Box<dyn Write + Send>) -> (Console, ConsoleInput) {
        let input = ConsoleInput::default();
        (
            Console {
                out,
                input: input.clone(),
                buf: Vec::new(),
            },
            input,
        )
    }

    fn transmit(&mut self, dev: &DeviceShared) {
        while let Some(p) = dev.pop(TX) {
            self.buf.clear();
            let usable = p.chain.descs.iter().all(|d| !d.writable);
            for d in p.chain.descs.iter().filter(|_| usable) {
                let start = self.buf.len();
                self.buf.resize(start + d.len as usize, 0);
                if !dev.read(d.addr, &mut self.buf[start..]) {
                    self.buf.truncate(start);
                    break;
                }
            }
            // Output that cannot be written (a closed terminal) is dropped.
            let _ = self.out.write_all(&self.buf);
            dev.complete(TX, &p, 0);
        }
        let _ = self.out.flush();
    }

    fn receive(&mut self, dev: &DeviceShared) {
        loop {
            if self.input.lock().bytes.is_empty() {
                return;
            }
            let Some(p) = dev.pop(RX) else {
                return;
            };
            let mut written = 0u32;
            if p.chain.descs.iter().all(|d| d.writable) {
                let mut input = self.input.lock();
                for d in &p.chain.descs {
                    let n = (d.len as usize).min(input.bytes.len());
                    let chunk: Vec<u8> = input.bytes.iter().take(n).copied().collect();
                    if n == 0 || !dev.write(d.addr, &chunk, false) {
                        break;
                    }
                    input.bytes.drain(..n);
                    written += n as u32;
                }
            }
            dev.complete(RX, &p, written);
        }
    }
}

impl Device for Console {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            id: VIRTIO_ID_CONSOLE,
            name: "virtio-console",
            features: 0,
            queue_sizes: vec![QUEUE_SIZE, QUEUE_SIZE],
            // struct virtio_console_config: cols, rows, max_nr_ports, emerg_wr; no
            // feature makes the driver read it.
            config: vec![0u8; 12],
        }
    }

    fn run(mut self: Box<Self>, dev: Arc<DeviceShared>) {
        self.input.lock().dev = Some(Arc::clone(&dev));
        loop {
            let wake = dev.bell.wait(None, None);
            if wake.stop {
                self.input.lock().dev = None;
                return;
            }
            if wake.queues & (1 << TX) != 0 {
                self.transmit(&dev);
            }
            if wake.queues & ((1 << RX) | (1 << INPUT_BIT) | (1 << RESET_BIT)) != 0 {
                self.receive(&dev);
            }
        }
    }
}
