//! The admin listener as a stranger meets it: strict parsing, a deadline for
//! the whole request, a connection cap of its own, and never a descriptor the
//! proxy needs.

mod common;

use common::client::{get, Client};
use common::origin::Origin;
use common::Ringlb;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn config(origin: SocketAddr, admin: &str) -> String {
    format!(
        "workers = 1\n[admin]\nlisten = \"{admin}\"\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{origin}\"]\n"
    )
}

/// Sends raw bytes on a new admin connection; returns all it answers.
fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn only_get_and_head_on_exact_paths() {
    let origin = Origin::start();
    let lb = Ringlb::start(&config(origin.addr, "127.0.0.1:0"));
    let admin = lb.admin_addr().unwrap();
    let r = get(admin, "/status");
    assert_eq!(r.status, 200);
    assert!(
        r.body_str().starts_with("{\"upstreams\":["),
        "{}",
        r.body_str()
    );
    assert!(r.body_str().contains("\"panics\":0"), "{}", r.body_str());
    assert_eq!(get(admin, "/healthz").body_str(), "ok\n");

    let head = raw(admin, b"HEAD /status HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&head), 200);
    let (fields, body) = head.split_once("\r\n\r\n").unwrap();
    assert!(
        body.is_empty() && fields.contains("Content-Length: "),
        "{head}"
    );

    let cases: [(&[u8], u16); 8] = [
        (
            b"POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            405,
        ),
        (b"DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"GET /statusx HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET /status?verbose HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET /x/../status HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET /status HTTP/1.1\r\n\r\n", 400),
        (b"X /status\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    ];
    for (req, want) in cases {
        let answer = raw(admin, req);
        assert_eq!(
            status_of(&answer),
            want,
            "{:?} -> {answer}",
            String::from_utf8_lossy(req)
        );
        if want == 405 {
            assert!(answer.contains("Allow: GET, HEAD\r\n"), "{answer}");
        }
    }
}

#[test]
fn a_slow_drip_gets_408_at_the_request_deadline() {
    let origin = Origin::start();
    let lb = Ringlb::start(&config(origin.addr, "127.0.0.1:0"));
    let mut s = TcpStream::connect(lb.admin_addr().unwrap()).unwrap();
    let start = Instant::now();
    let mut answer = Vec::new();
    // One byte every 100 ms: each read alone is quick, the request never ends.
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    for b in b"GET /status HTTP/1.1\r\nX-Drip: "
        .iter()
        .chain(std::iter::repeat(&b'a'))
    {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        let mut tmp = [0u8; 1024];
        match s.read(&mut tmp) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&tmp[..n]),
            Err(_) => {}
        }
        if !answer.is_empty() || start.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408 "), "after {took:?}: {text}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "408 after {took:?}"
    );
}

#[test]
fn admin_connections_never_starve_the_proxy() {
    const LIMIT: u64 = 96;
    let origin = Origin::start();
    let lb = Ringlb::start_with(
        &config(origin.addr, "127.0.0.1:0"),
        common::with_nofile(LIMIT),
    );
    let admin = lb.admin_addr().unwrap();
    // 260 admin connections dripping a head: more than the descriptors ringlb has.
    let mut drips: Vec<TcpStream> = (0..260)
        .map(|_| {
            let s = TcpStream::connect(admin).unwrap();
            let _ = (&s).write_all(b"GET /status HTTP/1.1\r\n");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // The proxy still accepts and serves.
    let clients: Vec<Client> = (0..20)
        .map(|_| {
            let mut c = Client::connect(lb.addr());
            c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            c
        })
        .collect();
    for mut c in clients {
        assert_eq!(c.read_response(false).status, 200, "{}", lb.log_text());
    }
    // All but the capped few were closed at once; those few at the deadline.
    let mut closed = 0;
    for s in &mut drips {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut tmp = [0u8; 256];
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => closed += 1,
            Ok(n) => assert!(
                String::from_utf8_lossy(&tmp[..n]).starts_with("HTTP/1.1 408 "),
                "{}",
                String::from_utf8_lossy(&tmp[..n])
            ),
        }
    }
    assert!(closed >= 260 - 16, "{closed} closed at accept");
    assert!(lb.log_contains("admin: 16 connections already open"));
}

#[test]
fn an_admin_listener_beyond_loopback_is_warned_about() {
    let origin = Origin::start();
    let lb = Ringlb::start(&config(origin.addr, "0.0.0.0:0"));
    assert!(
        lb.log_contains("reachable beyond this host"),
        "{}",
        lb.log_text()
    );
    let quiet = Ringlb::start(&config(origin.addr, "127.0.0.1:0"));
    assert!(!quiet.log_contains("reachable beyond this host"));
}
