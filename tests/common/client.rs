//! A small HTTP/1.1 test client over a raw TcpStream, with read timeouts.
//!
//! The desync invariant lives here: `send` gives every complete request it
//! sends a unique `X-Token` field, test origins echo it, and every response
//! read must carry the token of the oldest unanswered request, or none (an
//! answer ringlb wrote itself, such as a 502). A response carrying another
//! request's token panics: it went to the wrong client or the wrong request.
//! Requests the client cannot frame exactly (a head sent in pieces, a chunked
//! body spread over several writes) switch the check off for that connection
//! rather than risk a false alarm; `send_raw` never adds a token.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub const TOKEN: &str = "X-Token";

static CLIENTS: AtomicU64 = AtomicU64::new(1);

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The token the origin echoed, if any.
    pub fn token(&self) -> Option<&str> {
        self.header(TOKEN)
    }
}

pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    id: u64,
    seq: u64,
    /// Tokens of the requests sent and not yet answered, oldest first.
    pending: VecDeque<String>,
    /// False once a request could not be framed: no more tokens, no checks.
    tracking: bool,
    /// Body bytes of the last request still to come in later sends.
    body_left: usize,
}

/// Where the request starting at `bytes[0]` ends: (end of its request line,
/// end of its head, end of its body), or None if it is not complete in `bytes`
/// or cannot be framed simply.
fn frame(bytes: &[u8]) -> Option<(usize, usize, Option<usize>)> {
    let line_end = bytes.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&bytes[..line_end]).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || target.is_empty()
        || !matches!(version, "HTTP/1.1" | "HTTP/1.0")
    {
        return None;
    }
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_ascii_lowercase();
    if head.contains("\ntransfer-encoding:") {
        // Complete chunked bodies only.
        let mut p = head_end;
        loop {
            let e = bytes[p..].windows(2).position(|w| w == b"\r\n")?;
            let size_text = std::str::from_utf8(&bytes[p..p + e]).ok()?;
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            p += e + 2;
            if size == 0 {
                let t = bytes[p..].windows(2).position(|w| w == b"\r\n")?;
                if t != 0 {
                    return None; // trailers: not framed here
                }
                return Some((line_end, head_end, Some(p + 2)));
            }
            if bytes.len() < p + size + 2 {
                return None;
            }
            p += size + 2;
        }
    }
    let cl = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>());
    match cl {
        None => Some((line_end, head_end, Some(head_end))),
        Some(Ok(n)) if bytes.len() >= head_end + n => {
            Some((line_end, head_end, Some(head_end + n)))
        }
        // The body follows in later sends: the head is still complete.
        Some(Ok(_)) => Some((line_end, head_end, None)),
        Some(Err(_)) => None,
    }
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to ringlb");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
            id: CLIENTS.fetch_add(1, Ordering::Relaxed),
            seq: 0,
            pending: VecDeque::new(),
            tracking: true,
            body_left: 0,
        }
    }

    /// Sends `bytes`, giving each complete request in them its own token.
    pub fn send(&mut self, bytes: &[u8]) {
        let tagged = self.tag(bytes);
        self.stream.write_all(&tagged).expect("write request");
    }

    /// Like `send`, in two writes a moment apart, the first of `cut` bytes
    /// (counted in the request as written, token field included).
    #[allow(dead_code)]
    pub fn send_split(&mut self, bytes: &[u8], cut: usize) {
        let tagged = self.tag(bytes);
        let cut = cut.min(tagged.len() - 1);
        self.stream
            .write_all(&tagged[..cut])
            .expect("write request");
        std::thread::sleep(Duration::from_millis(2));
        self.stream
            .write_all(&tagged[cut..])
            .expect("write request");
    }

    /// Sends `bytes` exactly as they are (no token, and no token checks from
    /// now on for this connection).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.tracking = false;
        self.stream.write_all(bytes).expect("write request");
    }

    fn tag(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len() + 64);
        let mut p = 0;
        if self.body_left > 0 {
            let n = self.body_left.min(bytes.len());
            out.extend_from_slice(&bytes[..n]);
            self.body_left -= n;
            p = n;
        }
        while self.tracking && p < bytes.len() {
            let Some((line_end, head_end, end)) = frame(&bytes[p..]) else {
                self.tracking = false;
                break;
            };
            self.seq += 1;
            let token = format!("c{}-{}", self.id, self.seq);
            out.extend_from_slice(&bytes[p..p + line_end + 2]);
            out.extend_from_slice(format!("{TOKEN}: {token}\r\n").as_bytes());
            self.pending.push_back(token);
            match end {
                Some(end) => {
                    out.extend_from_slice(&bytes[p + line_end + 2..p + end]);
                    p += end;
                }
                None => {
                    // Content-Length body still to come.
                    let head = String::from_utf8_lossy(&bytes[p..p + head_end]).to_lowercase();
                    let n: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    let have = bytes.len() - (p + head_end);
                    out.extend_from_slice(&bytes[p + line_end + 2..]);
                    self.body_left = n - have;
                    p = bytes.len();
                }
            }
        }
        if !self.tracking {
            self.pending.clear();
            out.extend_from_slice(&bytes[p..]);
        }
        out
    }

    /// Checks a final response against the oldest unanswered request.
    fn check_token(&mut self, r: &Response) {
        if !self.tracking {
            return;
        }
        let expected = self.pending.pop_front();
        if let Some(got) = r.token() {
            assert_eq!(
                Some(got),
                expected.as_deref(),
                "response desync: a response carries another request's token\n{}",
                r.head
            );
        }
    }

    fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 65536];
        match self.stream.read(&mut tmp) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
            Err(e) => panic!("read from ringlb: {e}"),
        }
    }

    /// Reads one final response (1xx are skipped). `head_request`: no body follows.
    pub fn read_response(&mut self, head_request: bool) -> Response {
        self.try_read_response(head_request)
            .expect("connection closed before a response")
    }

    /// Like `read_response`, but returns the 1xx responses too (one per call).
    pub fn try_read_any(&mut self, head_request: bool) -> Option<Response> {
        let r = self.read_one(head_request)?;
        if r.status >= 200 {
            self.check_token(&r);
        }
        Some(r)
    }

    fn read_one(&mut self, head_request: bool) -> Option<Response> {
        let end = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            if !self.fill() {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end + 4]).into_owned();
        self.buf.drain(..end + 4);
        let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = head
            .lines()
            .skip(1)
            .filter_map(|l| {
                l.split_once(':')
                    .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            })
            .collect();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if !(head_request || (100..200).contains(&status) || status == 204 || status == 304) {
            if let Some(cl) = get("content-length") {
                let n: usize = cl.parse().unwrap();
                while self.buf.len() < n {
                    assert!(self.fill(), "body cut short");
                }
                body = self.buf.drain(..n).collect();
            } else if get("transfer-encoding").is_some() {
                loop {
                    while !self.buf.windows(2).any(|w| w == b"\r\n") {
                        assert!(self.fill(), "chunked body cut short");
                    }
                    let e = self.buf.windows(2).position(|w| w == b"\r\n").unwrap();
                    let line = String::from_utf8_lossy(&self.buf[..e]).into_owned();
                    self.buf.drain(..e + 2);
                    let size =
                        usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
                    if size == 0 {
                        // trailers
                        loop {
                            while !self.buf.windows(2).any(|w| w == b"\r\n") {
                                assert!(self.fill(), "trailers cut short");
                            }
                            let e = self.buf.windows(2).position(|w| w == b"\r\n").unwrap();
                            self.buf.drain(..e + 2);
                            if e == 0 {
                                break;
                            }
                        }
                        break;
                    }
                    while self.buf.len() < size + 2 {
                        assert!(self.fill(), "chunk cut short");
                    }
                    body.extend(self.buf.drain(..size));
                    self.buf.drain(..2);
                }
            } else {
                while self.fill() {}
                body = std::mem::take(&mut self.buf);
            }
        }
        Some(Response {
            status,
            head,
            headers,
            body,
        })
    }

    pub fn try_read_response(&mut self, head_request: bool) -> Option<Response> {
        loop {
            let r = self.try_read_any(head_request)?;
            if !(100..200).contains(&r.status) {
                return Some(r);
            }
        }
    }

    /// Whether this connection still tags requests and checks tokens.
    pub fn tracking(&self) -> bool {
        self.tracking
    }

    /// The token the next request `send` tags will carry.
    pub fn next_token(&self) -> String {
        format!("c{}-{}", self.id, self.seq + 1)
    }

    /// True if the server closed the connection (EOF or reset) within `within`;
    /// false if bytes arrived or it stayed open.
    pub fn is_closed_by_peer(&mut self, within: Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        self.stream.set_read_timeout(Some(within)).unwrap();
        let mut tmp = [0u8; 1024];
        let r = match self.stream.read(&mut tmp) {
            Ok(0) => true,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                false
            }
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        self.stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        r
    }
}

/// One request on a fresh connection.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    let mut c = Client::connect(addr);
    c.send(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes());
    c.read_response(false)
}

#[cfg(test)]
mod tests {
    use super::frame;

    #[test]
    fn frames_requests() {
        assert_eq!(
            frame(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET"),
            Some((14, 27, Some(27)))
        );
        let post = b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET";
        assert_eq!(frame(post).unwrap().2, Some(post.len() - 3));
        assert_eq!(
            frame(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nab")
                .unwrap()
                .2,
            None
        );
        let chunked =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nX";
        assert_eq!(frame(chunked).unwrap().2, Some(chunked.len() - 1));
        assert_eq!(frame(b"4\r\ndefg\r\n"), None);
        assert_eq!(frame(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }
}
