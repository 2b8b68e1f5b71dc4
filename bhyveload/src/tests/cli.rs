use std::path::PathBuf;

use crate::cli::*;
use vmm_platform as plat;

fn run(args: &[&str]) -> Result<Config, ArgError> {
    match parse(std::iter::once("bhyveload").chain(args.iter().copied()))? {
        Parsed::Run(c) => Ok(c),
        Parsed::Help(h) => panic!("unexpected help: {h}"),
    }
}

#[test]
fn defaults() {
    let c = run(&["-k", "/boot/Image", "vm0"]).unwrap();
    assert_eq!(
        c,
        Config {
            name: "vm0".into(),
            kernel: PathBuf::from("/boot/Image"),
            ram_base: plat::RAM_BASE_DEFAULT,
            ram_size: 128 << 20,
            ncpus: 1,
            words: vec![],
            initrd: None,
            dtb: None,
            load_addr: None,
            dtb_out: None,
        }
    );
    assert_eq!(c.bootargs(), None);
}

#[test]
fn every_flag() {
    let c = run(&[
        "-k",
        "k",
        "-m",
        "1G",
        "-c",
        "4",
        "-e",
        "console=ttyAMA0",
        "-e",
        "-v",
        "-e",
        "root=/dev/vda",
        "-i",
        "initrd.gz",
        "-t",
        "my.dtb",
        "-b",
        "0x100000000",
        "-l",
        "0x100200000",
        "--dtb-out",
        "out.dtb",
        "guest",
    ])
    .unwrap();
    assert_eq!(c.ram_size, 1 << 30);
    assert_eq!(c.ncpus, 4);
    assert_eq!(
        c.bootargs().as_deref(),
        Some("console=ttyAMA0 -v root=/dev/vda")
    );
    assert_eq!(c.initrd, Some(PathBuf::from("initrd.gz")));
    assert_eq!(c.dtb, Some(PathBuf::from("my.dtb")));
    assert_eq!(c.ram_base, 0x1_0000_0000);
    assert_eq!(c.load_addr, Some(0x1_0020_0000));
    assert_eq!(c.dtb_out, Some(PathBuf::from("out.dtb")));
    assert_eq!(c.name, "guest");
    assert_eq!(
        run(&["-k", "k", "-m", "134217728", "v"]).unwrap().ram_size,
        128 << 20
    );
    assert_eq!(
        run(&["-k", "k", "-m", "512", "v"]).unwrap().ram_size,
        512 << 20
    );
}

#[test]
fn bad_arguments_name_the_cause() {
    let e = |args: &[&str]| run(args).unwrap_err().to_string();
    assert_eq!(e(&["vm"]), "no kernel given: use -k FILE");
    assert_eq!(
        e(&["-k", "k", "-m", "0", "vm"]).as_str(),
        "memory of 0x0 bytes at 0x80000000: memory size must be at least 2 MiB"
    );
    assert!(
        e(&["-k", "k", "-m", "1T", "vm"]).contains("past the 39-bit"),
        "{}",
        e(&["-k", "k", "-m", "1T", "vm"])
    );
    assert!(e(&["-k", "k", "-m", "3K", "vm"]).contains("at least 2 MiB"));
    assert!(e(&["-k", "k", "-m", "129M", "vm"]).contains("multiples of 2 MiB"));
    assert_eq!(
        e(&["-k", "k", "-m", "12Q", "vm"]),
        "-m: '12Q' has an unknown suffix (use K, M, G or T)"
    );
    assert!(e(&["-k", "k", "-b", "0", "vm"]).contains("overlap the device windows"));
    assert_eq!(e(&["-k", "k", "-b", "x", "vm"]), "-b: 'x' is not a number");
    assert_eq!(
        e(&["-k", "k", "-l", "0xq", "vm"]),
        "-l: '0xq' is not a number"
    );
    assert_eq!(
        e(&["-k", "k", "-c", "0", "vm"]),
        "-c: '0' is not a number of vCPUs from 1 to 16"
    );
    assert_eq!(
        e(&["-k", "k", "-c", "17", "vm"]),
        "-c: '17' is not a number of vCPUs from 1 to 16"
    );
    assert_eq!(e(&["-k", "k", "-e", "", "vm"]), "-e: empty word");
    assert_eq!(e(&["-k", "k", "a/b"]), "VM name contains '/'");
    assert_eq!(e(&["-k", "k", ""]), "VM name is empty");
    assert!(e(&["-k", "k", &"x".repeat(230)]).contains("longer than 229"));
    // clap's complaints come back as one line.
    for args in [
        &["-k", "k"][..],
        &["-z", "vm"][..],
        &["-k", "k", "a", "b"][..],
        &["vm", "-k"][..],
    ] {
        let m = e(args);
        assert!(
            !m.contains('\n') && !m.is_empty() && !m.starts_with("error"),
            "{m:?}"
        );
    }
}

#[test]
fn help() {
    match parse(["bhyveload", "-h"]).unwrap() {
        Parsed::Help(h) => assert!(h.contains("--dtb-out"), "{h}"),
        Parsed::Run(_) => panic!("expected help"),
    }
}
