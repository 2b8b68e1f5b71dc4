//! The `bhyve` binary as a user runs it: bad input is refused with one line on stderr
//! and status 4 before any VM is touched.

use std::process::Command;

fn bhyve(args: &[&str]) -> (i32, String, String) {
    bhyve_as(args, None)
}

/// Runs bhyve, as user `uid` when given (root can write any file: the read-only image
/// case needs an unprivileged user). That user may not reach the build directory (a
/// checkout under a private directory), so it runs a copy of the binary in `dir`, a
/// directory everyone can enter.
fn bhyve_as(args: &[&str], uid: Option<(u32, &std::path::Path)>) -> (i32, String, String) {
    use std::os::unix::process::CommandExt;
    let built = std::path::Path::new(env!("CARGO_BIN_EXE_bhyve"));
    let mut cmd = match uid {
        Some((uid, dir)) => {
            let copy = dir.join("bhyve");
            if !copy.exists() {
                std::fs::copy(built, &copy).unwrap();
            }
            let mut c = Command::new(copy);
            c.uid(uid).gid(uid);
            c
        }
        None => Command::new(built),
    };
    cmd.args(args)
        // Never reach a real vmm from a test.
        .env("VMM_TESTBED", "/nonexistent/bhyve-test.sock");
    // The copy was just written: a child another test thread forked meanwhile holds the
    // write descriptor until its own exec, and exec of the copy fails with ETXTBSY
    // until then. That is the test's race, not bhyve's: try again briefly.
    let mut tries = 0;
    let out = loop {
        match cmd.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => break r.unwrap(),
        }
    };
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
        &["-s", "1,virtio-gpu", "vm"],
        "unknown device 'virtio-gpu' (known: ",
    );
    one_error_line(&["-s", "1,virtio-blk", "vm"], "needs a disk image");
    one_error_line(
        &["-s", "1,virtio-blk,d.img,wb", "vm"],
        "unknown option 'wb'",
    );
    one_error_line(&["-o", "console=vga", "vm"], "pl011, ns16550 or stdio");
    one_error_line(&["a/b"], "'/'");
}

/// Every bad command-line value that reaches bhyve: one line, status 4, refused before
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

/// Every bad disk is refused in one line, status 4, before the VM is opened (the
/// backend, a missing testbed socket here, is never reached), and nothing is left
/// locked: the same image opens again right after.
#[test]
fn bad_disks_are_refused_before_the_vm() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("bhyve-cli-disks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = |n: &str| dir.join(n).to_string_lossy().into_owned();
    std::fs::write(dir.join("odd.img"), vec![0u8; 1000]).unwrap();
    std::fs::write(dir.join("ok.img"), vec![0u8; 4096]).unwrap();
    std::fs::write(dir.join("ro.img"), vec![0u8; 4096]).unwrap();
    std::fs::set_permissions(dir.join("ro.img"), std::fs::Permissions::from_mode(0o444)).unwrap();
    let spec = |p: &str, opts: &str| format!("0,virtio-blk,{p}{opts}");
    let missing = path("missing.img");
    let odd = path("odd.img");
    let ok = path("ok.img");
    let ro = path("ro.img");
    let d = dir.to_string_lossy().into_owned();
    for (s, cause) in [
        (spec(&missing, ""), format!("{missing}: no such file")),
        (
            spec(&d, ""),
            format!("{d}: is a directory, not a disk image"),
        ),
        (
            spec(&odd, ""),
            format!("{odd}: size 1000 is not a multiple of 512 bytes"),
        ),
    ] {
        one_error_line(&["-s", &s, "vm"], &format!("-s {s}: {cause}"));
    }
    // A read-only file without ',ro' (as an unprivileged user when we are root).
    // SAFETY: geteuid has no preconditions and cannot fail.
    let nobody = (unsafe { libc::geteuid() } == 0).then_some((65534, dir.as_path()));
    let (code, _, stderr) = bhyve_as(&["-s", &spec(&ro, ""), "vm"], nobody);
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains(&format!("{ro}: the image is read-only; add ',ro'")),
        "{stderr}"
    );
    // An image the user cannot read at all (checked as user nobody: a non-root test
    // owns the file it made and could read it).
    std::fs::write(dir.join("secret.img"), vec![0u8; 4096]).unwrap();
    std::fs::set_permissions(
        dir.join("secret.img"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    if nobody.is_some() {
        let secret = path("secret.img");
        let (code, _, stderr) = bhyve_as(&["-s", &spec(&secret, ",ro"), "vm"], nobody);
        assert_eq!(code, 4, "{stderr}");
        assert_eq!(
            stderr.trim(),
            format!(
                "bhyve: -s {}: {secret}: permission denied",
                spec(&secret, ",ro")
            ),
        );
    }
    // With ',ro' it opens and bhyve goes on to the VM (which the test backend lacks).
    let (code, _, stderr) = bhyve_as(&["-s", &spec(&ro, ",ro"), "vm"], nobody);
    assert_eq!(code, 4);
    assert!(stderr.contains("bhyve-test.sock"), "{stderr}");
    // An image another bhyve holds (its lock taken here), read-write or read-only.
    let f = std::fs::File::open(dir.join("ok.img")).unwrap();
    let lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    for opts in ["", ",ro"] {
        one_error_line(
            &["-s", &spec(&ok, opts), "vm"],
            &format!("{ok}: in use by another bhyve (the image is locked)"),
        );
    }
    drop(lock);
    // A second disk failing releases the first: the first opens again at once.
    one_error_line(
        &[
            "-s",
            &spec(&ok, ""),
            "-s",
            &format!("1,virtio-blk,{missing}"),
            "vm",
        ],
        "no such file",
    );
    let (_, _, stderr) = bhyve(&["-s", &spec(&ok, ""), "vm"]);
    assert!(stderr.contains("bhyve-test.sock"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
