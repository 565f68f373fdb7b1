//! Never cross the streams: bytes a backend sends on an idle pooled connection
//! (a second, unsolicited response; a `408` before it closes; a close) are never
//! taken as the answer to another client's request.
//!
//! Every origin here echoes the request's token (`X-Token`, added by the test
//! client) and the `X-Client` field; the client asserts that each response
//! carries its own request's token.

mod common;

use common::client::Client;
use common::origin::{header, read_head, token_field, Origin};
use common::{eventually, proxy_config, Ringlb};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An answer naming the request it answers: its request line, `X-Client` and token.
fn echo(head: &str) -> Vec<u8> {
    let line = head.lines().next().unwrap_or("");
    let client = header(head, "x-client").unwrap_or("-");
    let body = format!("{line} for {client}");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Client: {client}\r\n{}\r\n{body}",
        body.len(),
        token_field(head)
    )
    .into_bytes()
}

fn request(c: &mut Client, path: &str, client: &str) -> common::client::Response {
    c.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Client: {client}\r\n\r\n").as_bytes());
    c.read_response(false)
}

/// Origin A: answers `GET /stray` and, 20 ms later, writes a second,
/// unsolicited response on the same keep-alive connection. Counts the strays
/// written so the test can wait for them.
fn origin_answering_twice(strays: Arc<AtomicUsize>) -> Origin {
    Origin::with_handler(Arc::new(move |mut s: TcpStream, _| {
        let mut buf = Vec::new();
        while let Some(head) = read_head(&mut s, &mut buf) {
            if s.write_all(&echo(&head)).is_err() {
                return;
            }
            if head.starts_with("GET /stray ") {
                std::thread::sleep(Duration::from_millis(20));
                let stray = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Token: stray\r\nX-Client: nobody\r\n\r\nstray";
                let _ = s.write_all(stray);
                strays.fetch_add(1, Ordering::SeqCst);
            }
        }
    }))
}

#[test]
fn a_second_unsolicited_response_never_reaches_the_next_client() {
    let strays = Arc::new(AtomicUsize::new(0));
    let origin = origin_answering_twice(strays.clone());
    let lb = Ringlb::start(&proxy_config(&[origin.addr], "", ""));
    for round in 1..=5 {
        let mut c = Client::connect(lb.addr());
        assert_eq!(request(&mut c, "/stray", "first").status, 200);
        eventually(
            "the stray response to be written",
            Duration::from_secs(5),
            || strays.load(Ordering::SeqCst) == round,
        );
        std::thread::sleep(Duration::from_millis(5));
        for name in ["alice", "bob"] {
            let mut c = Client::connect(lb.addr());
            let r = request(&mut c, &format!("/{name}"), name);
            assert_eq!(
                (r.status, r.header("x-client"), r.body_str()),
                (200, Some(name), format!("GET /{name} HTTP/1.1 for {name}")),
                "round {round}: {name} got someone else's response"
            );
        }
    }
}

/// Origin B: closes a keep-alive connection idle for `idle` with
/// `408 Request Timeout`, as nginx, Apache and many app servers do.
fn origin_408_when_idle(idle: Duration) -> Origin {
    Origin::with_handler(Arc::new(move |mut s: TcpStream, _| {
        let mut buf = Vec::new();
        loop {
            if buf.is_empty() {
                s.set_read_timeout(Some(idle)).unwrap();
                let mut probe = [0u8; 1];
                match s.peek(&mut probe) {
                    Ok(n) if n > 0 => {}
                    Ok(_) => return,
                    Err(_) => {
                        let _ = s.write_all(
                            b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                        return;
                    }
                }
                s.set_read_timeout(None).unwrap();
            }
            let Some(head) = read_head(&mut s, &mut buf) else {
                return;
            };
            if s.write_all(&echo(&head)).is_err() {
                return;
            }
        }
    }))
}

#[test]
fn a_backends_idle_408_is_not_the_answer_to_the_next_request() {
    let origin = origin_408_when_idle(Duration::from_millis(200));
    let lb = Ringlb::start(&proxy_config(&[origin.addr], "", ""));
    let mut c = Client::connect(lb.addr());
    let mut statuses = Vec::new();
    for i in 0..4 {
        statuses.push(request(&mut c, &format!("/r{i}"), "carol").status);
        std::thread::sleep(Duration::from_millis(350));
    }
    assert_eq!(statuses, [200; 4], "{}", lb.log_text());
    assert_eq!(
        origin.connections(),
        4,
        "each request found its idle connection closed"
    );
}

/// An origin that answers the first request on a connection and meets every
/// later one with `408` and a close, as a backend whose idle timer fires just
/// as the request arrives: the keep-alive race in its `408` form.
fn origin_408_racing_each_reuse() -> Origin {
    Origin::with_handler(Arc::new(|mut s: TcpStream, stats| {
        let mut buf = Vec::new();
        let mut first = true;
        while let Some(head) = read_head(&mut s, &mut buf) {
            if !first {
                let _ = s.write_all(
                    b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                return;
            }
            first = false;
            stats.requests.fetch_add(1, Ordering::SeqCst);
            if s.write_all(&echo(&head)).is_err() {
                return;
            }
        }
    }))
}

#[test]
fn a_408_on_a_reused_connection_is_retried_on_a_fresh_one() {
    let origin = origin_408_racing_each_reuse();
    let lb = Ringlb::start(&proxy_config(&[origin.addr], "", ""));
    let mut c = Client::connect(lb.addr());
    for i in 0..5 {
        let r = request(&mut c, &format!("/r{i}"), "dave");
        assert_eq!((r.status, r.header("x-client")), (200, Some("dave")));
    }
    // A request that cannot be sent again gets the backend's 408 as it is:
    // whether the backend saw it cannot be known.
    c.send(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx");
    assert_eq!(c.read_response(false).status, 408);
    assert_eq!(origin.requests(), 5);
}

/// Sockets of this process's children in CLOSE-WAIT towards `port`.
fn close_wait_towards(port: u16) -> usize {
    let mut n = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let remote_port = f[2].rsplit(':').next().unwrap_or("");
            if f[3] == "08" && u16::from_str_radix(remote_port, 16) == Ok(port) {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn pooled_connections_a_backend_closes_are_closed_at_once() {
    let origin = Origin::closing_idle_after(Duration::from_millis(100));
    let lb = Ringlb::start(&proxy_config(&[origin.addr], "idle_timeout = \"60s\"", ""));
    let mut clients: Vec<Client> = (0..5).map(|_| Client::connect(lb.addr())).collect();
    for c in &mut clients {
        c.send(b"GET /slow/50 HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    for c in &mut clients {
        assert_eq!(c.read_response(false).status, 200);
    }
    assert!(origin.connections() >= 2, "several pooled connections");
    // The origin closes them 100 ms later; ringlb must not keep them half-open
    // until its own 60 s idle timeout.
    std::thread::sleep(Duration::from_millis(150));
    eventually(
        "no pooled connection left in CLOSE-WAIT",
        Duration::from_secs(2),
        || close_wait_towards(origin.addr.port()) == 0,
    );
    let mut c = Client::connect(lb.addr());
    assert_eq!(request(&mut c, "/", "erin").status, 200);
}

/// How a misbehaving origin treats one connection, chosen at random per
/// connection: where a correct proxy can always tell, its client must get
/// exactly its own response.
#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    /// Well behaved.
    None,
    /// Writes a stray response right behind a real one, in the same write.
    StrayBehind,
    /// Sends `408` and closes once idle for a random 1-20 ms (racing requests).
    Idle408,
    /// Closes once idle for a random 1-20 ms, without a word.
    IdleClose,
    /// Resets once idle for a random 1-20 ms.
    IdleReset,
    /// Closes right after its third response, without saying so.
    CloseAfterThree,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// How often each misbehaviour actually happened (a test that never
/// exercised one proves nothing about it).
#[derive(Default)]
struct Events {
    strays: AtomicUsize,
    idle_408s: AtomicUsize,
    idle_closes: AtomicUsize,
    idle_resets: AtomicUsize,
    closes_after_three: AtomicUsize,
}

fn misbehaving_origin(seed: u64, events: Arc<Events>) -> Origin {
    let conns = Arc::new(AtomicUsize::new(0));
    Origin::with_handler(Arc::new(move |mut s: TcpStream, stats| {
        let n = conns.fetch_add(1, Ordering::SeqCst) as u64;
        let mut rng = Rng(seed ^ (n + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // A stray ends its connection's use at once: drawn twice as often.
        let kind = match rng.next() % 7 {
            0 => Misbehaviour::None,
            1 | 2 => Misbehaviour::StrayBehind,
            3 => Misbehaviour::Idle408,
            4 => Misbehaviour::IdleClose,
            5 => Misbehaviour::IdleReset,
            _ => Misbehaviour::CloseAfterThree,
        };
        let mut buf = Vec::new();
        let mut answered = 0;
        loop {
            let idle = Duration::from_millis(1 + rng.next() % 10);
            // Idle timers run between requests, not before the first one (a
            // fresh connection's request may be delayed by the scheduler).
            let idle_timer = matches!(
                kind,
                Misbehaviour::Idle408 | Misbehaviour::IdleClose | Misbehaviour::IdleReset
            );
            if buf.is_empty() && answered > 0 && idle_timer {
                s.set_read_timeout(Some(idle)).unwrap();
                let mut probe = [0u8; 1];
                match s.peek(&mut probe) {
                    Ok(n) if n > 0 => s.set_read_timeout(None).unwrap(),
                    Ok(_) => return,
                    Err(_) => {
                        let counter = match kind {
                            Misbehaviour::Idle408 => {
                                let _ = s.write_all(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
                                &events.idle_408s
                            }
                            Misbehaviour::IdleReset => {
                                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                                &events.idle_resets
                            }
                            _ => &events.idle_closes,
                        };
                        counter.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            }
            let Some(head) = read_head(&mut s, &mut buf) else {
                return;
            };
            stats.requests.fetch_add(1, Ordering::SeqCst);
            let mut out = echo(&head);
            if matches!(kind, Misbehaviour::StrayBehind) {
                out.extend_from_slice(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Token: stray\r\n\r\nstray",
                );
                events.strays.fetch_add(1, Ordering::SeqCst);
            }
            if s.write_all(&out).is_err() {
                return;
            }
            answered += 1;
            if matches!(kind, Misbehaviour::CloseAfterThree) && answered == 3 {
                events.closes_after_three.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    }))
}

/// One client's run: `n` GETs in order on keep-alive connections (a new one
/// now and then), each checked to be its own; returns what went wrong.
fn client_run(addr: SocketAddr, id: usize, n: usize, seed: u64) -> Vec<String> {
    let mut rng = Rng(seed);
    let mut wrong = Vec::new();
    let mut c = Client::connect(addr);
    let name = format!("client{id}");
    for i in 0..n {
        if rng.next() % 8 == 0 {
            c = Client::connect(addr);
        }
        if rng.next() % 3 == 0 {
            // Idle gaps let the origins' idle timers fire.
            std::thread::sleep(Duration::from_millis(rng.next() % 20));
        }
        let path = format!("/{name}/{i}");
        c.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Client: {name}\r\n\r\n").as_bytes());
        // The client checks the token; any other outcome is recorded here.
        match c.try_read_response(false) {
            Some(r)
                if r.status == 200 && r.body_str() == format!("GET {path} HTTP/1.1 for {name}") => {
            }
            Some(r) => wrong.push(format!("{path}: {} {:?}", r.status, r.body_str())),
            None => {
                wrong.push(format!("{path}: connection closed"));
                c = Client::connect(addr);
            }
        }
    }
    wrong
}

#[test]
fn each_client_gets_exactly_its_own_responses_from_misbehaving_origins() {
    const CLIENTS: usize = 8;
    const PER_CLIENT: usize = 160;
    let events = Arc::new(Events::default());
    for round in 0..3u64 {
        let seed = 0x5EED_0000 + round;
        let origins: Vec<Origin> = (0..3)
            .map(|k| misbehaving_origin(seed * 7 + k, events.clone()))
            .collect();
        let addrs: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
        let lb = Ringlb::start(
            &proxy_config(&addrs, "retries = 2", "").replace("workers = 1", "workers = 2"),
        );
        let started = Instant::now();
        let wrong = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..CLIENTS)
            .map(|id| {
                let (addr, wrong) = (lb.addr(), wrong.clone());
                std::thread::spawn(move || {
                    let w = client_run(
                        addr,
                        id,
                        PER_CLIENT,
                        seed ^ ((id as u64 + 1) * 0x1234_5678_9ABC),
                    );
                    wrong.lock().unwrap().extend(w);
                })
            })
            .collect();
        for t in threads {
            t.join()
                .expect("a client saw a response desync (see its panic)");
        }
        let served: usize = origins.iter().map(|o| o.requests()).sum();
        let wrong = wrong.lock().unwrap();
        eprintln!(
            "round {round}: {} requests in {:?}, {served} reached the origins, {} upstream connections",
            CLIENTS * PER_CLIENT,
            started.elapsed(),
            origins.iter().map(|o| o.connections()).sum::<usize>()
        );
        assert!(
            wrong.is_empty(),
            "round {round}: {wrong:#?}\n{}",
            lb.log_text()
        );
        assert!(served >= CLIENTS * PER_CLIENT);
    }
    let counts = [
        ("stray responses", events.strays.load(Ordering::SeqCst)),
        ("idle 408s", events.idle_408s.load(Ordering::SeqCst)),
        ("idle closes", events.idle_closes.load(Ordering::SeqCst)),
        ("idle resets", events.idle_resets.load(Ordering::SeqCst)),
        (
            "closes after three",
            events.closes_after_three.load(Ordering::SeqCst),
        ),
    ];
    eprintln!("misbehaviours: {counts:?}");
    for (what, n) in counts {
        assert!(n >= 5, "too few {what} to prove anything: {n}");
    }
}
