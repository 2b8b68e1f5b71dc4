//! bhyveload end to end against libvmmapi's in-process fake: the same `cli::parse` →
//! `boot::prepare` → `boot::load` path the binary takes, then the VM is inspected.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bhyveload::boot::{self, Outcome};
use bhyveload::cli::{self, Config, Parsed};
use bhyveload::userdtb::{self, Token};
use bhyveload::Error;
use libvmmapi::fake::FakeVmm;
use libvmmapi::{Backend, BackendError, Reg, Request, Vm};
use vm_memory::{Bytes, GuestAddress};
use vmm_platform as plat;

const MIB: u64 = 1 << 20;
const BASE: u64 = plat::RAM_BASE_DEFAULT;

/// A fresh directory for one test's files.
fn tmpdir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "bhyveload-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &std::path::Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_string()
}

/// An arm64 Image with `payload` patterned bytes after the header.
fn image(text_offset: u64, image_size: u64, flags: u64, payload: usize) -> Vec<u8> {
    let mut b = vec![0u8; 64 + payload];
    b[8..16].copy_from_slice(&text_offset.to_le_bytes());
    b[16..24].copy_from_slice(&image_size.to_le_bytes());
    b[24..32].copy_from_slice(&flags.to_le_bytes());
    b[0x38..0x3c].copy_from_slice(b"ARM\x64");
    for (i, x) in b[64..].iter_mut().enumerate() {
        *x = (i % 253) as u8 + 1;
    }
    b
}

/// A one- or two-segment ELF64 aarch64 executable: (vaddr, data, memsz) per segment.
fn elf(entry: u64, segs: &[(u64, Vec<u8>, u64)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"\x7fELF\x02\x01\x01");
    b.resize(16, 0);
    b.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b.extend_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&entry.to_le_bytes());
    b.extend_from_slice(&64u64.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, segs.len() as u16, 64, 0, 0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    let mut off = 64 + 56 * segs.len() as u64;
    for (vaddr, data, memsz) in segs {
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&7u32.to_le_bytes());
        for v in [off, *vaddr, *vaddr, data.len() as u64, *memsz, 0x1000] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        off += data.len() as u64;
    }
    for (_, data, _) in segs {
        b.extend_from_slice(data);
    }
    b
}

fn config(args: &[&str]) -> Config {
    match cli::parse(std::iter::once("bhyveload").chain(args.iter().copied())).unwrap() {
        Parsed::Run(c) => c,
        Parsed::Help(_) => panic!("help"),
    }
}

fn run(backend: Arc<dyn Backend>, args: &[&str]) -> Result<(boot::Prepared, Outcome), Error> {
    let c = match cli::parse(std::iter::once("bhyveload").chain(args.iter().copied()))? {
        Parsed::Run(c) => c,
        Parsed::Help(_) => panic!("help"),
    };
    boot::run(backend, &c)
}

fn read(vm: &Vm, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    vm.guest_memory()
        .unwrap()
        .read_slice(&mut v, GuestAddress(addr))
        .unwrap();
    v
}

/// The devicetree vCPU 0's x0 points at, read from guest memory, as path -> props.
fn dtb_at_x0(
    fake: &FakeVmm,
    vm: &Vm,
    name: &str,
) -> std::collections::BTreeMap<String, Vec<(String, Vec<u8>)>> {
    let x0 = fake.reg(name, 0, Reg::X(0));
    let hdr = read(vm, x0, 8);
    let total = u32::from_be_bytes(hdr[4..8].try_into().unwrap()) as usize;
    let blob = read(vm, x0, total);
    let tree = userdtb::parse(&blob).expect("the DTB at x0 parses");
    let mut out = std::collections::BTreeMap::new();
    let mut path = Vec::<String>::new();
    for t in tree.tokens {
        match t {
            Token::Begin(n) => {
                path.push(n);
                out.insert(path[1..].join("/"), Vec::new());
            }
            Token::Prop(n, v) => out.get_mut(&path[1..].join("/")).unwrap().push((n, v)),
            Token::End => {
                path.pop();
            }
        }
    }
    out
}

fn prop<'a>(
    t: &'a std::collections::BTreeMap<String, Vec<(String, Vec<u8>)>>,
    node: &str,
    name: &str,
) -> &'a [u8] {
    &t[node]
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{node}:{name}"))
        .1
}

#[test]
fn loads_an_image_with_initrd_and_sets_the_boot_registers() {
    let d = tmpdir();
    let k = image(0x8_0000, 4 * MIB, 0b10, 300_000);
    let kernel = write(&d, "Image", &k);
    let rd: Vec<u8> = (0..777_777u32).map(|i| (i * 7) as u8).collect();
    let initrd = write(&d, "initrd", &rd);
    let dtb_out = d.join("out.dtb");
    let fake = FakeVmm::new();
    let (p, outcome) = run(
        fake.backend(),
        &[
            "-k",
            &kernel,
            "-i",
            &initrd,
            "-m",
            "256M",
            "-c",
            "4",
            "-e",
            "console=ttyAMA0",
            "-e",
            "root=/dev/ram0",
            "--dtb-out",
            dtb_out.to_str().unwrap(),
            "guest0",
        ],
    )
    .unwrap();
    assert_eq!(outcome, Outcome::Created);
    assert!(fake.vm_exists("guest0"));
    let vm = Vm::open_with(fake.backend(), "guest0").unwrap();

    // Memory: one system segment of 256 MiB at the base.
    let maps = vm.mappings().unwrap();
    assert_eq!(maps.len(), 1);
    assert_eq!((maps[0].gpa, maps[0].len), (BASE, 256 * MIB));
    // The kernel at base + text_offset, the rest of image_size zero.
    assert_eq!(read(&vm, BASE + 0x8_0000, k.len()), k);
    assert!(read(
        &vm,
        BASE + 0x8_0000 + k.len() as u64,
        4 * MIB as usize - k.len()
    )
    .iter()
    .all(|&b| b == 0));
    // The initrd where the layout says, outside the kernel's image_size.
    let (s, e) = p.layout.initrd.unwrap();
    assert_eq!(e - s, rd.len() as u64);
    assert!(s >= BASE + 0x8_0000 + 4 * MIB);
    assert_eq!(read(&vm, s, rd.len()), rd);

    // Registers (booting.rst): x1..x3 are written as zero, not left to chance.
    let writes = fake.take_reg_writes("guest0", 0);
    for x in 1..4 {
        assert!(writes.contains(&(Reg::X(x), 0)), "{writes:?}");
    }
    assert_eq!(fake.reg("guest0", 0, Reg::Pc), BASE + 0x8_0000);
    assert_eq!(fake.reg("guest0", 0, Reg::Cpsr), 0x3c5);
    for x in 1..4 {
        assert_eq!(fake.reg("guest0", 0, Reg::X(x)), 0);
    }
    for n in 0..4 {
        assert_eq!(fake.reg("guest0", n, Reg::MpidrEl1), plat::vcpu_mpidr(n));
    }
    let x0 = fake.reg("guest0", 0, Reg::X(0));
    assert_eq!(x0 % 8, 0);
    assert_eq!(x0, BASE + 254 * MIB);
    assert!(x0 >= e);

    // The DTB at x0.
    let t = dtb_at_x0(&fake, &vm, "guest0");
    assert_eq!(
        prop(&t, "chosen", "bootargs"),
        b"console=ttyAMA0 root=/dev/ram0\0"
    );
    assert_eq!(prop(&t, "chosen", "linux,initrd-start"), s.to_be_bytes());
    assert_eq!(prop(&t, "chosen", "linux,initrd-end"), e.to_be_bytes());
    let reg: Vec<u8> = [BASE, 256 * MIB]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    assert_eq!(prop(&t, "memory@80000000", "reg"), reg);
    assert!(t.contains_key("cpus/cpu@3") && !t.contains_key("cpus/cpu@4"));
    // --dtb-out wrote the same blob.
    let out = std::fs::read(&dtb_out).unwrap();
    assert_eq!(read(&vm, x0, out.len()), out);

    // Topology and vGIC.
    assert_eq!(fake.topology("guest0"), (1, 4, 1));
    assert_eq!(fake.vgic("guest0"), Some((plat::GICD, plat::gicr(4))));
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn loads_an_elf_kernel_and_zeroes_its_bss_on_reload() {
    let d = tmpdir();
    const KB: u64 = 0xffff_0000_0000_0000;
    let text = vec![0x11u8; 0x2345];
    let data = vec![0x22u8; 0x100];
    let f = elf(
        KB + 0x800,
        &[
            (KB, text.clone(), 0x3000),
            (KB + 0x20_0000, data.clone(), 0x10_0000),
        ],
    );
    let kernel = write(&d, "kernel.elf", &f);
    let fake = FakeVmm::new();
    let args = ["-k", kernel.as_str(), "-m", "64M", "fbsd"];
    run(fake.backend(), &args).unwrap();
    let vm = Vm::open_with(fake.backend(), "fbsd").unwrap();
    assert_eq!(read(&vm, BASE, text.len()), text);
    assert_eq!(read(&vm, BASE + 0x20_0000, data.len()), data);
    assert_eq!(fake.reg("fbsd", 0, Reg::Pc), BASE + 0x800);

    // Dirty the BSS, then load again: the existing VM is reinitialised, not recreated,
    // and the BSS is zero again.
    vm.guest_memory()
        .unwrap()
        .write_slice(&[0xee; 4096], GuestAddress(BASE + 0x20_0000 + 0x1000))
        .unwrap();
    fake.set_reg("fbsd", 0, Reg::Pc, 0xdead);
    let (_, outcome) = run(fake.backend(), &args).unwrap();
    assert_eq!(outcome, Outcome::Reinitialised);
    assert!(read(&vm, BASE + 0x20_0100, 0x10_0000 - 0x100)
        .iter()
        .all(|&b| b == 0));
    assert_eq!(fake.reg("fbsd", 0, Reg::Pc), BASE + 0x800);
    assert_eq!(fake.vgic("fbsd"), Some((plat::GICD, plat::gicr(1))));

    // Another memory size cannot be applied to the existing VM: refused, VM kept.
    let e = run(fake.backend(), &["-k", &kernel, "-m", "128M", "fbsd"]).unwrap_err();
    assert!(matches!(e, Error::MemoryMismatch { .. }), "{e}");
    assert!(e.to_string().contains("destroy it"), "{e}");
    assert!(fake.vm_exists("fbsd"));
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn user_dtb_is_used_as_is_or_with_chosen_set() {
    let d = tmpdir();
    let kernel = write(&d, "Image", &image(0, 2 * MIB, 2, 1000));
    // A user tree: ours for 1 vCPU, written out, with a marker property added by -e later.
    let fake = FakeVmm::new();
    let gen = d.join("gen.dtb");
    run(
        fake.backend(),
        &["-k", &kernel, "--dtb-out", gen.to_str().unwrap(), "a"],
    )
    .unwrap();
    let user = std::fs::read(&gen).unwrap();

    // Unchanged without -e/-i: byte for byte.
    run(
        fake.backend(),
        &["-k", &kernel, "-t", gen.to_str().unwrap(), "b"],
    )
    .unwrap();
    let vm = Vm::open_with(fake.backend(), "b").unwrap();
    let x0 = fake.reg("b", 0, Reg::X(0));
    assert_eq!(read(&vm, x0, user.len()), user);

    // With -e: bootargs set, the rest kept.
    run(
        fake.backend(),
        &[
            "-k",
            &kernel,
            "-t",
            gen.to_str().unwrap(),
            "-e",
            "quiet",
            "c",
        ],
    )
    .unwrap();
    let vm = Vm::open_with(fake.backend(), "c").unwrap();
    let t = dtb_at_x0(&fake, &vm, "c");
    assert_eq!(prop(&t, "chosen", "bootargs"), b"quiet\0");
    assert_eq!(prop(&t, "chosen", "stdout-path"), b"serial0:115200n8\0");
    assert_eq!(t.len(), 21, "{:?}", t.keys());
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn large_page_kernels_load_with_a_warning() {
    let d = tmpdir();
    let k64 = write(&d, "Image64k", &image(0, 2 * MIB, 3 << 1, 100));
    let k4 = write(&d, "Image4k", &image(0, 2 * MIB, 1 << 1, 100));
    let fake = FakeVmm::new();
    let (p, _) = run(fake.backend(), &["-k", &k64, "big"]).unwrap();
    assert_eq!(p.warnings.len(), 1);
    assert!(p.warnings[0].contains("64 KiB pages"), "{:?}", p.warnings);
    let (p, _) = run(fake.backend(), &["-k", &k4, "small"]).unwrap();
    assert!(p.warnings.is_empty());
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn raw_binary_at_load_address() {
    let d = tmpdir();
    let code = [0x1f, 0x20, 0x03, 0xd5, 0x00, 0x00, 0x00, 0x14];
    let kernel = write(&d, "raw.bin", &code);
    let fake = FakeVmm::new();
    assert!(run(fake.backend(), &["-k", &kernel, "raw"]).is_err());
    assert!(!fake.vm_exists("raw"));
    run(fake.backend(), &["-k", &kernel, "-l", "0x80001000", "raw"]).unwrap();
    let vm = Vm::open_with(fake.backend(), "raw").unwrap();
    assert_eq!(read(&vm, 0x8000_1000, 8), code);
    assert_eq!(fake.reg("raw", 0, Reg::Pc), 0x8000_1000);
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn bad_input_touches_no_vm() {
    let d = tmpdir();
    let good = write(&d, "Image", &image(0, 2 * MIB, 2, 100));
    let be = write(&d, "be", &image(0, 2 * MIB, 1, 100));
    let trunc = write(&d, "trunc", &image(0, 2 * MIB, 2, 100)[..40]);
    let empty = write(&d, "empty", &[]);
    let x86 = write(&d, "x86.elf", &{
        let mut e = elf(0x1000, &[(0x1000, vec![0; 16], 16)]);
        e[18] = 62;
        e
    });
    let big_rd = write(&d, "big-initrd", &vec![1u8; 13 * MIB as usize]);
    // Sparse, larger than any guest here: refused from its size, before it is read.
    let huge = d.join("huge-initrd");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let huge = huge.to_str().unwrap().to_string();
    let big_dtb = write(&d, "big.dtb", &vec![0u8; 2 * MIB as usize + 8]);
    let not_dtb = write(&d, "not.dtb", &[1u8; 64]);
    let missing = d.join("missing").to_str().unwrap().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["-k", &missing], "kernel"),
        (vec!["-k", &empty], "file is empty"),
        (vec!["-k", &trunc], "not an arm64 Image"),
        (vec!["-k", &be], "big-endian"),
        (vec!["-k", &x86], "not aarch64"),
        (
            vec!["-k", &good, "-m", "16M", "-i", &big_rd],
            "initrd (0xd00000 bytes) does not fit",
        ),
        (
            vec!["-k", &good, "-i", &huge],
            "do not fit in 134217728 bytes of guest memory",
        ),
        (vec!["-k", &good, "-i", &missing], "initrd"),
        (vec!["-k", &good, "-t", &big_dtb], "larger than 2 MiB"),
        (vec!["-k", &good, "-t", &not_dtb], "bad magic"),
        (vec!["-k", &good, "-l", "0x80001000"], "not a multiple"),
        (vec!["-k", &good, "-m", "2M"], "devicetree"),
    ];
    let fake = FakeVmm::new();
    for (args, want) in cases {
        let mut a = args.clone();
        a.push("victim");
        let e = run(fake.backend(), &a).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(want), "{a:?}: {msg}");
        assert!(!msg.contains('\n'), "{msg}");
        assert!(
            fake.vm_names().is_empty(),
            "{a:?} left {:?}",
            fake.vm_names()
        );
    }
    assert!(config(&["-k", &good, "victim"]).initrd.is_none());
    std::fs::remove_dir_all(d).ok();
}

/// A backend that fails one kind of request, to make a load fail after the VM exists.
#[derive(Debug)]
struct FailOn {
    inner: Arc<FakeVmm>,
    cmd: u64,
}

impl Backend for FailOn {
    fn name(&self) -> &'static str {
        "fail-on"
    }
    fn execute(&self, req: &mut Request) -> Result<(), BackendError> {
        if req.cmd == self.cmd {
            return Err(BackendError::Errno(libc_eio()));
        }
        self.inner.execute(req)
    }
    fn map_memory(
        &self,
        vm: &str,
        gpa: u64,
        len: usize,
    ) -> Result<libvmmapi::Mapping, BackendError> {
        self.inner.map_memory(vm, gpa, len)
    }
}

fn libc_eio() -> i32 {
    5
}

/// A kernel that refuses MPIDR_EL1 in VM_SET_REGISTER, as FreeBSD 15's vmm.ko does
/// (it assigns each vCPU's MPIDR itself).
#[derive(Debug)]
struct NoMpidr(Arc<FakeVmm>);

impl Backend for NoMpidr {
    fn name(&self) -> &'static str {
        "no-mpidr"
    }
    fn execute(&self, req: &mut Request) -> Result<(), BackendError> {
        let mpidr = (Reg::MpidrEl1.number() as i32).to_ne_bytes();
        if req.cmd == vmm_sys::ioctl::VM_SET_REGISTER && req.arg[4..8] == mpidr {
            return Err(BackendError::Errno(libc::EINVAL));
        }
        self.0.execute(req)
    }
    fn map_memory(
        &self,
        vm: &str,
        gpa: u64,
        len: usize,
    ) -> Result<libvmmapi::Mapping, BackendError> {
        self.0.map_memory(vm, gpa, len)
    }
}

#[test]
fn loads_on_a_kernel_that_assigns_mpidr_itself() {
    let d = tmpdir();
    let kernel = write(&d, "Image", &image(0, 2 * MIB, 2, 100));
    let fake = FakeVmm::new();
    let backend: Arc<dyn Backend> = Arc::new(NoMpidr(fake.clone()));
    let (_, outcome) = run(backend, &["-k", &kernel, "-c", "2", "upstream"]).unwrap();
    assert_eq!(outcome, Outcome::Created);
    assert_eq!(fake.reg("upstream", 0, Reg::Pc), BASE);
    // Any other refusal still fails the load.
    let backend: Arc<dyn Backend> = Arc::new(FailOn {
        inner: fake.clone(),
        cmd: vmm_sys::ioctl::VM_SET_REGISTER,
    });
    assert!(run(backend, &["-k", &kernel, "other"]).is_err());
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn a_vm_this_run_created_is_destroyed_when_loading_fails() {
    let d = tmpdir();
    let kernel = write(&d, "Image", &image(0, 2 * MIB, 2, 100));
    for cmd in [
        vmm_sys::ioctl::VM_SET_REGISTER,
        vmm_sys::ioctl::VM_SET_REGISTER_SET,
        vmm_sys::ioctl::VM_ATTACH_VGIC,
        vmm_sys::ioctl::VM_MMAP_MEMSEG,
        vmm_sys::ioctl::VM_SET_TOPOLOGY,
    ] {
        let fake = FakeVmm::new();
        let backend: Arc<dyn Backend> = Arc::new(FailOn {
            inner: fake.clone(),
            cmd,
        });
        let e = run(backend, &["-k", &kernel, "doomed"]).unwrap_err();
        assert!(e.to_string().starts_with("vm 'doomed': "), "{e}");
        assert!(!fake.vm_exists("doomed"), "cmd {cmd:#x} left the VM behind");
    }
    // A pre-existing VM is reinitialised, and kept when the load then fails.
    let fake = FakeVmm::new();
    Vm::create_with(fake.backend(), "kept").unwrap();
    let backend: Arc<dyn Backend> = Arc::new(FailOn {
        inner: fake.clone(),
        cmd: vmm_sys::ioctl::VM_SET_REGISTER,
    });
    assert!(run(backend, &["-k", &kernel, "kept"]).is_err());
    assert!(fake.vm_exists("kept"));
    // A VM whose vCPU is active and has not left with SUSPENDED (bhyve still running
    // it, or killed) cannot be reinitialised: say so, and leave it alone.
    let vm = Vm::create_with(fake.backend(), "busy").unwrap();
    vm.vcpu(0).unwrap().activate().unwrap();
    let e = run(fake.backend(), &["-k", &kernel, "busy"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "vm 'busy' is running, or its last run did not end cleanly: stop its bhyve, \
         or destroy it (bhyvectl --vm=busy --destroy)"
    );
    assert!(fake.is_active("busy", 0));
    std::fs::remove_dir_all(d).ok();
}
