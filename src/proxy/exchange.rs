//! Forwarding one request to an upstream and relaying its response.
//!
//! The request head and any body bytes already read go out in one write. A
//! request without a remaining body keeps its bytes in the client buffer until
//! the response starts, so a pooled connection that turns out dead (the
//! keep-alive race) is retried once on a fresh connection. A request with a body
//! still to come runs the body pump and the response relay side by side, so
//! `Expect: 100-continue` and early responses never deadlock.

use super::body::{self, BodyState, Pipe, RelayError};
use super::response::{relay_response, Progress, ResponseDone};
use super::route::RouteAction;
use super::tally::Tally;
use super::WorkerCtx;
use crate::buf::Buffer;
use crate::error::{Origin, ProxyError};
use crate::http::request::Method;
use crate::http::Framing;
use crate::io::{self, Conn, ConnectError};
use crate::metrics::ConnectFailure;
use crate::pooled::Pooled;
use crate::upstream::pool::UpstreamConn;
use crate::upstream::{Outcome, Server, Upstream};
use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;
use std::time::Instant;

/// What the client connection learned from its request head.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub action: RouteAction,
    /// The metrics route slot the request counts in.
    pub slot: crate::metrics::RouteSlot,
    /// Length of the head as the client sent it.
    pub received_head_len: usize,
    /// Length of the head at the front of the client buffer (rewritten when proxied).
    pub head_len: usize,
    pub framing: Framing,
    pub method: Method,
    pub keep_alive: bool,
    pub minor_version: u8,
    /// The request asks to switch protocols (tunnel if the upstream answers 101).
    pub upgrade: bool,
    /// Consistent-hashing key (Maglev pools only).
    pub hash_key: u64,
}

/// A request that failed; `response_started` means the client already has part
/// of a response and must simply be closed.
#[derive(Debug, Clone, Copy)]
pub struct Failure {
    pub error: ProxyError,
    pub response_started: bool,
    /// Whether the client connection is still in a clean state for keep-alive.
    pub client_reusable: bool,
}

impl Failure {
    fn before_response(error: ProxyError, client_reusable: bool) -> Failure {
        Failure {
            error,
            response_started: false,
            client_reusable,
        }
    }
}

/// What of the request has reached a server so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Not a byte: any request may be sent elsewhere.
    Nothing,
    /// The request went out (perhaps in part): only a resendable one may be
    /// sent again.
    Request,
}

/// How one attempt on one server ended.
enum Attempt {
    /// Final: the request is answered (or failed for good) on this server.
    Done(Result<bool, Failure>, Outcome),
    /// The server failed before any response byte; another server may take the
    /// request, as far as `sent` and the retry budget allow.
    Elsewhere {
        error: ProxyError,
        sent: Sent,
        outcome: Outcome,
    },
}

/// What `attempt` needs to know about the request bytes at the front of `inbuf`.
#[derive(Clone, Copy)]
struct Outbound {
    /// Head plus the body bytes already read.
    initial: usize,
    /// The whole body is among them.
    body_done: bool,
    /// They may be sent again (idempotent, or allowed by config).
    resendable: bool,
}

/// Forwards the request at the front of `inbuf`. Returns whether the client
/// connection may serve another request.
///
/// Retries: a server that fails before any response byte reached the client is
/// left for another (never the same one twice for a request) when nothing of
/// the request reached it, or when the request is resendable; each such retry
/// needs one of the pool's `retries` and a token of its retry budget
/// (`upstream::retry`). A pooled connection found dead (the keep-alive race)
/// is replaced by a fresh one to the same server first: that is not a retry.
pub async fn forward(
    ctx: &WorkerCtx,
    upstream_idx: usize,
    client: &mut Conn,
    inbuf: &mut Buffer,
    req: &Prepared,
    tally: &Tally,
) -> Result<bool, Failure> {
    let upstreams = ctx.upstreams();
    let upstream = &upstreams[upstream_idx];
    tally.upstream.set(Some(upstream_idx as u16));
    let mut body = BodyState::request(req.framing, ctx.client().max_chunk_bytes);
    let (initial_body, body_done) = body
        .frame(inbuf, req.head_len)
        .map_err(|e| Failure::before_response(ProxyError::BadRequest(e.reason()), false))?;
    Tally::add(&tally.body_forwarded, initial_body);
    let out = Outbound {
        initial: req.head_len + initial_body,
        body_done,
        // A request whose bytes all sit in `inbuf` can be sent again: on a fresh
        // connection after the keep-alive race, or to another server.
        resendable: body_done && (req.method.is_idempotent() || upstream.retry_non_idempotent),
    };
    let permit = match super::admit::admit(ctx, upstream, client).await {
        Ok(p) => p,
        Err(error) => {
            if let ProxyError::Shed(why) = error {
                ctx.shed_log
                    .shed(why, format_args!("upstream {}", upstream.name));
            }
            inbuf.consume(out.initial);
            let reusable = body_done && error != ProxyError::ClientGone;
            return Err(Failure::before_response(error, reusable));
        }
    };
    let result = forward_admitted(ctx, upstream, client, inbuf, req, tally, out, body).await;
    match (tally.head_latency_us(), &result) {
        (Some(us), _) => permit.latency(us),
        (None, Err(f)) if f.error == ProxyError::UpstreamResponseTimeout => {
            permit.latency(upstream.response_timeout.as_micros() as u64)
        }
        _ => {}
    }
    result
}

/// `forward` once the request holds a permit.
#[allow(clippy::too_many_arguments)]
async fn forward_admitted(
    ctx: &WorkerCtx,
    upstream: &Upstream,
    client: &mut Conn,
    inbuf: &mut Buffer,
    req: &Prepared,
    tally: &Tally,
    out: Outbound,
    mut body: BodyState,
) -> Result<bool, Failure> {
    upstream.note_request();
    let mut tried = 0u64;
    let mut retries_left = upstream.retries;
    let mut last_error = upstream.no_server_reason();
    loop {
        let Some(si) = upstream.pick(req.hash_key, tried) else {
            if let ProxyError::Shed(why) = last_error {
                ctx.shed_log
                    .shed(why, format_args!("upstream {}", upstream.name));
            }
            inbuf.consume(out.initial);
            return Err(Failure::before_response(last_error, out.body_done));
        };
        if si < 64 {
            tried |= 1 << si;
        }
        let server = &upstream.servers[si];
        let cells = &ctx.metrics.servers[server.member.id];
        tally.server.set(Some(server.member.id as u16));
        upstream.start(si);
        cells.in_flight.add(1);
        let started_at = upstream.latency_clock();
        let leg = Leg {
            ctx,
            upstream,
            server,
            req,
            tally,
        };
        let attempt = attempt(leg, client, inbuf, out, &mut body).await;
        cells.in_flight.add(-1);
        match attempt {
            Attempt::Done(result, outcome) => {
                if upstream.finish(si, outcome, started_at) {
                    cells.ejections.inc();
                }
                if let Err(f) = &result {
                    if f.error == ProxyError::UpstreamResponseTimeout {
                        cells.response_timeouts.inc();
                    }
                    if outcome == Outcome::Failure {
                        note_upstream(upstream, server, f.error);
                    }
                }
                return result;
            }
            Attempt::Elsewhere {
                error,
                sent,
                outcome,
            } => {
                if upstream.finish(si, outcome, started_at) {
                    cells.ejections.inc();
                }
                let may_retry = (sent == Sent::Nothing || out.resendable)
                    && retries_left > 0
                    && upstream.try_retry();
                if !may_retry {
                    note_upstream(upstream, server, error);
                    inbuf.consume(out.initial);
                    return Err(Failure::before_response(error, out.body_done));
                }
                cells.retries.inc();
                tally.retries.set(tally.retries.get().saturating_add(1));
                retries_left -= 1;
                last_error = error;
            }
        }
    }
}

/// What stays fixed while one request is tried on one server.
#[derive(Clone, Copy)]
struct Leg<'a> {
    ctx: &'a WorkerCtx,
    upstream: &'a Upstream,
    server: &'a Server,
    req: &'a Prepared,
    tally: &'a Tally,
}

/// Sends the request to one server and relays its answer.
async fn attempt(
    leg: Leg<'_>,
    client: &mut Conn,
    inbuf: &mut Buffer,
    out: Outbound,
    body: &mut BodyState,
) -> Attempt {
    let Leg {
        ctx,
        upstream,
        server,
        req,
        tally,
    } = leg;
    let write_timeout = ctx.client().write_timeout;
    // After the keep-alive race (a pooled connection found dead before any
    // response byte), the same server once more on a fresh connection.
    let mut fresh_only = false;
    let mut sent = Sent::Nothing;
    loop {
        let (mut up, reused) = match upstream_conn(ctx, upstream, server, fresh_only).await {
            Ok(c) => c,
            Err(ConnFailure::Local(error)) => {
                inbuf.consume(out.initial);
                let failure = Failure::before_response(error, out.body_done);
                return Attempt::Done(Err(failure), Outcome::Neutral);
            }
            Err(ConnFailure::Server(error, outcome)) => {
                return Attempt::Elsewhere {
                    error,
                    sent,
                    outcome,
                }
            }
        };
        let race_possible = reused && out.resendable;
        if up
            .writer
            .write_front_keep(inbuf, out.initial, write_timeout)
            .await
            .is_err()
        {
            if race_possible {
                fresh_only = true;
                continue;
            }
            return Attempt::Elsewhere {
                error: ProxyError::UpstreamConnect,
                sent: Sent::Request,
                outcome: Outcome::Failure,
            };
        }
        sent = Sent::Request;
        Tally::add(&tally.upstream_out, out.initial);
        if !out.body_done {
            inbuf.consume(out.initial);
            // Two relays side by side: the largest state of a request, kept
            // out of line in its own pooled block (the request's block stays small).
            let streaming = Pooled::new(forward_streaming(leg, client, inbuf, up, body));
            let result = streaming.await;
            let outcome = outcome_of(&result);
            return Attempt::Done(result.map(|(keep, _)| keep), outcome);
        }
        let progress = Progress::new(tally, Some(Instant::now()), race_possible);
        let result = relay_response(
            ctx,
            upstream,
            &mut up.reader,
            &mut client.writer,
            req,
            &progress,
        )
        .await;
        match result {
            Err(f) if f.silent && race_possible => {
                // The keep-alive race: the pooled connection died idle, or held
                // something that was never a response to this request.
                fresh_only = true;
            }
            Err(f) if f.silent && !f.started => {
                // A connection just opened that failed before answering: this
                // server is failing for this request.
                return Attempt::Elsewhere {
                    error: f.error,
                    sent,
                    outcome: Outcome::Failure,
                };
            }
            Ok(ResponseDone {
                tunnel: Some(mut pending),
                ..
            }) => {
                inbuf.consume(out.initial);
                let idle = ctx.client().tunnel_idle_timeout;
                // Out of line for the same reason.
                let tunnel = Pooled::new(super::tunnel::run(
                    client,
                    &mut up,
                    (inbuf, &mut pending),
                    idle,
                    write_timeout,
                    tally,
                ));
                tunnel.await;
                return Attempt::Done(Ok(false), Outcome::Success);
            }
            Ok(done) => {
                inbuf.consume(out.initial);
                if done.upstream_reusable {
                    ctx.pool.borrow_mut().checkin(server.member, up);
                }
                return Attempt::Done(Ok(done.client_keep), status_outcome(done.status));
            }
            Err(f) => {
                inbuf.consume(out.initial);
                let failure = Failure {
                    error: f.error,
                    response_started: f.started,
                    client_reusable: true,
                };
                return Attempt::Done(Err(failure), error_outcome(f.error));
            }
        }
    }
}

/// 502/503/504 from a server count against it (passive health).
fn status_outcome(status: u16) -> Outcome {
    if matches!(status, 502..=504) {
        Outcome::Failure
    } else {
        Outcome::Success
    }
}

fn error_outcome(e: ProxyError) -> Outcome {
    match e.origin() {
        Origin::Upstream => Outcome::Failure,
        _ => Outcome::Neutral,
    }
}

fn outcome_of(r: &Result<(bool, u16), Failure>) -> Outcome {
    match r {
        Ok((_, status)) => status_outcome(*status),
        Err(f) => error_outcome(f.error),
    }
}

/// The request body is still arriving: pump it while relaying the response.
async fn forward_streaming(
    leg: Leg<'_>,
    client: &mut Conn,
    inbuf: &mut Buffer,
    mut up: UpstreamConn,
    body: &mut BodyState,
) -> Result<(bool, u16), Failure> {
    let Leg {
        ctx,
        upstream,
        server,
        req,
        tally,
    } = leg;
    let progress = Progress::new(tally, None, false);
    let mut pump_result: Option<Result<(), RelayError>> = None;
    // What the pump reads from the client is the body it forwards: counted once.
    let read_from_client = Cell::new(0);
    let outcome = {
        let Conn {
            reader: up_reader,
            writer: up_writer,
        } = &mut *up;
        let pipe = Pipe {
            src: &mut client.reader,
            dst: up_writer,
            read_timeout: ctx.client().body_timeout,
            write_timeout: ctx.client().write_timeout,
            read: &read_from_client,
            written: &tally.pumped,
        };
        let pump = body::relay(pipe, inbuf, body);
        let relay = relay_response(ctx, upstream, up_reader, &mut client.writer, req, &progress);
        let mut pump = pin!(pump);
        let mut relay = pin!(relay);
        poll_fn(|cx| {
            if pump_result.is_none() {
                if let Poll::Ready(r) = pump.as_mut().poll(cx) {
                    match r {
                        // The upstream stopped reading (Sink): it may still answer.
                        Ok(()) | Err(RelayError::Sink) => {
                            progress.request_sent.set(true);
                            progress.sent_at.set(Some(Instant::now()));
                            progress.deadline.arm(upstream.response_timeout);
                        }
                        Err(_) => {
                            pump_result = Some(r);
                            return Poll::Ready(None);
                        }
                    }
                    pump_result = Some(r);
                }
            }
            relay.as_mut().poll(cx).map(Some)
        })
        .await
    };
    let body_complete = matches!(pump_result, Some(Ok(())));
    match outcome {
        None => {
            let error = match pump_result {
                Some(Err(RelayError::Framing(e))) => ProxyError::BadRequest(e.reason()),
                Some(Err(RelayError::Stalled)) => ProxyError::ClientBodyTimeout,
                _ => ProxyError::ClientGone,
            };
            Err(Failure {
                error,
                response_started: progress.response_started.get(),
                client_reusable: false,
            })
        }
        Some(Ok(done)) => {
            if done.upstream_reusable && body_complete {
                ctx.pool.borrow_mut().checkin(server.member, up);
            }
            Ok((done.client_keep && body_complete, done.status))
        }
        Some(Err(f)) => {
            note_upstream(upstream, server, f.error);
            Err(Failure {
                error: f.error,
                response_started: f.started,
                client_reusable: false,
            })
        }
    }
}

/// Why no connection to a server could be had.
enum ConnFailure {
    /// The server's fault (refused, unreachable, timed out), with how it
    /// counts for passive health.
    Server(ProxyError, Outcome),
    /// ringlb's own (out of descriptors, ports, buffers): 503, the server is
    /// not blamed.
    Local(ProxyError),
}

/// A clean pooled connection (each is probed on checkout), or a new one.
async fn upstream_conn(
    ctx: &WorkerCtx,
    upstream: &Upstream,
    server: &Server,
    fresh_only: bool,
) -> Result<(UpstreamConn, bool), ConnFailure> {
    let cells = &ctx.metrics.servers[server.member.id];
    if !fresh_only {
        if let Some(c) = ctx.pool.borrow_mut().checkout(server.member) {
            cells.connections_reused.inc();
            return Ok((c, true));
        }
    }
    let e = match io::connect(server.addr, upstream.connect_timeout).await {
        Ok(c) => {
            if let Some(watch) = &ctx.idle_watch {
                watch.register(&c, server.member.id);
            }
            cells.connections_created.inc();
            return Ok((UpstreamConn::new(c, server.member.id), false));
        }
        Err(e) => e,
    };
    let (failure, cause) = match &e {
        ConnectError::Refused(_) => (
            ConnFailure::Server(ProxyError::UpstreamConnect, Outcome::Refused),
            ConnectFailure::Refused,
        ),
        ConnectError::Failed(_) => (
            ConnFailure::Server(ProxyError::UpstreamConnect, Outcome::Failure),
            ConnectFailure::Other,
        ),
        ConnectError::TimedOut => (
            ConnFailure::Server(ProxyError::UpstreamConnectTimeout, Outcome::Failure),
            ConnectFailure::Timeout,
        ),
        ConnectError::Local(io_err) => {
            ctx.metrics
                .connect_failed(server.member.id, ConnectFailure::Local);
            let why = local_reason(io_err);
            crate::log::rate_limited(format_args!(
                "upstream {} server {}: cannot connect: {why}: ringlb's own limit, \
                 answered 503, the server is not blamed",
                upstream.name, server.addr
            ));
            return Err(ConnFailure::Local(ProxyError::LocalResources(why)));
        }
    };
    ctx.metrics.connect_failed(server.member.id, cause);
    crate::log::rate_limited(format_args!(
        "upstream {} server {}: connect failed: {e}",
        upstream.name, server.addr
    ));
    Err(failure)
}

/// What a local connect failure ran out of.
fn local_reason(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EMFILE) => "out of file descriptors (EMFILE)",
        Some(libc::ENFILE) => "the system's file table is full (ENFILE)",
        Some(libc::EADDRNOTAVAIL) => "no free local port (EADDRNOTAVAIL)",
        Some(libc::ENOBUFS) => "out of socket buffers (ENOBUFS)",
        _ => "out of memory (ENOMEM)",
    }
}

fn note_upstream(upstream: &Upstream, server: &Server, error: ProxyError) {
    crate::log::rate_limited(format_args!(
        "upstream {} server {}: {error}",
        upstream.name, server.addr
    ));
}

#[cfg(test)]
mod tests {
    use crate::pooled::future_size;

    /// Streamed uploads and tunnels run in pooled blocks too: they must fit one.
    #[test]
    fn streaming_and_tunnel_futures_fit_a_pooled_block() {
        let streaming = future_size::of5(super::forward_streaming);
        let tunnel = future_size::of6(super::super::tunnel::run);
        eprintln!("streaming exchange future: {streaming} bytes, tunnel: {tunnel} bytes");
        assert!(streaming <= crate::pooled::BLOCK_SIZE, "{streaming} bytes");
        assert!(tunnel <= crate::pooled::BLOCK_SIZE, "{tunnel} bytes");
    }
}
