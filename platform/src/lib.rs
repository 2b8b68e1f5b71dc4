//! The guest platform: where every device, the interrupt controller and RAM live in
//! guest physical address space, and which interrupt each device raises. bhyveload
//! writes it into the devicetree, bhyve builds the devices at these addresses, and the
//! tests check both against it. See ../shared/DESIGN.md, "The guest platform".
#![cfg_attr(not(test), no_std)]

/// An MMIO window in guest physical address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub base: u64,
    pub size: u64,
}

impl Window {
    pub const fn new(base: u64, size: u64) -> Window {
        Window { base, size }
    }
    /// One past the last byte.
    pub const fn end(&self) -> u64 {
        self.base + self.size
    }
    pub const fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr - self.base < self.size
    }
    /// True if `[addr, addr + len)` lies inside the window.
    pub const fn contains_range(&self, addr: u64, len: u64) -> bool {
        match addr.checked_add(len) {
            Some(end) => addr >= self.base && end <= self.end(),
            None => false,
        }
    }
    pub const fn overlaps(&self, base: u64, size: u64) -> bool {
        base < self.end() && self.base < base.saturating_add(size)
    }
}

/// First SPI INTID; devicetree SPI cells count from here.
pub const SPI_BASE: u32 = 32;
/// First PPI INTID; devicetree PPI cells count from here.
pub const PPI_BASE: u32 = 16;

/// The PL011 UART, the console.
pub const PL011: Window = Window::new(0x0001_0000, 0x1000);
pub const PL011_INTID: u32 = 32;
/// The PL031 real-time clock.
pub const PL031: Window = Window::new(0x0001_1000, 0x1000);
pub const PL031_INTID: u32 = 33;
/// The NS16550A UART (alternative console).
pub const NS16550: Window = Window::new(0x0001_2000, 0x1000);
pub const NS16550_INTID: u32 = 34;

/// virtio-mmio transport slots.
pub const VIRTIO_MMIO_BASE: u64 = 0x0a00_0000;
pub const VIRTIO_MMIO_SLOT_SIZE: u64 = 0x200;
pub const VIRTIO_MMIO_SLOTS: u32 = 8;
pub const VIRTIO_MMIO_FIRST_INTID: u32 = 48;

/// The window of virtio-mmio slot `n`, or `None` past the last slot.
pub const fn virtio_mmio_slot(n: u32) -> Option<Window> {
    if n >= VIRTIO_MMIO_SLOTS {
        return None;
    }
    Some(Window::new(
        VIRTIO_MMIO_BASE + n as u64 * VIRTIO_MMIO_SLOT_SIZE,
        VIRTIO_MMIO_SLOT_SIZE,
    ))
}
/// The INTID of virtio-mmio slot `n`.
pub const fn virtio_mmio_intid(n: u32) -> u32 {
    VIRTIO_MMIO_FIRST_INTID + n
}

/// GICv3 distributor.
pub const GICD: Window = Window::new(0x2f00_0000, 0x1_0000);
/// GICv3 redistributors: one 128 KiB (RD + SGI frame) region per vCPU.
pub const GICR_BASE: u64 = 0x2f10_0000;
pub const GICR_STRIDE: u64 = 0x2_0000;
/// Most vCPUs the redistributor window (and MPIDR Aff0 packing) allows.
pub const MAX_VCPUS: u32 = 16;

/// The redistributor window for `ncpus` vCPUs.
pub const fn gicr(ncpus: u32) -> Window {
    Window::new(GICR_BASE, GICR_STRIDE * ncpus as u64)
}

/// Architected timer INTIDs.
pub const TIMER_SEC_PHYS_INTID: u32 = 29;
pub const TIMER_NS_PHYS_INTID: u32 = 30;
pub const TIMER_VIRT_INTID: u32 = 27;
pub const TIMER_HYP_INTID: u32 = 26;
/// GICv3 maintenance interrupt (PPI 9), which our vGIC uses on the host side.
pub const GIC_MAINT_INTID: u32 = 25;

/// Default guest RAM base and the span it may use.
pub const RAM_BASE_DEFAULT: u64 = 0x8000_0000;
/// The lowest RAM base: nothing may sit below the device windows' end.
pub const RAM_BASE_MIN: u64 = 0x4000_0000;
/// IPA bits the guest platform assumes (stage 2 with 3 levels from level 1: 39 bits).
pub const IPA_BITS: u32 = 39;
/// One past the highest guest physical address.
pub const IPA_LIMIT: u64 = 1 << IPA_BITS;

/// Default RAM size, as bhyveload(8) documents it.
pub const RAM_SIZE_DEFAULT: u64 = 128 << 20;
/// The smallest RAM bhyveload accepts: room for a kernel and its devicetree.
pub const RAM_SIZE_MIN: u64 = 2 << 20;

/// Every fixed device window, for overlap checks.
pub const DEVICE_WINDOWS: [Window; 4] = [PL011, PL031, NS16550, GICD];

/// Why a RAM layout does not fit the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// Size zero or smaller than [`RAM_SIZE_MIN`].
    TooSmall,
    /// Base or size not a multiple of 2 MiB.
    Unaligned,
    /// RAM would run past [`IPA_LIMIT`].
    PastIpaLimit,
    /// RAM would cover a device window or the redistributors.
    OverlapsDevices,
}

impl core::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LayoutError::TooSmall => {
                write!(f, "memory size must be at least {} MiB", RAM_SIZE_MIN >> 20)
            }
            LayoutError::Unaligned => write!(f, "memory base and size must be multiples of 2 MiB"),
            LayoutError::PastIpaLimit => {
                write!(
                    f,
                    "memory would end past the {}-bit guest physical address space",
                    IPA_BITS
                )
            }
            LayoutError::OverlapsDevices => write!(
                f,
                "memory would overlap the device windows below 0x{:x}",
                RAM_BASE_MIN
            ),
        }
    }
}

/// Checks that RAM at `[base, base + size)` fits the platform.
pub fn check_ram(base: u64, size: u64) -> Result<(), LayoutError> {
    const TWO_MIB: u64 = 2 << 20;
    if size < RAM_SIZE_MIN {
        return Err(LayoutError::TooSmall);
    }
    if !base.is_multiple_of(TWO_MIB) || !size.is_multiple_of(TWO_MIB) {
        return Err(LayoutError::Unaligned);
    }
    match base.checked_add(size) {
        Some(end) if end <= IPA_LIMIT => {}
        _ => return Err(LayoutError::PastIpaLimit),
    }
    let virtio = Window::new(
        VIRTIO_MMIO_BASE,
        VIRTIO_MMIO_SLOT_SIZE * VIRTIO_MMIO_SLOTS as u64,
    );
    let gicr_all = gicr(MAX_VCPUS);
    if base < RAM_BASE_MIN
        || DEVICE_WINDOWS.iter().any(|w| w.overlaps(base, size))
        || virtio.overlaps(base, size)
        || gicr_all.overlaps(base, size)
    {
        return Err(LayoutError::OverlapsDevices);
    }
    Ok(())
}

/// MPIDR_EL1 of vCPU `n`: affinity 0 = n (up to 16 per cluster), bit 31 RES1.
pub const fn vcpu_mpidr(n: u32) -> u64 {
    (1 << 31) | ((n as u64 / 16) << 8) | (n as u64 % 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_do_not_overlap() {
        let mut all = [
            PL011,
            PL031,
            NS16550,
            GICD,
            gicr(MAX_VCPUS),
            Window::new(0, 0),
        ];
        all[5] = Window::new(VIRTIO_MMIO_BASE, VIRTIO_MMIO_SLOT_SIZE * 8);
        for (i, a) in all.iter().enumerate() {
            for b in all.iter().skip(i + 1) {
                assert!(!a.overlaps(b.base, b.size), "{a:?} overlaps {b:?}");
            }
        }
        assert_eq!(gicr(16).end(), 0x2f30_0000);
        assert!(gicr(16).end() <= RAM_BASE_MIN);
    }

    #[test]
    fn virtio_slots() {
        assert_eq!(virtio_mmio_slot(0), Some(Window::new(0x0a00_0000, 0x200)));
        assert_eq!(virtio_mmio_slot(7).unwrap().base, 0x0a00_0e00);
        assert_eq!(virtio_mmio_slot(8), None);
        assert_eq!(virtio_mmio_intid(7), 55);
    }

    #[test]
    fn ram_checks() {
        assert_eq!(check_ram(RAM_BASE_DEFAULT, 128 << 20), Ok(()));
        assert_eq!(check_ram(RAM_BASE_DEFAULT, 0), Err(LayoutError::TooSmall));
        assert_eq!(
            check_ram(RAM_BASE_DEFAULT, (128 << 20) + 4096),
            Err(LayoutError::Unaligned)
        );
        assert_eq!(
            check_ram(RAM_BASE_DEFAULT, IPA_LIMIT),
            Err(LayoutError::PastIpaLimit)
        );
        assert_eq!(
            check_ram(u64::MAX - (2 << 20) + 1, 4 << 20),
            Err(LayoutError::PastIpaLimit)
        );
        assert_eq!(check_ram(0, 128 << 20), Err(LayoutError::OverlapsDevices));
        assert_eq!(check_ram(IPA_LIMIT - (256 << 20), 256 << 20), Ok(()));
    }

    #[test]
    fn mpidr() {
        assert_eq!(vcpu_mpidr(0), 0x8000_0000);
        assert_eq!(vcpu_mpidr(15), 0x8000_000f);
    }
}
