//! Every way a request can fail, where the failure came from, and - in one
//! place - which status the client sees for it.

use std::fmt;

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Client,
    Upstream,
    Internal,
}

/// Which overload limit turned a request or a connection away. Every one is
/// answered `503` with `Retry-After`, and its label names it in the body, the
/// log and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// The worker holds its share of `[limits] max_connections`.
    ConnLimit,
    /// The client address holds `max_connections_per_ip` in this worker.
    IpLimit,
    /// The pool has `max_in_flight` (or each server `max_in_flight_per_server`)
    /// requests in flight and no queue.
    InFlight,
    /// Over the limit and the queue is full.
    QueueFull,
    /// Waited `queue_timeout` in the queue.
    QueueTimeout,
    /// The adaptive concurrency limit, below the configured one, is reached.
    Adaptive,
    /// The worker's buffers are at its share of `max_memory_mb`.
    Memory,
}

impl Shed {
    pub const ALL: [Shed; 7] = [
        Shed::ConnLimit,
        Shed::IpLimit,
        Shed::InFlight,
        Shed::QueueFull,
        Shed::QueueTimeout,
        Shed::Adaptive,
        Shed::Memory,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Shed::ConnLimit => "conn_limit",
            Shed::IpLimit => "ip_limit",
            Shed::InFlight => "in_flight",
            Shed::QueueFull => "queue_full",
            Shed::QueueTimeout => "queue_timeout",
            Shed::Adaptive => "adaptive",
            Shed::Memory => "memory",
        }
    }

    /// Whether the client connection is closed after the answer (the
    /// connection itself is what is over the limit).
    pub fn closes_client(self) -> bool {
        matches!(self, Shed::ConnLimit | Shed::IpLimit | Shed::Memory)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// Malformed or ambiguous request (smuggling attempts included).
    BadRequest(&'static str),
    /// Request line longer than `max_request_line_bytes`.
    UriTooLong,
    /// Request head larger than `max_head_bytes`, or too many fields.
    HeadTooLarge(&'static str),
    /// A method or coding ringlb does not proxy.
    NotImplemented(&'static str),
    /// The client did not send a complete head in time.
    ClientHeadTimeout,
    /// The client paused inside its request body for longer than `body_timeout`.
    ClientBodyTimeout,
    /// The client stalled or vanished mid-request; nobody is left to answer.
    ClientGone,
    /// No route matched the request.
    NoRoute,
    /// No server of the pool can take the request.
    NoHealthyServer,
    /// Connecting to the upstream failed (refused, unreachable, reset).
    UpstreamConnect,
    UpstreamConnectTimeout,
    /// The upstream did not send a response head in time.
    UpstreamResponseTimeout,
    /// The upstream closed or reset before a complete response head.
    UpstreamClosed,
    /// The upstream sent something that is not a valid HTTP/1.x response.
    UpstreamBadResponse(&'static str),
    /// The upstream failed while the response body was being relayed.
    UpstreamBodyFailed,
    /// ringlb ran out of a local resource (descriptors, ephemeral ports,
    /// socket buffers) reaching an upstream: its own failure, not the server's.
    LocalResources(&'static str),
    /// Load shed by one of ringlb's limits (see `Shed`).
    Shed(Shed),
    Internal(&'static str),
}

impl ProxyError {
    /// The metrics reason when this error rejects a request before (or while)
    /// it is forwarded.
    pub fn rejection(self) -> Option<crate::metrics::Reject> {
        use crate::metrics::Reject;
        use ProxyError::*;
        Some(match self {
            BadRequest(_) => Reject::BadRequest,
            ClientHeadTimeout => Reject::HeadTimeout,
            ClientBodyTimeout => Reject::BodyTimeout,
            UriTooLong => Reject::UriTooLong,
            HeadTooLarge(_) => Reject::HeadTooLarge,
            NotImplemented(_) => Reject::NotImplemented,
            _ => return None,
        })
    }

    pub fn origin(self) -> Origin {
        use ProxyError::*;
        match self {
            BadRequest(_) | UriTooLong | HeadTooLarge(_) | NotImplemented(_)
            | ClientHeadTimeout | ClientBodyTimeout | ClientGone | NoRoute => Origin::Client,
            NoHealthyServer
            | UpstreamConnect
            | UpstreamConnectTimeout
            | UpstreamResponseTimeout
            | UpstreamClosed
            | UpstreamBadResponse(_)
            | UpstreamBodyFailed => Origin::Upstream,
            LocalResources(_) | Shed(_) | Internal(_) => Origin::Internal,
        }
    }

    /// The status the client is answered with; `None` means close silently.
    pub fn status(self) -> Option<u16> {
        use ProxyError::*;
        Some(match self {
            BadRequest(_) => 400,
            NoRoute => 404,
            ClientHeadTimeout | ClientBodyTimeout => 408,
            UriTooLong => 414,
            HeadTooLarge(_) => 431,
            Internal(_) => 500,
            NotImplemented(_) => 501,
            UpstreamConnect | UpstreamClosed | UpstreamBadResponse(_) => 502,
            NoHealthyServer | LocalResources(_) | Shed(_) => 503,
            UpstreamConnectTimeout | UpstreamResponseTimeout => 504,
            ClientGone | UpstreamBodyFailed => return None,
        })
    }

    /// Whether the client connection must be closed after answering.
    pub fn closes_client(self) -> bool {
        use ProxyError::*;
        if let Shed(why) = self {
            return why.closes_client();
        }
        !matches!(
            self,
            NoRoute
                | NoHealthyServer
                | LocalResources(_)
                | UpstreamConnect
                | UpstreamConnectTimeout
                | UpstreamResponseTimeout
                | UpstreamClosed
                | UpstreamBadResponse(_)
        )
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ProxyError::*;
        match self {
            BadRequest(why) => write!(f, "bad request: {why}"),
            UriTooLong => f.write_str("request line too long"),
            HeadTooLarge(why) => write!(f, "request head too large: {why}"),
            NotImplemented(why) => write!(f, "not implemented: {why}"),
            ClientHeadTimeout => f.write_str("client head timeout"),
            ClientBodyTimeout => f.write_str("client paused inside its request body"),
            ClientGone => f.write_str("client closed or stalled"),
            NoRoute => f.write_str("no route"),
            NoHealthyServer => f.write_str("no healthy server"),
            UpstreamConnect => f.write_str("upstream connect failed"),
            UpstreamConnectTimeout => f.write_str("upstream connect timeout"),
            UpstreamResponseTimeout => f.write_str("upstream response timeout"),
            UpstreamClosed => f.write_str("upstream closed before a complete response head"),
            UpstreamBadResponse(why) => write!(f, "invalid upstream response: {why}"),
            UpstreamBodyFailed => f.write_str("upstream failed during the response body"),
            LocalResources(why) => write!(f, "out of local resources: {why}"),
            Shed(why) => write!(f, "overloaded: {}", why.label()),
            Internal(why) => write!(f, "internal error: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table() {
        assert_eq!(ProxyError::BadRequest("x").status(), Some(400));
        assert_eq!(ProxyError::UpstreamConnect.status(), Some(502));
        assert_eq!(ProxyError::UpstreamResponseTimeout.status(), Some(504));
        assert_eq!(ProxyError::UpstreamConnectTimeout.status(), Some(504));
        assert_eq!(ProxyError::NoHealthyServer.status(), Some(503));
        assert_eq!(ProxyError::UpstreamBodyFailed.status(), None);
        assert_eq!(ProxyError::LocalResources("x").status(), Some(503));
        assert_eq!(ProxyError::LocalResources("x").origin(), Origin::Internal);
        assert_eq!(ProxyError::ClientBodyTimeout.status(), Some(408));
        assert!(ProxyError::ClientBodyTimeout.closes_client());
        assert!(ProxyError::BadRequest("x").closes_client());
        assert!(!ProxyError::UpstreamConnect.closes_client());
        assert_eq!(ProxyError::Shed(Shed::QueueTimeout).status(), Some(503));
        assert!(!ProxyError::Shed(Shed::InFlight).closes_client());
        assert!(ProxyError::Shed(Shed::ConnLimit).closes_client());
    }
}
