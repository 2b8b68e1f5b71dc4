//! vmm-testbed-broker: the Linux end of the testbed's /dev/vmm channel (docs/testbed.md,
//! "Serving /dev/vmm"). QEMU's chardev socket takes one peer; this process is that peer
//! and accepts any number of clients on its own Unix socket. Each client request is
//! tagged with (client id, client's sequence number), written to the one channel, and
//! the answer routed back by that tag. A client that goes away mid-call just loses its
//! answer, and the broker sends the testbed an empty frame for that client, so a
//! VM_RUN it left behind returns (a kick) instead of holding the run CPU.
//!
//! Client protocol (libvmmapi's testbed backend): on connect the broker sends a hello
//! (`"VMTB" u32 version=1 u64 ram_base u16 len path`: where the testbed's RAM file is
//! and which testbed physical address its offset 0 is); then both ways frames of
//! vmm-sys `wire::Frame` (the `client` field is 0 on the client's side) carrying
//! request / response messages.

use clap::Parser;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm_sys::wire::{Frame, FRAME_HEADER, RAM_BASE};

#[derive(Parser, Debug)]
#[command(about = "Multiplexes clients onto the vmm testbed's virtio-console channel")]
struct Args {
    /// QEMU's chardev socket (`-chardev socket,path=...,server=on`).
    #[arg(long)]
    qemu: PathBuf,
    /// The socket clients connect to (what VMM_TESTBED names).
    #[arg(long)]
    listen: PathBuf,
    /// The testbed's RAM file (QEMU's memory-backend-file), announced to clients.
    #[arg(long)]
    ram: PathBuf,
    /// Seconds to wait for QEMU's socket and the testbed's first answer.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

#[derive(Debug, thiserror::Error)]
enum BrokerError {
    #[error("cannot connect to QEMU's socket {0}: {1}")]
    Connect(PathBuf, std::io::Error),
    #[error("cannot listen on {0}: {1}")]
    Listen(PathBuf, std::io::Error),
    #[error("the testbed did not answer within {0}s")]
    NoAnswer(u64),
    #[error("channel to the testbed: {0}")]
    Channel(std::io::Error),
}

/// Writers to each connected client, by client id.
type Clients = Arc<Mutex<HashMap<u32, Arc<Mutex<UnixStream>>>>>;

pub const HELLO_MAGIC: &[u8; 4] = b"VMTB";
pub const HELLO_VERSION: u32 = 1;
/// The broker's own probe uses client id 0; clients get ids from a per-broker start.
const PROBE_CLIENT: u32 = 0;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmm-testbed-broker: {e}");
            ExitCode::FAILURE
        }
    }
}

fn connect_qemu(path: &Path, timeout: Duration) -> Result<UnixStream, BrokerError> {
    let start = Instant::now();
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if start.elapsed() > timeout => {
                return Err(BrokerError::Connect(path.to_path_buf(), e))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Reads one frame (header and body); `None` at a clean end of stream.
fn read_frame(s: &mut impl Read) -> std::io::Result<Option<(Frame, Vec<u8>)>> {
    let mut h = [0u8; FRAME_HEADER];
    match s.read_exact(&mut h) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let f = Frame::decode(&h)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("frame: {e}")))?;
    let mut body = vec![0; f.len as usize];
    s.read_exact(&mut body)?;
    Ok(Some((f, body)))
}

fn write_frame(s: &mut impl Write, client: u32, seq: u32, body: &[u8]) -> std::io::Result<()> {
    let h = Frame {
        client,
        seq,
        len: body.len() as u32,
    }
    .encode();
    let mut buf = Vec::with_capacity(FRAME_HEADER + body.len());
    buf.extend_from_slice(&h);
    buf.extend_from_slice(body);
    s.write_all(&buf)
}

/// A request the testbed answers without changing anything: VMMCTL_VM_LIST with an
/// empty buffer (it reports how many bytes the names need).
fn probe_request() -> Vec<u8> {
    use vmm_sys::abi::{Pod, VmmctlVmList};
    let arg = VmmctlVmList::default();
    let mut m = Vec::new();
    m.extend_from_slice(&vmm_sys::wire::REQ_MAGIC.to_le_bytes());
    m.push(0);
    m.extend_from_slice(&0u16.to_le_bytes());
    m.extend_from_slice(&vmm_sys::ioctl::VMMCTL_VM_LIST.to_le_bytes());
    m.extend_from_slice(&(arg.as_bytes().len() as u32).to_le_bytes());
    m.extend_from_slice(arg.as_bytes());
    m.extend_from_slice(&1u16.to_le_bytes());
    m.extend_from_slice(&(core::mem::offset_of!(VmmctlVmList, buf) as u32).to_le_bytes());
    m.push(1);
    m.extend_from_slice(&0u32.to_le_bytes());
    m
}

fn run(args: &Args) -> Result<(), BrokerError> {
    let timeout = Duration::from_secs(args.timeout);
    let qemu = connect_qemu(&args.qemu, timeout)?;
    let mut qemu_r = qemu.try_clone().map_err(BrokerError::Channel)?;
    let qemu_w = Arc::new(Mutex::new(qemu));

    // The testbed is up once it answers the probe (bytes sent before its driver is
    // ready wait in QEMU's socket).
    write_frame(&mut *lock(&qemu_w), PROBE_CLIENT, 0, &probe_request())
        .map_err(BrokerError::Channel)?;
    qemu_r
        .set_read_timeout(Some(timeout))
        .map_err(BrokerError::Channel)?;
    loop {
        match read_frame(&mut qemu_r) {
            Ok(Some((f, _))) if f.client == PROBE_CLIENT => break,
            Ok(Some(_)) => continue,
            Ok(None) => {
                return Err(BrokerError::Channel(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "QEMU closed the channel",
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(BrokerError::NoAnswer(args.timeout))
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(BrokerError::NoAnswer(args.timeout))
            }
            Err(e) => return Err(BrokerError::Channel(e)),
        }
    }
    qemu_r
        .set_read_timeout(None)
        .map_err(BrokerError::Channel)?;

    let _ = std::fs::remove_file(&args.listen);
    let listener = UnixListener::bind(&args.listen)
        .map_err(|e| BrokerError::Listen(args.listen.clone(), e))?;
    println!("export VMM_TESTBED={}", args.listen.display());
    let _ = std::io::stdout().flush();

    let clients: Clients = Arc::new(Mutex::new(HashMap::new()));
    let ram = args.ram.canonicalize().unwrap_or_else(|_| args.ram.clone());
    {
        let clients = clients.clone();
        let qemu_w = qemu_w.clone();
        std::thread::spawn(move || accept_loop(listener, clients, qemu_w, ram));
    }
    // Route answers until the channel ends (QEMU gone: so are all VMs).
    loop {
        let (f, body) = match read_frame(&mut qemu_r) {
            Ok(Some(x)) => x,
            Ok(None) => {
                return Err(BrokerError::Channel(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "QEMU closed the channel",
                )))
            }
            Err(e) => return Err(BrokerError::Channel(e)),
        };
        let w = lock(&clients).get(&f.client).cloned();
        if let Some(w) = w {
            if write_frame(&mut *lock(&w), 0, f.seq, &body).is_err() {
                // Gone or stuck (write timeout): forget it; its answers are dropped.
                lock(&clients).remove(&f.client);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn hello(ram: &Path) -> Vec<u8> {
    let path = ram.as_os_str().as_encoded_bytes();
    let mut h = Vec::new();
    h.extend_from_slice(HELLO_MAGIC);
    h.extend_from_slice(&HELLO_VERSION.to_le_bytes());
    h.extend_from_slice(&RAM_BASE.to_le_bytes());
    h.extend_from_slice(&(path.len() as u16).to_le_bytes());
    h.extend_from_slice(path);
    h
}

fn accept_loop(
    listener: UnixListener,
    clients: Clients,
    qemu_w: Arc<Mutex<UnixStream>>,
    ram: PathBuf,
) {
    // Ids start somewhere new for each broker, so answers a previous broker left in
    // the channel (the testbed outlives a broker restart) match no client of ours.
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(16))
        .unwrap_or(1);
    let next = AtomicU32::new(start.max(PROBE_CLIENT + 1));
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let mut id = next.fetch_add(1, Ordering::Relaxed);
        if id == PROBE_CLIENT {
            id = next.fetch_add(1, Ordering::Relaxed);
        }
        let Ok(w) = conn.try_clone() else { continue };
        // A client that stops reading must not stall everyone's answers for long.
        let _ = w.set_write_timeout(Some(Duration::from_secs(10)));
        if conn.write_all(&hello(&ram)).is_err() {
            continue;
        }
        lock(&clients).insert(id, Arc::new(Mutex::new(w)));
        let clients = clients.clone();
        let qemu_w = qemu_w.clone();
        std::thread::spawn(move || {
            // Requests until the client leaves or sends garbage (an empty frame is
            // not a request: it is what tells the testbed a client has gone).
            while let Ok(Some((f, body))) = read_frame(&mut conn) {
                if body.is_empty() {
                    break;
                }
                if write_frame(&mut *lock(&qemu_w), id, f.seq, &body).is_err() {
                    std::process::exit(1);
                }
            }
            lock(&clients).remove(&id);
            // The testbed kicks this client's run (if any) out of the guest and drops
            // its queued ones.
            if write_frame(&mut *lock(&qemu_w), id, 0, &[]).is_err() {
                std::process::exit(1);
            }
        });
    }
}
