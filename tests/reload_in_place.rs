//! Reloads that change only the upstreams' servers and settings happen in
//! place: the same process, no new sockets, and the pools that stay keep
//! their idle connections, health and ejections. New servers are checked
//! before they get traffic; removed ones get none once the reload answered.

mod common;

use common::load::{free_port, requests, Load};
use common::origin::Origin;
use common::{admin_get, alive, reload, server_list, temp_path, Ringlb};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

struct Setup {
    main: SocketAddr,
    other: SocketAddr,
    admin: SocketAddr,
    socket: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Setup {
    fn new(name: &str) -> Setup {
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Setup {
            main: at(free_port()),
            other: at(free_port()),
            admin: at(free_port()),
            socket: temp_path(&format!("{name}.sock")),
        }
    }

    /// Listener `main` over upstream `app` (`app` servers, with `app_extra`
    /// lines), listener `other` over upstream `other` (its servers fixed).
    fn config(&self, app: &[SocketAddr], app_extra: &str, other: &[SocketAddr]) -> String {
        format!(
            "workers = 2\nupgrade_socket = \"{}\"\n\n[admin]\nlisten = \"{}\"\n\n\
             [[listener]]\nlisten = \"{}\"\nupstream = \"app\"\n\n\
             [[listener]]\nlisten = \"{}\"\nupstream = \"other\"\n\n\
             [[upstream]]\nname = \"app\"\nservers = [{}]\n{app_extra}\n\
             [[upstream]]\nname = \"other\"\nservers = [{}]\n",
            self.socket.display(),
            self.admin,
            self.main,
            self.other,
            server_list(app),
            server_list(other),
        )
    }

    fn status(&self) -> Value {
        let answer = admin_get(self.admin, "/status");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str(body).unwrap_or_else(|e| panic!("/status: {e}: {answer}"))
    }

    /// `/status` for one server: (state, checks, idle connections).
    fn server(&self, upstream: &str, addr: SocketAddr) -> Option<(String, u64, i64)> {
        let status = self.status();
        let up = status["upstreams"]
            .as_array()?
            .iter()
            .find(|u| u["name"] == upstream)?
            .clone();
        let s = up["servers"]
            .as_array()?
            .iter()
            .find(|s| s["addr"] == addr.to_string())?
            .clone();
        Some((
            s["state"].as_str()?.to_string(),
            s["checks"].as_u64()?,
            s["idle_connections"].as_i64()?,
        ))
    }
}

/// Proxied requests an origin received (its health checks left out).
fn proxied(o: &Origin) -> usize {
    o.stats
        .heads
        .lock()
        .unwrap()
        .iter()
        .filter(|h| !h.contains("ringlb-health-check"))
        .count()
}

#[test]
fn twenty_in_place_reloads_under_load_keep_pooled_connections_and_fail_no_request() {
    let (a, b, c) = (Origin::start(), Origin::start(), Origin::start());
    let s = Setup::new("in-place");
    let both = temp_path("in-place-both.toml");
    let one = temp_path("in-place-one.toml");
    std::fs::write(&both, s.config(&[a.addr, b.addr], "", &[c.addr])).unwrap();
    // The one-server file also changes a setting of the pool.
    std::fs::write(
        &one,
        s.config(&[a.addr], "connect_timeout = \"2s\"\n", &[c.addr]),
    )
    .unwrap();
    let running = Ringlb::start(&s.config(&[a.addr, b.addr], "", &[c.addr]));
    // Pooled connections to `c`, the pool no reload touches. Kept-alive
    // clients on both workers leave connections in both workers' pools.
    let load_other = Load::start(s.other, 4);
    common::eventually("idle connections to c", Duration::from_secs(5), || {
        s.server("other", c.addr)
            .is_some_and(|(_, _, idle)| idle > 0)
    });
    let load = Load::start(s.main, 6);
    let c_connections = c.stats.connections.load(Ordering::Relaxed);
    for n in 0..20 {
        let file = if n % 2 == 0 { &one } else { &both };
        let (code, said) = reload(file);
        assert_eq!(code, Some(0), "reload {n}: {said}");
        assert!(
            said.contains(&format!("DONE {} in place", running.pid())),
            "reload {n} was not in place: {said}"
        );
        if n % 2 == 0 {
            // `b` left: no request reaches it once the reload answered.
            let seen = b.stats.requests.load(Ordering::Relaxed);
            requests(s.main, &format!("r{n}"), 20);
            assert_eq!(
                b.stats.requests.load(Ordering::Relaxed),
                seen,
                "reload {n}: the removed server received a request"
            );
        } else {
            // `b` is back and takes its share again.
            let seen = b.stats.requests.load(Ordering::Relaxed);
            requests(s.main, &format!("r{n}"), 20);
            assert!(
                b.stats.requests.load(Ordering::Relaxed) > seen,
                "reload {n}: the added server gets no request"
            );
        }
    }
    let (ok, failures) = load.finish();
    let (ok_other, failures_other) = load_other.finish();
    assert!(
        failures.is_empty() && failures_other.is_empty(),
        "{} + {} failed: {:?} {:?}",
        failures.len(),
        failures_other.len(),
        &failures[..failures.len().min(5)],
        &failures_other[..failures_other.len().min(5)]
    );
    assert!(
        ok > 200 && ok_other > 200,
        "only {ok} + {ok_other} requests"
    );
    // `c`'s pool lived through the 20 reloads: the load on it reused its
    // connections instead of opening new ones (a handover would have
    // opened a fresh pool per reload).
    let opened = c.stats.connections.load(Ordering::Relaxed) - c_connections;
    assert!(
        opened < 10,
        "{opened} new connections to the unchanged pool over 20 reloads"
    );
    let status = s.status();
    assert_eq!(status["config"]["loaded"], "in_place", "{status}");
    assert_eq!(status["config"]["generation"], 20, "{status}");
    assert_eq!(status["server_set"], 20, "{status}");
    assert_eq!(common::metric(s.admin, "ringlb_config_generation"), 20.0);
    assert_eq!(common::metric(s.admin, "ringlb_server_set"), 20.0);
    assert!(common::metric(s.admin, "ringlb_config_loaded_timestamp_seconds") > 1.7e9);
    assert!(running.log_contains("serving server set 20"));
    for f in [&both, &one, &s.socket] {
        let _ = std::fs::remove_file(f);
    }
}

#[test]
fn health_state_stays_and_a_new_server_is_checked_before_it_gets_traffic() {
    let (a, b) = (Origin::start(), Origin::start());
    // A server that is down: nothing listens there.
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let s = Setup::new("in-place-health");
    let checks = "[upstream.health_check]\npath = \"/\"\ninterval = \"300ms\"\n\
                  timeout = \"200ms\"\nrise = 3\nfall = 1\n";
    let running = Ringlb::start(&s.config(&[a.addr, dead], checks, &[a.addr]));
    common::eventually("the dead server is down", Duration::from_secs(5), || {
        s.server("app", dead)
            .is_some_and(|(state, _, _)| state == "down")
    });
    let load = Load::start(s.main, 4);
    let file = temp_path("in-place-health.toml");
    std::fs::write(&file, s.config(&[a.addr, dead, b.addr], checks, &[a.addr])).unwrap();
    let (code, said) = reload(&file);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("in place"), "{said}");
    // The dead server stays down: a fresh start would have called it up
    // (optimistic start) and sent it requests until its first check.
    let (state, _, _) = s.server("app", dead).unwrap();
    assert_eq!(state, "down", "the dead server's health was forgotten");
    // The new server is down until its first check passes (rise applies
    // only to servers coming back, not to one that just joined).
    common::eventually("the new server comes up", Duration::from_secs(5), || {
        s.server("app", b.addr)
            .is_some_and(|(state, checks, _)| state == "up" && checks >= 1)
    });
    common::eventually(
        "the new server gets traffic",
        Duration::from_secs(5),
        || proxied(&b) > 0,
    );
    let heads = b.stats.heads.lock().unwrap().clone();
    assert!(
        heads
            .first()
            .is_some_and(|h| h.contains("ringlb-health-check")),
        "the new server got a request before its health check: {:?}",
        heads.first()
    );
    let (ok, failures) = load.finish();
    assert!(failures.is_empty(), "{failures:?}");
    assert!(ok >= 5, "only {ok} requests");
    assert!(alive(running.pid()));
    let _ = std::fs::remove_file(&file);
}

#[test]
fn a_change_beyond_the_upstreams_goes_through_a_fresh_process_and_a_bad_one_changes_nothing() {
    let a = Origin::start();
    let s = Setup::new("in-place-beyond");
    let running = Ringlb::start(&s.config(&[a.addr], "", &[a.addr]));
    // A different upstream name cannot be swapped in place.
    let renamed = temp_path("in-place-renamed.toml");
    std::fs::write(
        &renamed,
        s.config(&[a.addr], "", &[a.addr])
            .replace("name = \"other\"", "name = \"others\"")
            .replace("upstream = \"other\"", "upstream = \"others\""),
    )
    .unwrap();
    let (code, said) = reload(&renamed);
    assert_eq!(code, Some(0), "{said}");
    assert!(!said.contains("in place"), "{said}");
    assert!(running.log_contains("handing over to a fresh process"));
    let successor = common::successor(&said);
    assert_ne!(successor, running.pid());
    requests(s.main, "after-handover", 3);
    // A server list the successor cannot resolve is refused, and it serves on.
    let bad = temp_path("in-place-bad.toml");
    std::fs::write(
        &bad,
        s.config(&[a.addr], "", &[a.addr])
            .replace(&format!("\"{}\"", a.addr), "\"not an address\""),
    )
    .unwrap();
    let (code, said) = reload(&bad);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("in-place-bad.toml:"), "{said}");
    requests(s.main, "after-bad", 3);
    common::stop(successor);
    for f in [&renamed, &bad, &s.socket] {
        let _ = std::fs::remove_file(f);
    }
}

/// A server that answers every request with a 502 (its requests counted).
fn failing_origin() -> Origin {
    Origin::with_handler(std::sync::Arc::new(|mut s, stats| {
        use std::io::{Read, Write};
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                return;
            }
            stats.requests.fetch_add(1, Ordering::Relaxed);
            if s.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                .is_err()
            {
                return;
            }
        }
    }))
}

#[test]
fn a_server_ejected_before_an_in_place_reload_stays_ejected() {
    let (good, extra, bad) = (Origin::start(), Origin::start(), failing_origin());
    let s = Setup::new("in-place-ejected");
    let outlier = "[upstream.outlier]\nconsecutive_failures = 1\nbase_ejection = \"30s\"\n";
    let _running = Ringlb::start(&s.config(&[good.addr, bad.addr], outlier, &[good.addr]));
    let ejected_by = || {
        let status = s.status();
        status["upstreams"][0]["servers"]
            .as_array()
            .and_then(|servers| {
                servers
                    .iter()
                    .find(|v| v["addr"] == bad.addr.to_string())
                    .and_then(|v| v["ejected_by_workers"].as_u64())
            })
            .unwrap_or(0)
    };
    // New connections until both workers have ejected the failing server.
    for i in 0.. {
        assert!(i < 400, "both workers never ejected it: {}", s.status());
        if ejected_by() == 2 {
            break;
        }
        let mut c = std::net::TcpStream::connect(s.main).unwrap();
        let _ = common::load::request(&mut c, &format!("e{i}"), true);
    }
    let file = temp_path("in-place-ejected.toml");
    std::fs::write(
        &file,
        s.config(&[good.addr, bad.addr, extra.addr], outlier, &[good.addr]),
    )
    .unwrap();
    let (code, said) = reload(&file);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("in place"), "{said}");
    assert_eq!(
        ejected_by(),
        2,
        "the ejection was forgotten: {}",
        s.status()
    );
    let seen = bad.stats.requests.load(Ordering::Relaxed);
    requests(s.main, "after", 30);
    assert_eq!(
        bad.stats.requests.load(Ordering::Relaxed),
        seen,
        "the ejected server got requests after the reload"
    );
    assert!(extra.stats.requests.load(Ordering::Relaxed) > 0);
    let _ = std::fs::remove_file(&file);
}

#[test]
fn client_limits_change_in_place() {
    let a = Origin::start();
    let s = Setup::new("in-place-client");
    let with_limit = |bytes: usize| {
        format!(
            "{}\n[client]\nmax_head_bytes = {bytes}\n",
            s.config(&[a.addr], "", &[a.addr])
        )
    };
    let running = Ringlb::start(&with_limit(32768));
    let big_head = |token: &str| {
        let mut c = std::net::TcpStream::connect(s.main).unwrap();
        use std::io::{Read, Write};
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let pad = "p".repeat(8000);
        write!(
            c,
            "GET / HTTP/1.1\r\nHost: x\r\nX-Token: {token}\r\nX-Pad: {pad}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        answer
    };
    assert!(big_head("before").starts_with("HTTP/1.1 200 "));
    let file = temp_path("in-place-client.toml");
    std::fs::write(&file, with_limit(4096)).unwrap();
    let (code, said) = reload(&file);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(&format!("DONE {} in place", running.pid())),
        "{said}"
    );
    let after = big_head("after");
    assert!(after.starts_with("HTTP/1.1 431 "), "{after}");
    requests(s.main, "small", 3);
    let _ = std::fs::remove_file(&file);
}

#[test]
fn routes_change_in_place_and_keep_their_counters() {
    let (a, c) = (Origin::start(), Origin::start());
    let s = Setup::new("in-place-routes");
    let with_routes = |routes: &str| {
        s.config(&[a.addr], "", &[c.addr]).replacen(
            "upstream = \"app\"\n\n",
            &format!("upstream = \"other\"\n\n{routes}\n"),
            1,
        )
    };
    let v1 = "[[listener.route]]\nname = \"v1\"\npath_prefix = \"/v1\"\nupstream = \"app\"\n";
    let v2_and_ping = "[[listener.route]]\nname = \"v2\"\npath_prefix = \"/v2\"\nupstream = \"app\"\n\
                       [[listener.route]]\nname = \"ping\"\npath_prefix = \"/ping\"\nstatus = 200\nbody = \"pong\\n\"\n";
    let running = Ringlb::start(&with_routes(v1));
    // The origins answer 404 to these paths: a 404 is a request that reached one.
    let get = |path: &str| {
        let r = common::client::get(s.main, path);
        (r.status, r.body_str())
    };
    let a_seen = || a.stats.requests.load(Ordering::Relaxed);
    let before = a_seen();
    assert_eq!(get("/v1/x").0, 404);
    assert_eq!(a_seen(), before + 1, "/v1 goes to app");
    let file = temp_path("in-place-routes.toml");
    std::fs::write(&file, with_routes(&format!("{v2_and_ping}{v1}"))).unwrap();
    let (code, said) = reload(&file);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(&format!("DONE {} in place", running.pid())),
        "{said}"
    );
    assert_eq!(
        get("/ping"),
        (200, "pong\n".to_string()),
        "the new direct route"
    );
    let before = a_seen();
    assert_eq!(get("/v2/x").0, 404);
    assert_eq!(get("/v1/x").0, 404);
    assert_eq!(a_seen(), before + 2, "/v1 and /v2 go to app");
    let v1_count = |metrics: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("ringlb_requests_total{")
                    && l.contains("route=\"v1\"")
                    && l.contains("code=\"4xx\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    // A request is counted just after its answer is sent: wait for it.
    common::eventually(
        "the v1 route kept its counter",
        Duration::from_secs(5),
        || v1_count(&admin_get(s.admin, "/metrics")) == Some(2),
    );
    let metrics = admin_get(s.admin, "/metrics");
    assert!(metrics.contains("route=\"ping\""), "{metrics}");
    // Back to /v1 alone: /v2 falls to the default pool, ping is gone.
    std::fs::write(&file, with_routes(v1)).unwrap();
    let (code, said) = reload(&file);
    assert_eq!(code, Some(0), "{said}");
    let (c_before, a_before) = (c.stats.requests.load(Ordering::Relaxed), a_seen());
    assert_eq!(get("/v2/x").0, 404);
    assert_eq!(get("/ping/x").0, 404);
    assert_eq!(
        c.stats.requests.load(Ordering::Relaxed),
        c_before + 2,
        "the default pool"
    );
    assert_eq!(a_seen(), a_before);
    let metrics = admin_get(s.admin, "/metrics");
    assert!(
        !metrics.contains("route=\"ping\""),
        "a removed route is still listed"
    );
    let _ = std::fs::remove_file(&file);
}

/// Requests in flight when a reload comes still count against the pool's
/// limit: the new view shares the old one's admission while the limits stay.
#[test]
fn requests_in_flight_across_an_in_place_reload_still_count_against_the_limit() {
    let a = Origin::start();
    let s = Setup::new("in-place-admission");
    let config = |connect: &str| {
        format!(
            "workers = 1\nupgrade_socket = \"{}\"\n\n\
             [[listener]]\nlisten = \"{}\"\nupstream = \"app\"\n\n\
             [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\nconnect_timeout = \"{connect}\"\n\
             max_in_flight = 2\n",
            s.socket.display(),
            s.main,
            a.addr
        )
    };
    let _running = Ringlb::start(&config("1s"));
    let slow: Vec<_> = (0..2)
        .map(|i| {
            let main = s.main;
            std::thread::spawn(move || {
                let mut c = std::net::TcpStream::connect(main).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                use std::io::{Read, Write};
                write!(
                    c,
                    "GET /slow/1500 HTTP/1.1\r\nHost: x\r\nX-Token: s{i}\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
                let mut answer = String::new();
                let _ = c.read_to_string(&mut answer);
                answer
            })
        })
        .collect();
    common::eventually(
        "both slow requests reach the origin",
        Duration::from_secs(5),
        || a.stats.requests.load(Ordering::Relaxed) >= 2,
    );
    let file = temp_path("in-place-admission.toml");
    std::fs::write(&file, config("2s")).unwrap();
    let (code, said) = reload(&file);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("in place"), "{said}");
    // The pool is full: a third request is shed, not let in as if the
    // reload had emptied the pool.
    let third = common::client::get(s.main, "/");
    assert_eq!(
        third.status, 503,
        "a third request admitted over max_in_flight = 2"
    );
    for t in slow {
        assert!(t.join().unwrap().starts_with("HTTP/1.1 200 "));
    }
    assert_eq!(common::client::get(s.main, "/").status, 200);
    let _ = std::fs::remove_file(&file);
}

/// Changing how a pool is checked restarts its checks: a server that was
/// down comes back up once it answers (found by an attacking helper: the
/// checks stopped for good).
#[test]
fn changed_check_settings_keep_checking() {
    let a = Origin::start();
    let down = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let s = Setup::new("in-place-check-change");
    let checks = |interval: &str| {
        format!(
            "[upstream.health_check]\npath = \"/\"\ninterval = \"{interval}\"\n\
             timeout = \"100ms\"\nrise = 1\nfall = 1\n"
        )
    };
    let _running = Ringlb::start(&s.config(&[a.addr, down], &checks("150ms"), &[a.addr]));
    common::eventually("the dead server is down", Duration::from_secs(5), || {
        s.server("app", down)
            .is_some_and(|(state, _, _)| state == "down")
    });
    let file = temp_path("in-place-check-change.toml");
    std::fs::write(
        &file,
        s.config(&[a.addr, down], &checks("200ms"), &[a.addr]),
    )
    .unwrap();
    let (code, said) = reload(&file);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("in place"), "{said}");
    // The server comes back: the new checks see it.
    let back = Origin::start_on(down);
    common::eventually(
        "the server is seen up again",
        Duration::from_secs(5),
        || {
            s.server("app", down)
                .is_some_and(|(state, _, _)| state == "up")
        },
    );
    drop(back);
    let _ = std::fs::remove_file(&file);
}

/// More servers than the cells fixed at start: the reload goes through a
/// fresh process instead of being refused.
#[test]
fn a_reload_past_the_server_capacity_hands_over() {
    let a = Origin::start();
    let s = Setup::new("in-place-capacity");
    let running = Ringlb::start(&s.config(&[a.addr], "", &[a.addr]));
    // One server each at start: capacity 2 * 2 + 64 = 68.
    let many: Vec<SocketAddr> = (0..80)
        .map(|i| SocketAddr::from(([127, 0, 1, 1 + i as u8], 9)))
        .chain([a.addr])
        .collect();
    let file = temp_path("in-place-capacity.toml");
    std::fs::write(&file, s.config(&many, "", &[a.addr])).unwrap();
    let (code, said) = reload(&file);
    assert_eq!(code, Some(0), "{said}");
    assert!(!said.contains("in place"), "{said}");
    assert!(running.log_contains("capacity"), "{}", running.log_text());
    let successor = common::successor(&said);
    common::stop(successor);
    let _ = std::fs::remove_file(&file);
}

/// Listeners open and close in place: ten reloads under load add and remove
/// a listener; it answers while configured and refuses once removed, a
/// kept-alive client of it gets its last answer with `Connection: close`,
/// the other listeners never stop and the pools stay.
#[test]
fn listeners_open_and_close_in_place_under_load() {
    let (a, c) = (Origin::start(), Origin::start());
    let s = Setup::new("in-place-listeners");
    let extra = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let base = s.config(&[a.addr], "", &[c.addr]);
    let with_extra = with_direct_listeners(&base, &[(extra, "extra")]);
    let running = Ringlb::start(&base);
    let load = Load::start(s.main, 4);
    let load_other = Load::start(s.other, 2);
    common::eventually("idle connections to c", Duration::from_secs(5), || {
        s.server("other", c.addr)
            .is_some_and(|(_, _, idle)| idle > 0)
    });
    let c_connections = c.stats.connections.load(Ordering::Relaxed);
    let file = temp_path("in-place-listeners.toml");
    for n in 0..10 {
        std::fs::write(&file, &with_extra).unwrap();
        let (code, said) = reload(&file);
        assert_eq!(code, Some(0), "reload {n}: {said}");
        assert!(
            said.contains(&format!("DONE {} in place", running.pid())),
            "reload {n}: {said}"
        );
        // The new listener answers at once; a client keeps its connection.
        let mut kept = common::client::Client::connect(extra);
        kept.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let first = kept.read_response(false);
        assert_eq!((first.status, first.body_str().as_str()), (200, "extra\n"));
        std::fs::write(&file, &base).unwrap();
        let (code, said) = reload(&file);
        assert_eq!(code, Some(0), "reload {n}: {said}");
        assert!(said.contains("in place"), "reload {n}: {said}");
        // Removed: new connections are refused...
        common::eventually(
            "the removed listener refuses",
            Duration::from_secs(5),
            || std::net::TcpStream::connect(extra).is_err(),
        );
        // ...and the kept connection's next request is its last.
        kept.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let last = kept.read_response(false);
        assert_eq!(last.status, 200);
        assert_eq!(last.header("connection"), Some("close"), "{last:?}");
    }
    let (ok, failures) = load.finish();
    let (ok_other, failures_other) = load_other.finish();
    assert!(
        failures.is_empty() && failures_other.is_empty(),
        "{failures:?} {failures_other:?}"
    );
    assert!(ok > 50 && ok_other > 20, "only {ok} + {ok_other}");
    let opened = c.stats.connections.load(Ordering::Relaxed) - c_connections;
    assert!(
        opened < 6,
        "{opened} new connections to a pool no reload touched"
    );
    let _ = std::fs::remove_file(&file);
}

/// A new listener on a port someone else holds refuses the whole reload:
/// nothing changes (not even the servers it also changes), serving goes on.
#[test]
fn a_listener_that_cannot_listen_refuses_the_reload() {
    let (a, b) = (Origin::start(), Origin::start());
    let s = Setup::new("in-place-taken");
    let running = Ringlb::start(&s.config(&[a.addr], "", &[a.addr]));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap();
    let file = temp_path("in-place-taken.toml");
    let text = with_direct_listeners(&s.config(&[b.addr], "", &[a.addr]), &[(port, "")]);
    std::fs::write(&file, text).unwrap();
    let (code, said) = reload(&file);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains(&port.to_string()), "{said}");
    let seen = b.stats.requests.load(Ordering::Relaxed);
    requests(s.main, "after", 5);
    assert_eq!(
        b.stats.requests.load(Ordering::Relaxed),
        seen,
        "the refused file's servers are in force"
    );
    assert!(alive(running.pid()));
    drop(taken);
    let _ = std::fs::remove_file(&file);
}

/// `[limits]` change in place: a lowered connection cap refuses the
/// connection past it, counting the ones already open.
#[test]
fn connection_limits_change_in_place() {
    let a = Origin::start();
    let s = Setup::new("in-place-limits");
    let config = |cap: u32| {
        format!(
            "workers = 1\nupgrade_socket = \"{}\"\n\n[limits]\nmax_connections = {cap}\n\n\
             [[listener]]\nlisten = \"{}\"\nupstream = \"app\"\n\n\
             [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n",
            s.socket.display(),
            s.main,
            a.addr
        )
    };
    let running = Ringlb::start(&config(100));
    // Two kept-alive connections, each answered once.
    let mut held: Vec<common::client::Client> = (0..2)
        .map(|_| {
            let mut c = common::client::Client::connect(s.main);
            c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(c.read_response(false).status, 200);
            c
        })
        .collect();
    let file = temp_path("in-place-limits.toml");
    std::fs::write(&file, config(2)).unwrap();
    let (code, said) = reload(&file);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(&format!("DONE {} in place", running.pid())),
        "{said}"
    );
    // The cap is full with the two held: a third is refused.
    let third = common::client::get(s.main, "/");
    assert_eq!(third.status, 503, "{third:?}");
    // The held ones still work, and once one goes, there is room again.
    for c in &mut held {
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(c.read_response(false).status, 200);
    }
    drop(held.pop());
    common::eventually("room again", Duration::from_secs(5), || {
        common::client::get(s.main, "/").status == 200
    });
    let _ = std::fs::remove_file(&file);
}

/// The event log's level and format change in place.
#[test]
fn the_log_level_changes_in_place() {
    let a = Origin::start();
    let s = Setup::new("in-place-log");
    let base = s.config(&[a.addr], "", &[a.addr]);
    let running = Ringlb::start(&base);
    let file = temp_path("in-place-log.toml");
    let reloads = || {
        running
            .log_text()
            .lines()
            .filter(|l| l.contains("reload in place"))
            .count()
    };
    std::fs::write(&file, format!("log_format = \"json\"\n{base}")).unwrap();
    let (code, said) = reload(&file);
    assert!(code == Some(0) && said.contains("in place"), "{said}");
    // The reload's own line is written after the switch: in JSON.
    common::eventually("the reload logged in JSON", Duration::from_secs(5), || {
        running
            .log_text()
            .lines()
            .any(|l| l.starts_with('{') && l.contains("reload in place"))
    });
    let before = reloads();
    std::fs::write(&file, format!("log_level = \"warn\"\n{base}")).unwrap();
    let (code, said) = reload(&file);
    assert!(code == Some(0) && said.contains("in place"), "{said}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(reloads(), before, "an info line at level warn");
    let _ = std::fs::remove_file(&file);
}

/// A listener removed and another added in a later reload: the removed
/// one's kept-alive connection still gets its own listener's answer, with
/// `Connection: close`, never the new listener's (found by an attacking
/// helper: the new listener took the removed one's id).
#[test]
fn a_removed_listeners_connection_never_gets_a_new_listeners_routes() {
    let a = Origin::start();
    let s = Setup::new("in-place-listener-ids");
    let (x, y) = (
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
    );
    let base = s.config(&[a.addr], "", &[a.addr]);
    let with = |addr: SocketAddr, body: &str| with_direct_listeners(&base, &[(addr, body)]);
    let _running = Ringlb::start(&with(x, "x"));
    let mut kept = common::client::Client::connect(x);
    kept.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(kept.read_response(false).body_str(), "x\n");
    let file = temp_path("in-place-listener-ids.toml");
    for text in [base.clone(), with(y, "y")] {
        std::fs::write(&file, text).unwrap();
        let (code, said) = reload(&file);
        assert!(code == Some(0) && said.contains("in place"), "{said}");
    }
    assert_eq!(common::client::get(y, "/").body_str(), "y\n");
    kept.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    let last = kept.read_response(false);
    assert_eq!(
        last.body_str(),
        "x\n",
        "the removed listener's connection got another's answer"
    );
    assert_eq!(last.header("connection"), Some("close"));
    let _ = std::fs::remove_file(&file);
}

/// Two listeners on port 0 are two listeners: reloading the same file
/// keeps both (found by an attacking helper: both matched the first).
#[test]
fn two_port_zero_listeners_both_stay() {
    let a = Origin::start();
    let s = Setup::new("in-place-port-zero");
    let zero: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let text = with_direct_listeners(
        &s.config(&[a.addr], "", &[a.addr]),
        &[(zero, "z1"), (zero, "z2")],
    );
    let running = Ringlb::start(&text);
    let (z1, z2) = (running.addrs[2], running.addrs[3]);
    let file = temp_path("in-place-port-zero.toml");
    std::fs::write(&file, &text).unwrap();
    let (code, said) = reload(&file);
    assert!(code == Some(0) && said.contains("in place"), "{said}");
    assert_eq!(common::client::get(z1, "/").body_str(), "z1\n");
    assert_eq!(common::client::get(z2, "/").body_str(), "z2\n");
    let _ = std::fs::remove_file(&file);
}

/// `config` with a listener per `(address, body)` that answers 200 with
/// the body and a newline (no body when empty), placed before the upstreams.
fn with_direct_listeners(config: &str, listeners: &[(SocketAddr, &str)]) -> String {
    let mut added = String::new();
    for (addr, body) in listeners {
        added.push_str(&format!(
            "[[listener]]\nlisten = \"{addr}\"\nstatus = 200\n"
        ));
        if !body.is_empty() {
            added.push_str(&format!("body = \"{body}\\n\"\n"));
        }
        added.push('\n');
    }
    config.replacen("[[upstream]]", &format!("{added}[[upstream]]"), 1)
}
