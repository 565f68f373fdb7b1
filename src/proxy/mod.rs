//! The hallway between `http` and `upstream`: one task per client connection
//! reads requests, routes them, and forwards each to an upstream connection.
//!
//! State machine of a client connection (`client::serve`):
//! idle (no buffer, readiness wait) -> reading head -> routed ->
//! { direct answer | forward: upstream write -> [body pump || response relay] }
//! -> back to idle if both sides allow keep-alive, else close.

mod admit;
pub mod body;
pub mod client;
pub mod conn_limit;
pub mod exchange;
pub mod observe;
mod response;
pub mod route;
pub mod shed_log;
pub mod tally;
pub mod tunnel;

use crate::buf::Buffer;
use crate::config::ClientSettings;
use crate::http::request::Limits;
use crate::upstream::idle_watch::IdleWatch;
use crate::upstream::pool::ConnPool;
use crate::upstream::Upstream;
use route::ListenerRoutes;
use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

/// Bytes kept free in front of a freshly read head, so the rewritten head (which
/// adds X-Forwarded-*, Via, ...) can be placed in front of the body bytes that
/// followed it and both go out in one write.
pub const HEADROOM: usize = 512;

/// Everything one worker's connection tasks share. Single-threaded: no locks.
pub struct WorkerCtx {
    /// Per listener id, its routes (they change with an in-place reload).
    pub routes: RefCell<Vec<ListenerRoutes>>,
    /// The metrics labels and slots of the roster in force.
    pub layout: RefCell<Arc<crate::metrics::Layout>>,
    /// The upstream pools of the roster this worker serves with (see
    /// `upstream::roster`): replaced whole when a new roster comes; a request
    /// holds the list it started with.
    pub(crate) upstreams: RefCell<Rc<Vec<Upstream>>>,
    /// Per member id, the server's address as the access log writes it.
    pub server_names: RefCell<Vec<Box<str>>>,
    pub pool: RefCell<ConnPool>,
    /// This worker's metrics cells (see `metrics`).
    pub metrics: Arc<crate::metrics::WorkerMetrics>,
    /// This worker's side of the access logs (None: no listener logs).
    pub access_log: Option<crate::access_log::WorkerLog>,
    /// Per listener id: its log file (index) and format, if it logs.
    pub log_sinks: RefCell<Vec<Option<(usize, crate::access_log::Format)>>>,
    /// Tells the pool when a server closes one of its connections (None if
    /// the epoll set could not be made: pooled connections are still probed).
    pub idle_watch: Option<IdleWatch>,
    /// Client timeouts and limits in force (they change with an in-place
    /// reload, between requests: read them through `client()` and `limits()`).
    pub client: Cell<ClientSettings>,
    /// Set when shutdown starts: answer in-flight requests, then close.
    pub draining: Cell<bool>,
    /// Requests being processed right now.
    pub busy: Cell<usize>,
    /// Requests started since the worker began (tells the housekeeping loop
    /// whether the worker has been quiet).
    pub started: Cell<u64>,
    /// Logs load shedding once per burst.
    pub shed_log: shed_log::ShedLog,
}

impl WorkerCtx {
    /// The client timeouts and limits for what happens now.
    #[inline]
    pub fn client(&self) -> ClientSettings {
        self.client.get()
    }

    /// The request head limits, from `client()`.
    #[inline]
    pub fn limits(&self) -> Limits {
        let c = self.client.get();
        Limits {
            max_head_bytes: c.max_head_bytes,
            max_request_line_bytes: c.max_request_line_bytes,
            underscores: c.headers_with_underscores,
        }
    }

    /// The upstream pools for a request starting now.
    #[inline]
    pub fn upstreams(&self) -> Rc<Vec<Upstream>> {
        self.upstreams.borrow().clone()
    }

    /// Serves new requests with `upstreams` from now on.
    pub fn replace_upstreams(&self, upstreams: Vec<Upstream>) -> Rc<Vec<Upstream>> {
        self.upstreams.replace(Rc::new(upstreams))
    }

    /// Whether `listener` writes an access log.
    #[inline]
    pub fn logs(&self, listener: usize) -> bool {
        self.log_sinks.borrow()[listener].is_some()
    }

    /// Whether `listener` is still in the configuration (else its
    /// connections close after their request).
    #[inline]
    pub fn listening(&self, listener: usize) -> bool {
        self.routes.borrow()[listener].open
    }

    pub fn busy_guard(&self) -> BusyGuard<'_> {
        self.busy.set(self.busy.get() + 1);
        self.started.set(self.started.get().wrapping_add(1));
        BusyGuard(&self.busy)
    }
}

pub struct BusyGuard<'a>(&'a Cell<usize>);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// The longest address text: eight full IPv6 groups. IPv4-mapped addresses
/// are shown as IPv4, so the dotted-quad tail forms never occur.
pub(crate) const MAX_IP_TEXT: usize = 39;

/// The client address pre-formatted once per connection for X-Forwarded-For.
/// It lives in every connection's task, idle ones included: sized to the
/// longest text and padded with zero bytes (which address text never holds)
/// instead of carrying a length, so the idle task stays at 248 bytes.
pub struct ClientIp {
    pub(crate) bytes: [u8; MAX_IP_TEXT],
}

impl ClientIp {
    pub fn new(ip: IpAddr) -> ClientIp {
        use std::io::Write;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let mut bytes = [0u8; MAX_IP_TEXT];
        let mut cursor = std::io::Cursor::new(&mut bytes[..]);
        let _ = write!(cursor, "{ip}");
        ClientIp { bytes }
    }

    pub fn as_bytes(&self) -> &[u8] {
        let len = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(MAX_IP_TEXT);
        &self.bytes[..len]
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("?")
    }
}

thread_local! {
    /// Scratch space for rewritten heads, reused by every request of the worker.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(2 * crate::buf::LARGE_SIZE));
}

/// Lets `f` parse `buf`'s data and write a rewritten head into the worker's
/// scratch vector; if it returns `Some(old_len)`, the scratch bytes then replace
/// the first `old_len` bytes of data (the original head), in place.
pub fn rewrite_head<T>(
    buf: &mut Buffer,
    f: impl FnOnce(&[u8], &mut Vec<u8>) -> (T, Option<usize>),
) -> T {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let (t, replace) = f(buf.data(), &mut s);
        if let Some(old_len) = replace {
            buf.replace_prefix(old_len, &s);
        }
        t
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ip_formats() {
        assert_eq!(
            ClientIp::new("10.0.0.1".parse().unwrap()).as_bytes(),
            b"10.0.0.1"
        );
        assert_eq!(
            ClientIp::new("::ffff:1.2.3.4".parse().unwrap()).as_bytes(),
            b"1.2.3.4"
        );
        assert_eq!(
            ClientIp::new("2001:db8::1".parse().unwrap()).as_bytes(),
            b"2001:db8::1"
        );
        let longest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        assert_eq!(longest.len(), MAX_IP_TEXT);
        assert_eq!(
            ClientIp::new(longest.parse().unwrap()).as_bytes(),
            longest.as_bytes()
        );
        // The forms Rust writes with a dotted tail are the mapped ones, which
        // are turned into IPv4 first; compatible addresses are written in hex.
        assert_eq!(
            ClientIp::new("::1.2.3.4".parse().unwrap()).as_bytes(),
            b"::102:304"
        );
    }
}
