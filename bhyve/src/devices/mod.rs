//! Device models of the guest platform (vmm_platform): the console UARTs, the RTC and
//! the empty virtio-mmio slots.

pub mod ns16550;
pub mod pl011;
pub mod pl031;
pub mod virtio_empty;

#[cfg(test)]
mod tests {
    use super::{ns16550::Ns16550, pl011::Pl011, pl031::Pl031, virtio_empty::EmptySlot};
    use crate::mmio::MmioDevice;

    /// Every device takes any access the bus can hand it (every offset of its 4 KiB
    /// window, every size that fits, any value, reads and writes interleaved) without
    /// panicking: the guest chooses all of these.
    #[test]
    fn any_access_in_the_window_is_answered() {
        let devices: Vec<(&str, Box<dyn MmioDevice>)> = vec![
            ("pl011", Box::new(Pl011::new(std::io::sink()))),
            ("ns16550", Box::new(Ns16550::new(std::io::sink()))),
            ("pl031", Box::new(Pl031::new())),
            ("virtio-mmio (empty)", Box::new(EmptySlot)),
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for (name, mut dev) in devices {
            let window: u64 = if name.starts_with("virtio") {
                0x200
            } else {
                0x1000
            };
            for offset in 0..window {
                for size in [1u8, 2, 4, 8] {
                    if offset + u64::from(size) > window {
                        continue;
                    }
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    dev.write(offset, size, x);
                    let v = dev.read(offset, size);
                    if size < 8 {
                        assert!(v < 1 << (u32::from(size) * 8), "{name} {offset:#x}/{size}");
                    }
                    let _ = dev.irq_level();
                }
            }
            let _ = dev.push_input(&[0u8; 64]);
        }
    }
}
