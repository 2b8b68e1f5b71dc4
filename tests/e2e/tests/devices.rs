//! Debian's arm64 Linux with its root file system on a virtio-blk disk (ext4 made by
//! `mkfs.ext4 -d`), entropy from virtio-rnd, driven by the real tools on the served
//! testbed (docs/e2e.md, "Root disk guests"). The kernel's virtio drivers are modules:
//! the root initramfs loads them and switch_roots to /dev/vda, whose own init runs.
//!
//! VMM_SKIP_QEMU=1 skips.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vmm_e2e::bed::Bed;
use vmm_e2e::guest::{self, ROOTFS_MARKER};
use vmm_e2e::netns::{self, Netns, HOST_IP, TAP};
use vmm_e2e::proc::{self, Output, Running};
use vmm_e2e::stats::Stats;

static SERIAL: Mutex<()> = Mutex::new(());
const BED_LIMIT: Duration = Duration::from_secs(600);
const BOOT_LIMIT: Duration = Duration::from_secs(200);
const TOOL_LIMIT: Duration = Duration::from_secs(60);

fn skip() -> bool {
    vmm_e2e::skip_qemu()
}

struct T {
    bed: Bed,
    dir: PathBuf,
    console: String,
}

impl T {
    fn start(name: &str) -> T {
        let bed = Bed::for_test(name, BED_LIMIT).unwrap_or_else(|e| panic!("{e}"));
        T {
            dir: bed.layout.dir.clone(),
            bed,
            console: String::new(),
        }
    }

    fn cmd(&self, tool: &str, args: &[&str]) -> Command {
        let mut c = proc::tool_on(tool, &self.bed.socket);
        c.args(args);
        c
    }

    fn tool(&self, tool: &str, args: &[&str]) -> Output {
        proc::run(&mut self.cmd(tool, args), TOOL_LIMIT).unwrap_or_else(|e| panic!("{e}"))
    }

    /// bhyveload with the root initramfs, `root=/dev/vda` and `extra` boot arguments.
    /// `quiet`: the kernel's own messages would cost a userspace exit per few bytes on
    /// the PL011; init's lines still reach the console.
    fn load(&self, vm: &str, extra: &[&str]) {
        self.load_with(vm, &["console=ttyAMA0", "quiet"], extra)
    }

    fn load_with(&self, vm: &str, console: &[&str], extra: &[&str]) {
        let kernel = guest::kernel().unwrap_or_else(|e| panic!("{e}"));
        let initrd = guest::root_initramfs().unwrap_or_else(|e| panic!("{e}"));
        let mut args = vec!["-k", s(&kernel), "-m", "256M", "-i", s(&initrd)];
        for a in console
            .iter()
            .chain(&["panic=-1", "root=/dev/vda"])
            .chain(extra)
        {
            args.extend(["-e", a]);
        }
        args.push(vm);
        let out = self.tool("bhyveload", &args);
        assert_eq!(out.code, Some(0), "bhyveload {args:?}: {out}");
    }

    /// Runs `bhyve -b SLOTS... vm` to its end.
    fn boot(&mut self, vm: &str, slots: &[String]) -> Output {
        let mut args = vec!["-b".to_string()];
        for sl in slots {
            args.extend(["-s".to_string(), sl.clone()]);
        }
        args.push(vm.into());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = proc::run(&mut self.cmd("bhyve", &argv), BOOT_LIMIT).unwrap();
        self.console = out.stdout.clone();
        eprintln!("bhyve {argv:?}: {:.1?}, status {:?}", out.elapsed, out.code);
        out
    }

    fn check(&mut self, f: impl FnOnce(&mut T)) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        if let Err(p) = r {
            eprintln!("[guest console]\n{}\n{}", self.console, self.bed.logs());
            std::panic::resume_unwind(p);
        }
    }
}

/// An e2fsprogs tool: in PATH, or in /usr/sbin or /sbin (not in a user's PATH).
fn sbin(tool: &str) -> Command {
    let found = ["/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file());
    Command::new(found.unwrap_or_else(|| tool.into()))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// The boots file as the host reads it from the image: e2fsck replays ext4's journal
/// on a copy first (what the guest committed may still be only in the journal), then
/// debugfs prints the file.
fn boots_on_disk(img: &Path) -> String {
    let copy = img.with_extension("fsck.img");
    std::fs::copy(img, &copy).unwrap();
    let fsck = sbin("e2fsck").args(["-fy", s(&copy)]).output().unwrap();
    // 0: clean, 1: errors corrected (a replayed journal counts).
    assert!(
        matches!(fsck.status.code(), Some(0 | 1)),
        "e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let out = sbin("debugfs")
        .args(["-R", "cat /var/log/vmm-e2e-boots", s(&copy)])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&copy);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh copy of the root disk template at `to` (sparse, as the template is).
fn copy_rootdisk(to: &Path) {
    let template = guest::rootdisk_template().unwrap_or_else(|e| panic!("{e}"));
    let cp = Command::new("cp")
        .args(["--sparse=always", s(&template), s(to)])
        .status()
        .unwrap();
    assert!(cp.success(), "cp {template:?} {to:?}");
}

/// bhyve with its stdin a pipe the test types into and its console in a file, killed
/// with its process group when dropped (whatever happens in the test).
struct Typed {
    child: std::process::Child,
    console: PathBuf,
    start: Instant,
}

impl Typed {
    fn spawn(t: &T, args: &[&str], console: PathBuf) -> Typed {
        use std::os::unix::process::CommandExt;
        let child = t
            .cmd("bhyve", args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::fs::File::create(&console).unwrap())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        Typed {
            child,
            console,
            start: Instant::now(),
        }
    }

    /// Waits until `what` is on the console (kept in `t.console`), at most BOOT_LIMIT.
    fn wait_for(&self, t: &mut T, what: &str) {
        loop {
            t.console = std::fs::read_to_string(&self.console).unwrap_or_default();
            if t.console.contains(what) {
                eprintln!("'{what}' after {:.1?}", self.start.elapsed());
                return;
            }
            assert!(
                self.start.elapsed() < BOOT_LIMIT,
                "no '{what}' on the console"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn type_in(&mut self, keys: &[u8]) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("stdin is a pipe");
        stdin.write_all(keys).unwrap();
    }

    /// Waits for bhyve to end (at most BOOT_LIMIT) and reads the whole console.
    fn wait_end(&mut self, t: &mut T) -> std::process::ExitStatus {
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(self.start.elapsed() < BOOT_LIMIT, "bhyve did not end");
            std::thread::sleep(Duration::from_millis(200));
        };
        t.console = std::fs::read_to_string(&self.console).unwrap_or_default();
        status
    }
}

impl Drop for Typed {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the process group made for this bhyve.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
    }
}

fn has(out: &Output, line: &str) {
    assert!(
        out.stdout.contains(line),
        "no '{line}' on the console: {out}"
    );
}

/// The root file system lives on a virtio-blk disk and keeps what the guest writes:
/// boot 1 writes a line, the host reads it back (debugfs), boot 2 sees it and adds
/// its own. Disks appear in slot order (slot 2 is vda, slot 5 vdb) with FreeBSD
/// bhyve's serials and their sizes; virtio-rnd feeds /dev/hwrng. Boot 3 flushes and
/// hangs, and bhyve is killed -9: the flushed line is on the disk. Boot 4 gets the
/// disk with `ro`: the guest cannot remount it read-write and the image is unchanged.
#[test]
fn root_on_virtio_blk_keeps_writes_and_ro_refuses() {
    if skip() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut t = T::start("rootdisk");
    t.check(|t| {
        let root = t.dir.join("root.img");
        let data = t.dir.join("data.img");
        copy_rootdisk(&root);
        std::fs::write(&data, vec![0u8; 1 << 20]).unwrap();
        let slots = |opts: &str| {
            vec![
                format!("2,virtio-blk,{}{opts}", s(&root)),
                format!("5,virtio-blk,{}", s(&data)),
                "7,virtio-rnd".to_string(),
            ]
        };
        let serial = |p: &Path| String::from_utf8(vmm_virtio::blk::serial(s(p)).to_vec()).unwrap();

        for n in 1..=2 {
            t.load("disk", &["rw"]);
            let out = t.boot("disk", &slots(""));
            assert_eq!(out.code, Some(1), "boot {n}: poweroff is status 1: {out}");
            has(&out, ROOTFS_MARKER);
            has(&out, &format!("VMM-E2E: disk vda 131072 {}", serial(&root)));
            has(&out, &format!("VMM-E2E: disk vdb 2048 {}", serial(&data)));
            has(&out, "VMM-E2E: hwrng current: virtio_rng.0");
            let hw = out
                .stdout
                .lines()
                .find_map(|l| l.trim().strip_prefix("VMM-E2E: hwrng "))
                .filter(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(hw.is_some(), "16 bytes from /dev/hwrng: {out}");
            has(&out, "VMM-E2E: root is writable");
            has(&out, &format!("VMM-E2E: boots: boot {n}"));
            let expect: String = (1..=n).map(|i| format!("boot {i}\n")).collect();
            assert_eq!(boots_on_disk(&root), expect, "after boot {n}");
        }

        // Boot 3: flush, then bhyve is killed while the guest sleeps.
        t.load("disk", &["rw", "vmm_e2e=hang"]);
        let console = t.dir.join("hang-console.log");
        let mut cmd = t.cmd("bhyve", &["-b"]);
        for sl in slots("") {
            cmd.args(["-s", &sl]);
        }
        cmd.arg("disk")
            .stdout(std::fs::File::create(&console).unwrap());
        let bhyve = Running::spawn_keep_stdout(&mut cmd).unwrap();
        let start = Instant::now();
        loop {
            t.console = std::fs::read_to_string(&console).unwrap_or_default();
            if t.console.contains("VMM-E2E: flushed, hanging") {
                break;
            }
            assert!(start.elapsed() < BOOT_LIMIT, "boot 3 never flushed");
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: kill(2) of the process group Running made for bhyve.
        unsafe { libc::kill(-(bhyve.pid() as i32), libc::SIGKILL) };
        let out = bhyve.wait(TOOL_LIMIT);
        assert_eq!(out.code, None, "killed by a signal: {out}");
        assert_eq!(boots_on_disk(&root), "boot 1\nboot 2\nboot 3\n");
        // A killed bhyve leaves its VM for bhyvectl to destroy.
        let out = t.tool("bhyvectl", &["--vm=disk", "--destroy"]);
        assert_eq!(out.code, Some(0), "{out}");

        // Boot 4: the disk read-only. The journal replay of boot 3 needs a writable
        // device, so the host replays it first (as an administrator would).
        let fsck = sbin("e2fsck").args(["-fy", s(&root)]).output().unwrap();
        assert!(matches!(fsck.status.code(), Some(0 | 1)));
        let before = std::fs::read(&root).unwrap();
        t.load("disk", &["ro"]);
        let out = t.boot("disk", &slots(",ro"));
        assert_eq!(out.code, Some(1), "{out}");
        has(&out, "VMM-E2E: root is read-only");
        has(&out, "VMM-E2E: remount rw refused");
        has(&out, "VMM-E2E: boots: boot 3");
        assert!(
            std::fs::read(&root).unwrap() == before,
            "a ro disk was written"
        );
        let out = t.tool("bhyvectl", &["--vm=disk", "--destroy"]);
        assert_eq!(out.code, Some(0), "{out}");
    });
}

const NET_BYTES: usize = 16 << 20;

fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The host end of the transfers, inside the namespace: takes NET_BYTES from the guest
/// on port 5001 and sends NET_BYTES of its own on port 5002. Returns the sha256 of
/// what it received and of what it sent.
fn serve_transfers(ns: &Netns) -> std::thread::JoinHandle<(String, String)> {
    use std::io::{Read, Write};
    ns.enter().unwrap_or_else(|e| panic!("{e}"));
    let up = std::net::TcpListener::bind((HOST_IP, 5001)).unwrap();
    let down = std::net::TcpListener::bind((HOST_IP, 5002)).unwrap();
    std::thread::spawn(move || {
        let (mut c, _) = up.accept().unwrap();
        let mut got = vec![0u8; NET_BYTES];
        c.read_exact(&mut got).unwrap();
        drop(c);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let data: Vec<u8> = (0..NET_BYTES)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let (mut c, _) = down.accept().unwrap();
        c.write_all(&data).unwrap();
        drop(c);
        (sha256_hex(&got), sha256_hex(&data))
    })
}

fn console_value<'a>(out: &'a Output, prefix: &str) -> Option<&'a str> {
    out.stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .map(str::trim)
}

/// virtio-net on a tap inside a network namespace the test creates: the guest
/// configures eth0, pings the host end, then 16 MiB cross each way over TCP and both
/// sides agree on their sha256. Meanwhile a second bhyve on the same tap is refused. The guest's kernel logs through the PL011; init prints
/// the results.
#[test]
fn network_over_a_tap_in_a_namespace() {
    if skip() {
        return;
    }
    if !netns::have_root() {
        eprintln!("network test skipped: it needs root (ip netns, a tap)");
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut t = T::start("net");
    t.check(|t| {
        let root = t.dir.join("net-root.img");
        copy_rootdisk(&root);
        let ns = Netns::new(&format!("vmm-e2e-{}", std::process::id()))
            .unwrap_or_else(|e| panic!("{e}"));
        // The listeners exist before the guest can connect.
        let host = std::thread::scope(|sc| sc.spawn(|| serve_transfers(&ns)).join().unwrap());
        t.load("net", &["rw", "vmm_e2e=net"]);
        let mut cmd = ns.command(proc::tool("bhyve"));
        cmd.arg("-b")
            .args(["-s", &format!("0,virtio-blk,{}", s(&root))])
            .args(["-s", &format!("1,virtio-net,{TAP},mac=02:00:00:00:00:15")])
            .arg("net")
            .env("VMM_TESTBED", &t.bed.socket);
        let bhyve = Running::spawn(&mut cmd).unwrap();
        // While it holds the tap, another bhyve is refused in one line, before it
        // reaches any VM (a second reader would steal frames).
        // The tap has a carrier once a process holds it: wait for bhyve to.
        let start = Instant::now();
        loop {
            let link = Command::new("ip")
                .args(["-n", &ns.name, "link", "show", TAP])
                .output()
                .unwrap();
            if !String::from_utf8_lossy(&link.stdout).contains("NO-CARRIER") {
                break;
            }
            assert!(start.elapsed() < TOOL_LIMIT, "bhyve never attached {TAP}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut other = ns.command(proc::tool("bhyve"));
        other
            .args(["-s", &format!("0,virtio-net,{TAP}"), "othervm"])
            .env("VMM_TESTBED", &t.bed.socket);
        let busy = proc::run(&mut other, TOOL_LIMIT).unwrap();
        assert_eq!(busy.code, Some(4), "{busy}");
        assert!(
            busy.stderr.trim()
                == format!(
                    "bhyve: -s 0,virtio-net,{TAP}: {TAP}: busy (another process has it open)"
                ),
            "{busy}"
        );
        let out = bhyve.wait(BOOT_LIMIT);
        t.console = out.stdout.clone();
        eprintln!("network boot: {:.1?}", out.elapsed);
        assert_eq!(out.code, Some(1), "{out}");
        has(&out, "VMM-E2E: net eth0 02:00:00:00:00:15");
        has(&out, "VMM-E2E: net ping ok");
        let (received, sent) = host.join().unwrap();
        assert_eq!(
            console_value(&out, "VMM-E2E: net sent"),
            Some(received.as_str()),
            "{out}"
        );
        assert_eq!(
            console_value(&out, "VMM-E2E: net received"),
            Some(sent.as_str()),
            "{out}"
        );
        let out = t.tool("bhyvectl", &["--vm=net", "--destroy"]);
        assert_eq!(out.code, Some(0), "{out}");
    });
}

/// The guest executes what its disk holds, not stale translations: /bin/stale-code runs
/// `mov w0, #1; ret` from a buffer, reads `mov w0, #2; ret` into that same buffer from
/// /dev/vdb with O_DIRECT (virtio-blk writes guest memory through the testbed's RAM
/// file, which QEMU's TCG does not watch) and runs it again. bhyve reports the read's
/// ranges and the testbed rewrites them through its CPU (TESTBED_SYNC): the second call
/// returns 2. Checked: with bhyve's report of device writes turned off, the guest ran
/// the stale `mov w0, #1` and this test failed ("then 1").
#[test]
fn guest_runs_code_read_from_disk_not_stale_translations() {
    if skip() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut t = T::start("stale");
    t.check(|t| {
        let root = t.dir.join("stale-root.img");
        let data = t.dir.join("stale-code.img");
        copy_rootdisk(&root);
        // mov w0, #2 (0x52800040); ret (0xd65f03c0), little-endian.
        let mut code = vec![0x40, 0x00, 0x80, 0x52, 0xc0, 0x03, 0x5f, 0xd6];
        code.resize(1 << 20, 0);
        std::fs::write(&data, code).unwrap();
        t.load("stale", &["rw", "vmm_e2e=stale"]);
        let out = t.boot(
            "stale",
            &[
                format!("2,virtio-blk,{}", s(&root)),
                format!("5,virtio-blk,{}", s(&data)),
            ],
        );
        assert_eq!(out.code, Some(1), "{out}");
        has(&out, "VMM-E2E: stale-code first 1");
        has(&out, "VMM-E2E: stale-code then 2");
        let out = t.tool("bhyvectl", &["--vm=stale", "--destroy"]);
        assert_eq!(out.code, Some(0), "{out}");
    });
}

/// The kernel logs on hvc0 (console=hvc0, no `quiet`): virtio_console registers hvc0
/// once the initramfs loads it, and from then on the kernel's messages and init's lines
/// are on the console. (What Linux logged before the module loaded is not replayed
/// /// there, and its last "reboot: Power down" does not arrive, as under plain QEMU:
/// docs/virtio.md.)
#[test]
fn kernel_logs_on_hvc0() {
    if skip() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut t = T::start("hvc0");
    t.check(|t| {
        let root = t.dir.join("hvc0-root.img");
        copy_rootdisk(&root);
        t.load_with("hvc", &["console=hvc0"], &["rw"]);
        let out = t.boot(
            "hvc",
            &[
                format!("0,virtio-blk,{}", s(&root)),
                "3,virtio-console".to_string(),
            ],
        );
        assert_eq!(out.code, Some(1), "{out}");
        has(&out, "EXT4-fs (vda): mounted filesystem");
        has(&out, ROOTFS_MARKER);
        has(&out, "VMM-E2E: boots: boot 1");
        let stats = t.tool("bhyvectl", &["--vm=hvc", "--get-stats"]);
        let exits = stats
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("vm exits returned to userspace"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        eprintln!(
            "{} console bytes, {exits} exits to bhyve in all",
            out.stdout.len()
        );
        let out = t.tool("bhyvectl", &["--vm=hvc", "--destroy"]);
        assert_eq!(out.code, Some(0), "{out}");
    });
}

/// A named virtio-console port on a unix socket bhyve creates: the test connects as
/// the host end, the guest finds the port by its name, writes a line and reads the
/// test's answer; bhyve removes the socket when it ends.
#[test]
fn console_port_on_a_unix_socket() {
    if skip() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut t = T::start("port");
    t.check(|t| {
        use std::io::{BufRead, Write};
        let root = t.dir.join("port-root.img");
        let sock = t.dir.join("port.sock");
        let _ = std::fs::remove_file(&sock);
        copy_rootdisk(&root);
        t.load_with("port", &["console=hvc0"], &["rw", "quiet", "vmm_e2e=port"]);
        let mut cmd = t.cmd(
            "bhyve",
            &[
                "-b",
                "-s",
                &format!("0,virtio-blk,{}", s(&root)),
                "-s",
                &format!("3,virtio-console,org.vmm.e2e={}", s(&sock)),
                "port",
            ],
        );
        let bhyve = Running::spawn(&mut cmd).unwrap();
        let start = Instant::now();
        let stream = loop {
            if let Ok(c) = std::os::unix::net::UnixStream::connect(&sock) {
                break c;
            }
            assert!(
                start.elapsed() < TOOL_LIMIT,
                "bhyve made no socket at {sock:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        stream.set_read_timeout(Some(BOOT_LIMIT)).unwrap();
        let mut lines = std::io::BufReader::new(stream.try_clone().unwrap()).lines();
        let first = lines.next().and_then(Result::ok);
        if first.is_some() {
            (&stream).write_all(b"hello from the host\n").unwrap();
        }
        let out = bhyve.wait(BOOT_LIMIT);
        t.console = out.stdout.clone();
        assert_eq!(first.as_deref(), Some("hello from the guest"), "{out}");
        assert_eq!(out.code, Some(1), "{out}");
        has(&out, "VMM-E2E: port org.vmm.e2e is /dev/vport");
        has(&out, "VMM-E2E: port got: hello from the host");
        assert!(!sock.exists(), "bhyve removes its socket");
        let out = t.tool("bhyvectl", &["--vm=port", "--destroy"]);
        assert_eq!(out.code, Some(0), "{out}");
    });
}

/// What is typed into bhyve's console reaches the guest through the PL011 (its receive
/// FIFO, interrupt and flag register, which the kernel answers from the value bhyve
/// publishes when input arrives): the root disk's init reads a line from the console
/// and prints it back, Linux's output meanwhile queued by the kernel (the UART's data
/// and control registers).
#[test]
fn console_input_reaches_the_guest_through_the_pl011() {
    console_input_round_trip("pl011", "ttyAMA0", &[]);
}

/// The same through the NS16550A (`-o console=ns16550`, Linux's 8250 driver on ttyS0):
/// its receive buffer and interrupt, its line status register answered by the kernel
/// from the value bhyve publishes, its transmit register's stores queued.
#[test]
fn console_input_reaches_the_guest_through_the_ns16550() {
    console_input_round_trip("ns16550", "ttyS0", &["-o", "console=ns16550"]);
}

/// Boots the root disk's console echo (`vmm_e2e=console`) with Linux's console on
/// `tty` and bhyve's `uart_args`, types a line and waits for it to come back.
fn console_input_round_trip(uart: &str, tty: &str, uart_args: &[&str]) {
    if skip() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut t = T::start(&format!("{uart}-input"));
    t.check(|t| {
        let root = t.dir.join("input-root.img");
        copy_rootdisk(&root);
        let console_arg = format!("console={tty}");
        t.load_with("input", &[console_arg.as_str()], &["rw", "vmm_e2e=console"]);
        let disk = format!("0,virtio-blk,{}", s(&root));
        let console = t.dir.join("input-console.log");
        let mut args = vec!["-b"];
        args.extend_from_slice(uart_args);
        args.extend(["-s", disk.as_str(), "input"]);
        let mut bhyve = Typed::spawn(t, &args, console);
        bhyve.wait_for(t, "VMM-E2E: console ready");
        let line = format!("typed into the {uart}\n");
        bhyve.type_in(line.as_bytes());
        let status = bhyve.wait_end(t);
        assert_eq!(status.code(), Some(1), "poweroff is status 1");
        let want = format!("VMM-E2E: console got: typed into the {uart}");
        assert!(t.console.contains(&want), "the line did not come back");
        // Linux's boot log went out through the kernel's shortcuts: the UART's
        // status loads answered and its output stores queued, far fewer exits to bhyve
        // than bytes (without them: two or more per byte).
        let out = t.tool("bhyvectl", &["--vm=input", "--get-stats"]);
        let st = Stats::parse(&out.stdout);
        let queued = st.get("mmio stores queued").unwrap_or(0);
        let answered = st.get("mmio loads answered").unwrap_or(0);
        let to_user = st.user_exits().unwrap_or(u64::MAX);
        eprintln!("{uart}: {queued} stores queued, {answered} loads answered, {to_user} exits to bhyve");
        assert!(
            queued > 5000 && answered > 5000 && to_user < queued / 2,
            "{uart}: {queued} stores queued, {answered} loads answered, {to_user} exits to bhyve: {out}"
        );
        let out = t.tool("bhyvectl", &["--vm=input", "--destroy"]);
        assert_eq!(out.code, Some(0), "{out}");
    });
}

/// Debian's own userland (tests/make-debian-disk.sh) boots with systemd on 2 vCPUs and
/// 512 MiB to `multi-user.target` and a login prompt on hvc0; root logs in with its
/// empty password, the system says `running` and powers off (bhyve exits 1). Opt-in with
/// VMM_E2E_DEBIAN=1: building the disk needs mmdebstrap, qemu-user-static and a
/// mountable binfmt_misc (docs/e2e.md, "A Debian disk"), which CI does not assume.
#[test]
fn debian_with_systemd_boots_to_a_login() {
    if skip() {
        return;
    }
    if std::env::var_os("VMM_E2E_DEBIAN").is_none_or(|v| v != "1") {
        eprintln!(
            "Debian test skipped: set VMM_E2E_DEBIAN=1 (needs root, mmdebstrap, \
             qemu-user-static and binfmt_misc; docs/e2e.md)"
        );
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut t = T::start("debian");
    t.check(|t| {
        let template = guest::debian_disk().unwrap_or_else(|e| panic!("{e}"));
        let disk = t.dir.join("debian.img");
        let cp = Command::new("cp")
            .args(["--sparse=always", s(&template), s(&disk)])
            .status()
            .unwrap();
        assert!(cp.success());
        let kernel = guest::kernel().unwrap_or_else(|e| panic!("{e}"));
        let initrd = guest::root_initramfs().unwrap_or_else(|e| panic!("{e}"));
        let out = t.tool(
            "bhyveload",
            &[
                "-k",
                s(&kernel),
                "-m",
                "512M",
                "-c",
                "2",
                "-i",
                s(&initrd),
                "-e",
                "console=hvc0",
                "-e",
                "root=/dev/vda",
                "-e",
                "rw",
                "-e",
                "panic=-1",
                "debian",
            ],
        );
        assert_eq!(out.code, Some(0), "{out}");
        let console = t.dir.join("debian-console.log");
        let disk = format!("0,virtio-blk,{}", s(&disk));
        let args = [
            "-b",
            "-s",
            &disk,
            "-s",
            "1,virtio-rnd",
            "-s",
            "2,virtio-console",
            "debian",
        ];
        let mut bhyve = Typed::spawn(t, &args, console);
        bhyve.wait_for(t, "VMM-E2E: multi-user.target reached");
        bhyve.wait_for(t, "debian login: ");
        bhyve.type_in(b"root\r");
        bhyve.wait_for(t, "root@debian:~# ");
        bhyve.type_in(b"systemctl is-system-running; poweroff\r");
        let status = bhyve.wait_end(t);
        assert_eq!(status.code(), Some(1), "poweroff is status 1");
        let after = t
            .console
            .rsplit("systemctl is-system-running")
            .next()
            .unwrap_or("");
        // The answer is the line after the command, behind the shell's terminal
        // controls (bracketed paste off, a carriage return).
        let answer = after
            .split('\n')
            .nth(1)
            .and_then(|l| l.split('\r').rfind(|p| !p.is_empty()));
        assert_eq!(answer, Some("running"), "systemctl is-system-running");
        let out = t.tool("bhyvectl", &["--vm=debian", "--destroy"]);
        assert_eq!(out.code, Some(0), "{out}");
    });
}
