//! Per-worker pool of idle upstream connections, one LIFO stack per server.
//! Connections older than the idle timeout are dropped on checkout and by a
//! periodic sweep, so ringlb closes them before typical backends do.

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

#[derive(Default)]
pub struct ConnPool {
    slots: Vec<Slot>,
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

    /// The most recently used idle connection that is still fresh.
    pub fn checkout(&mut self, slot: usize) -> Option<Conn> {
        let s = &mut self.slots[slot];
        let now = now_ms();
        while let Some(idle) = s.idle.pop() {
            if now.saturating_sub(idle.since_ms) < s.idle_timeout_ms {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Returns a reusable connection (dropped if the slot is full).
    pub fn checkin(&mut self, slot: usize, conn: Conn) {
        let s = &mut self.slots[slot];
        if s.idle.len() < s.max_idle {
            s.idle.push(Idle {
                conn,
                since_ms: now_ms(),
            });
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
