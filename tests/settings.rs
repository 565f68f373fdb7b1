//! Settings from the README's configuration reference, each observed through
//! the real binary: ring setup and size, client idle and write timeouts, the
//! upstream pool's idle timeout and size, retries of non-idempotent requests,
//! and the response timeout inside a body and during an upload.

mod common;

use common::client::{get, Client};
use common::origin::{checksum, pattern, read_head, token_field, Origin, Stats};
use common::{eventually, proxy_config, Ringlb};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// uring_setup and ring_entries

/// Keep-alive, pipelining and large bodies both ways under `top`, on a worker
/// that logged `driver` and whose ring has `sq_entries` submission entries
/// (read from /proc/PID/fdinfo, so a setting that is ignored fails).
fn smoke(top: &str, driver: &str, sq_entries: u32) {
    let origin = Origin::start();
    let lb = Ringlb::start(&proxy_config(&[origin.addr], "", top));
    lb.assert_driver(driver);
    let rings = lb.uring_sq_entries();
    eprintln!("{top:?}: driver {:?}, ring sizes {rings:?}", lb.drivers());
    assert!(
        !rings.is_empty() && rings.iter().all(|&n| n == sq_entries),
        "{top:?}: rings {rings:?}, expected {sq_entries} entries each"
    );

    // Keep-alive: one client connection, one upstream connection.
    let mut c = Client::connect(lb.addr());
    for i in 0..20 {
        let body = format!("request {i}");
        c.send(
            format!(
                "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        let r = c.read_response(false);
        assert_eq!((r.status, r.body_str()), (200, body));
    }

    // Pipelining: four requests in one write, answered in order.
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nfirst\
          GET /slow/30 HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nfourth",
    );
    for want in ["first", "slow", "hello, world", "fourth"] {
        assert_eq!(c.read_response(false).body_str(), want);
    }

    // A large response and a large upload on the same connection.
    const DOWN: u64 = 8 << 20;
    c.send(format!("GET /bytes/{DOWN} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len() as u64, DOWN);
    assert!(
        r.body
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(i as u64)),
        "response body corrupted"
    );
    let up: Vec<u8> = (0..4u32 << 20).map(|i| (i % 253) as u8).collect();
    let mut req = format!(
        "POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        up.len()
    )
    .into_bytes();
    req.extend_from_slice(&up);
    c.send(&req);
    let r = c.read_response(false);
    assert_eq!(
        r.body_str(),
        format!("count={} sum={}", up.len(), checksum(up.iter().copied()))
    );

    assert_eq!(origin.requests(), 26);
    assert_eq!(
        origin.connections(),
        1,
        "every request should share one pooled upstream connection"
    );
}

#[test]
fn uring_setup_defer_proxies_keep_alive_pipelining_and_large_bodies() {
    smoke(
        "uring_setup = \"defer\"",
        "io_uring (defer_taskrun, single_issuer)",
        1024,
    );
}

#[test]
fn uring_setup_plain_proxies_keep_alive_pipelining_and_large_bodies() {
    smoke("uring_setup = \"plain\"", "io_uring (no setup flags)", 1024);
}

#[test]
fn ring_entries_256_proxies_keep_alive_pipelining_and_large_bodies() {
    smoke(
        "ring_entries = 256",
        "io_uring (coop_taskrun, single_issuer)",
        256,
    );
}

#[test]
fn ring_entries_4096_proxies_keep_alive_pipelining_and_large_bodies() {
    smoke(
        "ring_entries = 4096\nuring_setup = \"defer\"",
        "io_uring (defer_taskrun, single_issuer)",
        4096,
    );
}

// ---------------------------------------------------------------------------
// [client] idle_timeout and write_timeout

/// A keep-alive connection left idle past `idle_timeout` is closed (not
/// before); one used more often than that stays open however long it lives.
#[test]
fn client_idle_timeout_closes_an_idle_connection_and_not_a_used_one() {
    let origin = Origin::start();
    let lb = Ringlb::start(&proxy_config(
        &[origin.addr],
        "",
        "[client]\nidle_timeout = \"500ms\"",
    ));
    let addr = lb.addr();
    // Used every 150 ms for 1.2 s, more than twice the idle timeout.
    let busy = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        for i in 0..8 {
            c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            let r = c.read_response(false);
            assert_eq!(r.status, 200, "request {i} on the busy connection");
            std::thread::sleep(Duration::from_millis(150));
        }
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(c.read_response(false).status, 200, "busy connection kept");
        c
    });
    let mut idle = Client::connect(lb.addr());
    idle.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(idle.read_response(false).status, 200);
    let since = Instant::now();
    assert!(
        idle.is_closed_by_peer(Duration::from_secs(3)),
        "idle keep-alive connection still open after 3 s (idle_timeout 500 ms)"
    );
    let closed_after = since.elapsed();
    eprintln!("idle connection closed after {closed_after:?} (idle_timeout 500 ms)");
    assert!(
        closed_after >= Duration::from_millis(450),
        "closed after {closed_after:?}, before idle_timeout (500 ms)"
    );
    let mut busy = busy.join().unwrap();
    // Left idle in turn, the busy connection closes too.
    assert!(busy.is_closed_by_peer(Duration::from_secs(3)));
}

/// What the write-timeout origin saw: when ringlb stopped taking its body.
#[derive(Default)]
struct StallRecord {
    failed_at: Mutex<Option<Instant>>,
    sent: Mutex<u64>,
}

/// A client that stops reading a large response has its connection closed
/// about `write_timeout` later (ringlb closes both sides, which the origin
/// sees as a failed write), and ringlb serves other clients meanwhile.
#[test]
fn client_write_timeout_closes_a_client_that_stops_reading() {
    const HUGE: u64 = 1 << 30;
    let record = Arc::new(StallRecord::default());
    let rec = record.clone();
    let origin = Origin::with_handler(Arc::new(move |mut s: TcpStream, stats: &Stats| {
        let mut buf = Vec::new();
        while let Some(head) = read_head(&mut s, &mut buf) {
            stats.requests.fetch_add(1, Ordering::SeqCst);
            let token = token_field(&head);
            if !head.starts_with("GET /huge ") {
                let r = format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n{token}\r\nhello");
                if s.write_all(r.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
            let r = format!("HTTP/1.1 200 OK\r\nContent-Length: {HUGE}\r\n{token}\r\n");
            let _ = s.write_all(r.as_bytes());
            let chunk = vec![b'x'; 64 * 1024];
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut sent = 0u64;
            while sent < HUGE && Instant::now() < deadline {
                match s.write(&chunk) {
                    Ok(n) => sent += n as u64,
                    Err(_) => {
                        *rec.failed_at.lock().unwrap() = Some(Instant::now());
                        break;
                    }
                }
            }
            *rec.sent.lock().unwrap() = sent;
            return;
        }
    }));
    let lb = Ringlb::start(&proxy_config(
        &[origin.addr],
        "",
        "[client]\nwrite_timeout = \"500ms\"",
    ));

    // A small receive buffer, so ringlb's writes stall soon.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    socket.connect(&lb.addr().into()).unwrap();
    let mut stalled: TcpStream = socket.into();
    let start = Instant::now();
    stalled
        .write_all(b"GET /huge HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();

    // Others are served while that client stalls.
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..3 {
        let t = Instant::now();
        assert_eq!(get(lb.addr(), "/").status, 200);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    eventually(
        "ringlb to give up on the stalled client (origin write fails)",
        Duration::from_secs(5),
        || record.failed_at.lock().unwrap().is_some(),
    );
    let gave_up = record.failed_at.lock().unwrap().unwrap() - start;
    eprintln!(
        "stalled client dropped {gave_up:?} after its request (write_timeout 500 ms), \
         origin had sent {} bytes",
        *record.sent.lock().unwrap()
    );
    assert!(
        gave_up >= Duration::from_millis(450),
        "gave up after {gave_up:?}, before write_timeout (500 ms)"
    );

    // The stalled client finds its connection closed: what was buffered, then
    // EOF (or a reset), never the whole body.
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = 0u64;
    let mut first = Vec::new();
    let mut tmp = vec![0u8; 256 * 1024];
    let read_until = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < read_until, "still reading after 10 s");
        match stalled.read(&mut tmp) {
            Ok(0) => break,
            Ok(n) => {
                if first.len() < 64 {
                    first.extend_from_slice(&tmp[..n.min(64)]);
                }
                got += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("stalled client's connection left open: {e}"),
        }
    }
    assert!(
        first.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{:?}",
        String::from_utf8_lossy(&first)
    );
    assert!(got < HUGE, "the whole body arrived");

    // ringlb serves on.
    assert_eq!(get(lb.addr(), "/").status, 200);
}

// ---------------------------------------------------------------------------
// [[upstream]] idle_timeout and max_idle

/// A pooled connection is reused while its idle time stays under the
/// upstream's `idle_timeout` (however old it is), and not once it was idle longer.
#[test]
fn upstream_idle_timeout_retires_pooled_connections() {
    let origin = Origin::start();
    let lb = Ringlb::start(&proxy_config(
        &[origin.addr],
        "idle_timeout = \"400ms\"",
        "",
    ));
    let mut c = Client::connect(lb.addr());
    let request = |c: &mut Client| {
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(c.read_response(false).status, 200);
    };
    // Four requests 150 ms apart: 450 ms in all, each gap under the timeout.
    for i in 0..4 {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(150));
        }
        request(&mut c);
        assert_eq!(origin.connections(), 1, "request {i}: pooled one reused");
    }
    std::thread::sleep(Duration::from_millis(700));
    request(&mut c);
    assert_eq!(
        origin.connections(),
        2,
        "a connection idle for 700 ms (idle_timeout 400 ms) was reused"
    );
    request(&mut c);
    assert_eq!(origin.connections(), 2, "the new one is pooled in turn");
}

/// An origin whose answers wait until `gate` opens (so that requests overlap).
fn gated_origin(gate: Arc<AtomicBool>) -> Origin {
    Origin::with_handler(Arc::new(move |mut s: TcpStream, stats: &Stats| {
        let mut buf = Vec::new();
        while let Some(head) = read_head(&mut s, &mut buf) {
            stats.requests.fetch_add(1, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !gate.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            let r = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n{}\r\nhello",
                token_field(&head)
            );
            if s.write_all(r.as_bytes()).is_err() {
                return;
            }
        }
    }))
}

/// Sends one request on each client at once, waits until the origin holds all
/// of them, then lets them be answered.
fn overlapping_round(clients: &mut [Client], origin: &Origin, gate: &AtomicBool) {
    gate.store(false, Ordering::SeqCst);
    let before = origin.requests();
    for c in clients.iter_mut() {
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    eventually(
        "every request of the round at the origin",
        Duration::from_secs(5),
        || origin.requests() == before + clients.len(),
    );
    gate.store(true, Ordering::SeqCst);
    for c in clients.iter_mut() {
        assert_eq!(c.read_response(false).status, 200);
    }
    // Check-in follows the last byte written to the client.
    std::thread::sleep(Duration::from_millis(100));
}

/// `max_idle = 2`: after five overlapping requests, two connections stay
/// pooled: five more overlapping requests open exactly three new ones.
#[test]
fn max_idle_caps_the_pooled_connections_per_server() {
    let gate = Arc::new(AtomicBool::new(false));
    let origin = gated_origin(gate.clone());
    let lb = Ringlb::start(&proxy_config(&[origin.addr], "max_idle = 2", ""));
    let mut clients: Vec<Client> = (0..5).map(|_| Client::connect(lb.addr())).collect();
    overlapping_round(&mut clients, &origin, &gate);
    assert_eq!(origin.connections(), 5);
    overlapping_round(&mut clients, &origin, &gate);
    let new = origin.connections() - 5;
    eprintln!("max_idle = 2: {new} new upstream connections for 5 overlapping requests");
    assert_eq!(new, 3, "two pooled connections reused, three opened");
    // One at a time: the pooled ones serve, nothing new.
    for c in clients.iter_mut().take(3) {
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(c.read_response(false).status, 200);
    }
    assert_eq!(origin.connections(), 8);
}

/// `max_idle = 0` keeps no connection: every request opens its own.
#[test]
fn max_idle_0_keeps_no_pooled_connection() {
    let origin = Origin::start();
    let lb = Ringlb::start(&proxy_config(&[origin.addr], "max_idle = 0", ""));
    let mut c = Client::connect(lb.addr());
    for i in 0..5 {
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(c.read_response(false).status, 200, "request {i}");
    }
    assert_eq!(origin.requests(), 5);
    assert_eq!(origin.connections(), 5, "a connection was pooled");
}

// ---------------------------------------------------------------------------
// retry_non_idempotent

/// An origin that reads a request (head and Content-Length body), counts it,
/// and closes the connection without answering.
fn origin_dying_after_the_request() -> Origin {
    Origin::with_handler(Arc::new(|mut s: TcpStream, stats: &Stats| {
        let mut buf = Vec::new();
        let Some(head) = read_head(&mut s, &mut buf) else {
            return;
        };
        let len: usize = common::origin::header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut tmp = [0u8; 4096];
        while buf.len() < len {
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        stats.requests.fetch_add(1, Ordering::SeqCst);
        stats.heads.lock().unwrap().push(head);
    }))
}

/// Two POSTs on fresh connections over a pool of a dying and a healthy server:
/// round robin sends one of them to the dying server first. Returns the statuses.
fn two_posts(lb: &Ringlb) -> Vec<u16> {
    let mut statuses: Vec<u16> = (0..2)
        .map(|_| {
            let mut c = Client::connect(lb.addr());
            c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\npayload");
            let r = c.read_response(false);
            if r.status == 200 {
                assert_eq!(r.body_str(), "payload");
            }
            r.status
        })
        .collect();
    statuses.sort_unstable();
    statuses
}

/// By default a POST whose server died after receiving it is answered 502
/// and never sent to another server.
#[test]
fn a_post_that_reached_a_dying_server_is_not_resent_by_default() {
    let dying = origin_dying_after_the_request();
    let healthy = Origin::start();
    let lb = Ringlb::start(&proxy_config(&[dying.addr, healthy.addr], "", ""));
    let statuses = two_posts(&lb);
    assert_eq!(statuses, vec![200, 502], "{}", lb.log_text());
    assert_eq!(
        (dying.requests(), healthy.requests()),
        (1, 1),
        "the POST that reached the dying server was sent again"
    );
    // A GET in the same situation is re-sent (idempotent).
    let mut c = Client::connect(lb.addr());
    for _ in 0..2 {
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(c.read_response(false).status, 200);
    }
    assert_eq!((dying.requests(), healthy.requests()), (2, 3));
}

/// With `retry_non_idempotent = true` the same POST goes to the other server
/// and succeeds.
#[test]
fn retry_non_idempotent_resends_a_post_to_another_server() {
    let dying = origin_dying_after_the_request();
    let healthy = Origin::start();
    let lb = Ringlb::start(&proxy_config(
        &[dying.addr, healthy.addr],
        "retry_non_idempotent = true",
        "",
    ));
    let statuses = two_posts(&lb);
    assert_eq!(statuses, vec![200, 200], "{}", lb.log_text());
    assert_eq!(
        (dying.requests(), healthy.requests()),
        (1, 2),
        "one POST tried on the dying server, then re-sent"
    );
}

/// A POST is never written into a pooled connection its backend closed while
/// it sat idle: it goes out on a fresh connection, and reaches the backend once.
#[test]
fn a_post_never_goes_into_a_pooled_connection_the_backend_closed() {
    let origin = Origin::closing_idle_after(Duration::from_millis(50));
    let lb = Ringlb::start(&proxy_config(&[origin.addr], "", ""));
    let mut c = Client::connect(lb.addr());
    let mut tokens = Vec::new();
    for i in 0..4 {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(150));
        }
        tokens.push(c.next_token());
        let body = format!("post {i}");
        c.send(
            format!(
                "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        let r = c.read_response(false);
        assert_eq!((r.status, r.body_str()), (200, body), "{}", lb.log_text());
    }
    let heads = origin.heads();
    assert_eq!(heads.len(), 4, "{heads:?}");
    for t in &tokens {
        assert_eq!(
            heads.iter().filter(|h| h.contains(t.as_str())).count(),
            1,
            "POST {t} seen other than once at the origin"
        );
    }
    assert_eq!(origin.connections(), 4, "each POST on a fresh connection");
}

// ---------------------------------------------------------------------------
// response_timeout

/// A pause inside the response body longer than `response_timeout` closes the
/// client connection (after the part already relayed, no second status).
#[test]
fn response_timeout_bounds_a_pause_inside_the_response_body() {
    let origin = Origin::with_handler(Arc::new(|mut s: TcpStream, _: &Stats| {
        let mut buf = Vec::new();
        let Some(head) = read_head(&mut s, &mut buf) else {
            return;
        };
        let r = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n{}\r\n",
            token_field(&head)
        );
        let _ = s.write_all(r.as_bytes());
        let _ = s.write_all(&[b'a'; 5000]);
        std::thread::sleep(Duration::from_secs(3));
        let _ = s.write_all(&[b'b'; 5000]);
        std::thread::sleep(Duration::from_secs(3));
    }));
    let lb = Ringlb::start(&proxy_config(
        &[origin.addr],
        "response_timeout = \"400ms\"",
        "",
    ));
    let mut c = Client::connect(lb.addr());
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    c.stream
        .set_read_timeout(Some(Duration::from_millis(2500)))
        .unwrap();
    let mut got = Vec::new();
    let mut half_at = None;
    let mut tmp = [0u8; 65536];
    let start = Instant::now();
    loop {
        match c.stream.read(&mut tmp) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "client left hanging {:?} after the request: {e}",
                start.elapsed()
            ),
        }
        if half_at.is_none() && got.ends_with(&[b'a'; 5000]) {
            half_at = Some(Instant::now());
        }
    }
    let half_at = half_at.expect("the first half of the body arrived");
    let closed_after = half_at.elapsed();
    let text = String::from_utf8_lossy(&got);
    eprintln!("closed {closed_after:?} into the pause (response_timeout 400 ms)");
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "a second status: {text}"
    );
    let body = &got[text.find("\r\n\r\n").expect("a complete head") + 4..];
    assert_eq!(body.len(), 5000, "the body went on after the pause");
    assert!(body.iter().all(|&b| b == b'a'));
    assert!(
        closed_after >= Duration::from_millis(350),
        "closed {closed_after:?} into the pause, before response_timeout (400 ms)"
    );
}

/// The response timeout starts once the request body is all sent: an upload
/// that trickles in for 1.4 s, pausing 350 ms at a time (each pause longer than
/// `response_timeout`, shorter than `body_timeout`), still succeeds.
#[test]
fn response_timeout_starts_once_the_request_body_is_sent() {
    let origin = Origin::start();
    let lb = Ringlb::start(&proxy_config(
        &[origin.addr],
        "response_timeout = \"200ms\"",
        "[client]\nbody_timeout = \"2s\"",
    ));
    let body: Vec<u8> = (0..500u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut c = Client::connect(lb.addr());
    let start = Instant::now();
    c.send(
        format!(
            "POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    // The body goes out raw, so that a connection ringlb closed early shows
    // its answer instead of failing the write.
    let mut cut_short = None;
    for (i, part) in body.chunks(100).enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(350));
        }
        if let Err(e) = c.stream.write_all(part) {
            cut_short = Some(format!("part {i} after {:?}: {e}", start.elapsed()));
            break;
        }
    }
    let r = c.read_response(false);
    eprintln!("upload of {:?} answered {}", start.elapsed(), r.status);
    assert_eq!(
        r.status,
        200,
        "upload cut short: {cut_short:?}\n{}\n{}",
        r.head,
        lb.log_text()
    );
    assert_eq!(
        r.body_str(),
        format!("count=500 sum={}", checksum(body.iter().copied()))
    );
    // The same connection goes on.
    c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read_response(false).body_str(), "hello");
}
