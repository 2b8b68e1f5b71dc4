//! bhyve(8): runs a VM created and loaded by bhyveload. Exit status: 0 the guest
//! rebooted, 1 it powered off, 2 it halted, 4 an error (as FreeBSD's bhyve).

use std::process::ExitCode;

use bhyve::args::{self, Command};
use bhyve::console::{self, Output, TerminalGuard};
use bhyve::vcpu;

/// bhyve(8): "exited due to an error".
const EXIT_ERROR: u8 = 4;

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    console::restore_terminal();
    console::warn(&msg.to_string());
    ExitCode::from(EXIT_ERROR)
}

fn main() -> ExitCode {
    let args = match args::parse(std::env::args_os()) {
        Ok(Command::Run(a)) => a,
        Ok(Command::Help(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => return fail(msg),
    };
    let vm = match bhyve::prepare_with(&args, libvmmapi::backend_from_env) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };

    // Before any other thread exists, so that all of them inherit the blocked mask.
    if let Err(e) = console::handle_exit_signals(i32::from(EXIT_ERROR)) {
        return fail(format!("cannot set up signal handling: {e}"));
    }
    let _terminal = TerminalGuard;
    let (out, input): (Output, Option<Box<dyn std::io::Read + Send>>) = if args.console_on_tty {
        if let Err(e) = console::enter_raw_mode() {
            return fail(format!("cannot put the terminal in raw mode: {e}"));
        }
        (
            Output::Terminal,
            Some(Box::new(console::StdinFd(std::io::stdin()))),
        )
    } else {
        (Output::Discard, None)
    };

    let stop = vm.run(&args, out, input);
    console::restore_terminal();
    match &stop {
        vcpu::Stop::Error(msg) => console::warn(&format!("vm '{}': {msg}", args.vmname)),
        vcpu::Stop::Destroyed => {
            console::warn(&format!("vm '{}' was destroyed while running", args.vmname))
        }
        _ => {}
    }
    // The console input thread may be blocked reading the terminal: exit without
    // waiting for it (and so without destructors: remove the port sockets here).
    vmm_virtio::console::remove_sockets();
    std::process::exit(stop.status())
}
