//! What is wrong with a device's `-s` options: one type for every device model's
//! parser, each variant a one-line message naming the device and the fix.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OptionError {
    /// The first option (the backend) is missing.
    #[error("{device} needs {what}: {usage}")]
    Missing {
        device: &'static str,
        what: &'static str,
        usage: &'static str,
    },
    #[error("{device}: unknown option '{option}' (known: {known})")]
    Unknown {
        device: &'static str,
        option: String,
        known: &'static str,
    },
    #[error("virtio-net: bad MAC '{0}' (expected xx:xx:xx:xx:xx:xx, unicast, not zero)")]
    BadMac(String),
    #[error("virtio-console: '{0}' is not NAME=PATH (a port named NAME on socket PATH)")]
    NotNamePath(String),
    #[error("virtio-console: port name '{0}' must be 1-64 letters, digits, '.', '_' or '-'")]
    BadPortName(String),
    #[error("virtio-console: port '{0}' has no socket path")]
    NoSocketPath(String),
    #[error("virtio-console: port '{0}' is named twice")]
    PortNamedTwice(String),
    #[error("virtio-console: at most {0} named ports")]
    TooManyPorts(usize),
}
