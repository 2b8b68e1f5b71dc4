//! The command line:
//! `bhyveload [-k kernel] [-m size] [-c ncpus] [-e word]... [-i initrd] [-t dtb]
//! [-b membase] [-l loadaddr] [--dtb-out FILE] vmname`.
//!
//! clap splits the words; every value is then checked here, so a bad one is refused with
//! one line naming the flag and the cause before any file is read or any VM touched.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;
use thiserror::Error;
use vmm_platform as plat;

use libvmmapi::size::{parse_addr, parse_memsize, NumberError};

#[derive(Parser, Debug)]
#[command(
    name = "bhyveload",
    about = "Create (or reinitialise) a VM and load an arm64 kernel, initrd and devicetree into it",
    disable_version_flag = true
)]
struct RawArgs {
    /// Kernel: an arm64 Image (also gzip-compressed), an ELF64 aarch64 kernel, or with -l a raw binary.
    #[arg(short = 'k', value_name = "kernel")]
    kernel: Option<PathBuf>,
    /// Guest memory size: 128M, 1G, 512K or bytes; a bare number below 1M counts in MiB.
    #[arg(short = 'm', value_name = "size")]
    memsize: Option<String>,
    /// Number of vCPUs (1 to 16).
    #[arg(short = 'c', value_name = "ncpus")]
    ncpus: Option<String>,
    /// One word of the kernel command line (/chosen/bootargs); repeat for more, in order.
    #[arg(short = 'e', value_name = "word", allow_hyphen_values = true)]
    words: Vec<String>,
    /// Initial ramdisk.
    #[arg(short = 'i', value_name = "initrd")]
    initrd: Option<PathBuf>,
    /// Use this devicetree blob instead of generating one.
    #[arg(short = 't', value_name = "dtb")]
    dtb: Option<PathBuf>,
    /// Guest physical address where RAM starts (default 0x80000000).
    #[arg(short = 'b', value_name = "membase")]
    membase: Option<String>,
    /// Load address: the 2 MiB-aligned base for an Image or ELF kernel; a raw binary is loaded and entered there.
    #[arg(short = 'l', value_name = "loadaddr")]
    loadaddr: Option<String>,
    /// Also write the final devicetree blob to FILE.
    #[arg(long = "dtb-out", value_name = "FILE")]
    dtb_out: Option<PathBuf>,
    /// Name of the VM.
    #[arg(value_name = "vmname")]
    vmname: String,
}

/// A checked command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub name: String,
    pub kernel: PathBuf,
    pub ram_base: u64,
    pub ram_size: u64,
    pub ncpus: u32,
    /// The `-e` words, in order.
    pub words: Vec<String>,
    pub initrd: Option<PathBuf>,
    pub dtb: Option<PathBuf>,
    pub load_addr: Option<u64>,
    pub dtb_out: Option<PathBuf>,
}

impl Config {
    /// /chosen/bootargs: the `-e` words joined by spaces, or None without `-e`.
    pub fn bootargs(&self) -> Option<String> {
        (!self.words.is_empty()).then(|| self.words.join(" "))
    }
}

/// Why a command line is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ArgError {
    /// clap's own complaint (unknown flag, missing value, missing vmname).
    #[error("{0}")]
    Usage(String),
    #[error("no kernel given: use -k FILE")]
    NoKernel,
    #[error("-m: {0}")]
    Size(NumberError),
    #[error("-b: {0}")]
    Base(NumberError),
    #[error("-l: {0}")]
    Load(NumberError),
    #[error("-c: '{0}' is not a number of vCPUs from 1 to {max}", max = plat::MAX_VCPUS)]
    Ncpus(String),
    #[error("-e: empty word")]
    EmptyWord,
    #[error("memory of {size:#x} bytes at {base:#x}: {cause}")]
    Ram {
        base: u64,
        size: u64,
        cause: plat::LayoutError,
    },
    #[error("{0}")]
    Name(vmm_sys::NameError),
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// `-h`/`--help`: print this and exit 0.
    Help(String),
    Run(Config),
}

/// Parses and checks `args` (argv, program name first).
pub fn parse<I, T>(args: I) -> Result<Parsed, ArgError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let raw = match RawArgs::try_parse_from(args) {
        Ok(raw) => raw,
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
            return Ok(Parsed::Help(e.render().to_string()));
        }
        Err(e) => return Err(ArgError::Usage(first_line(&e.render().to_string()))),
    };
    vmm_sys::validate_vm_name(raw.vmname.as_bytes()).map_err(ArgError::Name)?;
    let kernel = raw.kernel.ok_or(ArgError::NoKernel)?;
    let ram_size = match &raw.memsize {
        Some(v) => parse_memsize(v).map_err(ArgError::Size)?,
        None => plat::RAM_SIZE_DEFAULT,
    };
    let ram_base = match &raw.membase {
        Some(v) => parse_addr(v).map_err(ArgError::Base)?,
        None => plat::RAM_BASE_DEFAULT,
    };
    plat::check_ram(ram_base, ram_size).map_err(|cause| ArgError::Ram {
        base: ram_base,
        size: ram_size,
        cause,
    })?;
    let ncpus = match &raw.ncpus {
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=plat::MAX_VCPUS).contains(&n) => n,
            _ => return Err(ArgError::Ncpus(v.clone())),
        },
        None => 1,
    };
    if raw.words.iter().any(|w| w.is_empty()) {
        return Err(ArgError::EmptyWord);
    }
    let load_addr = raw
        .loadaddr
        .as_deref()
        .map(parse_addr)
        .transpose()
        .map_err(ArgError::Load)?;
    Ok(Parsed::Run(Config {
        name: raw.vmname,
        kernel,
        ram_base,
        ram_size,
        ncpus,
        words: raw.words,
        initrd: raw.initrd,
        dtb: raw.dtb,
        load_addr,
        dtb_out: raw.dtb_out,
    }))
}

/// clap's message without its "error: " prefix, usage and help hint, on one line
/// ("the following required arguments were not provided: <vmname>").
fn first_line(rendered: &str) -> String {
    let msg = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more"))
        .collect::<Vec<_>>()
        .join(" ");
    let msg = msg.strip_prefix("error: ").unwrap_or(&msg).to_string();
    if msg.is_empty() {
        "bad arguments (see bhyveload -h)".to_string()
    } else {
        msg
    }
}
