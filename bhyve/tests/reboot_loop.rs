//! The user's whole cycle on one kernel (the core over a fake host), each tool through the functions its
//! `main` calls: bhyveload creates and loads the VM, bhyve runs it until the guest
//! reboots (status 0), bhyveload reinitialises and loads it again (VM_REINIT, which needs
//! every vCPU of the last run to have left with SUSPENDED), bhyve runs it until the guest
//! powers off (status 1).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bhyve::args::{self, Command};
use bhyve::console::Output;
use bhyveload::boot::{self, Outcome};
use bhyveload::cli::{self as load_cli, Parsed};
use libvmmapi::fake::{self, FakeVmm, Scripted};
use libvmmapi::{Backend, Reg};
use vmm_sys::arm64::psci;

const BASE: u64 = vmm_platform::RAM_BASE_DEFAULT;

fn bhyveload(backend: Arc<dyn Backend>, argv: &[&str]) -> Outcome {
    let Parsed::Run(config) = load_cli::parse(argv.iter().copied()).unwrap() else {
        panic!("help")
    };
    boot::run(backend, &config).unwrap().1
}

fn bhyve(backend: Arc<dyn Backend>, argv: &[&str]) -> i32 {
    let Command::Run(a) = args::parse(argv.iter().copied()).unwrap() else {
        panic!("help")
    };
    let vm = bhyve::prepare(&a, backend).unwrap();
    let out = Output::Buffer(Arc::new(Mutex::new(Vec::new())));
    vm.run(&a, out, None).status()
}

/// The guest's first instruction is `hvc #0` calling `fid`.
fn smccc(fid: u32, args: &[u64]) -> Scripted {
    fake::smccc(BASE + 4, u64::from(fid), args)
}

#[test]
fn reboot_then_poweroff() {
    let dir = std::env::temp_dir().join(format!("bhyve-reboot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = dir.join("guest.bin");
    std::fs::write(&kernel, [0u8; 256]).unwrap();
    let kernel = kernel.to_str().unwrap();
    let load = [
        "bhyveload",
        "-k",
        kernel,
        "-l",
        "0x80000000",
        "-c",
        "2",
        "-m",
        "64M",
        "loop",
    ];
    let run = ["bhyve", "-c", "2", "-m", "64M", "loop"];

    let fake = FakeVmm::new();
    fake.set_run_timeout(Duration::from_secs(5));
    assert_eq!(bhyveload(fake.backend(), &load), Outcome::Created);
    // The guest starts its second CPU, which turns itself off; then it reboots.
    fake.script_all(
        "loop",
        0,
        [
            smccc(psci::CPU_ON_64, &[1, BASE + 0x100, 0]),
            smccc(psci::SYSTEM_RESET, &[]),
        ],
    );
    fake.script("loop", 1, smccc(psci::CPU_OFF, &[]));
    assert_eq!(bhyve(fake.backend(), &run), 0, "reboot");

    assert_eq!(
        bhyveload(fake.backend(), &load),
        Outcome::Reinitialised,
        "bhyveload after a reboot"
    );
    assert_eq!(fake.reg("loop", 0, Reg::Pc), BASE);
    assert!(!fake.is_active("loop", 1), "VM_REINIT reset the vCPUs");
    fake.script("loop", 0, smccc(psci::SYSTEM_OFF, &[]));
    assert_eq!(bhyve(fake.backend(), &run), 1, "poweroff");
    std::fs::remove_dir_all(&dir).ok();
}
