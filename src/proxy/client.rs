//! One client connection: wait for a request without holding a buffer, read and
//! validate its head, route it, answer or forward it, repeat while keep-alive holds.

use super::exchange::{self, Failure, Prepared};
use super::route::RouteAction;
use super::{rewrite_head, ClientIp, WorkerCtx, HEADROOM};
use crate::buf::Buffer;
use crate::config::HashKey;
use crate::error::ProxyError;
use crate::http::request::{self, Method, RequestHead};
use crate::http::{canned, rewrite, Framing, MAX_HEADERS};
use crate::io::{Conn, ReadOutcome};
use crate::upstream::balance::maglev_hash;
use monoio::net::TcpStream;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Serves one accepted client connection until it closes.
pub async fn serve(ctx: Rc<WorkerCtx>, listener: usize, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let mut client = Conn::new(stream);
    let ip = ClientIp::new(peer.ip());
    let mut inbuf = Buffer::placeholder();
    loop {
        if inbuf.is_empty() && !wait_for_request(&ctx, &mut client, &mut inbuf).await {
            return;
        }
        let _busy = ctx.busy_guard();
        let req = match read_head(&ctx, listener, &ip, &mut client, &mut inbuf).await {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(e) => {
                crate::log::rate_limited(format_args!(
                    "client {peer}: {} {e}",
                    e.status().unwrap_or(0)
                ));
                reject(&ctx, &mut client, e).await;
                return;
            }
        };
        let keep = match req.action {
            RouteAction::Respond(direct) => {
                answer_directly(&ctx, &mut client, &mut inbuf, &req, direct).await
            }
            RouteAction::Local => answer_locally(&ctx, &mut client, &mut inbuf, &req).await,
            RouteAction::Proxy(upstream) => {
                match exchange::forward(&ctx, upstream, &mut client, &mut inbuf, &req).await {
                    Ok(keep) => keep,
                    Err(f) => answer_failure(&ctx, &mut client, &req, f).await,
                }
            }
        };
        if !keep || ctx.draining.get() {
            client.writer.shutdown_write();
            return;
        }
    }
}

/// Waits for the next request's first bytes. A busy connection keeps its buffer
/// posted for `idle_buffer_hold` (the next request usually arrives sooner, and
/// one read beats a readiness wait plus a read); past that, the buffer goes back
/// to the pool and the connection waits for readiness alone, so an idle
/// keep-alive connection pins no buffer. False: close the connection.
async fn wait_for_request(ctx: &WorkerCtx, client: &mut Conn, inbuf: &mut Buffer) -> bool {
    if ctx.draining.get() {
        return false;
    }
    let hold = ctx.client.idle_buffer_hold.min(ctx.client.idle_timeout);
    if !hold.is_zero() {
        if inbuf.capacity() == 0 {
            *inbuf = Buffer::take();
        }
        inbuf.reset_with_headroom(HEADROOM);
        match client.reader.read(inbuf, hold).await {
            ReadOutcome::Data(_) => return true,
            ReadOutcome::TimedOut => {}
            ReadOutcome::Eof | ReadOutcome::Failed(_) => return false,
        }
    }
    drop(std::mem::replace(inbuf, Buffer::placeholder()));
    if ctx.draining.get()
        || !client
            .reader
            .wait_readable(ctx.client.idle_timeout - hold)
            .await
    {
        return false;
    }
    *inbuf = Buffer::take();
    inbuf.reset_with_headroom(HEADROOM);
    true
}

/// Reads until a complete head is parsed. `Ok(None)`: the client went away.
async fn read_head(
    ctx: &WorkerCtx,
    listener: usize,
    ip: &ClientIp,
    client: &mut Conn,
    inbuf: &mut Buffer,
) -> Result<Option<Prepared>, ProxyError> {
    let deadline = Instant::now() + ctx.client.head_timeout;
    loop {
        if let Some(req) = prepare(ctx, listener, ip, inbuf)? {
            return Ok(Some(req));
        }
        if inbuf.spare() < 1024 {
            inbuf.reserve(4096);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match client
            .reader
            .read(inbuf, left.max(Duration::from_millis(1)))
            .await
        {
            ReadOutcome::Data(_) => {}
            ReadOutcome::TimedOut => return Err(ProxyError::ClientHeadTimeout),
            ReadOutcome::Eof | ReadOutcome::Failed(_) => return Ok(None),
        }
    }
}

/// Parses, validates and routes the head at the front of `inbuf`; for proxied
/// requests the head is rewritten in place for the upstream.
fn prepare(
    ctx: &WorkerCtx,
    listener: usize,
    ip: &ClientIp,
    inbuf: &mut Buffer,
) -> Result<Option<Prepared>, ProxyError> {
    rewrite_head(inbuf, |data, scratch| {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let head = match request::parse(data, &mut headers, &ctx.limits) {
            Ok(Some(h)) => h,
            Ok(None) => return (Ok(None), None),
            Err(e) => return (Err(e), None),
        };
        if head.answer_locally() {
            rewrite::write_local_answer(&head, scratch);
            let req = Prepared {
                action: RouteAction::Local,
                head_len: scratch.len(),
                framing: head.framing,
                method: head.kind,
                keep_alive: head.keep_alive,
                minor_version: head.minor_version,
                upgrade: false,
                hash_key: 0,
            };
            return (Ok(Some(req)), Some(head.head_len));
        }
        let action = ctx.routes[listener].select(head.host_name(), head.path());
        let mut req = Prepared {
            action,
            head_len: head.head_len,
            framing: head.framing,
            method: head.kind,
            keep_alive: head.keep_alive,
            minor_version: head.minor_version,
            upgrade: head.upgrade,
            hash_key: 0,
        };
        match action {
            RouteAction::Proxy(up) => {
                if let Some(key) = &ctx.upstreams[up].hash_key {
                    req.hash_key = hash_key(key, &head, ip);
                }
                let authority = ctx.routes[listener].authority();
                rewrite::write_request(&head, ip.as_bytes(), authority, scratch);
                req.head_len = scratch.len();
                (Ok(Some(req)), Some(head.head_len))
            }
            RouteAction::Respond(_) | RouteAction::Local => (Ok(Some(req)), None),
        }
    })
}

/// The consistent-hashing key of a request (a missing header falls back to
/// the client address).
fn hash_key(key: &HashKey, head: &RequestHead<'_, '_>, ip: &ClientIp) -> u64 {
    let bytes = match key {
        HashKey::ClientIp => ip.as_bytes(),
        HashKey::Path => head.path().as_bytes(),
        HashKey::Header(name) => head
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map_or(ip.as_bytes(), |h| h.value),
    };
    maglev_hash(bytes)
}

/// Answers from a direct-response route. Returns whether to keep the connection.
async fn answer_directly(
    ctx: &WorkerCtx,
    client: &mut Conn,
    inbuf: &mut Buffer,
    req: &Prepared,
    direct: &'static super::route::Direct,
) -> bool {
    inbuf.consume(req.head_len);
    let keep = consume_buffered_body(inbuf, req.framing) && may_keep_alive(ctx, req);
    let (bytes, head_len) = if keep {
        (direct.keep_alive, direct.keep_alive_head)
    } else {
        (direct.close, direct.close_head)
    };
    let bytes = if req.method == Method::Head {
        &bytes[..head_len]
    } else {
        bytes
    };
    send_static(ctx, client, bytes, keep).await
}

/// Writes a pre-rendered answer; true if it went out and the connection stays.
async fn send_static(ctx: &WorkerCtx, client: &mut Conn, bytes: &'static [u8], keep: bool) -> bool {
    let sent = client
        .writer
        .write_static(bytes, ctx.client.write_timeout)
        .await;
    sent.is_ok() && keep
}

/// Sends the answer that `prepare` placed at the front of `inbuf` (OPTIONS or
/// TRACE with `Max-Forwards: 0`). Returns whether to keep the connection.
async fn answer_locally(
    ctx: &WorkerCtx,
    client: &mut Conn,
    inbuf: &mut Buffer,
    req: &Prepared,
) -> bool {
    let sent = client
        .writer
        .write_front(inbuf, req.head_len, ctx.client.write_timeout)
        .await
        .is_ok();
    sent && consume_buffered_body(inbuf, req.framing) && may_keep_alive(ctx, req)
}

/// For requests ringlb answers itself: consumes a body already in the buffer.
/// False when the body is not all there (the connection must then close).
fn consume_buffered_body(inbuf: &mut Buffer, framing: Framing) -> bool {
    match framing {
        Framing::None => true,
        Framing::Length(n) if n <= inbuf.len() as u64 => {
            inbuf.consume(n as usize);
            true
        }
        _ => false,
    }
}

/// Whether a locally answered request leaves the connection reusable.
fn may_keep_alive(ctx: &WorkerCtx, req: &Prepared) -> bool {
    req.keep_alive && req.minor_version == 1 && !ctx.draining.get()
}

/// Answers a failed request with its canned status. Returns whether to keep the connection.
async fn answer_failure(ctx: &WorkerCtx, client: &mut Conn, req: &Prepared, f: Failure) -> bool {
    if f.response_started {
        return false;
    }
    let Some(status) = f.error.status() else {
        return false;
    };
    let keep =
        f.client_reusable && req.keep_alive && req.minor_version == 1 && !f.error.closes_client();
    let canned = canned::for_status(status);
    let bytes = if keep {
        canned.keep_alive
    } else {
        canned.close
    };
    send_static(ctx, client, bytes, keep).await
}

/// Answers a rejected request head and closes in stages: half-close, then drain
/// what the client still sends (bounded), so the answer is not lost to a reset.
async fn reject(ctx: &WorkerCtx, client: &mut Conn, e: ProxyError) {
    if let Some(status) = e.status() {
        if client
            .writer
            .write_static(canned::for_status(status).close, ctx.client.write_timeout)
            .await
            .is_err()
        {
            return;
        }
    }
    client.writer.shutdown_write();
    let mut sink = Buffer::take();
    let deadline = Instant::now() + Duration::from_secs(2);
    for _ in 0..64 {
        sink.clear();
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match client.reader.read(&mut sink, left).await {
            ReadOutcome::Data(_) => {}
            _ => break,
        }
    }
}
