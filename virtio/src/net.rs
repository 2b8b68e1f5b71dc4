//! virtio-net (virtio 1.x 5.1): a receive and a transmit queue over a packet fd (a tap,
//! [`crate::tap`]), served by one worker thread that polls the doorbell and the fd.
//!
//! Offered: VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS (link always up) and
//! VIRTIO_NET_F_MRG_RXBUF (a received frame may span several receive chains, which lets
//! Linux post page-sized buffers). No checksum or segmentation offload: every header the
//! device writes is zero but for num_buffers, and a transmitted header is skipped.
//!
//! Receive: a frame is read from the fd only when it can be delivered; if the guest has
//! no room, the frame waits (and the fd is not polled) until the guest adds buffers and
//! notifies the receive queue, so nothing is dropped for lack of a buffer once read.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use md5::{Digest, Md5};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};

use crate::doorbell::RESET_BIT;
use crate::options::OptionError;
use crate::queue::{pieces, DeviceShared, Popped};
use crate::transport::{Device, DeviceInfo, HostFd};

pub const RX: usize = 0;
pub const TX: usize = 1;
/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
/// struct virtio_net_hdr_v1 (num_buffers included in virtio 1.x).
pub const HDR_LEN: usize = 12;
/// The largest frame either way: a 64 KiB IP packet plus Ethernet and VLAN headers.
pub const MAX_FRAME: usize = 65_562;

/// `-s N,virtio-net,TAPNAME[,mac=xx:xx:xx:xx:xx:xx]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetOptions {
    pub tap: String,
    pub mac: Option<[u8; 6]>,
}

impl NetOptions {
    /// Parses what follows `virtio-net,`.
    pub fn parse(options: Option<&str>) -> Result<NetOptions, OptionError> {
        let options = options.unwrap_or("");
        let mut words = options.split(',');
        let tap = words.next().unwrap_or("");
        if tap.is_empty() {
            return Err(OptionError::Missing {
                device: "virtio-net",
                what: "a tap",
                usage: "virtio-net,TAPNAME[,mac=xx:xx:xx:xx:xx:xx]",
            });
        }
        let mut mac = None;
        for w in words {
            match w.split_once('=') {
                Some(("mac", v)) => mac = Some(parse_mac(v)?),
                _ => {
                    return Err(OptionError::Unknown {
                        device: "virtio-net",
                        option: w.into(),
                        known: "mac=",
                    })
                }
            }
        }
        Ok(NetOptions {
            tap: tap.into(),
            mac,
        })
    }
}

/// `xx:xx:xx:xx:xx:xx`, a unicast address that is not all zeros (as FreeBSD's bhyve
/// requires).
pub fn parse_mac(s: &str) -> Result<[u8; 6], OptionError> {
    let bad = || OptionError::BadMac(s.into());
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *m = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(bad());
    }
    Ok(mac)
}

/// FreeBSD bhyve's default address: OUI 58:9c:fc and the first three bytes of the MD5
/// of "slot-function-vmname".
pub fn generated_mac(slot: u32, vmname: &str) -> [u8; 6] {
    let d = Md5::digest(format!("{slot}-0-{vmname}").as_bytes());
    [0x58, 0x9c, 0xfc, d[0], d[1], d[2]]
}

/// A virtio-net device over a packet fd.
pub struct Net {
    fd: OwnedFd,
    mac: [u8; 6],
    /// A frame read from the fd and not yet delivered.
    pending: Option<Vec<u8>>,
    buf: Vec<u8>,
}

impl Net {
    /// `fd` delivers and takes one frame per read/write, non-blocking (a tap).
    pub fn new(fd: OwnedFd, mac: [u8; 6]) -> Net {
        Net {
            fd,
            mac,
            pending: None,
            buf: vec![0u8; MAX_FRAME],
        }
    }

    /// Sends every frame the guest queued.
    fn transmit(&mut self, dev: &DeviceShared) {
        while let Some(p) = dev.pop(TX) {
            self.send(dev, &p);
            dev.complete(TX, &p, 0);
        }
    }

    /// One transmit chain: readable only, header then frame.
    fn send(&mut self, dev: &DeviceShared, p: &Popped) {
        let Some((readable, writable)) = p.chain.split() else {
            return;
        };
        if !writable.is_empty() || readable.iter().any(|d| d.len == 0) {
            return;
        }
        let Some(parts) = pieces(readable, HDR_LEN as u64, 0) else {
            return;
        };
        let len: u64 = parts.iter().map(|&(_, l)| u64::from(l)).sum();
        if len == 0 || len > MAX_FRAME as u64 {
            return;
        }
        let mut at = 0usize;
        for (gpa, l) in parts {
            let end = at + l as usize;
            if !dev.read(gpa, &mut self.buf[at..end]) {
                return;
            }
            at = end;
        }
        // A full tap queue or a link down drops the frame, as a wire would.
        let _ = nix::unistd::write(&self.fd, &self.buf[..at]);
    }

    /// Delivers frames from the fd while the guest has room.
    fn receive(&mut self, dev: &DeviceShared) {
        loop {
            let frame = match self.pending.take() {
                Some(f) => f,
                None => match nix::unistd::read(self.fd.as_raw_fd(), &mut self.buf) {
                    Ok(n) if n > 0 => self.buf[..n].to_vec(),
                    // EAGAIN (nothing queued), EOF, or an error: wait for the next poll.
                    _ => return,
                },
            };
            if !self.deliver(dev, &frame) {
                self.pending = Some(frame);
                return;
            }
        }
    }

    /// Puts one frame in receive buffers; false when the guest has not enough room
    /// (the chains taken are given back). A frame whose buffers are unusable is
    /// dropped (true).
    fn deliver(&mut self, dev: &DeviceShared, frame: &[u8]) -> bool {
        let mergeable = dev.has_feature(VIRTIO_NET_F_MRG_RXBUF);
        let total = HDR_LEN + frame.len();
        let mut chains: Vec<Popped> = Vec::new();
        let mut room = 0usize;
        while room < total {
            if !mergeable && !chains.is_empty() {
                // One chain must hold the whole frame: it does not, drop the frame.
                break;
            }
            let Some(p) = dev.pop(RX) else {
                dev.unpop(RX, &chains);
                return false;
            };
            room += p
                .chain
                .descs
                .iter()
                .map(|d| if d.writable { d.len as usize } else { 0 })
                .sum::<usize>();
            chains.push(p);
        }
        let mut hdr = [0u8; HDR_LEN];
        hdr[10..12].copy_from_slice(&(chains.len() as u16).to_le_bytes());
        let mut data = hdr.iter().chain(frame.iter()).copied();
        let mut done = Vec::with_capacity(chains.len());
        let mut ok = room >= total;
        for p in &chains {
            let mut written = 0u32;
            let usable = p.chain.split().is_some_and(|(r, _)| r.is_empty())
                && p.chain.descs.iter().all(|d| d.len > 0);
            if ok && usable {
                for d in &p.chain.descs {
                    let chunk: Vec<u8> = data.by_ref().take(d.len as usize).collect();
                    if chunk.is_empty() {
                        break;
                    }
                    if !dev.write(d.addr, &chunk) {
                        ok = false;
                        break;
                    }
                    written += chunk.len() as u32;
                }
            } else {
                ok = false;
            }
            // A bad buffer drops the frame; every chain still goes back to the guest.
            done.push((p, if ok { written } else { 0 }));
        }
        dev.complete_all(RX, &done);
        true
    }
}

impl Device for Net {
    fn info(&self) -> DeviceInfo {
        let mut config = vec![0u8; 8];
        config[..6].copy_from_slice(&self.mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        DeviceInfo {
            id: VIRTIO_ID_NET,
            name: "virtio-net",
            features: (1 << VIRTIO_NET_F_MAC)
                | (1 << VIRTIO_NET_F_STATUS)
                | (1 << VIRTIO_NET_F_MRG_RXBUF),
            queue_sizes: vec![QUEUE_SIZE, QUEUE_SIZE],
            config,
        }
    }

    fn host_fds(&self) -> Vec<HostFd> {
        vec![HostFd::Tap(self.fd.as_raw_fd())]
    }

    fn run(mut self: Box<Self>, dev: Arc<DeviceShared>) {
        loop {
            // Poll the fd only while a frame read from it could be delivered.
            let poll_fd = self.pending.is_none() && dev.driver_ok() && !dev.needs_reset();
            let fds = [self.fd.as_fd()];
            let wake = dev.bell.wait(if poll_fd { &fds } else { &[] }, None);
            if wake.stop {
                return;
            }
            if wake.queues & (1 << RESET_BIT) != 0 {
                self.pending = None;
            }
            if wake.queues & (1 << TX) != 0 {
                self.transmit(&dev);
            }
            if dev.driver_ok() && (wake.fds_ready != 0 || wake.queues & (1 << RX) != 0) {
                self.receive(&dev);
            }
        }
    }
}
