//! Reading an upstream's response and relaying it to the client.
//!
//! The response head is parsed and rewritten in place for the client
//! (`plan_response`); informational heads pass through (or are dropped for
//! HTTP/1.0 clients), a `101` hands the connection to the tunnel, and the body
//! is relayed as it came or re-framed. What the relay reports back tells the
//! exchange whether the upstream said nothing at all (a retry candidate),
//! whether the client already has part of a response, and whether both
//! connections may be reused.

use super::body::{self, BodyState, Pipe, RelayError};
use super::exchange::Prepared;
use super::tally::Tally;
use super::{rewrite_head, WorkerCtx, HEADROOM};
use crate::buf::{Buffer, LARGE_SIZE};
use crate::deadline::Timer;
use crate::error::ProxyError;
use crate::http::request::Method;
use crate::http::rewrite::{self, BodyOut, ConnOut};
use crate::http::{response, Framing};
use crate::io::{ReadOutcome, Reader, Writer};
use crate::upstream::Upstream;
use std::cell::Cell;
use std::time::Instant;

/// How the response relay ended.
pub(super) struct ResponseDone {
    pub(super) client_keep: bool,
    pub(super) upstream_reusable: bool,
    /// The upstream switched protocols: tunnel, starting with these bytes
    /// that followed its 101 head.
    pub(super) tunnel: Option<Buffer>,
    pub(super) status: u16,
}

pub(super) struct ResponseFail {
    pub(super) error: ProxyError,
    pub(super) started: bool,
    /// Nothing at all came back from the upstream (retry candidate).
    pub(super) silent: bool,
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
            LARGE_SIZE - HEADROOM,
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
pub(super) struct Progress<'t> {
    pub(super) tally: &'t Tally,
    /// When the whole request had gone upstream (response-head latency).
    pub(super) sent_at: Cell<Option<Instant>>,
    /// A `408` as the answer is the server's notice that it closed the idle
    /// pooled connection, not an answer to this request (set on a reused
    /// connection when the request can be sent again).
    pub(super) idle_408_is_race: bool,
    /// The whole request went upstream: the response timeout runs.
    pub(super) request_sent: Cell<bool>,
    /// Response bytes reached the client: no retry, no error page.
    pub(super) response_started: Cell<bool>,
    /// The upstream response deadline.
    pub(super) deadline: Timer,
}

impl<'t> Progress<'t> {
    /// `sent_at`: when the request went out, if it all did already.
    pub(super) fn new(
        tally: &'t Tally,
        sent_at: Option<Instant>,
        idle_408_is_race: bool,
    ) -> Progress<'t> {
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
pub(super) async fn relay_response(
    ctx: &WorkerCtx,
    upstream: &Upstream,
    up: &mut Reader,
    client: &mut Writer,
    req: &Prepared,
    progress: &Progress<'_>,
) -> Result<ResponseDone, ResponseFail> {
    let started = &progress.response_started;
    let tally = progress.tally;
    let write_timeout = ctx.client().write_timeout;
    let read_timeout = upstream.response_timeout;
    // `silent`: no response byte has been read yet; `first_read`: at most one read
    // has returned bytes (stray bytes on a reused connection arrive in one read).
    let mut silent = true;
    let mut first_read = true;
    let fail = |error, silent| ResponseFail {
        error,
        started: started.get(),
        silent,
    };
    // The first bytes are awaited without a buffer (a request held up by a
    // slow upstream pins none), then read with a direct `recv`.
    arm_response_deadline(progress, read_timeout);
    match up.readable_racing(&progress.deadline).await {
        None => return Err(fail(ProxyError::UpstreamResponseTimeout, false)),
        Some(Err(_)) => return Err(fail(ProxyError::UpstreamClosed, true)),
        Some(Ok(())) => {}
    }
    let mut rb = Buffer::take();
    rb.reset_with_headroom(HEADROOM);
    let mut readable = true;
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
                    // A head past a small buffer: the request is forwarded
                    // already, so it grows even past the memory cap.
                    rb.reserve_running(1);
                }
                let now = std::mem::take(&mut readable).then(|| up.read_now(&mut rb));
                let read = match now.flatten() {
                    Some(read) => read,
                    None => {
                        arm_response_deadline(progress, read_timeout);
                        up.read_within(&mut rb, &progress.deadline).await
                    }
                };
                match read {
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
            top_up_before_streaming(up, &mut rb);
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

/// The response timeout runs once the request is all sent (the body pump
/// arms it when it finishes); until then only the body's own timeouts apply.
fn arm_response_deadline(progress: &Progress<'_>, read_timeout: std::time::Duration) {
    if progress.request_sent.get() {
        progress.deadline.arm(read_timeout);
    } else {
        progress.deadline.disarm();
    }
}

/// A small buffer that a read filled holds a head and the start of a body
/// that does not fit: enlarged (room permitting) and topped up with what the
/// socket already holds, the first write carries the head and as much body
/// as a large buffer would have, instead of a page of it.
fn top_up_before_streaming(up: &mut Reader, rb: &mut Buffer) {
    if rb.spare() == 0 && rb.enlarge() {
        // Nothing there yet, or an error the relay's own read will see.
        let _ = up.read_now(rb);
    }
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
