//! virtio-console (virtio 1.x 5.3): port 0 is the console (Linux's hvc0) on bhyve's
//! console; each `NAME=PATH` adds a named port (Linux's /dev/vport*, /dev/virtio-ports/
//! NAME) on a unix socket bhyve creates at PATH.
//!
//! Port 0 writes what the guest transmits to bhyve's console output (the terminal with
//! `-b`) and takes typed input through [`ConsoleInput`]. A named port's socket takes one
//! client at a time (a second is closed at once); what the guest writes while nobody is
//! connected is dropped, as on a serial line nobody listens to. Sockets are created
//! when bhyve opens its backends, refused if PATH exists, and removed when bhyve ends
//! ([`remove_sockets`] on every exit path).
//!
//! With named ports the device offers VIRTIO_CONSOLE_F_MULTIPORT and speaks the control
//! protocol on queues 2 and 3: the driver says DEVICE_READY, the device adds every port,
//! the driver says PORT_READY for each, the device names it (or makes port 0 the
//! console) and tells it whether a client is connected (PORT_OPEN).
//!
//! A guest printing through hvc0 hands over a whole buffer per queue notification,
//! where a UART costs an exit per byte or two. Port 0's output is written by the vCPU
//! thread that notified it ([`InlineQueue`]), so the buffer is back in the used ring
//! before the guest, which waits for it in a busy loop, runs again.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;

use crate::doorbell::RESET_BIT;
use crate::options::OptionError;
use crate::queue::{pieces, DeviceShared, Popped};
use crate::transport::{Device, DeviceInfo, HostFd, InlineQueue};

/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 128;
/// Input held for the guest before typing is pushed back (as a UART's FIFO does).
pub const INPUT_CAP: usize = 4096;
/// Named ports at most (with the console: 16, FreeBSD bhyve's limit).
pub const MAX_NAMED_PORTS: usize = 15;
/// The doorbell bit input arrival rings (no queue has this number).
const INPUT_BIT: u32 = 30;
/// Queues 2 and 3: the control queues (with MULTIPORT).
const CONTROL_RX: usize = 2;
const CONTROL_TX: usize = 3;

/// VIRTIO_CONSOLE_F_MULTIPORT.
pub const F_MULTIPORT: u32 = 1;

/// Control events (virtio 1.x 5.3.6.2).
pub mod event {
    pub const DEVICE_READY: u16 = 0;
    pub const DEVICE_ADD: u16 = 1;
    pub const PORT_READY: u16 = 3;
    pub const CONSOLE_PORT: u16 = 4;
    pub const PORT_OPEN: u16 = 6;
    pub const PORT_NAME: u16 = 7;
}

/// Port `id`'s receive queue (its transmit queue is the next one).
pub fn rx_queue(id: u32) -> usize {
    if id == 0 {
        0
    } else {
        2 + 2 * id as usize
    }
}

/// A socket file to remove when bhyve ends: its directory, opened when the socket was
/// made, and its name there, so that the removal (`unlinkat`) needs no path lookup and
/// works in capability mode too (bhyve on FreeBSD enters it before the guest runs).
struct SocketFile {
    path: PathBuf,
    dir: OwnedFd,
    name: std::ffi::OsString,
}

impl SocketFile {
    fn remove(&self) {
        let _ = nix::unistd::unlinkat(
            Some(self.dir.as_raw_fd()),
            self.name.as_os_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
}

/// Sockets to remove when bhyve ends.
static SOCKETS: Mutex<Vec<SocketFile>> = Mutex::new(Vec::new());

/// Removes every socket the named ports created (call on every way out of bhyve:
/// `process::exit` runs no destructors).
pub fn remove_sockets() {
    let mut all = SOCKETS.lock().unwrap_or_else(|p| p.into_inner());
    for f in all.drain(..) {
        f.remove();
    }
}

/// The directories of the sockets still to remove (bhyve limits them to unlinkat
/// before it enters capability mode).
pub fn socket_dirs() -> Vec<RawFd> {
    SOCKETS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|f| f.dir.as_raw_fd())
        .collect()
}

/// `-s N,virtio-console[,NAME=PATH...]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConsoleOptions {
    pub ports: Vec<(String, PathBuf)>,
}

impl ConsoleOptions {
    pub fn parse(options: Option<&str>) -> Result<ConsoleOptions, OptionError> {
        let mut ports: Vec<(String, PathBuf)> = Vec::new();
        for w in options.unwrap_or("").split(',').filter(|w| !w.is_empty()) {
            let Some((name, path)) = w.split_once('=') else {
                return Err(OptionError::NotNamePath(w.into()));
            };
            let name_ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !name_ok {
                return Err(OptionError::BadPortName(name.into()));
            }
            if path.is_empty() {
                return Err(OptionError::NoSocketPath(name.into()));
            }
            if ports.iter().any(|(n, _)| n == name) {
                return Err(OptionError::PortNamedTwice(name.into()));
            }
            ports.push((name.into(), path.into()));
        }
        if ports.len() > MAX_NAMED_PORTS {
            return Err(OptionError::TooManyPorts(MAX_NAMED_PORTS));
        }
        Ok(ConsoleOptions { ports })
    }
}

/// Why a named port's socket cannot be created.
#[derive(Debug, thiserror::Error)]
pub enum PortSocketError {
    #[error("{}: exists; bhyve creates the port's socket there (remove it first)", .0.display())]
    Exists(PathBuf),
    #[error("{}: cannot create the socket: {}", .0.display(), .1)]
    Bind(PathBuf, #[source] std::io::Error),
    #[error("{}: {}", .0.display(), .1)]
    Setup(PathBuf, #[source] std::io::Error),
}

/// A named port's listening socket and its one client.
#[derive(Debug)]
pub struct PortSocket {
    name: String,
    path: PathBuf,
    listener: UnixListener,
    client: Option<UnixStream>,
}

impl PortSocket {
    /// Creates the socket at `path`, which must not exist.
    pub fn create(name: &str, path: &Path) -> Result<PortSocket, PortSocketError> {
        if path.symlink_metadata().is_ok() {
            return Err(PortSocketError::Exists(path.into()));
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let file = path
            .file_name()
            .ok_or_else(|| {
                PortSocketError::Bind(path.into(), std::io::Error::from_raw_os_error(libc::EINVAL))
            })?
            .to_os_string();
        let dir: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(parent)
            .map_err(|e| PortSocketError::Bind(path.into(), e))?
            .into();
        let listener =
            UnixListener::bind(path).map_err(|e| PortSocketError::Bind(path.into(), e))?;
        SOCKETS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(SocketFile {
                path: path.to_path_buf(),
                dir,
                name: file,
            });
        listener
            .set_nonblocking(true)
            .map_err(|e| PortSocketError::Setup(path.into(), e))?;
        Ok(PortSocket {
            name: name.into(),
            path: path.to_path_buf(),
            listener,
            client: None,
        })
    }
}

impl PortSocket {
    /// The descriptors this port keeps: its listening socket and its client, if any.
    pub fn descriptors(&self) -> Vec<RawFd> {
        let mut v = vec![self.listener.as_raw_fd()];
        v.extend(self.client.as_ref().map(|c| c.as_raw_fd()));
        v
    }
}

impl Drop for PortSocket {
    fn drop(&mut self) {
        let mut all = SOCKETS.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|f| {
            if f.path == self.path {
                f.remove();
                false
            } else {
                true
            }
        });
    }
}

#[derive(Default)]
struct Input {
    bytes: VecDeque<u8>,
    /// The running device, once its worker started.
    dev: Option<Arc<DeviceShared>>,
}

/// Where console input goes: bytes wait here until the guest posts receive buffers.
#[derive(Clone, Default)]
pub struct ConsoleInput(Arc<Mutex<Input>>);

impl ConsoleInput {
    fn lock(&self) -> MutexGuard<'_, Input> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues what fits of `bytes` for the guest; returns how many were taken (0 when
    /// [`INPUT_CAP`] bytes already wait: the caller retries later).
    pub fn push(&self, bytes: &[u8]) -> usize {
        let mut input = self.lock();
        let n = bytes.len().min(INPUT_CAP - input.bytes.len());
        input.bytes.extend(&bytes[..n]);
        if n > 0 {
            if let Some(dev) = &input.dev {
                dev.bell.ring(INPUT_BIT);
            }
        }
        n
    }
}

/// A named port's state beside its socket.
struct Port {
    sock: PortSocket,
    /// The driver said PORT_READY.
    ready: bool,
    /// Bytes read from the client, waiting for receive buffers.
    pending: VecDeque<u8>,
}

/// Port 0's output: the vCPU thread that notifies its transmit queue writes it.
struct Transmit {
    out: Box<dyn Write + Send>,
    buf: Vec<u8>,
}

impl Transmit {
    /// Port 0's available output to bhyve's console.
    fn serve(&mut self, dev: &DeviceShared) {
        while let Some(p) = dev.pop(1) {
            if gather(dev, &p, &mut self.buf) {
                // Output that cannot be written (a closed terminal) is dropped.
                let _ = self.out.write_all(&self.buf);
            }
            dev.complete(1, &p, 0);
        }
        let _ = self.out.flush();
    }
}

/// The bytes of a transmit chain (readable descriptors only) into `buf`; false for a
/// chain with a device-writable part or outside guest memory.
fn gather(dev: &DeviceShared, p: &Popped, buf: &mut Vec<u8>) -> bool {
    buf.clear();
    if p.chain.descs.iter().any(|d| d.writable) {
        return false;
    }
    let Some(parts) = pieces(&p.chain.descs, 0, 0) else {
        return false;
    };
    for (gpa, len) in parts {
        let start = buf.len();
        buf.resize(start + len as usize, 0);
        if !dev.read(gpa, &mut buf[start..]) {
            return false;
        }
    }
    true
}

/// The console device.
pub struct Console {
    /// Port 0's output, until the transport takes it as its inline queue.
    transmit: Option<Transmit>,
    input: ConsoleInput,
    ports: Vec<Port>,
    /// Control messages for the driver, waiting for control receive buffers.
    control: VecDeque<Vec<u8>>,
    buf: Vec<u8>,
}

impl Console {
    /// A console writing port 0 to `out`, with the named `ports`; feed port 0's input
    /// through the returned handle.
    pub fn new(out: Box<dyn Write + Send>, ports: Vec<PortSocket>) -> (Console, ConsoleInput) {
        let input = ConsoleInput::default();
        let ports = ports
            .into_iter()
            .map(|sock| Port {
                sock,
                ready: false,
                pending: VecDeque::new(),
            })
            .collect();
        (
            Console {
                transmit: Some(Transmit {
                    out,
                    buf: Vec::new(),
                }),
                input: input.clone(),
                ports,
                control: VecDeque::new(),
                buf: Vec::new(),
            },
            input,
        )
    }

    fn multiport(&self) -> bool {
        !self.ports.is_empty()
    }

    /// A named port's output to its client (dropped without one).
    fn transmit_port(&mut self, dev: &DeviceShared, i: usize) {
        let q = rx_queue(i as u32 + 1) + 1;
        while let Some(p) = dev.pop(q) {
            if gather(dev, &p, &mut self.buf) {
                if let Some(c) = &mut self.ports[i].sock.client {
                    if c.write_all(&self.buf).is_err() {
                        self.disconnect(i);
                    }
                }
            }
            dev.complete(q, &p, 0);
        }
    }

    /// Fills receive buffers of queue `q` from `bytes`.
    fn fill(dev: &DeviceShared, q: usize, bytes: &mut VecDeque<u8>) {
        while !bytes.is_empty() {
            let Some(p) = dev.pop(q) else {
                return;
            };
            let mut written = 0u32;
            if p.chain.descs.iter().all(|d| d.writable) {
                for d in &p.chain.descs {
                    let n = (d.len as usize).min(bytes.len());
                    let chunk: Vec<u8> = bytes.iter().take(n).copied().collect();
                    if n == 0 || !dev.write(d.addr, &chunk) {
                        break;
                    }
                    bytes.drain(..n);
                    written += n as u32;
                }
            }
            dev.complete(q, &p, written);
        }
    }

    fn receive_console(&mut self, dev: &DeviceShared) {
        let mut input = self.input.lock();
        Self::fill(dev, 0, &mut input.bytes);
    }

    fn send_control(&mut self, id: u32, event: u16, value: u16, data: &[u8]) {
        let mut m = Vec::with_capacity(8 + data.len());
        m.extend_from_slice(&id.to_le_bytes());
        m.extend_from_slice(&event.to_le_bytes());
        m.extend_from_slice(&value.to_le_bytes());
        m.extend_from_slice(data);
        self.control.push_back(m);
    }

    /// Delivers queued control messages, one per receive buffer.
    fn flush_control(&mut self, dev: &DeviceShared) {
        while !self.control.is_empty() {
            let Some(p) = dev.pop(CONTROL_RX) else {
                return;
            };
            let mut written = 0u32;
            if let Some(m) = self.control.pop_front() {
                let d = p.chain.descs.first().copied();
                if let Some(d) = d.filter(|d| d.writable && d.len as usize >= m.len()) {
                    if dev.write(d.addr, &m) {
                        written = m.len() as u32;
                    }
                }
            }
            dev.complete(CONTROL_RX, &p, written);
        }
    }

    /// Control messages from the driver.
    fn control_from_driver(&mut self, dev: &DeviceShared) {
        while let Some(p) = dev.pop(CONTROL_TX) {
            let ok = gather(dev, &p, &mut self.buf) && self.buf.len() >= 8;
            dev.complete(CONTROL_TX, &p, 0);
            if !ok {
                continue;
            }
            let id = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
            let ev = u16::from_le_bytes([self.buf[4], self.buf[5]]);
            let value = u16::from_le_bytes([self.buf[6], self.buf[7]]);
            match (ev, id) {
                (event::DEVICE_READY, _) if value == 1 => {
                    for port in 0..=self.ports.len() as u32 {
                        self.send_control(port, event::DEVICE_ADD, 0, &[]);
                    }
                }
                (event::PORT_READY, 0) if value == 1 => {
                    self.send_control(0, event::CONSOLE_PORT, 1, &[]);
                    self.send_control(0, event::PORT_OPEN, 1, &[]);
                }
                (event::PORT_READY, id) if value == 1 => {
                    let Some(port) = self.ports.get_mut(id as usize - 1) else {
                        continue;
                    };
                    port.ready = true;
                    let name = port.sock.name.clone().into_bytes();
                    let open = u16::from(port.sock.client.is_some());
                    self.send_control(id, event::PORT_NAME, 1, &name);
                    self.send_control(id, event::PORT_OPEN, open, &[]);
                }
                // The guest opening or closing its end, and anything else: nothing to do.
                _ => {}
            }
        }
    }

    fn accept(&mut self, i: usize) {
        while let Ok((stream, _)) = self.ports[i].sock.listener.accept() {
            if self.ports[i].sock.client.is_some() {
                // One client at a time: the newcomer is closed at once.
                continue;
            }
            let _ = stream.set_nonblocking(false);
            self.ports[i].sock.client = Some(stream);
            if self.ports[i].ready {
                self.send_control(i as u32 + 1, event::PORT_OPEN, 1, &[]);
            }
        }
    }

    fn disconnect(&mut self, i: usize) {
        if self.ports[i].sock.client.take().is_some() && self.ports[i].ready {
            self.send_control(i as u32 + 1, event::PORT_OPEN, 0, &[]);
        }
    }

    /// Reads what the client sent (it was readable).
    fn read_client(&mut self, i: usize) {
        let mut buf = [0u8; 4096];
        let r = match &mut self.ports[i].sock.client {
            Some(c) => {
                let _ = c.set_nonblocking(true);
                let r = c.read(&mut buf);
                let _ = c.set_nonblocking(false);
                r
            }
            None => return,
        };
        match r {
            Ok(0) => self.disconnect(i),
            Ok(n) => self.ports[i].pending.extend(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => self.disconnect(i),
        }
    }

    fn reset(&mut self) {
        self.control.clear();
        for p in &mut self.ports {
            p.ready = false;
            p.pending.clear();
        }
    }
}

/// What each polled fd is.
enum Polled {
    Listener(usize),
    Client(usize),
}

impl Device for Console {
    fn info(&self) -> DeviceInfo {
        let nports = 1 + self.ports.len();
        let mut config = vec![0u8; 12];
        config[4..8].copy_from_slice(&(nports as u32).to_le_bytes());
        let queues = if self.multiport() { 2 * nports + 2 } else { 2 };
        DeviceInfo {
            id: VIRTIO_ID_CONSOLE,
            name: "virtio-console",
            features: if self.multiport() {
                1 << F_MULTIPORT
            } else {
                0
            },
            queue_sizes: vec![QUEUE_SIZE; queues],
            // struct virtio_console_config: cols, rows, max_nr_ports, emerg_wr.
            config,
        }
    }

    fn inline_queue(&mut self) -> Option<InlineQueue> {
        let transmit = Mutex::new(self.transmit.take()?);
        Some(InlineQueue {
            queue: 1,
            serve: Box::new(move |dev| {
                transmit
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .serve(dev)
            }),
        })
    }

    fn host_fds(&self) -> Vec<HostFd> {
        self.ports
            .iter()
            .flat_map(|p| p.sock.descriptors())
            .map(HostFd::Socket)
            .collect()
    }

    fn run(mut self: Box<Self>, dev: Arc<DeviceShared>) {
        self.input.lock().dev = Some(Arc::clone(&dev));
        loop {
            // Listeners always; a client only while nothing it sent is waiting.
            let mut what = Vec::new();
            let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
            for (i, p) in self.ports.iter().enumerate() {
                fds.push(p.sock.listener.as_fd());
                what.push(Polled::Listener(i));
                if let Some(c) = &p.sock.client {
                    if p.pending.is_empty() {
                        fds.push(c.as_fd());
                        what.push(Polled::Client(i));
                    }
                }
            }
            let wake = dev.bell.wait(&fds, None);
            drop(fds);
            if wake.stop {
                self.input.lock().dev = None;
                return;
            }
            if wake.queues & (1 << RESET_BIT) != 0 {
                self.reset();
            }
            for (k, w) in what.iter().enumerate() {
                if wake.fds_ready & (1 << k) == 0 {
                    continue;
                }
                match *w {
                    Polled::Listener(i) => self.accept(i),
                    Polled::Client(i) => self.read_client(i),
                }
            }
            if !dev.driver_ok() {
                continue;
            }
            self.receive_console(&dev);
            if self.multiport() {
                self.control_from_driver(&dev);
                for i in 0..self.ports.len() {
                    self.transmit_port(&dev, i);
                    let q = rx_queue(i as u32 + 1);
                    Self::fill(&dev, q, &mut self.ports[i].pending);
                }
                self.flush_control(&dev);
            }
        }
    }
}
