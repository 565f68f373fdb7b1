//! End-to-end proxying through the real binary: methods and bodies, keep-alive,
//! pipelining, HTTP/1.0, bodiless responses, header rewriting.

//!
//! Every test runs twice: on io_uring (the default) and with `io = "epoll"`
//! (`on_both_drivers!` below makes `NAME::io_uring` and `NAME::epoll`), and
//! each checks that ringlb really runs on the driver it asked for.

mod common;

use common::client::{get, Client};
use common::origin::Origin;
use common::{proxy_config, Io, Ringlb};
use std::time::Duration;

/// For each test body `NAME(io: Io)`, a module `NAME` with two tests,
/// `io_uring` and `epoll`, that run it on each driver.
macro_rules! on_both_drivers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn io_uring() {
                super::$name(super::Io::Uring)
            }

            #[test]
            fn epoll() {
                super::$name(super::Io::Epoll)
            }
        }
    )*};
}

on_both_drivers!(
    get_and_post_with_length_and_chunked_bodies,
    keep_alive_reuses_one_upstream_connection,
    pipelined_requests_are_answered_in_order,
    http10_clients_close_by_default_and_keep_alive_when_asked,
    head_204_304_have_no_body_and_the_connection_goes_on,
    close_delimited_response_is_reframed_as_chunked,
    headers_are_rewritten,
    expect_100_continue_is_forwarded_without_deadlock,
    balancing_round_robins_over_servers,
    idle_keep_alive_connections_cost_no_cpu,
    fields_with_underscores_are_dropped_passed_or_rejected_as_configured,
    a_later_http_1_minor_version_is_served_as_1_1,
    connect_is_answered_with_501_and_the_connection_closed,
);

/// ringlb on `io` (checked against the driver its worker logs).
fn start(io: Io, config: &str) -> Ringlb {
    let lb = Ringlb::start(config);
    lb.assert_driver(io.driver());
    lb
}

fn setup(io: Io) -> (Origin, Ringlb) {
    let origin = Origin::start();
    let lb = start(io, &proxy_config(&[origin.addr], "", io.top()));
    (origin, lb)
}

fn get_and_post_with_length_and_chunked_bodies(io: Io) {
    let (_o, lb) = setup(io);
    let r = get(lb.addr(), "/");
    assert_eq!((r.status, r.body_str().as_str()), (200, "hello"));
    assert_eq!(r.header("via"), Some("1.1 ringlb"));

    let mut c = Client::connect(lb.addr());
    c.send(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 11\r\n\r\nhello world");
    let r = c.read_response(false);
    assert_eq!((r.status, r.body_str().as_str()), (200, "hello world"));

    c.send(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!((r.status, r.body_str().as_str()), (200, "hello world"));

    // Chunked body sent in pieces, with pauses, on the same connection.
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    );
    std::thread::sleep(Duration::from_millis(50));
    c.send(b"4\r\ndefg\r\n");
    std::thread::sleep(Duration::from_millis(50));
    c.send(b"0\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!((r.status, r.body_str().as_str()), (200, "abcdefg"));

    // Chunked response passes through to an HTTP/1.1 client.
    c.send(b"GET /chunked HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body_str(), "hello, world");
}

fn keep_alive_reuses_one_upstream_connection(io: Io) {
    let (origin, lb) = setup(io);
    let mut c = Client::connect(lb.addr());
    for i in 0..100 {
        c.send(
            format!(
                "GET /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n\r\n{}",
                i % 10
            )
            .as_bytes(),
        );
        let r = c.read_response(false);
        assert_eq!(r.status, 200);
    }
    assert_eq!(origin.requests(), 100);
    assert_eq!(
        origin.connections(),
        1,
        "all 100 requests should share one pooled upstream connection"
    );
}

fn pipelined_requests_are_answered_in_order(io: Io) {
    let (_o, lb) = setup(io);
    let mut c = Client::connect(lb.addr());
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nfirstGET /slow/50 HTTP/1.1\r\nHost: localhost\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nthird",
    );
    assert_eq!(c.read_response(false).body_str(), "first");
    assert_eq!(c.read_response(false).body_str(), "slow");
    assert_eq!(c.read_response(false).body_str(), "third");
}

fn http10_clients_close_by_default_and_keep_alive_when_asked(io: Io) {
    let (_o, lb) = setup(io);
    let mut c = Client::connect(lb.addr());
    c.send(b"GET / HTTP/1.0\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!((r.status, r.body_str().as_str()), (200, "hello"));
    assert!(
        c.is_closed_by_peer(Duration::from_secs(5)),
        "HTTP/1.0 without keep-alive must be closed"
    );

    let mut c = Client::connect(lb.addr());
    c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.header("connection"), Some("keep-alive"));
    c.send(b"GET /chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.read_response(false);
    assert!(
        r.header("transfer-encoding").is_none(),
        "no chunked framing to HTTP/1.0: {}",
        r.head
    );
    assert_eq!(r.body_str(), "hello, world");
    assert!(c.is_closed_by_peer(Duration::from_secs(5)));
}

fn head_204_304_have_no_body_and_the_connection_goes_on(io: Io) {
    let (_o, lb) = setup(io);
    let mut c = Client::connect(lb.addr());
    c.send(b"HEAD /bytes/1000 HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let r = c.read_response(true);
    assert_eq!((r.status, r.header("content-length")), (200, Some("1000")));
    for code in [204, 304] {
        c.send(format!("GET /status/{code} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes());
        let r = c.read_response(false);
        assert_eq!(r.status, code, "{}", lb.log_text());
    }
    c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(
        (r.status, r.body_str().as_str()),
        (200, "hello"),
        "stream stayed in sync"
    );
}

fn close_delimited_response_is_reframed_as_chunked(io: Io) {
    let (_o, lb) = setup(io);
    let mut c = Client::connect(lb.addr());
    c.send(b"GET /close HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{}", r.head);
    assert_eq!(r.body_str(), "until close");
    c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(
        c.read_response(false).body_str(),
        "hello",
        "client connection kept alive"
    );
}

fn headers_are_rewritten(io: Io) {
    let (origin, lb) = setup(io);
    let mut c = Client::connect(lb.addr());
    c.send(
        b"GET /head HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive, X-Private\r\nX-Private: secret\r\n\
          Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\n\
          X-Forwarded-For: 203.0.113.7\r\nAccept: */*\r\n\r\n",
    );
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    let head = origin.heads().pop().unwrap();
    assert!(head.starts_with("GET /head HTTP/1.1\r\n"), "{head}");
    for gone in [
        "x-private",
        "keep-alive",
        "te:",
        "proxy-connection",
        "upgrade",
        "connection",
    ] {
        assert!(
            !head.to_ascii_lowercase().contains(&format!("\n{gone}")),
            "{gone} was forwarded:\n{head}"
        );
    }
    assert!(
        head.contains("\r\nX-Forwarded-For: 203.0.113.7, 127.0.0.1\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nX-Forwarded-Proto: http\r\n"), "{head}");
    assert!(head.contains("\r\nVia: 1.1 ringlb\r\n"), "{head}");
    assert!(head.contains("\r\nAccept: */*\r\n"), "{head}");
    assert_eq!(r.header("x-origin"), Some("test"));
    assert_eq!(r.header("via"), Some("1.1 ringlb"));
}

fn expect_100_continue_is_forwarded_without_deadlock(io: Io) {
    let (_o, lb) = setup(io);
    let mut c = Client::connect(lb.addr());
    c.send(b"POST /continue HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    let interim = c.try_read_any(false).expect("100 Continue");
    assert_eq!(interim.status, 100);
    c.send(b"body");
    let r = c.read_response(false);
    assert_eq!((r.status, r.body_str().as_str()), (200, "body"));
}

fn balancing_round_robins_over_servers(io: Io) {
    let a = Origin::start();
    let b = Origin::start();
    let lb = start(io, &proxy_config(&[a.addr, b.addr], "", io.top()));
    for _ in 0..10 {
        assert_eq!(get(lb.addr(), "/").status, 200);
    }
    assert_eq!((a.requests(), b.requests()), (5, 5));
}

/// An idle keep-alive connection costs no CPU on either driver (readiness is
/// awaited, never spun on), also right after a request was read.
fn idle_keep_alive_connections_cost_no_cpu(io: Io) {
    let lb = start(
        io,
        &format!(
            "workers = 1\n{}\n[[listener]]\nlisten = \"127.0.0.1:0\"\nstatus = 200\nbody = \"ok\"\n",
            io.top()
        ),
    );
    let mut clients: Vec<Client> = (0..20).map(|_| Client::connect(lb.addr())).collect();
    for c in &mut clients {
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(c.read_response(false).status, 200);
    }
    std::thread::sleep(Duration::from_millis(100));
    let before = lb.cpu_ns();
    std::thread::sleep(Duration::from_secs(1));
    let idle = Duration::from_nanos(lb.cpu_ns() - before);
    eprintln!("{io:?}: {idle:?} of CPU in 1 s with 20 idle keep-alive connections");
    assert!(
        idle < Duration::from_millis(100),
        "{io:?}: {idle:?} busy while idle"
    );
}

fn fields_with_underscores_are_dropped_passed_or_rejected_as_configured(io: Io) {
    let origin = Origin::start();
    let request = b"GET /head HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 6.6.6.6\r\nX-Ok: 1\r\n\r\n";
    for (policy, status, forwarded) in [
        (None, 200, false),
        (Some("drop"), 200, false),
        (Some("pass"), 200, true),
        (Some("reject"), 400, false),
    ] {
        let top = policy.map_or(io.top().to_string(), |p| {
            format!("{}\n[client]\nheaders_with_underscores = \"{p}\"", io.top())
        });
        let lb = start(io, &proxy_config(&[origin.addr], "", &top));
        let mut c = Client::connect(lb.addr());
        c.send(request);
        let r = c.read_response(false);
        assert_eq!(r.status, status, "{policy:?}");
        if status == 200 {
            let head = r.body_str();
            assert_eq!(
                head.contains("X_Forwarded_For: 6.6.6.6"),
                forwarded,
                "{policy:?}: {head}"
            );
            assert!(
                head.contains("X-Ok: 1") && head.contains("X-Forwarded-For: 127.0.0.1"),
                "{head}"
            );
        }
    }
}

fn a_later_http_1_minor_version_is_served_as_1_1(io: Io) {
    let (origin, lb) = setup(io);
    let mut c = Client::connect(lb.addr());
    for _ in 0..2 {
        c.send_raw(b"GET /head HTTP/1.2\r\nHost: x\r\n\r\n");
        let r = c.read_response(false);
        assert_eq!(r.status, 200);
        assert!(r.head.starts_with("HTTP/1.1 200"), "{}", r.head);
    }
    let head = origin.heads().pop().unwrap();
    assert!(head.starts_with("GET /head HTTP/1.1\r\n"), "{head}");
    // Other versions are still refused.
    for line in ["GET / HTTP/2.0", "GET / HTTP/1.10", "GET / HTTP/0.9"] {
        let mut c = Client::connect(lb.addr());
        c.send_raw(format!("{line}\r\nHost: x\r\n\r\n").as_bytes());
        assert_eq!(c.read_response(false).status, 400, "{line}");
    }
}

/// CONNECT is not proxied: exactly 501 (not 400 or 405), then the connection
/// closes, and nothing reaches a backend.
fn connect_is_answered_with_501_and_the_connection_closed(io: Io) {
    let (origin, lb) = setup(io);
    for request in [
        &b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"[..],
        // What a tunnelling client sends next must not be read as a request.
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut c = Client::connect(lb.addr());
        c.send_raw(request);
        let r = c.read_response(false);
        assert_eq!(r.status, 501, "{}", r.head);
        assert_eq!(r.header("connection"), Some("close"), "{}", r.head);
        // At once (ringlb half-closes after the answer), not at the end of
        // its 2 s drain of what the client still sends.
        assert!(
            c.is_closed_by_peer(Duration::from_millis(1500)),
            "connection left open after 501"
        );
    }
    assert_eq!(origin.requests(), 0, "CONNECT reached the origin");
}
