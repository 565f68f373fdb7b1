//! Pools that heal themselves: active checks, passive ejection, retries under a
//! budget, slow start, panic mode, fast 503s, and the admin view, end to end.

mod common;

use common::client::{get, Client};
use common::origin::{dead_addr, Origin};
use common::{eventually, proxy_config, Ringlb};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn config(addrs: &[SocketAddr], upstream_extra: &str) -> String {
    format!(
        "workers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n\n\
         [[upstream]]\nname = \"app\"\nservers = [{}]\n{upstream_extra}\n",
        common::server_list(addrs)
    )
}

/// Bounded load: `conns` keep-alive clients sending GETs until `stop` or the
/// deadline; returns (ok, other statuses, errors).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    bad: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, conns: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..conns)
            .map(|_| {
                let (stop, ok, bad) = (stop.clone(), ok.clone(), bad.clone());
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    let mut c = Client::connect(addr);
                    for _ in 0..200_000 {
                        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                            break;
                        }
                        c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
                        match c.try_read_response(false) {
                            Some(r) if r.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Some(r) => bad.lock().unwrap().push(format!("status {}", r.status)),
                            None => {
                                bad.lock().unwrap().push("connection closed".into());
                                c = Client::connect(addr);
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            bad,
            threads,
        }
    }

    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.bad.lock().unwrap().clone(),
        )
    }
}

fn log_line_time(lb: &Ringlb, needle: &str) -> Option<Instant> {
    lb.log_contains(needle).then(Instant::now)
}

#[test]
fn killed_server_is_marked_down_retried_around_and_ramps_back() {
    let a = Origin::start();
    let mut b = Origin::start();
    let c = Origin::start();
    let b_addr = b.addr;
    let lb = Ringlb::start(&config(
        &[a.addr, b.addr, c.addr],
        "balance = \"weighted_round_robin\"\nretries = 2\nslow_start = \"2s\"\n\
         [upstream.health_check]\npath = \"/\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 2\nfall = 2",
    ));
    let load = Load::start(lb.addr(), 4);
    eventually("traffic on every server", Duration::from_secs(10), || {
        b.requests() > 50 && a.requests() > 50
    });

    let killed_at = Instant::now();
    b.kill();
    let needle = format!("server {b_addr}: up -> down");
    let mut detected = None;
    eventually("b marked down", Duration::from_secs(5), || {
        detected = log_line_time(&lb, &needle);
        detected.is_some()
    });
    let detect = detected.unwrap() - killed_at;
    // interval x fall = 400 ms, plus up to 10 % jitter per interval and the check timeout.
    assert!(
        detect < Duration::from_millis(1500),
        "detected after {detect:?}"
    );
    std::thread::sleep(Duration::from_millis(500));

    // b comes back on the same address.
    drop(b);
    b = Origin::start_on(b_addr);
    let back = format!("server {b_addr}: down -> up");
    eventually("b marked up", Duration::from_secs(5), || {
        lb.log_contains(&back)
    });
    let t_up = Instant::now();
    let share = |b: &Origin, a: &Origin, c: &Origin, window: Duration| {
        let (b0, a0, c0) = (b.requests(), a.requests(), c.requests());
        std::thread::sleep(window);
        let (db, da, dc) = (b.requests() - b0, a.requests() - a0, c.requests() - c0);
        db as f64 / (da + db + dc).max(1) as f64
    };
    let early = share(&b, &a, &c, Duration::from_millis(400));
    std::thread::sleep(Duration::from_secs(2).saturating_sub(t_up.elapsed()));
    let late = share(&b, &a, &c, Duration::from_millis(600));
    let (ok, bad) = load.finish();
    eprintln!("detected down after {detect:?}; {ok} ok; b share early {early:.3} late {late:.3}");
    eprintln!(
        "new b: {} connections, {} requests; a {} c {}",
        b.connections(),
        b.requests(),
        a.requests(),
        c.requests()
    );
    assert!(
        bad.is_empty(),
        "client-visible errors with retries on: {bad:?}"
    );
    assert!(ok > 1000, "load ran: {ok}");
    assert!(
        late > 0.2,
        "b takes its share again: {late}\n{}",
        lb.log_text()
    );
    assert!(
        early < late * 0.8,
        "slow start ramps: early {early} late {late}"
    );
}

/// An origin that answers 502 on every path except /healthz.
fn origin_502_but_healthy() -> Origin {
    Origin::with_handler(Arc::new(|mut s: TcpStream, stats| {
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        loop {
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            }
            let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end);
            let token = common::origin::token_field(&head);
            let r = if head.starts_with("GET /healthz ") {
                format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n{token}\r\nok")
            } else {
                stats.requests.fetch_add(1, Ordering::SeqCst);
                format!("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\n{token}\r\nbad")
            };
            if s.write_all(r.as_bytes()).is_err() {
                return;
            }
        }
    }))
}

#[test]
fn server_answering_502_is_ejected_while_passing_active_checks() {
    let good1 = Origin::start();
    let good2 = Origin::start();
    let bad = origin_502_but_healthy();
    let lb = Ringlb::start(&config(
        &[good1.addr, bad.addr, good2.addr],
        "[upstream.health_check]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\n\
         [upstream.outlier]\nconsecutive_failures = 3\nbase_ejection = \"30s\"",
    ));
    let mut c = Client::connect(lb.addr());
    let mut statuses = Vec::new();
    for _ in 0..150 {
        c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
        statuses.push(c.read_response(false).status);
    }
    let bad_count = statuses.iter().filter(|&&s| s == 502).count();
    assert_eq!(
        bad_count, 3,
        "exactly the streak that ejects reached clients: {statuses:?}"
    );
    assert_eq!(bad.requests(), 3);
    assert!(
        lb.log_contains(&format!("server {}: up -> ejected", bad.addr)),
        "{}",
        lb.log_text()
    );
    // Active checks still pass: the admin view says ejected, not down.
    let status = get(lb.admin_addr().unwrap(), "/status");
    let json = status.body_str();
    assert!(
        json.contains(&format!(
            "\"addr\":\"{}\",\"weight\":1,\"state\":\"ejected\",\"healthy\":true",
            bad.addr
        )),
        "{json}"
    );
    assert!(
        json.contains(&format!(
            "\"addr\":\"{}\",\"weight\":1,\"state\":\"up\"",
            good1.addr
        )),
        "{json}"
    );
}

/// An origin that accepts and closes every connection without answering.
fn origin_closing() -> Origin {
    Origin::with_handler(Arc::new(|mut s: TcpStream, _| {
        let mut tmp = [0u8; 4096];
        let _ = s.read(&mut tmp);
    }))
}

#[test]
fn retry_budget_caps_retries_when_every_server_fails() {
    let servers: Vec<Origin> = (0..3).map(|_| origin_closing()).collect();
    let addrs: Vec<SocketAddr> = servers.iter().map(|o| o.addr).collect();
    let lb = Ringlb::start(&config(
        &addrs,
        "retries = 2\nretry_budget = 0.2\n[upstream.outlier]\nconsecutive_failures = 0",
    ));
    let mut c = Client::connect(lb.addr());
    let n = 1000;
    let start = Instant::now();
    for _ in 0..n {
        c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert_eq!(c.read_response(false).status, 502);
    }
    let secs = start.elapsed().as_secs() as usize + 1;
    let attempts: usize = servers.iter().map(|o| o.connections()).sum();
    eprintln!("{n} requests in {secs} s or less, {attempts} upstream attempts");
    // Without a budget: 3 attempts each (3000). With it: the requests, a fifth
    // of them as retries, and the floor of 10 retries a second over the 10 s
    // window (plus the seconds the test took).
    let cap = n + n / 5 + 10 * (10 + secs);
    assert!(
        attempts >= n + n / 5,
        "the budget allows its share: {attempts}"
    );
    assert!(
        attempts <= cap,
        "retry storm: {attempts} attempts for {n} requests (cap {cap})"
    );
}

#[test]
fn no_healthy_server_is_a_fast_503_and_panic_mode_tries_anyway() {
    // Health checks fail (404 on /nope), but the servers do answer "/".
    let a = Origin::start();
    let b = Origin::start();
    let checks = "[upstream.health_check]\npath = \"/nope\"\ninterval = \"100ms\"\ntimeout = \"80ms\"\nfall = 1";
    let lb = Ringlb::start(&config(&[a.addr, b.addr], checks));
    eventually("both marked down", Duration::from_secs(5), || {
        lb.log_text().matches("up -> down").count() == 2
    });
    let mut c = Client::connect(lb.addr());
    // Requests for "/" (health checks ask for /nope).
    let proxied = || {
        [&a, &b]
            .iter()
            .flat_map(|o| o.heads())
            .filter(|h| h.starts_with("GET / "))
            .count()
    };
    let before = proxied();
    let n = 500;
    let start = Instant::now();
    let cpu_before = lb.cpu_ns();
    for _ in 0..n {
        c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let r = c.read_response(false);
        assert_eq!((r.status, r.header("retry-after")), (503, Some("1")));
    }
    let cpu_per_request = Duration::from_nanos((lb.cpu_ns() - cpu_before) / u64::from(n));
    let per_request = start.elapsed() / n;
    assert_eq!(proxied(), before, "no request reaches a known-down server");
    // ringlb's own time per 503 (all its threads, health checks included), and a
    // loose bound on the round trip as the client sees it.
    eprintln!("503: {cpu_per_request:?} of ringlb CPU, {per_request:?} round trip per request");
    assert!(
        cpu_per_request < Duration::from_millis(1),
        "503 took {cpu_per_request:?} of ringlb time"
    );
    assert!(
        per_request < Duration::from_millis(20),
        "503 round trip {per_request:?}"
    );

    let lb = Ringlb::start(&config(
        &[a.addr, b.addr],
        &format!("panic_mode = true\n{checks}"),
    ));
    eventually("both marked down", Duration::from_secs(5), || {
        lb.log_text().matches("up -> down").count() == 2
    });
    assert_eq!(
        get(lb.addr(), "/").status,
        200,
        "panic mode tries down servers"
    );
}

#[test]
fn tcp_checks_and_dead_servers() {
    let a = Origin::start();
    let dead = dead_addr();
    let lb = Ringlb::start(&config(
        &[a.addr, dead],
        "[upstream.health_check]\ntype = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"80ms\"\nfall = 1",
    ));
    eventually("dead server down", Duration::from_secs(5), || {
        lb.log_contains(&format!("server {dead}: up -> down"))
    });
    for _ in 0..20 {
        assert_eq!(get(lb.addr(), "/").status, 200);
    }
    let json = get(lb.admin_addr().unwrap(), "/status").body_str();
    assert!(
        json.contains(&format!(
            "\"addr\":\"{dead}\",\"weight\":1,\"state\":\"down\""
        )),
        "{json}"
    );
}

#[test]
fn maglev_keeps_a_client_on_one_server() {
    let origins: Vec<Origin> = (0..3).map(|_| Origin::start()).collect();
    let addrs: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    let lb = Ringlb::start(&config(
        &addrs,
        "balance = \"maglev\"\nhash_key = \"header:x-user\"",
    ));
    for user in ["alice", "bob", "carol", "dave"] {
        let before: Vec<usize> = origins.iter().map(|o| o.requests()).collect();
        for _ in 0..10 {
            let mut c = Client::connect(lb.addr());
            c.send(format!("GET / HTTP/1.1\r\nHost: x\r\nX-User: {user}\r\n\r\n").as_bytes());
            assert_eq!(c.read_response(false).status, 200);
        }
        let hit: Vec<usize> = origins
            .iter()
            .zip(&before)
            .map(|(o, b)| o.requests() - b)
            .collect();
        assert!(hit.contains(&10), "{user} spread over servers: {hit:?}");
    }
}

#[test]
fn weighted_balancing_follows_weights() {
    let a = Origin::start();
    let b = Origin::start();
    let cfg = proxy_config(&[], "", "").replace(
        "servers = []",
        &format!(
            "servers = [\"{} weight=3\", \"{}\"]\nbalance = \"weighted_round_robin\"",
            a.addr, b.addr
        ),
    );
    let lb = Ringlb::start(&cfg);
    let mut c = Client::connect(lb.addr());
    for _ in 0..400 {
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(c.read_response(false).status, 200);
    }
    assert_eq!((a.requests(), b.requests()), (300, 100));
}

/// Once a connect to a server is refused, the worker's other requests stop
/// picking it at once (well before a streak of failures), and the request
/// that met the refusal moves to another server without a client error.
#[test]
fn a_refused_connect_holds_the_server_back_at_once() {
    let a = Origin::start();
    let b = Origin::start();
    let dead = dead_addr();
    let lb = Ringlb::start(&config(&[a.addr, dead, b.addr], "retries = 1"));
    let mut c = Client::connect(lb.addr());
    let start = Instant::now();
    for i in 0..30 {
        c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert_eq!(c.read_response(false).status, 200, "request {i}");
    }
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "within one hold"
    );
    let log = lb.log_text();
    assert_eq!(
        log.matches("connect failed").count(),
        1,
        "one connect tried: {log}"
    );
    assert_eq!(log.matches("held back for 1s").count(), 1, "{log}");
    assert!(!log.contains("ejected"), "{log}");
    assert_eq!(a.requests() + b.requests(), 30);
}
