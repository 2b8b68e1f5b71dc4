//! The FreeBSD backend: ioctls on /dev/vmmctl and /dev/vmm/NAME, mmap of guest memory.
//!
//! * VMMCTL_VM_CREATE / VMMCTL_VM_DESTROY go to /dev/vmmctl; where it is absent (before
//!   FreeBSD 15) the legacy sysctls `hw.vmm.create` / `hw.vmm.destroy` are used.
//! * VMMCTL_VM_LIST (our extension) is answered here by reading the /dev/vmm directory,
//!   so listing works with upstream's vmm.ko too; the buffer is filled exactly as our
//!   kernel fills it.
//! * Per-VM requests open /dev/vmm/NAME (kept open, reopened once if the node went away
//!   and came back), point the structure's pointer fields at the request's buffers, and
//!   call ioctl(2).
//! * Guest memory is mmap(2) of /dev/vmm/NAME at offset = guest physical address.
//!
//! It builds everywhere; on a machine without /dev/vmm (Linux) every request fails with
//! a [`BackendError::Unavailable`] that says so.

use crate::error::BackendError;
use crate::memory::{Mapping, MmapOwner};
use crate::request::{ptr, Request, Target};
use crate::Backend;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};
use vmm_sys::abi;
use vmm_sys::ioctl;

/// The FreeBSD vmm(4) backend.
#[derive(Debug)]
pub struct FreeBsd {
    /// Where device nodes live: "/dev" (other roots for tests).
    dev: PathBuf,
    /// Whether the legacy sysctls may be used: only for the real /dev, so a backend
    /// over a test directory never creates a VM on the host.
    sysctls: bool,
    nodes: Mutex<HashMap<String, Arc<File>>>,
}

impl Default for FreeBsd {
    fn default() -> Self {
        Self::new()
    }
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl FreeBsd {
    pub fn new() -> FreeBsd {
        FreeBsd {
            sysctls: true,
            ..FreeBsd::with_dev_root("/dev")
        }
    }

    /// A backend whose device nodes live under `dev` instead of /dev (for tests: the
    /// hw.vmm sysctls are never used).
    pub fn with_dev_root(dev: impl Into<PathBuf>) -> FreeBsd {
        FreeBsd {
            dev: dev.into(),
            sysctls: false,
            nodes: Mutex::new(HashMap::new()),
        }
    }

    fn sysctl_present(&self) -> bool {
        self.sysctls && sysctl_present()
    }

    fn vmm_dir(&self) -> PathBuf {
        self.dev.join("vmm")
    }

    fn ctl_path(&self) -> PathBuf {
        self.dev.join("vmmctl")
    }

    fn unavailable(&self) -> BackendError {
        BackendError::Unavailable(format!(
            "{} and {} do not exist: vmm(4) is not loaded (kldload vmm) or this is not \
             FreeBSD (set VMM_TESTBED to use the testbed)",
            self.ctl_path().display(),
            self.vmm_dir().display()
        ))
    }

    /// The open node of VM `name`.
    fn node(&self, name: &str, fresh: bool) -> Result<Arc<File>, BackendError> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        if !fresh {
            if let Some(f) = nodes.get(name) {
                return Ok(f.clone());
            }
        }
        nodes.remove(name);
        let path = self.vmm_dir().join(name);
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => {
                let f = Arc::new(f);
                nodes.insert(name.to_string(), f.clone());
                Ok(f)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if self.vmm_dir().is_dir() || self.ctl_path().exists() || self.sysctl_present() {
                    Err(BackendError::NoSuchVm)
                } else {
                    Err(self.unavailable())
                }
            }
            Err(e) => Err(BackendError::Unavailable(format!(
                "{}: {e}",
                path.display()
            ))),
        }
    }

    fn forget(&self, name: &str) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes.remove(name);
    }

    fn ctl(&self, req: &mut Request) -> Result<(), BackendError> {
        if req.cmd == ioctl::VMMCTL_VM_LIST {
            return self.list_into(req);
        }
        let ctl = match OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.ctl_path())
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return self.legacy_ctl(req),
            Err(e) => {
                return Err(BackendError::Unavailable(format!(
                    "{}: {e}",
                    self.ctl_path().display()
                )))
            }
        };
        ioctl_with_buffers(&ctl, req)?;
        if req.cmd == ioctl::VMMCTL_VM_DESTROY {
            if let Some(a) = req.arg_as::<abi::VmmctlVmDestroy>() {
                self.forget(&String::from_utf8_lossy(a.name_bytes()));
            }
        }
        Ok(())
    }

    /// hw.vmm.create / hw.vmm.destroy, for kernels without /dev/vmmctl.
    fn legacy_ctl(&self, req: &mut Request) -> Result<(), BackendError> {
        let which = match req.cmd {
            ioctl::VMMCTL_VM_CREATE => "hw.vmm.create",
            ioctl::VMMCTL_VM_DESTROY => "hw.vmm.destroy",
            _ => return Err(BackendError::Errno(libc::ENOTTY)),
        };
        let arg: abi::VmmctlVmCreate = req.arg_as().ok_or(BackendError::Errno(libc::EINVAL))?;
        let name = arg.name_bytes().to_vec();
        if !self.sysctl_present() {
            return Err(self.unavailable());
        }
        set_sysctl_string(which, &name)?;
        if req.cmd == ioctl::VMMCTL_VM_DESTROY {
            self.forget(&String::from_utf8_lossy(&name));
        }
        Ok(())
    }

    /// Answers VMMCTL_VM_LIST from the /dev/vmm directory.
    fn list_into(&self, req: &mut Request) -> Result<(), BackendError> {
        let mut names: Vec<Vec<u8>> = match std::fs::read_dir(self.vmm_dir()) {
            Ok(dir) => dir
                .filter_map(|e| e.ok())
                .map(|e| {
                    use std::os::unix::ffi::OsStrExt;
                    e.file_name().as_bytes().to_vec()
                })
                .filter(|n| vmm_sys::validate_vm_name(n).is_ok())
                .collect(),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // No VM yet makes no /dev/vmm directory; no vmm at all is an error.
                if self.ctl_path().exists() || self.sysctl_present() {
                    Vec::new()
                } else {
                    return Err(self.unavailable());
                }
            }
            Err(e) => return Err(BackendError::Errno(errno_of(&e))),
        };
        names.sort();
        fill_vm_list(req, &names)
    }
}

/// Writes `names` into a VMMCTL_VM_LIST request as the kernel does: whole
/// NUL-terminated names while they fit, `needed` = bytes for all, `count` = all names.
pub(crate) fn fill_vm_list(req: &mut Request, names: &[Vec<u8>]) -> Result<(), BackendError> {
    let mut arg: abi::VmmctlVmList = req.arg_as().ok_or(BackendError::Errno(libc::EINVAL))?;
    let buflen = arg.buflen as usize;
    let buf = req
        .buffer_mut(ptr::VM_LIST_BUF)
        .ok_or(BackendError::Errno(libc::EFAULT))?;
    if buf.data.len() < buflen {
        return Err(BackendError::Errno(libc::EFAULT));
    }
    let mut at = 0usize;
    let mut needed = 0usize;
    for n in names {
        let len = n.len() + 1;
        if at == needed && at + len <= buflen {
            buf.data[at..at + n.len()].copy_from_slice(n);
            buf.data[at + n.len()] = 0;
            at += len;
        }
        needed += len;
    }
    arg.needed = needed as u64;
    arg.count = names.len() as u32;
    req.arg = vmm_sys::abi::Pod::as_bytes(&arg).to_vec();
    Ok(())
}

/// Calls ioctl(2) on `file` for `req`, pointing the pointer fields at the request's
/// buffers for the duration of the call and zeroing them again afterwards.
fn ioctl_with_buffers(file: &File, req: &mut Request) -> Result<(), BackendError> {
    req.check().map_err(|_| BackendError::Errno(libc::EINVAL))?;
    // An 8-byte aligned copy of the argument, as the C structure would be.
    let mut arg = vec![0u64; req.arg.len().div_ceil(8)];
    // SAFETY: `arg` owns at least req.arg.len() bytes; u64 has no invalid bit patterns
    // and viewing it as bytes is always valid.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut(arg.as_mut_ptr().cast::<u8>(), req.arg.len()) };
    bytes.copy_from_slice(&req.arg);
    for b in &mut req.buffers {
        let addr = b.data.as_mut_ptr() as u64;
        bytes[b.ptr_offset..b.ptr_offset + 8].copy_from_slice(&addr.to_ne_bytes());
    }
    let argp: *mut libc::c_void = if req.arg.is_empty() {
        std::ptr::null_mut()
    } else {
        arg.as_mut_ptr().cast()
    };
    // SAFETY: the request word's length equals the argument's (checked above), so the
    // kernel reads and writes only inside `arg`; every pointer field designates a live
    // buffer of the length the structure announces, and both outlive the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), req.cmd as _, argp) };
    if rc < 0 {
        return Err(BackendError::Errno(errno_of(
            &std::io::Error::last_os_error(),
        )));
    }
    if req.copies_out() {
        for b in &req.buffers {
            bytes[b.ptr_offset..b.ptr_offset + 8].fill(0);
        }
        req.arg.copy_from_slice(bytes);
    }
    Ok(())
}

#[cfg(target_os = "freebsd")]
fn sysctl_present() -> bool {
    let name = c"hw.vmm.create";
    let mut len: libc::size_t = 0;
    // SAFETY: a size query: NULL old buffer with a valid length pointer, no new value.
    let rc = unsafe {
        libc::sysctlbyname(
            name.as_ptr(),
            std::ptr::null_mut(),
            &mut len,
            std::ptr::null(),
            0,
        )
    };
    rc == 0
}

#[cfg(not(target_os = "freebsd"))]
fn sysctl_present() -> bool {
    false
}

#[cfg(target_os = "freebsd")]
fn set_sysctl_string(which: &str, value: &[u8]) -> Result<(), BackendError> {
    let name = std::ffi::CString::new(which).map_err(|_| BackendError::Errno(libc::EINVAL))?;
    let mut v = value.to_vec();
    v.push(0);
    // SAFETY: name is NUL-terminated; the new value is a valid buffer of v.len() bytes
    // that lives through the call; no old value is requested.
    let rc = unsafe {
        libc::sysctlbyname(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            v.as_ptr().cast(),
            v.len(),
        )
    };
    if rc < 0 {
        return Err(BackendError::Errno(errno_of(
            &std::io::Error::last_os_error(),
        )));
    }
    Ok(())
}

#[cfg(not(target_os = "freebsd"))]
fn set_sysctl_string(_which: &str, _value: &[u8]) -> Result<(), BackendError> {
    Err(BackendError::Errno(libc::ENOSYS))
}

impl Backend for FreeBsd {
    fn name(&self) -> &'static str {
        "freebsd"
    }

    fn execute(&self, req: &mut Request) -> Result<(), BackendError> {
        let name = match &req.target {
            Target::Ctl => return self.ctl(req),
            Target::Vm(name) => name.clone(),
        };
        let node = self.node(&name, false)?;
        match ioctl_with_buffers(&node, req) {
            // The VM was destroyed (and maybe made again) since we opened it.
            Err(BackendError::Errno(libc::ENXIO)) => {
                let node = self.node(&name, true)?;
                ioctl_with_buffers(&node, req)
            }
            r => r,
        }
    }

    fn descriptor(&self, vm: &str) -> Option<std::os::fd::RawFd> {
        // The node stays open in `nodes` for the process's life.
        self.node(vm, false).ok().map(|f| f.as_raw_fd())
    }

    fn map_memory(&self, vm: &str, gpa: u64, len: usize) -> Result<Mapping, BackendError> {
        let node = self.node(vm, false)?;
        let owner = MmapOwner::map(node.as_raw_fd(), gpa, len, 0)
            .map_err(|e| BackendError::Errno(errno_of(&e)))?;
        let ptr = NonNull::new(owner.as_ptr()).ok_or(BackendError::Errno(libc::ENOMEM))?;
        // SAFETY: the whole fresh mapping, kept alive by `owner`; guest memory is only
        // accessed volatilely through vm-memory.
        Ok(unsafe { Mapping::new(ptr, len, Arc::new(owner)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{request, Error, Vm};

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("libvmmapi-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn without_dev_vmm_errors_say_why() {
        let dev = tmpdir("empty");
        let b: Arc<dyn Backend> = Arc::new(FreeBsd::with_dev_root(&dev));
        let e = Vm::create_with(b.clone(), "vm0").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("vm 'vm0'") && msg.contains("vmm(4) is not loaded"),
            "{msg}"
        );
        let e = Vm::open_with(b.clone(), "vm0").unwrap_err();
        assert!(e.to_string().contains("do not exist"), "{e}");
        assert!(Vm::list_with(&*b).is_err());
        std::fs::remove_dir_all(dev).unwrap();
    }

    #[test]
    fn lists_the_dev_vmm_directory() {
        let dev = tmpdir("list");
        std::fs::create_dir(dev.join("vmm")).unwrap();
        for n in ["zeta", "alpha", "vm-1"] {
            File::create(dev.join("vmm").join(n)).unwrap();
        }
        let b = FreeBsd::with_dev_root(&dev);
        assert_eq!(Vm::list_with(&b).unwrap(), ["alpha", "vm-1", "zeta"]);
        // A small buffer is answered with what is needed, and the caller retries.
        let mut req = request::vm_list(8);
        b.execute(&mut req).unwrap();
        let a: abi::VmmctlVmList = req.arg_as().unwrap();
        assert_eq!((a.needed, a.count), (16, 3));
        assert_eq!(&req.buffer(0).unwrap().data[..6], b"alpha\0");
        // A node exists but is not a vmm device: the ioctl fails with an errno, and a
        // missing one is "does not exist".
        let b: Arc<dyn Backend> = Arc::new(FreeBsd::with_dev_root(&dev));
        assert!(matches!(
            Vm::open_with(b, "alpha"),
            Err(Error::Request { op: "open", .. })
        ));
        let b: Arc<dyn Backend> = Arc::new(FreeBsd::with_dev_root(&dev));
        assert!(matches!(Vm::open_with(b, "nosuch"), Err(Error::NoSuchVm(n)) if n == "nosuch"));
        std::fs::remove_dir_all(dev).unwrap();
    }

    #[test]
    fn pointer_fields_are_restored() {
        // ioctl on a regular file fails (ENOTTY) but exercises the patching path; the
        // request's pointer fields must still read zero afterwards.
        let dev = tmpdir("ptr");
        let f = File::create(dev.join("x")).unwrap();
        let mut req = request::run("x", 0);
        let before = req.arg.clone();
        assert_eq!(
            ioctl_with_buffers(&f, &mut req),
            Err(BackendError::Errno(libc::ENOTTY))
        );
        assert_eq!(req.arg, before);
        std::fs::remove_dir_all(dev).unwrap();
    }
}
