//! Heads and bodies of every size around the point where ringlb moves a
//! message from a one-page buffer to a large one: each arrives whole, on a
//! kept-alive connection, to the request that asked for it.

mod common;

use common::client::Client;
use common::origin::{pattern, Origin};
use common::{proxy_config, Ringlb};

/// Sizes that straddle a page (and the headroom kept in front of a head),
/// then a few far past it.
fn sizes() -> impl Iterator<Item = usize> {
    (2900..5200).step_by(61).chain([8191, 8192, 20_000, 30_000])
}

#[test]
fn request_heads_of_every_size_reach_the_origin_whole() {
    let origin = Origin::start();
    let lb = Ringlb::start(&proxy_config(&[origin.addr], "", ""));
    let mut c = Client::connect(lb.addr());
    for n in sizes() {
        let pad = "a".repeat(n);
        let req = format!("GET /head HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\n\r\n");
        // Half the requests arrive in two writes, the cut right where a page ends.
        if n % 2 == 0 {
            c.send(req.as_bytes());
        } else {
            c.send_split(req.as_bytes(), 3500);
        }
        let r = c.read_response(false);
        assert_eq!(r.status, 200, "head of {n} bytes");
        assert!(
            r.body_str().contains(&format!("X-Pad: {pad}\r\n")),
            "the origin saw the whole {n}-byte field"
        );
    }
}

#[test]
fn response_heads_of_every_size_reach_the_client_whole() {
    let origin = Origin::start();
    let lb = Ringlb::start(&proxy_config(&[origin.addr], "", ""));
    let mut c = Client::connect(lb.addr());
    for n in sizes().chain([60_000]) {
        c.send(format!("GET /fat-head/{n} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        let r = c.read_response(false);
        assert_eq!(r.status, 200, "response head with a {n}-byte field");
        assert_eq!(r.header("X-Pad").map(str::len), Some(n));
        assert_eq!(r.body, b"ok");
    }
}

#[test]
fn bodies_of_every_size_cross_both_ways_whole() {
    let origin = Origin::start();
    let lb = Ringlb::start(&proxy_config(&[origin.addr], "", ""));
    let mut c = Client::connect(lb.addr());
    for n in sizes().chain([70_000, 300_000]) {
        c.send(format!("GET /bytes/{n} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        let r = c.read_response(false);
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), n, "download of {n}");
        assert!(
            r.body
                .iter()
                .enumerate()
                .all(|(i, b)| *b == pattern(i as u64)),
            "download of {n}: bytes in order"
        );

        let body: Vec<u8> = (0..n as u64).map(pattern).collect();
        let mut req =
            format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\n\r\n").into_bytes();
        req.extend_from_slice(&body);
        c.send(&req);
        let r = c.read_response(false);
        assert_eq!(r.status, 200);
        assert!(r.body == body, "upload of {n} echoed whole");
    }
}

/// With the worker's memory cap nearly spent by requests that hold 64 KiB
/// buffers (downloads whose clients stopped reading), a new request is still
/// admitted (it needs four pages) but may not enlarge its buffers. What it
/// has already forwarded must still finish whole: a response head past a
/// page, a trailer line past a page; and a head that fits a page is never
/// shed because of how its bytes arrive.
#[test]
fn near_the_memory_cap_forwarded_requests_finish_and_page_sized_heads_pass() {
    use std::io::{Read, Write};
    let origin = Origin::start();
    let lb = Ringlb::start(&proxy_config(
        &[origin.addr],
        "",
        "[limits]\nmax_memory_mb = 1",
    ));
    // 12 x (head page + 3 reserved + a 64 KiB relay buffer) = 960 KiB of 1 MiB.
    let hogs: Vec<std::net::TcpStream> = (0..12)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(lb.addr()).unwrap();
            s.write_all(b"GET /bytes/100000000 HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut first = [0u8; 100_000];
            let mut got = 0;
            while got < first.len() {
                got += s.read(&mut first[got..]).unwrap();
            }
            s // and read no more: its relay holds its buffer
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));

    let mut c = Client::connect(lb.addr());
    c.send(b"GET /fat-head/5000 HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(
        r.status, 200,
        "a forwarded request's large head is not shed"
    );
    assert_eq!(r.header("X-Pad").map(str::len), Some(5000));

    c.send(b"GET /chunked-trailer/5000 HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(
        (r.status, &r.body[..]),
        (200, &b"hello"[..]),
        "relayed whole"
    );

    let pad = "b".repeat(3000);
    let req = format!("GET /head HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\n\r\n");
    for cut in [1448, 2600, 3400] {
        c.send_split(req.as_bytes(), cut);
        let r = c.read_response(false);
        assert_eq!(
            r.status,
            200,
            "a 3 KiB head in pieces of {cut}: {:?}",
            r.body_str()
        );
    }
    drop(hogs);
}
