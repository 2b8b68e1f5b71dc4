//! virtio-rng (FreeBSD bhyve's `virtio-rnd`, virtio 1.x 5.4): fills every device-writable
//! buffer the guest offers with bytes from the host's getrandom(2).

use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;

use crate::queue::{Chain, DeviceShared};
use crate::transport::{Device, DeviceInfo};

/// Descriptors in the request queue.
pub const QUEUE_SIZE: u16 = 64;
/// Most bytes given per request: a guest asking for more gets this much (the spec lets
/// the device fill less than offered).
pub const MAX_REQUEST: usize = 64 * 1024;

/// The entropy device.
#[derive(Debug, Default)]
pub struct Rng;

impl Rng {
    /// Fills the chain's writable buffers; returns the bytes written. A chain with a
    /// readable descriptor, an empty one, or one outside guest RAM gets nothing.
    fn serve(dev: &DeviceShared, chain: &Chain) -> u32 {
        if chain.descs.iter().any(|d| !d.writable || d.len == 0) {
            return 0;
        }
        let mut written = 0usize;
        let mut buf = Vec::new();
        for d in &chain.descs {
            let n = (d.len as usize).min(MAX_REQUEST - written);
            if n == 0 {
                break;
            }
            buf.resize(n, 0);
            if fill_random(&mut buf).is_err() || !dev.write(d.addr, &buf) {
                break;
            }
            written += n;
        }
        written as u32
    }
}

/// Host entropy (getrandom(2) on Linux and FreeBSD).
fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: buf[done..] is live writable memory of the length passed.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

impl Device for Rng {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            id: VIRTIO_ID_RNG,
            name: "virtio-rnd",
            features: 0,
            queue_sizes: vec![QUEUE_SIZE],
            config: Vec::new(),
        }
    }

    fn run(self: Box<Self>, dev: Arc<DeviceShared>) {
        dev.serve_requests(Rng::serve);
    }
}
