//! virtio-net's backend: a tap interface, one Ethernet frame per read(2) or write(2).
//!
//! * FreeBSD: `/dev/NAME` for a `tapN` (or `vmnetN`) interface, as FreeBSD's bhyve
//!   opens it.
//! * Linux (so the testbed can use it): `/dev/net/tun` attached with TUNSETIFF to the
//!   tap NAME, IFF_TAP|IFF_NO_PI. Linux would create a missing interface, so its
//!   existence is checked first: bhyve never creates network interfaces.
//!
//! The fd is non-blocking; the device polls it with its doorbell.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use thiserror::Error;

/// Why a tap cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TapError {
    #[error("{0}: not a valid interface name")]
    BadName(String),
    #[error("{0}: no such tap interface (create it first, e.g. {1})")]
    Missing(String, &'static str),
    #[error("{0}: busy (another process has it open)")]
    Busy(String),
    #[error("{0}: not a tap interface")]
    NotTap(String),
    #[error("{0}: permission denied")]
    Permission(String),
    #[error("{0}: {1}")]
    Os(String, String),
}

/// Interface names: what both kernels accept (IFNAMSIZ 16 with the NUL).
fn check_name(name: &str) -> Result<(), TapError> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(TapError::BadName(name.into()))
    }
}

fn set_nonblocking(fd: &OwnedFd, name: &str) -> Result<(), TapError> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)
        .map_err(|e| TapError::Os(name.into(), e.desc().into()))?;
    fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(|e| TapError::Os(name.into(), e.desc().into()))?;
    Ok(())
}

/// Opens tap `name`, non-blocking.
#[cfg(target_os = "linux")]
pub fn open(name: &str) -> Result<OwnedFd, TapError> {
    check_name(name)?;
    if !Path::new("/sys/class/net").join(name).exists() {
        return Err(TapError::Missing(
            name.into(),
            "ip tuntap add NAME mode tap",
        ));
    }
    let fd = nix::fcntl::open(
        "/dev/net/tun",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| match e {
        nix::errno::Errno::EACCES | nix::errno::Errno::EPERM => {
            TapError::Permission("/dev/net/tun".into())
        }
        e => TapError::Os("/dev/net/tun".into(), e.desc().into()),
    })?;
    // SAFETY: open returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF as _, &mut req) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EBUSY) => TapError::Busy(name.into()),
            // An existing interface of another kind (or a tun, not a tap).
            Some(libc::EINVAL) => TapError::NotTap(name.into()),
            Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission(name.into()),
            _ => TapError::Os(name.into(), e.to_string()),
        });
    }
    set_nonblocking(&fd, name)?;
    Ok(fd)
}

/// Opens tap `name` (`/dev/NAME`), non-blocking.
#[cfg(target_os = "freebsd")]
pub fn open(name: &str) -> Result<OwnedFd, TapError> {
    check_name(name)?;
    if !(name.starts_with("tap") || name.starts_with("vmnet")) {
        return Err(TapError::NotTap(name.into()));
    }
    let path = Path::new("/dev").join(name);
    let fd = nix::fcntl::open(
        &path,
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| match e {
        nix::errno::Errno::ENOENT => TapError::Missing(name.into(), "ifconfig tapN create"),
        nix::errno::Errno::EBUSY => TapError::Busy(name.into()),
        nix::errno::Errno::EACCES | nix::errno::Errno::EPERM => TapError::Permission(name.into()),
        e => TapError::Os(name.into(), e.desc().into()),
    })?;
    // SAFETY: open returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_nonblocking(&fd, name)?;
    Ok(fd)
}

#[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
pub fn open(name: &str) -> Result<OwnedFd, TapError> {
    check_name(name)?;
    Err(TapError::Os(
        name.into(),
        "taps are not supported on this system".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_anything_is_opened() {
        for bad in ["", "a/b", "tap 0", "0123456789abcdef", "../tap0"] {
            assert_eq!(
                open(bad).unwrap_err(),
                TapError::BadName(bad.into()),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_missing_tap_is_not_created() {
        let name = "vmmnotap0";
        let e = open(name).unwrap_err();
        assert!(matches!(e, TapError::Missing(..)), "{e}");
        #[cfg(target_os = "linux")]
        assert!(!Path::new("/sys/class/net").join(name).exists());
    }
}
