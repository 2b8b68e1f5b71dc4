//! The two halves of a bhyveload run.
//!
//! [`prepare`] reads and checks every file and works out the whole guest image (kernel
//! segments, initrd, devicetree, registers) without touching any VM; a bad argument or
//! file stops there. [`load`] then creates (or reinitialises) the VM through a libvmmapi
//! backend and writes the image into it; if it fails after creating the VM, it destroys it.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use libvmmapi::{Backend, Topology, Vm, VmMemory};
use vm_memory::{Bytes, GuestAddress};
use vmm_platform as plat;
use vmm_sys::arm64::regs::pstate;
use vmm_sys::reg::Reg;

use crate::cli::Config;
use crate::error::Error;
use crate::fdt::{self, FdtConfig};
use crate::kernel::{self, Kernel, PageSize};
use crate::placement::{self, Layout};
use crate::userdtb::{self, ChosenPatch, DTB_MAX};

/// Everything to write into the VM, worked out before the VM is touched.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub config: Config,
    pub kernel: Kernel,
    pub initrd: Option<Vec<u8>>,
    pub dtb: Vec<u8>,
    pub layout: Layout,
    /// Things the user should know that do not stop the load.
    pub warnings: Vec<String>,
}

impl Prepared {
    /// vCPU 0's registers at entry (booting.rst): PC at the entry point, x0 the
    /// devicetree, x1..x3 zero, EL1h with D, A, I and F masked.
    pub fn boot_regs(&self) -> Vec<(Reg, u64)> {
        vec![
            (Reg::X(0), self.layout.dtb),
            (Reg::X(1), 0),
            (Reg::X(2), 0),
            (Reg::X(3), 0),
            (Reg::Pc, self.layout.entry),
            (Reg::Cpsr, pstate::GUEST_RESET),
        ]
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(|source| Error::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and checks the files `config` names and lays out the guest. Touches no VM.
pub fn prepare(config: &Config) -> Result<Prepared, Error> {
    let mut warnings = Vec::new();
    let kernel_bytes = read("kernel", &config.kernel)?;
    let kernel = kernel::load(kernel_bytes, config.load_addr.is_some(), config.ram_size).map_err(
        |source| Error::Kernel {
            path: config.kernel.clone(),
            source,
        },
    )?;
    if let Some(h) = kernel.image {
        // The page size is the guest's own stage-1 granule; our stage 2 does not care,
        // but a CPU without that granule cannot run the kernel.
        match h.page_size {
            PageSize::K16 | PageSize::K64 => warnings.push(format!(
                "kernel {} uses {} pages; the CPU must implement that granule",
                config.kernel.display(),
                if h.page_size == PageSize::K16 {
                    "16 KiB"
                } else {
                    "64 KiB"
                }
            )),
            PageSize::K4 | PageSize::Unspecified => {}
        }
    }
    let initrd = match &config.initrd {
        Some(p) => {
            let too_big = |len: u64| Error::Initrd {
                path: p.clone(),
                why: format!(
                    "{len} bytes do not fit in {} bytes of guest memory",
                    config.ram_size
                ),
            };
            // Refuse an initrd larger than the guest before reading it all.
            if let Ok(md) = fs::metadata(p) {
                if md.len() > config.ram_size {
                    return Err(too_big(md.len()));
                }
            }
            let b = read("initrd", p)?;
            if b.is_empty() {
                return Err(Error::Initrd {
                    path: p.clone(),
                    why: "file is empty".into(),
                });
            }
            if b.len() as u64 > config.ram_size {
                return Err(too_big(b.len() as u64));
            }
            Some(b)
        }
        None => None,
    };
    let layout = placement::place(
        config.ram_base,
        config.ram_size,
        &kernel,
        config.load_addr,
        initrd.as_ref().map(|b| b.len() as u64),
    )?;
    let dtb = match &config.dtb {
        None => fdt::generate(&FdtConfig {
            ram_base: config.ram_base,
            ram_size: config.ram_size,
            ncpus: config.ncpus,
            bootargs: config.bootargs(),
            initrd: layout.initrd,
            seed: host_entropy(fdt::SEED_BYTES),
        })
        .map_err(Error::FdtGen)?,
        Some(p) => {
            let dtb_err = |source| Error::Dtb {
                path: p.clone(),
                source,
            };
            // Refuse an oversized file before reading it all.
            if let Ok(md) = fs::metadata(p) {
                if md.len() > DTB_MAX as u64 {
                    return Err(dtb_err(userdtb::DtbError::TooLarge(md.len())));
                }
            }
            let bytes = read("devicetree", p)?;
            let tree = userdtb::parse(&bytes).map_err(dtb_err)?;
            let patch = ChosenPatch {
                bootargs: config.bootargs(),
                initrd: layout.initrd,
            };
            if patch.is_empty() {
                // Used as is: the blob itself, without any padding after it in the file.
                bytes[..tree.totalsize].to_vec()
            } else {
                userdtb::patch(&tree, &patch).map_err(dtb_err)?
            }
        }
    };
    // parse() and patch() refuse anything over 2 MiB; ours is a few KiB.
    debug_assert!(dtb.len() as u64 <= placement::DTB_SLOT);
    if let Some(out) = &config.dtb_out {
        fs::write(out, &dtb).map_err(|source| Error::DtbOut {
            path: out.clone(),
            source,
        })?;
    }
    Ok(Prepared {
        config: config.clone(),
        kernel,
        initrd,
        dtb,
        layout,
        warnings,
    })
}

/// What [`load`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new VM was created.
    Created,
    /// An existing VM was reinitialised (VM_REINIT) and loaded again.
    Reinitialised,
}

fn mib(bytes: u64, base: u64) -> String {
    format!("of {} MiB at {base:#x}", bytes >> 20)
}

/// Makes sure the VM's system memory is `[base, base + size)`: sets it up in a new VM,
/// checks it in a reinitialised one (FreeBSD cannot resize a segment; VM_REINIT keeps
/// memory).
fn memory(vm: &Vm, base: u64, size: u64) -> Result<(), Error> {
    let mut sysmem = Vec::new();
    for m in vm.mappings()? {
        if let Some(seg) = vm.get_memseg(m.segid)? {
            if seg.name.is_none() {
                sysmem.push(m);
            }
        }
    }
    match sysmem.as_slice() {
        [] => Ok(vm.setup_memory(base, size)?),
        [m] if m.gpa == base && m.len == size => Ok(()),
        maps => {
            let have = maps
                .iter()
                .map(|m| mib(m.len, m.gpa))
                .collect::<Vec<_>>()
                .join(", ");
            Err(Error::MemoryMismatch {
                vm: vm.name().to_string(),
                have,
                want: mib(size, base),
            })
        }
    }
}

/// Writes the image and sets the registers.
fn fill(vm: &Vm, p: &Prepared, fresh: bool) -> Result<(), Error> {
    let c = &p.config;
    let ncpus = u16::try_from(c.ncpus).unwrap_or(u16::MAX);
    vm.set_topology(Topology {
        sockets: 1,
        cores: ncpus,
        threads: 1,
        maxcpus: 0,
    })?;
    memory(vm, c.ram_base, c.ram_size)?;
    if let Err(e) = vm.attach_vgic(plat::GICD, plat::gicr(c.ncpus)) {
        // A reinitialised VM may keep its vGIC: attaching again is then refused.
        if fresh || e.errno() != Some(libc::EEXIST) {
            return Err(e.into());
        }
    }
    let mem = GuestWriter {
        mem: vm.guest_memory()?,
        vm: vm.name(),
    };
    let base = p.layout.load_base;
    for seg in &p.kernel.segments {
        let data = &p.kernel.bytes[seg.file.clone()];
        mem.write("the kernel", base + seg.offset, data)?;
        // BSS (and an Image's room up to image_size): a reinitialised VM's memory
        // still holds the last boot's bytes.
        let tail = seg.memsz - data.len() as u64;
        mem.zero(base + seg.offset + data.len() as u64, tail)?;
    }
    if let (Some(bytes), Some((start, _))) = (&p.initrd, p.layout.initrd) {
        mem.write("the initrd", start, bytes)?;
    }
    mem.write("the devicetree", p.layout.dtb, &p.dtb)?;
    let vcpu0 = vm.vcpu(0)?;
    vcpu0.set_regs(&p.boot_regs())?;
    for n in 0..c.ncpus {
        match vm.vcpu(n)?.set_reg(Reg::MpidrEl1, plat::vcpu_mpidr(n)) {
            Ok(()) => {}
            // FreeBSD 15's vmm.ko does not serve MPIDR_EL1 through VM_SET_REGISTER
            // (EINVAL); it assigns every vCPU its MPIDR itself (vmm_reset.c: Aff0 =
            // vCPU id, 16 per cluster), which is the platform's packing for the 16 vCPUs
            // we allow, and what the devicetree's cpu nodes say.
            Err(e) if e.errno() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Guest memory with errors that name the VM and what was being written.
struct GuestWriter<'a> {
    mem: VmMemory,
    vm: &'a str,
}

impl GuestWriter<'_> {
    fn write(&self, what: &'static str, addr: u64, bytes: &[u8]) -> Result<(), Error> {
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|e| Error::GuestWrite {
                vm: self.vm.to_string(),
                what,
                addr,
                why: e.to_string(),
            })
    }

    fn zero(&self, mut addr: u64, mut len: u64) -> Result<(), Error> {
        const CHUNK: usize = 1 << 20;
        let zeros = vec![0u8; CHUNK.min(usize::try_from(len).unwrap_or(CHUNK))];
        while len > 0 {
            let n = len.min(zeros.len() as u64) as usize;
            self.write("the kernel's BSS", addr, &zeros[..n])?;
            addr += n as u64;
            len -= n as u64;
        }
        Ok(())
    }
}

/// Creates VM `p.config.name` through `backend` (or reinitialises it if it exists) and
/// loads `p` into it. A VM this call created is destroyed again if anything fails; a
/// reinitialised VM is left as the failure found it (reset vCPUs, memory partly loaded).
pub fn load(backend: Arc<dyn Backend>, p: &Prepared) -> Result<Outcome, Error> {
    let name = &p.config.name;
    let (vm, outcome) = match Vm::create_with(backend.clone(), name) {
        Ok(vm) => (vm, Outcome::Created),
        Err(libvmmapi::Error::VmExists(_)) => {
            let vm = Vm::open_with(backend, name)?;
            vm.reinit().map_err(|e| match e.errno() {
                // VM_REINIT waits for every active vCPU to have left with SUSPENDED.
                Some(libc::EBUSY) => Error::Busy(name.clone()),
                _ => e.into(),
            })?;
            (vm, Outcome::Reinitialised)
        }
        Err(e) => return Err(e.into()),
    };
    match fill(&vm, p, outcome == Outcome::Created) {
        Ok(()) => Ok(outcome),
        Err(e) => {
            if outcome == Outcome::Created {
                // The load error is what the user needs; a failed destroy is secondary.
                let _ = vm.destroy();
            }
            Err(e)
        }
    }
}

/// [`prepare`] then [`load`].
pub fn run(backend: Arc<dyn Backend>, config: &Config) -> Result<(Prepared, Outcome), Error> {
    let p = prepare(config)?;
    let outcome = load(backend, &p)?;
    Ok((p, outcome))
}

/// `n` bytes from the host's getrandom(2); none if it fails (the guest then boots
/// without seeds, as it would on a machine without a bootloader RNG).
fn host_entropy(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    // SAFETY: `buf` is live, writable and `n` bytes long.
    let got = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), n, 0) };
    if usize::try_from(got).ok() == Some(n) {
        buf
    } else {
        Vec::new()
    }
}
