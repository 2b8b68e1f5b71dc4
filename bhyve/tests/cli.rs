//! The `bhyve` binary as a user runs it: bad input is refused with one line on stderr
//! and status 4 before any VM is touched.

use std::process::Command;

fn bhyve(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bhyve"))
        .args(args)
        // Never reach a real vmm from a test.
        .env("VMM_TESTBED", "/nonexistent/bhyve-test.sock")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn one_error_line(args: &[&str], expect: &str) {
    let (code, stdout, stderr) = bhyve(args);
    assert_eq!(code, 4, "{args:?}: {stderr}");
    assert!(stdout.is_empty(), "{args:?}: {stdout}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    assert!(stderr.starts_with("bhyve: "), "{stderr}");
    assert!(stderr.contains(expect), "{args:?}: {stderr}");
}

#[test]
fn bad_arguments() {
    one_error_line(&[], "vmname");
    one_error_line(&["-z", "vm"], "-z");
    one_error_line(&["-c", "0", "vm"], "-c 0");
    one_error_line(&["-m", "12X", "vm"], "-m: '12X' has an unknown suffix");
    one_error_line(&["-s", "8,virtio-net", "vm"], "slot '8'");
    one_error_line(&["-s", "1,a", "-s", "1,b", "vm"], "slot 1 is used twice");
    one_error_line(
        &["-s", "1,virtio-blk,disk.img", "vm"],
        "no -s devices are implemented yet",
    );
    one_error_line(&["-o", "console=vga", "vm"], "pl011, ns16550 or stdio");
    one_error_line(&["a/b"], "'/'");
}

/// Every bad input issue 2 lists that reaches bhyve: one line, status 4, refused before
/// the backend is even asked (its complaint names the testbed socket).
#[test]
fn every_bad_input_is_refused_before_any_vm() {
    let long = "n".repeat(230);
    for (args, cause) in [
        (
            &["-m", "0", "vm"][..],
            "-m 0: memory size must be at least 2 MiB",
        ),
        (
            &["-m", "1M", "vm"],
            "-m 1M: memory size must be at least 2 MiB",
        ),
        (
            &["-m", "512G", "vm"],
            "-m 512G: memory would end past the 39-bit guest physical address space",
        ),
        (&["-m", "lots", "vm"], "-m: 'lots' is not a number"),
        (&["-c", "17", "vm"], "-c 17"),
        (&[""], "VM name is empty"),
        (&[long.as_str()], "VM name is longer than 229 bytes"),
        (&["a/b"], "VM name contains '/'"),
    ] {
        one_error_line(args, cause);
        let (_, _, stderr) = bhyve(args);
        assert!(!stderr.contains("bhyve-test.sock"), "{args:?}: {stderr}");
    }
}

#[test]
fn arguments_are_checked_before_the_vm_is_opened() {
    // Good arguments get as far as opening the VM, which fails on the backend.
    one_error_line(&["-b", "-c", "2", "-m", "256M", "vm"], "bhyve-test.sock");
}

#[test]
fn help() {
    let (code, stdout, _) = bhyve(&["-h"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("slot,device[,options]"), "{stdout}");
}
