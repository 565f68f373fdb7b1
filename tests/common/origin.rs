//! Scripted origin servers on loopback, one thread per connection.
//!
//! The default behaviour (`Origin::start`) routes on the path:
//! `/` hello, `/echo` echoes the body, `/head` echoes the request head,
//! `/chunked` answers chunked, `/close` answers without a length and closes,
//! `/bytes/N` streams N bytes, `/sink` counts the request body (`count=N sum=S`),
//! `/status/N` answers status N, `/slow/MS` answers after MS milliseconds,
//! `/fat-head/N` answers with an `X-Pad` field of N bytes,
//! `/chunked-trailer/N` answers chunked with an N-byte trailer field,
//! `/continue` sends 100 Continue before reading the body.
//!
//! Every response echoes the request's `X-Token` field (see `client.rs`), so a
//! response that reaches the wrong request is caught by the client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
pub struct Stats {
    pub connections: AtomicUsize,
    pub requests: AtomicUsize,
    /// Set by `Origin::kill`.
    pub killed: AtomicBool,
    /// Raw heads received, in order.
    pub heads: Mutex<Vec<String>>,
}

pub struct Origin {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
}

/// What a custom origin does with each accepted connection.
pub type Handler = Arc<dyn Fn(TcpStream, &Stats) + Send + Sync>;

impl Origin {
    pub fn start() -> Origin {
        Origin::with_handler(Arc::new(|s, stats| serve_http(s, stats, None)))
    }

    /// Like `start`, but closes a keep-alive connection once it has been idle for `idle`.
    pub fn closing_idle_after(idle: Duration) -> Origin {
        Origin::with_handler(Arc::new(move |s, stats| serve_http(s, stats, Some(idle))))
    }

    pub fn with_handler(handler: Handler) -> Origin {
        Origin::with_handler_on("127.0.0.1:0".parse().unwrap(), handler)
    }

    /// The default origin on a given address (to bring a killed one back).
    pub fn start_on(addr: SocketAddr) -> Origin {
        Origin::with_handler_on(addr, Arc::new(|s, stats| serve_http(s, stats, None)))
    }

    /// Stops accepting and makes every open connection close unanswered.
    pub fn kill(&self) {
        self.stats.killed.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn with_handler_on(addr: SocketAddr, handler: Handler) -> Origin {
        let listener = {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                match TcpListener::bind(addr) {
                    Ok(l) => break l,
                    Err(e) if std::time::Instant::now() < deadline => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("bind {addr}: {e}"),
                }
            }
        };
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (stats.clone(), stop.clone());
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !sp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        s.set_nodelay(true).unwrap();
                        st.connections.fetch_add(1, Ordering::SeqCst);
                        let (h, st2) = (handler.clone(), st.clone());
                        std::thread::spawn(move || h(s, &st2));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Origin { addr, stats, stop }
    }

    pub fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.stats.requests.load(Ordering::SeqCst)
    }

    pub fn heads(&self) -> Vec<String> {
        self.stats.heads.lock().unwrap().clone()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A loopback address on which nothing listens (connections are refused).
pub fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Reads one request head; returns (head text, leftover body bytes) or None on EOF.
pub fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        let mut tmp = [0u8; 65536];
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads a request body (Content-Length or chunked) and feeds it to `sink`.
fn read_body(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    head: &str,
    mut sink: impl FnMut(&[u8]),
) -> Option<()> {
    let fill = |s: &mut TcpStream, buf: &mut Vec<u8>| -> Option<()> {
        let mut tmp = [0u8; 65536];
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.extend_from_slice(&tmp[..n]);
                Some(())
            }
        }
    };
    if let Some(cl) = header(head, "content-length") {
        let mut left: usize = cl.parse().ok()?;
        while left > 0 {
            if buf.is_empty() {
                fill(s, buf)?;
            }
            let n = left.min(buf.len());
            sink(&buf[..n]);
            buf.drain(..n);
            left -= n;
        }
    } else if header(head, "transfer-encoding").is_some() {
        loop {
            while !buf.windows(2).any(|w| w == b"\r\n") {
                fill(s, buf)?;
            }
            let end = buf.windows(2).position(|w| w == b"\r\n").unwrap();
            let line = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 2);
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).ok()?;
            if size == 0 {
                while !buf.windows(2).any(|w| w == b"\r\n") {
                    fill(s, buf)?;
                }
                let end = buf.windows(2).position(|w| w == b"\r\n").unwrap();
                buf.drain(..end + 2);
                break;
            }
            while buf.len() < size + 2 {
                fill(s, buf)?;
            }
            sink(&buf[..size]);
            buf.drain(..size + 2);
        }
    }
    Some(())
}

/// The default origin behaviour (see module docs).
pub fn serve_http(mut s: TcpStream, stats: &Stats, close_idle_after: Option<Duration>) {
    let mut buf = Vec::new();
    loop {
        if let Some(idle) = close_idle_after {
            if buf.is_empty() {
                s.set_read_timeout(Some(idle)).unwrap();
                let mut probe = [0u8; 1];
                match s.peek(&mut probe) {
                    Ok(n) if n > 0 => {}
                    _ => return, // idle too long (or closed): close
                }
                s.set_read_timeout(None).unwrap();
            }
        }
        let Some(head) = read_head(&mut s, &mut buf) else {
            return;
        };
        if stats.killed.load(Ordering::SeqCst) {
            return; // a crashed server answers nothing
        }
        stats.requests.fetch_add(1, Ordering::SeqCst);
        stats.heads.lock().unwrap().push(head.clone());
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let method = head.split_whitespace().next().unwrap_or("GET").to_string();
        let close = header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let mut body = Vec::new();
        if path == "/continue" {
            let _ = s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let (mut count, mut sum) = (0u64, 0u64);
        let sink_only = path == "/sink";
        if read_body(&mut s, &mut buf, &head, |b| {
            count += b.len() as u64;
            if sink_only {
                sum = b
                    .iter()
                    .fold(sum, |a, &x| a.wrapping_mul(31).wrapping_add(u64::from(x)));
            } else {
                body.extend_from_slice(b);
            }
        })
        .is_none()
        {
            return;
        }
        let ok = respond(&mut s, &method, &path, &head, &body, count, sum);
        if !ok || close || path == "/close" {
            return;
        }
    }
}

/// The checksum `/sink` reports, for tests to compare against.
pub fn checksum(data: impl Iterator<Item = u8>) -> u64 {
    data.fold(0u64, |a, x| a.wrapping_mul(31).wrapping_add(u64::from(x)))
}

/// Byte `i` of the `/bytes/N` pattern.
pub fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

fn respond(
    s: &mut TcpStream,
    method: &str,
    path: &str,
    head: &str,
    body: &[u8],
    count: u64,
    sum: u64,
) -> bool {
    let token = token_field(head);
    let simple = |s: &mut TcpStream, status: &str, body: &[u8]| {
        let mut out = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nX-Origin: test\r\n{token}\r\n",
            body.len()
        )
        .into_bytes();
        if method != "HEAD" {
            out.extend_from_slice(body);
        }
        s.write_all(&out).is_ok()
    };
    if path == "/" {
        return simple(s, "200 OK", b"hello");
    }
    if path == "/echo" || path == "/continue" {
        return simple(s, "200 OK", body);
    }
    if path == "/head" {
        return simple(s, "200 OK", head.as_bytes());
    }
    if path == "/sink" {
        return simple(s, "200 OK", format!("count={count} sum={sum}").as_bytes());
    }
    if path == "/chunked" {
        let r = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n{token}\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n");
        return s.write_all(r.as_bytes()).is_ok();
    }
    if path == "/close" {
        let _ = s.write_all(
            format!("HTTP/1.1 200 OK\r\nX-Framing: none\r\n{token}\r\nuntil ").as_bytes(),
        );
        std::thread::sleep(Duration::from_millis(20));
        let _ = s.write_all(b"close");
        return false;
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: u64 = n.parse().unwrap();
        if s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n{token}\r\n").as_bytes())
            .is_err()
        {
            return false;
        }
        if method == "HEAD" {
            return true;
        }
        let mut chunk = vec![0u8; 256 * 1024];
        let mut sent = 0u64;
        while sent < n {
            let len = (n - sent).min(chunk.len() as u64) as usize;
            for (i, b) in chunk[..len].iter_mut().enumerate() {
                *b = pattern(sent + i as u64);
            }
            if s.write_all(&chunk[..len]).is_err() {
                return false;
            }
            sent += len as u64;
        }
        return true;
    }
    if let Some(n) = path.strip_prefix("/chunked-trailer/") {
        let pad = "t".repeat(n.parse().unwrap());
        let r = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n{token}\r\n5\r\nhello\r\n0\r\nX-Big: {pad}\r\n\r\n");
        return s.write_all(r.as_bytes()).is_ok();
    }
    if let Some(n) = path.strip_prefix("/fat-head/") {
        let pad = "p".repeat(n.parse().unwrap());
        let r = format!("HTTP/1.1 200 OK\r\nX-Pad: {pad}\r\nContent-Length: 2\r\n{token}\r\nok");
        return s.write_all(r.as_bytes()).is_ok();
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.parse().unwrap();
        let r = format!("HTTP/1.1 {code} Status\r\nContent-Length: 4\r\n{token}\r\n");
        let mut out = r.into_bytes();
        if method != "HEAD" && code != 204 && code != 304 {
            out.extend_from_slice(b"body");
        }
        return s.write_all(&out).is_ok();
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        std::thread::sleep(Duration::from_millis(ms.parse().unwrap()));
        return simple(s, "200 OK", b"slow");
    }
    simple(s, "404 Not Found", b"no such path")
}

/// The `X-Token: ...\r\n` field line that echoes a request's token (empty if
/// the request had none).
pub fn token_field(head: &str) -> String {
    header(head, super::client::TOKEN)
        .map(|t| format!("{}: {t}\r\n", super::client::TOKEN))
        .unwrap_or_default()
}
