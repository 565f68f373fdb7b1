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
