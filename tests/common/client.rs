//! A small HTTP/1.1 test client over a raw TcpStream, with read timeouts.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

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
}

pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
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
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write request");
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

    /// True if the server closed the connection (EOF within the timeout).
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
