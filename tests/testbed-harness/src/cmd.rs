//! Commands run as steps of a build or a test, the one way xtask, the harness and the
//! e2e helpers run them: each step has a name, is echoed on stderr before it runs, and
//! fails with an [`Error`] that names the step and its exit status.

use crate::{repo_root, Error};
use std::path::PathBuf;
use std::process::Command;

/// The workspace's cargo: the one running us ($CARGO), else `cargo` on the PATH.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The directory cargo puts the workspace's debug binaries in.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("debug")
}

/// Who echoes the steps: the program's name without the hash cargo gives test binaries
/// (`xtask`, `testbed`), so a step in a long log says which run it belongs to.
fn echo_prefix() -> String {
    let exe = std::env::args_os().next().map(PathBuf::from);
    let name = exe
        .as_deref()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.rsplit_once('-') {
        Some((base, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            base.to_string()
        }
        _ => name,
    }
}

/// Runs step `what` to completion, its output going where ours goes.
pub fn run(what: &str, cmd: &mut Command) -> Result<(), Error> {
    eprintln!("{}: {what}: {cmd:?}", echo_prefix());
    let status = cmd.status().map_err(|source| Error::Spawn {
        what: what.into(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Failed {
            what: what.into(),
            status,
            stderr: String::new(),
        })
    }
}

/// Runs step `what` quietly and returns its stdout; its stderr is part of the error
/// when it fails (unless the caller sent stderr elsewhere, e.g. inherited it).
pub fn output(what: &str, cmd: &mut Command) -> Result<String, Error> {
    let out = cmd.output().map_err(|source| Error::Spawn {
        what: what.into(),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Failed {
            what: what.into(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_step_names_itself_its_status_and_its_stderr() {
        let e = output(
            "say no",
            Command::new("sh").args(["-c", "echo no >&2; exit 3"]),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "say no failed (exit status: 3): no");
        let e = run("fail", Command::new("sh").args(["-c", "exit 2"])).unwrap_err();
        assert_eq!(e.to_string(), "fail failed (exit status: 2)");
        let e = run("nothing", &mut Command::new("/nonexistent/tool")).unwrap_err();
        assert!(e.to_string().starts_with("nothing: cannot start: "), "{e}");
        assert_eq!(
            output("echo", Command::new("echo").arg("hi")).unwrap(),
            "hi\n"
        );
    }
}
