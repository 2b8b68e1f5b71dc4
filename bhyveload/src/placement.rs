//! Where the kernel, the initrd and the devicetree go in guest RAM
//! (Documentation/arch/arm64/booting.rst).
//!
//! * The kernel goes at a 2 MiB-aligned load base (the start of RAM unless `-l` says
//!   otherwise) plus its text_offset, and owns `reserved` bytes from the base.
//! * The devicetree goes at the start of the last 2 MiB of RAM. That address is 8-byte
//!   aligned, and since a DTB is at most 2 MiB the blob never straddles a 2 MiB block, as
//!   booting.rst asks (the kernel maps it with blocks of up to 2 MiB). Its place does not
//!   depend on its size, so the devicetree can name the initrd's address before it exists.
//! * The initrd goes right below the devicetree, its start aligned to 64 KiB (the largest
//!   page size a kernel may use, so the kernel can free it in whole pages), inside the
//!   1 GiB-aligned 32 GiB window that also holds the kernel.
//!
//! Putting both at the top of RAM, as Firecracker does, leaves the memory right after the
//! kernel free: booting.rst asks loaders of old kernels (image_size 0) to keep as much
//! memory as possible free after the image, and a kernel that relocates itself (KASLR)
//! or grows its early allocations past image_size finds nothing of ours in the way.

use thiserror::Error;

use crate::kernel::{Kernel, TWO_MIB};

/// Room set aside for the devicetree at the top of RAM (also the largest DTB allowed).
pub const DTB_SLOT: u64 = TWO_MIB;
/// Alignment of the initrd's start.
pub const INITRD_ALIGN: u64 = 64 << 10;
const ONE_GIB: u64 = 1 << 30;
/// Size of the window that must hold both the kernel and the initrd.
pub const INITRD_WINDOW: u64 = 32 << 30;

/// Why the images do not fit.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlaceError {
    #[error("load address 0x{addr:x} is not a multiple of 0x{align:x}")]
    Unaligned { addr: u64, align: u64 },
    #[error(
        "kernel (0x{size:x} bytes at 0x{addr:x}) does not fit in guest memory 0x{ram_base:x}-0x{ram_end:x}"
    )]
    KernelOutside {
        addr: u64,
        size: u64,
        ram_base: u64,
        ram_end: u64,
    },
    #[error(
        "kernel (up to 0x{kernel_end:x}) and the devicetree (at 0x{dtb:x}, the last 2 MiB of memory) overlap: give the guest more memory (-m)"
    )]
    DtbOverlapsKernel { kernel_end: u64, dtb: u64 },
    #[error(
        "initrd (0x{size:x} bytes) does not fit in guest memory between the kernel (ends 0x{kernel_end:x}) and the devicetree (0x{top:x}): give the guest more memory (-m)"
    )]
    InitrdDoesNotFit {
        size: u64,
        kernel_end: u64,
        top: u64,
    },
    #[error("kernel spans past the 32 GiB window booting.rst allows for kernel and initrd")]
    KernelPastWindow,
}

/// Where everything goes, in guest physical addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub ram_base: u64,
    pub ram_end: u64,
    /// The kernel's load base (2 MiB aligned for Image and ELF).
    pub load_base: u64,
    /// First and one-past-last byte the kernel owns.
    pub kernel_start: u64,
    pub kernel_end: u64,
    /// Where vCPU 0 starts.
    pub entry: u64,
    /// The initrd's start and end, if there is one.
    pub initrd: Option<(u64, u64)>,
    /// The devicetree's address (x0).
    pub dtb: u64,
}

fn align_down(v: u64, a: u64) -> u64 {
    v & !(a - 1)
}

/// Works out the [`Layout`] for `kernel` in RAM `[ram_base, ram_base + ram_size)`.
/// `load_addr` is `-l`; `initrd_len` the initrd's size in bytes.
pub fn place(
    ram_base: u64,
    ram_size: u64,
    kernel: &Kernel,
    load_addr: Option<u64>,
    initrd_len: Option<u64>,
) -> Result<Layout, PlaceError> {
    let ram_end = ram_base + ram_size;
    let load_base = load_addr.unwrap_or(ram_base);
    if !load_base.is_multiple_of(kernel.align) {
        return Err(PlaceError::Unaligned {
            addr: load_base,
            align: kernel.align,
        });
    }
    let outside = || PlaceError::KernelOutside {
        addr: load_base.saturating_add(kernel.start),
        size: kernel.reserved - kernel.start,
        ram_base,
        ram_end,
    };
    let kernel_start = load_base.checked_add(kernel.start).ok_or_else(outside)?;
    let kernel_end = load_base.checked_add(kernel.reserved).ok_or_else(outside)?;
    if kernel_start < ram_base || kernel_end > ram_end {
        return Err(outside());
    }
    let dtb = ram_end - DTB_SLOT;
    if kernel_end > dtb {
        return Err(PlaceError::DtbOverlapsKernel { kernel_end, dtb });
    }
    let window_start = align_down(kernel_start, ONE_GIB);
    let window_end = window_start + INITRD_WINDOW;
    if kernel_end > window_end {
        return Err(PlaceError::KernelPastWindow);
    }
    let initrd = match initrd_len {
        None => None,
        Some(size) => {
            let top = dtb.min(window_end);
            let no_fit = PlaceError::InitrdDoesNotFit {
                size,
                kernel_end,
                top,
            };
            let start = top
                .checked_sub(size)
                .map(|s| align_down(s, INITRD_ALIGN))
                .ok_or(no_fit.clone())?;
            // The initrd sits above the kernel; with -l a kernel placed higher than
            // the room below the devicetree leaves no place for it.
            if start < kernel_end || start < ram_base || start < window_start {
                return Err(no_fit);
            }
            Some((start, start + size))
        }
    };
    Ok(Layout {
        ram_base,
        ram_end,
        load_base,
        kernel_start,
        kernel_end,
        entry: load_base + kernel.entry,
        initrd,
        dtb,
    })
}
