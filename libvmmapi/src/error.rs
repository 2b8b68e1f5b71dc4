//! Typed errors. Every error that concerns a VM names it, so a tool can print one line
//! such as `bhyvectl: vm 'foo': does not exist`.

use std::fmt;

/// What a backend reports for one request: an errno from the kernel (or the fake, which
/// answers with the errnos the kernel would), or the backend itself is not usable here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The request failed with this errno.
    #[error("{}", errno_text(*.0))]
    Errno(i32),
    /// The backend cannot serve requests on this machine (no /dev/vmm, no testbed...).
    #[error("{0}")]
    Unavailable(String),
    /// The VM's node does not exist (a per-VM request on an unknown name).
    #[error("no such VM")]
    NoSuchVm,
}

/// The text `strerror(3)` gives for `errno` ("Invalid argument"), without std's
/// " (os error N)" suffix.
pub fn errno_text(errno: i32) -> String {
    let mut s = std::io::Error::from_raw_os_error(errno).to_string();
    if let Some(i) = s.rfind(" (os error ") {
        s.truncate(i);
    }
    s
}

/// A register number, exit code or field that a backend returned and this library does
/// not know (the other side is newer, or broken). Never a panic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadExit {
    UnknownCode(i32),
    UnknownSuspend(i32),
    BadRegister(i32),
    BadAccessSize(u8),
}

impl fmt::Display for BadExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadExit::UnknownCode(c) => write!(f, "unknown exit code {c}"),
            BadExit::UnknownSuspend(h) => write!(f, "unknown suspend reason {h}"),
            BadExit::BadRegister(r) => write!(f, "exit names unknown register {r}"),
            BadExit::BadAccessSize(s) => write!(f, "exit has access size {s}"),
        }
    }
}

/// Errors of this library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The name is not a valid VM name (checked before anything is touched).
    #[error("invalid VM name {name:?}: {cause}")]
    BadName {
        name: String,
        cause: vmm_sys::NameError,
    },
    #[error("vm '{0}' does not exist")]
    NoSuchVm(String),
    #[error("vm '{0}' already exists")]
    VmExists(String),
    /// A request on a VM failed: `op` says which (e.g. "VM_ALLOC_MEMSEG").
    #[error("vm '{vm}': {op}: {source}")]
    Request {
        vm: String,
        op: &'static str,
        #[source]
        source: BackendError,
    },
    /// A request outside any one VM failed (creating the backend, listing VMs).
    #[error("{op}: {source}")]
    Backend {
        op: &'static str,
        #[source]
        source: BackendError,
    },
    /// An argument this library refuses before sending anything.
    #[error("vm '{vm}': {what}")]
    Invalid { vm: String, what: String },
    /// VM_RUN returned an exit this library cannot decode.
    #[error("vm '{vm}': vcpu {vcpu}: {cause}")]
    BadExit {
        vm: String,
        vcpu: i32,
        cause: BadExit,
    },
    /// Guest memory could not be reached through vm-memory.
    #[error("vm '{vm}': guest memory: {what}")]
    Memory { vm: String, what: String },
}

impl Error {
    /// The VM the error is about, if any.
    pub fn vm(&self) -> Option<&str> {
        match self {
            Error::Backend { .. } => None,
            Error::BadName { name, .. } => Some(name),
            Error::NoSuchVm(vm) | Error::VmExists(vm) => Some(vm),
            Error::Request { vm, .. }
            | Error::Invalid { vm, .. }
            | Error::BadExit { vm, .. }
            | Error::Memory { vm, .. } => Some(vm),
        }
    }

    /// The cause without the VM's name, for tools that print `vm 'NAME': <cause>`.
    pub fn cause(&self) -> String {
        match self {
            Error::NoSuchVm(_) => "does not exist".into(),
            Error::VmExists(_) => "already exists".into(),
            Error::Request { op, source, .. } => format!("{op}: {source}"),
            Error::Invalid { what, .. } => what.clone(),
            Error::BadExit { vcpu, cause, .. } => format!("vcpu {vcpu}: {cause}"),
            Error::Memory { what, .. } => format!("guest memory: {what}"),
            Error::BadName { cause, .. } => cause.to_string(),
            Error::Backend { .. } => self.to_string(),
        }
    }

    /// The errno behind the error, if the kernel (or fake) gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Request {
                source: BackendError::Errno(e),
                ..
            }
            | Error::Backend {
                source: BackendError::Errno(e),
                ..
            } => Some(*e),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_vm_and_cause() {
        assert_eq!(
            Error::NoSuchVm("foo".into()).to_string(),
            "vm 'foo' does not exist"
        );
        assert_eq!(
            Error::VmExists("foo".into()).to_string(),
            "vm 'foo' already exists"
        );
        let e = Error::Request {
            vm: "foo".into(),
            op: "VM_RUN",
            source: BackendError::Errno(libc::EINVAL),
        };
        assert_eq!(e.vm(), Some("foo"));
        assert_eq!(e.errno(), Some(libc::EINVAL));
        assert!(e
            .to_string()
            .starts_with("vm 'foo': VM_RUN: Invalid argument"));
        assert_eq!(
            Error::NoSuchVm("foo".into()).cause(),
            "does not exist".to_string()
        );
    }
}
