//! The built binary, as a user runs it: exit statuses and one-line errors. On this
//! machine there is no /dev/vmm, so the backend reports that; on FreeBSD with vmm loaded
//! the same invocations name a VM that does not exist. Either way: status 1, one line.

use std::process::{Command, Output};

fn bhyvectl(args: &[&str], testbed: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bhyvectl"));
    cmd.args(args);
    match testbed {
        Some(t) => cmd.env("VMM_TESTBED", t),
        None => cmd.env_remove("VMM_TESTBED"),
    };
    cmd.output().expect("run bhyvectl")
}

fn one_error_line(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(o.stdout.is_empty(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

#[test]
fn errors_are_one_line_and_exit_1() {
    let name = format!("bhyvectl-test-nosuch-{}", std::process::id());
    let vm = format!("--vm={name}");
    let e = one_error_line(&bhyvectl(&[&vm, "--get-pc"], None));
    assert!(e.starts_with(&format!("bhyvectl: vm '{name}': ")), "{e}");
    let e = one_error_line(&bhyvectl(&["--vm=", "--create"], None));
    assert_eq!(e, "bhyvectl: vm '': VM name is empty\n");
    let e = one_error_line(&bhyvectl(&["--vm=a/b", "--create"], None));
    assert_eq!(e, "bhyvectl: vm 'a/b': VM name contains '/'\n");
    let long = format!("--vm={}", "x".repeat(230));
    let e = one_error_line(&bhyvectl(&[&long, "--destroy"], None));
    assert!(e.contains("longer than 229 bytes"), "{e}");
    let e = one_error_line(&bhyvectl(&["--list"], Some("/nonexistent/broker.sock")));
    assert!(
        e.contains("VMM_TESTBED") && e.contains("/nonexistent/broker.sock"),
        "{e}"
    );
}

#[test]
fn usage_errors_exit_1_and_help_0() {
    for args in [
        &[][..],
        &["--vm=a"],
        &["--create"],
        &["--vm=a", "--set-reg=pc"],
    ] {
        let e = one_error_line(&bhyvectl(args, None));
        assert!(
            e.starts_with("bhyvectl: ") && e.contains("--help"),
            "{args:?}: {e}"
        );
    }
    let o = bhyvectl(&["--help"], None);
    assert_eq!(o.status.code(), Some(0));
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(
        help.contains("--get-all-regs") && help.contains("--set-reg"),
        "{help}"
    );
}
