//! The request encoding every backend executes: one FreeBSD ioctl, as data.
//!
//! A [`Request`] names the device node ([`Target`]), carries the ioctl word
//! (`vmm_sys::ioctl::*`), the argument structure's bytes (`vmm_sys::abi::Pod::as_bytes`),
//! and, for the ioctls whose structure holds user pointers, the buffers those pointers
//! designate ([`Buffer`]): the byte offset of the pointer field inside the structure, the
//! direction the data flows, and the bytes (`len` of them).
//!
//! In a `Request` every pointer field is **zero**. Whoever executes the request points
//! them at its own copy of the buffers: the FreeBSD backend patches in local addresses
//! before `ioctl(2)` and zeroes them again afterwards; the testbed's server will do the
//! same with addresses in its address space; the fake maps them as the fake host's user
//! memory for the one dispatch. So a
//! request can be serialised ([`Request::encode`]) and executed elsewhere unchanged.
//!
//! After execution `arg` holds what the kernel copied out (for `IOC_OUT` words) and each
//! `Out`/`InOut` buffer holds what the kernel wrote through its pointer.

use vmm_sys::abi::{self, Pod};
use vmm_sys::ioctl::{self, IOC_IN, IOC_OUT};
use vmm_sys::wire::{self, WireDir, WireError};

/// Which device node a request goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/dev/vmmctl` (VMMCTL_VM_CREATE, VMMCTL_VM_DESTROY, VMMCTL_VM_LIST).
    Ctl,
    /// `/dev/vmm/NAME`.
    Vm(String),
}

/// Which way a pointed-to buffer's bytes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// The kernel reads it (copyin).
    In,
    /// The kernel writes it (copyout); its bytes need not be sent.
    Out,
    /// Both.
    InOut,
}

impl Dir {
    pub fn is_in(self) -> bool {
        matches!(self, Dir::In | Dir::InOut)
    }
    pub fn is_out(self) -> bool {
        matches!(self, Dir::Out | Dir::InOut)
    }
}

/// A buffer a pointer field of the argument structure designates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buffer {
    /// Byte offset of the 64-bit pointer field inside `Request::arg`.
    pub ptr_offset: usize,
    pub dir: Dir,
    pub data: Vec<u8>,
}

/// One ioctl, as data. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub target: Target,
    /// The FreeBSD ioctl word: direction, argument length, group and number.
    pub cmd: u64,
    /// The argument structure, `IOCPARM_LEN(cmd)` bytes (empty for `_IO` words).
    pub arg: Vec<u8>,
    pub buffers: Vec<Buffer>,
}

/// Why a byte string is not a valid request or response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated")]
    Truncated,
    #[error("bad magic {0:#x}")]
    BadMagic(u32),
    #[error("bad field: {0}")]
    BadField(&'static str),
}

impl Request {
    /// A request whose argument is `arg` and which carries no buffers.
    pub fn new<T: Pod>(target: Target, cmd: u64, arg: &T) -> Request {
        Request {
            target,
            cmd,
            arg: arg.as_bytes().to_vec(),
            buffers: Vec::new(),
        }
    }

    /// A request with no argument (`_IO` words such as VM_REINIT).
    pub fn void(target: Target, cmd: u64) -> Request {
        Request {
            target,
            cmd,
            arg: Vec::new(),
            buffers: Vec::new(),
        }
    }

    /// Adds a buffer for the pointer field at `ptr_offset`.
    pub fn with_buffer(mut self, ptr_offset: usize, dir: Dir, data: Vec<u8>) -> Request {
        self.buffers.push(Buffer {
            ptr_offset,
            dir,
            data,
        });
        self
    }

    /// The argument decoded as `T`, if the length matches.
    pub fn arg_as<T: Pod>(&self) -> Option<T> {
        T::from_bytes(&self.arg)
    }

    /// The buffer whose pointer sits at `ptr_offset`.
    pub fn buffer(&self, ptr_offset: usize) -> Option<&Buffer> {
        self.buffers.iter().find(|b| b.ptr_offset == ptr_offset)
    }

    /// Mutable access to the buffer whose pointer sits at `ptr_offset`.
    pub fn buffer_mut(&mut self, ptr_offset: usize) -> Option<&mut Buffer> {
        self.buffers.iter_mut().find(|b| b.ptr_offset == ptr_offset)
    }

    /// Whether the kernel copies the argument in / out (from the ioctl word).
    pub fn copies_in(&self) -> bool {
        self.cmd & IOC_IN != 0
    }
    pub fn copies_out(&self) -> bool {
        self.cmd & IOC_OUT != 0
    }

    /// Checks the shape every executor relies on: `arg` is as long as the ioctl word
    /// says, and every pointer field lies inside it, 8-byte aligned, once.
    pub fn check(&self) -> Result<(), DecodeError> {
        if self.arg.len() != ioctl::iocparm_len(self.cmd) {
            return Err(DecodeError::BadField(
                "argument length differs from the ioctl word",
            ));
        }
        for (i, b) in self.buffers.iter().enumerate() {
            let end = b
                .ptr_offset
                .checked_add(8)
                .ok_or(DecodeError::BadField("pointer offset"))?;
            if end > self.arg.len() || b.ptr_offset % 8 != 0 {
                return Err(DecodeError::BadField("pointer offset outside the argument"));
            }
            if self.buffers[..i]
                .iter()
                .any(|o| o.ptr_offset == b.ptr_offset)
            {
                return Err(DecodeError::BadField("two buffers for one pointer"));
            }
        }
        Ok(())
    }

    /// Serialises the request (the testbed channel's request message). Little-endian:
    /// `u32 magic "VMRQ"`, `u8 target (0 ctl, 1 vm)`, `u16 name_len`, name bytes,
    /// `u64 cmd`, `u32 arg_len`, arg bytes, `u16 nbuf`, then per buffer `u32 ptr_offset`,
    /// `u8 dir (0 in, 1 out, 2 inout)`, `u32 len`, and the bytes only if the kernel
    /// reads them (`in`/`inout`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.arg.len());
        out.extend_from_slice(&REQ_MAGIC.to_le_bytes());
        match &self.target {
            Target::Ctl => {
                out.push(0);
                out.extend_from_slice(&0u16.to_le_bytes());
            }
            Target::Vm(name) => {
                out.push(1);
                out.extend_from_slice(&(name.len() as u16).to_le_bytes());
                out.extend_from_slice(name.as_bytes());
            }
        }
        out.extend_from_slice(&self.cmd.to_le_bytes());
        out.extend_from_slice(&(self.arg.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.arg);
        out.extend_from_slice(&(self.buffers.len() as u16).to_le_bytes());
        for b in &self.buffers {
            out.extend_from_slice(&(b.ptr_offset as u32).to_le_bytes());
            out.push(match b.dir {
                Dir::In => 0,
                Dir::Out => 1,
                Dir::InOut => 2,
            });
            out.extend_from_slice(&(b.data.len() as u32).to_le_bytes());
            if b.dir.is_in() {
                out.extend_from_slice(&b.data);
            }
        }
        out
    }

    /// Parses what [`Request::encode`] wrote; `Out` buffers come back zero-filled.
    /// Lengths are bounded (`MAX_BUFFER`) so a hostile peer cannot make us allocate
    /// without limit. The parsing itself is vmm-sys `wire::parse_request`, the same
    /// no_std code the testbed kernel runs on the messages it receives.
    pub fn decode(bytes: &[u8]) -> Result<Request, DecodeError> {
        let w = wire::parse_request(bytes).map_err(|e| match e {
            WireError::Truncated => DecodeError::Truncated,
            WireError::BadMagic => {
                let mut m = [0u8; 4];
                m.copy_from_slice(&bytes[..4]);
                DecodeError::BadMagic(u32::from_le_bytes(m))
            }
            WireError::BadField(f) => DecodeError::BadField(f),
        })?;
        let target = match w.vm {
            None => Target::Ctl,
            Some(name) => Target::Vm(
                String::from_utf8(name.to_vec()).map_err(|_| DecodeError::BadField("name"))?,
            ),
        };
        let buffers = w
            .buffers()
            .map(|b| Buffer {
                ptr_offset: b.ptr_offset,
                dir: match b.dir {
                    WireDir::In => Dir::In,
                    WireDir::Out => Dir::Out,
                    WireDir::InOut => Dir::InOut,
                },
                data: b.data.map_or_else(|| vec![0; b.len], <[u8]>::to_vec),
            })
            .collect();
        let req = Request {
            target,
            cmd: w.cmd,
            arg: w.arg.to_vec(),
            buffers,
        };
        req.check()?;
        Ok(req)
    }

    /// Serialises the answer to this (executed) request: `u32 magic "VMRS"`, `i32 errno`
    /// (0 = success), `u32 arg_len` and the argument if the word copies out, `u16 nbuf`
    /// and per `out`/`inout` buffer, in request order, `u32 len` and its bytes.
    pub fn encode_response(&self, errno: i32) -> Vec<u8> {
        let mut out = Vec::new();
        let outs = self
            .buffers
            .iter()
            .filter(|b| b.dir.is_out())
            .map(|b| b.data.as_slice());
        wire::write_response(self.cmd, errno, &self.arg, outs, &mut |b| {
            out.extend_from_slice(b)
        });
        out
    }

    /// Applies a response produced by [`Request::encode_response`] to this request and
    /// returns the errno it carries (0 = success).
    pub fn apply_response(&mut self, bytes: &[u8]) -> Result<i32, DecodeError> {
        let mut r = Reader(bytes);
        let magic = r.u32()?;
        if magic != RSP_MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        let errno = r.u32()? as i32;
        let arg_len = r.u32()? as usize;
        let arg = r.take(arg_len)?;
        let nbuf = usize::from(r.u16()?);
        if errno != 0 {
            return Ok(errno);
        }
        if self.copies_out() {
            if arg.len() != self.arg.len() {
                return Err(DecodeError::BadField("argument length"));
            }
            self.arg.copy_from_slice(arg);
        }
        let mut outs = self.buffers.iter_mut().filter(|b| b.dir.is_out());
        for _ in 0..nbuf {
            let b = outs.next().ok_or(DecodeError::BadField("buffer count"))?;
            let len = r.u32()? as usize;
            if len != b.data.len() {
                return Err(DecodeError::BadField("buffer length"));
            }
            b.data.copy_from_slice(r.take(len)?);
        }
        Ok(0)
    }
}

const REQ_MAGIC: u32 = wire::REQ_MAGIC;
const RSP_MAGIC: u32 = wire::RSP_MAGIC;
/// Largest pointed-to buffer a decoded request may carry (a VM_RUN exit is 80 bytes, a
/// full register set 320, a cpuset 128; VM lists are the big ones).
pub const MAX_BUFFER: usize = wire::MAX_BUFFER;

struct Reader<'a>(&'a [u8]);
impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut a = [0; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
}

/// Offsets of the pointer fields the builders below fill, named for the executors.
pub mod ptr {
    use core::mem::offset_of;
    use vmm_sys::abi::*;
    pub const RUN_CPUSET: usize = offset_of!(VmRun, cpuset);
    pub const RUN_VM_EXIT: usize = offset_of!(VmRun, vm_exit);
    pub const REGSET_REGNUMS: usize = offset_of!(VmRegisterSet, regnums);
    pub const REGSET_REGVALS: usize = offset_of!(VmRegisterSet, regvals);
    pub const CPUSET_CPUS: usize = offset_of!(VmCpuset, cpus);
    pub const VM_LIST_BUF: usize = offset_of!(VmmctlVmList, buf);
}

// Builders: one per ioctl, so the encoding lives in one place and is tested here.

pub fn vm_create(name: &str) -> Option<Request> {
    let arg = abi::VmmctlVmCreate::new(name.as_bytes())?;
    Some(Request::new(Target::Ctl, ioctl::VMMCTL_VM_CREATE, &arg))
}

pub fn vm_destroy(name: &str) -> Option<Request> {
    let arg = abi::VmmctlVmDestroy::new(name.as_bytes())?;
    Some(Request::new(Target::Ctl, ioctl::VMMCTL_VM_DESTROY, &arg))
}

pub fn vm_list(buflen: usize) -> Request {
    let arg = abi::VmmctlVmList {
        buflen: buflen as u64,
        ..Default::default()
    };
    Request::new(Target::Ctl, ioctl::VMMCTL_VM_LIST, &arg).with_buffer(
        ptr::VM_LIST_BUF,
        Dir::Out,
        vec![0; buflen],
    )
}

fn vm(name: &str) -> Target {
    Target::Vm(name.to_string())
}

pub fn run(name: &str, vcpu: i32) -> Request {
    let arg = abi::VmRun {
        cpuid: vcpu,
        cpusetsize: abi::CPUSET_SIZE as u64,
        ..Default::default()
    };
    Request::new(vm(name), ioctl::VM_RUN, &arg)
        .with_buffer(ptr::RUN_CPUSET, Dir::Out, vec![0; abi::CPUSET_SIZE])
        .with_buffer(
            ptr::RUN_VM_EXIT,
            Dir::Out,
            vec![0; core::mem::size_of::<abi::VmExit>()],
        )
}

pub fn get_register(name: &str, vcpu: i32, regnum: i32) -> Request {
    let arg = abi::VmRegister {
        cpuid: vcpu,
        regnum,
        regval: 0,
    };
    Request::new(vm(name), ioctl::VM_GET_REGISTER, &arg)
}

pub fn set_register(name: &str, vcpu: i32, regnum: i32, regval: u64) -> Request {
    let arg = abi::VmRegister {
        cpuid: vcpu,
        regnum,
        regval,
    };
    Request::new(vm(name), ioctl::VM_SET_REGISTER, &arg)
}

fn regnum_bytes(regnums: &[i32]) -> Vec<u8> {
    regnums.iter().flat_map(|r| r.to_ne_bytes()).collect()
}

pub fn get_register_set(name: &str, vcpu: i32, regnums: &[i32]) -> Request {
    let arg = abi::VmRegisterSet {
        cpuid: vcpu,
        count: regnums.len() as u32,
        regnums: 0,
        regvals: 0,
    };
    Request::new(vm(name), ioctl::VM_GET_REGISTER_SET, &arg)
        .with_buffer(ptr::REGSET_REGNUMS, Dir::In, regnum_bytes(regnums))
        .with_buffer(ptr::REGSET_REGVALS, Dir::Out, vec![0; regnums.len() * 8])
}

pub fn set_register_set(name: &str, vcpu: i32, regs: &[(i32, u64)]) -> Request {
    let arg = abi::VmRegisterSet {
        cpuid: vcpu,
        count: regs.len() as u32,
        regnums: 0,
        regvals: 0,
    };
    let nums: Vec<i32> = regs.iter().map(|r| r.0).collect();
    let vals: Vec<u8> = regs.iter().flat_map(|r| r.1.to_ne_bytes()).collect();
    Request::new(vm(name), ioctl::VM_SET_REGISTER_SET, &arg)
        .with_buffer(ptr::REGSET_REGNUMS, Dir::In, regnum_bytes(&nums))
        .with_buffer(ptr::REGSET_REGVALS, Dir::In, vals)
}

pub fn get_cpus(name: &str, which: i32) -> Request {
    let arg = abi::VmCpuset {
        which,
        cpusetsize: abi::CPUSET_SIZE as i32,
        cpus: 0,
    };
    Request::new(vm(name), ioctl::VM_GET_CPUS, &arg).with_buffer(
        ptr::CPUSET_CPUS,
        Dir::Out,
        vec![0; abi::CPUSET_SIZE],
    )
}

/// A request on VM `name` whose argument carries no pointers.
pub fn simple<T: Pod>(name: &str, cmd: u64, arg: &T) -> Request {
    Request::new(vm(name), cmd, arg)
}

/// VM_REINIT (no argument).
pub fn reinit(name: &str) -> Request {
    Request::void(vm(name), ioctl::VM_REINIT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys::ioctl::*;

    fn word_matches(r: &Request) {
        r.check().unwrap();
        assert_eq!(r.arg.len(), iocparm_len(r.cmd));
    }

    #[test]
    fn every_pointer_ioctl_carries_its_buffers() {
        let r = run("vm", 2);
        word_matches(&r);
        assert_eq!(r.cmd, VM_RUN);
        assert_eq!(r.buffers.len(), 2);
        assert_eq!(r.buffer(8).unwrap().dir, Dir::Out);
        assert_eq!(r.buffer(8).unwrap().data.len(), 128);
        assert_eq!(r.buffer(24).unwrap().dir, Dir::Out);
        assert_eq!(r.buffer(24).unwrap().data.len(), 80);
        let a: abi::VmRun = r.arg_as().unwrap();
        assert_eq!((a.cpuid, a.cpusetsize, a.cpuset, a.vm_exit), (2, 128, 0, 0));

        let r = get_register_set("vm", 1, &[0, 32, 39]);
        word_matches(&r);
        assert_eq!(r.cmd, VM_GET_REGISTER_SET);
        let nums = r.buffer(8).unwrap();
        assert_eq!(nums.dir, Dir::In);
        assert_eq!(nums.data, [0, 0, 0, 0, 32, 0, 0, 0, 39, 0, 0, 0]);
        let vals = r.buffer(16).unwrap();
        assert_eq!((vals.dir, vals.data.len()), (Dir::Out, 24));
        assert_eq!(r.arg_as::<abi::VmRegisterSet>().unwrap().count, 3);

        let r = set_register_set("vm", 0, &[(32, 0x8000_0000), (0, 7)]);
        word_matches(&r);
        assert_eq!(r.cmd, VM_SET_REGISTER_SET);
        assert_eq!(r.buffer(8).unwrap().dir, Dir::In);
        let vals = r.buffer(16).unwrap();
        assert_eq!(vals.dir, Dir::In);
        assert_eq!(&vals.data[..8], &0x8000_0000u64.to_ne_bytes());

        let r = get_cpus("vm", abi::VM_SUSPENDED_CPUS);
        word_matches(&r);
        assert_eq!(r.cmd, VM_GET_CPUS);
        assert_eq!(r.buffer(8).unwrap().dir, Dir::Out);
        let a: abi::VmCpuset = r.arg_as().unwrap();
        assert_eq!((a.which, a.cpusetsize), (1, 128));

        let r = vm_list(100);
        word_matches(&r);
        assert_eq!(r.target, Target::Ctl);
        assert_eq!(r.cmd, VMMCTL_VM_LIST);
        assert_eq!(r.buffer(0).unwrap().data.len(), 100);
        assert_eq!(r.arg_as::<abi::VmmctlVmList>().unwrap().buflen, 100);
    }

    #[test]
    fn plain_ioctls_have_no_buffers() {
        let name = "vm";
        let reqs = [
            vm_create(name).unwrap(),
            vm_destroy(name).unwrap(),
            get_register(name, 0, 32),
            set_register(name, 0, 32, 1),
            reinit(name),
            simple(name, VM_ASSERT_IRQ, &abi::VmIrq { irq: 40 }),
            simple(name, VM_ALLOC_MEMSEG, &abi::VmMemseg::default()),
            simple(name, VM_ATTACH_VGIC, &abi::VmVgicDescr::default()),
        ];
        for r in &reqs {
            word_matches(r);
            assert!(r.buffers.is_empty());
        }
        assert_eq!(reqs[0].target, Target::Ctl);
        assert_eq!(reqs[2].target, Target::Vm("vm".into()));
        assert!(reqs[4].arg.is_empty());
        assert!(vm_create(&"x".repeat(230)).is_none());
    }

    #[test]
    fn check_rejects_bad_shapes() {
        let mut r = run("vm", 0);
        r.arg.pop();
        assert!(r.check().is_err());
        let r = run("vm", 0).with_buffer(32, Dir::In, vec![]);
        assert!(r.check().is_err());
        let r = run("vm", 0).with_buffer(8, Dir::In, vec![]);
        assert!(r.check().is_err());
        let r = get_cpus("vm", 0).with_buffer(4, Dir::In, vec![]);
        assert!(r.check().is_err());
    }

    #[test]
    fn wire_round_trip() {
        let r = get_register_set("vm0", 1, &[1, 2]);
        let bytes = r.encode();
        let back = Request::decode(&bytes).unwrap();
        assert_eq!(back, r);
        // Out buffers are not sent: the encoding of a VM_RUN carries no exit bytes.
        let run = run("vm0", 0);
        assert!(run.encode().len() < 80 + 32);
        assert_eq!(Request::decode(&run.encode()).unwrap(), run);
        let ctl = vm_create("a").unwrap();
        assert_eq!(Request::decode(&ctl.encode()).unwrap(), ctl);
        // Damage is detected, never trusted.
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        assert!(matches!(
            Request::decode(&bad),
            Err(DecodeError::BadMagic(_))
        ));
        assert_eq!(
            Request::decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Truncated)
        );
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(Request::decode(&extra).is_err());
        let mut evil = get_register("..", 0, 0);
        assert!(Request::decode(&evil.encode()).is_err());
        evil.target = Target::Vm("a/../../etc".into());
        assert_eq!(
            Request::decode(&evil.encode()),
            Err(DecodeError::BadField("name"))
        );
    }

    #[test]
    fn response_round_trip() {
        let mut served = get_register_set("vm0", 0, &[32]);
        served.buffer_mut(16).unwrap().data = 0x1234u64.to_ne_bytes().to_vec();
        let rsp = served.encode_response(0);
        let mut mine = get_register_set("vm0", 0, &[32]);
        assert_eq!(mine.apply_response(&rsp), Ok(0));
        assert_eq!(mine.buffer(16).unwrap().data, 0x1234u64.to_ne_bytes());

        let mut served = get_register("vm0", 0, 32);
        served.arg = set_register("vm0", 0, 32, 99).arg;
        let mut mine = get_register("vm0", 0, 32);
        mine.apply_response(&served.encode_response(0)).unwrap();
        assert_eq!(mine.arg_as::<abi::VmRegister>().unwrap().regval, 99);

        let mut mine = get_register("vm0", 0, 32);
        let before = mine.clone();
        assert_eq!(
            mine.apply_response(&served.encode_response(libc::ENOENT)),
            Ok(libc::ENOENT)
        );
        assert_eq!(mine, before);
    }
}
