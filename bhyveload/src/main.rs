//! bhyveload(8): see the library crate and docs/man/bhyveload.8.
//!
//! Exit status: 0 when the VM is loaded, 1 with one line `bhyveload: <cause>` on stderr
//! otherwise (FreeBSD's bhyveload also exits 1 on failure).

use std::process::ExitCode;

use bhyveload::boot;
use bhyveload::cli::{self, Parsed};
use bhyveload::Error;

fn run() -> Result<(), Error> {
    let config = match cli::parse(std::env::args_os())? {
        Parsed::Help(text) => {
            print!("{text}");
            return Ok(());
        }
        Parsed::Run(c) => c,
    };
    // Every file and argument is checked before the backend is even opened.
    let prepared = boot::prepare(&config)?;
    for w in &prepared.warnings {
        eprintln!("bhyveload: warning: {w}");
    }
    let backend = libvmmapi::backend_from_env()?;
    boot::load(backend, &prepared)?;
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bhyveload: {e}");
            ExitCode::FAILURE
        }
    }
}
