//! The testbed backend: requests go to the testbed broker's Unix socket (the path in
//! `VMM_TESTBED`), which forwards them to the vmm core running in QEMU
//! (docs/testbed.md, "Serving /dev/vmm"). Same [`Request`] encoding as every backend.
//!
//! Each request uses one connection to itself (connections are pooled), so vCPU threads
//! blocked in VM_RUN never hold up another thread's request. Guest memory is the
//! testbed's RAM file mapped at the testbed physical address of each piece of the
//! range, which the testbed tells through its `TESTBED_GPA_TO_PA` extension.
//!
//! A vCPU's own requests (VM_RUN, its registers) take its lane (docs/testbed.md,
//! "Lanes"; [`LANES_ENV`]`=0` turns lanes off), and so do the interrupt lines the
//! thread that runs it drives between runs: shared memory in the RAM file the
//! testbed's run CPUs serve. The request is written there and the answer looked for,
//! spinning for [`LANE_SPIN`], then in short sleeps: a guest exit that userspace
//! answers at once then costs no trip through the broker. After [`LANE_POLL`] the
//! client waits for the answer through the broker instead.

use crate::backend::Backend;
use crate::error::BackendError;
use crate::memory::{Mapping, MmapOwner};
use crate::request::{Request, Target};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm_sys::abi::{self, Pod};
use vmm_sys::exit::ExitCode;
use vmm_sys::wire::{self, lane, Frame, FRAME_HEADER};

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
    /// The lanes opened, by (VM, vCPU); `None` where the testbed had none to give.
    lanes: Mutex<Lanes>,
    /// Names this client's lanes to the testbed (each process has its own).
    token: u64,
    /// Lanes are off: [`LANES_ENV`] is `0`, or the testbed has none.
    no_lanes: AtomicBool,
}

thread_local! {
    /// The (VM, vCPU) this thread made its last VM_RUN for: the interrupt lines it
    /// drives between runs take that vCPU's lane.
    static THREAD_RUNS: std::cell::RefCell<Option<(String, i32)>> =
        const { std::cell::RefCell::new(None) };
}

/// Set to 0, a vCPU's requests take the broker like every other request instead of its
/// lane (to compare the two paths, or to rule lanes out).
pub const LANES_ENV: &str = "VMM_TESTBED_LANES";
/// How long a client spins for its lane's answer before it polls in short sleeps.
pub const LANE_SPIN: Duration = Duration::from_micros(50);
/// How long a client looks for its lane's answer before it waits through the broker.
pub const LANE_POLL: Duration = Duration::from_micros(1000);

/// A sleep of ~10 µs between looks at a lane: the thread's timer slack (Linux's
/// default 50 µs) is set to 1 µs first, once per thread.
fn lane_nap() {
    #[cfg(target_os = "linux")]
    {
        thread_local!(static SLACK_SET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
        if !SLACK_SET.get() {
            // SAFETY: PR_SET_TIMERSLACK takes a number and changes only this thread's
            // timer slack.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
            SLACK_SET.set(true);
        }
    }
    std::thread::sleep(Duration::from_micros(10));
}

/// An answer's errno as the request's result (0: done).
fn answer_errno(errno: i32) -> Result<(), BackendError> {
    match errno {
        0 => Ok(()),
        wire::ERR_NO_SUCH_VM => Err(BackendError::NoSuchVm),
        e => Err(BackendError::Errno(e)),
    }
}

type Lanes = HashMap<(String, i32), Option<Arc<Mutex<Lane>>>>;

/// One vCPU's lane, mapped from the RAM file.
#[derive(Debug)]
struct Lane {
    map: crate::memory::MmapOwner,
    /// The last request's sequence number.
    seq: u32,
    /// The register hint the testbed gave with the last VM_RUN's answer, if any.
    hint: Option<RegisterHint>,
}

/// A register's value as the testbed read it after a VM_RUN (the `lane::HINT_*` words),
/// valid while the lane's register generation is still `gen`.
#[derive(Debug, Clone, Copy)]
struct RegisterHint {
    reg: i32,
    value: u64,
    gen: u32,
}

impl Lane {
    /// The hint given with the answer to request `seq`, if the testbed gave one.
    fn hint_for(&self, seq: u32) -> Option<RegisterHint> {
        (self.word(lane::HINT_SEQ).load(Ordering::Acquire) == seq).then(|| RegisterHint {
            reg: self.word(lane::HINT_REG).load(Ordering::Relaxed) as i32,
            value: self.u64_at(lane::HINT_VALUE),
            gen: self.word(lane::HINT_GEN).load(Ordering::Relaxed),
        })
    }

    /// The answer to a request in fixed places, from its errno word.
    fn errno(&self) -> Result<(), BackendError> {
        answer_errno(self.word(lane::ERRNO).load(Ordering::Acquire) as i32)
    }

    /// Register `reg`'s value from the hint, while nothing may have changed it since.
    fn hinted(&self, reg: i32) -> Option<u64> {
        let h = self.hint.filter(|h| h.reg == reg)?;
        (self.word(lane::REG_GEN).load(Ordering::SeqCst) == h.gen).then_some(h.value)
    }

    /// The u64 the lane keeps in the two words at `off` (low word first).
    fn u64_at(&self, off: usize) -> u64 {
        u64::from(self.word(off).load(Ordering::Acquire))
            | u64::from(self.word(off + 4).load(Ordering::Acquire)) << 32
    }

    /// Writes `v` into the two words at `off` (low word first).
    fn set_u64(&self, off: usize, v: u64) {
        self.word(off).store(v as u32, Ordering::Release);
        self.word(off + 4)
            .store((v >> 32) as u32, Ordering::Release);
    }

    fn word(&self, off: usize) -> &AtomicU32 {
        // SAFETY: `off` is one of the lane layout's word offsets (4-byte aligned, below
        // lane::SIZE, the mapping's length); the testbed writes these words too, so
        // they are only ever accessed atomically.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU32) }
    }
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
            lanes: Mutex::new(HashMap::new()),
            token: {
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u32(std::process::id());
                h.finish()
            },
            no_lanes: AtomicBool::new(std::env::var_os(LANES_ENV).is_some_and(|v| v == "0")),
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

    /// A request to the testbed about this client's lane of vCPU `vcpu` of `vm`:
    /// `{ u64 vcpu }` (KICK), `{ u64 vcpu; u64 token }` (OPEN; the lane's PA comes back
    /// in the second word), `{ u64 vcpu; u64 token; u64 seq }` (WAIT).
    fn lane_request(&self, vm: &str, cmd: u64, vcpu: i32, seq: u32) -> Result<u64, BackendError> {
        let words: &[u64] = match cmd {
            wire::TESTBED_LANE_KICK => &[u64::from(vcpu as u32)],
            wire::TESTBED_LANE_OPEN => &[u64::from(vcpu as u32), self.token],
            _ => &[u64::from(vcpu as u32), self.token, u64::from(seq)],
        };
        let mut req = Request {
            target: Target::Vm(vm.to_string()),
            cmd,
            arg: words.iter().flat_map(|w| w.to_le_bytes()).collect(),
            buffers: Vec::new(),
        };
        self.execute_slow(&mut req)?;
        let mut b = [0u8; 8];
        b.copy_from_slice(req.arg.get(8..16).unwrap_or(&[0; 8]));
        Ok(u64::from_le_bytes(b))
    }

    /// This client's lane of vCPU `vcpu` of `vm`; opened and mapped on first use when
    /// `open` (a VM_RUN: a process that never runs the vCPU takes no lane). `None` when
    /// there is none (lanes are then off for this vCPU, or for the client if the
    /// testbed has none at all).
    fn lane(&self, vm: &str, vcpu: i32, open: bool) -> Option<Arc<Mutex<Lane>>> {
        if self.no_lanes.load(Ordering::Relaxed) {
            return None;
        }
        let key = (vm.to_string(), vcpu);
        if let Some(l) = self
            .lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return l.clone();
        }
        if !open {
            return None;
        }
        let lane = match self.lane_request(vm, wire::TESTBED_LANE_OPEN, vcpu, 0) {
            Ok(pa) => pa.checked_sub(self.ram_base).and_then(|off| {
                let map =
                    crate::memory::MmapOwner::map(self.ram.as_raw_fd(), off, lane::SIZE, 0).ok()?;
                Some(Arc::new(Mutex::new(Lane {
                    map,
                    seq: 0,
                    hint: None,
                })))
            }),
            Err(BackendError::Errno(e)) if e == libc::ENOTTY || e == libc::EINVAL => {
                self.no_lanes.store(true, Ordering::Relaxed);
                return None;
            }
            Err(_) => None,
        };
        self.lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, lane.clone());
        lane
    }

    /// One request message through lane `l` of vCPU `vcpu` ([`Self::lane_exchange`]):
    /// the response message.
    fn lane_call(
        &self,
        l: &mut Lane,
        vm: &str,
        vcpu: i32,
        msg: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        self.lane_exchange(l, vm, vcpu, |l| {
            // SAFETY: the request area lies inside the mapping and msg fits it (the
            // caller checked lane::REQ_MAX); only this client writes it.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    msg.as_ptr(),
                    l.map.as_ptr().add(lane::REQ),
                    msg.len(),
                )
            };
            l.word(lane::REQ_LEN)
                .store(msg.len() as u32, Ordering::Release);
            l.word(lane::REQ_KIND)
                .store(lane::KIND_MESSAGE, Ordering::Release);
        })?;
        let len = (l.word(lane::RESP_LEN).load(Ordering::Acquire) as usize).min(lane::RESP_MAX);
        let mut answer = vec![0u8; len];
        // SAFETY: the response area lies inside the mapping; len is bounded by it.
        unsafe {
            std::ptr::copy_nonoverlapping(l.map.as_ptr().add(lane::RESP), answer.as_mut_ptr(), len)
        };
        Ok(answer)
    }

    /// A VM_RUN of the usual shape (libvmmapi's `request::run`) through lane `l` of vCPU
    /// `vcpu` in its fixed places ([`lane::KIND_RUN`]): no message either way. `None`:
    /// `req` has another shape (it then takes the message path).
    fn lane_run(
        &self,
        l: &mut Lane,
        vm: &str,
        vcpu: i32,
        req: &mut Request,
    ) -> Option<Result<(), BackendError>> {
        use crate::request::ptr;
        let shaped = |at: usize, len: usize| {
            req.buffer(at)
                .is_some_and(|b| b.dir == crate::request::Dir::Out && b.data.len() == len)
        };
        let run = req.arg_as::<abi::VmRun>()?;
        if run.cpuid != vcpu
            || run.cpusetsize != abi::CPUSET_SIZE as u64
            || req.buffers.len() != 2
            || !shaped(ptr::RUN_CPUSET, abi::CPUSET_SIZE)
            || !shaped(ptr::RUN_VM_EXIT, size_of::<abi::VmExit>())
        {
            return None;
        }
        let posted = self.lane_exchange(l, vm, vcpu, |l| {
            l.word(lane::CPUID).store(vcpu as u32, Ordering::Release);
            l.word(lane::REQ_KIND)
                .store(lane::KIND_RUN, Ordering::Release);
        });
        if let Err(e) = posted.and_then(|()| l.errno()) {
            return Some(Err(e));
        }
        let copy_out = |req: &mut Request, at: usize, from: usize| {
            if let Some(b) = req.buffer_mut(at) {
                // SAFETY: `from` is a place in the response area, inside the mapping,
                // with room for the buffer (lane::RUN_EXIT, lane::RUN_CPUSET).
                let src =
                    unsafe { std::slice::from_raw_parts(l.map.as_ptr().add(from), b.data.len()) };
                b.data.copy_from_slice(src);
            }
        };
        copy_out(req, ptr::RUN_VM_EXIT, lane::RUN_EXIT);
        let exitcode = req
            .buffer(ptr::RUN_VM_EXIT)
            .and_then(|b| abi::VmExit::from_bytes(&b.data))
            .map(|e| e.exitcode);
        if exitcode == Some(ExitCode::Suspended as i32) || exitcode == Some(ExitCode::Debug as i32)
        {
            copy_out(req, ptr::RUN_CPUSET, lane::RUN_CPUSET);
        }
        Some(Ok(()))
    }

    /// A VM_GET_REGISTER or VM_SET_REGISTER of vCPU `vcpu`'s own through its lane `l` in
    /// fixed places ([`lane::KIND_GET_REGISTER`], [`lane::KIND_SET_REGISTER`]): no
    /// message either way. `None`: `req` has another shape (the message path takes it).
    fn lane_register(
        &self,
        l: &mut Lane,
        vm: &str,
        vcpu: i32,
        req: &mut Request,
    ) -> Option<Result<(), BackendError>> {
        let r = req.arg_as::<abi::VmRegister>()?;
        if r.cpuid != vcpu || !req.buffers.is_empty() {
            return None;
        }
        let set = req.cmd == vmm_sys::ioctl::VM_SET_REGISTER;
        let posted = self.lane_exchange(l, vm, vcpu, |l| {
            l.word(lane::CPUID).store(vcpu as u32, Ordering::Release);
            l.word(lane::REG_NUM)
                .store(r.regnum as u32, Ordering::Release);
            if set {
                l.set_u64(lane::REG_VALUE, r.regval);
            }
            let kind = if set {
                lane::KIND_SET_REGISTER
            } else {
                lane::KIND_GET_REGISTER
            };
            l.word(lane::REQ_KIND).store(kind, Ordering::Release);
        });
        if let Err(e) = posted.and_then(|()| l.errno()) {
            return Some(Err(e));
        }
        if !set {
            let value = l.u64_at(lane::REG_RESULT);
            req.arg[8..16].copy_from_slice(&value.to_le_bytes());
        }
        Some(Ok(()))
    }

    /// One request through lane `l` of vCPU `vcpu`: `post` writes it, then it is posted
    /// (a new sequence number), kicked if the testbed is not serving lanes, and the
    /// answer spun for up to [`LANE_SPIN`], polled in short sleeps up to
    /// [`LANE_POLL`], and waited for through the broker after that.
    fn lane_exchange(
        &self,
        l: &mut Lane,
        vm: &str,
        vcpu: i32,
        post: impl FnOnce(&Lane),
    ) -> Result<(), BackendError> {
        l.seq = l.seq.wrapping_add(1);
        let seq = l.seq;
        post(l);
        l.word(lane::REQ_SEQ).store(seq, Ordering::SeqCst);
        if l.word(lane::SERVING).load(Ordering::SeqCst) == 0 {
            self.lane_request(vm, wire::TESTBED_LANE_KICK, vcpu, seq)?;
        }
        let done = |l: &Lane| l.word(lane::RESP_SEQ).load(Ordering::Acquire) == seq;
        let start = Instant::now();
        loop {
            let waited = start.elapsed();
            if done(l) || waited >= LANE_POLL {
                break;
            }
            if waited < LANE_SPIN {
                // Every round gives the core to a QEMU thread that wants it.
                std::thread::yield_now();
            } else {
                // Then short sleeps, which leave the core to QEMU altogether: with a
                // guest vCPU busy in one QEMU thread and two host cores, a client
                // spinning took the core the answer was computed on.
                lane_nap();
            }
        }
        if !done(l) {
            l.word(lane::CLIENT_WAITING).store(1, Ordering::SeqCst);
            let r = if done(l) {
                Ok(0)
            } else {
                self.lane_request(vm, wire::TESTBED_LANE_WAIT, vcpu, seq)
            };
            l.word(lane::CLIENT_WAITING).store(0, Ordering::SeqCst);
            r?;
        }
        Ok(())
    }

    /// The (VM, vCPU) whose lane `req` may take: a vCPU's own request on a VM, or a
    /// VM-wide lane request (an interrupt line) from the thread that last ran a vCPU of
    /// that VM, which is between two runs of it now.
    fn lane_target(req: &Request) -> Option<(&str, i32)> {
        let Target::Vm(vm) = &req.target else {
            return None;
        };
        if lane::names_vcpu(req.cmd) {
            // Every such request's argument starts with `int cpuid`.
            let b: [u8; 4] = req.arg.get(..4)?.try_into().ok()?;
            return Some((vm.as_str(), i32::from_le_bytes(b)));
        }
        if !lane::CMDS.contains(&req.cmd) {
            return None;
        }
        let vcpu = THREAD_RUNS.with(|r| match &*r.borrow() {
            Some((v, n)) if v == vm => Some(*n),
            _ => None,
        })?;
        Some((vm.as_str(), vcpu))
    }

    /// A request through the broker.
    fn execute_slow(&self, req: &mut Request) -> Result<(), BackendError> {
        let answer = self.call(&req.encode())?;
        self.finish(req, &answer)
    }

    fn finish(&self, req: &mut Request, answer: &[u8]) -> Result<(), BackendError> {
        match req.apply_response(answer) {
            Ok(errno) => answer_errno(errno),
            Err(e) => Err(unavailable(&self.socket, format!("bad answer: {e}"))),
        }
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

    /// The lane requests the testbed has answered since it started and the nanoseconds
    /// of its counter they took, as `(count, ns)` for each of [`lane::CMDS`] in order
    /// (`TESTBED_LANE_STATS`; docs/testbed.md).
    pub fn lane_stats(&self) -> Result<[(u64, u64); lane::CMDS.len()], BackendError> {
        let mut req = Request {
            target: Target::Ctl,
            cmd: wire::TESTBED_LANE_STATS,
            arg: vec![0; 16 * lane::CMDS.len()],
            buffers: Vec::new(),
        };
        self.execute(&mut req)?;
        let mut out = [(0, 0); lane::CMDS.len()];
        for (o, pair) in out.iter_mut().zip(req.arg.chunks_exact(16)) {
            let word = |b: &[u8]| {
                let mut w = [0u8; 8];
                w.copy_from_slice(b);
                u64::from_le_bytes(w)
            };
            *o = (word(&pair[..8]), word(&pair[8..]));
        }
        Ok(out)
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
        if let Some((vm, vcpu)) = Self::lane_target(req) {
            let open = req.cmd == vmm_sys::ioctl::VM_RUN;
            if open {
                THREAD_RUNS.with(|r| {
                    let mut r = r.borrow_mut();
                    if !matches!(&*r, Some((v, n)) if v == vm && *n == vcpu) {
                        *r = Some((vm.to_string(), vcpu));
                    }
                });
            }
            if let Some(l) = self.lane(vm, vcpu, open) {
                // Busy (another thread's request on this vCPU): the broker's way.
                if let Ok(mut g) = l.try_lock() {
                    // A read of the register a store exit named: the testbed's hint
                    // holds it, unless something may have changed it since.
                    if req.cmd == vmm_sys::ioctl::VM_GET_REGISTER {
                        let hinted = req
                            .arg_as::<abi::VmRegister>()
                            .and_then(|r| g.hinted(r.regnum));
                        if let Some(v) = hinted {
                            req.arg[8..16].copy_from_slice(&v.to_le_bytes());
                            return Ok(());
                        }
                    }
                    // Whatever else this request does, the old hint is gone.
                    g.hint = None;
                    let vm = vm.to_string();
                    if req.cmd == vmm_sys::ioctl::VM_RUN {
                        if let Some(r) = self.lane_run(&mut g, &vm, vcpu, req) {
                            if r.is_ok() {
                                g.hint = g.hint_for(g.seq);
                            }
                            return r;
                        }
                    }
                    if matches!(
                        req.cmd,
                        vmm_sys::ioctl::VM_GET_REGISTER | vmm_sys::ioctl::VM_SET_REGISTER
                    ) {
                        if let Some(r) = self.lane_register(&mut g, &vm, vcpu, req) {
                            return r;
                        }
                    }
                    let msg = req.encode();
                    if msg.len() <= lane::REQ_MAX {
                        let answer = self.lane_call(&mut g, &vm, vcpu, &msg)?;
                        if req.cmd == vmm_sys::ioctl::VM_RUN {
                            g.hint = g.hint_for(g.seq);
                        }
                        drop(g);
                        return self.finish(req, &answer);
                    }
                }
            }
        }
        self.execute_slow(req)?;
        if req.cmd == vmm_sys::ioctl::VMMCTL_VM_DESTROY {
            // Its lanes went back to the testbed's pool: forget them.
            if let Some(d) =
                <vmm_sys::abi::VmmctlVmDestroy as vmm_sys::abi::Pod>::from_bytes(&req.arg)
            {
                let name = String::from_utf8_lossy(d.name_bytes()).into_owned();
                self.lanes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|(vm, _), _| *vm != name);
            }
        }
        Ok(())
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
