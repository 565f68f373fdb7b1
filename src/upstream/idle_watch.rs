//! Closing pooled upstream connections the moment their server closes them.
//!
//! An idle pooled connection holds no buffer and no pending read, so nothing
//! would notice a backend closing it (its idle timeout, a restart, a `408` and
//! close) until a request picks it: it would sit half-open in CLOSE-WAIT until
//! then. Each worker keeps one epoll set in which every upstream connection it
//! opens is registered once, for the peer's close only (`EPOLLRDHUP`, edge
//! triggered): response bytes never raise an event, so a busy connection costs
//! nothing here and a request costs no system call. The set's own readiness is
//! awaited through the runtime; when it fires, the pool drops the idle
//! connections named by the events (see `ConnPool::peer_closed`).
//!
//! Stray bytes without a close (a backend answering twice) raise no event: the
//! pool probes every connection it hands out (`Conn::probably_alive`) and drops
//! one that holds anything. A registration ends by itself when the connection's
//! descriptor is closed.

use crate::io::{Conn, ReadyFd};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Events taken per wake-up; more stay queued for the next round.
const BATCH: usize = 64;

pub struct IdleWatch {
    set: ReadyFd,
}

/// A connection whose server closed it: its pool slot and descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    pub slot: usize,
    pub fd: RawFd,
}

impl IdleWatch {
    /// Creates the worker's epoll set (call inside the worker's runtime).
    pub fn new() -> io::Result<IdleWatch> {
        // SAFETY: plain system call; the descriptor it returns is owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(IdleWatch {
            set: ReadyFd::new(owned)?,
        })
    }

    /// Registers a new upstream connection of pool slot `slot`.
    pub fn register(&self, conn: &Conn, slot: usize) {
        let fd = conn.fd();
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: ((slot as u64) << 32) | fd as u32 as u64,
        };
        // SAFETY: both descriptors are open (the connection is borrowed) and
        // `ev` is a valid event the kernel copies.
        let rc = unsafe { libc::epoll_ctl(self.set.raw(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc != 0 {
            // Without the registration the connection is still probed before
            // reuse; only a prompt close is lost.
            crate::log::rate_limited(format_args!(
                "idle watch: cannot register an upstream connection: {}",
                io::Error::last_os_error()
            ));
        }
    }

    /// Waits until some registered connection's server closed it.
    pub async fn wait(&self) -> io::Result<()> {
        self.set.readable().await
    }

    /// Takes the pending events (without blocking) and calls `closed` for each.
    pub fn drain(&self, mut closed: impl FnMut(Closed)) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
        loop {
            // SAFETY: `events` has room for BATCH entries; a zero timeout never blocks.
            let n =
                unsafe { libc::epoll_wait(self.set.raw(), events.as_mut_ptr(), BATCH as i32, 0) };
            if n <= 0 {
                return;
            }
            for ev in &events[..n as usize] {
                let data = ev.u64;
                closed(Closed {
                    slot: (data >> 32) as usize,
                    fd: data as u32 as RawFd,
                });
            }
            if (n as usize) < BATCH {
                return;
            }
        }
    }
}
