//! The binary as an operator meets it: CLI, config checking, the demo, graceful shutdown.

mod common;

use common::client::{get, Client};
use common::origin::Origin;
use common::{bin, proxy_config, temp_path, Ringlb};
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn version_and_help() {
    let out = Command::new(bin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ringlb "));
    let out = Command::new(bin()).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("check --config FILE"));
    let out = Command::new(bin()).arg("--nope").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Runs `ringlb check` on a config text written to a temporary file.
fn check(name: &str, text: &str) -> (std::path::PathBuf, std::process::Output) {
    let path = temp_path(name);
    std::fs::write(&path, text).unwrap();
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (path, out)
}

#[test]
fn check_accepts_a_good_file_and_pinpoints_a_bad_one() {
    let head = "[[listener]]\nlisten = \"127.0.0.1:8080\"\nupstream = \"app\"\n\n[[upstream]]\nname = \"app\"\n";
    let (good, out) = check(
        "good.toml",
        &format!("{head}servers = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]\n"),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (bad, out) = check(
        "bad.toml",
        &format!("{head}srevers = [\"127.0.0.1:9001\"]\n"),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:7:", bad.display())), "{err}");
    assert!(err.contains("srevers"), "{err}");

    let out = Command::new(bin())
        .args(["check", "--config", "/nonexistent/ringlb.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let _ = std::fs::remove_file(good);
    let _ = std::fs::remove_file(bad);
}

#[test]
fn sigterm_drains_an_in_flight_request_then_exits_zero() {
    let origin = Origin::start();
    let mut lb = Ringlb::start(&proxy_config(&[origin.addr], "", "drain_timeout = \"10s\""));
    let addr = lb.addr();
    let slow = std::thread::spawn(move || get(addr, "/slow/800"));
    common::eventually(
        "the slow request to reach the origin",
        Duration::from_secs(5),
        || origin.requests() == 1,
    );
    let start = Instant::now();
    lb.signal(libc::SIGTERM);
    let r = slow.join().unwrap();
    assert_eq!((r.status, r.body_str().as_str()), (200, "slow"));
    assert_eq!(
        r.header("connection"),
        Some("close"),
        "responses during drain close the connection"
    );
    assert_eq!(
        lb.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        lb.log_text()
    );
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "exited before the request finished"
    );
    assert!(lb.log_contains("SIGTERM received"));
}

#[test]
fn drain_deadline_bounds_shutdown() {
    let origin = Origin::start();
    let mut lb = Ringlb::start(&proxy_config(
        &[origin.addr],
        "",
        "drain_timeout = \"300ms\"",
    ));
    let addr = lb.addr();
    let _stuck = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.send(b"GET /slow/5000 HTTP/1.1\r\nHost: localhost\r\n\r\n");
        c.try_read_response(false)
    });
    common::eventually(
        "the slow request to reach the origin",
        Duration::from_secs(5),
        || origin.requests() == 1,
    );
    let start = Instant::now();
    lb.signal(libc::SIGTERM);
    assert_eq!(lb.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(
        lb.log_contains("drain deadline passed"),
        "{}",
        lb.log_text()
    );
}

#[test]
fn demo_answers_out_of_the_box() {
    let mut child = Command::new(bin())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = "127.0.0.1:8080".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut bodies = Vec::new();
    while bodies.len() < 4 {
        assert!(Instant::now() < deadline, "demo did not answer");
        if std::net::TcpStream::connect(addr).is_err() {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let mut c = Client::connect(addr);
        for _ in 0..4 {
            c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
            let r = c.read_response(false);
            assert_eq!(r.status, 200);
            bodies.push(r.body_str());
        }
    }
    assert!(
        bodies.iter().any(|b| b.contains("backend 1"))
            && bodies.iter().any(|b| b.contains("backend 2")),
        "{bodies:?}"
    );
    let r = get(addr, "/healthz");
    assert_eq!((r.status, r.body_str().as_str()), (200, "ok\n"));
    // SAFETY-free signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "demo did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(out.contains("curl"), "the demo says what to curl: {out}");
}

#[test]
fn second_instance_on_the_same_port_is_refused() {
    let origin = Origin::start();
    let lb = Ringlb::start(&proxy_config(&[origin.addr], "", ""));
    let cfg = temp_path("dup.toml");
    std::fs::write(
        &cfg,
        format!("[[listener]]\nlisten = \"{}\"\nupstream = \"app\"\n[[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n", lb.addr(), origin.addr),
    )
    .unwrap();
    let (code, err) = common::run_expecting_exit(
        &cfg,
        "second instance kept running on a port that is in use",
    );
    assert_eq!(code, Some(1));
    assert!(err.to_lowercase().contains("in use"), "{err}");
    let _ = std::fs::remove_file(cfg);
}

/// `systemctl restart`: a new ringlb right after the old one exited must get
/// the port (io_uring keeps a listening socket alive past the process unless
/// ringlb closes it first).
#[test]
fn restart_right_after_sigterm_gets_the_port_every_time() {
    let origin = Origin::start();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg =
        proxy_config(&[origin.addr], "", "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    for cycle in 0..20 {
        let mut lb = Ringlb::start(&cfg);
        assert_eq!(get(lb.addr(), "/").status, 200, "cycle {cycle}");
        lb.signal(libc::SIGTERM);
        assert_eq!(
            lb.wait_exit(Duration::from_secs(10)),
            Some(0),
            "cycle {cycle}: {}",
            lb.log_text()
        );
    }
}

#[test]
fn hup_usr1_and_usr2_never_kill_ringlb() {
    let origin = Origin::start();
    let mut lb = Ringlb::start(&proxy_config(&[origin.addr], "", ""));
    let addr = lb.addr();
    // A request in flight while the signals arrive must complete.
    let slow = std::thread::spawn(move || get(addr, "/slow/300"));
    common::eventually(
        "the slow request to reach the origin",
        Duration::from_secs(5),
        || origin.requests() == 1,
    );
    for sig in [libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2] {
        lb.signal(sig);
    }
    let r = slow.join().unwrap();
    assert_eq!((r.status, r.body_str().as_str()), (200, "slow"));
    for _ in 0..3 {
        assert_eq!(get(addr, "/").status, 200);
    }
    assert_eq!(
        lb.wait_exit(Duration::from_millis(100)),
        None,
        "still running"
    );
    for name in ["SIGHUP received", "SIGUSR1 received", "SIGUSR2 received"] {
        common::eventually(name, Duration::from_secs(5), || lb.log_contains(name));
    }
    lb.signal(libc::SIGTERM);
    assert_eq!(lb.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn a_panic_in_one_connection_closes_it_and_the_worker_serves_on() {
    let origin = Origin::start();
    let lb = Ringlb::start_with_test_hooks(&proxy_config(&[origin.addr], "", ""));
    let mut idle = Client::connect(lb.addr());
    idle.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(idle.read_response(false).status, 200);
    for _ in 0..3 {
        let mut c = Client::connect(lb.addr());
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Ringlb-Test-Panic: request\r\n\r\n");
        assert!(
            c.try_read_response(false).is_none(),
            "closed without an answer"
        );
    }
    // The worker (there is one) serves on: new and existing connections.
    assert_eq!(get(lb.addr(), "/").status, 200);
    idle.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(idle.read_response(false).status, 200);
    common::eventually("the panics logged", Duration::from_secs(5), || {
        lb.log_text()
            .matches("test hook: a panic inside a connection task")
            .count()
            == 3
    });
    assert!(
        lb.log_contains("panic in thread ringlb-w0"),
        "{}",
        lb.log_text()
    );
}

#[test]
fn a_worker_that_dies_stops_the_process_with_an_error() {
    let origin = Origin::start();
    let mut lb = Ringlb::start_with_test_hooks(
        &proxy_config(&[origin.addr], "", "drain_timeout = \"2s\"")
            .replace("workers = 1", "workers = 2"),
    );
    let mut c = Client::connect(lb.addr());
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Ringlb-Test-Panic: worker\r\n\r\n");
    assert_eq!(c.read_response(false).status, 200);
    assert_eq!(
        lb.wait_exit(Duration::from_secs(10)),
        Some(70),
        "{}",
        lb.log_text()
    );
    assert!(
        lb.log_contains("panicked: ringlb stops"),
        "{}",
        lb.log_text()
    );
}

#[test]
fn check_refuses_addresses_run_could_not_bind() {
    for (name, text) in [
        (
            "admin-port.toml",
            "[admin]\nlisten = \"127.0.0.1:18099\"\n[[listener]]\nlisten = \"127.0.0.1:18099\"\nstatus = 200\n",
        ),
        (
            "any-and-loopback.toml",
            "[[listener]]\nlisten = \"0.0.0.0:18098\"\nstatus = 200\n[[listener]]\nlisten = \"127.0.0.1:18098\"\nstatus = 200\n",
        ),
    ] {
        let (path, out) = check(name, text);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("{}:", path.display())) && err.contains("collides with"), "{err}");
        let _ = std::fs::remove_file(path);
    }
}

/// `ringlb --print-demo-config` prints a config that `ringlb check` accepts.
#[test]
fn the_printed_demo_config_passes_check() {
    let out = Command::new(bin())
        .arg("--print-demo-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("[[listener]]") && text.contains("[[upstream]]"),
        "{text}"
    );
    let (path, out) = check("demo.toml", &text);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!(
            "{}: ok (3 listener(s), 1 upstream(s)",
            path.display()
        )),
        "{said}"
    );
    let _ = std::fs::remove_file(path);
}

/// `check` errors name the file, the line and the column (1-based) of the
/// offending key or value, and the key.
#[test]
fn check_errors_carry_file_line_and_column() {
    for (name, text, at, key) in [
        (
            "indented-key.toml",
            "[[listener]]\nlisten = \"127.0.0.1:8080\"\nupstream = \"app\"\n\n\
             [[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9001\"]\n    srevers = 1\n",
            "8:5",
            "srevers",
        ),
        (
            "bad-value.toml",
            "[[listener]]\nlisten = \"127.0.0.1:8080\"\nupstream = \"app\"\n\n\
             [[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9001\"]\nidle_timeout = \"5 parsecs\"\n",
            "8:16",
            "idle_timeout",
        ),
        (
            "client-key.toml",
            "workers = 1\n[client]\n  idle_timeout = \"1s\"\n   bogus_key = 3\n\
             [[listener]]\nlisten = \"127.0.0.1:8080\"\nstatus = 200\n",
            "4:4",
            "bogus_key",
        ),
    ] {
        let (path, out) = check(name, text);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with(&format!("{}:{at}: `{key}`: ", path.display())),
            "{name}: expected {at} and `{key}`: {err}"
        );
        let _ = std::fs::remove_file(path);
    }
}

/// Rejected requests are logged with their reason, at most 5 lines per
/// second and worker (`log::rate_limited`); the next second's first line says
/// how many were left out, so every rejection is accounted for.
#[test]
fn rejection_logs_are_rate_limited_per_worker() {
    let origin = Origin::start();
    let lb = Ringlb::start(&proxy_config(&[origin.addr], "", ""));
    let bad = b"GET / HTTP/1.1\r\n\r\n"; // no Host: 400
    let start = Instant::now();
    for _ in 0..200 {
        let mut c = Client::connect(lb.addr());
        c.send_raw(bad);
        assert_eq!(c.read_response(false).status, 400);
    }
    let flood = start.elapsed();
    // One more in a later second, which reports what the last one dropped.
    std::thread::sleep(Duration::from_millis(1100));
    let mut c = Client::connect(lb.addr());
    c.send_raw(bad);
    assert_eq!(c.read_response(false).status, 400);
    let reason = "WARN client 127.0.0.1: 400 bad request";
    let counts = |log: &str| {
        let suppressed: usize = log
            .lines()
            .filter_map(|l| {
                l.split(" WARN ")
                    .nth(1)?
                    .strip_suffix(" similar messages suppressed")
            })
            .map(|n| n.parse::<usize>().unwrap())
            .sum();
        (log.matches(reason).count(), suppressed)
    };
    // The last rejection's lines (the report of what was dropped, then its
    // own) may reach the log a moment after its answer: wait for them rather
    // than for any rejection line (the flood's last one satisfied that).
    common::eventually("the last rejection logged", Duration::from_secs(5), || {
        let (logged, suppressed) = counts(&lb.log_text());
        logged + suppressed >= 201
    });
    let log = lb.log_text();
    let (logged, suppressed) = counts(&log);
    // The flood touched at most this many seconds, plus the last request's.
    let seconds = flood.as_secs() as usize + 3;
    eprintln!(
        "201 rejections in {flood:?} (+1 s): {logged} lines logged, {suppressed} reported suppressed"
    );
    assert!(
        logged <= 5 * seconds,
        "{logged} rejection lines for 201 rejections over {seconds} s:\n{log}"
    );
    assert_eq!(
        logged + suppressed,
        201,
        "every rejection accounted for:\n{log}"
    );
    assert_eq!(origin.requests(), 0);
}

/// Reads one notification from the service manager's socket, within 10 s.
fn notification(socket: &std::os::unix::net::UnixDatagram) -> String {
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification within 10 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn systemd_hears_ready_once_serving_and_stopping_when_the_drain_starts() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let origin = Origin::start();
    // A path socket, and one in the abstract namespace (`@name`), as systemd uses.
    let path = temp_path("notify.sock");
    let name = format!("ringlb-test-notify-{}", std::process::id());
    let sockets = [
        (
            UnixDatagram::bind(&path).unwrap(),
            path.display().to_string(),
        ),
        (
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap(),
            format!("@{name}"),
        ),
    ];
    for (socket, target) in &sockets {
        let mut lb = Ringlb::start_with(&proxy_config(&[origin.addr], "", ""), |c| {
            c.env("NOTIFY_SOCKET", target);
        });
        let ready = notification(socket);
        assert!(ready.starts_with("READY=1\n"), "{ready:?}");
        assert!(
            ready.contains(&format!("MAINPID={}\n", lb.pid())),
            "{ready:?}"
        );
        // READY means serving.
        assert_eq!(get(lb.addr(), "/").status, 200);
        lb.signal(libc::SIGTERM);
        let stopping = notification(socket);
        assert!(stopping.starts_with("STOPPING=1"), "{stopping:?}");
        assert_eq!(lb.wait_exit(Duration::from_secs(10)), Some(0));
    }
    let _ = std::fs::remove_file(&path);
}
