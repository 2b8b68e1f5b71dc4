//! The guest console on the user's terminal (`-b`), and bhyve's own messages.
//!
//! With `-b` the terminal goes into raw mode (every key reaches the guest, output is
//! passed through untouched) and is put back however bhyve ends: a normal return, an
//! error, a panic, or SIGINT/SIGTERM/SIGHUP. The saved settings live in one process-wide
//! slot so that every one of those paths restores the same state, once.

use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::termios::{self, SetArg, Termios};

use crate::mmio::DeviceRef;

/// The terminal to put back and its settings. The fd is stdin's for bhyve (which
/// stays open for the whole process); tests pass a pseudo-terminal.
static SAVED: Mutex<Option<(RawFd, Termios)>> = Mutex::new(None);
/// True while the terminal is raw: messages then need "\r\n".
static RAW: AtomicBool = AtomicBool::new(false);

/// Prints one bhyve message on stderr, readable on a raw terminal too.
pub fn warn(msg: &str) {
    let end = if RAW.load(Ordering::Relaxed) {
        "\r\n"
    } else {
        "\n"
    };
    let _ = write!(io::stderr().lock(), "bhyve: {msg}{end}");
}

/// Warnings a guest can cause at will (exits nobody handles, unknown registers): each
/// kind is printed at most once a second; the rest are counted, and the count is
/// printed when the VM stops. A guest looping on one cannot fill stderr.
#[derive(Default)]
pub struct GuestNoise {
    last: std::sync::Mutex<std::collections::HashMap<&'static str, std::time::Instant>>,
    suppressed: std::sync::atomic::AtomicU64,
}

impl GuestNoise {
    /// Prints `msg()` unless a warning of `kind` was printed less than a second ago.
    pub fn warn(&self, kind: &'static str, msg: impl FnOnce() -> String) {
        let now = std::time::Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.get(kind) {
            Some(t) if now.duration_since(*t) < std::time::Duration::from_secs(1) => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                last.insert(kind, now);
                drop(last);
                warn(&msg());
            }
        }
    }

    /// Warnings not printed so far.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }
}

/// Puts stdin's terminal in raw mode, if stdin is a terminal. Returns whether it did.
pub fn enter_raw_mode() -> nix::Result<bool> {
    let stdin = io::stdin();
    if !stdin.is_terminal() {
        return Ok(false);
    }
    enter_raw_mode_on(stdin.as_fd()).map(|()| true)
}

/// Puts terminal `fd` in raw mode and remembers how it was. `fd` must stay open until
/// [`restore_terminal`].
pub fn enter_raw_mode_on(fd: BorrowedFd<'_>) -> nix::Result<()> {
    let saved = termios::tcgetattr(fd)?;
    let mut raw = saved.clone();
    termios::cfmakeraw(&mut raw);
    // As FreeBSD's bhyve does: ignore modem control lines.
    raw.control_flags |= termios::ControlFlags::CLOCAL;
    *SAVED.lock().unwrap_or_else(|p| p.into_inner()) = Some((fd.as_raw_fd(), saved));
    install_panic_restore();
    termios::tcsetattr(fd, SetArg::TCSANOW, &raw)?;
    RAW.store(true, Ordering::Relaxed);
    Ok(())
}

/// Puts the terminal back as [`enter_raw_mode`] found it. Safe to call on any path and
/// more than once; only the first call after entering raw mode does anything.
pub fn restore_terminal() {
    let saved = SAVED.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some((fd, t)) = saved {
        // SAFETY: `fd` was borrowed from an open terminal in enter_raw_mode_on, whose
        // caller keeps it open until this restore (stdin for bhyve: never closed).
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = termios::tcsetattr(fd, SetArg::TCSANOW, &t);
        RAW.store(false, Ordering::Relaxed);
    }
}

/// Restores the terminal when dropped: held by `main` for the whole run.
pub struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn install_panic_restore() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
    });
}

/// The signals after which bhyve restores the terminal and exits.
fn exit_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set
}

/// Blocks SIGINT/SIGTERM/SIGHUP in this thread (and so in every thread it starts
/// afterwards) and waits for them on a thread of their own, which restores the terminal
/// and exits with `status`. Call before starting any other thread.
pub fn handle_exit_signals(status: i32) -> nix::Result<()> {
    let set = exit_signals();
    set.thread_block()?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                restore_terminal();
                vmm_virtio::console::remove_sockets();
                warn(&format!("{}: stopping", sig.as_str()));
                std::process::exit(status);
            }
        })
        .map_err(|_| nix::errno::Errno::EAGAIN)?;
    Ok(())
}

/// Console output: the terminal (stdout) with `-b`, nothing without it.
#[derive(Clone)]
pub enum Output {
    Terminal,
    Discard,
    /// A shared in-memory buffer (tests and embedders).
    Buffer(Arc<Mutex<Vec<u8>>>),
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Output::Terminal => io::stdout().lock().write(buf),
            Output::Discard => Ok(buf.len()),
            Output::Buffer(b) => {
                b.lock().unwrap_or_else(|p| p.into_inner()).extend(buf);
                Ok(buf.len())
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Terminal => io::stdout().lock().flush(),
            _ => Ok(()),
        }
    }
}

/// How long the input thread waits for the guest to make room in a full RX FIFO.
const FULL_FIFO_WAIT: Duration = Duration::from_millis(2);

/// Where typed input goes: the console UART, or a virtio console.
pub trait InputSink: Send + 'static {
    /// Takes what fits of `bytes`; returns how many were taken (0: full for now).
    fn push_input(&self, bytes: &[u8]) -> io::Result<usize>;
}

impl InputSink for DeviceRef {
    fn push_input(&self, bytes: &[u8]) -> io::Result<usize> {
        DeviceRef::push_input(self, bytes).map_err(|e| io::Error::other(e.to_string()))
    }
}

impl InputSink for vmm_virtio::console::ConsoleInput {
    fn push_input(&self, bytes: &[u8]) -> io::Result<usize> {
        Ok(self.push(bytes))
    }
}

/// Feeds everything read from `input` to the console (`sink`) until `input` ends or
/// fails. Bytes are never dropped: while the console is full the thread waits for the
/// guest to read, so a paste larger than a UART's FIFO arrives whole.
pub fn pump_input(mut input: impl Read, sink: &impl InputSink) -> io::Result<()> {
    let mut buf = [0u8; 256];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut pending = &buf[..n];
        while !pending.is_empty() {
            let taken = sink.push_input(pending)?;
            pending = &pending[taken..];
            if !pending.is_empty() {
                thread::sleep(FULL_FIFO_WAIT);
            }
        }
    }
}

/// Starts the thread that feeds `input` (the terminal: [`StdinFd`]) to the console.
pub fn spawn_input_thread(
    input: impl Read + Send + 'static,
    sink: impl InputSink,
) -> io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            if let Err(e) = pump_input(input, &sink) {
                warn(&format!("console input stopped: {e}"));
            }
        })
}

/// Reads stdin straight from its fd: every key as soon as it is typed.
pub struct StdinFd(pub io::Stdin);

impl Read for StdinFd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        nix::unistd::read(self.0.as_raw_fd(), buf).map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::pl011::{self, Pl011};
    use crate::mmio::tests::RecordingSink;
    use crate::mmio::Bus;

    #[test]
    fn input_larger_than_the_fifo_arrives_whole() {
        let sink = Arc::new(RecordingSink::default());
        let mut bus = Bus::new(sink.clone());
        let i = bus.attach(
            "pl011",
            vmm_platform::PL011,
            Some(vmm_platform::PL011_INTID),
            Box::new(Pl011::new(Output::Discard)),
        );
        let bus = Arc::new(bus);
        let uart = bus.device(i).unwrap();
        let base = vmm_platform::PL011.base;
        // FIFO on, RX timeout interrupt enabled.
        bus.write(base + pl011::LCR_H, 4, pl011::LCR_H_FEN.into())
            .unwrap();
        bus.write(base + pl011::IMSC, 4, pl011::int::RT.into())
            .unwrap();
        let text: Vec<u8> = (0..100u8).map(|i| b'a' + i % 26).collect();
        let feeder = {
            let text = text.clone();
            let uart = uart.clone();
            thread::spawn(move || pump_input(&text[..], &uart))
        };
        let mut got = Vec::new();
        while got.len() < text.len() {
            let fr = bus.read(base + pl011::FR, 4).unwrap();
            if fr == crate::mmio::Access::Device(u64::from(pl011::fr::TXFE | pl011::fr::RXFE)) {
                thread::yield_now();
                continue;
            }
            if let crate::mmio::Access::Device(v) = bus.read(base + pl011::DR, 4).unwrap() {
                got.push(v as u8);
            }
        }
        feeder.join().unwrap().unwrap();
        assert_eq!(got, text);
        // The line rose with the first byte and fell when the FIFO was drained.
        let levels = sink.0.lock().unwrap();
        assert_eq!(levels.first(), Some(&(vmm_platform::PL011_INTID, true)));
        assert_eq!(levels.last(), Some(&(vmm_platform::PL011_INTID, false)));
    }

    #[test]
    fn raw_mode_is_entered_and_restored() {
        use nix::sys::termios::{InputFlags, LocalFlags};
        let pty = nix::pty::openpty(None, None).unwrap();
        let fd = pty.slave.as_fd();
        let before = termios::tcgetattr(fd).unwrap();
        assert!(before
            .local_flags
            .contains(LocalFlags::ICANON | LocalFlags::ECHO));
        enter_raw_mode_on(fd).unwrap();
        let raw = termios::tcgetattr(fd).unwrap();
        assert!(!raw
            .local_flags
            .intersects(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG));
        assert!(!raw.input_flags.contains(InputFlags::ICRNL));
        restore_terminal();
        let after = termios::tcgetattr(fd).unwrap();
        assert_eq!(after.local_flags, before.local_flags);
        assert_eq!(after.input_flags, before.input_flags);
        assert_eq!(after.output_flags, before.output_flags);
        // A second restore does nothing (and does not touch a closed fd).
        restore_terminal();
    }

    #[test]
    fn buffer_output_collects() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let mut out = Output::Buffer(buf.clone());
        out.write_all(b"abc").unwrap();
        out.flush().unwrap();
        assert_eq!(*buf.lock().unwrap(), b"abc");
        assert_eq!(Output::Discard.write(b"xyz").unwrap(), 3);
    }

    #[test]
    fn guest_noise_prints_one_of_a_kind_a_second() {
        let n = GuestNoise::default();
        let mut made = 0;
        for _ in 0..100 {
            n.warn("exception", || {
                made += 1;
                "one".into()
            });
        }
        n.warn("system register", || {
            made += 1;
            "two".into()
        });
        assert_eq!(made, 2, "each kind's message made once");
        assert_eq!(n.suppressed(), 99);
    }
}
