//! virtio-blk requests through the transport on a real image file.

use std::path::PathBuf;

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

use crate::blk::{serial, Block, SEG_MAX, SIZE_MAX};
use crate::disk::Disk;
use crate::testing::{Driver, DATA};

pub const HDR: u64 = DATA;
pub const STATUS: u64 = DATA + 0x100;
pub const BUF: u64 = DATA + 0x1000;

pub struct Img(pub PathBuf);
impl Drop for Img {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A 1 MiB image whose sector n is filled with byte n % 251.
pub fn image(tag: &str) -> Img {
    let p = std::env::temp_dir().join(format!("vmm-virtio-{tag}-{}.img", std::process::id()));
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| ((i / 512) % 251) as u8).collect();
    std::fs::write(&p, data).unwrap();
    Img(p)
}

pub fn blk(img: &Img, ro: bool) -> Driver {
    let disk = Disk::open(&img.0, ro).unwrap();
    let mut d = Driver::new(Box::new(Block::new(disk, &img.0.to_string_lossy())));
    let offered = d.device_features();
    d.start(offered & ((1 << VIRTIO_F_VERSION_1) | 0xffff_ffff), 1, 256);
    d
}

pub fn header(d: &Driver, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    d.write_mem(HDR, &h);
    d.write_mem(STATUS, &[0xff]);
}

pub fn status(d: &Driver) -> u32 {
    u32::from(d.read_mem(STATUS, 1)[0])
}

#[test]
fn config_space_describes_the_disk() {
    let img = image("cfg");
    let mut d = blk(&img, false);
    let f = d.device_features();
    for bit in [
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
    ] {
        assert!(f & (1 << bit) != 0, "feature {bit}");
    }
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(d.t.read(0x100, 8), 2048, "capacity in sectors");
    assert_eq!(d.t.read(0x108, 4), u64::from(SIZE_MAX));
    assert_eq!(d.t.read(0x10c, 4), u64::from(SEG_MAX));
    assert_eq!(d.t.read(0x114, 4), 512);
    // Byte-wise reads of the same field agree.
    assert_eq!(d.t.read(0x101, 1), 8);
    drop(d);
    let ro = blk(&img, true).device_features();
    assert!(ro & (1 << VIRTIO_BLK_F_RO) != 0);
    assert_eq!(
        ro & (1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES),
        0
    );
}

#[test]
fn read_write_flush_get_id() {
    let img = image("rw");
    let mut d = blk(&img, false);
    // Read sectors 3..5 into two pieces.
    header(&d, VIRTIO_BLK_T_IN, 3);
    d.submit(
        0,
        0,
        &[
            (HDR, 16, false),
            (BUF, 512, true),
            (BUF + 0x2000, 512, true),
            (STATUS, 1, true),
        ],
    );
    assert_eq!(d.next_used(0), Some((0, 1025)));
    assert_eq!(status(&d), VIRTIO_BLK_S_OK);
    assert!(d.read_mem(BUF, 512).iter().all(|&b| b == 3));
    assert!(d.read_mem(BUF + 0x2000, 512).iter().all(|&b| b == 4));
    // The testbed is told about exactly what the device wrote.
    assert_eq!(*d.dma.0.lock().unwrap(), [(BUF, 512), (BUF + 0x2000, 512)]);

    // Write sector 10, flush, read it back from the file.
    d.write_mem(BUF, &[0x5a; 512]);
    header(&d, VIRTIO_BLK_T_OUT, 10);
    d.submit(
        0,
        4,
        &[(HDR, 16, false), (BUF, 512, false), (STATUS, 1, true)],
    );
    assert_eq!(d.next_used(0), Some((4, 1)));
    assert_eq!(status(&d), VIRTIO_BLK_S_OK);
    header(&d, VIRTIO_BLK_T_FLUSH, 0);
    d.submit(0, 8, &[(HDR, 16, false), (STATUS, 1, true)]);
    assert_eq!(d.next_used(0), Some((8, 1)));
    assert_eq!(status(&d), VIRTIO_BLK_S_OK);
    let file = std::fs::read(&img.0).unwrap();
    assert!(file[10 * 512..11 * 512].iter().all(|&b| b == 0x5a));
    assert!(file[11 * 512..12 * 512].iter().all(|&b| b == 11));

    header(&d, VIRTIO_BLK_T_GET_ID, 0);
    d.submit(
        0,
        12,
        &[(HDR, 16, false), (BUF, 20, true), (STATUS, 1, true)],
    );
    assert_eq!(d.next_used(0), Some((12, 21)));
    assert_eq!(d.read_mem(BUF, 20), serial(&img.0.to_string_lossy()));

    header(&d, 0x77, 0);
    d.submit(0, 16, &[(HDR, 16, false), (STATUS, 1, true)]);
    assert_eq!(d.next_used(0), Some((16, 1)));
    assert_eq!(status(&d), VIRTIO_BLK_S_UNSUPP);
}

#[test]
fn serial_is_freebsd_bhyves() {
    // `printf /dev/null | md5sum` = ee35e7c78279...: "BHYVE-" and the first six bytes.
    let s = serial("/dev/null");
    assert_eq!(&s, b"BHYVE-EE35-E7C7-8279");
}

#[test]
fn discard_and_write_zeroes_punch_holes() {
    let img = image("discard");
    let mut d = blk(&img, false);
    for (i, kind) in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES]
        .into_iter()
        .enumerate()
    {
        header(&d, kind, 0);
        let start = 8 + i as u64 * 16;
        let mut range = [0u8; 16];
        range[0..8].copy_from_slice(&start.to_le_bytes());
        range[8..12].copy_from_slice(&8u32.to_le_bytes());
        d.write_mem(BUF, &range);
        let head = (i * 4) as u16;
        d.submit(
            0,
            head,
            &[(HDR, 16, false), (BUF, 16, false), (STATUS, 1, true)],
        );
        assert_eq!(d.next_used(0), Some((u32::from(head), 1)));
        assert_eq!(status(&d), VIRTIO_BLK_S_OK, "kind {kind}");
    }
    let file = std::fs::read(&img.0).unwrap();
    assert!(file[8 * 512..16 * 512].iter().all(|&b| b == 0));
    for sector in 16..24 {
        assert!(file[sector * 512..(sector + 1) * 512]
            .iter()
            .all(|&b| b == sector as u8));
    }
    assert!(file[24 * 512..32 * 512].iter().all(|&b| b == 0));
    assert_eq!(file.len(), 1 << 20);
}

#[test]
fn read_only_disks_refuse_writes_but_read() {
    let img = image("ro");
    let mut d = blk(&img, true);
    d.write_mem(BUF, &[1; 512]);
    header(&d, VIRTIO_BLK_T_OUT, 0);
    d.submit(
        0,
        0,
        &[(HDR, 16, false), (BUF, 512, false), (STATUS, 1, true)],
    );
    assert_eq!(d.next_used(0), Some((0, 1)));
    assert_eq!(status(&d), VIRTIO_BLK_S_IOERR);
    header(&d, VIRTIO_BLK_T_IN, 1);
    d.submit(
        0,
        4,
        &[(HDR, 16, false), (BUF, 512, true), (STATUS, 1, true)],
    );
    assert_eq!(d.next_used(0), Some((4, 513)));
    assert_eq!(status(&d), VIRTIO_BLK_S_OK);
    assert!(std::fs::read(&img.0).unwrap()[..512]
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn requests_outside_the_disk_or_the_limits_fail() {
    let img = image("limits");
    let mut d = blk(&img, false);
    let mut head = 0u16;
    let mut expect_ioerr = |d: &mut Driver, kind: u32, sector: u64, descs: &[(u64, u32, bool)]| {
        header(d, kind, sector);
        d.submit(0, head, descs);
        let used = d.next_used(0).unwrap();
        assert_eq!(used, (u32::from(head), 1), "{kind} at {sector}: {descs:x?}");
        assert_eq!(
            status(d),
            VIRTIO_BLK_S_IOERR,
            "{kind} at {sector}: {descs:x?}"
        );
        head += 8;
    };
    let io = |len| [(HDR, 16, false), (BUF, len, true), (STATUS, 1, true)];
    expect_ioerr(&mut d, VIRTIO_BLK_T_IN, 2048, &io(512)); // past the end
    expect_ioerr(&mut d, VIRTIO_BLK_T_IN, 2047, &io(1024)); // straddles the end
    expect_ioerr(&mut d, VIRTIO_BLK_T_IN, u64::MAX / 256, &io(512)); // overflows
    expect_ioerr(&mut d, VIRTIO_BLK_T_IN, 0, &io(100)); // not whole sectors
    expect_ioerr(&mut d, VIRTIO_BLK_T_IN, 0, &io(SIZE_MAX + 512)); // piece > size_max
                                                                   // seg_max + 1 pieces, in as many descriptors as the queue holds: the last piece
                                                                   // shares its descriptor with the status byte.
    let mut many = vec![(HDR, 16, false)];
    many.extend((0..SEG_MAX as u64).map(|i| (BUF + i * 512, 512u32, true)));
    many.push((STATUS - 512, 513, true));
    assert_eq!(many.len(), 256);
    header(&d, VIRTIO_BLK_T_IN, 0);
    d.submit(0, 0, &many);
    assert_eq!(d.next_used(0), Some((0, 1)));
    assert_eq!(status(&d), VIRTIO_BLK_S_IOERR);
    // The device still serves good requests.
    header(&d, VIRTIO_BLK_T_IN, 7);
    d.submit(0, 0, &io(512));
    assert_eq!(d.next_used(0), Some((0, 513)));
    assert_eq!(status(&d), VIRTIO_BLK_S_OK);
}
