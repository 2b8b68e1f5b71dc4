//! Argument parsing, in FreeBSD bhyvectl(8)'s long-option style:
//! `bhyvectl --vm=NAME [--cpu=N] --create | --destroy | --get-all-regs | --get-REG |
//! --set-reg=NAME=VALUE | --get-stats | --get-active-cpus ...` and `bhyvectl --list`.

use clap::{Arg, ArgAction, ArgMatches, Command};
use std::ffi::OsString;
use thiserror::Error;
use vmm_sys::reg::Reg;

/// What to do, in the order it is done (create first, destroy last, as bhyvectl does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opts {
    /// `--vm`; absent only with `--list`.
    pub vm: Option<String>,
    /// `--cpu`, default 0.
    pub cpu: u32,
    pub list: bool,
    pub create: bool,
    pub set_regs: Vec<(Reg, u64)>,
    /// Registers to print: `--get-REG` in ABI order, or all of them with `--get-all-regs`.
    pub get_regs: Vec<Reg>,
    /// `--get-all-regs`: registers the kernel refuses (EINVAL) are left out rather than
    /// failing the command (FreeBSD 15's vmm.ko does not serve every register it names).
    pub all_regs: bool,
    pub get_active_cpus: bool,
    pub get_suspended_cpus: bool,
    pub get_stats: bool,
    pub force_reset: bool,
    pub force_poweroff: bool,
    pub destroy: bool,
}

/// A `--set-reg` value refused (clap puts it after the option it belongs to).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ValueError {
    #[error("'{0}' is not a number (use decimal or 0x hexadecimal)")]
    NotANumber(String),
    #[error("'{0}' is not NAME=VALUE")]
    NotNameValue(String),
    #[error("unknown register '{0}' (one of {names})", names = register_names())]
    UnknownRegister(String),
}

/// Options that do not go together, or say nothing to do.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum OptsError {
    #[error("--vm=NAME is required (or --list)")]
    NoVm,
    #[error("options other than --list need --vm=NAME")]
    ListTakesNoAction,
    #[error("nothing to do: give an action such as --create, --destroy or --get-all-regs")]
    NothingToDo,
    #[error("--force-reset and --force-poweroff exclude each other")]
    ResetAndPoweroff,
}

fn register_names() -> String {
    Reg::all().map(Reg::name).collect::<Vec<_>>().join(", ")
}

fn get_flag(reg: Reg) -> String {
    format!("get-{}", reg.name())
}

/// Parses a register value: `0x` hexadecimal or decimal.
pub fn parse_value(s: &str) -> Result<u64, ValueError> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse::<u64>(),
    };
    r.map_err(|_| ValueError::NotANumber(s.into()))
}

/// Parses `NAME=VALUE` for `--set-reg`.
pub fn parse_set_reg(s: &str) -> Result<(Reg, u64), ValueError> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| ValueError::NotNameValue(s.into()))?;
    let reg = Reg::from_name(&name.to_ascii_lowercase())
        .ok_or_else(|| ValueError::UnknownRegister(name.into()))?;
    Ok((reg, parse_value(value)?))
}

fn flag(name: &'static str, help: &'static str) -> Arg {
    Arg::new(name)
        .long(name)
        .action(ArgAction::SetTrue)
        .help(help)
}

pub fn command() -> Command {
    let mut cmd = Command::new("bhyvectl")
        .about("Control and inspect vmm(4) virtual machines")
        .arg(
            Arg::new("vm")
                .long("vm")
                .value_name("NAME")
                .help("The virtual machine to act on"),
        )
        .arg(
            Arg::new("cpu")
                .long("cpu")
                .value_name("N")
                .value_parser(clap::value_parser!(u32))
                .default_value("0")
                .help("The vCPU register and statistics options act on"),
        )
        .arg(flag("list", "List all virtual machines, one per line"))
        .arg(flag("create", "Create the virtual machine"))
        .arg(flag("destroy", "Destroy the virtual machine"))
        .arg(flag("get-all-regs", "Print every register of the vCPU"))
        .arg(
            Arg::new("set-reg")
                .long("set-reg")
                .value_name("NAME=VALUE")
                .action(ArgAction::Append)
                .value_parser(parse_set_reg)
                .help("Set a register of the vCPU (VALUE decimal or 0x hexadecimal)"),
        )
        .arg(flag("get-stats", "Print the vCPU's statistics"))
        .arg(flag("get-active-cpus", "Print the activated vCPUs"))
        .arg(flag("get-suspended-cpus", "Print the suspended vCPUs"))
        .arg(flag(
            "force-reset",
            "Suspend the virtual machine for a reset",
        ))
        .arg(flag(
            "force-poweroff",
            "Suspend the virtual machine for a power-off",
        ));
    for reg in Reg::all() {
        let name = get_flag(reg);
        let mut arg = Arg::new(name.clone())
            .long(name.clone())
            .action(ArgAction::SetTrue)
            .help(format!("Print register {}", reg.name()))
            .hide(true);
        if reg.name().contains('_') {
            arg = arg.alias(name.replace('_', "-"));
        }
        cmd = cmd.arg(arg);
    }
    cmd.after_help("Per-register options: --get-x0 ... --get-x29, --get-lr, --get-sp, --get-pc, --get-cpsr, --get-sctlr_el1, --get-ttbr0_el1, --get-ttbr1_el1, --get-tcr_el1, --get-tcr2_el1, --get-mpidr_el1.")
}

fn from_matches(m: &ArgMatches) -> Result<Opts, OptsError> {
    let on = |id: &str| m.get_flag(id);
    let mut get_regs: Vec<Reg> = if on("get-all-regs") {
        Reg::all().collect()
    } else {
        Reg::all().filter(|r| on(&get_flag(*r))).collect()
    };
    get_regs.dedup();
    let opts = Opts {
        vm: m.get_one::<String>("vm").cloned(),
        cpu: m.get_one::<u32>("cpu").copied().unwrap_or(0),
        list: on("list"),
        create: on("create"),
        set_regs: m
            .get_many::<(Reg, u64)>("set-reg")
            .map(|v| v.copied().collect())
            .unwrap_or_default(),
        get_regs,
        all_regs: on("get-all-regs"),
        get_active_cpus: on("get-active-cpus"),
        get_suspended_cpus: on("get-suspended-cpus"),
        get_stats: on("get-stats"),
        force_reset: on("force-reset"),
        force_poweroff: on("force-poweroff"),
        destroy: on("destroy"),
    };
    let acts_on_vm = opts.create
        || opts.destroy
        || !opts.set_regs.is_empty()
        || !opts.get_regs.is_empty()
        || opts.get_active_cpus
        || opts.get_suspended_cpus
        || opts.get_stats
        || opts.force_reset
        || opts.force_poweroff;
    match (&opts.vm, opts.list, acts_on_vm) {
        (None, false, _) => Err(OptsError::NoVm),
        (None, true, true) => Err(OptsError::ListTakesNoAction),
        (Some(_), false, false) => Err(OptsError::NothingToDo),
        _ if opts.force_reset && opts.force_poweroff => Err(OptsError::ResetAndPoweroff),
        _ => Ok(opts),
    }
}

/// Parses the command line (`args` includes the program name). `Err` carries clap's
/// error, already formatted for the terminal (help and version are errors too, with
/// exit code 0).
pub fn parse<I, T>(args: I) -> Result<Opts, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut cmd = command();
    let m = cmd.try_get_matches_from_mut(args)?;
    from_matches(&m).map_err(|msg| cmd.error(clap::error::ErrorKind::ArgumentConflict, msg))
}

/// A usage error as one line: clap's message without its "error: " prefix, usage and
/// tips, followed by a pointer to --help.
pub fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments");
    let msg = first.strip_prefix("error: ").unwrap_or(first).trim_end();
    format!("{msg} (see bhyvectl --help)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Opts, clap::Error> {
        parse(std::iter::once("bhyvectl").chain(args.iter().copied()))
    }

    #[test]
    fn freebsd_style_options() {
        let o = p(&[
            "--vm=vm0",
            "--cpu=1",
            "--get-pc",
            "--get-x0",
            "--get-sctlr_el1",
        ])
        .unwrap();
        assert_eq!(o.vm.as_deref(), Some("vm0"));
        assert_eq!(o.cpu, 1);
        assert_eq!(o.get_regs, [Reg::X(0), Reg::Pc, Reg::SctlrEl1]);
        let o = p(&["--vm", "vm0", "--get-sctlr-el1"]).unwrap();
        assert_eq!(o.get_regs, [Reg::SctlrEl1]);
        let o = p(&["--vm=a", "--get-all-regs", "--get-pc"]).unwrap();
        assert_eq!(o.get_regs.len(), 40);
        let o = p(&["--vm=a", "--create", "--destroy"]).unwrap();
        assert!(o.create && o.destroy && o.cpu == 0);
        let o = p(&["--list"]).unwrap();
        assert!(o.list && o.vm.is_none());
        let o = p(&[
            "--vm=a",
            "--get-stats",
            "--get-active-cpus",
            "--force-poweroff",
        ])
        .unwrap();
        assert!(o.get_stats && o.get_active_cpus && o.force_poweroff);
    }

    #[test]
    fn set_reg_values() {
        let o = p(&[
            "--vm=a",
            "--set-reg=pc=0x80000000",
            "--set-reg=x1=42",
            "--set-reg=X2=0XfF",
        ])
        .unwrap();
        assert_eq!(
            o.set_regs,
            [(Reg::Pc, 0x8000_0000), (Reg::X(1), 42), (Reg::X(2), 255)]
        );
        assert_eq!(parse_set_reg("x30=1"), Ok((Reg::Lr, 1)));
        assert!(parse_set_reg("pc").is_err());
        assert!(parse_set_reg("pc=").is_err());
        assert!(parse_set_reg("pc=0x").is_err());
        assert!(parse_set_reg("pc=12abc").is_err());
        assert!(parse_set_reg("pc=0x1_0000_0000_0000_0000").is_err());
        assert!(parse_set_reg("x31=0")
            .unwrap_err()
            .to_string()
            .starts_with("unknown register 'x31' (one of x0, x1, "));
        assert_eq!(
            parse_set_reg("pc").unwrap_err().to_string(),
            "'pc' is not NAME=VALUE"
        );
        assert_eq!(
            parse_value("12abc").unwrap_err().to_string(),
            "'12abc' is not a number (use decimal or 0x hexadecimal)"
        );
        assert_eq!(parse_value("18446744073709551615"), Ok(u64::MAX));
        assert!(parse_value("18446744073709551616").is_err());
        assert!(p(&["--vm=a", "--set-reg=foo=1"]).is_err());
    }

    #[test]
    fn usage_errors() {
        assert!(p(&[]).is_err());
        assert!(p(&["--create"]).is_err(), "no --vm");
        assert!(p(&["--vm=a"]).is_err(), "no action");
        assert!(p(&["--list", "--get-pc"]).is_err());
        assert!(p(&["--vm=a", "--force-reset", "--force-poweroff"]).is_err());
        assert!(p(&["--vm=a", "--get-x31"]).is_err());
        assert!(p(&["--vm=a", "--cpu=-1", "--get-pc"]).is_err());
        assert!(p(&["--vm=a", "--bogus"]).is_err());
        let e = p(&["--vm=a"]).unwrap_err();
        assert_eq!(
            one_line(&e),
            "nothing to do: give an action such as --create, --destroy or --get-all-regs \
             (see bhyvectl --help)"
        );
        let e = p(&["--vm=a", "--set-reg=pc"]).unwrap_err();
        assert!(
            one_line(&e).contains("'pc' is not NAME=VALUE"),
            "{}",
            one_line(&e)
        );
        assert!(!one_line(&e).contains('\n'));
        let help = p(&["--help"]).unwrap_err();
        assert_eq!(help.exit_code(), 0);
    }
}
