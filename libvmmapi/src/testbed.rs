//! The testbed backend: requests go to the testbed broker's Unix socket (the path in
//! `VMM_TESTBED`), which forwards them to the vmm core running in QEMU
//! (docs/testbed.md, "Serving /dev/vmm"). Same [`Request`] encoding as every backend.
//!
//! Each request uses one connection to itself (connections are pooled), so vCPU threads
//! blocked in VM_RUN never hold up another thread's request. Guest memory is the
//! testbed's RAM file mapped at the testbed physical address of each piece of the
//! range, which the testbed tells through its `TESTBED_GPA_TO_PA` extension.

use crate::backend::Backend;
use crate::error::BackendError;
use crate::memory::{Mapping, MmapOwner};
use crate::request::{Request, Target};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use vmm_sys::wire::{self, Frame, FRAME_HEADER};

const HELLO_MAGIC: &[u8; 4] = b"VMTB";
const HELLO_VERSION: u32 = 1;

/// A client of the testbed broker.
#[derive(Debug)]
pub struct Testbed {
    socket: PathBuf,
    ram: File,
    ram_base: u64,
    idle: Mutex<Vec<UnixStream>>,
    seq: AtomicU32,
    /// [`NO_SYNC_ENV`] was set: device writes are not synced (benchmarks only).
    no_sync: bool,
}

/// Set to 1, device writes are not made visible to the testbed's CPU
/// ([`Backend::device_wrote`] does nothing): a guest may then run stale code. Only
/// `cargo xtask bench-devices` sets it, to measure what the sync costs.
pub const NO_SYNC_ENV: &str = "VMM_TESTBED_NO_SYNC";

fn unavailable(socket: &Path, what: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(format!(
        "testbed broker {} (VMM_TESTBED): {what}",
        socket.display()
    ))
}

impl Testbed {
    /// Connects to the broker at `socket` and opens the testbed's RAM file it names.
    pub fn connect(socket: impl Into<PathBuf>) -> Result<Testbed, BackendError> {
        let socket = socket.into();
        let (stream, ram_path, ram_base) = Self::open(&socket)?;
        let ram = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&ram_path)
            .map_err(|e| unavailable(&socket, format!("RAM file {}: {e}", ram_path.display())))?;
        Ok(Testbed {
            socket,
            ram,
            ram_base,
            idle: Mutex::new(vec![stream]),
            seq: AtomicU32::new(1),
            no_sync: std::env::var_os(NO_SYNC_ENV).is_some_and(|v| v == "1"),
        })
    }

    /// A new connection: reads the broker's hello (RAM file path and base).
    fn open(socket: &Path) -> Result<(UnixStream, PathBuf, u64), BackendError> {
        let mut s = UnixStream::connect(socket).map_err(|e| {
            unavailable(
                socket,
                format!("{e} (is the testbed up? cargo xtask testbed up)"),
            )
        })?;
        let mut h = [0u8; 18];
        s.read_exact(&mut h)
            .map_err(|e| unavailable(socket, format!("hello: {e}")))?;
        let version = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if &h[..4] != HELLO_MAGIC || version != HELLO_VERSION {
            return Err(unavailable(socket, "not a vmm testbed broker (bad hello)"));
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[8..16]);
        let base = u64::from_le_bytes(b);
        let mut path = vec![0u8; usize::from(u16::from_le_bytes([h[16], h[17]]))];
        s.read_exact(&mut path)
            .map_err(|e| unavailable(socket, format!("hello: {e}")))?;
        let path = PathBuf::from(String::from_utf8_lossy(&path).into_owned());
        Ok((s, path, base))
    }

    fn conn(&self) -> Result<UnixStream, BackendError> {
        if let Some(s) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(s);
        }
        Ok(Self::open(&self.socket)?.0)
    }

    /// One message exchange; the connection goes back to the pool only after a
    /// complete answer.
    fn call(&self, msg: &[u8]) -> Result<Vec<u8>, BackendError> {
        let mut s = self.conn()?;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let h = Frame {
            client: 0,
            seq,
            len: msg.len() as u32,
        }
        .encode();
        let io = |e: std::io::Error| unavailable(&self.socket, e);
        s.write_all(&[&h[..], msg].concat()).map_err(io)?;
        let mut rh = [0u8; FRAME_HEADER];
        s.read_exact(&mut rh).map_err(io)?;
        let f = Frame::decode(&rh).map_err(|e| unavailable(&self.socket, e))?;
        if f.seq != seq {
            return Err(unavailable(&self.socket, "answer out of sequence"));
        }
        let mut body = vec![0u8; f.len as usize];
        s.read_exact(&mut body).map_err(io)?;
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(s);
        Ok(body)
    }

    /// Rewrites guest memory `[gpa, gpa + len)` of `vm` through the testbed's CPU, so
    /// code written there through a mapping is what the guest executes (QEMU's TCG
    /// does not see writes made through the RAM file). Needed only for memory the
    /// guest may already have executed; see docs/testbed.md.
    pub fn sync(&self, vm: &str, gpa: u64, len: u64) -> Result<(), BackendError> {
        let mut arg = [0u8; 16];
        arg[..8].copy_from_slice(&gpa.to_le_bytes());
        arg[8..].copy_from_slice(&len.to_le_bytes());
        let mut req = Request {
            target: Target::Vm(vm.to_string()),
            cmd: wire::TESTBED_SYNC,
            arg: arg.to_vec(),
            buffers: Vec::new(),
        };
        self.execute(&mut req)
    }

    /// [`Testbed::sync`] for every `{gpa; len}` pair in `ranges` (16 bytes each), in one
    /// request (`TESTBED_SYNC_LIST`).
    fn sync_list(&self, vm: &str, ranges: &[u8]) -> Result<(), BackendError> {
        let count = (ranges.len() / 16) as u64;
        let mut arg = [0u8; 16];
        arg[8..].copy_from_slice(&count.to_le_bytes());
        let mut req = Request {
            target: Target::Vm(vm.to_string()),
            cmd: wire::TESTBED_SYNC_LIST,
            arg: arg.to_vec(),
            buffers: Vec::new(),
        }
        .with_buffer(0, crate::request::Dir::In, ranges.to_vec());
        self.execute(&mut req)
    }

    /// The testbed physical address behind `gpa` and the contiguous bytes from there.
    fn gpa_to_pa(&self, vm: &str, gpa: u64) -> Result<(u64, u64), BackendError> {
        let mut arg = vec![0u8; 24];
        arg[..8].copy_from_slice(&gpa.to_le_bytes());
        let mut req = Request {
            target: Target::Vm(vm.to_string()),
            cmd: wire::TESTBED_GPA_TO_PA,
            arg,
            buffers: Vec::new(),
        };
        self.execute(&mut req)?;
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&req.arg[i..i + 8]);
            u64::from_le_bytes(b)
        };
        Ok((word(8), word(16)))
    }
}

impl Backend for Testbed {
    fn name(&self) -> &'static str {
        "testbed"
    }

    fn execute(&self, req: &mut Request) -> Result<(), BackendError> {
        req.check().map_err(|_| BackendError::Errno(libc::EINVAL))?;
        let answer = self.call(&req.encode())?;
        match req.apply_response(&answer) {
            Ok(0) => Ok(()),
            Ok(wire::ERR_NO_SUCH_VM) => Err(BackendError::NoSuchVm),
            Ok(e) => Err(BackendError::Errno(e)),
            Err(e) => Err(unavailable(&self.socket, format!("bad answer: {e}"))),
        }
    }

    fn device_wrote(&self, vm: &str, ranges: &[(u64, u64)]) -> Result<(), BackendError> {
        if self.no_sync {
            return Ok(());
        }
        // The testbed takes 8-byte aligned ranges: widen each to cover every byte.
        let mut list = Vec::with_capacity(ranges.len() * 16);
        for &(gpa, len) in ranges {
            let start = gpa & !7;
            let end = gpa
                .checked_add(len)
                .and_then(|e| e.checked_add(7))
                .ok_or(BackendError::Errno(libc::EINVAL))?
                & !7;
            if end > start {
                list.extend_from_slice(&start.to_le_bytes());
                list.extend_from_slice(&(end - start).to_le_bytes());
            }
        }
        for chunk in list.chunks(wire::SYNC_LIST_MAX * 16) {
            self.sync_list(vm, chunk)?;
        }
        Ok(())
    }

    fn map_memory(&self, vm: &str, gpa: u64, len: usize) -> Result<Mapping, BackendError> {
        let page = crate::PAGE_SIZE;
        if !gpa.is_multiple_of(page) || len == 0 {
            return Err(BackendError::Errno(libc::EINVAL));
        }
        // Reserve the whole range, then put each physically contiguous piece of the RAM
        // file over it.
        let owner = MmapOwner::anonymous(len)
            .map_err(|e| BackendError::Errno(e.raw_os_error().unwrap_or(libc::ENOMEM)))?;
        let base = owner.as_ptr();
        let mut done = 0u64;
        while done < len as u64 {
            let (pa, avail) = self.gpa_to_pa(vm, gpa + done)?;
            let off = pa
                .checked_sub(self.ram_base)
                .filter(|o| o.is_multiple_of(page))
                .ok_or(BackendError::Errno(libc::EINVAL))?;
            let n = avail.min(len as u64 - done);
            if n == 0 {
                return Err(BackendError::Errno(libc::EINVAL));
            }
            // SAFETY: MAP_FIXED over part of our own reservation (done + n <= len), so
            // nothing else is replaced; the file is the testbed's RAM.
            let p = unsafe {
                libc::mmap(
                    base.add(done as usize).cast(),
                    n as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    self.ram.as_raw_fd(),
                    off as libc::off_t,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(BackendError::Errno(
                    std::io::Error::last_os_error()
                        .raw_os_error()
                        .unwrap_or(libc::ENOMEM),
                ));
            }
            done += n.div_ceil(page) * page;
        }
        let ptr = NonNull::new(base).ok_or(BackendError::Errno(libc::ENOMEM))?;
        // SAFETY: the whole reservation, kept mapped by `owner`; guest memory is only
        // accessed volatilely through vm-memory.
        Ok(unsafe { Mapping::new(ptr, len, Arc::new(owner)) })
    }
}

#[cfg(all(test, feature = "fake"))]
mod tests {
    //! The client against a stand-in broker in this process: it speaks the broker's
    //! protocol (hello, frames) and executes the decoded requests on the fake, so the
    //! transport (pooling, sequence numbers, errno and "no such VM" mapping, concurrent
    //! threads) is tested without QEMU. The real thing: tests/testbed-broker/tests/serve.rs.
    use super::*;
    use crate::fake::FakeVmm;
    use crate::Vm;
    use std::os::unix::net::UnixListener;
    use vmm_sys::reg::Reg;

    fn stand_in_broker(tag: &str) -> (PathBuf, Arc<FakeVmm>) {
        let dir = std::env::temp_dir().join(format!("libvmmapi-tb-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("vmm.sock");
        let ram = dir.join("ram");
        std::fs::write(&ram, [0u8; 4096]).unwrap();
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock).unwrap();
        let fake = FakeVmm::new();
        let f = fake.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let mut c = conn.unwrap();
                let f = f.clone();
                let path = ram.to_str().unwrap().as_bytes().to_vec();
                std::thread::spawn(move || {
                    let mut hello = Vec::new();
                    hello.extend_from_slice(HELLO_MAGIC);
                    hello.extend_from_slice(&HELLO_VERSION.to_le_bytes());
                    hello.extend_from_slice(&wire::RAM_BASE.to_le_bytes());
                    hello.extend_from_slice(&(path.len() as u16).to_le_bytes());
                    hello.extend_from_slice(&path);
                    c.write_all(&hello).unwrap();
                    let mut h = [0u8; FRAME_HEADER];
                    while c.read_exact(&mut h).is_ok() {
                        let fr = Frame::decode(&h).unwrap();
                        let mut body = vec![0; fr.len as usize];
                        c.read_exact(&mut body).unwrap();
                        let mut req = Request::decode(&body).unwrap();
                        let errno = match f.execute(&mut req) {
                            Ok(()) => 0,
                            Err(BackendError::NoSuchVm) => wire::ERR_NO_SUCH_VM,
                            Err(BackendError::Errno(e)) => e,
                            Err(e) => panic!("{e}"),
                        };
                        let rsp = req.encode_response(errno);
                        let rh = Frame {
                            client: 0,
                            seq: fr.seq,
                            len: rsp.len() as u32,
                        }
                        .encode();
                        c.write_all(&[&rh[..], &rsp].concat()).unwrap();
                    }
                });
            }
        });
        (sock, fake)
    }

    #[test]
    fn requests_travel_and_errors_map() {
        let (sock, fake) = stand_in_broker("basic");
        let tb: Arc<dyn Backend> = Arc::new(Testbed::connect(&sock).unwrap());
        assert_eq!(tb.name(), "testbed");
        let vm = Vm::create_with(tb.clone(), "one").unwrap();
        let e = Vm::create_with(tb.clone(), "one").unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        vm.vcpu(0).unwrap().set_reg(Reg::X(3), 42).unwrap();
        assert_eq!(fake.reg("one", 0, Reg::X(3)), 42);
        assert_eq!(vm.vcpu(0).unwrap().get_regs(&[Reg::X(3)]).unwrap(), [42]);
        assert_eq!(Vm::list_with(&*tb).unwrap(), ["one"]);
        let e = Vm::open_with(tb.clone(), "two")
            .and_then(|v| v.vcpu(0)?.get_reg(Reg::X(0)))
            .unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        vm.destroy().unwrap();
        assert!(Vm::list_with(&*tb).unwrap().is_empty());
    }

    #[test]
    fn threads_use_their_own_connections() {
        let (sock, _fake) = stand_in_broker("threads");
        let tb: Arc<dyn Backend> = Arc::new(Testbed::connect(&sock).unwrap());
        let vm = Vm::create_with(tb.clone(), "t").unwrap();
        let handles: Vec<_> = (0..8u64)
            .map(|i| {
                let cpu = vm.vcpu(0).unwrap();
                std::thread::spawn(move || {
                    for n in 0..50 {
                        let r = Reg::X(i as u8);
                        cpu.set_reg(r, i * 1000 + n).unwrap();
                        assert_eq!(cpu.get_reg(r).unwrap(), i * 1000 + n);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn no_broker_names_the_socket() {
        let e = Testbed::connect("/nonexistent/vmm.sock").unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("/nonexistent/vmm.sock") && s.contains("VMM_TESTBED"),
            "{s}"
        );
    }
}
