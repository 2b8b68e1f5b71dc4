//! SIGTERM while the console is raw: the terminal is put back and bhyve exits with
//! status 4. The test runs itself as the child (own main, no libtest threads, so the
//! signal mask is the one bhyve sets up), with a pseudo-terminal as its stdin.

use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::termios::{self, LocalFlags};
use nix::unistd::Pid;

const CHILD: &str = "BHYVE_SIGNALS_TEST_CHILD";

fn child() -> ! {
    bhyve::console::handle_exit_signals(4).expect("signal setup");
    assert!(
        bhyve::console::enter_raw_mode().expect("raw mode"),
        "stdin is not a tty"
    );
    println!("ready");
    std::thread::sleep(Duration::from_secs(20));
    // The signal never came: fail with a status the parent does not expect.
    std::process::exit(99)
}

fn main() {
    if std::env::var_os(CHILD).is_some() {
        child();
    }
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave = pty.slave.try_clone().expect("dup");
    let before = termios::tcgetattr(pty.slave.as_fd()).unwrap();
    assert!(before
        .local_flags
        .contains(LocalFlags::ICANON | LocalFlags::ECHO));

    let mut c = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "1")
        .stdin(Stdio::from(slave))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut line = String::new();
    BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let raw = termios::tcgetattr(pty.slave.as_fd()).unwrap();
    assert!(
        !raw.local_flags
            .intersects(LocalFlags::ICANON | LocalFlags::ECHO),
        "the child did not make the terminal raw"
    );

    kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = c.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the child ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut c.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(4), "status {status:?}, stderr {err}");
    assert!(err.contains("bhyve: SIGTERM: stopping"), "{err}");
    let after = termios::tcgetattr(pty.slave.as_fd()).unwrap();
    assert_eq!(
        after.local_flags, before.local_flags,
        "terminal not restored"
    );
    assert_eq!(after.input_flags, before.input_flags);
    assert_eq!(after.output_flags, before.output_flags);
    println!("signals: SIGTERM restores the terminal and exits 4: ok");
}
