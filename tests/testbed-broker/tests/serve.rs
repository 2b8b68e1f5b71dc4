//! The served testbed, end to end from Linux processes: QEMU runs the testbed kernel in
//! server mode, the broker multiplexes clients, and libvmmapi's testbed backend (and
//! the real bhyvectl binary) drive the vmm core through it. Each test starts its own
//! testbed in its own directory (QEMU and broker in their own process groups, killed
//! when the test ends, also on failure); a failure prints the serial and broker logs.
//!
//! Needs qemu-system-aarch64 and aarch64-linux-gnu binutils; VMM_SKIP_QEMU=1 skips.

use libvmmapi::testbed::Testbed;
use libvmmapi::{Backend, ExitReason, Reg, Vm};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};
use vmm_testbed_broker::launch::{HostCpu, Layout, Served, RUN_CPUS};
use vmm_testbed_harness::{build, cmd, repo_root};

const RAM: u64 = 0x8000_0000;
/// `b .` and `hvc #0` (A64).
const B_SELF: u32 = 0x1400_0000;
const HVC0: u32 = 0xd400_0002;
/// `wfi`.
const WFI: u32 = 0xd503_207f;

/// One testbed at a time: they share two host cores with everything else.
static SERIAL: Mutex<()> = Mutex::new(());

/// Longest a test may keep its testbed: then the watchdog stops QEMU and the broker,
/// so every blocked client call fails instead of hanging.
const TEST_TIMEOUT: Duration = Duration::from_secs(240);

/// A raw connection to the broker, past its hello (for tests that write frames
/// themselves and hang up mid-call).
fn raw_client(bed: &Bed) -> UnixStream {
    let mut s = UnixStream::connect(&bed.socket).unwrap();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    let mut path = vec![0; usize::from(u16::from_le_bytes([hello[16], hello[17]]))];
    s.read_exact(&mut path).unwrap();
    s
}

/// `msg` framed as the broker expects from a client.
fn frame(seq: u32, msg: &[u8]) -> Vec<u8> {
    let h = vmm_sys::wire::Frame {
        client: 0,
        seq,
        len: msg.len() as u32,
    }
    .encode();
    [&h[..], msg].concat()
}

/// A served testbed of this test's own, with its watchdog.
struct Bed(Served);

impl std::ops::Deref for Bed {
    type Target = Served;
    fn deref(&self) -> &Served {
        &self.0
    }
}

impl Bed {
    fn start(name: &str) -> Option<Bed> {
        if std::env::var_os("VMM_SKIP_QEMU").is_some() {
            eprintln!("VMM_SKIP_QEMU set: served-testbed test skipped");
            return None;
        }
        let kernel = build::build_testbed().expect("building the testbed");
        let dir = std::env::var_os("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/tmp"))
            .join(format!("testbed-{name}"));
        let cpu = HostCpu::from_env().unwrap_or_else(|e| panic!("{e}"));
        let served = Served::start(
            &kernel,
            PathBuf::from(env!("CARGO_BIN_EXE_vmm-testbed-broker")).as_path(),
            Layout::new(dir),
            cpu,
            &[],
            Some(TEST_TIMEOUT),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Some(Bed(served))
    }

    fn client(&self) -> Arc<dyn Backend> {
        Arc::new(Testbed::connect(&self.socket).unwrap_or_else(|e| panic!("{e}")))
    }

    /// Runs `f`; on failure the logs are printed before the panic goes on.
    fn check(&self, f: impl FnOnce()) {
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            eprintln!("{}", self.logs());
            std::panic::resume_unwind(p);
        }
    }

    /// Runs tool `name` of the workspace against this testbed: its exit code, stdout
    /// and stderr.
    fn tool(&self, name: &str, args: &[&str]) -> (Option<i32>, String, String) {
        let out = Command::new(build_tool(name))
            .args(args)
            .env("VMM_TESTBED", &self.socket)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `bhyveload` of the raw image `bin` at 0x8000_0000 into a 64 MiB VM `vm`, with
    /// `extra` options: its exit code, stdout and stderr.
    fn load_raw(&self, bin: &Path, vm: &str, extra: &[&str]) -> (Option<i32>, String, String) {
        let bin = bin.to_str().unwrap();
        let mut args = vec!["-k", bin, "-l", "0x80000000", "-m", "64M"];
        args.extend_from_slice(extra);
        args.push(vm);
        self.tool("bhyveload", &args)
    }

    /// [`Bed::tool`] with stdout and stderr as one text.
    fn tool_text(&self, name: &str, args: &[&str]) -> (Option<i32>, String) {
        let (code, out, err) = self.tool(name, args);
        (code, out + &err)
    }
}

/// A VM with 2 MiB of RAM at 0x8000_0000 holding `code`, vCPU 0 at its start, active.
fn guest(backend: Arc<dyn Backend>, name: &str, code: &[u32]) -> Vm {
    let vm = Vm::create_with(backend, name).unwrap();
    vm.setup_memory(RAM, 2 << 20).unwrap();
    let mem = vm.guest_memory().unwrap();
    for (i, w) in code.iter().enumerate() {
        mem.write_obj(*w, GuestAddress(RAM + 4 * i as u64)).unwrap();
    }
    let cpu = vm.vcpu(0).unwrap();
    cpu.set_reg(Reg::Pc, RAM).unwrap();
    cpu.set_reg(Reg::Cpsr, 0x3c5).unwrap();
    cpu.activate().unwrap();
    vm
}

#[test]
fn vm_lifecycle_across_clients() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(bed) = Bed::start("lifecycle") else {
        return;
    };
    bed.check(|| {
        let a = bed.client();
        let b = bed.client();
        let vm = Vm::create_with(a.clone(), "alpha").unwrap();
        Vm::create_with(a.clone(), "beta").unwrap();
        assert_eq!(Vm::list_with(&*b).unwrap(), ["alpha", "beta"]);
        // Registers set by one client are read by another.
        let other = Vm::open_with(b.clone(), "alpha").unwrap();
        vm.vcpu(0)
            .unwrap()
            .set_reg(Reg::X(7), 0xdead_beef_1234)
            .unwrap();
        assert_eq!(
            other.vcpu(0).unwrap().get_reg(Reg::X(7)).unwrap(),
            0xdead_beef_1234
        );
        // Memory written through one client's mapping of the RAM file is what the
        // other client's separate mapping shows, at the right guest addresses.
        vm.setup_memory(RAM, 4 << 20).unwrap();
        let ma = vm.guest_memory().unwrap();
        let mb = other.guest_memory().unwrap();
        for off in [0u64, 0x1000, 0x20_0000, (4 << 20) - 8] {
            ma.write_obj(0x5a5a_0000_0000_0000u64 | off, GuestAddress(RAM + off))
                .unwrap();
        }
        for off in [0u64, 0x1000, 0x20_0000, (4 << 20) - 8] {
            let v: u64 = mb.read_obj(GuestAddress(RAM + off)).unwrap();
            assert_eq!(v, 0x5a5a_0000_0000_0000 | off, "at {off:#x}");
        }
        // The guest sees the same bytes: it loads from the written word and exits.
        // ldr x1, [x0]; hvc #0   with x0 = RAM + 0x1000
        let code = [0xf940_0001u32, HVC0];
        for (i, w) in code.iter().enumerate() {
            ma.write_obj(*w, GuestAddress(RAM + 0x10 + 4 * i as u64))
                .unwrap();
        }
        let cpu = vm.vcpu(0).unwrap();
        cpu.set_reg(Reg::Pc, RAM + 0x10).unwrap();
        cpu.set_reg(Reg::X(0), RAM + 0x1000).unwrap();
        cpu.set_reg(Reg::Cpsr, 0x3c5).unwrap();
        cpu.activate().unwrap();
        let exit = cpu.run().unwrap();
        assert!(
            matches!(exit.reason, ExitReason::Hvc | ExitReason::Smccc { .. }),
            "{exit:?}"
        );
        assert_eq!(cpu.get_reg(Reg::X(1)).unwrap(), 0x5a5a_0000_0000_1000);
        // Unknown VMs are "does not exist", as on FreeBSD.
        let e = Vm::open_with(b.clone(), "gamma")
            .and_then(|v| v.vcpu(0)?.get_reg(Reg::X(0)))
            .unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        vm.destroy().unwrap();
        Vm::destroy_by_name_with(b.clone(), "beta").unwrap();
        assert!(Vm::list_with(&*a).unwrap().is_empty());
    });
}

/// A store exit's register is read from the hint the testbed gave with the exit (no
/// request), and only while nothing may have changed it: another client's write, this
/// client's own, and a destroy each send the next read to the testbed.
#[test]
fn a_store_exits_register_comes_with_the_exit_until_anything_changes_it() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(bed) = Bed::start("hints") else {
        return;
    };
    bed.check(|| {
        let a = bed.client();
        let b = bed.client();
        let tb = Testbed::connect(&bed.socket).unwrap();
        let get = vmm_sys::wire::lane::CMDS
            .iter()
            .position(|&c| c == vmm_sys::ioctl::VM_GET_REGISTER)
            .unwrap();
        let gets = || tb.lane_stats().unwrap()[get].0;
        // str x3, [x1] three times (x1: no memory there, so each an MMIO exit), hvc #0.
        const STR_X3_X1: u32 = 0xf900_0023;
        let code = [STR_X3_X1, STR_X3_X1, STR_X3_X1, HVC0, B_SELF];
        let vm = guest(a.clone(), "hints", &code);
        let cpu = vm.vcpu(0).unwrap();
        cpu.set_reg(Reg::X(1), 0x1_0000).unwrap();
        cpu.set_reg(Reg::X(3), 0x1111).unwrap();
        let store = |cpu: &libvmmapi::Vcpu| {
            let exit = cpu.run().unwrap();
            assert!(
                matches!(
                    exit.reason,
                    ExitReason::InstEmul {
                        gpa: 0x1_0000,
                        write: true,
                        reg: Some(Reg::X(3)),
                        ..
                    }
                ),
                "{exit:?}"
            );
        };
        store(&cpu);
        let n = gets();
        assert_eq!(cpu.get_reg(Reg::X(3)).unwrap(), 0x1111);
        assert_eq!(cpu.get_reg(Reg::X(3)).unwrap(), 0x1111);
        assert_eq!(
            gets(),
            n,
            "the stored register was asked for, not taken from the hint"
        );
        // Another client's write voids the hint.
        let other = Vm::open_with(b.clone(), "hints").unwrap();
        other.vcpu(0).unwrap().set_reg(Reg::X(3), 0x2222).unwrap();
        assert_eq!(cpu.get_reg(Reg::X(3)).unwrap(), 0x2222);
        assert_eq!(gets(), n + 1);
        // The next store brings a new hint; this client's own write voids it.
        store(&cpu);
        assert_eq!(cpu.get_reg(Reg::X(3)).unwrap(), 0x2222);
        assert_eq!(gets(), n + 1);
        cpu.set_reg(Reg::X(3), 0x3333).unwrap();
        assert_eq!(cpu.get_reg(Reg::X(3)).unwrap(), 0x3333);
        // Another register is never taken from the hint; one that does not exist is
        // refused as on the broker's path.
        assert_eq!(cpu.get_reg(Reg::X(1)).unwrap(), 0x1_0000);
        let mut bad = libvmmapi::request::get_register("hints", 0, 9999);
        let e = a.execute(&mut bad).unwrap_err();
        assert!(
            matches!(e, libvmmapi::BackendError::Errno(libc::EINVAL)),
            "{e}"
        );
        // A destroy by another client voids it too: the next read fails.
        store(&cpu);
        Vm::destroy_by_name_with(b.clone(), "hints").unwrap();
        let e = cpu.get_reg(Reg::X(3)).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        // A run of a suspended VM (its exit and vCPU set in the lane's fixed places,
        // as every usual VM_RUN through a lane): SUSPENDED, vCPU 0 in the set.
        let vm = guest(a.clone(), "hints2", &[B_SELF]);
        vm.suspend(libvmmapi::SuspendHow::Poweroff).unwrap();
        let mut run = libvmmapi::request::run("hints2", 0);
        a.execute(&mut run).unwrap();
        let exit = run
            .buffer(libvmmapi::request::ptr::RUN_VM_EXIT)
            .and_then(|b| <vmm_sys::abi::VmExit as vmm_sys::abi::Pod>::from_bytes(&b.data))
            .unwrap();
        assert_eq!(exit.exitcode, vmm_sys::exit::ExitCode::Suspended as i32);
        let set = &run
            .buffer(libvmmapi::request::ptr::RUN_CPUSET)
            .unwrap()
            .data;
        assert_eq!((set[0], set[1..].iter().any(|&b| b != 0)), (1, false));
        vm.destroy().unwrap();
    });
}

/// The thread that runs a vCPU drives interrupt lines through that vCPU's lane (as
/// bhyve's vCPU thread does from its MMIO handlers); another thread of the same client,
/// which runs no vCPU, through the broker. Both ways answer alike.
#[test]
fn the_vcpu_threads_interrupt_lines_take_its_lane() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(bed) = Bed::start("irqlane") else {
        return;
    };
    bed.check(|| {
        let a = bed.client();
        let tb = Testbed::connect(&bed.socket).unwrap();
        let at = |cmd| {
            vmm_sys::wire::lane::CMDS
                .iter()
                .position(|&c| c == cmd)
                .unwrap()
        };
        let (assert_at, deassert_at) = (
            at(vmm_sys::ioctl::VM_ASSERT_IRQ),
            at(vmm_sys::ioctl::VM_DEASSERT_IRQ),
        );
        let lines = || {
            let s = tb.lane_stats().unwrap();
            (s[assert_at].0, s[deassert_at].0)
        };
        let vm = guest(a.clone(), "irqlane", &[HVC0, B_SELF]);
        vm.attach_vgic(vmm_platform::GICD, vmm_platform::gicr(1))
            .unwrap();
        let spi = vmm_platform::virtio_mmio_intid(0);
        // Before this thread ran the vCPU: the broker's way.
        let n = lines();
        vm.assert_irq(spi).unwrap();
        vm.deassert_irq(spi).unwrap();
        assert_eq!(lines(), n, "lines driven through a lane before any run");
        let exit = vm.vcpu(0).unwrap().run().unwrap();
        assert!(matches!(exit.reason, ExitReason::Smccc { .. }), "{exit:?}");
        vm.assert_irq(spi).unwrap();
        vm.deassert_irq(spi).unwrap();
        assert_eq!(lines(), (n.0 + 1, n.1 + 1), "not through the lane");
        // What the core refuses is refused through the lane too.
        let e = vm.assert_irq(5000).unwrap_err();
        assert!(e.to_string().contains("Invalid argument"), "{e}");
        assert_eq!(lines(), (n.0 + 2, n.1 + 1));
        // Another thread of the same client runs no vCPU: the broker again.
        std::thread::scope(|s| {
            s.spawn(|| vm.assert_irq(spi).unwrap());
        });
        assert_eq!(lines(), (n.0 + 2, n.1 + 1));
        vm.destroy().unwrap();
    });
}

/// A client that sends VM_RUN for a guest spinning forever and disconnects: the
/// testbed keeps answering, a destroy stops the run, and the run CPU serves the next
/// VM's runs.
#[test]
fn client_disconnecting_mid_call_leaves_the_testbed_healthy() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(bed) = Bed::start("disconnect") else {
        return;
    };
    bed.check(|| {
        let c = bed.client();
        let _spin = guest(c.clone(), "spin", &[B_SELF]);
        {
            let mut s = raw_client(&bed);
            let msg = libvmmapi::request::run("spin", 0).encode();
            s.write_all(&frame(1, &msg)).unwrap();
            std::thread::sleep(Duration::from_millis(300));
        } // gone mid-call
        {
            // A client speaking garbage is dropped by the broker; nobody else notices.
            let mut s = UnixStream::connect(&bed.socket).unwrap();
            s.write_all(b"this is not a frame header at all").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            assert!(rest.len() >= 18 && rest.starts_with(b"VMTB"), "{rest:?}");
        }
        // Still answering; and the broker told the testbed, which kicked the
        // abandoned run out of the guest: the vCPU exits to userspace once.
        let t = Instant::now();
        assert_eq!(Vm::list_with(&*c).unwrap(), ["spin"]);
        assert!(t.elapsed() < Duration::from_secs(10));
        let spin = Vm::open_with(c.clone(), "spin").unwrap();
        loop {
            let stats = spin.stats(0).unwrap();
            let to_user = stats
                .iter()
                .find(|(n, _)| n == "vm exits returned to userspace")
                .map(|s| s.1);
            if to_user == Some(1) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "abandoned VM_RUN not kicked: {stats:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Another VM's run waits for the run CPU, which the spinning one yields.
        let vm2 = guest(c.clone(), "next", &[HVC0, HVC0, HVC0]);
        let cpu = vm2.vcpu(0).unwrap();
        let exit = cpu.run().unwrap();
        assert!(
            matches!(exit.reason, ExitReason::Hvc | ExitReason::Smccc { .. }),
            "{exit:?}"
        );
        Vm::destroy_by_name_with(c.clone(), "spin").unwrap();
        vm2.destroy().unwrap();
        assert!(Vm::list_with(&*c).unwrap().is_empty());
    });
}

/// A client that asks for a large guest memory segment and disconnects: the testbed
/// sees the broker's "client gone" between chunks, gives the allocation up and keeps
/// nothing (the segment stays unallocated, the pages come back), and serves the next
/// client at once.
#[test]
fn client_gone_mid_allocation_gives_the_memory_back() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(bed) = Bed::start("gone-alloc") else {
        return;
    };
    bed.check(|| {
        let c = bed.client();
        let free = || {
            let mut req = libvmmapi::Request {
                target: libvmmapi::Target::Ctl,
                cmd: vmm_sys::wire::TESTBED_FREE_PAGES,
                arg: vec![0; 8],
                buffers: Vec::new(),
            };
            c.execute(&mut req).unwrap();
            u64::from_le_bytes(req.arg[..8].try_into().unwrap())
        };
        let vm = Vm::create_with(c.clone(), "big").unwrap();
        let before = free();
        // Most of what the testbed may give guests (the limit is 7/8 of its free memory).
        let len = (before * 4096 / 4 * 3) & !((2 << 20) - 1);
        {
            let mut s = raw_client(&bed);
            let seg = vmm_sys::abi::VmMemseg {
                segid: 0,
                len,
                ..Default::default()
            };
            // The allocation, then (behind it on the same connection, so served after
            // it) the creation of VM "marker", then gone.
            let alloc =
                libvmmapi::request::simple("big", vmm_sys::ioctl::VM_ALLOC_MEMSEG, &seg).encode();
            let marker = libvmmapi::request::vm_create("marker").unwrap().encode();
            let bytes = [frame(1, &alloc), frame(2, &marker)].concat();
            s.write_all(&bytes).unwrap();
        }
        // Gone at once. Once "marker" exists the allocation has been served, whatever
        // became of it.
        let t = Instant::now();
        while !Vm::list_with(&*c).unwrap().iter().any(|n| n == "marker") {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the requests were never served"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let seg = vm.get_memseg(0).unwrap();
        assert!(seg.is_none(), "the abandoned allocation completed: {seg:?}");
        let after = free();
        assert!(
            after + 64 >= before,
            "pages kept: {before} free before, {after} after"
        );
        vm.alloc_memseg(0, 64 << 20, None).unwrap();
        vm.destroy().unwrap();
        Vm::destroy_by_name_with(c.clone(), "marker").unwrap();
    });
}

/// One process, two threads, one backend: a vCPU thread blocked in VM_RUN (a guest in
/// `b .`) while another thread asserts and deasserts an interrupt and reads stats;
/// a destroy ends the run with SUSPENDED(destroy).
#[test]
fn irq_asserted_while_another_thread_is_in_vm_run() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(bed) = Bed::start("threads") else {
        return;
    };
    bed.check(|| {
        let c = bed.client();
        let vm = guest(c.clone(), "busy", &[B_SELF]);
        vm.attach_vgic(vmm_platform::GICD, vmm_platform::gicr(1))
            .unwrap();
        // Once the run has started, while it runs.
        let runner = run_in_background(&vm);
        for _ in 0..20 {
            vm.assert_irq(40).unwrap();
            vm.deassert_irq(40).unwrap();
        }
        assert!(!runner.is_finished(), "the run returned early");
        Vm::destroy_by_name_with(c.clone(), "busy").unwrap();
        let exit = runner.join().unwrap();
        match exit {
            Ok(e) => assert!(
                matches!(
                    e.reason,
                    ExitReason::Suspended(libvmmapi::SuspendHow::Destroy)
                ),
                "{e:?}"
            ),
            Err(e) => panic!("run after destroy: {e}"),
        }
    });
}

/// Two VMs' VM_RUNs share the one run CPU: while one guest spins (no exits), another
/// VM's run is queued; the spinning run is time-sliced out (a BOGUS exit, as after a
/// signal) so the other runs to its `hvc`. The same when the first guest sleeps in
/// WFI with nothing that would wake it (no vGIC, no timer): the sleep is interrupted.
#[test]
fn runs_of_two_vms_are_time_sliced() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(bed) = Bed::start("slice") else {
        return;
    };
    bed.check(|| {
        let c = bed.client();
        for first in [&[B_SELF][..], &[WFI, B_SELF][..]] {
            // A spinner in VM_RUN on every run CPU: the third run waits for a slice.
            let spinners: Vec<Vm> = (0..RUN_CPUS)
                .map(|i| guest(c.clone(), &format!("spinner{i}"), first))
                .collect();
            let runners: Vec<_> = spinners.iter().map(run_in_background).collect();
            let other = guest(c.clone(), "other", &[HVC0]);
            let t = Instant::now();
            let exit = other.vcpu(0).unwrap().run().unwrap();
            assert!(
                matches!(exit.reason, ExitReason::Hvc | ExitReason::Smccc { .. }),
                "{exit:?}"
            );
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "took {:?}",
                t.elapsed()
            );
            // One spinner gave its CPU up (BOGUS); the other may still spin until its
            // VM is destroyed (SUSPENDED).
            for s in spinners {
                s.destroy().unwrap();
            }
            let exits: Vec<_> = runners.into_iter().map(|r| r.join().unwrap()).collect();
            assert!(
                exits.iter().any(|e| e
                    .as_ref()
                    .is_ok_and(|e| matches!(e.reason, ExitReason::Bogus))),
                "{first:x?}: {exits:?}"
            );
            other.destroy().unwrap();
        }
    });
}

/// VMs outlive the process that made them: bhyvectl (a real process, through
/// VMM_TESTBED) creates, another lists, a third sets and reads a register, destroys.
#[test]
fn vms_outlive_processes_bhyvectl() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(bed) = Bed::start("bhyvectl") else {
        return;
    };
    bed.check(|| {
        let run = |args: &[&str]| bed.tool_text("bhyvectl", args);
        assert_eq!(run(&["--vm=keep", "--create"]).0, Some(0));
        assert_eq!(run(&["--list"]), (Some(0), "keep\n".to_string()));
        assert_eq!(run(&["--vm=keep", "--set-reg", "x5=0x77"]).0, Some(0));
        let (code, text) = run(&["--vm=keep", "--get-x5"]);
        assert_eq!(code, Some(0), "{text}");
        assert!(text.contains("0x0000000000000077"), "{text}");
        assert_eq!(run(&["--vm=keep", "--destroy"]).0, Some(0));
        let (code, text) = run(&["--vm=keep", "--get-x5"]);
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains("does not exist"), "{text}");
        assert_eq!(run(&["--list"]), (Some(0), String::new()));
    });
}

/// Runs vCPU 0 of `vm` on a thread of its own; returns once its VM_RUN has started
/// (the vCPU's VM_RUN calls are counted).
fn run_in_background(
    vm: &Vm,
) -> std::thread::JoinHandle<Result<libvmmapi::Exit, libvmmapi::Error>> {
    let cpu = vm.vcpu(0).unwrap();
    let runner = std::thread::spawn(move || cpu.run());
    let t = Instant::now();
    while vm
        .stats(0)
        .unwrap()
        .iter()
        .all(|(n, v)| n != "VM_RUN calls" || *v == 0)
    {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "VM_RUN never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    runner
}

/// Builds a tool of the workspace with this test's cargo and target dir.
fn build_tool(name: &str) -> PathBuf {
    cmd::run(
        &format!("build {name}"),
        cmd::cargo()
            .current_dir(repo_root())
            .args(["build", "-q", "-p", name]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    cmd::bin_dir().join(name)
}

/// Assembles tests/testbed-broker/guests/NAME.S into a raw binary linked at 0x8000_0000.
fn guest_binary(name: &str) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("guests/{name}.S"));
    let dir = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/tmp"));
    std::fs::create_dir_all(&dir).unwrap();
    let (obj, elf, bin) = (
        dir.join(format!("{name}.o")),
        dir.join(format!("{name}.elf")),
        dir.join(format!("{name}.bin")),
    );
    for (tool, args) in [
        ("aarch64-linux-gnu-as", vec!["-o".into(), obj.clone(), src]),
        (
            "aarch64-linux-gnu-ld",
            vec![
                "-nostdlib".into(),
                "-static".into(),
                "-Ttext=0x80000000".into(),
                "-e".into(),
                "_start".into(),
                "-o".into(),
                elf.clone(),
                obj.clone(),
            ],
        ),
        (
            "aarch64-linux-gnu-objcopy",
            vec!["-O".into(), "binary".into(), elf.clone(), bin.clone()],
        ),
    ] {
        cmd::run(tool, Command::new(tool).args(&args)).unwrap_or_else(|e| panic!("{e}"));
    }
    bin
}

/// The tools, end to end, as separate processes: bhyveload loads a guest program,
/// bhyve runs it (its PL011 output on bhyve's stdout, then PSCI SYSTEM_OFF: exit 1),
/// bhyvectl destroys the VM.
#[test]
fn bhyveload_bhyve_bhyvectl_end_to_end() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(bed) = Bed::start("e2e") else {
        return;
    };
    bed.check(|| {
        let bin = guest_binary("hello");
        let tool = |name: &str, args: &[&str]| bed.tool(name, args);
        // Under a 32 MiB limit on guest memory, a 64M VM is refused before anything is
        // allocated, with a clear error and no VM left behind.
        let limit = |max: u64, set: bool| {
            let tb = Testbed::connect(&bed.socket).unwrap();
            let mut arg = max.to_le_bytes().to_vec();
            arg.extend_from_slice(&u64::from(set).to_le_bytes());
            let mut req = libvmmapi::Request {
                target: libvmmapi::Target::Ctl,
                cmd: vmm_sys::wire::TESTBED_MAXMEM,
                arg,
                buffers: Vec::new(),
            };
            tb.execute(&mut req).unwrap();
            u64::from_le_bytes(req.arg[..8].try_into().unwrap())
        };
        let old = limit(0, false);
        assert_eq!(limit(32 << 20, true), 32 << 20);
        let (code, _, err) = bed.load_raw(&bin, "big", &[]);
        assert_ne!(code, Some(0), "a 64M VM under a 32M limit: {err}");
        assert!(err.contains("memory"), "the error says what: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        let (_, out, _) = tool("bhyvectl", &["--list"]);
        assert_eq!(out, "", "no half-made VM");
        assert_eq!(limit(old, true), old);
        let (code, _, err) = bed.load_raw(&bin, "hello", &[]);
        assert_eq!(code, Some(0), "bhyveload: {err}");
        let (code, out, err) = tool("bhyve", &["-b", "hello"]);
        assert_eq!(code, Some(1), "bhyve (poweroff is 1): {out}{err}");
        assert!(
            out.contains("hello from a guest on the served testbed"),
            "guest console: {out:?} {err}"
        );
        let (code, _, err) = tool("bhyvectl", &["--vm=hello", "--destroy"]);
        assert_eq!(code, Some(0), "{err}");
        let (code, out, _) = tool("bhyvectl", &["--list"]);
        assert_eq!((code, out.as_str()), (Some(0), ""));
    });
}

/// The counter `name` in `bhyvectl --get-stats` output.
fn stat_value(stats: &str, name: &str) -> Option<u64> {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
}

/// A 2-vCPU guest whose vCPU 1 idles in a WFE loop while vCPU 0 makes 1,000 exits to
/// bhyve: each vCPU has a run CPU of its own, so vCPU 1 is never sliced out for vCPU 0
/// (on one shared run CPU vCPU 0 waited out a 20 ms slice per exit, and vCPU 1 went
/// back to userspace about twice per exit of vCPU 0).
#[test]
fn a_vcpu_idle_in_wfe_leaves_the_other_its_cpu() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(bed) = Bed::start("smp-wfe") else {
        return;
    };
    bed.check(|| {
        // Built with the testbed's guests (tests/guests), which the bench shares.
        let bin = build::guest_dir().join("smp_wfe.bin");
        let tool = |name: &str, args: &[&str]| bed.tool(name, args);
        let (code, _, err) = bed.load_raw(&bin, "smp", &["-c", "2"]);
        assert_eq!(code, Some(0), "bhyveload: {err}");
        let (code, out, err) = tool("bhyve", &["-c", "2", "-b", "smp"]);
        assert_eq!(code, Some(1), "bhyve (poweroff is 1): {out}{err}");
        let dots = out.chars().filter(|&c| c == '.').count();
        assert_eq!(dots, 1000, "guest console: {out:?} {err}");
        let (code, stats, err) = tool("bhyvectl", &["--vm=smp", "--cpu=1", "--get-stats"]);
        assert_eq!(code, Some(0), "{err}");
        // Its VM_RUN lasts until the poweroff but for a few slices (a lane job queued
        // for a moment while both run CPUs are busy): not one per exit of vCPU 0, as
        // when both shared one run CPU (about 1,850 then).
        let to_user = stat_value(&stats, "vm exits returned to userspace");
        assert!(
            to_user.is_some_and(|n| (1..=100).contains(&n)),
            "vCPU 1 kept its own run CPU: {stats}"
        );
        let (code, _, err) = tool("bhyvectl", &["--vm=smp", "--destroy"]);
        assert_eq!(code, Some(0), "{err}");
    });
}

/// A vCPU busy in VM_RUN (bhyve running a guest that never exits) while bhyvectl
/// works from other processes; `bhyvectl --destroy` stops it and bhyve exits 4, the
/// status bhyve(8) gives a destroyed VM.
#[test]
fn bhyvectl_while_bhyve_runs_and_destroy_stops_it() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(bed) = Bed::start("running") else {
        return;
    };
    bed.check(|| {
        let bin = guest_binary("spin");
        let tool = |name: &str, args: &[&str]| bed.tool_text(name, args);
        let (code, out, err) = bed.load_raw(&bin, "spin", &[]);
        assert_eq!(code, Some(0), "bhyveload: {out}{err}");
        let mut bhyve = Command::new(build_tool("bhyve"))
            .args(["-b", "spin"])
            .env("VMM_TESTBED", &bed.socket)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the vCPU is active, i.e. bhyve is in VM_RUN, and the guest has
        // written its line: the first byte an exit to bhyve, which then has the kernel
        // queue the rest, and the queue handed to bhyve by a BOGUS exit within
        // QUEUE_LATENCY_MS although the guest spins without exits from then on (the
        // output checked below would be lost with the VM otherwise). Activation alone
        // is not enough: on a loaded machine the destroy could land before the guest
        // printed anything.
        let t = Instant::now();
        loop {
            let (code, text) = tool("bhyvectl", &["--vm=spin", "--get-active-cpus"]);
            assert_eq!(code, Some(0), "{text}");
            let active = text.trim_end() == "active cpus:\t0";
            let (code, stats) = tool("bhyvectl", &["--vm=spin", "--get-stats"]);
            assert_eq!(code, Some(0), "{stats}");
            let n = |what: &str| stat_value(&stats, what).unwrap_or(0);
            let bytes = n("mmio accesses emulated in userspace (INST_EMUL)")
                + n("mmio stores queued in kernel for userspace (VM_GET_MMIO_STORES)");
            let to_user = n("vm exits returned to userspace");
            if active && bytes >= "spinning\n".len() as u64 && to_user >= 2 {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the guest never printed its line: {text} {stats}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_millis(500));
        assert!(bhyve.try_wait().unwrap().is_none(), "bhyve ended early");
        // Served while the run CPU is in the guest.
        for _ in 0..3 {
            let t = Instant::now();
            let (code, text) = tool("bhyvectl", &["--vm=spin", "--get-stats"]);
            assert_eq!(code, Some(0), "{text}");
            assert!(text.contains("vm exits"), "{text}");
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "slow: {:?}",
                t.elapsed()
            );
        }
        let (code, text) = tool("bhyvectl", &["--vm=spin", "--destroy"]);
        assert_eq!(code, Some(0), "{text}");
        let t = Instant::now();
        let status = loop {
            if let Some(st) = bhyve.try_wait().unwrap() {
                break st;
            }
            if t.elapsed() > Duration::from_secs(30) {
                let _ = bhyve.kill();
                panic!("bhyve still running 30 s after the destroy");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut out = String::new();
        bhyve
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(status.code(), Some(4), "bhyve: {out}");
        assert!(out.contains("spinning"), "guest console: {out:?}");
        assert_eq!(tool("bhyvectl", &["--list"]), (Some(0), String::new()));
    });
}

/// bhyve's reboot loop: bhyveload reinitialises the VM and writes a new program over
/// the old one through the RAM file; the guest must run the new code, not QEMU's
/// translation of the old (the server rewrites a reinitialised VM's memory through the
/// CPU before its next run).
#[test]
fn reloaded_code_runs_after_reinit() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(bed) = Bed::start("reinit") else {
        return;
    };
    bed.check(|| {
        let tool = |name: &str, args: &[&str]| bed.tool_text(name, args);
        for (round, letter) in ["A", "B", "A"].iter().enumerate() {
            let bin = guest_binary(&format!("mark_{letter}"));
            let (code, out, err) = bed.load_raw(&bin, "re", &[]);
            assert_eq!(code, Some(0), "round {round}: bhyveload: {out}{err}");
            let (code, text) = tool("bhyve", &["-b", "re"]);
            assert_eq!(code, Some(1), "round {round}: bhyve: {text}");
            assert_eq!(
                text.lines().next(),
                Some(*letter),
                "round {round}: the guest ran stale code: {text:?}"
            );
        }
        assert_eq!(tool("bhyvectl", &["--vm=re", "--destroy"]).0, Some(0));
    });
}
