//! The testbed channel's wire format, parsed without allocating (no_std), so the
//! testbed kernel and the Linux side share one definition. libvmmapi's
//! `Request::decode`/`encode_response` are built on this module and its
//! `Request::encode`/`apply_response` write and read the same bytes on the client side
//! (docs/libvmmapi.md, "On the wire"); this module is the server side:
//! [`parse_request`] borrows every field from the message, [`write_response`] emits
//! the answer through a byte sink.
//!
//! Also here: the channel framing between the broker and the testbed ([`Frame`]) and
//! the testbed-only requests ([`TESTBED_GPA_TO_PA`], [`TESTBED_SYNC`],
//! [`TESTBED_SYNC_LIST`]), which travel as
//! ordinary requests with ioctl words in group `'t'` (no FreeBSD vmm(4) word uses it).

use crate::ioctl::{self, ioc, IOC_IN, IOC_INOUT, IOC_OUT};

pub const REQ_MAGIC: u32 = u32::from_le_bytes(*b"VMRQ");
pub const RSP_MAGIC: u32 = u32::from_le_bytes(*b"VMRS");
/// Largest pointed-to buffer a request may carry.
pub const MAX_BUFFER: usize = 1 << 20;
/// Most buffers one request may carry.
pub const MAX_BUFFERS: usize = 4;

/// Testbed extension: `{ u64 gpa; u64 pa (out); u64 len (out) }` on /dev/vmm/NAME: the
/// testbed physical address behind guest physical address `gpa` and how many bytes are
/// contiguous from there (within one mapping). The client maps the testbed's RAM file
/// at `pa - RAM_BASE`. ENOENT where no guest memory is mapped.
pub const TESTBED_GPA_TO_PA: u64 = ioc(IOC_INOUT, b't', 1, 24);
/// Testbed extension: `{ u64 gpa; u64 len }` on /dev/vmm/NAME: rewrite guest memory
/// `[gpa, gpa + len)` through the testbed's CPU, so QEMU's TCG drops translations of
/// code the client replaced through the RAM file (DESIGN.md, "The testbed").
pub const TESTBED_SYNC: u64 = ioc(IOC_IN, b't', 2, 16);
/// Testbed extension: `{ u64 ranges; u64 count }` on /dev/vmm/NAME: [`TESTBED_SYNC`]
/// for each of `count` ranges `{ u64 gpa; u64 len }` (8-byte aligned) in the buffer
/// `ranges` points to, in one round trip: what a device's DMA wrote for one request.
pub const TESTBED_SYNC_LIST: u64 = ioc(IOC_IN, b't', 4, 16);
/// Most ranges one [`TESTBED_SYNC_LIST`] carries (its buffer is at most [`MAX_BUFFER`]).
pub const SYNC_LIST_MAX: usize = MAX_BUFFER / 16;
/// Testbed extension: `{ u64 free (out) }` on /dev/vmmctl: how many 4 KiB pages the
/// testbed's page allocator has free, so tests can tell that destroying a VM gave its
/// guest memory and tables back (no FreeBSD counterpart; vmm(4) does not expose it).
pub const TESTBED_FREE_PAGES: u64 = ioc(IOC_OUT, b't', 3, 8);
/// Testbed extension: `{ u64 max; u64 set }` on /dev/vmmctl: with `set` 1 the limit on
/// guest memory over all VMs becomes `max` (FreeBSD's sysctl `hw.vmm.maxmem`); the
/// answer is the limit in `max` and the bytes allocated now in `set`.
pub const TESTBED_MAXMEM: u64 = ioc(IOC_INOUT, b't', 5, 16);
/// Testbed extension: `{ u64 vcpu; u64 token (in), pa (out) }` on /dev/vmm/NAME: the
/// testbed physical address of the lane ([`lane`]) of vCPU `vcpu` for the client that
/// names itself `token` (a random number: each client process has lanes of its own),
/// made on first use and freed with the VM. The client maps [`lane::SIZE`] bytes of the
/// RAM file at `pa - RAM_BASE`.
pub const TESTBED_LANE_OPEN: u64 = ioc(IOC_INOUT, b't', 6, 16);
/// Testbed extension: `{ u64 vcpu }` on /dev/vmm/NAME: the client posted a request in
/// the lane while the testbed was not serving lanes ([`lane::SERVING`] 0): serve them.
pub const TESTBED_LANE_KICK: u64 = ioc(IOC_IN, b't', 7, 8);
/// Testbed extension: `{ u64 vcpu; u64 token; u64 seq }` on /dev/vmm/NAME: answered
/// once the lane's [`lane::RESP_SEQ`] is `seq`: how a client that stopped spinning waits.
pub const TESTBED_LANE_WAIT: u64 = ioc(IOC_IN, b't', 8, 24);
/// Testbed extension: `{ u64 count; u64 ns }` (out) for each of [`lane::CMDS`], in
/// that order, on /dev/vmmctl: how many lane requests of that command the testbed has
/// answered since it started, and the nanoseconds of its counter (CNTPCT) they took from
/// the lane job's first look at the request to its answer written (a lane's first
/// VM_RUN, which carries a new VM's one-time cache maintenance, left out). Under `-icount
/// shift=0` such a nanosecond is one emulated instruction: `cargo xtask bench-exit`
/// reads the testbed side of a userspace exit from it.
pub const TESTBED_LANE_STATS: u64 = ioc(IOC_OUT, b't', 9, 16 * lane::CMDS.len());

/// A lane: the shared-memory fast path of one vCPU's requests between a client and the
/// testbed (docs/testbed.md, "Lanes"), [`SIZE`] bytes of testbed RAM the client maps
/// through the RAM file. The client writes a request message (this module's encoding)
/// at [`REQ`], its length at [`REQ_LEN`], then a new sequence number at [`REQ_SEQ`]; the
/// testbed copies the message out before it parses it, executes it and writes the
/// response message at [`RESP`], its length at [`RESP_LEN`], then that sequence number
/// at [`RESP_SEQ`]. The words are little-endian u32s, each written whole (atomics on
/// both sides). Either side may write anything into the page: the testbed bounds every
/// length it reads, and the client treats a bad response as a broken testbed.
pub mod lane {
    /// Bytes of one lane (four pages).
    pub const SIZE: usize = 16384;
    /// Sequence number of the request in the request area (client).
    pub const REQ_SEQ: usize = 0;
    /// Sequence number of the request whose response is in the response area (testbed).
    pub const RESP_SEQ: usize = 4;
    /// 1 while a lane job of the testbed is free to take new requests without a kick;
    /// 0 when a client must send [`super::TESTBED_LANE_KICK`] after posting (testbed).
    pub const SERVING: usize = 8;
    /// 1 while the client waits in [`super::TESTBED_LANE_WAIT`]: the testbed then
    /// makes the serving CPU answer it when the response is written (client).
    pub const CLIENT_WAITING: usize = 12;
    /// Length of the request message (client).
    pub const REQ_LEN: usize = 16;
    /// Length of the response message (testbed).
    pub const RESP_LEN: usize = 20;
    /// Bumped (wrapping) by the testbed, before it answers, for every request that may
    /// have changed the registers of the lane's vCPU (anything on its VM but a register
    /// read or another vCPU's run), and when the VM is destroyed; never reset, so a
    /// hint from a lane's earlier owner cannot match again.
    pub const REG_GEN: usize = 24;
    /// The register hint (testbed): after a VM_RUN whose exit is a store to emulate
    /// (INST_EMUL, a write), the testbed writes the stored register's number at
    /// [`HINT_REG`], [`REG_GEN`] as it was before the register was read at
    /// [`HINT_GEN`], its value at [`HINT_VALUE`], then that VM_RUN's
    /// sequence number at [`HINT_SEQ`], all before [`RESP_SEQ`]. While [`REG_GEN`]
    /// still equals [`HINT_GEN`], the client may answer a VM_GET_REGISTER of that
    /// register of the lane's vCPU from the hint: the value userspace reads next.
    pub const HINT_SEQ: usize = 28;
    pub const HINT_REG: usize = 32;
    pub const HINT_GEN: usize = 36;
    /// A u64, little-endian, in two words (as [`REG_VALUE`] and [`REG_RESULT`]).
    pub const HINT_VALUE: usize = 40;
    /// What the request area holds (client): [`KIND_MESSAGE`], a request message of
    /// [`REQ_LEN`] bytes at [`REQ`] answered by a response message at [`RESP`]; or a
    /// vCPU's own request on the lane's VM in fixed places, no message either way, the
    /// vCPU at [`CPUID`] and the answer's errno at [`ERRNO`] (0, an errno, or
    /// [`super::ERR_NO_SUCH_VM`]): [`KIND_RUN`], a VM_RUN whose `struct vm_exit` goes to
    /// [`RUN_EXIT`] on success and, for a SUSPENDED or DEBUG exit, its vCPU set
    /// (`cpuset_t`, [`crate::abi::CPUSET_SIZE`] bytes) to [`RUN_CPUSET`] (otherwise left
    /// as it was); [`KIND_GET_REGISTER`], register [`REG_NUM`] read into
    /// [`REG_RESULT`]; [`KIND_SET_REGISTER`], register [`REG_NUM`] set to [`REG_VALUE`].
    pub const REQ_KIND: usize = 48;
    pub const KIND_MESSAGE: u32 = 0;
    pub const KIND_RUN: u32 = 1;
    pub const KIND_GET_REGISTER: u32 = 2;
    pub const KIND_SET_REGISTER: u32 = 3;
    /// The vCPU of a request in fixed places (client; an `int`).
    pub const CPUID: usize = 52;
    /// The errno of the answer to a request in fixed places (testbed; an `int`).
    pub const ERRNO: usize = 56;
    /// The register number of a register request (client; `enum vm_reg_name`).
    pub const REG_NUM: usize = 60;
    /// The value a register set writes (client) and the one a get answers (testbed):
    /// u64s, little-endian, each in two words.
    pub const REG_VALUE: usize = REQ;
    pub const REG_RESULT: usize = RESP;
    /// Where a [`KIND_RUN`] answer's exit and vCPU set go (8-byte aligned, in the
    /// response area).
    pub const RUN_EXIT: usize = RESP;
    pub const RUN_CPUSET: usize = RESP + 128;
    /// The request message.
    pub const REQ: usize = 64;
    pub const REQ_MAX: usize = SIZE / 2 - REQ;
    /// The response message.
    pub const RESP: usize = SIZE / 2;
    pub const RESP_MAX: usize = SIZE / 2;
    /// The requests a lane carries, all on the lane's VM (the testbed answers anything
    /// else EINVAL): first a vCPU's own ([`VCPU_CMDS`] of them; each argument starts
    /// with the `int cpuid`), then the VM-wide ones that the thread running the lane's
    /// vCPU makes between two runs: a device model's interrupt line, which bhyve's vCPU
    /// thread drives from its MMIO handlers (a virtio console's output, an ACK), and
    /// the device stores the kernel queued, which it takes at a BOGUS exit.
    pub const CMDS: [u64; 9] = [
        crate::ioctl::VM_RUN,
        crate::ioctl::VM_GET_REGISTER,
        crate::ioctl::VM_SET_REGISTER,
        crate::ioctl::VM_GET_REGISTER_SET,
        crate::ioctl::VM_SET_REGISTER_SET,
        crate::ioctl::VM_INJECT_EXCEPTION,
        crate::ioctl::VM_ASSERT_IRQ,
        crate::ioctl::VM_DEASSERT_IRQ,
        crate::ioctl::VM_GET_MMIO_STORES,
    ];
    /// How many of [`CMDS`], from the first, are a vCPU's own.
    pub const VCPU_CMDS: usize = 6;

    /// Whether `cmd` is a vCPU's own lane request (its argument names the vCPU).
    pub fn names_vcpu(cmd: u64) -> bool {
        let mut i = 0;
        while i < VCPU_CMDS {
            if CMDS[i] == cmd {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// The response errno for a per-VM request naming a VM that does not exist (on
/// FreeBSD the open of /dev/vmm/NAME fails; libvmmapi's `BackendError::NoSuchVm`).
pub const ERR_NO_SUCH_VM: i32 = -1;
/// Where the testbed's RAM (the memory-backend-file's offset 0) starts.
pub const RAM_BASE: u64 = 0x4000_0000;

/// Why a message is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    Truncated,
    BadMagic,
    BadField(&'static str),
}

impl core::fmt::Display for WireError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WireError::Truncated => write!(f, "truncated"),
            WireError::BadMagic => write!(f, "bad magic"),
            WireError::BadField(w) => write!(f, "bad field: {w}"),
        }
    }
}

/// Buffer direction, as on the wire (0 in, 1 out, 2 inout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireDir {
    In,
    Out,
    InOut,
}

impl WireDir {
    pub fn is_in(self) -> bool {
        matches!(self, WireDir::In | WireDir::InOut)
    }
    pub fn is_out(self) -> bool {
        matches!(self, WireDir::Out | WireDir::InOut)
    }
}

/// One buffer of a parsed request: `data` is present for in/inout buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireBuffer<'a> {
    pub ptr_offset: usize,
    pub dir: WireDir,
    pub len: usize,
    pub data: Option<&'a [u8]>,
}

/// A request, borrowed from its message. `vm` is `None` for /dev/vmmctl. Its buffers
/// stay in the message, checked by the parser and decoded again by [`Self::buffers`]:
/// a request is then small enough to be moved without a `memcpy` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireRequest<'a> {
    pub vm: Option<&'a [u8]>,
    pub cmd: u64,
    pub arg: &'a [u8],
    /// The buffer descriptors (with in/inout data), `nbuf` of them.
    buffer_bytes: &'a [u8],
    nbuf: u8,
}

impl<'a> WireRequest<'a> {
    /// The request's buffers, in message order.
    pub fn buffers(&self) -> impl Iterator<Item = WireBuffer<'a>> {
        let mut r = Reader(self.buffer_bytes);
        let arg_len = self.arg.len();
        // Checked by the parser, so decoding cannot fail; if it did, the iteration ends.
        (0..self.nbuf).map_while(move |_| next_buffer(&mut r, arg_len).ok())
    }
}

/// Decodes and checks one buffer descriptor (and its data) at `r`: direction known,
/// length bounded, pointer field inside an `arg_len`-byte argument and 8-byte aligned.
fn next_buffer<'a>(r: &mut Reader<'a>, arg_len: usize) -> Result<WireBuffer<'a>, WireError> {
    let ptr_offset = r.u32()? as usize;
    let dir = match r.u8()? {
        0 => WireDir::In,
        1 => WireDir::Out,
        2 => WireDir::InOut,
        _ => return Err(WireError::BadField("buffer direction")),
    };
    let len = r.u32()? as usize;
    if len > MAX_BUFFER {
        return Err(WireError::BadField("buffer length"));
    }
    if !ptr_offset.is_multiple_of(8) || ptr_offset.checked_add(8).is_none_or(|e| e > arg_len) {
        return Err(WireError::BadField("pointer offset outside the argument"));
    }
    let data = if dir.is_in() {
        Some(r.take(len)?)
    } else {
        None
    };
    Ok(WireBuffer {
        ptr_offset,
        dir,
        len,
        data,
    })
}

struct Reader<'a>(&'a [u8]);
impl<'a> Reader<'a> {
    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    // Byte by byte, not `copy_from_slice`: on the kernel targets (strict alignment) that
    // is a `memcpy` call per field.
    #[inline]
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    #[inline]
    fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    }
}

/// Parses a request message (libvmmapi's `Request::encode`). Every length is bounded,
/// names are checked with [`crate::validate_vm_name`], the argument must be as long as
/// the ioctl word says, every pointer field inside it, 8-byte aligned, once, and no
/// trailing bytes.
pub fn parse_request(bytes: &[u8]) -> Result<WireRequest<'_>, WireError> {
    parse(bytes, true)
}

/// [`parse_request`] for a request whose VM name the caller then compares with a name
/// that was validated (a lane's, which belongs to one VM): the name's characters are
/// not checked again, only its length.
pub fn parse_request_for_known_vm(bytes: &[u8]) -> Result<WireRequest<'_>, WireError> {
    parse(bytes, false)
}

fn parse(bytes: &[u8], validate_name: bool) -> Result<WireRequest<'_>, WireError> {
    let mut r = Reader(bytes);
    if r.u32()? != REQ_MAGIC {
        return Err(WireError::BadMagic);
    }
    let kind = r.u8()?;
    let name_len = usize::from(r.u16()?);
    let name = r.take(name_len)?;
    let vm = match kind {
        0 if name_len == 0 => None,
        1 if !validate_name && !name.is_empty() && name.len() <= crate::VM_MAX_NAMELEN => {
            Some(name)
        }
        1 => {
            crate::validate_vm_name(name).map_err(|_| WireError::BadField("name"))?;
            Some(name)
        }
        _ => return Err(WireError::BadField("target")),
    };
    let cmd = r.u64()?;
    let arg_len = r.u32()? as usize;
    if arg_len != ioctl::iocparm_len(cmd) {
        return Err(WireError::BadField("argument length"));
    }
    let arg = r.take(arg_len)?;
    let nbuf = usize::from(r.u16()?);
    if nbuf > MAX_BUFFERS {
        return Err(WireError::BadField("buffer count"));
    }
    let buffer_bytes = r.0;
    let mut pointers = [usize::MAX; MAX_BUFFERS];
    for i in 0..nbuf {
        let b = next_buffer(&mut r, arg.len())?;
        if pointers[..i].contains(&b.ptr_offset) {
            return Err(WireError::BadField("two buffers for one pointer"));
        }
        pointers[i] = b.ptr_offset;
    }
    if !r.0.is_empty() {
        return Err(WireError::BadField("trailing bytes"));
    }
    Ok(WireRequest {
        vm,
        cmd,
        arg,
        buffer_bytes,
        nbuf: nbuf as u8,
    })
}

/// Writes the response to an executed request: `errno` (0 = ok), the argument bytes
/// `arg` if ok and the word copies out, and on success each out/inout buffer's bytes
/// (`outs`, in request order). Same bytes as libvmmapi's `Request::encode_response`.
pub fn write_response<'b>(
    cmd: u64,
    errno: i32,
    arg: &[u8],
    outs: impl Iterator<Item = &'b [u8]> + Clone,
    sink: &mut impl FnMut(&[u8]),
) {
    sink(&RSP_MAGIC.to_le_bytes());
    sink(&errno.to_le_bytes());
    let arg: &[u8] = if errno == 0 && cmd & IOC_OUT != 0 {
        arg
    } else {
        &[]
    };
    sink(&(arg.len() as u32).to_le_bytes());
    sink(arg);
    let n = if errno == 0 { outs.clone().count() } else { 0 };
    sink(&(n as u16).to_le_bytes());
    if errno == 0 {
        for b in outs {
            sink(&(b.len() as u32).to_le_bytes());
            sink(b);
        }
    }
}

/// Where a successful answer (errno 0) to `cmd` with an `arg_len`-byte argument puts
/// the data of its out buffers of lengths `out_lens` (in request order), and its total
/// length: the bytes [`write_response`] writes, laid out.
pub fn response_layout(
    cmd: u64,
    arg_len: usize,
    out_lens: &[usize],
) -> ([usize; MAX_BUFFERS], usize) {
    let arg_len = if cmd & IOC_OUT != 0 { arg_len } else { 0 };
    // magic, errno, argument length, argument, buffer count.
    let mut off = 4 + 4 + 4 + arg_len + 2;
    let mut at = [0; MAX_BUFFERS];
    for (a, len) in at.iter_mut().zip(out_lens) {
        off += 4;
        *a = off;
        off += len;
    }
    (at, off)
}

/// Writes the answer [`write_response`] would, except the out buffers' data, which is
/// already where [`response_layout`] puts it (an answer built in place, so that data
/// is never copied): each piece through `put(offset, bytes)`. Returns the length.
pub fn write_response_around_data(
    cmd: u64,
    errno: i32,
    arg: &[u8],
    out_lens: &[usize],
    put: &mut impl FnMut(usize, &[u8]),
) -> usize {
    let mut off = 0;
    let mut emit = |off: &mut usize, b: &[u8]| {
        put(*off, b);
        *off += b.len();
    };
    emit(&mut off, &RSP_MAGIC.to_le_bytes());
    emit(&mut off, &errno.to_le_bytes());
    let arg: &[u8] = if errno == 0 && cmd & IOC_OUT != 0 {
        arg
    } else {
        &[]
    };
    emit(&mut off, &(arg.len() as u32).to_le_bytes());
    emit(&mut off, arg);
    let lens: &[usize] = if errno == 0 { out_lens } else { &[] };
    emit(&mut off, &(lens.len() as u16).to_le_bytes());
    for len in lens {
        emit(&mut off, &(*len as u32).to_le_bytes());
        off += len;
    }
    off
}

/// The framing on the broker-testbed channel (a byte stream): `u32 magic "VMFR"`,
/// `u32 client`, `u32 seq`, `u32 len`, then `len` bytes of request or response. The
/// broker tags each client's request with (client, seq) and routes the answer back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub client: u32,
    pub seq: u32,
    pub len: u32,
}

pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"VMFR");
pub const FRAME_HEADER: usize = 16;
/// Largest frame body: a request with four 1 MiB in-buffers plus headers.
pub const MAX_FRAME: u32 = (MAX_BUFFERS * MAX_BUFFER + 16384) as u32;

impl Frame {
    pub fn encode(&self) -> [u8; FRAME_HEADER] {
        let mut h = [0; FRAME_HEADER];
        h[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&self.client.to_le_bytes());
        h[8..12].copy_from_slice(&self.seq.to_le_bytes());
        h[12..16].copy_from_slice(&self.len.to_le_bytes());
        h
    }

    /// Parses a header; a bad magic or an oversized length is an error (the stream
    /// is then out of step and the reader resynchronises or drops the peer).
    pub fn decode(h: &[u8; FRAME_HEADER]) -> Result<Frame, WireError> {
        let w = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        if w(0) != FRAME_MAGIC {
            return Err(WireError::BadMagic);
        }
        let f = Frame {
            client: w(4),
            seq: w(8),
            len: w(12),
        };
        if f.len > MAX_FRAME {
            return Err(WireError::BadField("frame length"));
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(vm: &[u8], cmd: u64, arg: &[u8], bufs: &[(u32, u8, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&REQ_MAGIC.to_le_bytes());
        v.push(1);
        v.extend_from_slice(&(vm.len() as u16).to_le_bytes());
        v.extend_from_slice(vm);
        v.extend_from_slice(&cmd.to_le_bytes());
        v.extend_from_slice(&(arg.len() as u32).to_le_bytes());
        v.extend_from_slice(arg);
        v.extend_from_slice(&(bufs.len() as u16).to_le_bytes());
        for (off, dir, data) in bufs {
            v.extend_from_slice(&off.to_le_bytes());
            v.push(*dir);
            v.extend_from_slice(&(data.len() as u32).to_le_bytes());
            if *dir != 1 {
                v.extend_from_slice(data);
            }
        }
        v
    }

    #[test]
    fn parses_and_bounds() {
        let cmd = ioc(IOC_INOUT, b'v', 1, 24);
        let m = request(b"vm", cmd, &[0; 24], &[(8, 0, b"abcd"), (16, 1, &[0; 8])]);
        let r = parse_request(&m).unwrap();
        assert_eq!(r.vm, Some(&b"vm"[..]));
        let b: Vec<_> = r.buffers().collect();
        assert_eq!(b[0].data, Some(&b"abcd"[..]));
        assert_eq!((b[1].len, b[1].data), (8, None));
        // Pointer outside, duplicate pointer, short argument, trailing bytes, bad name.
        for bad in [
            request(b"vm", cmd, &[0; 24], &[(24, 0, b"x")]),
            request(b"vm", cmd, &[0; 24], &[(8, 0, b"x"), (8, 1, b"y")]),
            request(b"vm", cmd, &[0; 16], &[]),
            request(b"a/b", cmd, &[0; 24], &[]),
            [request(b"vm", cmd, &[0; 24], &[]), vec![0]].concat(),
        ] {
            assert!(parse_request(&bad).is_err());
        }
        for n in 0..m.len() {
            assert!(parse_request(&m[..n]).is_err());
            assert!(parse_request_for_known_vm(&m[..n]).is_err());
        }
        // For a known VM the name's characters are left to the caller's comparison;
        // everything else is checked the same.
        let odd = request(b"a/b", cmd, &[0; 24], &[]);
        assert_eq!(
            parse_request_for_known_vm(&odd).unwrap().vm,
            Some(&b"a/b"[..])
        );
        assert_eq!(parse_request_for_known_vm(&m), parse_request(&m));
        let too_long = vec![b'v'; crate::VM_MAX_NAMELEN + 1];
        for bad in [
            request(b"", cmd, &[0; 24], &[]),
            request(&too_long, cmd, &[0; 24], &[]),
            request(b"vm", cmd, &[0; 24], &[(8, 0, b"x"), (8, 1, b"y")]),
            request(b"vm", cmd, &[0; 16], &[]),
        ] {
            assert!(parse_request_for_known_vm(&bad).is_err());
        }
    }

    /// An answer built in place (out data first, where `response_layout` says, then
    /// `write_response_around_data`) is byte for byte `write_response`'s.
    #[test]
    fn answer_in_place_matches_write_response() {
        let outs: [&[u8]; 3] = [b"first", b"", b"third buffer"];
        for cmd in [
            ioc(IOC_INOUT, b'v', 1, 4),
            ioc(IOC_IN, b'v', 2, 4),
            ioc(IOC_OUT, b'v', 3, 4),
        ] {
            for errno in [0, 22] {
                for n in 0..=outs.len() {
                    let arg = [9, 8, 7, 6];
                    let mut want = Vec::new();
                    write_response(cmd, errno, &arg, outs[..n].iter().copied(), &mut |b| {
                        want.extend_from_slice(b)
                    });
                    let lens: Vec<usize> = outs[..n].iter().map(|o| o.len()).collect();
                    let (at, total) = response_layout(cmd, arg.len(), &lens);
                    let mut got = vec![0xeeu8; total];
                    if errno == 0 {
                        for (o, a) in outs[..n].iter().zip(at) {
                            got[a..a + o.len()].copy_from_slice(o);
                        }
                    }
                    let len = write_response_around_data(cmd, errno, &arg, &lens, &mut |off, b| {
                        got[off..off + b.len()].copy_from_slice(b)
                    });
                    if errno == 0 {
                        assert_eq!(len, total);
                    }
                    assert_eq!(
                        &got[..len],
                        &want[..],
                        "cmd {cmd:#x} errno {errno} {n} buffers"
                    );
                }
            }
        }
    }

    #[test]
    fn response_and_frame() {
        let mut out = Vec::new();
        let cmd = ioc(IOC_INOUT, b'v', 1, 4);
        write_response(cmd, 0, &[1, 2, 3, 4], [&b"xy"[..]].into_iter(), &mut |b| {
            out.extend_from_slice(b)
        });
        assert_eq!(
            out,
            [
                &b"VMRS"[..],
                &[0; 4],
                &[4, 0, 0, 0, 1, 2, 3, 4],
                &[1, 0, 2, 0, 0, 0],
                b"xy"
            ]
            .concat()
        );
        let f = Frame {
            client: 3,
            seq: 9,
            len: 77,
        };
        assert_eq!(Frame::decode(&f.encode()), Ok(f));
        let mut h = f.encode();
        h[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Frame::decode(&h).is_err());
    }
}
