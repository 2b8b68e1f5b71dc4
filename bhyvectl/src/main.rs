//! bhyvectl: control and inspect vmm(4) virtual machines (see docs/man/bhyvectl.8).
//!
//! Errors are one line, `bhyvectl: vm 'NAME': <cause>`, and exit status 1, as FreeBSD's
//! bhyvectl.

mod cli;
mod cmd;

use std::process::ExitCode;

fn main() -> ExitCode {
    let opts = match cli::parse(std::env::args_os()) {
        Ok(o) => o,
        Err(e) if e.exit_code() == 0 => {
            // --help: print it and succeed.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // Usage errors: one line, exit 1 like bhyvectl.
            eprintln!("bhyvectl: {}", cli::one_line(&e));
            return ExitCode::FAILURE;
        }
    };
    let result = libvmmapi::backend_from_env()
        .map_err(cmd::CtlError::from)
        .and_then(|backend| cmd::run(&opts, backend, &mut std::io::stdout().lock()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bhyvectl: {e}");
            ExitCode::FAILURE
        }
    }
}
