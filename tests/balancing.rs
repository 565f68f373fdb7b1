//! Balancing end to end: `least_inflight`, `p2c` and `peak_ewma` send traffic
//! to the fast or idle server; maglev's `client_ip` and `header:NAME` keys keep
//! a client on one server (`path` is pinned in `tests/routing.rs`).
//!
//! Every assertion compares shares of requests with a wide margin (round robin,
//! the control, splits the same load evenly); no latency is a pass criterion.

mod common;

use common::client::Client;
use common::origin::{header, read_head, token_field, Origin, Stats};
use common::Ringlb;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A test backend: `GET /` answers after `delay` with the body `name`
/// (counted in `stats.requests`, head kept in `stats.heads`); `GET /hold`
/// answers only once `release` is set (or after 10 s), counted in `held`
/// while it waits; `GET /healthz` answers 200 while `health_ok`, else 503.
struct Backend {
    origin: Origin,
    held: Arc<AtomicUsize>,
    release: Arc<AtomicBool>,
    health_ok: Arc<AtomicBool>,
}

impl Backend {
    fn start(name: &'static str, delay: Duration) -> Backend {
        let held = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(AtomicBool::new(false));
        let health_ok = Arc::new(AtomicBool::new(true));
        let (holding, released, healthy) = (held.clone(), release.clone(), health_ok.clone());
        let origin = Origin::with_handler(Arc::new(move |mut s: TcpStream, stats: &Stats| {
            let mut buf = Vec::new();
            while let Some(head) = read_head(&mut s, &mut buf) {
                let path = head.split_whitespace().nth(1).unwrap_or("/");
                let status = match path {
                    "/hold" => {
                        holding.fetch_add(1, Ordering::SeqCst);
                        let deadline = Instant::now() + Duration::from_secs(10);
                        while !released.load(Ordering::SeqCst) && Instant::now() < deadline {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        holding.fetch_sub(1, Ordering::SeqCst);
                        "200 OK"
                    }
                    "/healthz" if healthy.load(Ordering::SeqCst) => "200 OK",
                    "/healthz" => "503 Down",
                    _ => {
                        stats.requests.fetch_add(1, Ordering::SeqCst);
                        stats.heads.lock().unwrap().push(head.clone());
                        if !delay.is_zero() {
                            std::thread::sleep(delay);
                        }
                        "200 OK"
                    }
                };
                let r = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{}\r\n{name}",
                    name.len(),
                    token_field(&head)
                );
                if s.write_all(r.as_bytes()).is_err() {
                    return;
                }
                if header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
                    return;
                }
            }
        }));
        Backend {
            origin,
            held,
            release,
            health_ok,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.origin.addr
    }

    fn requests(&self) -> usize {
        self.origin.requests()
    }

    fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.release.store(true, Ordering::SeqCst);
    }
}

fn config(workers: usize, servers: &[SocketAddr], upstream_extra: &str) -> String {
    let list = common::server_list(servers);
    format!(
        "workers = {workers}\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n\n\
         [[upstream]]\nname = \"app\"\nservers = [{list}]\n{upstream_extra}\n"
    )
}

/// `clients` keep-alive clients sending `GET /` back to back until `window`
/// has passed; returns how many got their 200.
fn closed_loop(addr: SocketAddr, clients: usize, window: Duration) -> usize {
    let deadline = Instant::now() + window;
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut ok = 0;
                for _ in 0..1_000_000 {
                    if Instant::now() >= deadline {
                        break;
                    }
                    c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
                    let r = c.read_response(false);
                    assert_eq!(r.status, 200, "{}", r.head);
                    ok += 1;
                }
                ok
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

const SLOW: Duration = Duration::from_millis(50);

/// Skewed latency: one server answers at once, the other after 50 ms; eight
/// clients send back to back for 1.5 s. Returns the fast server's share.
fn fast_share(balance: &str) -> f64 {
    let fast = Backend::start("fast", Duration::ZERO);
    let slow = Backend::start("slow", SLOW);
    // The slow server first: a balancer that favours the first server loses.
    let lb = Ringlb::start(&config(
        1,
        &[slow.addr(), fast.addr()],
        &format!("balance = \"{balance}\""),
    ));
    let ok = closed_loop(lb.addr(), 8, Duration::from_millis(1500));
    let (f, s) = (fast.requests(), slow.requests());
    assert_eq!(f + s, ok, "every request reached one server");
    let share = f as f64 / ok as f64;
    eprintln!("{balance}: 8 clients for 1.5 s, fast {f} slow {s} requests: fast share {share:.3}");
    share
}

/// Requests held open on the fast server.
const HELD: usize = 32;

/// Skewed load: the fast server `a` holds 32 requests open, the other, `b`,
/// is idle but slower (2 ms). One client then sends 50 requests one after
/// another. Returns the idle server's share.
///
/// The held requests are piled on `a` while active checks have `b` down (a
/// load-aware balancer would not pile them on one server itself), and no
/// request completes on `a` before the measurement: `a` has no latency
/// history. A balancer blind to load picks `a` (the faster) or alternates.
fn idle_share(balance: &str) -> f64 {
    let a = Backend::start("a", Duration::ZERO);
    let b = Backend::start("b", Duration::from_millis(2));
    b.health_ok.store(false, Ordering::SeqCst);
    let lb = Ringlb::start(&config(
        1,
        &[a.addr(), b.addr()],
        &format!(
            "balance = \"{balance}\"\n[upstream.health_check]\npath = \"/healthz\"\n\
             interval = \"100ms\"\ntimeout = \"90ms\"\nrise = 1\nfall = 2"
        ),
    ));
    let addr = lb.addr();
    let b_down = format!("server {}: up -> down", b.addr());
    common::eventually("b down", Duration::from_secs(5), || {
        lb.log_contains(&b_down)
    });
    let holders: Vec<_> = (0..HELD)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.send(b"GET /hold HTTP/1.1\r\nHost: localhost\r\n\r\n");
                c.read_response(false).status
            })
        })
        .collect();
    common::eventually("requests held open on a", Duration::from_secs(5), || {
        a.held() == HELD
    });
    b.health_ok.store(true, Ordering::SeqCst);
    let b_up = format!("server {}: down -> up", b.addr());
    common::eventually("b up", Duration::from_secs(5), || lb.log_contains(&b_up));
    let mut c = Client::connect(addr);
    let n = 50;
    for _ in 0..n {
        c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert_eq!(c.read_response(false).status, 200);
    }
    assert_eq!(a.held(), HELD, "still held while measuring");
    a.release.store(true, Ordering::SeqCst);
    for h in holders {
        assert_eq!(h.join().unwrap(), 200);
    }
    let (i, k) = (b.requests(), a.requests());
    assert_eq!(i + k, n);
    let share = i as f64 / n as f64;
    eprintln!(
        "{balance}: {HELD} requests held open on the fast server: idle (2 ms) {i}, busy {k} of {n}: idle share {share:.2}"
    );
    share
}

#[test]
fn round_robin_control_splits_the_same_loads_evenly() {
    // The control: the measurements below tell balancers apart only if a
    // load-blind one splits the same loads evenly.
    let fast = fast_share("round_robin");
    assert!((0.4..=0.6).contains(&fast), "fast share {fast}");
    let idle = idle_share("round_robin");
    assert!((0.4..=0.6).contains(&idle), "idle share {idle}");
}

#[test]
fn least_inflight_prefers_the_fast_and_the_idle_server() {
    let fast = fast_share("least_inflight");
    assert!(
        fast >= 0.8,
        "least_inflight: fast share {fast} (round robin: 0.5)"
    );
    let idle = idle_share("least_inflight");
    assert!(
        idle >= 0.9,
        "least_inflight: idle share {idle} (round robin: 0.5)"
    );
}

#[test]
fn p2c_prefers_the_fast_and_the_idle_server() {
    let fast = fast_share("p2c");
    assert!(fast >= 0.8, "p2c: fast share {fast} (round robin: 0.5)");
    let idle = idle_share("p2c");
    assert!(idle >= 0.9, "p2c: idle share {idle} (round robin: 0.5)");
}

#[test]
fn peak_ewma_prefers_the_fast_and_the_idle_server() {
    let fast = fast_share("peak_ewma");
    assert!(
        fast >= 0.8,
        "peak_ewma: fast share {fast} (round robin: 0.5)"
    );
    let idle = idle_share("peak_ewma");
    assert!(
        idle >= 0.9,
        "peak_ewma: idle share {idle} (round robin: 0.5)"
    );
}

/// Latency alone, with no load to tell the servers apart: one client sends
/// requests one after another, so both servers have nothing in flight at
/// every pick. Only a latency-aware balancer prefers the fast one
/// (least_inflight and p2c split evenly here).
#[test]
fn peak_ewma_prefers_the_fast_server_without_concurrency() {
    let fast = Backend::start("fast", Duration::ZERO);
    let slow = Backend::start("slow", SLOW);
    let lb = Ringlb::start(&config(
        1,
        &[slow.addr(), fast.addr()],
        "balance = \"peak_ewma\"",
    ));
    let ok = closed_loop(lb.addr(), 1, Duration::from_millis(800));
    let (f, s) = (fast.requests(), slow.requests());
    assert_eq!(f + s, ok);
    let share = f as f64 / ok as f64;
    eprintln!(
        "peak_ewma, one sequential client for 0.8 s: fast {f} slow {s}: fast share {share:.3}"
    );
    assert!(ok >= 20, "the load ran: {ok}");
    assert!(share >= 0.8, "peak_ewma: fast share {share} (p2c: 0.5)");
}

static TOKENS: AtomicUsize = AtomicUsize::new(1);

/// One `GET /` with `extra` field lines on a fresh connection bound to the
/// source address `src`; returns the body (the name of the server that
/// answered). Checks the status and the echoed token.
fn get_from(src: Ipv4Addr, lb: SocketAddr, extra: &str) -> String {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    sock.bind(&SocketAddr::new(src.into(), 0).into())
        .unwrap_or_else(|e| panic!("bind {src}: {e}"));
    sock.connect_timeout(&lb.into(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect from {src}: {e}"));
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let token = format!("hash-{}", TOKENS.fetch_add(1, Ordering::Relaxed));
    s.write_all(format!("GET / HTTP/1.1\r\nHost: x\r\n{extra}X-Token: {token}\r\n\r\n").as_bytes())
        .unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    let head_end = loop {
        if let Some(e) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break e + 4;
        }
        assert!(Instant::now() < deadline, "no response head");
        let n = s.read(&mut tmp).expect("read response");
        assert!(n > 0, "closed before a response: {buf:?}");
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(header(&head, "x-token"), Some(token.as_str()), "{head}");
    let len: usize = header(&head, "content-length").unwrap().parse().unwrap();
    while buf.len() < head_end + len {
        assert!(Instant::now() < deadline, "body cut short");
        let n = s.read(&mut tmp).expect("read body");
        assert!(n > 0, "body cut short");
        buf.extend_from_slice(&tmp[..n]);
    }
    String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned()
}

/// Source addresses 127.0.0.2 ... (all of 127/8 is loopback on Linux).
fn sources(n: u8) -> Vec<Ipv4Addr> {
    (2..2 + n).map(|k| Ipv4Addr::new(127, 0, 0, k)).collect()
}

fn three_named_backends() -> Vec<Backend> {
    ["s0", "s1", "s2"]
        .into_iter()
        .map(|n| Backend::start(n, Duration::ZERO))
        .collect()
}

/// Sends `per_source` requests (each on a new connection) from every source
/// address; returns the servers each source reached.
fn servers_by_source(
    lb: SocketAddr,
    srcs: &[Ipv4Addr],
    per_source: usize,
    extra: &str,
) -> BTreeMap<Ipv4Addr, BTreeSet<String>> {
    let mut seen: BTreeMap<Ipv4Addr, BTreeSet<String>> = BTreeMap::new();
    for _ in 0..per_source {
        for &src in srcs {
            let server = get_from(src, lb, extra);
            seen.entry(src).or_default().insert(server);
        }
    }
    seen
}

#[test]
fn maglev_client_ip_keeps_each_client_address_on_one_server() {
    let backends = three_named_backends();
    let addrs: Vec<SocketAddr> = backends.iter().map(Backend::addr).collect();
    // Two workers: a client's connections land on either, and both must agree.
    let lb = Ringlb::start(&config(
        2,
        &addrs,
        "balance = \"maglev\"\nhash_key = \"client_ip\"",
    ));
    let srcs = sources(12);
    let seen = servers_by_source(lb.addr(), &srcs, 5, "");
    // The origins saw the source addresses (the binding took effect).
    let forwarded: BTreeSet<String> = backends
        .iter()
        .flat_map(|b| b.origin.heads())
        .filter_map(|h| header(&h, "x-forwarded-for").map(str::to_string))
        .collect();
    let expected: BTreeSet<String> = srcs.iter().map(|s| s.to_string()).collect();
    assert_eq!(forwarded, expected, "origins saw every source address");
    eprintln!("client_ip: {seen:?}");
    for (src, servers) in &seen {
        assert_eq!(servers.len(), 1, "{src} spread over {servers:?}");
    }
    let used: BTreeSet<&String> = seen.values().flatten().collect();
    assert!(
        used.len() >= 2,
        "12 addresses all hashed to one server: {seen:?}"
    );
}

#[test]
fn maglev_header_key_falls_back_to_the_client_address() {
    let backends = three_named_backends();
    let addrs: Vec<SocketAddr> = backends.iter().map(Backend::addr).collect();
    let lb = Ringlb::start(&config(
        2,
        &addrs,
        "balance = \"maglev\"\nhash_key = \"header:x-user\"",
    ));
    let srcs = sources(12);

    // Without the header: the client address decides, so each address keeps
    // one server and the addresses spread (a fallback that hashed the same
    // thing for everyone would put them all on one server).
    let without = servers_by_source(lb.addr(), &srcs, 4, "");
    eprintln!("header:x-user, no header: {without:?}");
    for (src, servers) in &without {
        assert_eq!(servers.len(), 1, "{src} without the header: {servers:?}");
    }
    let used: BTreeSet<&String> = without.values().flatten().collect();
    assert!(
        used.len() >= 2,
        "without the header, 12 addresses all went to one server: {without:?}"
    );

    // With the header: it decides, whatever the address.
    let with = servers_by_source(lb.addr(), &srcs, 2, "X-User: alice\r\n");
    let used: BTreeSet<&String> = with.values().flatten().collect();
    eprintln!("header:x-user, X-User: alice from 12 addresses: {used:?}");
    assert_eq!(used.len(), 1, "one user spread over servers: {with:?}");

    // And different users from one address spread.
    let users: BTreeSet<String> = (0..12)
        .map(|u| get_from(srcs[0], lb.addr(), &format!("X-User: user{u}\r\n")))
        .collect();
    eprintln!("header:x-user, 12 users from {}: {users:?}", srcs[0]);
    assert!(users.len() >= 2, "12 users all on one server: {users:?}");
}
