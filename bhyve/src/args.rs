//! The command line: `bhyve [-b] [-c ncpus] [-m size] [-o key=value]... [-s slot,device[,options]]... vmname`.
//!
//! clap splits the words; every value is then checked here so that a bad one is
//! refused with one line naming the flag and the cause, before any VM is touched.

use clap::Parser;
use libvmmapi::size::{parse_memsize, NumberError};
use thiserror::Error;
use vmm_platform::{LayoutError, MAX_VCPUS, VIRTIO_MMIO_SLOTS};

/// The raw command line as clap reads it.
#[derive(Parser, Debug)]
#[command(
    name = "bhyve",
    about = "Run a virtual machine created and loaded by bhyveload",
    disable_version_flag = true
)]
struct RawArgs {
    /// Put the guest console on this terminal (raw mode); without it console output is discarded.
    #[arg(short = 'b')]
    console: bool,
    /// Number of vCPUs; must match the VM's topology when given.
    #[arg(short = 'c', value_name = "ncpus")]
    ncpus: Option<String>,
    /// Guest memory size (e.g. 128M, 1G, 134217728); must match the VM when given.
    #[arg(short = 'm', value_name = "size")]
    memsize: Option<String>,
    /// A configuration option, `key=value`: `console=pl011`, `console=ns16550` (which UART
    /// is the console) or `console=stdio` (the same as -b).
    #[arg(short = 'o', value_name = "key=value")]
    options: Vec<String>,
    /// A virtio-mmio slot: `slot,device[,options]`, slot 0..7.
    #[arg(short = 's', value_name = "slot,device[,options]")]
    slots: Vec<String>,
    /// The VM to run.
    vmname: String,
}

/// Which UART is the guest console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsoleDevice {
    /// The PL011 at [`vmm_platform::PL011`], the devicetree's stdout-path.
    #[default]
    Pl011,
    /// The NS16550A at [`vmm_platform::NS16550`].
    Ns16550,
}

impl ConsoleDevice {
    pub fn name(self) -> &'static str {
        match self {
            ConsoleDevice::Pl011 => "pl011",
            ConsoleDevice::Ns16550 => "ns16550",
        }
    }
}

/// One `-s` slot specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotSpec {
    /// The virtio-mmio slot, 0..[`VIRTIO_MMIO_SLOTS`].
    pub slot: u32,
    pub device: String,
    /// Everything after the device name's comma, passed to the device as is.
    pub options: Option<String>,
}

impl SlotSpec {
    /// The specification as the user wrote it (for messages).
    pub fn spec(&self) -> String {
        match &self.options {
            Some(o) => format!("{},{},{o}", self.slot, self.device),
            None => format!("{},{}", self.slot, self.device),
        }
    }
}

/// The checked command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// `-b`: the console is this terminal.
    pub console_on_tty: bool,
    pub console: ConsoleDevice,
    pub ncpus: Option<u32>,
    pub memsize: Option<u64>,
    pub slots: Vec<SlotSpec>,
    pub vmname: String,
}

/// A bad command line. Each message is one line naming the flag and the cause.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ArgError {
    /// clap's own complaint (unknown flag, missing value, missing vmname) on one line,
    /// with our usage.
    #[error("{0}")]
    Usage(String),
    #[error("-c {0}: the number of vCPUs must be an integer from 1 to {MAX_VCPUS}")]
    BadCpus(String),
    #[error("-m: {0}")]
    BadSize(NumberError),
    #[error("-m {value}: {cause}")]
    SizeOutOfRange { value: String, cause: LayoutError },
    #[error("-s {spec}: {why}")]
    BadSlot { spec: String, why: SlotError },
    #[error("-o {0}: expected key=value")]
    BadOption(String),
    #[error("-o {key}={value}: {why}")]
    BadOptionValue {
        key: String,
        value: String,
        why: &'static str,
    },
    #[error("-o {0}: unknown option (known: console)")]
    UnknownOption(String),
    #[error("{0}")]
    BadName(String),
}

/// Why a `-s` specification is refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SlotError {
    #[error("expected slot,device[,options]")]
    Syntax,
    #[error("slot '{0}' is not a number from 0 to {max}", max = VIRTIO_MMIO_SLOTS - 1)]
    BadNumber(String),
    #[error("slot {0} is used twice")]
    Duplicate(u32),
    #[error("the device name is empty")]
    EmptyDevice,
    #[error("unknown device '{0}' (known: {known})", known = KNOWN_DEVICES.join(", "))]
    UnknownDevice(String),
    #[error(transparent)]
    BadOptions(#[from] crate::slots::OptionError),
}

/// The `-s` device names that exist (crate::slots builds them).
pub const KNOWN_DEVICES: &[&str] = crate::slots::DEVICES;

/// What parsing the command line asks of `main`.
#[derive(Debug)]
pub enum Command {
    Run(Args),
    /// `-h`/`--help`: print this text on stdout and exit 0.
    Help(String),
}

/// Parses `argv` (including the program name).
///
/// A usage error from clap is returned as [`ArgError::Usage`], a bad value as the other
/// [`ArgError`]s: each a one-line failure for `main` to print.
pub fn parse<I, T>(argv: I) -> Result<Command, ArgError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let raw = match RawArgs::try_parse_from(argv) {
        Ok(raw) => raw,
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
            return Ok(Command::Help(e.render().to_string()));
        }
        Err(e) => return Err(ArgError::Usage(one_line(&e.render().to_string()))),
    };
    check(raw).map(Command::Run)
}

/// The usage line printed with a usage error.
pub const USAGE: &str =
    "usage: bhyve [-b] [-c ncpus] [-m size] [-o key=value] [-s slot,device[,options]] vmname";

/// clap's message ("error: ...", details, a blank line, "Usage: ...") as one line
/// followed by our usage.
fn one_line(text: &str) -> String {
    let body = text.split("\n\n").next().unwrap_or(text);
    let body = body.strip_prefix("error: ").unwrap_or(body);
    let words: Vec<&str> = body.split_whitespace().collect();
    format!("{} ({USAGE})", words.join(" "))
}

fn check(raw: RawArgs) -> Result<Args, ArgError> {
    vmm_sys::validate_vm_name(raw.vmname.as_bytes())
        .map_err(|e| ArgError::BadName(e.to_string()))?;
    let ncpus = raw.ncpus.as_deref().map(parse_ncpus).transpose()?;
    let memsize = raw
        .memsize
        .as_deref()
        .map(|v| {
            let size = parse_memsize(v).map_err(ArgError::BadSize)?;
            check_memsize(size).map_err(|cause| ArgError::SizeOutOfRange {
                value: v.to_string(),
                cause,
            })?;
            Ok(size)
        })
        .transpose()?;
    let mut console = ConsoleDevice::default();
    let mut console_on_tty = raw.console;
    for opt in &raw.options {
        let (key, value) = opt
            .split_once('=')
            .ok_or_else(|| ArgError::BadOption(opt.clone()))?;
        match key {
            // One key names both which UART is the console and, with "stdio" as in
            // FreeBSD's `-o console=stdio`, that it is on this terminal (like -b).
            "console" => match value {
                "pl011" => console = ConsoleDevice::Pl011,
                "ns16550" | "ns16550a" => console = ConsoleDevice::Ns16550,
                "stdio" => console_on_tty = true,
                _ => {
                    return Err(ArgError::BadOptionValue {
                        key: key.into(),
                        value: value.into(),
                        why: "the console is pl011, ns16550 or stdio",
                    })
                }
            },
            _ => return Err(ArgError::UnknownOption(opt.clone())),
        }
    }
    let slots = parse_slots(&raw.slots)?;
    check_devices(&slots, &raw.slots)?;
    Ok(Args {
        console_on_tty,
        console,
        ncpus,
        memsize,
        slots,
        vmname: raw.vmname,
    })
}

/// A memory size the guest platform can hold at some RAM base: at least
/// [`vmm_platform::RAM_SIZE_MIN`], and no more than fits between the lowest RAM base and
/// the end of the guest physical address space. (bhyveload checks the exact layout;
/// here the VM's own size is compared with it later.)
fn check_memsize(size: u64) -> Result<(), LayoutError> {
    if size < vmm_platform::RAM_SIZE_MIN {
        return Err(LayoutError::TooSmall);
    }
    if size > vmm_platform::IPA_LIMIT - vmm_platform::RAM_BASE_MIN {
        return Err(LayoutError::PastIpaLimit);
    }
    Ok(())
}

fn parse_ncpus(v: &str) -> Result<u32, ArgError> {
    match v.parse::<u32>() {
        Ok(n) if (1..=MAX_VCPUS).contains(&n) => Ok(n),
        _ => Err(ArgError::BadCpus(v.to_string())),
    }
}

/// Parses every `-s` specification and checks that no slot is used twice.
pub fn parse_slots(specs: &[String]) -> Result<Vec<SlotSpec>, ArgError> {
    let mut out: Vec<SlotSpec> = Vec::with_capacity(specs.len());
    for spec in specs {
        let err = |why| ArgError::BadSlot {
            spec: spec.clone(),
            why,
        };
        let parsed = parse_slot(spec).map_err(err)?;
        if out.iter().any(|s| s.slot == parsed.slot) {
            return Err(err(SlotError::Duplicate(parsed.slot)));
        }
        out.push(parsed);
    }
    Ok(out)
}

/// Refuses a slot whose device has no model ([`KNOWN_DEVICES`]) or whose options the
/// device does not take.
pub fn check_devices(slots: &[SlotSpec], specs: &[String]) -> Result<(), ArgError> {
    for (slot, spec) in slots.iter().zip(specs) {
        let bad = |why| ArgError::BadSlot {
            spec: spec.clone(),
            why,
        };
        if !KNOWN_DEVICES.contains(&slot.device.as_str()) {
            return Err(bad(SlotError::UnknownDevice(slot.device.clone())));
        }
        crate::slots::check_options(slot).map_err(|e| bad(e.into()))?;
    }
    Ok(())
}

/// Parses one `slot,device[,options]`.
pub fn parse_slot(spec: &str) -> Result<SlotSpec, SlotError> {
    let (slot, rest) = spec.split_once(',').ok_or(SlotError::Syntax)?;
    let (device, options) = match rest.split_once(',') {
        Some((d, o)) => (d, Some(o.to_string())),
        None => (rest, None),
    };
    let n = match slot.trim().parse::<u32>() {
        Ok(n) if n < VIRTIO_MMIO_SLOTS => n,
        _ => return Err(SlotError::BadNumber(slot.to_string())),
    };
    if device.trim().is_empty() {
        return Err(SlotError::EmptyDevice);
    }
    Ok(SlotSpec {
        slot: n,
        device: device.trim().to_string(),
        options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parsed command line, or the message bhyve prints for it.
    fn run(argv: &[&str]) -> Result<Args, String> {
        match parse(argv.iter().copied()).map_err(|e| e.to_string())? {
            Command::Run(a) => Ok(a),
            Command::Help(_) => Err("help".into()),
        }
    }

    #[test]
    fn minimal_and_full() {
        let a = run(&["bhyve", "vm0"]).unwrap();
        assert_eq!(
            a,
            Args {
                console_on_tty: false,
                console: ConsoleDevice::Pl011,
                ncpus: None,
                memsize: None,
                slots: vec![],
                vmname: "vm0".into()
            }
        );
        let a = run(&[
            "bhyve",
            "-b",
            "-c",
            "2",
            "-m",
            "1G",
            "-o",
            "console=ns16550",
            "guest",
        ])
        .unwrap();
        assert!(a.console_on_tty);
        assert_eq!(a.ncpus, Some(2));
        assert_eq!(a.memsize, Some(1 << 30));
        assert_eq!(a.console, ConsoleDevice::Ns16550);
        assert_eq!(a.vmname, "guest");
        // FreeBSD's spelling of -b, combined with the UART choice in either order.
        for argv in [
            ["bhyve", "-o", "console=stdio", "-o", "console=ns16550", "g"],
            ["bhyve", "-o", "console=ns16550", "-o", "console=stdio", "g"],
        ] {
            let a = run(&argv).unwrap();
            assert!(a.console_on_tty);
            assert_eq!(a.console, ConsoleDevice::Ns16550);
        }
    }

    #[test]
    fn sizes() {
        let m = |v: &str| run(&["bhyve", "-m", v, "vm"]).map(|a| a.memsize);
        assert_eq!(m("128M"), Ok(Some(128 << 20)));
        assert_eq!(m("134217728"), Ok(Some(128 << 20)));
        // A bare number below 1 MiB is MiB, as FreeBSD's bhyve reads it.
        assert_eq!(m("256"), Ok(Some(256 << 20)));
        assert_eq!(
            m("0").unwrap_err(),
            "-m 0: memory size must be at least 2 MiB"
        );
        assert_eq!(
            m("1M").unwrap_err(),
            "-m 1M: memory size must be at least 2 MiB"
        );
        assert_eq!(
            m("512G").unwrap_err(),
            "-m 512G: memory would end past the 39-bit guest physical address space"
        );
        assert_eq!(
            m("12Q").unwrap_err(),
            "-m: '12Q' has an unknown suffix (use K, M, G or T)"
        );
        assert_eq!(
            m("99999999999T").unwrap_err(),
            "-m: '99999999999T' is too large"
        );
    }

    #[test]
    fn bad_values_name_the_flag() {
        assert_eq!(
            run(&["bhyve", "-c", "0", "vm"]).unwrap_err(),
            "-c 0: the number of vCPUs must be an integer from 1 to 16"
        );
        assert!(run(&["bhyve", "-c", "17", "vm"]).is_err());
        assert!(run(&["bhyve", "-c", "two", "vm"]).is_err());
        assert_eq!(
            run(&["bhyve", "-m", "lots", "vm"]).unwrap_err(),
            "-m: 'lots' is not a number"
        );
        assert_eq!(
            run(&["bhyve", "-o", "console=vga", "vm"]).unwrap_err(),
            "-o console=vga: the console is pl011, ns16550 or stdio"
        );
        assert_eq!(
            run(&["bhyve", "-o", "console", "vm"]).unwrap_err(),
            "-o console: expected key=value"
        );
        assert!(run(&["bhyve", "-o", "colour=blue", "vm"])
            .unwrap_err()
            .contains("unknown option"));
    }

    #[test]
    fn bad_names() {
        assert_eq!(run(&["bhyve", "a/b"]).unwrap_err(), "VM name contains '/'");
        assert_eq!(run(&["bhyve", ""]).unwrap_err(), "VM name is empty");
        let long = "x".repeat(230);
        assert!(run(&["bhyve", &long]).unwrap_err().contains("longer"));
    }

    #[test]
    fn usage_errors_are_one_line() {
        assert!(matches!(parse(["bhyve"]), Err(ArgError::Usage(_))));
        let e = run(&["bhyve"]).unwrap_err();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("vmname"), "{e}");
        let e = run(&["bhyve", "-x", "vm"]).unwrap_err();
        assert!(!e.contains('\n') && e.contains("-x"), "{e}");
        assert!(matches!(
            parse(["bhyve", "-h"]).unwrap(),
            Command::Help(t) if t.contains("slot,device")
        ));
    }

    #[test]
    fn slot_syntax() {
        assert_eq!(
            parse_slot("3,virtio-blk,disk.img,ro"),
            Ok(SlotSpec {
                slot: 3,
                device: "virtio-blk".into(),
                options: Some("disk.img,ro".into())
            })
        );
        assert_eq!(
            parse_slot("0,virtio-rnd"),
            Ok(SlotSpec {
                slot: 0,
                device: "virtio-rnd".into(),
                options: None
            })
        );
        assert_eq!(parse_slot("7,x").map(|s| s.slot), Ok(7));
        assert_eq!(parse_slot("8,x"), Err(SlotError::BadNumber("8".into())));
        assert_eq!(parse_slot("-1,x"), Err(SlotError::BadNumber("-1".into())));
        assert_eq!(parse_slot("a,x"), Err(SlotError::BadNumber("a".into())));
        assert_eq!(parse_slot(",x"), Err(SlotError::BadNumber("".into())));
        assert_eq!(parse_slot("1,"), Err(SlotError::EmptyDevice));
        assert_eq!(parse_slot("1,,opts"), Err(SlotError::EmptyDevice));
        assert_eq!(parse_slot("1"), Err(SlotError::Syntax));
        assert_eq!(parse_slot(""), Err(SlotError::Syntax));
    }

    #[test]
    fn slot_list() {
        let specs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ok = parse_slots(&specs(&["2,a", "5,b,x=1"])).unwrap();
        assert_eq!(ok.iter().map(|s| s.slot).collect::<Vec<_>>(), [2, 5]);
        assert_eq!(
            parse_slots(&specs(&["2,a", "2,b"])).unwrap_err(),
            ArgError::BadSlot {
                spec: "2,b".into(),
                why: SlotError::Duplicate(2)
            }
        );
        assert_eq!(
            parse_slots(&specs(&["2,a", "9,b"])).unwrap_err(),
            ArgError::BadSlot {
                spec: "9,b".into(),
                why: SlotError::BadNumber("9".into())
            }
        );
        // An unknown device is refused, naming the ones that exist.
        let e = run(&["bhyve", "-s", "0,virtio-scsi", "vm"]).unwrap_err();
        assert_eq!(
            e,
            format!(
                "-s 0,virtio-scsi: unknown device 'virtio-scsi' (known: {})",
                KNOWN_DEVICES.join(", ")
            )
        );
        for d in ["virtio-blk", "virtio-net", "virtio-rnd"] {
            assert!(KNOWN_DEVICES.contains(&d), "{d}");
        }
        // Options are checked with the command line; files only when bhyve opens them.
        let a = run(&[
            "bhyve",
            "-s",
            "0,virtio-blk,disk.img,ro",
            "-s",
            "7,virtio-rnd",
            "vm",
        ]);
        assert_eq!(a.unwrap().slots.len(), 2);
        assert_eq!(
            run(&["bhyve", "-s", "0,virtio-blk,disk.img,rw", "vm"]).unwrap_err(),
            "-s 0,virtio-blk,disk.img,rw: virtio-blk: unknown option 'rw' (known: ro)"
        );
        assert_eq!(
            run(&["bhyve", "-s", "0,virtio-blk", "vm"]).unwrap_err(),
            "-s 0,virtio-blk: virtio-blk needs a disk image: virtio-blk,PATH[,ro]"
        );
        assert_eq!(
            run(&["bhyve", "-s", "1,virtio-rnd,fast", "vm"]).unwrap_err(),
            "-s 1,virtio-rnd,fast: virtio-rnd takes no options"
        );
        assert!(run(&["bhyve", "-s", "0,", "vm"])
            .unwrap_err()
            .contains("device name is empty"));
    }
}
