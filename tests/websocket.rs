//! Upgrade / WebSocket: a real handshake through ringlb, frames both ways, and
//! the plain-HTTP path when the upstream declines to switch.

mod common;

use base64::Engine as _;
use common::client::Client;
use common::origin::Origin;
use common::{proxy_config, Ringlb};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

fn accept_key(key: &str) -> String {
    let mut h = sha1_smol::Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.digest().bytes())
}

/// Reads one frame: (opcode, payload), unmasking if needed.
fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    let opcode = h[0] & 0x0f;
    let masked = h[1] & 0x80 != 0;
    let mut len = u64::from(h[1] & 0x7f);
    if len == 126 {
        let mut b = [0u8; 2];
        s.read_exact(&mut b).unwrap();
        len = u64::from(u16::from_be_bytes(b));
    } else if len == 127 {
        let mut b = [0u8; 8];
        s.read_exact(&mut b).unwrap();
        len = u64::from_be_bytes(b);
    }
    let mut mask = [0u8; 4];
    if masked {
        s.read_exact(&mut mask).unwrap();
    }
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload).unwrap();
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    (opcode, payload)
}

fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    if payload.len() < 126 {
        f.push(m | payload.len() as u8);
    } else {
        f.push(m | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    match mask {
        Some(k) => {
            f.extend_from_slice(&k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// A WebSocket echo origin: answers the handshake with 101, then echoes frames
/// until a close frame, which it answers with a close frame.
fn ws_origin() -> Origin {
    Origin::with_handler(Arc::new(|mut s: TcpStream, stats| {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut b).unwrap_or(0) == 0 {
                return;
            }
            head.push(b[0]);
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        stats.heads.lock().unwrap().push(text.clone());
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap_or("")
            .trim()
            .to_string();
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            accept_key(&key)
        );
        s.write_all(resp.as_bytes()).unwrap();
        // A greeting right behind the 101 head.
        s.write_all(&frame(1, b"welcome", None)).unwrap();
        loop {
            let (op, payload) = read_frame(&mut s);
            if op == 8 {
                s.write_all(&frame(8, &payload, None)).unwrap();
                return;
            }
            s.write_all(&frame(op, &payload, None)).unwrap();
        }
    }))
}

#[test]
fn websocket_handshake_and_frames_through_ringlb() {
    let origin = ws_origin();
    let lb = Ringlb::start(&proxy_config(&[origin.addr], "", ""));
    let mut s = TcpStream::connect(lb.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    s.write_all(
        format!(
            "GET /chat HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.contains(&format!("Sec-WebSocket-Accept: {}\r\n", accept_key(key))),
        "{head}"
    );
    assert!(
        head.contains("Upgrade: websocket\r\n") && head.contains("Connection: upgrade\r\n"),
        "{head}"
    );

    let forwarded = origin.heads().pop().unwrap();
    assert!(forwarded.contains("Upgrade: websocket\r\n"), "{forwarded}");
    assert!(forwarded.contains("Connection: upgrade\r\n"), "{forwarded}");

    assert_eq!(read_frame(&mut s), (1, b"welcome".to_vec()));
    for msg in ["one", "two", &"x".repeat(3000)] {
        s.write_all(&frame(1, msg.as_bytes(), Some([1, 2, 3, 4])))
            .unwrap();
        assert_eq!(read_frame(&mut s), (1, msg.as_bytes().to_vec()));
    }
    s.write_all(&frame(8, &[3, 232], Some([9, 9, 9, 9])))
        .unwrap();
    assert_eq!(read_frame(&mut s).0, 8);
    // The origin closed: ringlb closes the client side too (EOF, not a timeout).
    let mut rest = [0u8; 16];
    match s.read(&mut rest) {
        Ok(0) => {}
        other => panic!("expected EOF after the origin closed, got {other:?}"),
    }
}

#[test]
fn upgrade_declined_continues_as_http() {
    let origin = Origin::start();
    let lb = Ringlb::start(&proxy_config(&[origin.addr], "", ""));
    let mut c = Client::connect(lb.addr());
    c.send(
        b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    );
    let r = c.read_response(false);
    assert_eq!((r.status, r.body_str().as_str()), (200, "hello"));
    c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(c.read_response(false).body_str(), "hello");
}

/// Opens a WebSocket tunnel through `lb`; returns the client socket after the
/// 101 head and the origin's greeting frame.
fn open_tunnel(lb: &Ringlb) -> TcpStream {
    let mut s = TcpStream::connect(lb.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: a2V5\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    assert_eq!(read_frame(&mut s), (1, b"welcome".to_vec()));
    s
}

/// Reads until EOF; panics on anything else (data, a timeout).
fn expect_eof(s: &mut TcpStream) {
    let mut rest = [0u8; 64];
    match s.read(&mut rest) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the tunnel closed, got {other:?}"),
    }
}

#[test]
fn idle_tunnel_is_closed_after_its_timeout_and_not_before() {
    let origin = ws_origin();
    let lb = Ringlb::start(&proxy_config(
        &[origin.addr],
        "",
        "[client]\ntunnel_idle_timeout = \"400ms\"",
    ));
    let mut s = open_tunnel(&lb);
    // Traffic keeps it open past the timeout: echoes every 150 ms for 1 s.
    let start = std::time::Instant::now();
    let mut last = start;
    while start.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(150));
        s.write_all(&frame(1, b"ping", Some([1, 2, 3, 4]))).unwrap();
        assert_eq!(read_frame(&mut s), (1, b"ping".to_vec()));
        last = std::time::Instant::now();
    }
    // Then silence: closed after the timeout, not before.
    expect_eof(&mut s);
    let took = last.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(3),
        "closed {took:?} after the last traffic, timeout 400 ms"
    );
}

/// An origin that, after the handshake, streams a frame every 100 ms and
/// never reads: traffic one way only.
fn ws_origin_streaming() -> Origin {
    Origin::with_handler(Arc::new(|mut s: TcpStream, _| {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut b).unwrap_or(0) == 0 {
                return;
            }
            head.push(b[0]);
        }
        let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
        let _ = s.write_all(&frame(1, b"welcome", None));
        for i in 0u32..30 {
            std::thread::sleep(Duration::from_millis(100));
            if s.write_all(&frame(1, &i.to_be_bytes(), None)).is_err() {
                return;
            }
        }
    }))
}

#[test]
fn one_way_traffic_keeps_a_tunnel_open() {
    let origin = ws_origin_streaming();
    let lb = Ringlb::start(&proxy_config(
        &[origin.addr],
        "",
        "[client]\ntunnel_idle_timeout = \"400ms\"",
    ));
    let mut s = open_tunnel(&lb);
    // The client never sends: 1.5 s of frames from the origin only, far past
    // the 400 ms timeout, must all arrive.
    for i in 0u32..15 {
        assert_eq!(
            read_frame(&mut s),
            (1, i.to_be_bytes().to_vec()),
            "frame {i}"
        );
    }
}
