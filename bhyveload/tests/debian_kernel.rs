//! bhyveload against a kernel nobody here wrote: Debian's arm64 cloud kernel, fetched
//! and cached by tests/fetch-guest.sh (apt-get download). If it cannot be fetched the
//! test fails with the script's reason: CI has the Debian registry.

use std::path::PathBuf;
use std::process::Command;

use bhyveload::boot::{self, Outcome};
use bhyveload::cli::{self, Parsed};
use bhyveload::kernel::KernelKind;
use libvmmapi::fake::FakeVmm;
use libvmmapi::{Reg, Vm};
use vm_memory::{Bytes, GuestAddress};

const MIB: u64 = 1 << 20;

/// Runs tests/fetch-guest.sh and returns the kernel's path.
fn debian_kernel() -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fetch-guest.sh");
    let out = Command::new("sh")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "fetching Debian's arm64 kernel failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(
        path.is_file(),
        "fetch-guest.sh printed {path:?}, not a file"
    );
    path
}

/// The Image, decompressed if the package ships it gzipped.
fn image_bytes(path: &PathBuf) -> Vec<u8> {
    let raw = std::fs::read(path).unwrap();
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&raw[..]), &mut out).unwrap();
        out
    } else {
        raw
    }
}

fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bhyveload-debian-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn debian_kernel_is_placed_as_its_header_says() {
    let kpath = debian_kernel();
    let img = image_bytes(&kpath);
    // Read the header here independently of bhyveload's parser (booting.rst).
    assert_eq!(
        &img[0x38..0x3c],
        b"ARM\x64",
        "Debian's kernel is an arm64 Image"
    );
    let text_offset = le64(&img, 8);
    let image_size = le64(&img, 16);
    let flags = le64(&img, 24);
    assert!(image_size >= img.len() as u64, "image_size covers the file");
    assert_eq!(flags & 1, 0, "little-endian");

    let initrd: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
    let initrd_path = tmp("initrd");
    std::fs::write(&initrd_path, &initrd).unwrap();
    let dtb_out = tmp("out.dtb");
    let args = [
        "bhyveload",
        "-k",
        kpath.to_str().unwrap(),
        "-i",
        initrd_path.to_str().unwrap(),
        "-m",
        "256M",
        "-c",
        "2",
        "-e",
        "console=ttyAMA0",
        "--dtb-out",
        dtb_out.to_str().unwrap(),
        "debian",
    ];
    let Parsed::Run(config) = cli::parse(args).unwrap() else {
        panic!("help")
    };
    let fake = FakeVmm::new();
    let (p, outcome) = boot::run(fake.backend(), &config).unwrap();
    assert_eq!(outcome, Outcome::Created);
    assert_eq!(p.kernel.kind, KernelKind::Image);
    let h = p.kernel.image.unwrap();
    assert_eq!((h.text_offset, h.image_size), (text_offset, image_size));

    let base = vmm_platform::RAM_BASE_DEFAULT;
    let l = p.layout;
    // Kernel at the 2 MiB-aligned base + text_offset, owning image_size bytes.
    assert_eq!(l.load_base % (2 * MIB), 0);
    assert_eq!(l.kernel_start, base + text_offset);
    assert_eq!(l.kernel_end, base + text_offset + image_size);
    assert_eq!(fake.reg("debian", 0, Reg::Pc), base + text_offset);
    let vm = Vm::open_with(fake.backend(), "debian").unwrap();
    let mem = vm.guest_memory().unwrap();
    let mut loaded = vec![0u8; img.len()];
    mem.read_slice(&mut loaded, GuestAddress(l.kernel_start))
        .unwrap();
    assert!(
        loaded == img,
        "guest memory holds the Image at base + text_offset"
    );
    // DTB and initrd outside the reserved image_size, the DTB 8-byte aligned, <= 2 MiB,
    // inside one 2 MiB block.
    let x0 = fake.reg("debian", 0, Reg::X(0));
    let dtb = std::fs::read(&dtb_out).unwrap();
    assert_eq!(x0, l.dtb);
    assert_eq!(x0 % 8, 0);
    assert!(x0 >= l.kernel_end);
    assert!(dtb.len() as u64 <= 2 * MIB);
    assert_eq!(x0 / (2 * MIB), (x0 + dtb.len() as u64 - 1) / (2 * MIB));
    let mut at_x0 = vec![0u8; dtb.len()];
    mem.read_slice(&mut at_x0, GuestAddress(x0)).unwrap();
    assert_eq!(at_x0, dtb);
    let (s, e) = l.initrd.unwrap();
    assert!(s >= l.kernel_end && e <= x0, "initrd {s:#x}-{e:#x}");
    let mut rd = vec![0u8; initrd.len()];
    mem.read_slice(&mut rd, GuestAddress(s)).unwrap();
    assert!(rd == initrd);
    // Kernel and initrd inside one 1 GiB-aligned 32 GiB window.
    let window = l.kernel_start & !((1 << 30) - 1);
    assert!(e <= window + (32 << 30));

    // The same kernel cut short is refused by its PE header, and leaves no VM.
    let cut = tmp("cut-Image");
    std::fs::write(&cut, &img[..img.len() / 2]).unwrap();
    let Parsed::Run(config) =
        cli::parse(["bhyveload", "-k", cut.to_str().unwrap(), "cut"]).unwrap()
    else {
        panic!("help")
    };
    let e = boot::run(fake.backend(), &config).unwrap_err();
    assert!(e.to_string().contains("truncated Image"), "{e}");
    assert!(!fake.vm_exists("cut"));
    std::fs::remove_dir_all(initrd_path.parent().unwrap()).ok();
}
