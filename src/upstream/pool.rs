//! Per-worker pool of idle upstream connections, one LIFO stack per server.
//!
//! A pooled connection is only ever handed out clean: every checkout probes it
//! (`Conn::probably_alive`, one non-blocking peek), and one that holds any byte
//! (a backend answering twice, a `408` sent on an idle connection) or whose
//! server closed it is dropped, never parsed as the next request's response.
//! Connections whose server closes them while they sit idle are dropped at once
//! (`peer_closed`, fed by `idle_watch`) instead of lingering half-open.
//! Connections older than the idle timeout are dropped on checkout and by a
//! periodic sweep, so ringlb closes them before typical backends do.

use super::idle_watch::Closed;
use crate::deadline::now_ms;
use crate::io::Conn;
use std::time::Duration;

struct Idle {
    conn: Conn,
    /// Coarse clock (`deadline::now_ms`) at check-in.
    since_ms: u64,
}

struct Slot {
    idle: Vec<Idle>,
    max_idle: usize,
    idle_timeout_ms: u64,
}

/// Most closes of busy connections remembered between sweeps.
const MAX_CLOSED_WHILE_BUSY: usize = 256;

#[derive(Default)]
pub struct ConnPool {
    slots: Vec<Slot>,
    /// Connections whose server closed them while a request used them: not
    /// taken back (the close raised its one event while they were busy).
    closed_while_busy: Vec<Closed>,
}

impl ConnPool {
    /// Adds a slot for one server; returns its index.
    pub fn add_slot(&mut self, max_idle: usize, idle_timeout: Duration) -> usize {
        self.slots.push(Slot {
            idle: Vec::with_capacity(max_idle.min(1024)),
            max_idle,
            idle_timeout_ms: idle_timeout.as_millis() as u64,
        });
        self.slots.len() - 1
    }

    /// The most recently used idle connection that is still fresh and clean.
    pub fn checkout(&mut self, slot: usize) -> Option<Conn> {
        let s = &mut self.slots[slot];
        let now = now_ms();
        while let Some(idle) = s.idle.pop() {
            if now.saturating_sub(idle.since_ms) < s.idle_timeout_ms && idle.conn.probably_alive() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Returns a reusable connection (dropped if the slot is full, or if its
    /// server closed it while it was busy).
    pub fn checkin(&mut self, slot: usize, conn: Conn) {
        if !self.closed_while_busy.is_empty() {
            let key = Closed {
                slot,
                fd: conn.fd(),
            };
            if let Some(i) = self.closed_while_busy.iter().position(|c| *c == key) {
                self.closed_while_busy.swap_remove(i);
                // The event may belong to an earlier connection on the same
                // descriptor: the probe decides.
                if !conn.probably_alive() {
                    return;
                }
            }
        }
        let s = &mut self.slots[slot];
        if s.idle.len() < s.max_idle {
            s.idle.push(Idle {
                conn,
                since_ms: now_ms(),
            });
        }
    }

    /// The server closed the connection `closed` names: drops it if it is idle,
    /// else remembers it so that it is not taken back after its request.
    pub fn peer_closed(&mut self, closed: Closed) {
        let Some(s) = self.slots.get_mut(closed.slot) else {
            return;
        };
        if let Some(i) = s.idle.iter().position(|i| i.conn.fd() == closed.fd) {
            s.idle.remove(i);
        } else if self.closed_while_busy.len() < MAX_CLOSED_WHILE_BUSY {
            self.closed_while_busy.push(closed);
        }
    }

    /// Drops connections idle for longer than their timeout.
    pub fn sweep(&mut self) {
        let now = now_ms();
        for s in &mut self.slots {
            // LIFO: the oldest are at the front.
            let stale = s
                .idle
                .iter()
                .take_while(|i| now.saturating_sub(i.since_ms) >= s.idle_timeout_ms)
                .count();
            if stale > 0 {
                s.idle.drain(..stale);
            }
        }
        // Busy connections that were closed have come back or gone by now.
        self.closed_while_busy.clear();
    }

    /// Drops every idle connection (shutdown).
    pub fn clear(&mut self) {
        for s in &mut self.slots {
            s.idle.clear();
        }
    }

    pub fn idle_count(&self, slot: usize) -> usize {
        self.slots[slot].idle.len()
    }
}
