//! Forwarding one request to an upstream and relaying its response.
//!
//! The request head and any body bytes already read go out in one write. A
//! request without a remaining body keeps its bytes in the client buffer until
//! the response starts, so a pooled connection that turns out dead (the
//! keep-alive race) is retried once on a fresh connection. A request with a body
//! still to come runs the body pump and the response relay side by side, so
//! `Expect: 100-continue` and early responses never deadlock.

use super::body::{self, BodyState, Pipe, RelayError};
use super::route::RouteAction;
use super::tally::Tally;
use super::{rewrite_head, WorkerCtx, HEADROOM};
use crate::buf::{Buffer, BUF_SIZE};
use crate::deadline::Timer;
use crate::error::{Origin, ProxyError};
use crate::http::request::Method;
use crate::http::rewrite::{self, BodyOut, ConnOut};
use crate::http::{response, Framing};
use crate::io::{self, Conn, ConnectError, ReadOutcome, Reader, Writer};
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
#[derive(Debug, Clone, Copy)]
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

/// How the response relay ended.
struct ResponseDone {
    client_keep: bool,
    upstream_reusable: bool,
    /// The upstream switched protocols: tunnel, starting with these bytes
    /// that followed its 101 head.
    tunnel: Option<Buffer>,
    status: u16,
}

struct ResponseFail {
    error: ProxyError,
    started: bool,
    /// Nothing at all came back from the upstream (retry candidate).
    silent: bool,
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
    let upstream = &ctx.upstreams[upstream_idx];
    tally.upstream.set(Some(upstream_idx as u16));
    let mut body = BodyState::request(req.framing, ctx.client.max_chunk_bytes);
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
    upstream.note_request();
    let mut tried = 0u64;
    let mut retries_left = upstream.retries;
    let mut last_error = ProxyError::NoHealthyServer;
    loop {
        let Some(si) = upstream.pick(req.hash_key, tried) else {
            inbuf.consume(out.initial);
            return Err(Failure::before_response(last_error, body_done));
        };
        if si < 64 {
            tried |= 1 << si;
        }
        let server = &upstream.servers[si];
        let cells = &ctx.metrics.servers[server.pool_slot];
        tally.server.set(Some(server.pool_slot as u16));
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
                    return Err(Failure::before_response(error, body_done));
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
    let write_timeout = ctx.client.write_timeout;
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
                let idle = ctx.client.tunnel_idle_timeout;
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
                    ctx.pool.borrow_mut().checkin(server.pool_slot, up);
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
            read_timeout: ctx.client.body_timeout,
            write_timeout: ctx.client.write_timeout,
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
                ctx.pool.borrow_mut().checkin(server.pool_slot, up);
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
    let cells = &ctx.metrics.servers[server.pool_slot];
    if !fresh_only {
        if let Some(c) = ctx.pool.borrow_mut().checkout(server.pool_slot) {
            cells.connections_reused.inc();
            return Ok((c, true));
        }
    }
    let e = match io::connect(server.addr, upstream.connect_timeout).await {
        Ok(c) => {
            if let Some(watch) = &ctx.idle_watch {
                watch.register(&c, server.pool_slot);
            }
            cells.connections_created.inc();
            return Ok((UpstreamConn::new(c, server.pool_slot), false));
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
                .connect_failed(server.pool_slot, ConnectFailure::Local);
            let why = local_reason(io_err);
            crate::log::rate_limited(format_args!(
                "upstream {} server {}: cannot connect: {why}: ringlb's own limit, \
                 answered 503, the server is not blamed",
                upstream.name, server.addr
            ));
            return Err(ConnFailure::Local(ProxyError::LocalResources(why)));
        }
    };
    ctx.metrics.connect_failed(server.pool_slot, cause);
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

/// What the response head decided.
struct ResponsePlan {
    head_len: usize,
    informational: bool,
    status: u16,
    upstream_framing: Framing,
    body_out: BodyOut,
    conn_out: ConnOut,
    upstream_keep_alive: bool,
}

/// Parses the response head in `rb` and rewrites it in place for the client.
fn plan_response(
    ctx: &WorkerCtx,
    rb: &mut Buffer,
    req: &Prepared,
) -> Result<Option<ResponsePlan>, ProxyError> {
    rewrite_head(rb, |data, scratch| {
        let mut headers = crate::http::header_slots();
        let head = match response::parse(
            data,
            &mut headers,
            req.method == Method::Head,
            BUF_SIZE - HEADROOM,
        ) {
            Ok(Some(h)) => h,
            Ok(None) => return (Ok(None), None),
            Err(e) => return (Err(e), None),
        };
        if head.is_informational() {
            if head.status == 101 {
                if !req.upgrade {
                    let e = ProxyError::UpstreamBadResponse("101 without an upgrade request");
                    return (Err(e), None);
                }
                rewrite::write_switching_protocols(&head, scratch);
            } else {
                rewrite::write_informational(&head, scratch);
            }
            let plan = ResponsePlan {
                head_len: scratch.len(),
                informational: true,
                status: head.status,
                upstream_framing: Framing::None,
                body_out: BodyOut::None,
                conn_out: ConnOut::Persistent,
                upstream_keep_alive: true,
            };
            return (Ok(Some(plan)), Some(head.head_len));
        }
        let http10 = req.minor_version == 0;
        let body_out = match head.framing {
            Framing::None => BodyOut::None,
            Framing::Length(n) => BodyOut::Length(n),
            Framing::Chunked | Framing::UntilClose if http10 => BodyOut::Raw,
            Framing::Chunked | Framing::UntilClose => BodyOut::Chunked,
        };
        let conn_out = if !req.keep_alive || ctx.draining.get() || body_out == BodyOut::Raw {
            ConnOut::Close
        } else if http10 {
            ConnOut::KeepAlive10
        } else {
            ConnOut::Persistent
        };
        rewrite::write_response(&head, body_out, conn_out, scratch);
        let plan = ResponsePlan {
            head_len: scratch.len(),
            informational: false,
            status: head.status,
            upstream_framing: head.framing,
            body_out,
            conn_out,
            upstream_keep_alive: head.upstream_keep_alive,
        };
        (Ok(Some(plan)), Some(head.head_len))
    })
}

/// What the request and response sides of one exchange share.
struct Progress<'t> {
    tally: &'t Tally,
    /// When the whole request had gone upstream (response-head latency).
    sent_at: Cell<Option<Instant>>,
    /// A `408` as the answer is the server's notice that it closed the idle
    /// pooled connection, not an answer to this request (set on a reused
    /// connection when the request can be sent again).
    idle_408_is_race: bool,
    /// The whole request went upstream: the response timeout runs.
    request_sent: Cell<bool>,
    /// Response bytes reached the client: no retry, no error page.
    response_started: Cell<bool>,
    /// The upstream response deadline.
    deadline: Timer,
}

impl<'t> Progress<'t> {
    /// `sent_at`: when the request went out, if it all did already.
    fn new(tally: &'t Tally, sent_at: Option<Instant>, idle_408_is_race: bool) -> Progress<'t> {
        Progress {
            tally,
            sent_at: Cell::new(sent_at),
            idle_408_is_race,
            request_sent: Cell::new(sent_at.is_some()),
            response_started: Cell::new(false),
            deadline: Timer::new(),
        }
    }
}

/// Reads the upstream response and relays it to the client.
async fn relay_response(
    ctx: &WorkerCtx,
    upstream: &Upstream,
    up: &mut Reader,
    client: &mut Writer,
    req: &Prepared,
    progress: &Progress<'_>,
) -> Result<ResponseDone, ResponseFail> {
    let started = &progress.response_started;
    let tally = progress.tally;
    let write_timeout = ctx.client.write_timeout;
    let read_timeout = upstream.response_timeout;
    let mut rb = Buffer::take();
    rb.reset_with_headroom(HEADROOM);
    // `silent`: no response byte has been read yet; `first_read`: at most one read
    // has returned bytes (stray bytes on a reused connection arrive in one read).
    let mut silent = true;
    let mut first_read = true;
    let fail = |error, silent| ResponseFail {
        error,
        started: started.get(),
        silent,
    };
    let plan = loop {
        match plan_response(ctx, &mut rb, req) {
            // Garbage as the very first bytes on a connection counts as "silent":
            // nothing of it answers this request.
            Err(e) => return Err(fail(e, first_read)),
            Ok(Some(p)) if p.status == 408 && progress.idle_408_is_race => {
                return Err(fail(ProxyError::UpstreamClosed, true));
            }
            Ok(Some(p)) if p.status == 101 => {
                started.set(true);
                note_head(progress, 101);
                client
                    .write_front(&mut rb, p.head_len, write_timeout)
                    .await
                    .map_err(|_| fail(ProxyError::ClientGone, false))?;
                Tally::add(&tally.client_out, p.head_len);
                return Ok(ResponseDone {
                    client_keep: false,
                    upstream_reusable: false,
                    tunnel: Some(rb),
                    status: 101,
                });
            }
            Ok(Some(p)) if p.informational => {
                if req.minor_version == 1 && p.status != 102 {
                    client
                        .write_front(&mut rb, p.head_len, write_timeout)
                        .await
                        .map_err(|_| fail(ProxyError::ClientGone, false))?;
                    Tally::add(&tally.client_out, p.head_len);
                } else {
                    rb.consume(p.head_len);
                }
                if rb.is_empty() {
                    rb.reset_with_headroom(HEADROOM);
                }
            }
            Ok(Some(p)) => break p,
            Ok(None) => {
                if rb.spare() == 0 {
                    rb.compact();
                }
                // The response timeout runs once the request is all sent (the
                // body pump arms it when it finishes); until then only the
                // body's own timeouts apply.
                if progress.request_sent.get() {
                    progress.deadline.arm(read_timeout);
                } else {
                    progress.deadline.disarm();
                }
                match up.read_within(&mut rb, &progress.deadline).await {
                    ReadOutcome::Data(n) => {
                        Tally::add(&tally.upstream_in, n);
                        first_read = silent;
                        silent = false;
                    }
                    ReadOutcome::Eof | ReadOutcome::Failed(_) => {
                        return Err(fail(ProxyError::UpstreamClosed, silent))
                    }
                    ReadOutcome::TimedOut => {
                        return Err(fail(ProxyError::UpstreamResponseTimeout, false))
                    }
                }
            }
        }
    };

    started.set(true);
    note_head(progress, plan.status);
    let body_fail = |e: RelayError| ResponseFail {
        error: match e {
            RelayError::Sink => ProxyError::ClientGone,
            _ => ProxyError::UpstreamBodyFailed,
        },
        started: true,
        silent: false,
    };
    let sink_fail = |_| body_fail(RelayError::Sink);
    match (plan.upstream_framing, plan.body_out) {
        (Framing::None, _) => {
            client
                .write_front(&mut rb, plan.head_len, write_timeout)
                .await
                .map_err(sink_fail)?;
            Tally::add(&tally.client_out, plan.head_len);
        }
        (Framing::Length(_) | Framing::Chunked, BodyOut::Length(_) | BodyOut::Chunked) => {
            // Pass-through: head plus the body bytes already here in one write.
            let mut state = BodyState::response(plan.upstream_framing);
            let (n, done) = state
                .frame(&mut rb, plan.head_len)
                .map_err(|e| ResponseFail {
                    error: ProxyError::UpstreamBadResponse(e.reason()),
                    started: false,
                    silent: false,
                })?;
            client
                .write_front(&mut rb, plan.head_len + n, write_timeout)
                .await
                .map_err(sink_fail)?;
            Tally::add(&tally.client_out, plan.head_len + n);
            if !done {
                let pipe = response_pipe(up, client, tally, read_timeout, write_timeout);
                body::relay(pipe, &mut rb, &mut state)
                    .await
                    .map_err(body_fail)?;
            }
        }
        (upstream_framing, body_out) => {
            // Re-framed bodies: the head goes out alone, then the body relay.
            client
                .write_front(&mut rb, plan.head_len, write_timeout)
                .await
                .map_err(sink_fail)?;
            Tally::add(&tally.client_out, plan.head_len);
            let (pipe, b) = (
                response_pipe(up, client, tally, read_timeout, write_timeout),
                &mut rb,
            );
            let relayed = match (upstream_framing, body_out) {
                (Framing::Chunked, _) => body::relay_dechunked(pipe, b).await,
                (_, BodyOut::Chunked) => body::relay_close_delimited_as_chunked(pipe, b).await,
                _ => body::relay_until_close(pipe, b).await,
            };
            relayed.map_err(body_fail)?;
        }
    }
    let leftover = !rb.is_empty();
    Ok(ResponseDone {
        tunnel: None,
        status: plan.status,
        client_keep: plan.conn_out != ConnOut::Close,
        upstream_reusable: plan.upstream_keep_alive
            && !leftover
            && plan.upstream_framing != Framing::UntilClose,
    })
}

/// The body relay from an upstream to the client, counting into `tally`.
fn response_pipe<'a>(
    up: &'a mut Reader,
    client: &'a mut Writer,
    tally: &'a Tally,
    read_timeout: std::time::Duration,
    write_timeout: std::time::Duration,
) -> Pipe<'a> {
    Pipe {
        src: up,
        dst: client,
        read_timeout,
        write_timeout,
        read: &tally.upstream_in,
        written: &tally.client_out,
    }
}

/// A final (or 101) response head is about to go to the client: its status
/// and how long it took once the request was sent.
fn note_head(progress: &Progress<'_>, status: u16) {
    progress.tally.status.set(status);
    if let Some(at) = progress.sent_at.get() {
        progress.tally.set_head_latency(at);
    }
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
