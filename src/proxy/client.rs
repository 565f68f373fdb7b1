//! One client connection: wait for a request without holding a buffer, read and
//! validate its head, route it, answer or forward it, repeat while keep-alive holds.

use super::conn_limit::ConnSlot;
use super::exchange::{self, Failure, Prepared};
use super::observe;
use super::route::RouteAction;
use super::tally::Tally;
use super::{rewrite_head, ClientIp, WorkerCtx, HEADROOM};
use crate::access_log::Capture;
use crate::buf::Buffer;
use crate::config::HashKey;
use crate::error::ProxyError;
use crate::http::request::{self, Method, RequestHead};
use crate::http::{canned, rewrite, Framing};
use crate::io::{Conn, ReadOutcome};
use crate::pooled::Pooled;
use crate::upstream::balance::maglev_hash;
use monoio::net::TcpStream;
use std::rc::Rc;
use std::time::Duration;

/// Serves one accepted client connection until it closes.
///
/// This task only waits between requests; each request runs in a `Pooled`
/// future, so an idle keep-alive connection costs this small future alone.
pub fn serve(
    ctx: Rc<WorkerCtx>,
    listener: usize,
    stream: TcpStream,
    slot: ConnSlot,
) -> impl std::future::Future<Output = ()> {
    // Set up outside the async body: what is moved into `Conn` here (the
    // stream) would otherwise stay in the task's state.
    let _ = stream.set_nodelay(true);
    let counted = crate::metrics::connection_opened();
    connection(ctx, listener, Conn::new(stream), slot, counted)
}

/// The connection's task: waits between requests, runs each in a pooled block.
///
/// An `async move` block rather than an `async fn`: an `async fn` moves its
/// arguments into locals and keeps both copies in its state (96 bytes of
/// every idle connection); a block uses what it captured in place.
#[allow(clippy::manual_async_fn)] // the `async fn` form is the larger one
fn connection(
    ctx: Rc<WorkerCtx>,
    listener: usize,
    mut client: Conn,
    slot: ConnSlot,
    counted: crate::metrics::ConnectionGuard,
) -> impl std::future::Future<Output = ()> {
    async move {
        // Zero-sized: counts the close when the task ends, however it ends.
        let _counted = counted;
        // `slot`: the connection's place under the caps (given back however
        // the task ends) and the client's address.
        let mut inbuf = Buffer::placeholder();
        loop {
            if inbuf.is_empty() {
                // Between requests: wait for readiness, holding no buffer (inline
                // rather than in a helper `async fn`, whose state would add ~90 bytes
                // to every idle connection).
                drop(std::mem::replace(&mut inbuf, Buffer::placeholder()));
                loop {
                    // No draining check here: a connection accepted as the
                    // drain began, or a kept-alive one whose request arrives
                    // during it, is answered (with `Connection: close`), not
                    // closed unanswered.
                    let ready = client.reader.readable_within(ctx.client().idle_timeout);
                    if !matches!(ready.await, Some(Ok(()))) {
                        return;
                    }
                    if !crate::buf::has_room_for_request() {
                        let shed = Pooled::new(shed_for_memory(&ctx, listener, &mut client));
                        shed.await;
                        return;
                    }
                    match first_bytes(&mut client) {
                        Ok(Some(buf)) => {
                            inbuf = buf;
                            break;
                        }
                        Ok(None) => continue, // readiness without data (spurious wakeup)
                        Err(()) => return,
                    }
                }
            }
            // Built in its own `let`: a temporary held across the `.await` would
            // also reserve room for the request's future in this task.
            let request = Pooled::new(handle_request(
                &ctx,
                listener,
                &slot,
                &mut client,
                &mut inbuf,
            ));
            if !request.await || ctx.draining.get() {
                client.writer.shutdown_write();
                return;
            }
        }
    }
}

/// Reads, answers or forwards one request. Returns whether to keep the connection.
async fn handle_request(
    ctx: &WorkerCtx,
    listener: usize,
    ip: &ClientIp,
    client: &mut Conn,
    inbuf: &mut Buffer,
) -> bool {
    let _busy = ctx.busy_guard();
    let mut tally = Tally::new(listener, ctx.layout.borrow().unrouted_slot(listener));
    let mut capture = None;
    let req = match read_head(ctx, (listener, ip), client, inbuf, &mut capture).await {
        Ok(Some(req)) => req,
        Ok(None) => return false, // gone before a complete head: not a request
        Err(e) => {
            crate::log::rate_limited(format_args!(
                "client {}: {} {e}",
                ip.as_str(),
                e.status().unwrap_or(0)
            ));
            if ctx.logs(listener) {
                tally.capture = Some(observe::capture_raw(inbuf.data()));
            }
            reject(ctx, client, e, &tally).await;
            observe::finish(ctx, ip, &tally);
            return false;
        }
    };
    tally.capture = capture;
    tally.slot.set(req.slot);
    tally.head_in.set(req.received_head_len as u64);
    let keep = match &req.action {
        RouteAction::Respond(direct) => {
            answer_directly(ctx, client, inbuf, &req, direct, &tally).await
        }
        RouteAction::Local => answer_locally(ctx, client, inbuf, &req, &tally).await,
        RouteAction::Proxy(upstream) => {
            match exchange::forward(ctx, *upstream, client, inbuf, &req, &tally).await {
                Ok(keep) => keep,
                Err(f) => answer_failure(ctx, client, &req, f, &tally).await,
            }
        }
    };
    observe::finish(ctx, ip, &tally);
    keep
}

/// A request the worker has no buffer room for (`max_memory_mb`): its 503
/// with `Connection: close`, then a bounded linger. Reads nothing into a
/// buffer (the request is never parsed).
async fn shed_for_memory(ctx: &WorkerCtx, listener: usize, client: &mut Conn) {
    let why = crate::error::Shed::Memory;
    ctx.metrics.shed(why);
    {
        let layout = ctx.layout.borrow();
        let name = &layout.listeners[listener];
        ctx.shed_log.shed(why, format_args!("listener {name}"));
    }
    client
        .answer_and_linger(
            Some(canned::for_shed(why).close),
            ctx.client().write_timeout,
            (Duration::from_secs(1), 64 * 1024),
        )
        .await;
}

/// After readiness: the next request's first bytes, read with a direct `recv`
/// into a pooled buffer, so an idle keep-alive connection pins no buffer and
/// a burst of clients closing at once returns each buffer as soon as its EOF
/// is read. `Ok(None)`: nothing there after all; `Err`: the client is gone.
fn first_bytes(client: &mut Conn) -> Result<Option<Buffer>, ()> {
    let mut buf = Buffer::take_for_request();
    buf.reset_with_headroom(HEADROOM);
    match client.reader.read_now(&mut buf) {
        Some(ReadOutcome::Data(_)) => Ok(Some(buf)),
        None => Ok(None),
        Some(_) => Err(()),
    }
}

/// Reads until a complete head is parsed. `Ok(None)`: the client went away.
/// `capture`: what the access log needs of the head, when the listener logs.
async fn read_head(
    ctx: &WorkerCtx,
    (listener, ip): (usize, &ClientIp),
    client: &mut Conn,
    inbuf: &mut Buffer,
    capture: &mut Option<Capture>,
) -> Result<Option<Prepared>, ProxyError> {
    client.reader.arm(ctx.client().head_timeout);
    loop {
        match prepare(ctx, (listener, ip), inbuf, capture) {
            Ok(Some(req)) => {
                client.reader.disarm();
                return Ok(Some(req));
            }
            Ok(None) => {}
            Err(ProxyError::BadRequest(request::UNSUPPORTED_VERSION))
                if request::downgrade_minor_version(inbuf.data_mut()) =>
            {
                continue; // HTTP/1.2 and later minors: handled as 1.1
            }
            Err(e) => return Err(e),
        }
        // Room for the next read: from the consumed bytes in front first (a
        // page has over 1 KiB after them unless the head itself outgrows it).
        if inbuf.spare() < 1024 && !inbuf.reserve(1024) {
            // A head past a small buffer, and no memory left to enlarge it:
            // nothing was forwarded yet, so a 503 is safe.
            let why = crate::error::Shed::Memory;
            let layout = ctx.layout.borrow();
            let name = &layout.listeners[listener];
            ctx.shed_log.shed(why, format_args!("listener {name}"));
            return Err(ProxyError::Shed(why));
        }
        match client.reader.read_armed(inbuf).await {
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
    (listener, ip): (usize, &ClientIp),
    inbuf: &mut Buffer,
    capture: &mut Option<Capture>,
) -> Result<Option<Prepared>, ProxyError> {
    rewrite_head(inbuf, |data, scratch| {
        let mut headers = crate::http::header_slots();
        let head = match request::parse(data, &mut headers, &ctx.limits()) {
            Ok(Some(h)) => h,
            Ok(None) => return (Ok(None), None),
            Err(e) => return (Err(e), None),
        };
        #[cfg(debug_assertions)]
        crate::contain::test_hooks::on_request(head.headers);
        let id = observe::request_id(ctx.client().request_id, &head);
        if ctx.logs(listener) {
            *capture = Some(observe::capture(&head, id.as_ref().map(|i| &i[..])));
        }
        if head.answer_locally() {
            rewrite::write_local_answer(&head, scratch);
            let req = Prepared {
                action: RouteAction::Local,
                slot: ctx.layout.borrow().unrouted_slot(listener),
                received_head_len: head.head_len,
                head_len: scratch.len(),
                framing: head.framing,
                method: head.kind,
                keep_alive: head.keep_alive && ctx.listening(listener),
                minor_version: head.minor_version,
                upgrade: false,
                hash_key: 0,
            };
            return (Ok(Some(req)), Some(head.head_len));
        }
        let (route_idx, action, hash_key) = route(ctx, listener, &head, ip);
        let proxied = matches!(action, RouteAction::Proxy(_));
        let mut req = Prepared {
            action,
            slot: ctx.layout.borrow().route_slot(listener, route_idx),
            received_head_len: head.head_len,
            head_len: head.head_len,
            framing: head.framing,
            method: head.kind,
            // A listener a reload removed: this is its connection's last request.
            keep_alive: head.keep_alive && ctx.listening(listener),
            minor_version: head.minor_version,
            upgrade: head.upgrade,
            hash_key,
        };
        if proxied {
            let routes = ctx.routes.borrow();
            let authority = routes[listener].authority();
            let id = id.as_ref().map(|i| &i[..]);
            rewrite::write_request(&head, ip.as_bytes(), authority, id, scratch);
            req.head_len = scratch.len();
            (Ok(Some(req)), Some(head.head_len))
        } else {
            (Ok(Some(req)), None)
        }
    })
}

thread_local! {
    /// Room for a normalised path, reused by every request of the worker.
    static PATH_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Chooses the route by host and normalised path (`http::path`): the route's
/// index (None: the listener's default), its action, and for a
/// consistent-hashing pool the request's hash key.
fn route(
    ctx: &WorkerCtx,
    listener: usize,
    head: &RequestHead<'_, '_>,
    ip: &ClientIp,
) -> (Option<usize>, RouteAction, u64) {
    PATH_SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let path = crate::http::path::normalise(head.path(), &mut scratch);
        let (index, action) = ctx.routes.borrow()[listener].select(head.host_name(), path);
        let key = match action {
            // Read in place: only the forward holds the list across awaits.
            RouteAction::Proxy(up) => ctx.upstreams.borrow()[up]
                .hash_key
                .as_ref()
                .map_or(0, |key| hash_key(key, head, path, ip)),
            _ => 0,
        };
        (index, action, key)
    })
}

/// The consistent-hashing key of a request (a missing header falls back to
/// the client address).
fn hash_key(key: &HashKey, head: &RequestHead<'_, '_>, path: &str, ip: &ClientIp) -> u64 {
    let bytes = match key {
        HashKey::ClientIp => ip.as_bytes(),
        HashKey::Path => path.as_bytes(),
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
    direct: &super::route::Direct,
    tally: &Tally,
) -> bool {
    inbuf.consume(req.head_len);
    let keep = consume_buffered_body(inbuf, req.framing) && may_keep_alive(ctx, req);
    let (bytes, head_len) = if keep {
        (&direct.keep_alive, direct.keep_alive_head)
    } else {
        (&direct.close, direct.close_head)
    };
    let len = if req.method == Method::Head {
        head_len
    } else {
        bytes.len()
    };
    tally.answered(direct.status, len);
    let sent = client
        .writer
        .write_shared(bytes.clone(), len, ctx.client().write_timeout)
        .await;
    sent.is_ok() && keep
}

/// Writes a pre-rendered answer; true if it went out and the connection stays.
async fn send_static(ctx: &WorkerCtx, client: &mut Conn, bytes: &'static [u8], keep: bool) -> bool {
    let sent = client
        .writer
        .write_static(bytes, ctx.client().write_timeout)
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
    tally: &Tally,
) -> bool {
    tally.answered(200, req.head_len);
    let sent = client
        .writer
        .write_front(inbuf, req.head_len, ctx.client().write_timeout)
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
async fn answer_failure(
    ctx: &WorkerCtx,
    client: &mut Conn,
    req: &Prepared,
    f: Failure,
    tally: &Tally,
) -> bool {
    tally.failed.set(Some(f.error));
    if f.response_started {
        return false;
    }
    let Some(canned) = canned::for_error(f.error) else {
        return false;
    };
    let keep =
        f.client_reusable && req.keep_alive && req.minor_version == 1 && !f.error.closes_client();
    let bytes = if keep {
        canned.keep_alive
    } else {
        canned.close
    };
    tally.answered(f.error.status().unwrap_or(0), bytes.len());
    let kept = send_static(ctx, client, bytes, keep).await;
    if !keep && !f.client_reusable {
        // The body was not read: let the client finish sending it (bounded)
        // so that it reads the answer instead of meeting a reset.
        client
            .answer_and_linger(
                None,
                ctx.client().write_timeout,
                (LINGER_TIME, LINGER_BYTES),
            )
            .await;
    }
    kept
}

/// A lingering close after an answer sent before the request body was read:
/// at most this long, and this many bytes discarded.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 8 << 20;

/// Answers a rejected request head and closes in stages: half-close, then drain
/// what the client still sends (bounded), so the answer is not lost to a reset.
async fn reject(ctx: &WorkerCtx, client: &mut Conn, e: ProxyError, tally: &Tally) {
    tally.failed.set(Some(e));
    let canned = canned::for_error(e);
    if let Some(canned) = canned {
        tally.answered(e.status().unwrap_or(0), canned.close.len());
    }
    client
        .answer_and_linger(
            canned.map(|c| c.close),
            ctx.client().write_timeout,
            (Duration::from_secs(2), 4 << 20),
        )
        .await;
}

#[cfg(test)]
mod tests {
    use crate::pooled::future_size;

    /// Each request's future must fit a pooled block, or every request would
    /// allocate (the counting-allocator test would catch it too, less directly).
    #[test]
    fn the_request_future_fits_a_pooled_block() {
        let request = future_size::of5(super::handle_request);
        eprintln!("request future: {request} bytes");
        assert!(request <= crate::pooled::BLOCK_SIZE, "{request} bytes");
    }

    /// An idle keep-alive connection costs its task's future: it must stay small
    /// (the request path runs in a pooled block, not inline).
    #[test]
    fn the_connection_task_stays_small() {
        let task = future_size::of5(super::connection);
        eprintln!("connection task future: {task} bytes");
        assert!(task <= 248, "connection future grew to {task} bytes");
    }
}
