use std::io::Write;

use super::{elf, elf_with, image, Seg};
use crate::kernel::*;

const LIMIT: u64 = 128 << 20;

#[test]
fn image_header_fields_are_honoured() {
    let b = image(0, 0x20_0000, 0b1010, 4096); // 4K pages, place anywhere
    let h = parse_image_header(&b).unwrap();
    assert_eq!(
        h,
        ImageHeader {
            text_offset: 0,
            image_size: 0x20_0000,
            page_size: PageSize::K4,
            place_anywhere: true,
        }
    );
    let k = load(b.clone(), false, LIMIT).unwrap();
    assert_eq!(k.kind, KernelKind::Image);
    assert_eq!(k.align, TWO_MIB);
    assert_eq!(k.entry, 0);
    assert_eq!(k.start, 0);
    // image_size, not the file length, is what the kernel owns.
    assert_eq!(k.reserved, 0x20_0000);
    assert_eq!(
        k.segments,
        vec![Segment {
            offset: 0,
            file: 0..b.len(),
            memsz: 0x20_0000
        }]
    );

    let k = load(image(0x8_0000, 0x10_0000, 0, 100), false, LIMIT).unwrap();
    assert_eq!(
        (k.start, k.entry, k.reserved),
        (0x8_0000, 0x8_0000, 0x18_0000)
    );
    assert_eq!(k.image.unwrap().page_size, PageSize::Unspecified);
    assert!(!k.image.unwrap().place_anywhere);
    for (flags, ps) in [(2 << 1, PageSize::K16), (3 << 1, PageSize::K64)] {
        let h = parse_image_header(&image(0, 0x1000, flags, 0)).unwrap();
        assert_eq!(h.page_size, ps);
    }
}

#[test]
fn image_size_zero_means_old_kernel_at_0x80000() {
    // Pre-3.17: text_offset undefined endianness, no flags; booting.rst says 0x80000.
    let b = image(0x1234, 0, 1, 4000);
    let k = load(b.clone(), false, LIMIT).unwrap();
    let h = k.image.unwrap();
    assert_eq!(h.text_offset, LEGACY_TEXT_OFFSET);
    assert_eq!(h.page_size, PageSize::Unspecified);
    assert_eq!(k.entry, 0x8_0000);
    assert_eq!(k.reserved, 0x8_0000 + b.len() as u64);
}

#[test]
fn bad_images() {
    // Big-endian kernel.
    assert_eq!(
        load(image(0, 0x1000, 1, 0), false, LIMIT),
        Err(KernelError::ImageBigEndian)
    );
    // Bad magic: not an Image at all.
    let mut b = image(0, 0x1000, 0, 16);
    b[0x38] = b'X';
    assert_eq!(load(b.clone(), false, LIMIT), Err(KernelError::Unknown));
    assert_eq!(
        load(b, false, LIMIT).unwrap_err().to_string(),
        "not an arm64 Image or ELF64 aarch64 file (use -l ADDR to load a raw binary)"
    );
    // Truncated inside the header: the magic is gone, so it is not an Image.
    let b = image(0, 0x1000, 0, 0);
    assert_eq!(
        load(b[..0x3a].to_vec(), false, LIMIT),
        Err(KernelError::Unknown)
    );
    assert_eq!(load(Vec::new(), false, LIMIT), Err(KernelError::Empty));
    // A text_offset no memory can hold.
    assert_eq!(
        load(image(u64::MAX - 10, 0x1000, 0, 0), false, LIMIT),
        Err(KernelError::ImageBadOffset(u64::MAX - 10))
    );
    // A file longer than its own image_size is inconsistent.
    assert_eq!(
        load(image(0, 64, 0, 100), false, LIMIT),
        Err(KernelError::ImageLargerThanSize {
            have: 164,
            size: 64
        })
    );
}

/// An Image with an EFI stub: PE header at 0x40 with one section ending at `raw_end`.
fn pe_image(raw_end: u32, len: usize, machine: u16) -> Vec<u8> {
    let mut b = image(0, 0x10_0000, 2, len - 64);
    b[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
    b[0x40..0x44].copy_from_slice(b"PE\0\0");
    let coff = 0x44;
    b[coff..coff + 2].copy_from_slice(&machine.to_le_bytes());
    b[coff + 2..coff + 4].copy_from_slice(&1u16.to_le_bytes()); // one section
    b[coff + 16..coff + 18].copy_from_slice(&0u16.to_le_bytes()); // no optional header
    let s = coff + 20;
    b[s + 16..s + 20].copy_from_slice(&(raw_end - 0x200).to_le_bytes()); // SizeOfRawData
    b[s + 20..s + 24].copy_from_slice(&0x200u32.to_le_bytes()); // PointerToRawData
    b
}

#[test]
fn truncated_efi_image_is_caught_by_its_pe_header() {
    assert!(load(pe_image(0x4000, 0x4000, 0xaa64), false, LIMIT).is_ok());
    let b = pe_image(0x4000, 0x4000, 0xaa64);
    assert_eq!(
        load(b[..0x3000].to_vec(), false, LIMIT),
        Err(KernelError::ImageTruncated {
            have: 0x3000,
            want: 0x4000
        })
    );
    assert_eq!(
        load(pe_image(0x4000, 0x4000, 0x8664), false, LIMIT),
        Err(KernelError::ImageNotArm64(0x8664))
    );
}

fn gz(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

#[test]
fn gzip_compressed_kernels() {
    let raw = image(0, 0x10_0000, 2, 70_000);
    let k = load(gz(&raw), false, LIMIT).unwrap();
    assert!(k.gzipped);
    assert_eq!(k.bytes, raw);
    assert_eq!(k.kind, KernelKind::Image);
    // Cut short: the stream ends early.
    let z = gz(&raw);
    assert!(matches!(
        load(z[..z.len() / 2].to_vec(), false, LIMIT),
        Err(KernelError::Gzip(_))
    ));
    // Decompression stops at the memory size.
    assert_eq!(
        load(gz(&raw), false, 4096),
        Err(KernelError::GzipTooLarge(4096))
    );
}

const KERNBASE: u64 = 0xffff_0000_0000_0000;

#[test]
fn freebsd_style_elf() {
    // Text at KERNBASE (file headers included, as FreeBSD links it), data after a gap,
    // BSS past the data's file bytes.
    let text = vec![0xaa; 0x3000];
    let data = vec![0xbb; 0x800];
    let f = elf(
        KERNBASE + 0x100,
        &[
            Seg {
                vaddr: KERNBASE,
                paddr: KERNBASE,
                data: text.clone(),
                memsz: 0x3000,
            },
            Seg {
                vaddr: KERNBASE + 0x10_0000,
                paddr: KERNBASE + 0x10_0000,
                data: data.clone(),
                memsz: 0x5000,
            },
        ],
    );
    let k = load(f.clone(), false, LIMIT).unwrap();
    assert_eq!(k.kind, KernelKind::Elf);
    assert_eq!(k.entry, 0x100);
    assert_eq!(k.start, 0);
    assert_eq!(k.reserved, 0x10_5000);
    assert_eq!(k.align, TWO_MIB);
    assert_eq!(k.segments.len(), 2);
    assert_eq!(k.segments[0].offset, 0);
    assert_eq!(&k.bytes[k.segments[0].file.clone()], &text[..]);
    assert_eq!(k.segments[1].offset, 0x10_0000);
    assert_eq!(&k.bytes[k.segments[1].file.clone()], &data[..]);
    assert_eq!(k.segments[1].memsz, 0x5000);
}

#[test]
fn elf_keeps_its_offset_within_2mib() {
    // First segment 0x1000 past a 2 MiB boundary, program headers out of order.
    let f = elf(
        0x4000_1000,
        &[
            Seg {
                vaddr: 0x4020_0000,
                paddr: 0x4020_0000,
                data: vec![2; 16],
                memsz: 16,
            },
            Seg {
                vaddr: 0x4000_1000,
                paddr: 0x4000_1000,
                data: vec![1; 16],
                memsz: 32,
            },
        ],
    );
    let k = load(f, false, LIMIT).unwrap();
    assert_eq!(k.start, 0x1000);
    assert_eq!(k.entry, 0x1000);
    assert_eq!(k.segments[0].offset, 0x1000);
    assert_eq!(k.segments[1].offset, 0x20_0000);
    assert_eq!(k.reserved, 0x20_0010);
}

fn one(vaddr: u64, data: usize, memsz: u64) -> Seg {
    Seg {
        vaddr,
        paddr: vaddr,
        data: vec![7; data],
        memsz,
    }
}

#[test]
fn bad_elfs() {
    let good = || vec![one(0x1000, 64, 64)];
    assert!(load(elf(0x1000, &good()), false, LIMIT).is_ok());
    // 32-bit, big-endian, wrong machine, not executable.
    assert_eq!(
        load(elf_with(1, 1, 2, 183, 0x1000, &good()), false, LIMIT),
        Err(KernelError::ElfNot64)
    );
    assert_eq!(
        load(elf_with(2, 2, 2, 183, 0x1000, &good()), false, LIMIT),
        Err(KernelError::ElfBigEndian)
    );
    assert_eq!(
        load(elf_with(2, 1, 2, 62, 0x1000, &good()), false, LIMIT),
        Err(KernelError::ElfNotAarch64(62))
    );
    assert_eq!(
        KernelError::ElfNotAarch64(62).to_string(),
        "ELF file is for x86-64, not aarch64"
    );
    assert_eq!(
        KernelError::ElfNotAarch64(9999).to_string(),
        "ELF file is for machine 9999, not aarch64"
    );
    assert_eq!(
        load(elf_with(2, 1, 1, 183, 0x1000, &good()), false, LIMIT),
        Err(KernelError::ElfNotExecutable(1))
    );
    // Truncated: the segment's bytes are cut off; the header itself cut off.
    let f = elf(0x1000, &good());
    assert_eq!(
        load(f[..f.len() - 10].to_vec(), false, LIMIT),
        Err(KernelError::ElfTruncated {
            index: 0,
            want: f.len() as u64,
            have: f.len() as u64 - 10
        })
    );
    assert!(matches!(
        load(f[..40].to_vec(), false, LIMIT),
        Err(KernelError::ElfMalformed(_))
    ));
    assert!(matches!(
        load(f[..10].to_vec(), false, LIMIT),
        Err(KernelError::ElfMalformed(_))
    ));
    // No segments, filesz > memsz, overlap, entry outside.
    assert_eq!(
        load(elf(0x1000, &[]), false, LIMIT),
        Err(KernelError::ElfNoSegments)
    );
    assert_eq!(
        load(elf(0x1000, &[one(0x1000, 64, 32)]), false, LIMIT),
        Err(KernelError::ElfFileszOverMemsz(0))
    );
    assert_eq!(
        load(
            elf(0x1000, &[one(0x1000, 64, 0x2000), one(0x2000, 64, 64)]),
            false,
            LIMIT
        ),
        Err(KernelError::ElfOverlap(0, 1))
    );
    assert_eq!(
        load(elf(0x9000, &good()), false, LIMIT),
        Err(KernelError::ElfEntryOutside(0x9000))
    );
    // Physical layout different from the virtual one.
    let mut segs = vec![one(0x1000, 16, 16), one(0x5000, 16, 16)];
    segs[1].paddr = 0x9000;
    assert_eq!(
        load(elf(0x1000, &segs), false, LIMIT),
        Err(KernelError::ElfPhysVirtMismatch)
    );
}

#[test]
fn raw_binaries_need_a_load_address() {
    let b = vec![0x1f, 0x20, 0x03, 0xd5, 0, 0, 0, 0x14]; // nop; b .
    assert_eq!(load(b.clone(), false, LIMIT), Err(KernelError::Unknown));
    let k = load(b.clone(), true, LIMIT).unwrap();
    assert_eq!(k.kind, KernelKind::Raw);
    assert_eq!(
        (k.entry, k.start, k.reserved, k.align),
        (0, 0, 8, RAW_ALIGN)
    );
    assert_eq!(k.segments[0].file, 0..8);
    // -l does not turn a broken Image or ELF into a raw binary.
    assert_eq!(
        load(image(0, 0x1000, 1, 0), true, LIMIT),
        Err(KernelError::ImageBigEndian)
    );
}
