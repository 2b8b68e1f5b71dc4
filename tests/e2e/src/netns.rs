//! A network namespace of the caller's own holding one tap with the host end's address,
//! removed on drop. Tests and benchmarks run bhyve (or QEMU) inside it with
//! `ip netns exec`, and their own host end on a thread that [`Netns::enter`]s it:
//! traffic never leaves the namespace.

use std::process::Command;

use crate::Error;
use vmm_testbed_harness::cmd;

/// The tap inside every namespace made here.
pub const TAP: &str = "vmmtap0";
/// The host end's address on the tap (the guest takes 10.0.2.15/24).
pub const HOST_IP: &str = "10.0.2.1";

/// Whether this process may make namespaces and taps.
pub fn have_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `ip netns add NAME`, with lo up and tap [`TAP`] at [`HOST_IP`]/24, up. Needs root.
    pub fn new(name: &str) -> Result<Netns, Error> {
        let ns = Netns { name: name.into() };
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        let host = format!("{HOST_IP}/24");
        for args in [
            vec!["netns", "add", name],
            vec!["-n", name, "link", "set", "lo", "up"],
            vec!["-n", name, "tuntap", "add", TAP, "mode", "tap"],
            vec!["-n", name, "addr", "add", &host, "dev", TAP],
            vec!["-n", name, "link", "set", TAP, "up"],
        ] {
            cmd::output(
                &format!("ip {}", args.join(" ")),
                Command::new("ip").args(&args),
            )?;
        }
        Ok(ns)
    }

    /// Moves the calling thread into the namespace: sockets it opens afterwards live
    /// there.
    pub fn enter(&self) -> Result<(), Error> {
        use std::os::fd::AsRawFd;
        let path = format!("/var/run/netns/{}", self.name);
        let f = std::fs::File::open(&path).map_err(|e| Error::Io(path.clone(), e))?;
        // SAFETY: setns on an open namespace fd, for this thread only (CLONE_NEWNET).
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(Error::Io(path, std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// `ip netns exec NAME PROGRAM`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
