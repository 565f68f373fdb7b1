//! A steady client load for tests that replace a running ringlb (upgrade,
//! reload): counts answers, and records every request that failed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A loopback port free a moment ago (for configs that must name one).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Clients that keep requesting until told to stop: half open a connection
/// per request, half keep one alive (reconnecting when the server says
/// `Connection: close`, or closes a reused connection before answering, as
/// browsers do). Every answer must be a 200 carrying the request's own token.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

pub fn request(s: &mut TcpStream, token: &str, close: bool) -> Result<(String, bool), String> {
    // Every wait has a deadline: a connection nobody answers is a failure.
    let limit = Some(std::time::Duration::from_secs(10));
    s.set_read_timeout(limit)
        .map_err(|e| format!("timeout: {e}"))?;
    s.set_write_timeout(limit)
        .map_err(|e| format!("timeout: {e}"))?;
    let conn = if close { "Connection: close\r\n" } else { "" };
    s.write_all(
        format!("GET /slow/5 HTTP/1.1\r\nHost: x\r\nX-Token: {token}\r\n{conn}\r\n").as_bytes(),
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n") {
            if got.len() >= end + 4 + 4 {
                // "slow" is the whole body (Content-Length: 4).
                let head = text[..end].to_ascii_lowercase();
                return Ok((text.into_owned(), head.contains("connection: close")));
            }
        }
    }
    if got.is_empty() {
        return Err("closed before any byte".into());
    }
    Err(format!("cut short: {:?}", String::from_utf8_lossy(&got)))
}

pub fn check(answer: &str, token: &str) -> Result<(), String> {
    if !answer.starts_with("HTTP/1.1 200 ") || !answer.contains(&format!("X-Token: {token}\r\n")) {
        return Err(format!("wrong answer for {token}: {answer:?}"));
    }
    Ok(())
}

impl Load {
    pub fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|t| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                std::thread::spawn(move || {
                    let mut kept: Option<TcpStream> = None;
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let token = format!("c{t}-{n}");
                        let per_request = t % 2 == 0;
                        let result = if per_request {
                            TcpStream::connect(addr)
                                .map_err(|e| format!("connect: {e}"))
                                .and_then(|mut s| request(&mut s, &token, true))
                                .and_then(|(a, _)| check(&a, &token))
                        } else {
                            let reused = kept.is_some();
                            let attempt = |kept: &mut Option<TcpStream>| {
                                if kept.is_none() {
                                    *kept = Some(
                                        TcpStream::connect(addr)
                                            .map_err(|e| format!("connect: {e}"))?,
                                    );
                                }
                                let s = kept.as_mut().unwrap();
                                let r = request(s, &token, false);
                                if matches!(&r, Ok((_, true)) | Err(_)) {
                                    *kept = None;
                                }
                                r
                            };
                            match attempt(&mut kept) {
                                // A reused connection closed (or reset) before
                                // answering: the keep-alive race, which clients
                                // retry once (RFC 9112, 9.3.1).
                                Err(e)
                                    if reused
                                        && (e == "closed before any byte"
                                            || e.contains("reset")) =>
                                {
                                    attempt(&mut kept)
                                }
                                r => r,
                            }
                            .and_then(|(a, _)| check(&a, &token))
                        };
                        match result {
                            Ok(()) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                let kind = if per_request { "fresh" } else { "kept" };
                                failures.lock().unwrap().push(format!("{kind}: {e}"))
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            threads,
        }
    }

    pub fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

/// Sends `n` requests, each on a connection of its own; each must get its
/// own answer.
pub fn requests(addr: SocketAddr, tag: &str, n: usize) {
    for i in 0..n {
        let token = format!("{tag}-{i}");
        let mut s = TcpStream::connect(addr).unwrap();
        let (answer, _) = request(&mut s, &token, true).unwrap();
        check(&answer, &token).unwrap();
    }
}
