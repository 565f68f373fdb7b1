//! Shedding load: connection caps, in-flight limits with the deadline queue,
//! per-server and per-address caps, adaptive concurrency. Each test drives
//! the real binary past a limit and checks both sides: the origin never sees
//! more than the limit, and every client gets its own response or the shed
//! `503` (with `Retry-After` and its reason) within a deadline.

mod common;

use common::client::{Client, Response};
use common::origin::{read_head, token_field, Origin, Stats};
use common::{admin_get, eventually, metric, proxy_config, Ringlb};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// An origin the test steers: each request waits `delay_ms`, or for `/gated`
/// until the test releases it; it counts requests and connections in flight
/// (and their peaks) and records the order in which request tokens arrived.
#[derive(Default)]
struct Steered {
    delay_ms: AtomicU64,
    active: AtomicUsize,
    peak: AtomicUsize,
    conns: AtomicUsize,
    peak_conns: AtomicUsize,
    arrived: Mutex<Vec<String>>,
    /// Releases granted to `/gated` requests and not yet used.
    gate: (Mutex<usize>, Condvar),
}

impl Steered {
    fn origin(self: &Arc<Self>) -> Origin {
        let me = self.clone();
        Origin::with_handler(Arc::new(move |s, stats| me.serve(s, stats)))
    }

    fn serve(&self, mut s: TcpStream, stats: &Stats) {
        let open = self.conns.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_conns.fetch_max(open, Ordering::SeqCst);
        let mut buf = Vec::new();
        while let Some(head) = read_head(&mut s, &mut buf) {
            stats.requests.fetch_add(1, Ordering::SeqCst);
            let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            let token = token_field(&head);
            self.arrived.lock().unwrap().push(token.trim().to_string());
            if head.starts_with("GET /gated ") {
                self.wait_for_release();
            } else {
                std::thread::sleep(Duration::from_millis(self.delay_ms.load(Ordering::SeqCst)));
            }
            self.active.fetch_sub(1, Ordering::SeqCst);
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n{token}\r\nok");
            if s.write_all(answer.as_bytes()).is_err() {
                break;
            }
        }
        self.conns.fetch_sub(1, Ordering::SeqCst);
    }

    fn wait_for_release(&self) {
        let (lock, cv) = &self.gate;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut left = lock.lock().unwrap();
        while *left == 0 {
            let wait = deadline.saturating_duration_since(Instant::now());
            assert!(!wait.is_zero(), "a gated request was never released");
            left = cv.wait_timeout(left, wait).unwrap().0;
        }
        *left -= 1;
    }

    fn release(&self, n: usize) {
        *self.gate.0.lock().unwrap() += n;
        self.gate.1.notify_all();
    }

    fn arrived(&self) -> Vec<String> {
        self.arrived.lock().unwrap().clone()
    }
}

/// Sheds for `reason`, summed over the workers (up to two in these tests).
fn shed(admin: SocketAddr, reason: &str) -> f64 {
    (0..2)
        .map(|w| {
            metric(
                admin,
                &format!("ringlb_shed_total{{reason=\"{reason}\",worker=\"{w}\"}}"),
            )
        })
        .sum()
}

/// A shed answer: 503, `Retry-After`, the reason in the body.
fn assert_shed(r: &Response, reasons: &[&str]) {
    assert_eq!(r.status, 503, "{}", r.head);
    assert_eq!(r.header("Retry-After"), Some("1"), "{}", r.head);
    let body = r.body_str();
    assert!(
        reasons
            .iter()
            .any(|why| body == format!("overloaded: {why}\n")),
        "expected a shed for {reasons:?}, got {body:?}"
    );
    assert!(
        r.token().is_none(),
        "a shed answer never reaches the origin"
    );
}

fn start(config: &str) -> (Ringlb, SocketAddr) {
    let rl = Ringlb::start(config);
    let admin = rl.admin_addr().expect("admin listener");
    (rl, admin)
}

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"";

fn send_get(c: &mut Client, path: &str) {
    c.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
}

/// Raises this process's open-file limit to its hard limit (a flood of
/// clients needs a descriptor each).
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain rlimit calls on this process with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

#[test]
fn a_flood_never_exceeds_the_limit_and_the_excess_gets_a_fast_503() {
    let clients = (raise_nofile().saturating_sub(200) as usize / 2).min(1000);
    assert!(clients >= 300, "needs an open-file limit of at least 800");
    let steered = Arc::new(Steered::default());
    steered.delay_ms.store(50, Ordering::SeqCst);
    let origin = steered.origin();
    let config = proxy_config(
        &[origin.addr],
        "max_in_flight = 20\nqueue_size = 50\nqueue_timeout = \"100ms\"\nresponse_timeout = \"10s\"",
        &format!("[limits]\nmax_connections = 4000\n{ADMIN}"),
    )
    .replace("workers = 1", "workers = 2");
    let (rl, admin) = start(&config);
    let addr = rl.addr();
    let start_gate = Arc::new(std::sync::Barrier::new(clients));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let gate = start_gate.clone();
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut c = Client::connect(addr);
                    gate.wait();
                    let mut seen = Vec::new();
                    for _ in 0..3 {
                        let t = Instant::now();
                        send_get(&mut c, "/");
                        let r = c.read_response(false);
                        seen.push((r, t.elapsed()));
                    }
                    seen
                })
                .unwrap()
        })
        .collect();
    // The admin listener is never shed: it answers during the flood.
    let t = Instant::now();
    let st = admin_get(admin, "/status");
    assert!(st.starts_with("HTTP/1.1 200 "), "{st}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "admin took {:?}",
        t.elapsed()
    );
    let (mut ok, mut shed_answers, mut slowest_shed) = (0, 0, Duration::ZERO);
    for t in threads {
        for (r, took) in t.join().expect("a client failed") {
            if r.status == 200 {
                ok += 1; // with its own token: the client checks it
                continue;
            }
            assert_shed(&r, &["queue_full", "queue_timeout"]);
            shed_answers += 1;
            slowest_shed = slowest_shed.max(took);
        }
    }
    let peak = steered.peak.load(Ordering::SeqCst);
    eprintln!(
        "{clients} clients x 3: {ok} answered, {shed_answers} shed (slowest {slowest_shed:?}); \
         origin peak {peak} in flight, {} connections",
        steered.peak_conns.load(Ordering::SeqCst)
    );
    assert!(peak <= 20, "the origin saw {peak} requests at once");
    assert!(
        steered.peak_conns.load(Ordering::SeqCst) <= 20,
        "a limited pool opened more connections than its limit"
    );
    assert!(ok >= 40, "too few admitted: {ok}");
    assert!(shed_answers > 0, "a flood of {clients} must shed");
    assert!(
        slowest_shed < Duration::from_secs(2),
        "a shed answer took {slowest_shed:?} (queue_timeout is 100ms)"
    );
    let counted = shed(admin, "queue_full") + shed(admin, "queue_timeout");
    assert_eq!(counted as usize, shed_answers, "metrics count every shed");
    let rss_kb = rl.status_kb("VmRSS");
    assert!(rss_kb < 150_000, "RSS {rss_kb} kB after the flood");
    assert!(
        rl.log_text().matches("shedding").count() <= 4,
        "one log line per burst, not per request:\n{}",
        rl.log_text()
    );
}

/// Waits until `/metrics` shows `n` requests queued for pool `app`.
fn await_queued(admin: SocketAddr, n: usize) {
    eventually(&format!("{n} queued"), Duration::from_secs(5), || {
        metric(admin, "ringlb_upstream_queued{upstream=\"app\"}") as usize == n
    });
}

#[test]
fn the_queue_is_fifo_and_a_client_that_leaves_frees_its_place_at_once() {
    let steered = Arc::new(Steered::default());
    let origin = steered.origin();
    let config = proxy_config(
        &[origin.addr],
        "max_in_flight = 1\nqueue_size = 3\nqueue_timeout = \"10s\"\nresponse_timeout = \"30s\"",
        ADMIN,
    );
    let (rl, admin) = start(&config);
    let mut c: Vec<Client> = (0..6).map(|_| Client::connect(rl.addr())).collect();
    let tokens: Vec<String> = c.iter().map(|c| c.next_token()).collect();
    send_get(&mut c[0], "/gated");
    eventually(
        "the first request at the origin",
        Duration::from_secs(5),
        || steered.arrived().len() == 1,
    );
    for (i, client) in c.iter_mut().enumerate().take(4).skip(1) {
        send_get(client, "/gated");
        await_queued(admin, i);
    }
    // The queue is full: the next request is shed at once.
    send_get(&mut c[4], "/gated");
    assert_shed(&c[4].read_response(false), &["queue_full"]);
    // The second queued client leaves; its place frees without waiting for
    // the queue timeout.
    drop(c.remove(2));
    await_queued(admin, 2);
    send_get(&mut c[4], "/gated"); // the sixth client (indices shifted)
    await_queued(admin, 3);
    steered.release(4);
    for i in [0, 1, 2, 4] {
        let r = c[i].read_response(false);
        assert_eq!(r.status, 200, "{}", r.head);
    }
    let arrived = steered.arrived();
    let expect: Vec<String> = [0, 1, 3, 5]
        .iter()
        .map(|&i| format!("{}: {}", common::client::TOKEN, tokens[i]))
        .collect();
    assert_eq!(
        arrived, expect,
        "first in, first out; the leaver never arrives"
    );
    assert_eq!(steered.peak_conns.load(Ordering::SeqCst), 1);
    assert_eq!(shed(admin, "queue_full"), 1.0);
    let st = admin_get(admin, "/status");
    assert!(
        st.contains("\"admission\":{\"limit_per_worker\":[1],\"queued\":")
            && st.contains("\"queue_full\":{\"total\":1,\"per_worker\":[1]}"),
        "/status shows the limit and the sheds: {st}"
    );
    assert_eq!(
        metric(
            admin,
            "ringlb_upstream_queued_requests_total{upstream=\"app\"}"
        ),
        3.0
    );
}

/// A steered origin behind ringlb (`upstream` keys for the pool) with one
/// `/gated` request already held at the origin by `holder`.
struct Held {
    steered: Arc<Steered>,
    _origin: Origin,
    rl: Ringlb,
    admin: SocketAddr,
    holder: Client,
}

fn one_request_held(upstream: &str) -> Held {
    let steered = Arc::new(Steered::default());
    let origin = steered.origin();
    let (rl, admin) = start(&proxy_config(&[origin.addr], upstream, ADMIN));
    let mut holder = Client::connect(rl.addr());
    send_get(&mut holder, "/gated");
    eventually("the held request", Duration::from_secs(5), || {
        steered.arrived().len() == 1
    });
    Held {
        steered,
        _origin: origin,
        rl,
        admin,
        holder,
    }
}

#[test]
fn a_request_queued_past_its_deadline_gets_503_and_the_connection_stays_usable() {
    let Held {
        steered,
        _origin,
        rl,
        admin,
        mut holder,
        ..
    } = one_request_held(
        "max_in_flight = 1\nqueue_size = 1\nqueue_timeout = \"300ms\"\nresponse_timeout = \"30s\"",
    );
    let mut waiter = Client::connect(rl.addr());
    let t = Instant::now();
    send_get(&mut waiter, "/");
    let r = waiter.read_response(false);
    let waited = t.elapsed();
    assert_shed(&r, &["queue_timeout"]);
    assert!(
        waited >= Duration::from_millis(280) && waited < Duration::from_secs(2),
        "answered after {waited:?}, queue_timeout is 300ms"
    );
    steered.release(1);
    assert_eq!(holder.read_response(false).status, 200);
    send_get(&mut waiter, "/");
    assert_eq!(
        waiter.read_response(false).status,
        200,
        "kept alive after the shed"
    );
    assert_eq!(shed(admin, "queue_timeout"), 1.0);
    assert_eq!(
        steered.arrived().len(),
        2,
        "the timed-out request never went upstream"
    );
}

#[test]
fn without_a_queue_the_limit_sheds_at_once_and_per_server_limits_hold() {
    let (a, b) = (Arc::new(Steered::default()), Arc::new(Steered::default()));
    let (oa, ob) = (a.origin(), b.origin());
    let config = proxy_config(
        &[oa.addr, ob.addr],
        "balance = \"round_robin\"\nmax_in_flight_per_server = 2\nresponse_timeout = \"30s\"",
        ADMIN,
    );
    let (rl, admin) = start(&config);
    let mut held: Vec<Client> = (0..4).map(|_| Client::connect(rl.addr())).collect();
    for c in held.iter_mut() {
        send_get(c, "/gated");
    }
    eventually("four requests held", Duration::from_secs(5), || {
        a.arrived().len() + b.arrived().len() == 4
    });
    let mut extra = Client::connect(rl.addr());
    let t = Instant::now();
    send_get(&mut extra, "/");
    assert_shed(&extra.read_response(false), &["in_flight"]);
    assert!(t.elapsed() < Duration::from_secs(1), "shed at once");
    // Slots free on b, one at a time, and a request follows each. Round
    // robin's turn is a's for one of the two at least, but a is full: both
    // must go to b.
    let mut late = Vec::new();
    for arrived in [3, 4] {
        b.release(1);
        eventually("b's slot to free", Duration::from_secs(5), || {
            b.active.load(Ordering::SeqCst) == 1
        });
        let mut c = Client::connect(rl.addr());
        send_get(&mut c, "/gated");
        eventually("the late request at b", Duration::from_secs(5), || {
            b.arrived().len() == arrived
        });
        late.push(c);
    }
    assert_eq!(a.arrived().len(), 2, "a full server is passed over");
    a.release(2);
    b.release(2);
    for c in held.iter_mut().chain(late.iter_mut()) {
        assert_eq!(c.read_response(false).status, 200);
    }
    assert_eq!(a.peak.load(Ordering::SeqCst), 2);
    assert_eq!(b.peak.load(Ordering::SeqCst), 2);
    send_get(&mut extra, "/");
    assert_eq!(extra.read_response(false).status, 200, "room again");
    assert_eq!(shed(admin, "in_flight"), 1.0);
}

/// Reads until EOF (or a reset) within `within`; true if the peer closed.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut tmp = [0u8; 512];
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match s.read(&mut tmp) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
    false
}

/// Connects, sends a GET, and returns the answer read from a raw socket
/// (a refused connection is answered before the request is read).
fn raw_get(s: &mut TcpStream) -> String {
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    read_answer(s)
}

/// Reads one answer from a raw socket: its head and a Content-Length body
/// (less if the connection ends first).
fn read_answer(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let mut tmp = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = common::origin::header(&text[..end], "content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if out.len() >= end + 4 + length {
                return text;
            }
        }
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return text,
            Ok(n) => out.extend_from_slice(&tmp[..n]),
        }
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn at_the_connection_cap_new_clients_get_503_and_close_and_existing_ones_are_served() {
    raise_nofile();
    let origin = Origin::start();
    let config = proxy_config(
        &[origin.addr],
        "",
        &format!("[limits]\nmax_connections = 100\n{ADMIN}"),
    );
    let (rl, admin) = start(&config);
    let baseline = open_fds(rl.pid());
    let mut kept: Vec<Client> = (0..100).map(|_| Client::connect(rl.addr())).collect();
    for c in kept.iter_mut() {
        send_get(c, "/");
        assert_eq!(c.read_response(false).status, 200);
    }
    let mut refused: Vec<TcpStream> = (0..400)
        .map(|_| TcpStream::connect(rl.addr()).unwrap())
        .collect();
    // Each gets the 503 and a close, or (past the 256 refusals a worker
    // lets linger at once) a close without an answer: never service, never
    // a hang.
    let mut answered = 0;
    for s in refused.iter_mut() {
        let answer = raw_get(s);
        if !answer.is_empty() {
            assert!(
                answer.starts_with("HTTP/1.1 503 ")
                    && answer.contains("\r\nConnection: close\r\n")
                    && answer.contains("\r\nRetry-After: 1\r\n"),
                "over the cap: {answer:?}"
            );
            answered += 1;
        }
        assert!(
            closed_within(s, Duration::from_secs(3)),
            "refused and closed"
        );
    }
    assert!(answered >= 256, "only {answered} of 400 refusals answered");
    for c in kept.iter_mut() {
        send_get(c, "/");
        assert_eq!(
            c.read_response(false).status,
            200,
            "existing clients keep full service"
        );
    }
    drop(refused);
    // Descriptors: the 100 clients and the pooled upstream connections.
    eventually(
        "refused connections to close",
        Duration::from_secs(5),
        || open_fds(rl.pid()) <= baseline + 100 + 100,
    );
    assert_eq!(shed(admin, "conn_limit"), 400.0);
    let log = rl.log_text();
    assert!(
        log.matches("conn_limit").count() <= 2,
        "the cap is logged once per burst:\n{log}"
    );
    // A slot given back is a slot a new client can take.
    kept.truncate(90);
    eventually("a freed slot", Duration::from_secs(5), || {
        let mut c = TcpStream::connect(rl.addr()).unwrap();
        raw_get(&mut c).starts_with("HTTP/1.1 200 ")
    });
}

/// A connection from `source` (a loopback address) to `to`.
fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{source}:0").parse().unwrap();
    s.bind(&from.into()).unwrap();
    s.connect(&to.into()).unwrap();
    s.into()
}

#[test]
fn the_per_address_cap_refuses_one_address_and_serves_another() {
    let origin = Origin::start();
    let config = proxy_config(
        &[origin.addr],
        "",
        &format!("[limits]\nmax_connections_per_ip = 3\n{ADMIN}"),
    );
    let (rl, admin) = start(&config);
    let mut mine: Vec<TcpStream> = (0..3)
        .map(|_| connect_from("127.0.0.1", rl.addr()))
        .collect();
    for s in mine.iter_mut() {
        assert!(raw_get(s).starts_with("HTTP/1.1 200 "));
    }
    let mut fourth = connect_from("127.0.0.1", rl.addr());
    let answer = raw_get(&mut fourth);
    assert!(
        answer.starts_with("HTTP/1.1 503 ") && answer.contains("Connection: close"),
        "{answer:?}"
    );
    let mut other = connect_from("127.0.0.2", rl.addr());
    assert!(
        raw_get(&mut other).starts_with("HTTP/1.1 200 "),
        "another address has room"
    );
    assert_eq!(shed(admin, "ip_limit"), 1.0);
    mine.pop();
    eventually("the address's slot back", Duration::from_secs(5), || {
        raw_get(&mut connect_from("127.0.0.1", rl.addr())).starts_with("HTTP/1.1 200 ")
    });
}

fn adaptive_limit(admin: SocketAddr) -> f64 {
    metric(
        admin,
        "ringlb_upstream_in_flight_limit{upstream=\"app\",worker=\"0\"}",
    )
}

#[test]
fn the_adaptive_limit_falls_when_the_upstream_slows_and_recovers() {
    let steered = Arc::new(Steered::default());
    steered.delay_ms.store(5, Ordering::SeqCst);
    let origin = steered.origin();
    let config = proxy_config(
        &[origin.addr],
        "queue_size = 200\nqueue_timeout = \"3s\"\nresponse_timeout = \"10s\"\n\
         [upstream.adaptive_concurrency]\nenabled = true\nmin_limit = 2\nmax_limit = 60\n\
         initial_limit = 10\nwindow = \"100ms\"",
        ADMIN,
    );
    let (rl, admin) = start(&config);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = rl.addr();
    let load: Vec<_> = (0..40)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    send_get(&mut c, "/");
                    let r = c.read_response(false);
                    if r.status != 200 {
                        assert_shed(&r, &["queue_timeout", "queue_full"]);
                    }
                }
            })
        })
        .collect();
    // Fast upstream: the limit grows while latency stays flat.
    eventually("the limit to grow", Duration::from_secs(10), || {
        adaptive_limit(admin) >= 30.0
    });
    let fast = adaptive_limit(admin);
    // The upstream slows 20x: the limit falls within a second or two.
    steered.delay_ms.store(100, Ordering::SeqCst);
    let t = Instant::now();
    eventually("the limit to fall", Duration::from_secs(5), || {
        adaptive_limit(admin) <= 8.0
    });
    let fell_in = t.elapsed();
    steered.peak.store(0, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(500));
    let slow_peak = steered.peak.load(Ordering::SeqCst);
    // Fast again: the limit comes back.
    steered.delay_ms.store(5, Ordering::SeqCst);
    let t = Instant::now();
    eventually("the limit to recover", Duration::from_secs(15), || {
        adaptive_limit(admin) >= 20.0
    });
    let recovered_in = t.elapsed();
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.join().expect("a load client failed");
    }
    eprintln!(
        "limit {fast} fast, fell to <=8 in {fell_in:?} (origin peak {slow_peak} while slow), \
         back to >=20 in {recovered_in:?}"
    );
    assert!(
        slow_peak <= 16,
        "the slowed origin still saw {slow_peak} at once"
    );
}

#[test]
fn with_a_server_down_a_per_server_limit_still_queues_for_the_live_one() {
    let live = Arc::new(Steered::default());
    let origin = live.origin();
    let config = proxy_config(
        &[origin.addr, common::origin::dead_addr()],
        "max_in_flight_per_server = 2\nqueue_size = 8\nqueue_timeout = \"5s\"\n\
         response_timeout = \"30s\"\n[upstream.health_check]\ntype = \"tcp\"\n\
         interval = \"100ms\"\ntimeout = \"100ms\"\nfall = 1",
        ADMIN,
    );
    let (rl, admin) = start(&config);
    eventually(
        "the dead server marked down",
        Duration::from_secs(10),
        || rl.log_contains("up -> down"),
    );
    let mut clients: Vec<Client> = (0..6).map(|_| Client::connect(rl.addr())).collect();
    for c in clients.iter_mut() {
        send_get(c, "/gated");
    }
    eventually(
        "two at the live server, four queued",
        Duration::from_secs(5),
        || {
            live.arrived().len() == 2
                && metric(admin, "ringlb_upstream_queued{upstream=\"app\"}") as usize == 4
        },
    );
    live.release(6);
    for c in clients.iter_mut() {
        let r = c.read_response(false);
        assert_eq!(
            r.status,
            200,
            "queued for the live server, not shed: {}",
            r.body_str()
        );
    }
    assert_eq!(live.peak.load(Ordering::SeqCst), 2);
    assert_eq!(shed(admin, "in_flight"), 0.0);
}

#[test]
fn a_client_shed_while_it_still_sends_its_body_reads_the_503() {
    let Held {
        steered,
        _origin,
        rl,
        mut holder,
        ..
    } = one_request_held("max_in_flight = 1\nresponse_timeout = \"30s\"");
    // A client that writes its whole 4 MiB body before reading anything.
    let mut s = TcpStream::connect(rl.addr()).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = vec![b'x'; 4 << 20];
    s.write_all(
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let written = s.write_all(&body);
    assert!(written.is_ok(), "the body was cut off: {written:?}");
    let answer = read_answer(&mut s);
    assert!(
        answer.starts_with("HTTP/1.1 503 ") && answer.contains("overloaded: in_flight"),
        "{answer:?}"
    );
    steered.release(1);
    assert_eq!(holder.read_response(false).status, 200);
}

#[test]
fn past_its_buffer_memory_a_worker_sheds_new_requests_and_serves_the_running_ones() {
    let steered = Arc::new(Steered::default());
    let origin = steered.origin();
    // 1 MiB for the one worker: 256 one-page buffers.
    let config = proxy_config(
        &[origin.addr],
        "response_timeout = \"30s\"",
        &format!("[limits]\nmax_memory_mb = 1\n{ADMIN}"),
    );
    let (rl, admin) = start(&config);
    let mut held = Vec::new();
    let mut refused = None;
    for n in 0..100 {
        let mut s = TcpStream::connect(rl.addr()).unwrap();
        s.write_all(b"GET /gated HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        // Either it reaches the origin, or it is shed at once.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if steered.arrived().len() == n + 1 {
                held.push(s);
                break;
            }
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            let mut tmp = [0u8; 512];
            if let Ok(k) = s.read(&mut tmp) {
                refused = Some(String::from_utf8_lossy(&tmp[..k]).into_owned());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "request {n} neither held nor shed"
            );
        }
        if refused.is_some() {
            break;
        }
    }
    let answer = refused.expect("256 pages cannot hold 100 requests");
    assert!(
        answer.starts_with("HTTP/1.1 503 ")
            && answer.contains("Connection: close")
            && answer.ends_with("overloaded: memory\n"),
        "{answer:?}"
    );
    // Each held request counts its head page and the three more it may take
    // (16 KiB); waiting for its response it holds no other buffer. A new one
    // needs room for four pages: 64 fit in 1 MiB (50 if a waiting request
    // held a page for its response).
    assert!(
        (60..=64).contains(&held.len()),
        "{} held before the cap",
        held.len()
    );
    assert_eq!(shed(admin, "memory"), 1.0);
    steered.release(held.len());
    for s in held.iter_mut() {
        let a = read_answer(s);
        assert!(
            a.starts_with("HTTP/1.1 200 "),
            "running requests finish: {a:?}"
        );
    }
    drop(held);
    eventually("room again", Duration::from_secs(5), || {
        let mut s = TcpStream::connect(rl.addr()).unwrap();
        raw_get(&mut s).starts_with("HTTP/1.1 200 ")
    });
}

#[test]
fn pausing_at_the_connection_cap_leaves_new_clients_waiting_until_a_slot_frees() {
    let origin = Origin::start();
    let config = proxy_config(
        &[origin.addr],
        "",
        &format!("[limits]\nmax_connections = 10\nat_connection_cap = \"pause\"\n{ADMIN}"),
    );
    let (rl, admin) = start(&config);
    let mut kept: Vec<Client> = (0..10).map(|_| Client::connect(rl.addr())).collect();
    for c in kept.iter_mut() {
        send_get(c, "/");
        assert_eq!(c.read_response(false).status, 200);
    }
    // The eleventh connects (the kernel's backlog) but is not served yet.
    let mut late = TcpStream::connect(rl.addr()).unwrap();
    late.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    late.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut tmp = [0u8; 256];
    assert!(
        matches!(late.read(&mut tmp), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "served or refused while the cap is held"
    );
    // A slot frees: the waiting client is accepted and served.
    drop(kept.pop());
    let t = Instant::now();
    let answer = read_answer(&mut late);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(shed(admin, "conn_limit"), 0.0, "nothing refused");
}
