//! Capability mode (FreeBSD's Capsicum), as FreeBSD's bhyve enters it: once every
//! descriptor the VM needs is open and the devices are started, bhyve limits each
//! descriptor to what it is used for and calls `cap_enter`, so that a bug in a device
//! model the guest drives cannot reach the rest of the host: no path lookups, no new
//! files or sockets, and on each kept descriptor only its own operations.
//!
//! | descriptor | rights |
//! |---|---|
//! | /dev/vmm/NAME | `CAP_IOCTL` (only the VM requests, `cap_ioctls_limit`), `CAP_MMAP_RW` |
//! | disk image | `CAP_PREAD`, `CAP_FSTAT`; with writes `CAP_PWRITE`, `CAP_FSYNC` |
//! | tap | `CAP_READ`, `CAP_WRITE`, `CAP_EVENT` |
//! | virtio-console port socket (listening, client) | `CAP_ACCEPT`, `CAP_READ`, `CAP_WRITE`, `CAP_EVENT`, `CAP_FCNTL`, `CAP_SHUTDOWN` |
//! | a port socket's directory | `CAP_UNLINKAT` (its removal at exit) |
//! | stdin, stdout, stderr | reads or writes, `CAP_FSTAT`, `CAP_EVENT`, `CAP_FCNTL`, `CAP_IOCTL` (only the termios requests) |
//!
//! A kernel without capability mode (`ENOSYS`) runs the VM unsandboxed with a warning,
//! as FreeBSD's bhyve does. Elsewhere (the testbed's tools on Linux) there is no
//! capability mode and [`enter`] does nothing. This has been type-checked for
//! aarch64-unknown-freebsd, not run: there is no FreeBSD machine here.

use std::os::fd::RawFd;

use thiserror::Error;
use vmm_virtio::transport::HostFd;

#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("cannot limit the {what} descriptor: {source}")]
    Limit {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter capability mode: {0}")]
    Enter(#[source] std::io::Error),
}

/// Limits `vm` (the VM's descriptor), the devices' descriptors, the port sockets'
/// directories and the standard descriptors, then enters capability mode.
#[cfg(target_os = "freebsd")]
pub fn enter(
    vm: Option<RawFd>,
    devices: &[HostFd],
    socket_dirs: &[RawFd],
) -> Result<(), SandboxError> {
    use libc::*;
    // Request words are unsigned longs, 64 bits on the LP64 targets bhyve runs on.
    let ioctls: &[c_ulong] = &vmm_sys::ioctl::VM_REQUESTS;
    let termios: &[c_ulong] = &[TIOCGETA, TIOCSETA, TIOCSETAW, TIOCSETAF, TIOCGWINSZ];
    if let Some(fd) = vm {
        limit(fd, "VM", &[CAP_IOCTL, CAP_MMAP_RW], Some(ioctls))?;
    }
    for d in devices {
        match *d {
            HostFd::Disk { fd, writable: true } => limit(
                fd,
                "disk",
                &[CAP_PREAD, CAP_PWRITE, CAP_FSYNC, CAP_FSTAT],
                None,
            )?,
            HostFd::Disk {
                fd,
                writable: false,
            } => limit(fd, "disk", &[CAP_PREAD, CAP_FSTAT], None)?,
            HostFd::Tap(fd) => limit(fd, "tap", &[CAP_READ, CAP_WRITE, CAP_EVENT], None)?,
            HostFd::Socket(fd) => limit(
                fd,
                "console port socket",
                &[
                    CAP_ACCEPT,
                    CAP_READ,
                    CAP_WRITE,
                    CAP_EVENT,
                    CAP_FCNTL,
                    CAP_SHUTDOWN,
                ],
                None,
            )?,
        }
    }
    for &fd in socket_dirs {
        limit(fd, "port socket directory", &[CAP_UNLINKAT], None)?;
    }
    let tty = [CAP_FSTAT, CAP_EVENT, CAP_FCNTL, CAP_IOCTL];
    limit(
        STDIN_FILENO,
        "stdin",
        &[&tty[..], &[CAP_READ]].concat(),
        Some(termios),
    )?;
    for (fd, what) in [(STDOUT_FILENO, "stdout"), (STDERR_FILENO, "stderr")] {
        limit(fd, what, &[&tty[..], &[CAP_WRITE]].concat(), Some(termios))?;
    }
    // SAFETY: no arguments; from here on the process has no global namespaces.
    if unsafe { cap_enter() } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(ENOSYS) {
            crate::console::warn("this kernel has no capability mode: the VM runs unsandboxed");
            return Ok(());
        }
        return Err(SandboxError::Enter(e));
    }
    Ok(())
}

/// Limits `fd` to `rights` and, with `ioctls`, to those requests. A descriptor closed
/// since (a client that went away) is skipped; a kernel without capabilities
/// (`ENOSYS`) is not an error.
#[cfg(target_os = "freebsd")]
fn limit(
    fd: RawFd,
    what: &'static str,
    rights: &[u64],
    ioctls: Option<&[u64]>,
) -> Result<(), SandboxError> {
    use libc::*;
    let fail = |source: std::io::Error| match source.raw_os_error() {
        Some(ENOSYS) | Some(EBADF) => Ok(()),
        _ => Err(SandboxError::Limit { what, source }),
    };
    let mut r = std::mem::MaybeUninit::<cap_rights_t>::uninit();
    // SAFETY: cap_rights_init's expansion: the version, the structure to fill, then the
    // rights, ended by 0 (none here: an empty set to add to).
    unsafe { __cap_rights_init(CAP_RIGHTS_VERSION, r.as_mut_ptr(), 0u64) };
    for &right in rights {
        // SAFETY: `r` was initialised above; one right, ended by 0 (cap_rights_set).
        unsafe { __cap_rights_set(r.as_mut_ptr(), right, 0u64) };
    }
    // SAFETY: a descriptor of ours and the initialised rights.
    if unsafe { cap_rights_limit(fd, r.as_ptr()) } != 0 {
        return fail(std::io::Error::last_os_error());
    }
    if let Some(cmds) = ioctls {
        // SAFETY: `cmds` holds `cmds.len()` request words.
        if unsafe { cap_ioctls_limit(fd, cmds.as_ptr(), cmds.len()) } != 0 {
            return fail(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// No capability mode outside FreeBSD (the testbed's tools on Linux).
#[cfg(not(target_os = "freebsd"))]
pub fn enter(
    _vm: Option<RawFd>,
    _devices: &[HostFd],
    _socket_dirs: &[RawFd],
) -> Result<(), SandboxError> {
    Ok(())
}
