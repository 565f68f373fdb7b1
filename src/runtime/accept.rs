//! A worker's accept loop: takes connections off its listening sockets, admits
//! them under the connection caps (or refuses them within the refusal budget),
//! and on a drain serves what is still queued (see `take_queued`). Also the
//! set of a worker's accept loops, which listeners open and close in place.

use crate::proxy::{client, conn_limit, ClientIp, WorkerCtx};
use monoio::io::Canceller;
use monoio::net::TcpListener;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

/// How an accept loop is told to stop: the cancel handle wakes its accept,
/// and `closed` says the listener left the configuration (as opposed to a
/// drain).
pub(super) struct Stop {
    pub cancel: monoio::io::CancelHandle,
    pub closed: Rc<std::cell::Cell<bool>>,
}

pub(super) async fn accept_loop(ctx: Rc<WorkerCtx>, idx: usize, listener: TcpListener, stop: Stop) {
    loop {
        // At the cap, with `at_connection_cap = "pause"` or this window's
        // refusals spent: leave new connections in the kernel's backlog
        // until one of ours closes (or the next window).
        while conn_limit::paused(crate::deadline::now_ms()) {
            if ctx.draining.get() {
                return;
            }
            if stop.closed.get() {
                break; // to the cancelled accept below, which ends it
            }
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
        match listener.cancelable_accept(stop.cancel.clone()).await {
            Ok((stream, peer)) => accepted(&ctx, idx, stream, peer),
            Err(_) if ctx.draining.get() => {
                take_queued(&ctx, idx, &listener);
                return;
            }
            Err(_) if stop.closed.get() => {
                // Removed by a reload: answer what is queued, then out of
                // the listening tables (the port is free again).
                take_queued(&ctx, idx, &listener);
                super::listener::stop_listening(std::os::fd::AsRawFd::as_raw_fd(&listener));
                return;
            }
            Err(e) => {
                crate::log::rate_limited(format_args!("accept failed: {e}"));
                // EMFILE / ENFILE / ENOBUFS: back off instead of spinning.
                monoio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Starts serving an accepted connection, or refuses it over a cap.
fn accepted(ctx: &Rc<WorkerCtx>, idx: usize, stream: monoio::net::TcpStream, peer: SocketAddr) {
    match conn_limit::admit(ClientIp::new(peer.ip())) {
        Ok(slot) => {
            // A panic ends this connection only (see `contain`).
            let serve = client::serve(ctx.clone(), idx, stream, slot);
            monoio::spawn(crate::contain::CatchUnwind::new(serve));
        }
        Err(why) => {
            ctx.metrics.shed(why);
            let layout = ctx.layout.borrow();
            let listener = layout.listeners.get(idx).map_or("?", String::as_str);
            ctx.shed_log.shed(why, format_args!("listener {listener}"));
            if conn_limit::take_refusal(crate::deadline::now_ms()) {
                let refuse = conn_limit::refuse(stream, why, ctx.client().write_timeout);
                monoio::spawn(crate::contain::CatchUnwind::new(refuse));
            } // else: past the refusal budget, closed unanswered
        }
    }
}

/// After this worker's accept was cancelled for a drain: serves what is left
/// in the socket's queue. On a socket shared with a successor (`handover`)
/// this matters: the kernel wakes one waiter per new connection, and a
/// wakeup that went to our accept just before it was cancelled would leave
/// that connection queued with the successor never told (seen: a client
/// waiting until the next connection arrived). After a plain drain the
/// socket is shut down and this finds nothing.
fn take_queued(ctx: &Rc<WorkerCtx>, idx: usize, listener: &TcpListener) {
    sweep(ctx, idx, std::os::fd::AsRawFd::as_raw_fd(listener));
}

/// Accepts (without waiting) whatever is queued on listening socket `fd` of
/// listener `idx`.
pub(super) fn sweep(ctx: &Rc<WorkerCtx>, idx: usize, listening: std::os::fd::RawFd) {
    use std::os::fd::FromRawFd;
    loop {
        // SAFETY: accept4 on a listening socket this worker holds open; a
        // returned descriptor is new and owned by the TcpStream built from
        // it at once.
        let fd = unsafe {
            libc::accept4(
                listening,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return;
        }
        // SAFETY: `fd` is a connected socket we now own (see above).
        let std_stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
        let Ok(peer) = std_stream.peer_addr() else {
            continue;
        };
        if let Ok(stream) = monoio::net::TcpStream::from_std(std_stream) {
            accepted(ctx, idx, stream, peer);
        }
    }
}

/// A worker's accept loops, by listener id.
#[derive(Default)]
pub(super) struct Accepting {
    pub(super) loops: std::collections::HashMap<usize, (Canceller, std::os::fd::RawFd, Stop)>,
    /// Accept loops still running (closed or cancelled ones included, until
    /// their cancelled accept has completed).
    running: Rc<std::cell::Cell<usize>>,
}

impl Accepting {
    /// Starts accepting on listener `id`.
    pub(super) fn open(
        &mut self,
        ctx: &Rc<WorkerCtx>,
        id: usize,
        socket: std::net::TcpListener,
    ) -> std::io::Result<()> {
        let listener = TcpListener::from_std(socket)?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let canceller = Canceller::new();
        let stop = Stop {
            cancel: canceller.handle(),
            closed: Rc::default(),
        };
        let closed = stop.closed.clone();
        let running = self.running.clone();
        running.set(running.get() + 1);
        let ctx = ctx.clone();
        monoio::spawn(async move {
            accept_loop(ctx, id, listener, stop).await;
            running.set(running.get() - 1);
        });
        let mine = Stop {
            cancel: canceller.handle(),
            closed,
        };
        self.loops.insert(id, (canceller, fd, mine));
        Ok(())
    }

    /// Whether an accept loop still runs: a drain waits for them all, since
    /// a cancelled accept may still complete with a connection (which the
    /// loop then serves); exiting first would drop it unanswered (seen: a
    /// client reset right after a handover).
    pub(super) fn running(&self) -> bool {
        self.running.get() > 0
    }

    /// Stops accepting on listener `id`, which left the configuration (its
    /// loop answers what is queued, then closes the socket).
    pub(super) fn close(&mut self, id: usize) {
        if let Some((canceller, _, stop)) = self.loops.remove(&id) {
            stop.closed.set(true);
            canceller.cancel();
        }
    }

    /// Accepts what waits in this worker's queues without a wakeup having
    /// reached its accept (each tick). The kernel wakes one waiter per new
    /// connection; on a socket shared with a process that is handing over,
    /// that waiter can be an accept being cancelled, and the connection
    /// would sit until the next one arrived (seen: 5 in 30 lone connections
    /// right after a handover waited more than 10 s).
    pub(super) fn sweep(&self, ctx: &Rc<WorkerCtx>) {
        if conn_limit::paused(crate::deadline::now_ms()) {
            return;
        }
        for (&id, (_, fd, stop)) in &self.loops {
            if !stop.closed.get() {
                sweep(ctx, id, *fd);
            }
        }
    }

    pub(super) fn apply(&mut self, ctx: &Rc<WorkerCtx>, changes: Vec<super::swap::Relisten>) {
        for change in changes {
            match change {
                super::swap::Relisten::Open(id, socket) => {
                    if let Err(e) = self.open(ctx, id, socket) {
                        crate::warn!("listener {id}: cannot accept: {e}");
                    }
                }
                super::swap::Relisten::Close(id) => self.close(id),
            }
        }
    }
}
