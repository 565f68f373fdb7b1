//! 200 MiB through ringlb in both directions with memory bounded by its buffers.

mod common;

use common::client::Client;
use common::origin::{checksum, pattern, Origin};
use common::{proxy_config, Ringlb};
use std::io::{Read, Write};

const SIZE: u64 = 200 * 1024 * 1024;
/// Peak RSS ringlb may reach while moving 400 MiB (its pools are a few MiB).
const PEAK_RSS_LIMIT_KB: u64 = 64 * 1024;

fn block(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern(offset + i)).collect()
}

#[test]
fn upload_and_download_200_mib_with_bounded_memory() {
    let origin = Origin::start();
    let lb = Ringlb::start(&proxy_config(&[origin.addr], "", ""));
    let before = lb.status_kb("VmRSS");

    // Upload with Content-Length; the origin reports count and checksum.
    let mut c = Client::connect(lb.addr());
    c.send(
        format!("POST /sink HTTP/1.1\r\nHost: localhost\r\nContent-Length: {SIZE}\r\n\r\n")
            .as_bytes(),
    );
    let chunk = block(0, 1 << 20);
    let mut sent = 0u64;
    while sent < SIZE {
        // pattern() repeats every 251 bytes: keep the offset aligned to it.
        let off = (sent % 251) as usize;
        let n = ((SIZE - sent) as usize).min(chunk.len() - 251);
        c.stream.write_all(&chunk[off..off + n]).unwrap();
        sent += n as u64;
    }
    let r = c.read_response(false);
    let expected = format!("count={SIZE} sum={}", checksum((0..SIZE).map(pattern)));
    assert_eq!(r.body_str(), expected);

    // Chunked upload of 20 MiB on the same connection.
    c.send(b"POST /sink HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n");
    let small = 20 * 1024 * 1024u64;
    let piece = block(0, 251 * 4000);
    let mut sent = 0u64;
    while sent < small {
        let n = ((small - sent) as usize).min(piece.len());
        c.stream.write_all(format!("{n:x}\r\n").as_bytes()).unwrap();
        c.stream.write_all(&piece[..n]).unwrap();
        c.stream.write_all(b"\r\n").unwrap();
        sent += n as u64;
    }
    c.stream.write_all(b"0\r\n\r\n").unwrap();
    let r = c.read_response(false);
    assert_eq!(
        r.body_str(),
        format!(
            "count={small} sum={}",
            checksum((0..small).map(|i| pattern(i % (251 * 4000))))
        )
    );

    // Download, streamed and checked without keeping it.
    c.send(format!("GET /bytes/{SIZE} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes());
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&head).contains(&format!("Content-Length: {SIZE}")));
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    while got < SIZE {
        let want = ((SIZE - got) as usize).min(buf.len());
        let n = c.stream.read(&mut buf[..want]).unwrap();
        assert!(n > 0, "download cut short at {got}");
        for (i, b) in buf[..n].iter().enumerate() {
            assert_eq!(*b, pattern(got + i as u64), "byte {}", got + i as u64);
        }
        got += n as u64;
    }

    let peak = lb.status_kb("VmHWM");
    eprintln!("ringlb RSS before {before} kB, peak {peak} kB after 420 MiB relayed");
    assert!(
        peak < PEAK_RSS_LIMIT_KB,
        "peak RSS {peak} kB: memory grew with the body size"
    );

    // The connection is still usable afterwards.
    c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(c.read_response(false).body_str(), "hello");
}

/// Chunked request framing reaches the backend re-encoded: sizes in plain
/// hex without leading zeros or extensions, trailers only where they may be.
#[test]
fn chunk_framing_is_forwarded_canonically() {
    let captured = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = captured.clone();
    let origin = common::origin::Origin::with_handler(std::sync::Arc::new(
        move |mut s: std::net::TcpStream, _| {
            let mut all = Vec::new();
            let mut tmp = [0u8; 4096];
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            // The head and the body each end with an empty line.
            while all.windows(4).filter(|w| w == b"\r\n\r\n").count() < 2
                || !all.ends_with(b"\r\n\r\n")
            {
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => all.extend_from_slice(&tmp[..n]),
                }
            }
            *sink.lock().unwrap() = all;
            let _ = std::io::Write::write_all(
                &mut s,
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            );
        },
    ));
    let lb = Ringlb::start(&proxy_config(&[origin.addr], "", ""));
    let mut c = Client::connect(lb.addr());
    c.send_raw(
        b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          0005;name=value\r\nhello\r\n000A\r\n0123456789\r\n0;last\r\n\
          X-Sum: 15\r\nContent-Length: 999\r\nHost: elsewhere\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(c.read_response(false).status, 200);
    let sent = String::from_utf8_lossy(&captured.lock().unwrap()).into_owned();
    let body = sent.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(
        body, "5\r\nhello\r\na\r\n0123456789\r\n0\r\nX-Sum: 15\r\n\r\n",
        "{sent}"
    );
}

#[test]
fn chunk_sizes_past_the_maximum_and_bad_trailers_are_400() {
    let origin = Origin::start();
    let lb = Ringlb::start(&proxy_config(
        &[origin.addr],
        "",
        "[client]\nmax_chunk_bytes = 1048576",
    ));
    for (what, body) in [
        (
            "a size a 32-bit backend reads as 5",
            "100000005\r\nhello\r\n0\r\n\r\n",
        ),
        ("the largest size", "FFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n"),
        ("past max_chunk_bytes", "100001\r\nx\r\n0\r\n\r\n"),
        (
            "a trailer line without a colon",
            "1\r\nx\r\n0\r\nNoColon\r\n\r\n",
        ),
        (
            "a trailer name with a space",
            "1\r\nx\r\n0\r\nX y: z\r\n\r\n",
        ),
    ] {
        let mut c = Client::connect(lb.addr());
        c.send_raw(
            format!("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
                .as_bytes(),
        );
        let r = c.read_response(false);
        assert_eq!(r.status, 400, "{what}");
        assert!(
            c.is_closed_by_peer(std::time::Duration::from_secs(2)),
            "{what}"
        );
    }
    assert_eq!(origin.requests(), 0, "{}", lb.log_text());
}
