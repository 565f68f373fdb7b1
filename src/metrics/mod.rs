//! Metrics that cost (almost) nothing on the request path.
//!
//! Design: every worker owns one `WorkerMetrics`, shared read-only (through an
//! `Arc`) with the admin thread. Each cell has exactly one writer, the worker
//! thread, which updates it with a relaxed load and a relaxed store (plain
//! moves on x86 and ARM: no lock prefix, no read-modify-write instruction, no
//! cache line bouncing between cores, since no other thread writes it). The
//! admin thread reads the cells with relaxed loads when `/metrics` is scraped
//! and sums the workers. A scrape may see one worker's counters a few
//! nanoseconds apart from another's; counters never go backwards.
//!
//! Every label set is known when the config is loaded (listeners, routes,
//! upstreams, servers, status classes, reasons), so every cell is allocated at
//! start in flat arrays indexed by small integers; recording a request
//! allocates nothing and takes no lock. `Layout` holds the label values and
//! the index arithmetic, `expose` writes the Prometheus text format.

pub mod expose;
pub mod layout;

pub use layout::{Layout, RouteSlot};

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// A monotonic counter written by one thread.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        // One writer: a load and a store, not an atomic read-modify-write.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge written by one thread.
#[derive(Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    #[inline]
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    #[inline]
    pub fn add(&self, by: i64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(by),
            Ordering::Relaxed,
        );
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds of the histogram buckets, in microseconds (0.5 ms to 10 s);
/// a last, unbounded bucket takes the rest.
pub const BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// A latency histogram with fixed buckets (stored per bucket, made cumulative
/// when exposed).
#[derive(Default)]
pub struct Histogram {
    buckets: [Counter; BUCKETS_US.len() + 1],
    sum_us: Counter,
}

impl Histogram {
    #[inline]
    pub fn observe_us(&self, us: u64) {
        let i = BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BUCKETS_US.len());
        self.buckets[i].inc();
        self.sum_us.add(us);
    }

    /// Cumulative counts per bucket (the last is the total) and the sum in µs.
    pub fn snapshot(&self) -> ([u64; BUCKETS_US.len() + 1], u64) {
        let mut out = [0u64; BUCKETS_US.len() + 1];
        let mut total = 0;
        for (o, b) in out.iter_mut().zip(&self.buckets) {
            total += b.get();
            *o = total;
        }
        (out, self.sum_us.get())
    }
}

/// Status classes `1xx` to `5xx`; index 0 counts answers that never got a
/// status (the client or the upstream went away first).
pub const CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

#[inline]
pub fn class_of(status: u16) -> usize {
    match status {
        100..=599 => (status / 100) as usize,
        _ => 0,
    }
}

/// Why a request was rejected before it was routed or forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    BadRequest,
    HeadTimeout,
    BodyTimeout,
    UriTooLong,
    HeadTooLarge,
    NotImplemented,
}

impl Reject {
    pub const ALL: [Reject; 6] = [
        Reject::BadRequest,
        Reject::HeadTimeout,
        Reject::BodyTimeout,
        Reject::UriTooLong,
        Reject::HeadTooLarge,
        Reject::NotImplemented,
    ];

    pub fn label(self) -> (&'static str, &'static str) {
        match self {
            Reject::BadRequest => ("400", "bad_request"),
            Reject::HeadTimeout => ("408", "head_timeout"),
            Reject::BodyTimeout => ("408", "body_timeout"),
            Reject::UriTooLong => ("414", "uri_too_long"),
            Reject::HeadTooLarge => ("431", "head_too_large"),
            Reject::NotImplemented => ("501", "not_implemented"),
        }
    }
}

/// How a connect to a server failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    Refused,
    Timeout,
    /// ringlb's own limit (descriptors, ports, buffers).
    Local,
    Other,
}

impl ConnectFailure {
    pub const ALL: [ConnectFailure; 4] = [
        ConnectFailure::Refused,
        ConnectFailure::Timeout,
        ConnectFailure::Local,
        ConnectFailure::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ConnectFailure::Refused => "refused",
            ConnectFailure::Timeout => "timeout",
            ConnectFailure::Local => "local",
            ConnectFailure::Other => "other",
        }
    }
}

/// One server's cells in one worker.
#[derive(Default)]
pub struct ServerMetrics {
    pub connections_created: Counter,
    pub connections_reused: Counter,
    pub connections_open: Gauge,
    pub connections_idle: Gauge,
    pub connect_failures: [Counter; 4],
    pub response_timeouts: Counter,
    pub retries: Counter,
    pub ejections: Counter,
    pub in_flight: Gauge,
}

/// One worker's cells (see the module doc).
pub struct WorkerMetrics {
    /// Per route slot, per status class.
    pub requests: Box<[[Counter; CLASSES.len()]]>,
    /// Per listener: bytes received from and sent to clients.
    pub client_bytes_in: Box<[Counter]>,
    pub client_bytes_out: Box<[Counter]>,
    /// Per upstream: request duration (head read to answer sent) and the
    /// response head's latency (request sent to head received).
    pub duration: Box<[Histogram]>,
    pub head_latency: Box<[Histogram]>,
    /// Per upstream: bytes sent to and received from its servers.
    pub upstream_bytes_out: Box<[Counter]>,
    pub upstream_bytes_in: Box<[Counter]>,
    /// Per server (pool slot order).
    pub servers: Box<[ServerMetrics]>,
    pub rejected: [Counter; Reject::ALL.len()],
    /// Requests and connections shed, by reason (`error::Shed`).
    pub shed: [Counter; crate::error::Shed::ALL.len()],
    /// Per upstream: the admission limit in force in this worker
    /// (`u32::MAX` when unlimited) and the requests queued, as of the last
    /// housekeeping tick.
    pub admission_limit: Box<[Gauge]>,
    pub queued: Box<[Gauge]>,
    /// Per upstream: requests that waited in the queue and then went on.
    pub waited: Box<[Counter]>,
    pub connections_accepted: Counter,
    pub connections_closed: Counter,
    /// Access log lines dropped because the log writer fell behind.
    pub access_log_dropped: Counter,
}

impl WorkerMetrics {
    /// Cells for `layout` (its route cells, listeners, upstreams and server
    /// cells: the counts stay for the life of the process).
    pub fn new(layout: &Layout) -> WorkerMetrics {
        fn cells<T: Default>(n: usize) -> Box<[T]> {
            (0..n).map(|_| T::default()).collect()
        }
        WorkerMetrics {
            // One more than the slots: see `Layout::unlisted_slot`.
            requests: (0..=layout.route_slots())
                .map(|_| Default::default())
                .collect(),
            client_bytes_in: cells(layout.listeners.len()),
            client_bytes_out: cells(layout.listeners.len()),
            duration: cells(layout.upstreams.len()),
            head_latency: cells(layout.upstreams.len()),
            upstream_bytes_out: cells(layout.upstreams.len()),
            upstream_bytes_in: cells(layout.upstreams.len()),
            servers: cells(layout.server_count()),
            rejected: Default::default(),
            shed: Default::default(),
            admission_limit: cells(layout.upstreams.len()),
            queued: cells(layout.upstreams.len()),
            waited: cells(layout.upstreams.len()),
            connections_accepted: Counter::default(),
            connections_closed: Counter::default(),
            access_log_dropped: Counter::default(),
        }
    }

    pub fn reject(&self, r: Reject) {
        self.rejected[r as usize].inc();
    }

    pub fn shed(&self, why: crate::error::Shed) {
        self.shed[why as usize].inc();
    }

    pub fn connect_failed(&self, server: usize, why: ConnectFailure) {
        self.servers[server].connect_failures[why as usize].inc();
    }
}

/// Every worker's metrics, for the admin thread.
pub struct Registry {
    pub workers: Vec<Arc<WorkerMetrics>>,
    /// The io driver the workers run ("io_uring", "epoll"), for build info.
    pub driver: std::sync::OnceLock<&'static str>,
    pub started: std::time::SystemTime,
}

thread_local! {
    /// This worker's metrics, for code with no `WorkerCtx` at hand (a
    /// connection's end, an upstream connection's drop).
    static CURRENT: Cell<Option<&'static WorkerMetrics>> = const { Cell::new(None) };
}

/// Makes `m` this thread's metrics (a worker calls it once at start). The
/// `Arc` is kept for the rest of the process (one per worker thread).
pub fn set_current(m: Arc<WorkerMetrics>) {
    let leaked: &'static WorkerMetrics = Box::leak(Box::new(m));
    CURRENT.with(|c| c.set(Some(leaked)));
}

/// This thread's metrics, if it is a worker.
#[inline]
pub fn current() -> Option<&'static WorkerMetrics> {
    CURRENT.try_with(|c| c.get()).ok().flatten()
}

/// Counts an accepted client connection; the returned guard counts its close
/// when dropped (also when a panic ends the connection). Zero-sized: it adds
/// nothing to an idle connection's task.
pub fn connection_opened() -> ConnectionGuard {
    if let Some(m) = current() {
        m.connections_accepted.inc();
    }
    ConnectionGuard
}

pub struct ConnectionGuard;

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(m) = current() {
            m.connections_closed.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        for us in [100, 500, 501, 2_000_000, 60_000_000] {
            h.observe_us(us);
        }
        let (buckets, sum) = h.snapshot();
        assert_eq!(buckets[0], 2, "<= 0.5 ms");
        assert_eq!(buckets[1], 3, "<= 1 ms");
        assert_eq!(buckets[BUCKETS_US.len() - 3], 4, "<= 2.5 s");
        assert_eq!(buckets[BUCKETS_US.len()], 5, "+Inf");
        assert_eq!(sum, 100 + 500 + 501 + 2_000_000 + 60_000_000);
    }

    #[test]
    fn classes() {
        assert_eq!(CLASSES[class_of(204)], "2xx");
        assert_eq!(CLASSES[class_of(503)], "5xx");
        assert_eq!(CLASSES[class_of(0)], "none");
    }
}
