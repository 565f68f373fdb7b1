//! Binary upgrade under load: `ringlb --upgrade` takes the listening sockets
//! of the running ringlb over its `upgrade_socket`; the old one drains and
//! exits 0, and no client request fails across the handovers.

mod common;

use common::origin::Origin;
use common::{admin_get, server_list, temp_path, Ringlb};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Setup {
    config: String,
    addr: SocketAddr,
    admin: SocketAddr,
    socket: std::path::PathBuf,
}

fn setup(origin: &Origin) -> Setup {
    let (port, admin_port) = (free_port(), free_port());
    let socket = temp_path("upgrade.sock");
    let config = format!(
        "workers = 2\nupgrade_socket = \"{}\"\ndrain_timeout = \"10s\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n\
         [[listener]]\nlisten = \"127.0.0.1:{port}\"\nupstream = \"app\"\n\n\
         [[upstream]]\nname = \"app\"\nservers = [{}]\n",
        socket.display(),
        server_list(&[origin.addr])
    );
    Setup {
        config,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        admin: format!("127.0.0.1:{admin_port}").parse().unwrap(),
        socket,
    }
}

/// Clients that keep requesting until told to stop: half open a connection
/// per request, half keep one alive (reconnecting when the server says
/// `Connection: close`, or closes a reused connection before answering, as
/// browsers do). Every answer must be a 200 carrying the request's own token.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn request(s: &mut TcpStream, token: &str, close: bool) -> Result<(String, bool), String> {
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

fn check(answer: &str, token: &str) -> Result<(), String> {
    if !answer.starts_with("HTTP/1.1 200 ") || !answer.contains(&format!("X-Token: {token}\r\n")) {
        return Err(format!("wrong answer for {token}: {answer:?}"));
    }
    Ok(())
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Load {
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

    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

fn upgrade(config: &str) -> Ringlb {
    Ringlb::start_with(config, |c| {
        c.arg("--upgrade");
    })
}

#[test]
fn three_upgrades_under_load_fail_no_request() {
    let origin = Origin::start();
    let s = setup(&origin);
    let mut old = Ringlb::start(&s.config);
    let load = Load::start(s.addr, 8);
    let mut served = Vec::new();
    for generation in 1..=3 {
        std::thread::sleep(Duration::from_millis(300));
        let before = load.ok.load(Ordering::Relaxed);
        let new = upgrade(&s.config);
        assert_eq!(
            old.wait_exit(Duration::from_secs(20)),
            Some(0),
            "generation {generation}: the old process drains and exits 0: {}",
            old.log_text()
        );
        assert!(old.log_contains("handed the listening sockets to pid"));
        assert!(new.log_contains("took over from pid"), "{}", new.log_text());
        served.push(load.ok.load(Ordering::Relaxed) - before);
        old = new;
    }
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 300, "only {ok} requests");
    assert!(
        served.iter().all(|&n| n > 0),
        "served during each upgrade: {served:?}"
    );
    // The admin listener moved along.
    assert!(admin_get(s.admin, "/healthz").contains("ok"));
    let _ = std::fs::remove_file(&s.socket);
}

#[test]
fn a_successor_that_dies_before_ready_leaves_the_old_one_serving() {
    let origin = Origin::start();
    let s = setup(&origin);
    let old = Ringlb::start(&s.config);
    // A "successor" that takes the sockets and vanishes without READY.
    {
        let mut u = std::os::unix::net::UnixStream::connect(&s.socket).unwrap();
        u.write_all(b"TAKEOVER 1\n").unwrap();
        let mut buf = [0u8; 512];
        let n = u.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("RINGLB "));
    }
    common::eventually("the old one says so", Duration::from_secs(5), || {
        old.log_contains("still serving")
    });
    let mut c = TcpStream::connect(s.addr).unwrap();
    let (a, _) = request(&mut c, "after", true).unwrap();
    check(&a, "after").unwrap();
    // And a real upgrade still works afterwards.
    let mut old = old;
    let new = upgrade(&s.config);
    assert_eq!(old.wait_exit(Duration::from_secs(20)), Some(0));
    let mut c = TcpStream::connect(s.addr).unwrap();
    let (a, _) = request(&mut c, "new", true).unwrap();
    check(&a, "new").unwrap();
    drop(new);
    let _ = std::fs::remove_file(&s.socket);
}

#[test]
fn upgrade_without_a_running_ringlb_fails_clearly_and_a_plain_second_start_is_refused() {
    let origin = Origin::start();
    let s = setup(&origin);
    let out = std::process::Command::new(common::bin())
        .args(["--config"])
        .arg({
            let p = temp_path("lonely.toml");
            std::fs::write(&p, &s.config).unwrap();
            p
        })
        .arg("--upgrade")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no ringlb offers its sockets"), "{err}");
    // With one running, a start without --upgrade is still refused.
    let _running = Ringlb::start(&s.config);
    let p = temp_path("second.toml");
    std::fs::write(&p, &s.config).unwrap();
    let out = std::process::Command::new(common::bin())
        .arg("--config")
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let _ = std::fs::remove_file(&s.socket);
}
