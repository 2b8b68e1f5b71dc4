//! An empty virtio-mmio slot (virtio 1.x, "MMIO Device Register Layout").
//!
//! bhyveload describes every slot of the guest platform in the devicetree, whether or
//! not bhyve puts a device there (DESIGN.md, "The guest platform"). A slot without a
//! device answers as a virtio-mmio transport with device ID 0, which the virtio spec
//! reserves for "no device": Linux's and FreeBSD's virtio-mmio drivers check the magic
//! value and version, read device ID 0 and skip the slot quietly. A slot reading all
//! zeros would instead make Linux warn "Wrong magic value" for each one.

use crate::mmio::MmioDevice;

/// "virt", little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The non-legacy virtio-mmio interface.
pub const VERSION: u32 = 2;
/// Register offsets.
pub const REG_MAGIC: u64 = 0x000;
pub const REG_VERSION: u64 = 0x004;
pub const REG_DEVICE_ID: u64 = 0x008;

/// A virtio-mmio slot with no device behind it: device ID 0, every other register reads
/// zero and writes are ignored.
#[derive(Debug, Default)]
pub struct EmptySlot;

impl MmioDevice for EmptySlot {
    fn read(&mut self, offset: u64, size: u8) -> u64 {
        // The spec allows only aligned 32-bit accesses to these registers.
        if size != 4 {
            return 0;
        }
        match offset {
            REG_MAGIC => MAGIC.into(),
            REG_VERSION => VERSION.into(),
            REG_DEVICE_ID => 0,
            _ => 0,
        }
    }

    fn write(&mut self, _offset: u64, _size: u8, _value: u64) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_as_a_transport_without_a_device() {
        let mut s = EmptySlot;
        assert_eq!(s.read(REG_MAGIC, 4), 0x7472_6976);
        assert_eq!(s.read(REG_VERSION, 4), 2);
        assert_eq!(s.read(REG_DEVICE_ID, 4), 0);
        assert_eq!(s.read(0x00c, 4), 0, "vendor ID");
        assert_eq!(s.read(0x070, 4), 0, "status");
        assert_eq!(s.read(REG_MAGIC, 1), 0, "only 32-bit accesses");
        s.write(0x070, 4, 0xf);
        assert_eq!(s.read(0x070, 4), 0);
    }
}
