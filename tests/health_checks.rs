//! Health end to end: what active checks send and accept (`expect_status`,
//! `body_contains`, `method`, `host`), that they run once per process however
//! many workers there are, and passive ejection's settings
//! (`max_ejection_percent`, `max_ejection`, early return when active checks
//! see a server come back), per worker. `type = "tcp"` is in `tests/pools.rs`.

mod common;

use common::client::{get, Client};
use common::origin::{header, read_head, token_field, Origin, Stats};
use common::{eventually, Ringlb};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a scripted origin answers: a status, extra field lines, and a body
/// written in `parts` with a 20 ms pause between them.
struct Reply {
    status: u16,
    fields: String,
    parts: Vec<String>,
}

impl Reply {
    fn new(status: u16, body: &str) -> Reply {
        Reply {
            status,
            fields: String::new(),
            parts: vec![body.to_string()],
        }
    }
}

/// An origin answering each request with `reply(head)`; every head is kept in
/// `stats.heads` and counted in `stats.requests`. Honours `Connection: close`
/// (health checks send it) and echoes the request's token.
fn scripted(reply: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Origin {
    Origin::with_handler(Arc::new(move |mut s: TcpStream, stats: &Stats| {
        let mut buf = Vec::new();
        while let Some(head) = read_head(&mut s, &mut buf) {
            stats.requests.fetch_add(1, Ordering::SeqCst);
            stats.heads.lock().unwrap().push(head.clone());
            let r = reply(&head);
            let len: usize = r.parts.iter().map(String::len).sum();
            let framing = if r.status == 204 || r.status == 304 {
                String::new()
            } else {
                format!("Content-Length: {len}\r\n")
            };
            let out = format!(
                "HTTP/1.1 {} Scripted\r\n{framing}{}X-Origin: test\r\n{}\r\n",
                r.status,
                r.fields,
                token_field(&head)
            );
            if s.write_all(out.as_bytes()).is_err() {
                return;
            }
            if !head.starts_with("HEAD ") && !framing.is_empty() {
                for (k, part) in r.parts.iter().enumerate() {
                    if k > 0 {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if s.write_all(part.as_bytes()).is_err() {
                        return;
                    }
                }
            }
            if header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
                return;
            }
        }
    }))
}

/// An origin whose answers can be switched: traffic (any path but
/// `/healthz`) gets 200 or 502, `/healthz` gets 200 or 503.
struct Switch {
    origin: Origin,
    traffic_ok: Arc<AtomicBool>,
    health_ok: Arc<AtomicBool>,
}

impl Switch {
    fn start(traffic_ok: bool, health_ok: bool) -> Switch {
        let traffic = Arc::new(AtomicBool::new(traffic_ok));
        let health = Arc::new(AtomicBool::new(health_ok));
        let (t, h) = (traffic.clone(), health.clone());
        let origin = scripted(move |head| {
            if head.starts_with("GET /healthz ") {
                match h.load(Ordering::SeqCst) {
                    true => Reply::new(200, "ok"),
                    false => Reply::new(503, "no"),
                }
            } else {
                match t.load(Ordering::SeqCst) {
                    true => Reply::new(200, "hello"),
                    false => Reply::new(502, "bad"),
                }
            }
        });
        Switch {
            origin,
            traffic_ok: traffic,
            health_ok: health,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.origin.addr
    }

    /// Requests other than health checks.
    fn traffic(&self) -> usize {
        self.origin.heads().iter().filter(|h| !is_check(h)).count()
    }

    fn checks(&self) -> usize {
        self.origin.heads().iter().filter(|h| is_check(h)).count()
    }
}

fn is_check(head: &str) -> bool {
    header(head, "user-agent") == Some("ringlb-health-check")
}

/// `[[upstream]]` tables after a listener for `first` and an admin listener.
fn config(workers: usize, first: &str, upstreams: &str) -> String {
    format!(
        "workers = {workers}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{first}\"\n\n{upstreams}"
    )
}

/// The admin view: (upstream name, server address, server object) for every server.
fn servers(lb: &Ringlb) -> Vec<(String, String, serde_json::Value)> {
    let r = get(lb.admin_addr().expect("admin listener"), "/status");
    assert_eq!(r.status, 200);
    let json: serde_json::Value = serde_json::from_str(&r.body_str()).unwrap();
    let mut out = Vec::new();
    for u in json["upstreams"].as_array().unwrap() {
        for s in u["servers"].as_array().unwrap() {
            out.push((
                u["name"].as_str().unwrap().to_string(),
                s["addr"].as_str().unwrap().to_string(),
                s.clone(),
            ));
        }
    }
    out
}

/// Waits until every server of every pool has been checked `n` times.
fn wait_checks(lb: &Ringlb, n: u64) {
    eventually(
        &format!("{n} checks of every server"),
        Duration::from_secs(10),
        || {
            servers(lb)
                .iter()
                .all(|(_, _, s)| s["checks"].as_u64().unwrap() >= n)
        },
    );
}

/// The log lines of `upstream`'s server `addr` that contain `what`.
fn lines(lb: &Ringlb, upstream: &str, addr: &str, what: &str) -> Vec<String> {
    let needle = format!("upstream {upstream} server {addr}: ");
    lb.log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(&needle) && l.contains(what))
        .cloned()
        .collect()
}

#[test]
fn expect_status_forms_decide_which_answers_pass() {
    let statuses = [200u16, 201, 204, 299, 300, 302, 399, 400, 404, 500, 503];
    let origins: Vec<Origin> = statuses
        .iter()
        .map(|&st| scripted(move |_| Reply::new(st, "x")))
        .collect();
    let addrs: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    // (pool, expect_status, which statuses pass)
    type Form = (&'static str, Option<&'static str>, fn(u16) -> bool);
    let forms: [Form; 4] = [
        ("dflt", None, |s| (200..=399).contains(&s)),
        ("range", Some("200-399"), |s| (200..=399).contains(&s)),
        ("class", Some("2xx"), |s| (200..=299).contains(&s)),
        ("list", Some("200,204"), |s| s == 200 || s == 204),
    ];
    let upstreams: String = forms
        .iter()
        .map(|(name, form, _)| {
            let expect = form.map_or(String::new(), |f| format!("expect_status = \"{f}\"\n"));
            format!(
                "[[upstream]]\nname = \"{name}\"\nservers = [{}]\n\
                 [upstream.health_check]\npath = \"/hc\"\n{expect}\
                 interval = \"200ms\"\ntimeout = \"150ms\"\nrise = 1\nfall = 2\n\n",
                common::server_list(&addrs)
            )
        })
        .collect();
    let lb = Ringlb::start(&config(1, "dflt", &upstreams));
    wait_checks(&lb, 4);
    let view = servers(&lb);
    let mut table = Vec::new();
    for (name, form, passes) in &forms {
        let mut up = Vec::new();
        for (&status, addr) in statuses.iter().zip(&addrs) {
            let addr = addr.to_string();
            let (_, _, s) = view
                .iter()
                .find(|(u, a, _)| u == name && *a == addr)
                .unwrap();
            let expected = passes(status);
            assert_eq!(
                (s["healthy"].as_bool(), s["last_check_ok"].as_bool()),
                (Some(expected), Some(expected)),
                "{name} ({form:?}): a server answering {status}: {s}\n{}",
                lb.log_text()
            );
            let downs = lines(&lb, name, &addr, "up -> down");
            if expected {
                up.push(status);
                assert!(downs.is_empty(), "{name}: {status} went down: {downs:?}");
            } else {
                assert!(
                    downs.len() == 1 && downs[0].contains(&format!("last: status {status}")),
                    "{name}: {status} goes down once, for its status: {downs:?}"
                );
            }
        }
        table.push(format!("{name} {form:?}: up {up:?}"));
    }
    eprintln!("{}", table.join("\n"));
}

#[test]
fn body_contains_looks_in_the_body_only() {
    // (what it answers, passes)
    let cases: Vec<(&str, Reply, bool)> = vec![
        ("ready", Reply::new(200, "state: ready\n"), true),
        ("starting", Reply::new(200, "state: starting\n"), false),
        (
            "needle split over two writes",
            Reply {
                status: 200,
                fields: String::new(),
                parts: vec!["state: rea".into(), "dy\n".into()],
            },
            true,
        ),
        (
            "needle in a header only",
            Reply {
                status: 200,
                fields: "X-State: ready\r\n".into(),
                parts: vec!["state: starting\n".into()],
            },
            false,
        ),
        (
            "503 with the needle",
            Reply::new(503, "state: ready\n"),
            false,
        ),
    ];
    let mut origins = Vec::new();
    let mut expected = Vec::new();
    for (what, reply, passes) in cases {
        let reply = Arc::new(reply);
        origins.push(scripted(move |_| Reply {
            status: reply.status,
            fields: reply.fields.clone(),
            parts: reply.parts.clone(),
        }));
        expected.push((what, passes));
    }
    let addrs: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    let lb = Ringlb::start(&config(
        1,
        "app",
        &format!(
            "[[upstream]]\nname = \"app\"\nservers = [{}]\n\
             [upstream.health_check]\npath = \"/ready\"\nbody_contains = \"ready\"\n\
             interval = \"300ms\"\ntimeout = \"250ms\"\nrise = 1\nfall = 2\n",
            common::server_list(&addrs)
        ),
    ));
    wait_checks(&lb, 4);
    let view = servers(&lb);
    for ((what, passes), addr) in expected.iter().zip(&addrs) {
        let addr = addr.to_string();
        let (_, _, s) = view.iter().find(|(_, a, _)| *a == addr).unwrap();
        assert_eq!(
            s["healthy"].as_bool(),
            Some(*passes),
            "{what}: {s}\n{}",
            lb.log_text()
        );
        let downs = lines(&lb, "app", &addr, "up -> down");
        eprintln!("{what}: healthy {passes} {downs:?}");
        if *passes {
            assert!(downs.is_empty(), "{what}: {downs:?}");
        } else {
            let why = if what.starts_with("503") {
                "last: status 503".to_string()
            } else {
                "last: body lacks \"ready\"".to_string()
            };
            assert!(
                downs.len() == 1 && downs[0].contains(&why),
                "{what}: down once because {why}: {downs:?}"
            );
        }
    }
    for o in &origins {
        assert!(o.heads().iter().all(|h| h.starts_with("GET /ready ")));
    }
}

#[test]
fn checks_send_the_configured_method_path_and_host() {
    // Answers 200 only to what the custom check must send.
    let strict = scripted(|head| {
        let right = head.starts_with("HEAD /hc HTTP/1.1\r\n")
            && header(head, "host") == Some("health.internal");
        Reply::new(if right { 200 } else { 404 }, "x")
    });
    let plain = scripted(|_| Reply::new(200, "x"));
    let lb = Ringlb::start(&config(
        1,
        "custom",
        &format!(
            "[[upstream]]\nname = \"custom\"\nservers = [\"{}\"]\n\
             [upstream.health_check]\npath = \"/hc\"\nmethod = \"HEAD\"\nhost = \"health.internal\"\n\
             interval = \"100ms\"\ntimeout = \"90ms\"\nrise = 1\nfall = 2\n\n\
             [[upstream]]\nname = \"plain\"\nservers = [\"{}\"]\n\
             [upstream.health_check]\ninterval = \"100ms\"\ntimeout = \"90ms\"\nrise = 1\nfall = 2\n",
            strict.addr, plain.addr
        ),
    ));
    wait_checks(&lb, 3);
    let check = |o: &Origin, line: &str, host: &str| {
        let heads = o.heads();
        assert!(heads.len() >= 3, "{heads:?}");
        for h in &heads {
            assert!(h.starts_with(line), "request line: {h}");
            assert_eq!(header(h, "host"), Some(host), "{h}");
            assert_eq!(header(h, "user-agent"), Some("ringlb-health-check"), "{h}");
            assert_eq!(header(h, "connection"), Some("close"), "{h}");
        }
        heads[0].clone()
    };
    let custom = check(&strict, "HEAD /hc HTTP/1.1\r\n", "health.internal");
    let default = check(&plain, "GET / HTTP/1.1\r\n", &plain.addr.to_string());
    eprintln!("custom check:\n{custom}default check:\n{default}");
    assert!(
        lines(&lb, "custom", &strict.addr.to_string(), "up -> down").is_empty(),
        "{}",
        lb.log_text()
    );
    assert!(servers(&lb).iter().all(|(_, _, s)| s["healthy"] == true));
}

/// Sends one `GET path` on a new connection and expects the origin's 502.
fn one_502(lb: &Ringlb, path: &str) {
    let mut c = Client::connect(lb.addr());
    c.send(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes());
    let r = c.read_response(false);
    assert_eq!(
        (r.status, r.header("x-origin")),
        (502, Some("test")),
        "{path}: a server answered (never a 503: the pool is never all ejected)\n{}",
        r.head
    );
}

/// Ejections of `upstream`'s servers logged by worker `w`.
fn ejections(lb: &Ringlb, w: usize, upstream: &str) -> Vec<String> {
    let needle = format!("worker {w}: upstream {upstream} server ");
    lb.log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(&needle) && l.contains("up -> ejected for"))
        .cloned()
        .collect()
}

/// Two workers (SO_REUSEPORT), four pools of servers that all answer 502:
/// each worker ejects on its own, at most `max_ejection_percent` of a pool,
/// at least one of two, never the whole pool, never the only server. That
/// both workers log ejections also shows both accepted connections.
#[test]
fn max_ejection_percent_caps_ejections_per_worker() {
    let bad: Vec<Switch> = (0..4).map(|_| Switch::start(false, true)).collect();
    let a: Vec<SocketAddr> = bad.iter().map(Switch::addr).collect();
    let pool = |name: &str, servers: &[SocketAddr], percent: u32| {
        format!(
            "[[upstream]]\nname = \"{name}\"\nservers = [{}]\n\
             [upstream.outlier]\nconsecutive_failures = 2\nbase_ejection = \"30s\"\n\
             max_ejection_percent = {percent}\n\n",
            common::server_list(servers)
        )
    };
    let routes = "[[listener.route]]\npath_prefix = \"/two\"\nupstream = \"two\"\n\
                  [[listener.route]]\npath_prefix = \"/three\"\nupstream = \"three\"\n\
                  [[listener.route]]\npath_prefix = \"/one\"\nupstream = \"one\"\n\n";
    let upstreams = format!(
        "{routes}{}{}{}{}",
        pool("four", &a, 50),
        pool("two", &a[..2], 10),
        pool("three", &a[..3], 100),
        pool("one", &a[..1], 100)
    );
    let lb = Ringlb::start(&config(2, "four", &upstreams));
    // (pool, path, ejections each worker may make)
    let pools = [
        ("four", "/four", 2),
        ("two", "/two", 1),
        ("three", "/three", 2),
    ];
    for (name, path, cap) in pools {
        // New connections until both workers have ejected up to the cap...
        for i in 0.. {
            assert!(
                i < 400,
                "{name}: workers did not both eject {cap}\n{}",
                lb.log_text()
            );
            if (0..2).all(|w| ejections(&lb, w, name).len() >= cap) {
                break;
            }
            one_502(&lb, path);
        }
        // ...then plenty more failures, which must eject nothing more.
        for _ in 0..60 {
            one_502(&lb, path);
        }
    }
    for _ in 0..60 {
        one_502(&lb, "/one");
    }
    std::thread::sleep(Duration::from_millis(100)); // the log catches up
    let view = servers(&lb);
    for (name, _, cap) in pools {
        for w in 0..2 {
            let e = ejections(&lb, w, name);
            eprintln!("worker {w}, pool {name}: {} ejected", e.len());
            assert_eq!(e.len(), cap, "worker {w}, pool {name}: {e:#?}");
            let distinct: std::collections::BTreeSet<&str> = e
                .iter()
                .map(|l| {
                    l.split(" server ")
                        .nth(1)
                        .unwrap()
                        .split(": up")
                        .next()
                        .unwrap()
                })
                .collect();
            assert_eq!(distinct.len(), cap, "distinct servers: {e:#?}");
        }
        let by_workers: u64 = view
            .iter()
            .filter(|(u, _, _)| u == name)
            .map(|(_, _, s)| s["ejected_by_workers"].as_u64().unwrap())
            .sum();
        assert_eq!(by_workers, 2 * cap as u64, "/status, pool {name}: {view:?}");
    }
    for w in 0..2 {
        assert!(
            ejections(&lb, w, "one").is_empty(),
            "the only server of a pool is never ejected"
        );
    }
    assert_eq!(bad.iter().map(Switch::checks).sum::<usize>(), 0);
}

/// `base_ejection` doubles per ejection up to `max_ejection`, and a healthy
/// stretch of `max_ejection` forgets the doubling.
#[test]
fn max_ejection_caps_the_doubling_backoff() {
    let good = Switch::start(true, true);
    let bad = Switch::start(false, true);
    let lb = Ringlb::start(&config(
        1,
        "app",
        &format!(
            "[[upstream]]\nname = \"app\"\nservers = [\"{}\", \"{}\"]\n\
             [upstream.outlier]\nconsecutive_failures = 1\nbase_ejection = \"100ms\"\nmax_ejection = \"300ms\"\n",
            good.addr(),
            bad.addr()
        ),
    ));
    let bad_addr = bad.addr().to_string();
    let ejected = || lines(&lb, "app", &bad_addr, "up -> ejected for ");
    let returned = || lines(&lb, "app", &bad_addr, "ejected -> up (its time ran out)");
    let mut c = Client::connect(lb.addr());
    let mut request = || {
        c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let r = c.read_response(false);
        assert!(matches!(r.status, 200 | 502), "{}", r.head);
    };
    // Steady traffic: each time an ejection runs out, the next failure ejects
    // again, for twice as long, up to max_ejection.
    let deadline = Instant::now() + Duration::from_secs(8);
    while ejected().len() < 5 {
        assert!(Instant::now() < deadline, "{}", lb.log_text());
        request();
    }
    bad.traffic_ok.store(true, Ordering::SeqCst);
    let durations: Vec<String> = ejected()
        .iter()
        .map(|l| {
            l.split("up -> ejected for ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    eprintln!("ejection durations: {durations:?}");
    assert_eq!(
        durations[..5],
        ["100ms", "200ms", "300ms", "300ms", "300ms"],
        "doubling, capped at max_ejection"
    );
    // Healthy now: once every ejection has run out, a stretch of successes
    // longer than max_ejection forgets the doubling.
    std::thread::sleep(Duration::from_millis(50));
    let k = ejected().len();
    while returned().len() < k {
        assert!(Instant::now() < deadline, "{}", lb.log_text());
        request();
    }
    let healthy_from = Instant::now();
    let before = bad.traffic();
    while healthy_from.elapsed() < Duration::from_millis(500) {
        request();
    }
    assert!(bad.traffic() > before, "the server took requests again");
    bad.traffic_ok.store(false, Ordering::SeqCst);
    while ejected().len() == k {
        assert!(Instant::now() < deadline, "{}", lb.log_text());
        request();
    }
    let next = ejected()[k].clone();
    eprintln!("after {k} ejections and a healthy stretch: {next}");
    assert!(next.contains("up -> ejected for 100ms "), "{next}");
}

/// An ejection ends early once active checks see the server come back, and
/// not while they merely keep passing (nor when another server's health
/// changes).
#[test]
fn active_checks_seeing_a_server_come_back_end_its_ejection_early() {
    let good = Switch::start(true, true);
    let b = Switch::start(false, true);
    let other = Switch::start(true, true);
    let lb = Ringlb::start(&config(
        1,
        "app",
        &format!(
            "[[upstream]]\nname = \"app\"\nservers = [{}]\n\
             [upstream.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"90ms\"\nrise = 2\nfall = 2\n\
             [upstream.outlier]\nconsecutive_failures = 2\nbase_ejection = \"30s\"\n",
            common::server_list(&[good.addr(), b.addr(), other.addr()])
        ),
    ));
    let (b_addr, other_addr) = (b.addr().to_string(), other.addr().to_string());
    let mut c = Client::connect(lb.addr());
    let mut request = || {
        c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let r = c.read_response(false);
        assert!(matches!(r.status, 200 | 502), "{}", r.head);
    };
    for i in 0.. {
        assert!(i < 100, "b never ejected\n{}", lb.log_text());
        if !lines(&lb, "app", &b_addr, "up -> ejected for 30s").is_empty() {
            break;
        }
        request();
    }
    let ejected_at = Instant::now();
    let before = b.traffic();
    // Passing checks alone do not end it...
    for _ in 0..3 {
        let n = b.checks();
        eventually("another passing check", Duration::from_secs(5), || {
            b.checks() > n
        });
        for _ in 0..20 {
            request();
        }
    }
    // ...nor another server going down and coming back.
    for (healthy, change) in [(false, "up -> down"), (true, "down -> up")] {
        other.health_ok.store(healthy, Ordering::SeqCst);
        eventually(change, Duration::from_secs(5), || {
            !lines(&lb, "app", &other_addr, change).is_empty()
        });
        for _ in 0..20 {
            request();
        }
    }
    let flaps = lines(&lb, "app", &b_addr, "up -> down");
    assert!(
        flaps.is_empty(),
        "b failed checks it should pass (an overloaded machine?): {flaps:?}"
    );
    assert_eq!(b.traffic(), before, "an ejected server took requests");
    // b goes down for the checks, then comes back.
    b.health_ok.store(false, Ordering::SeqCst);
    eventually("b down", Duration::from_secs(5), || {
        !lines(&lb, "app", &b_addr, "up -> down").is_empty()
    });
    b.traffic_ok.store(true, Ordering::SeqCst);
    b.health_ok.store(true, Ordering::SeqCst);
    eventually("b up again", Duration::from_secs(5), || {
        !lines(&lb, "app", &b_addr, "down -> up").is_empty()
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.traffic() == before {
        assert!(
            Instant::now() < deadline,
            "b's ejection did not end early\n{}",
            lb.log_text()
        );
        request();
    }
    let back = lines(
        &lb,
        "app",
        &b_addr,
        "ejected -> up (active checks saw it come back)",
    );
    eprintln!(
        "b back in traffic {:?} into its 30 s ejection: {back:?}",
        ejected_at.elapsed()
    );
    assert_eq!(back.len(), 1, "{}", lb.log_text());
    assert!(ejected_at.elapsed() < Duration::from_secs(20));
}

/// With two workers, one checker: the origin sees one check per interval.
#[test]
fn active_checks_run_once_per_process_with_two_workers() {
    let o = Switch::start(true, true);
    let lb = Ringlb::start(&config(
        2,
        "app",
        &format!(
            "[[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\
             [upstream.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"80ms\"\n",
            o.addr()
        ),
    ));
    assert!(lb.log_contains("worker 0: ") && lb.log_contains("worker 1: "));
    eventually("a first check", Duration::from_secs(5), || o.checks() > 0);
    let window = Duration::from_secs(2);
    let (n0, t0) = (o.checks(), Instant::now());
    std::thread::sleep(window);
    let (n1, elapsed) = (o.checks(), t0.elapsed());
    let n = n1 - n0;
    let expected = elapsed.as_secs_f64() / 0.1;
    eprintln!(
        "{n} checks in {elapsed:?} at a 100 ms interval ({expected:.0} expected; one checker per worker: {:.0})",
        2.0 * expected
    );
    // Intervals are jittered by +-10 %: at most 1/0.09 s checks a second.
    assert!(
        (n as f64) < expected * 1.4,
        "more than one checker: {n} checks"
    );
    assert!((n as f64) > expected * 0.5, "checks ran: {n}");
    let status_checks = servers(&lb)[0].2["checks"].as_u64().unwrap();
    assert!(
        status_checks as usize <= o.checks() + 1,
        "/status counts {status_checks}, origin saw {}",
        o.checks()
    );
}
