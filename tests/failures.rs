//! Upstream and client failures map to the DESIGN status table, and nobody hangs.

mod common;

use common::client::{get, Client};
use common::origin::{dead_addr, Origin};
use common::{proxy_config, Ringlb};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn dead_upstream_is_502_then_a_fast_503_and_the_client_connection_survives() {
    let lb = Ringlb::start(&proxy_config(&[dead_addr()], "", ""));
    let mut c = Client::connect(lb.addr());
    // Many on one connection: each failed request must be consumed, not re-parsed.
    // The refused connect holds the server back at once (no streak needed): fast
    // 503s without a connect attempt, one new try per hold (1 s).
    let start = Instant::now();
    let statuses: Vec<u16> = (0..100)
        .map(|_| {
            c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
            let r = c.read_response(false);
            if r.status == 503 {
                assert_eq!(r.header("retry-after"), Some("1"));
            }
            r.status
        })
        .collect();
    let holds = start.elapsed().as_secs() as usize + 1;
    let bad_gateways = statuses.iter().filter(|&&s| s == 502).count();
    assert_eq!(statuses[0], 502);
    assert!(
        statuses.iter().all(|&s| s == 502 || s == 503),
        "{statuses:?}"
    );
    assert!(bad_gateways <= holds, "one connect per hold: {statuses:?}");
    assert!(
        lb.log_contains("connect failed: ConnectionRefused"),
        "{}",
        lb.log_text()
    );
    assert!(lb.log_contains("held back"), "{}", lb.log_text());
}

#[test]
fn upstream_reset_mid_head_is_502() {
    let origin = Origin::with_handler(Arc::new(|mut s: TcpStream, _| {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Le");
        let sock = socket2::SockRef::from(&s);
        let _ = sock.set_linger(Some(Duration::ZERO)); // close -> RST
    }));
    let lb = Ringlb::start(&proxy_config(&[origin.addr], "", ""));
    assert_eq!(get(lb.addr(), "/").status, 502);
}

#[test]
fn upstream_closing_without_answer_is_502() {
    let origin = Origin::with_handler(Arc::new(|mut s: TcpStream, _| {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
    }));
    let lb = Ringlb::start(&proxy_config(&[origin.addr], "", ""));
    assert_eq!(get(lb.addr(), "/").status, 502);
}

#[test]
fn garbage_response_is_502() {
    let origin = Origin::with_handler(Arc::new(|mut s: TcpStream, _| {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"SSH-2.0-OpenSSH\r\n\r\n");
    }));
    let lb = Ringlb::start(&proxy_config(&[origin.addr], "", ""));
    assert_eq!(get(lb.addr(), "/").status, 502);
}

#[test]
fn silent_upstream_is_504_within_the_timeout() {
    let origin = Origin::with_handler(Arc::new(|mut s: TcpStream, _| {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        std::thread::sleep(Duration::from_secs(10)); // never answers in time
    }));
    let lb = Ringlb::start(&proxy_config(
        &[origin.addr],
        "response_timeout = \"400ms\"",
        "",
    ));
    let start = Instant::now();
    let r = get(lb.addr(), "/");
    let took = start.elapsed();
    assert_eq!(r.status, 504);
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(3),
        "took {took:?}"
    );
}

#[test]
fn connect_timeout_is_504() {
    // A listener whose backlog is full never completes new handshakes.
    let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    l.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let _fill: Vec<_> = (0..8)
        .map(|_| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.set_nonblocking(true).unwrap();
            let _ = s.connect(&addr.into());
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let lb = Ringlb::start(&proxy_config(&[addr], "connect_timeout = \"300ms\"", ""));
    let start = Instant::now();
    let r = get(lb.addr(), "/");
    assert_eq!(r.status, 504);
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn content_length_with_transfer_encoding_is_400_and_closed() {
    let origin = Origin::start();
    let lb = Ringlb::start(&proxy_config(&[origin.addr], "", ""));
    let mut c = Client::connect(lb.addr());
    c.send(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG");
    let r = c.read_response(false);
    assert_eq!(r.status, 400);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed_by_peer(Duration::from_secs(5)));
    assert_eq!(origin.requests(), 0, "nothing may reach the upstream");
    common::eventually("a log line with the reason", Duration::from_secs(5), || {
        lb.log_contains("both Content-Length and Transfer-Encoding")
    });
}

#[test]
fn malformed_requests_get_their_status() {
    let origin = Origin::start();
    let lb = Ringlb::start(&proxy_config(
        &[origin.addr],
        "",
        "[client]\nmax_request_line_bytes = 1024\nmax_head_bytes = 4096",
    ));
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n folded\r\n\r\n".to_vec(),
            400,
        ),
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
            400,
        ),
        (
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(2000)).into_bytes(),
            414,
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "b".repeat(5000)
            )
            .into_bytes(),
            431,
        ),
    ];
    for (req, status) in cases {
        let mut c = Client::connect(lb.addr());
        c.send(&req);
        let r = c.read_response(false);
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&req));
        assert!(c.is_closed_by_peer(Duration::from_secs(5)));
    }
    assert_eq!(origin.requests(), 0);
}

#[test]
fn slowloris_head_times_out() {
    let origin = Origin::start();
    let lb = Ringlb::start(&proxy_config(
        &[origin.addr],
        "",
        "[client]\nhead_timeout = \"600ms\"",
    ));
    let mut c = Client::connect(lb.addr());
    // A byte every 100 ms: each read is quick, the head never ends. A timer
    // per read would never fire; the head's own deadline must.
    c.stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let drip = b"GET / HTTP/1.1\r\nHost: x\r\nX-Drip: ";
    for b in drip.iter().chain(std::iter::repeat(&b'a')) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no answer to the drip"
        );
        if c.stream.write_all(&[*b]).is_err() {
            break;
        }
        let mut tmp = [0u8; 256];
        match c.stream.read(&mut tmp) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&tmp[..n]);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(_) => {} // 100 ms passed: the next byte
        }
    }
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 408 "),
        "after {took:?}: {text:?}"
    );
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_millis(1500),
        "408 after {took:?}, head_timeout 600 ms"
    );
}

#[test]
fn keep_alive_race_is_retried_on_a_fresh_connection() {
    // The origin closes idle keep-alive connections after 50 ms.
    let origin = Origin::closing_idle_after(Duration::from_millis(50));
    let lb = Ringlb::start(&proxy_config(&[origin.addr], "", ""));
    let mut c = Client::connect(lb.addr());
    for _ in 0..5 {
        c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let r = c.read_response(false);
        assert_eq!(
            (r.status, r.body_str().as_str()),
            (200, "hello"),
            "{}",
            lb.log_text()
        );
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(
        origin.connections() >= 5,
        "each request needed a new upstream connection"
    );
}

#[test]
fn response_cut_short_closes_the_client() {
    let origin = Origin::with_handler(Arc::new(|mut s: TcpStream, _| {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n");
        let _ = s.write_all(&[b'x'; 1000]);
    }));
    let lb = Ringlb::start(&proxy_config(&[origin.addr], "", ""));
    let mut c = Client::connect(lb.addr());
    c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut got = Vec::new();
    let start = Instant::now();
    // EOF or a reset within about 2 s; a read that times out is a hung client.
    c.stream
        .set_read_timeout(Some(Duration::from_millis(2500)))
        .unwrap();
    let mut tmp = [0u8; 65536];
    loop {
        match c.stream.read(&mut tmp) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("client left hanging after {:?}: {e}", start.elapsed()),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(got.len() < 65536, "short body, then close");
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "no second status after the short body: {text}"
    );
}

/// Two origins behind a ringlb whose descriptor table is full: connecting
/// upstream fails with EMFILE, ringlb's own limit. The answer is a 503 with
/// Retry-After, and neither server is blamed (no ejection, no hold): once
/// descriptors are free again, both serve at once.
#[test]
fn out_of_descriptors_is_a_local_503_that_blames_no_server() {
    const LIMIT: usize = 48;
    let a = Origin::start();
    let b = Origin::start();
    // A connection cap the descriptor limit cannot hold (warned about at
    // start), so that the table, not the cap, runs out.
    let top = "[limits]\nmax_connections = 1000";
    let cfg = proxy_config(&[a.addr, b.addr], "max_idle = 0", top);
    let lb = Ringlb::start_with(&cfg, common::with_nofile(LIMIT as u64));
    assert!(
        lb.log_contains("needs more than the open-file limit (48)"),
        "{}",
        lb.log_text()
    );
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", lb.pid()))
            .unwrap()
            .count()
    };
    let mut client = Client::connect(lb.addr());
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(client.read_response(false).status, 200);
    // Idle clients until ringlb cannot accept any more: then its table is
    // full for certain (a count of /proc/PID/fd can include a descriptor whose
    // close is still queued in the ring). A failed accept is retried every
    // 20 ms, and logged.
    let mut fillers = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lb.log_text().matches("accept failed").count() < 2 {
        assert!(Instant::now() < deadline, "descriptors stuck at {}", fds());
        if fillers.len() < 2 * LIMIT {
            fillers.push(TcpStream::connect(lb.addr()).unwrap());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for _ in 0..10 {
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let r = client.read_response(false);
        assert_eq!(
            (r.status, r.header("retry-after"), r.body_str().as_str()),
            (503, Some("1"), "proxy out of local resources\n"),
            "{}",
            lb.log_text()
        );
    }
    assert!(lb.log_contains("EMFILE"), "{}", lb.log_text());
    drop(fillers);
    common::eventually("descriptors freed", Duration::from_secs(5), || {
        fds() < LIMIT - 8
    });
    let (a0, b0) = (a.requests(), b.requests());
    for _ in 0..4 {
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(client.read_response(false).status, 200);
    }
    assert_eq!(
        (a.requests() - a0, b.requests() - b0),
        (2, 2),
        "both servers still in"
    );
    let log = lb.log_text();
    assert!(
        !log.contains("ejected") && !log.contains("held back"),
        "{log}"
    );
}

/// An origin that answers every request with 502.
fn origin_always_502() -> Origin {
    Origin::with_handler(Arc::new(|mut s: TcpStream, stats| {
        let mut buf = Vec::new();
        while let Some(head) = common::origin::read_head(&mut s, &mut buf) {
            stats
                .requests
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let r = format!(
                "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\n{}\r\nbad",
                common::origin::token_field(&head)
            );
            if s.write_all(r.as_bytes()).is_err() {
                return;
            }
        }
    }))
}

/// Passive ejection never takes the only server of a pool: five bad answers
/// (perhaps one client's, crafted to fail) must not turn into a 503 for
/// everyone.
#[test]
fn the_only_server_of_a_pool_is_never_ejected() {
    let origin = origin_always_502();
    let lb = Ringlb::start(&proxy_config(&[origin.addr], "", ""));
    let mut c = Client::connect(lb.addr());
    for i in 0..20 {
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(c.read_response(false).status, 502, "request {i}");
    }
    assert_eq!(origin.requests(), 20);
    assert!(!lb.log_contains("ejected"), "{}", lb.log_text());
}

/// A client that pauses inside its request body past `body_timeout` gets a
/// 408 (nothing of the response went out yet), then the connection closes.
#[test]
fn a_stalled_request_body_gets_408() {
    let origin = Origin::start();
    let lb = Ringlb::start(&proxy_config(
        &[origin.addr],
        "",
        "[client]\nbody_timeout = \"300ms\"",
    ));
    let mut c = Client::connect(lb.addr());
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten.");
    let start = Instant::now();
    let r = c.read_response(false);
    let took = start.elapsed();
    assert_eq!(r.status, 408, "{}", r.head);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(c.is_closed_by_peer(Duration::from_secs(2)));
}
