use super::{elf, image, Seg};
use crate::kernel::load;
use crate::placement::*;

const BASE: u64 = 0x8000_0000;
const MIB: u64 = 1 << 20;

#[test]
fn image_goes_at_base_plus_text_offset_and_dtb_initrd_at_the_top() {
    let k = load(image(0x8_0000, 8 * MIB, 2, 1000), false, 1 << 30).unwrap();
    let l = place(BASE, 128 * MIB, &k, None, Some(3 * MIB + 5)).unwrap();
    assert_eq!(l.load_base, BASE);
    assert_eq!(l.kernel_start, BASE + 0x8_0000);
    assert_eq!(l.kernel_end, BASE + 0x8_0000 + 8 * MIB);
    assert_eq!(l.entry, BASE + 0x8_0000);
    assert_eq!(l.dtb, BASE + 126 * MIB);
    assert_eq!(l.dtb % 8, 0);
    let (s, e) = l.initrd.unwrap();
    assert_eq!(e - s, 3 * MIB + 5);
    assert_eq!(s % INITRD_ALIGN, 0);
    assert!(e <= l.dtb && s >= l.kernel_end);
    assert_eq!(s, (BASE + 126 * MIB - (3 * MIB + 5)) & !(INITRD_ALIGN - 1));
}

#[test]
fn load_address_moves_the_kernel() {
    let k = load(image(0, 2 * MIB, 2, 10), false, 1 << 30).unwrap();
    let l = place(BASE, 128 * MIB, &k, Some(BASE + 16 * MIB), None).unwrap();
    assert_eq!(l.kernel_start, BASE + 16 * MIB);
    assert_eq!(l.entry, BASE + 16 * MIB);
    assert_eq!(l.initrd, None);
    // Not 2 MiB aligned, or below RAM, or past its end.
    assert_eq!(
        place(BASE, 128 * MIB, &k, Some(BASE + 4096), None),
        Err(PlaceError::Unaligned {
            addr: BASE + 4096,
            align: 2 * MIB
        })
    );
    assert!(matches!(
        place(BASE, 128 * MIB, &k, Some(BASE - 2 * MIB), None),
        Err(PlaceError::KernelOutside { .. })
    ));
    assert!(matches!(
        place(BASE, 128 * MIB, &k, Some(BASE + 128 * MIB), None),
        Err(PlaceError::KernelOutside { .. })
    ));
    // Into the devicetree's 2 MiB.
    assert!(matches!(
        place(BASE, 128 * MIB, &k, Some(BASE + 126 * MIB), None),
        Err(PlaceError::DtbOverlapsKernel { .. })
    ));
    // Raw: 4-byte alignment is enough; entered at its first byte.
    let raw = load(vec![0; 100], true, 1 << 30).unwrap();
    let l = place(BASE, 128 * MIB, &raw, Some(BASE + 0x1004), None).unwrap();
    assert_eq!(
        (l.entry, l.kernel_end),
        (BASE + 0x1004, BASE + 0x1004 + 100)
    );
    assert!(place(BASE, 128 * MIB, &raw, Some(BASE + 2), None).is_err());
}

#[test]
fn what_does_not_fit_is_named() {
    let k = load(image(0, 100 * MIB, 2, 10), false, 1 << 30).unwrap();
    let e = place(BASE, 64 * MIB, &k, None, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "kernel (0x6400000 bytes at 0x80000000) does not fit in guest memory 0x80000000-0x84000000"
    );
    let e = place(BASE, 100 * MIB, &k, None, None).unwrap_err();
    assert!(e.to_string().contains("devicetree"), "{e}");
    // Initrd too large for the room between kernel and devicetree.
    let e = place(BASE, 128 * MIB, &k, None, Some(30 * MIB)).unwrap_err();
    assert!(matches!(e, PlaceError::InitrdDoesNotFit { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("initrd (0x1e00000 bytes) does not fit"),
        "{e}"
    );
    // Exactly fits.
    let l = place(BASE, 128 * MIB, &k, None, Some(26 * MIB)).unwrap();
    assert_eq!(l.initrd, Some((BASE + 100 * MIB, BASE + 126 * MIB)));
    // The smallest memory leaves no room for a kernel and the devicetree.
    let tiny = load(image(0, 4096, 2, 10), false, 1 << 30).unwrap();
    assert!(matches!(
        place(BASE, 2 * MIB, &tiny, None, None),
        Err(PlaceError::DtbOverlapsKernel { .. })
    ));
    assert!(place(BASE, 4 * MIB, &tiny, None, None).is_ok());
}

#[test]
fn initrd_stays_in_the_kernels_32gib_window() {
    // 64 GiB of RAM: the top is past the window that holds the kernel.
    let k = load(image(0, 2 * MIB, 2, 10), false, 1 << 30).unwrap();
    let l = place(BASE, 64 << 30, &k, None, Some(MIB)).unwrap();
    let window_end = (BASE & !((1 << 30) - 1)) + INITRD_WINDOW;
    let (s, e) = l.initrd.unwrap();
    assert!(e <= window_end, "{e:#x}");
    assert_eq!(s, window_end - MIB);
    assert_eq!(l.dtb, BASE + (64 << 30) - 2 * MIB);
}

#[test]
fn elf_segments_keep_their_layout() {
    let f = elf(
        0x1000_0040,
        &[Seg {
            vaddr: 0x1000_0000,
            paddr: 0x1000_0000,
            data: vec![1; 64],
            memsz: 0x20_0000,
        }],
    );
    let k = load(f, false, 1 << 30).unwrap();
    let l = place(BASE, 128 * MIB, &k, None, Some(MIB)).unwrap();
    assert_eq!(l.entry, BASE + 0x40);
    assert_eq!(l.kernel_end, BASE + 0x20_0000);
}
