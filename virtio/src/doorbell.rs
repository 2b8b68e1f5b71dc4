//! How the vCPU thread wakes a device's worker: a pipe, so that a worker can wait for a
//! queue notification and for its backend (a tap, a socket) in one poll(2).
//!
//! Ringing never blocks: the write end is non-blocking and a full pipe already means
//! "notified". Which queues were notified travels beside the pipe in an atomic bit set,
//! so a burst of notifications costs the worker one wakeup.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// The bit [`Wake::queues`] carries after a device reset (no device has 32 queues).
pub const RESET_BIT: u32 = 31;

/// A worker's wakeup: queue notifications and a stop request.
#[derive(Debug)]
pub struct Doorbell {
    read: OwnedFd,
    write: OwnedFd,
    /// Bit n: queue n was notified since the worker last looked.
    pending: AtomicU32,
    stop: AtomicBool,
}

/// What a wait returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wake {
    /// Queues notified (bit n = queue n).
    pub queues: u32,
    /// Bit i: the i-th fd passed to [`Doorbell::wait`] is readable (or has hung up).
    pub fds_ready: u64,
    /// [`Doorbell::stop`] was called: the worker ends.
    pub stop: bool,
}

impl Doorbell {
    pub fn new() -> std::io::Result<Doorbell> {
        let (read, write) = nix::unistd::pipe()?;
        for fd in [&read, &write] {
            let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
            fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        }
        Ok(Doorbell {
            read,
            write,
            pending: AtomicU32::new(0),
            stop: AtomicBool::new(false),
        })
    }

    /// Queue `queue` was notified (QueueNotify). Never blocks.
    pub fn ring(&self, queue: u32) {
        if queue < 32 {
            self.pending.fetch_or(1 << queue, Ordering::AcqRel);
        }
        self.poke();
    }

    /// Asks the worker to end.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.poke();
    }

    fn poke(&self) {
        // EAGAIN: the pipe is full, so the worker has a wakeup pending anyway.
        let _ = nix::unistd::write(self.write.as_fd(), &[1]);
    }

    /// Waits until a queue is notified, one of `extra` (at most 63) is readable, or
    /// stop; `timeout_ms` None waits indefinitely.
    pub fn wait(&self, extra: &[BorrowedFd<'_>], timeout_ms: Option<u16>) -> Wake {
        let extra = &extra[..extra.len().min(63)];
        loop {
            let wake = self.take();
            if wake.queues != 0 || wake.stop {
                return wake;
            }
            let mut fds = vec![PollFd::new(self.read.as_fd(), PollFlags::POLLIN)];
            fds.extend(extra.iter().map(|fd| PollFd::new(*fd, PollFlags::POLLIN)));
            let timeout = timeout_ms.map_or(PollTimeout::NONE, PollTimeout::from);
            match poll(&mut fds, timeout) {
                Ok(0) => return self.take(),
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                // poll on two valid fds cannot fail otherwise; do not spin if it does.
                Err(_) => {
                    return Wake {
                        stop: true,
                        ..self.take()
                    }
                }
            }
            let mut ready = 0u64;
            for (i, f) in fds.iter().skip(1).enumerate() {
                let hit = f.revents().is_some_and(|r| {
                    r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                });
                if hit {
                    ready |= 1 << i;
                }
            }
            self.drain();
            let mut wake = self.take();
            wake.fds_ready = ready;
            if wake.queues != 0 || wake.stop || wake.fds_ready != 0 {
                return wake;
            }
        }
    }

    fn take(&self) -> Wake {
        Wake {
            queues: self.pending.swap(0, Ordering::AcqRel),
            fds_ready: 0,
            stop: self.stop.load(Ordering::Acquire),
        }
    }

    fn drain(&self) {
        let mut buf = [0u8; 64];
        while matches!(nix::unistd::read(self.read.as_raw_fd(), &mut buf), Ok(n) if n > 0) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn notifications_coalesce_and_stop_wakes() {
        let bell = Arc::new(Doorbell::new().unwrap());
        for _ in 0..10_000 {
            bell.ring(1); // far more than a pipe holds: never blocks
        }
        bell.ring(0);
        assert_eq!(bell.wait(&[], None).queues, 0b11);
        assert_eq!(bell.wait(&[], Some(10)), Wake::default());
        let b = bell.clone();
        let t = std::thread::spawn(move || b.wait(&[], None));
        std::thread::sleep(std::time::Duration::from_millis(20));
        bell.stop();
        assert!(t.join().unwrap().stop);
    }

    #[test]
    fn extra_fd_readiness() {
        let bell = Doorbell::new().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"x").unwrap();
        let (r2, _w2) = nix::unistd::pipe().unwrap();
        let wake = bell.wait(&[r2.as_fd(), r.as_fd()], None);
        assert_eq!((wake.fds_ready, wake.queues), (0b10, 0));
    }
}
