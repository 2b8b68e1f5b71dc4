//! Kernel images: what the file is and where its bytes go, relative to a load base.
//!
//! Three kinds are accepted, decided by content, never by file name:
//! * a Linux arm64 `Image` (Documentation/arch/arm64/booting.rst), recognised by the magic
//!   "ARM\x64" at offset 0x38 of its 64-byte header;
//! * an ELF64 little-endian EM_AARCH64 executable (a FreeBSD kernel);
//! * anything else only as a raw binary, and only when the user gives `-l ADDR`.
//!
//! A gzip-compressed file (Debian's `vmlinuz`) is decompressed first, as QEMU's `-kernel`
//! does, so the file a distribution installs can be given as it is.

use std::io::Read;

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;
use thiserror::Error;

/// 2 MiB: the alignment booting.rst asks of an Image's load base, and what the ELF
/// loader keeps between virtual and physical addresses so 2 MiB block mappings work.
pub const TWO_MIB: u64 = 2 << 20;
/// Size of the arm64 Image header.
pub const IMAGE_HEADER_LEN: usize = 64;
/// "ARM\x64", little-endian, at offset 0x38.
pub const IMAGE_MAGIC: u32 = 0x644d_5241;
/// text_offset to assume when image_size is 0 (kernels before v3.17).
pub const LEGACY_TEXT_OFFSET: u64 = 0x8_0000;
/// ELF identification: its length and the class and data-encoding bytes.
const EI_NIDENT: usize = 16;
const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;
/// Alignment of a raw binary's load address: one A64 instruction.
pub const RAW_ALIGN: u64 = 4;

/// Why a kernel file is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KernelError {
    #[error("file is empty")]
    Empty,
    #[error("not an arm64 Image or ELF64 aarch64 file (use -l ADDR to load a raw binary)")]
    Unknown,
    #[error("big-endian arm64 Image (only little-endian guests are supported)")]
    ImageBigEndian,
    #[error("truncated Image: {have} bytes, its PE header says {want}")]
    ImageTruncated { have: u64, want: u64 },
    #[error("Image is {have} bytes but its header's image_size is only {size}")]
    ImageLargerThanSize { have: u64, size: u64 },
    #[error("Image header's text_offset 0x{0:x} and image_size do not fit any address space")]
    ImageBadOffset(u64),
    #[error("Image has a PE header for machine 0x{0:04x}, not arm64")]
    ImageNotArm64(u16),
    #[error("ELF file is not 64-bit")]
    ElfNot64,
    #[error("big-endian ELF file (only little-endian guests are supported)")]
    ElfBigEndian,
    #[error("ELF file is for {}, not aarch64", elf_machine_name(*.0))]
    ElfNotAarch64(u16),
    #[error("ELF file of type {0} is not an executable")]
    ElfNotExecutable(u16),
    #[error("malformed ELF file: {0}")]
    ElfMalformed(String),
    #[error("truncated ELF file: segment {index} needs bytes up to {want}, the file has {have}")]
    ElfTruncated { index: usize, want: u64, have: u64 },
    #[error("ELF file has no loadable segments")]
    ElfNoSegments,
    #[error("ELF segment {0} has a file size larger than its memory size")]
    ElfFileszOverMemsz(usize),
    #[error("ELF segments {0} and {1} overlap")]
    ElfOverlap(usize, usize),
    #[error("ELF segments do not keep one offset between physical and virtual addresses")]
    ElfPhysVirtMismatch,
    #[error("ELF entry point 0x{0:x} is outside its loadable segments")]
    ElfEntryOutside(u64),
    #[error("ELF segments span more than the guest address space")]
    ElfTooLarge,
    #[error("bad gzip data: {0}")]
    Gzip(String),
    #[error("decompressed kernel is larger than guest memory ({0} bytes)")]
    GzipTooLarge(u64),
}

/// The architecture an ELF e_machine names, for messages: the ones a user is likely to
/// pass by mistake by name, any other by number.
pub fn elf_machine_name(machine: u16) -> String {
    match machine {
        elf::EM_386 => "i386".into(),
        elf::EM_X86_64 => "x86-64".into(),
        elf::EM_ARM => "32-bit arm".into(),
        elf::EM_PPC64 => "powerpc64".into(),
        elf::EM_RISCV => "risc-v".into(),
        m => format!("machine {m}"),
    }
}

/// What kind of file was recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// Linux arm64 Image.
    Image,
    /// ELF64 aarch64 executable.
    Elf,
    /// Raw binary, loaded at `-l ADDR` and entered at its first byte.
    Raw,
}

/// Page size an Image says it was built for (flags bits 1-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSize {
    Unspecified,
    K4,
    K16,
    K64,
}

/// The fields of an arm64 Image header that a loader acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    /// Offset from the 2 MiB-aligned base where the Image goes (0x80000 if image_size is 0).
    pub text_offset: u64,
    /// Bytes the kernel needs from its start, BSS included (0: unknown, old kernel).
    pub image_size: u64,
    /// Page size the kernel uses.
    pub page_size: PageSize,
    /// flags bit 3: the base may be anywhere in memory (not only close to the start of RAM).
    pub place_anywhere: bool,
}

/// One run of bytes to copy into guest memory, at `offset` from the load base, followed
/// by zeros up to `memsz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    /// Range of [`Kernel::bytes`] to copy.
    pub file: std::ops::Range<usize>,
    /// Bytes the segment occupies in memory (>= the file range's length).
    pub memsz: u64,
}

/// A kernel ready to be placed: its bytes and where they go relative to a load base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub kind: KernelKind,
    /// The (decompressed) file.
    pub bytes: Vec<u8>,
    pub segments: Vec<Segment>,
    /// Entry point, as an offset from the load base.
    pub entry: u64,
    /// Bytes from the load base that belong to the kernel: nothing else may go there.
    pub reserved: u64,
    /// Offset of the first byte the kernel occupies (text_offset for an Image).
    pub start: u64,
    /// Alignment the load base needs.
    pub align: u64,
    /// The Image header, for an Image.
    pub image: Option<ImageHeader>,
    /// True if the file was gzip-compressed.
    pub gzipped: bool,
}

fn le32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn le16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn le64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// True if `b` starts with an arm64 Image header.
pub fn is_image(b: &[u8]) -> bool {
    b.len() >= IMAGE_HEADER_LEN && le32(b, 0x38) == Some(IMAGE_MAGIC)
}

/// Reads the 64-byte Image header (booting.rst, "Call the kernel image").
pub fn parse_image_header(b: &[u8]) -> Result<ImageHeader, KernelError> {
    if !is_image(b) {
        return Err(KernelError::Unknown);
    }
    let text_offset = le64(b, 8).ok_or(KernelError::Unknown)?;
    let image_size = le64(b, 16).ok_or(KernelError::Unknown)?;
    let flags = le64(b, 24).ok_or(KernelError::Unknown)?;
    if image_size == 0 {
        // Before v3.17 the header had no flags and text_offset had no defined
        // endianness; booting.rst says to assume 0x80000.
        return Ok(ImageHeader {
            text_offset: LEGACY_TEXT_OFFSET,
            image_size: 0,
            page_size: PageSize::Unspecified,
            place_anywhere: false,
        });
    }
    if flags & 1 != 0 {
        return Err(KernelError::ImageBigEndian);
    }
    let page_size = match (flags >> 1) & 3 {
        0 => PageSize::Unspecified,
        1 => PageSize::K4,
        2 => PageSize::K16,
        _ => PageSize::K64,
    };
    Ok(ImageHeader {
        text_offset,
        image_size,
        page_size,
        place_anywhere: flags & (1 << 3) != 0,
    })
}

/// An Image built with the EFI stub carries a PE/COFF header (its offset in the header's
/// last word); its section table says how long the file must be, which catches a
/// truncated download. Returns that length, or None without a PE header.
fn pe_expected_len(b: &[u8]) -> Result<Option<u64>, KernelError> {
    let pe = match le32(b, 0x3c) {
        Some(0) | None => return Ok(None),
        Some(off) => off as usize,
    };
    let have = b.len() as u64;
    if b.get(pe..pe + 4) != Some(b"PE\0\0".as_slice()) {
        // Past the end of the file: the file was cut inside its own headers.
        if pe + 4 > b.len() {
            return Err(KernelError::ImageTruncated {
                have,
                want: pe as u64 + 4,
            });
        }
        return Ok(None);
    }
    let coff = pe + 4;
    let truncated = |want: usize| KernelError::ImageTruncated {
        have,
        want: want as u64,
    };
    let machine = le16(b, coff).ok_or_else(|| truncated(coff + 20))?;
    const IMAGE_FILE_MACHINE_ARM64: u16 = 0xaa64;
    if machine != IMAGE_FILE_MACHINE_ARM64 {
        return Err(KernelError::ImageNotArm64(machine));
    }
    let nsections = le16(b, coff + 2).ok_or_else(|| truncated(coff + 20))? as usize;
    let opt_size = le16(b, coff + 16).ok_or_else(|| truncated(coff + 20))? as usize;
    let table = coff + 20 + opt_size;
    let mut want = (table + nsections * 40) as u64;
    for i in 0..nsections {
        let s = table + i * 40;
        let size = le32(b, s + 16).ok_or_else(|| truncated(table + nsections * 40))?;
        let ptr = le32(b, s + 20).ok_or_else(|| truncated(table + nsections * 40))?;
        want = want.max(u64::from(ptr) + u64::from(size));
    }
    Ok(Some(want))
}

fn load_image(bytes: Vec<u8>) -> Result<Kernel, KernelError> {
    let hdr = parse_image_header(&bytes)?;
    let have = bytes.len() as u64;
    if let Some(want) = pe_expected_len(&bytes)? {
        if have < want {
            return Err(KernelError::ImageTruncated { have, want });
        }
    }
    if hdr.image_size != 0 && have > hdr.image_size {
        return Err(KernelError::ImageLargerThanSize {
            have,
            size: hdr.image_size,
        });
    }
    // image_size covers the file, BSS and the kernel's early page tables; an old kernel
    // (image_size 0) only tells us its file length.
    let memsz = hdr.image_size.max(have);
    let start = hdr.text_offset;
    let reserved = start
        .checked_add(memsz)
        .filter(|&end| end <= vmm_platform::IPA_LIMIT)
        .ok_or(KernelError::ImageBadOffset(start))?;
    Ok(Kernel {
        kind: KernelKind::Image,
        segments: vec![Segment {
            offset: start,
            file: 0..bytes.len(),
            memsz,
        }],
        bytes,
        entry: start,
        reserved,
        start,
        align: TWO_MIB,
        image: Some(hdr),
        gzipped: false,
    })
}

fn load_elf(bytes: Vec<u8>) -> Result<Kernel, KernelError> {
    let data = bytes.as_slice();
    let ident = data.get(..EI_NIDENT).ok_or(KernelError::Unknown)?;
    if ident[EI_CLASS] != elf::ELFCLASS64 {
        return Err(KernelError::ElfNot64);
    }
    if ident[EI_DATA] == elf::ELFDATA2MSB {
        return Err(KernelError::ElfBigEndian);
    }
    let malformed = |e: object::read::Error| KernelError::ElfMalformed(e.to_string());
    let hdr = elf::FileHeader64::<Endianness>::parse(data).map_err(malformed)?;
    let endian = hdr.endian().map_err(malformed)?;
    let machine = hdr.e_machine(endian);
    if machine != elf::EM_AARCH64 {
        return Err(KernelError::ElfNotAarch64(machine));
    }
    let etype = hdr.e_type(endian);
    if etype != elf::ET_EXEC && etype != elf::ET_DYN {
        return Err(KernelError::ElfNotExecutable(etype));
    }
    let phdrs = hdr.program_headers(endian, data).map_err(malformed)?;

    struct Load {
        index: usize,
        vaddr: u64,
        paddr: u64,
        offset: u64,
        filesz: u64,
        memsz: u64,
    }
    let mut loads = Vec::new();
    for (index, ph) in phdrs.iter().enumerate() {
        if ph.p_type(endian) != elf::PT_LOAD || ph.p_memsz(endian) == 0 {
            continue;
        }
        let l = Load {
            index,
            vaddr: ph.p_vaddr(endian),
            paddr: ph.p_paddr(endian),
            offset: ph.p_offset(endian),
            filesz: ph.p_filesz(endian),
            memsz: ph.p_memsz(endian),
        };
        if l.filesz > l.memsz {
            return Err(KernelError::ElfFileszOverMemsz(index));
        }
        let end = l
            .offset
            .checked_add(l.filesz)
            .ok_or(KernelError::ElfTruncated {
                index,
                want: u64::MAX,
                have: data.len() as u64,
            })?;
        if end > data.len() as u64 {
            return Err(KernelError::ElfTruncated {
                index,
                want: end,
                have: data.len() as u64,
            });
        }
        if l.vaddr.checked_add(l.memsz).is_none() {
            return Err(KernelError::ElfTooLarge);
        }
        loads.push(l);
    }
    let first = loads.first().ok_or(KernelError::ElfNoSegments)?;
    // The kernel computes its physical address from where it runs and assumes the
    // link-time distance between segments; a file whose physical layout differs from
    // its virtual one would need a choice we cannot make for it.
    let delta = first.paddr.wrapping_sub(first.vaddr);
    if loads.iter().any(|l| l.paddr.wrapping_sub(l.vaddr) != delta) {
        return Err(KernelError::ElfPhysVirtMismatch);
    }
    loads.sort_by_key(|l| l.vaddr);
    for w in loads.windows(2) {
        if w[0].vaddr + w[0].memsz > w[1].vaddr {
            return Err(KernelError::ElfOverlap(w[0].index, w[1].index));
        }
    }
    // Keep virtual and physical addresses equal modulo 2 MiB, so a kernel that maps itself
    // with 2 MiB blocks (FreeBSD's locore does) finds itself where it expects.
    let base = loads[0].vaddr & !(TWO_MIB - 1);
    let last = loads.last().ok_or(KernelError::ElfNoSegments)?;
    let reserved = last.vaddr + last.memsz - base;
    if reserved > vmm_platform::IPA_LIMIT {
        return Err(KernelError::ElfTooLarge);
    }
    let entry = hdr.e_entry(endian);
    if !loads
        .iter()
        .any(|l| entry >= l.vaddr && entry - l.vaddr < l.memsz)
    {
        return Err(KernelError::ElfEntryOutside(entry));
    }
    let segments = loads
        .iter()
        .map(|l| Segment {
            offset: l.vaddr - base,
            file: l.offset as usize..(l.offset + l.filesz) as usize,
            memsz: l.memsz,
        })
        .collect::<Vec<_>>();
    Ok(Kernel {
        kind: KernelKind::Elf,
        start: segments[0].offset,
        segments,
        bytes,
        entry: entry - base,
        reserved,
        align: TWO_MIB,
        image: None,
        gzipped: false,
    })
}

fn load_raw(bytes: Vec<u8>) -> Kernel {
    let len = bytes.len() as u64;
    Kernel {
        kind: KernelKind::Raw,
        segments: vec![Segment {
            offset: 0,
            file: 0..bytes.len(),
            memsz: len,
        }],
        bytes,
        entry: 0,
        reserved: len,
        start: 0,
        align: RAW_ALIGN,
        image: None,
        gzipped: false,
    }
}

/// True if `b` starts with the gzip magic.
pub fn is_gzip(b: &[u8]) -> bool {
    b.starts_with(&[0x1f, 0x8b])
}

/// Decompresses a gzip stream, refusing output larger than `limit` bytes.
pub fn gunzip(b: &[u8], limit: u64) -> Result<Vec<u8>, KernelError> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| KernelError::Gzip(e.to_string()))?;
    if out.len() as u64 > limit {
        return Err(KernelError::GzipTooLarge(limit));
    }
    Ok(out)
}

/// Recognises `bytes` and works out its segments. `raw_allowed` (the user gave `-l`)
/// lets an unrecognised file through as a raw binary. `limit` bounds decompression
/// (the guest's memory size: a bigger kernel cannot fit anyway).
pub fn load(bytes: Vec<u8>, raw_allowed: bool, limit: u64) -> Result<Kernel, KernelError> {
    if bytes.is_empty() {
        return Err(KernelError::Empty);
    }
    let (bytes, gzipped) = if is_gzip(&bytes) {
        (gunzip(&bytes, limit)?, true)
    } else {
        (bytes, false)
    };
    let mut k = if is_image(&bytes) {
        load_image(bytes)?
    } else if bytes.starts_with(&elf::ELFMAG) {
        // A truncated ELF header is still an ELF file the user meant: say what is wrong
        // with it rather than calling it unknown.
        if bytes.len() < EI_NIDENT {
            return Err(KernelError::ElfMalformed("truncated ELF header".into()));
        }
        load_elf(bytes)?
    } else if raw_allowed {
        load_raw(bytes)
    } else {
        return Err(KernelError::Unknown);
    };
    k.gzipped = gzipped;
    Ok(k)
}
