//! virtio-blk (virtio 1.x 5.2): one request queue served by a worker thread over a
//! [`Disk`].
//!
//! Every request is checked before any I/O: the header and status must be where the
//! spec puts them (readable header first, writable status byte last), every data piece
//! non-empty, inside guest RAM and in the right direction, no more pieces than seg_max
//! and none larger than size_max, and the sectors inside the disk. A request that fails
//! a check completes with VIRTIO_BLK_S_IOERR; the device and the other requests go on.

use std::sync::Arc;

use md5::{Digest, Md5};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;

use crate::disk::{Disk, SECTOR_SIZE};
use crate::options::OptionError;
use crate::queue::{pieces, Chain, Desc, DeviceShared};
use crate::transport::{Device, DeviceInfo, HostFd};

/// Descriptors in the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Data pieces per request: the queue less the header and the status.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest data piece.
pub const SIZE_MAX: u32 = 1 << 20;
/// Largest discard or write-zeroes range, in sectors (256 MiB), one range per request.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 19;
/// Header: type, reserved, sector.
const HEADER_LEN: u64 = 16;
/// One discard / write-zeroes range: sector, num_sectors, flags.
const RANGE_LEN: usize = 16;
/// The serial GET_ID returns.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

/// `-s N,virtio-blk,PATH[,ro]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockOptions {
    pub path: std::path::PathBuf,
    pub read_only: bool,
}

impl BlockOptions {
    /// Parses what follows `virtio-blk,`.
    pub fn parse(options: Option<&str>) -> Result<BlockOptions, OptionError> {
        let options = options.unwrap_or("");
        let mut words = options.split(',');
        let path = words.next().unwrap_or("");
        if path.is_empty() {
            return Err(OptionError::Missing {
                device: "virtio-blk",
                what: "a disk image",
                usage: "virtio-blk,PATH[,ro]",
            });
        }
        let mut read_only = false;
        for w in words {
            match w {
                "ro" => read_only = true,
                _ => {
                    return Err(OptionError::Unknown {
                        device: "virtio-blk",
                        option: w.into(),
                        known: "ro",
                    })
                }
            }
        }
        Ok(BlockOptions {
            path: path.into(),
            read_only,
        })
    }
}

/// FreeBSD bhyve's serial for a disk: "BHYVE-" and the first six bytes of the MD5 of
/// the path as given, in three groups of four hex digits.
pub fn serial(path: &str) -> [u8; ID_BYTES] {
    let d = Md5::digest(path.as_bytes());
    let s = format!(
        "BHYVE-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}",
        d[0], d[1], d[2], d[3], d[4], d[5]
    );
    let mut out = [0u8; ID_BYTES];
    let n = s.len().min(ID_BYTES);
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

/// A virtio-blk device over an open disk.
pub struct Block {
    disk: Disk,
    id: [u8; ID_BYTES],
}

impl Block {
    /// `path_as_given` names the disk for the serial (FreeBSD hashes the option text).
    pub fn new(disk: Disk, path_as_given: &str) -> Block {
        Block {
            id: serial(path_as_given),
            disk,
        }
    }

    fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_BLK_F_SIZE_MAX)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_FLUSH);
        if self.disk.read_only() {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= 1 << VIRTIO_BLK_F_WRITE_ZEROES;
            if self.disk.can_punch() {
                f |= 1 << VIRTIO_BLK_F_DISCARD;
            }
        }
        f
    }

    /// struct virtio_blk_config, up to write_zeroes_may_unmap.
    fn config(&self) -> Vec<u8> {
        let mut c = vec![0u8; 60];
        let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &(self.disk.size() / SECTOR_SIZE).to_le_bytes());
        put(8, &SIZE_MAX.to_le_bytes());
        put(12, &SEG_MAX.to_le_bytes());
        put(20, &(SECTOR_SIZE as u32).to_le_bytes());
        put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(40, &1u32.to_le_bytes());
        // Holes are punched in 4 KiB file-system blocks.
        put(44, &8u32.to_le_bytes());
        put(48, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(52, &1u32.to_le_bytes());
        put(56, &[u8::from(self.disk.can_punch())]);
        c
    }

    /// Serves one request; returns the bytes written into the chain.
    fn serve(&self, dev: &DeviceShared, chain: &Chain) -> u32 {
        // The status byte: the last byte of the last descriptor, which must be writable.
        let Some(last) = chain.descs.last().filter(|d| d.writable && d.len > 0) else {
            return 0;
        };
        let status_gpa = last.addr.wrapping_add(u64::from(last.len) - 1);
        let (status, data_len) = match self.request(dev, chain) {
            Ok(n) => (VIRTIO_BLK_S_OK, n),
            Err(s) => (s, 0),
        };
        if !dev.write(status_gpa, &[status as u8]) {
            return 0;
        }
        data_len.saturating_add(1)
    }

    /// The request's work: `Ok(bytes of data written into the chain)` or the status.
    fn request(&self, dev: &DeviceShared, chain: &Chain) -> Result<u32, u32> {
        const IOERR: u32 = VIRTIO_BLK_S_IOERR;
        let (readable, writable) = chain.split().ok_or(IOERR)?;
        let mut header = [0u8; HEADER_LEN as usize];
        read_stream(dev, readable, &mut header).ok_or(IOERR)?;
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let sector = u64::from_le_bytes(header[8..16].try_into().map_err(|_| IOERR)?);
        match kind {
            VIRTIO_BLK_T_IN => {
                if stream_len(readable) != HEADER_LEN {
                    return Err(IOERR);
                }
                let data = pieces(writable, 0, 1).ok_or(IOERR)?;
                let offset = self.check_data(&data, sector)?;
                let mut at = offset;
                let mut done = Vec::with_capacity(data.len());
                let mut result = Ok(());
                for &(gpa, len) in &data {
                    let Some(ptr) = dev.host_range(gpa, len as usize) else {
                        result = Err(IOERR);
                        break;
                    };
                    // SAFETY: host_range proved gpa..gpa+len is inside one mapped region
                    // of guest RAM, which `dev.mem` keeps mapped for this call.
                    if unsafe { self.disk.read_at(ptr, len as usize, at) }.is_err() {
                        result = Err(IOERR);
                        break;
                    }
                    done.push((gpa, u64::from(len)));
                    at += u64::from(len);
                }
                // Whatever was read in, even for a failed request, is reported.
                dev.wrote(&done);
                result?;
                u32::try_from(at - offset).map_err(|_| IOERR)
            }
            VIRTIO_BLK_T_OUT => {
                if stream_len(writable) != 1 {
                    return Err(IOERR);
                }
                if self.disk.read_only() {
                    return Err(IOERR);
                }
                let data = pieces(readable, HEADER_LEN, 0).ok_or(IOERR)?;
                let offset = self.check_data(&data, sector)?;
                let mut at = offset;
                for &(gpa, len) in &data {
                    let ptr = dev.host_range(gpa, len as usize).ok_or(IOERR)?;
                    // SAFETY: as for IN; the memory is only read.
                    unsafe { self.disk.write_at(ptr, len as usize, at) }.map_err(|_| IOERR)?;
                    at += u64::from(len);
                }
                Ok(0)
            }
            VIRTIO_BLK_T_FLUSH => {
                self.disk.flush().map_err(|_| IOERR)?;
                Ok(0)
            }
            VIRTIO_BLK_T_GET_ID => {
                let data = pieces(writable, 0, 1).ok_or(IOERR)?;
                let mut left: &[u8] = &self.id;
                let mut written = 0u32;
                for (gpa, len) in data {
                    if left.is_empty() {
                        break;
                    }
                    let n = (len as usize).min(left.len());
                    if !dev.write(gpa, &left[..n]) {
                        return Err(IOERR);
                    }
                    left = &left[n..];
                    written += n as u32;
                }
                Ok(written)
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                let discard = kind == VIRTIO_BLK_T_DISCARD;
                let offered = if discard {
                    self.disk.can_punch()
                } else {
                    !self.disk.read_only()
                };
                if !offered {
                    return Err(VIRTIO_BLK_S_UNSUPP);
                }
                if stream_len(writable) != 1 {
                    return Err(IOERR);
                }
                // One range per request (max_discard_seg = max_write_zeroes_seg = 1).
                if stream_len(readable) != HEADER_LEN + RANGE_LEN as u64 {
                    return Err(IOERR);
                }
                let mut both = [0u8; HEADER_LEN as usize + RANGE_LEN];
                read_stream(dev, readable, &mut both).ok_or(IOERR)?;
                let range = &both[HEADER_LEN as usize..];
                let start = u64::from_le_bytes(range[0..8].try_into().map_err(|_| IOERR)?);
                let count = u32::from_le_bytes(range[8..12].try_into().map_err(|_| IOERR)?);
                let flags = u32::from_le_bytes(range[12..16].try_into().map_err(|_| IOERR)?);
                // Discard defines no flags; write-zeroes only UNMAP.
                let allowed = if discard {
                    0
                } else {
                    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
                };
                if flags & !allowed != 0 || count > MAX_DISCARD_SECTORS {
                    return Err(IOERR);
                }
                let (offset, len) = self.sectors(start, u64::from(count))?;
                let r = if discard {
                    self.disk.punch(offset, len)
                } else {
                    self.disk.write_zeroes(offset, len)
                };
                r.map_err(|_| IOERR)?;
                Ok(0)
            }
            _ => Err(VIRTIO_BLK_S_UNSUPP),
        }
    }

    /// Checks a read's or write's data pieces against the advertised limits and the
    /// disk; returns the byte offset.
    fn check_data(&self, data: &[(u64, u32)], sector: u64) -> Result<u64, u32> {
        const IOERR: u32 = VIRTIO_BLK_S_IOERR;
        if data.is_empty()
            || data.len() > SEG_MAX as usize
            || data.iter().any(|&(_, len)| len == 0 || len > SIZE_MAX)
        {
            return Err(IOERR);
        }
        let total: u64 = data.iter().map(|&(_, len)| u64::from(len)).sum();
        if !total.is_multiple_of(SECTOR_SIZE) {
            return Err(IOERR);
        }
        Ok(self.sectors(sector, total / SECTOR_SIZE)?.0)
    }

    /// Sectors `[start, start + count)` as a byte range inside the disk.
    fn sectors(&self, start: u64, count: u64) -> Result<(u64, u64), u32> {
        let offset = start.checked_mul(SECTOR_SIZE);
        let len = count.checked_mul(SECTOR_SIZE);
        match (offset, len) {
            (Some(o), Some(l)) if o.checked_add(l).is_some_and(|end| end <= self.disk.size()) => {
                Ok((o, l))
            }
            _ => Err(VIRTIO_BLK_S_IOERR),
        }
    }
}

/// Bytes the descriptors hold.
fn stream_len(descs: &[Desc]) -> u64 {
    descs.iter().map(|d| u64::from(d.len)).sum()
}

/// Fills `buf` from the start of the byte stream `descs` describe.
fn read_stream(dev: &DeviceShared, descs: &[Desc], buf: &mut [u8]) -> Option<()> {
    let total = buf.len() as u64;
    let have = stream_len(descs);
    let parts = pieces(descs, 0, have.checked_sub(total)?)?;
    let mut at = 0usize;
    for (gpa, len) in parts {
        let end = at + len as usize;
        if !dev.read(gpa, &mut buf[at..end]) {
            return None;
        }
        at = end;
    }
    Some(())
}

impl Device for Block {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            id: VIRTIO_ID_BLOCK,
            name: "virtio-blk",
            features: self.features(),
            queue_sizes: vec![QUEUE_SIZE],
            config: self.config(),
        }
    }

    fn host_fds(&self) -> Vec<HostFd> {
        vec![self.disk.host_fd()]
    }

    fn run(self: Box<Self>, dev: Arc<DeviceShared>) {
        dev.serve_requests(|dev, chain| self.serve(dev, chain));
    }
}
