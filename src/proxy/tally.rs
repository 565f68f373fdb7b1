//! What one request met and moved, filled in as it goes and recorded once it
//! ends: into the worker's metrics (and the access log). Lives in the
//! request's pooled future; cells, because the request and response relays
//! of one exchange count side by side.

use crate::access_log::Capture;
use crate::error::ProxyError;
use crate::metrics::{class_of, RouteSlot, WorkerMetrics};
use std::cell::Cell;
use std::time::Instant;

/// No response-head latency was measured.
const NO_LATENCY: u32 = u32::MAX;

pub struct Tally {
    pub started: Instant,
    pub listener: u16,
    /// The route slot (the listener's unrouted slot until routed).
    pub slot: Cell<RouteSlot>,
    pub upstream: Cell<Option<u16>>,
    /// The last server tried (its pool slot).
    pub server: Cell<Option<u16>>,
    /// The final status sent to the client (0: none).
    pub status: Cell<u16>,
    pub retries: Cell<u8>,
    /// The request head as received.
    pub head_in: Cell<u64>,
    /// Request body bytes forwarded upstream with the head.
    pub body_forwarded: Cell<u64>,
    /// Bytes from the client streamed upstream after that (the rest of the
    /// body, or a tunnel's client side).
    pub pumped: Cell<u64>,
    /// Bytes sent to the client.
    pub client_out: Cell<u64>,
    /// Bytes written to upstream servers (every attempt).
    pub upstream_out: Cell<u64>,
    /// Bytes read from upstream servers.
    pub upstream_in: Cell<u64>,
    /// From the request sent to the response head received, in µs.
    head_latency_us: Cell<u32>,
    /// Why the request failed or was rejected, if it was.
    pub failed: Cell<Option<ProxyError>>,
    /// The head's fields for the access log, when the listener logs.
    pub capture: Option<Capture>,
}

impl Tally {
    pub fn new(listener: usize, unrouted: RouteSlot) -> Tally {
        Tally {
            started: Instant::now(),
            listener: listener as u16,
            slot: Cell::new(unrouted),
            upstream: Cell::new(None),
            server: Cell::new(None),
            status: Cell::new(0),
            retries: Cell::new(0),
            head_in: Cell::new(0),
            body_forwarded: Cell::new(0),
            pumped: Cell::new(0),
            client_out: Cell::new(0),
            upstream_out: Cell::new(0),
            upstream_in: Cell::new(0),
            head_latency_us: Cell::new(NO_LATENCY),
            failed: Cell::new(None),
            capture: None,
        }
    }

    /// Counts `n` more bytes in `cell`.
    #[inline]
    pub fn add(cell: &Cell<u64>, n: usize) {
        cell.set(cell.get() + n as u64);
    }

    /// A static answer of `bytes` with `status` went to the client.
    pub fn answered(&self, status: u16, bytes: usize) {
        self.status.set(status);
        Tally::add(&self.client_out, bytes);
    }

    pub fn set_head_latency(&self, since: Instant) {
        let us = since.elapsed().as_micros().min(u128::from(NO_LATENCY - 1));
        self.head_latency_us.set(us as u32);
    }

    pub fn head_latency_us(&self) -> Option<u64> {
        let us = self.head_latency_us.get();
        (us != NO_LATENCY).then_some(u64::from(us))
    }

    /// The request as the client sent it: its head and its body.
    pub fn request_bytes(&self) -> u64 {
        self.head_in.get() + self.body_forwarded.get() + self.pumped.get()
    }

    /// Records the finished request, `duration_us` long, into `m`.
    pub fn record(&self, m: &WorkerMetrics, duration_us: u64) {
        let slot = self.slot.get() as usize;
        m.requests[slot][class_of(self.status.get())].inc();
        let listener = self.listener as usize;
        m.client_bytes_in[listener].add(self.request_bytes());
        m.client_bytes_out[listener].add(self.client_out.get());
        match self.failed.get() {
            Some(ProxyError::Shed(why)) => m.shed(why),
            Some(e) => {
                if let Some(r) = e.rejection() {
                    m.reject(r);
                }
            }
            None => {}
        }
        if let Some(u) = self.upstream.get() {
            let u = u as usize;
            m.duration[u].observe_us(duration_us);
            if let Some(us) = self.head_latency_us() {
                m.head_latency[u].observe_us(us);
            }
            m.upstream_bytes_out[u].add(self.upstream_out.get() + self.pumped.get());
            m.upstream_bytes_in[u].add(self.upstream_in.get());
        }
    }
}
