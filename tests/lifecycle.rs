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
    let mut child = Command::new(bin())
        .arg("--config")
        .arg(&cfg)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("second instance kept running on a port that is in use");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.to_lowercase().contains("in use"), "{err}");
    let _ = std::fs::remove_file(cfg);
}
