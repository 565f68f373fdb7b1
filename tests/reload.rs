//! Configuration reload by handover, under load: `ringlb reload --config
//! FILE` and SIGHUP validate the file, then (the listeners change) hand the
//! listening sockets to a fresh process running it. No request fails across
//! 20 reloads; a new listener answers, a removed server stops receiving
//! requests, a bad file changes nothing. Reloads in place:
//! `reload_in_place.rs`.

mod common;

use common::load::{check, free_port, request, Load};
use common::origin::Origin;
use common::{alive, reload, server_list, successor, temp_path, Ringlb, Stop};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

struct Ports {
    main: u16,
    extra: u16,
    socket: PathBuf,
}

impl Ports {
    fn new(socket: &str) -> Ports {
        Ports {
            main: free_port(),
            extra: free_port(),
            socket: temp_path(socket),
        }
    }

    /// The main listener's address and the extra one's.
    fn addrs(&self) -> (SocketAddr, SocketAddr) {
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        (at(self.main), at(self.extra))
    }
}

/// The config: the main listener over `servers`, and optionally a second
/// listener that answers itself. The two differ in `drain_timeout` too, which
/// only a fresh process can change: each reload between them is a handover.
fn config(p: &Ports, servers: &[SocketAddr], extra_listener: bool) -> String {
    let extra = if extra_listener {
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:{}\"\nstatus = 200\nbody = \"extra\\n\"\n\n",
            p.extra
        )
    } else {
        String::new()
    };
    let drain = if extra_listener { "9s" } else { "10s" };
    format!(
        "workers = 2\nupgrade_socket = \"{}\"\ndrain_timeout = \"{drain}\"\n\n\
         [[listener]]\nlisten = \"127.0.0.1:{}\"\nupstream = \"app\"\n\n{extra}\
         [[upstream]]\nname = \"app\"\nservers = [{}]\n",
        p.socket.display(),
        p.main,
        server_list(servers)
    )
}

fn write(name: &str, text: &str) -> PathBuf {
    let path = temp_path(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn answers(addr: SocketAddr, token: &str) -> bool {
    TcpStream::connect(addr)
        .ok()
        .and_then(|mut s| request(&mut s, token, true).ok())
        .is_some_and(|(a, _)| a.starts_with("HTTP/1.1 200 "))
}

#[test]
fn twenty_reloads_under_load_fail_no_request_and_each_config_takes_effect() {
    let (a, b) = (Origin::start(), Origin::start());
    let p = Ports::new("reload.sock");
    let (main, extra) = p.addrs();
    // Both servers, no extra listener / one server and the extra listener.
    let both = write("both.toml", &config(&p, &[a.addr, b.addr], false));
    let one = write("one.toml", &config(&p, &[a.addr], true));
    let first = Ringlb::start(&config(&p, &[a.addr, b.addr], false));
    let load = Load::start(main, 6);
    let mut current = first.pid();
    let mut last = Stop(0);
    for n in 0..20 {
        let file = if n % 2 == 0 { &one } else { &both };
        let (code, said) = reload(file);
        assert_eq!(code, Some(0), "reload {n}: {said}");
        let next = successor(&said);
        assert_ne!(next, current);
        last.0 = next; // the old one drains and exits by itself
        let old = std::mem::replace(&mut current, next);
        if n % 2 == 0 {
            assert!(
                answers(extra, "extra"),
                "reload {n}: the new listener answers"
            );
            // Server b gets nothing more once the old process is gone: its
            // kept-alive clients sent it at most one more request each
            // (answered with `Connection: close`).
            let deadline = Instant::now() + Duration::from_secs(15);
            while alive(old) {
                assert!(
                    Instant::now() < deadline,
                    "reload {n}: the old process exits"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            let seen = b.stats.requests.load(Ordering::Relaxed);
            for i in 0..20 {
                let mut s = TcpStream::connect(main).unwrap();
                let (answer, _) = request(&mut s, &format!("r{n}-{i}"), true).unwrap();
                check(&answer, &format!("r{n}-{i}")).unwrap();
            }
            assert_eq!(
                b.stats.requests.load(Ordering::Relaxed),
                seen,
                "reload {n}: the removed server receives no request"
            );
        } else {
            // The extra listener is gone with the config that dropped it.
            let deadline = Instant::now() + Duration::from_secs(15);
            while TcpStream::connect(extra).is_ok() {
                assert!(
                    Instant::now() < deadline,
                    "reload {n}: the removed listener closes"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let (ok, failures) = load.finish();
    drop(last);
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 200, "only {ok} requests");
    assert!(first.log_contains("handed the listening sockets to pid"));
    for f in [&both, &one, &p.socket] {
        let _ = std::fs::remove_file(f);
    }
}

#[test]
fn a_bad_file_is_refused_with_its_reason_and_sighup_reloads_the_file() {
    let origin = Origin::start();
    let p = Ports::new("reload-bad.sock");
    let (main, extra) = p.addrs();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let with_admin = |text: String| format!("{text}\n[admin]\nlisten = \"{admin}\"\n");
    // The service manager's socket: READY, then RELOADING and the
    // successor's READY around a reload.
    let notify_path = temp_path("notify.sock");
    let manager = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let heard = || {
        let mut buf = [0u8; 512];
        let n = manager.recv(&mut buf).expect("a notification within 10 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let running = Ringlb::start_with(&with_admin(config(&p, &[origin.addr], false)), |c| {
        c.env("NOTIFY_SOCKET", &notify_path);
    });
    assert!(heard().starts_with("READY=1"));
    let status = || common::admin_get(admin, "/status");
    let before = status();
    assert!(before.contains("\"generation\":0,"), "{before}");
    // A bad file: the command says where and why, and nothing changes.
    let bad = write(
        "bad.toml",
        &config(&p, &[origin.addr], false).replace("workers = 2", "workers = \"two\""),
    );
    let (code, said) = reload(&bad);
    assert_eq!(code, Some(1));
    assert!(
        said.contains("bad.toml:1:") && said.contains("workers"),
        "{said}"
    );
    assert!(answers(main, "still"), "still serving");
    assert!(alive(running.pid()));

    // SIGHUP re-reads the running process's own file: a bad edit is refused
    // in the log, a good one is applied by a successor.
    std::fs::write(&running.config_path, "workers = [").unwrap();
    running.signal(libc::SIGHUP);
    common::eventually("the refusal is logged", Duration::from_secs(5), || {
        running.log_contains("reload refused")
    });
    assert!(answers(main, "after-bad-hup"));
    std::fs::write(
        &running.config_path,
        with_admin(config(&p, &[origin.addr], true)),
    )
    .unwrap();
    running.signal(libc::SIGHUP);
    let started = |log: String| {
        log.lines()
            .find_map(|l| l.split("reload: started pid ").nth(1))
            .and_then(|r| r.split(' ').next()?.parse::<u32>().ok())
    };
    common::eventually("the successor starts", Duration::from_secs(10), || {
        started(running.log_text()).is_some()
    });
    let successor = started(running.log_text()).unwrap();
    let _successor = Stop(successor);
    assert!(heard().starts_with("RELOADING=1"));
    let ready = heard();
    assert!(
        ready.starts_with("READY=1") && ready.contains(&format!("MAINPID={successor}\n")),
        "the successor announces itself: {ready:?}"
    );
    common::eventually("the new listener answers", Duration::from_secs(10), || {
        answers(extra, "after-hup")
    });
    common::eventually("the old process drained", Duration::from_secs(15), || {
        !alive(running.pid())
    });
    assert!(
        running.log_contains("handed the listening sockets to pid"),
        "{}",
        running.log_text()
    );
    assert!(answers(main, "on-the-successor"));
    // The admin listener moved along; /status tells the two configs apart.
    let after = status();
    assert!(after.contains("\"generation\":1,"), "{after}");
    let hash = |s: &str| s.split("\"hash\":\"").nth(1).map(|h| h[..16].to_string());
    assert!(
        hash(&after).is_some() && hash(&after) != hash(&before),
        "{before}\n{after}"
    );
    let _ = std::fs::remove_file(&p.socket);
    let _ = std::fs::remove_file(&bad);
    let _ = std::fs::remove_file(&notify_path);
}

#[test]
fn an_upgrade_socket_path_that_is_not_a_socket_is_refused_and_left_alone() {
    let origin = Origin::start();
    let p = Ports::new("precious.txt");
    std::fs::write(&p.socket, "precious data\n").unwrap();
    let file = write("not-a-socket.toml", &config(&p, &[origin.addr], false));
    let (code, err) = common::run_expecting_exit(
        &file,
        "ringlb started on a config whose upgrade_socket is a regular file",
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("exists and is not a socket"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&p.socket).unwrap(),
        "precious data\n"
    );
    let _ = std::fs::remove_file(&p.socket);
    let _ = std::fs::remove_file(&file);
}

#[test]
fn a_silent_or_flooding_client_on_the_upgrade_socket_does_not_hold_up_a_reload() {
    let origin = Origin::start();
    let p = Ports::new("silent.sock");
    let (main, _) = p.addrs();
    let file = write("silent.toml", &config(&p, &[origin.addr], false));
    let _running = Ringlb::start(&config(&p, &[origin.addr], false));
    // Owner-only: whoever can connect can take the listeners over.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p.socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "upgrade socket mode {mode:o}");
    }
    // A client that sends one endless line is cut off at 4 KiB, holding
    // neither the socket nor memory.
    let rss_before = _running.status_kb("VmRSS");
    {
        use std::io::Write;
        let mut flood = std::os::unix::net::UnixStream::connect(&p.socket).unwrap();
        flood
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..64 {
            if flood.write_all(&chunk).is_err() {
                break; // cut off, as it should be
            }
        }
    }
    let grew = _running.status_kb("VmRSS").saturating_sub(rss_before);
    assert!(grew < 16 * 1024, "a 64 MiB line grew RSS by {grew} KiB");
    let _silent = std::os::unix::net::UnixStream::connect(&p.socket).unwrap();
    let started = Instant::now();
    let (code, said) = reload(&file);
    assert_eq!(code, Some(0), "{said}");
    let _successor = Stop(successor(&said));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the reload waited {:?} behind a silent client",
        started.elapsed()
    );
    assert!(answers(main, "after"));
    let _ = std::fs::remove_file(&p.socket);
    let _ = std::fs::remove_file(&file);
}

/// A client kept alive across a reload by handover sees its connection
/// closed when the old process exits: the successor holds no copy of it
/// (found by an attacking helper: accepted sockets carry no close-on-exec
/// flag, so every connection open at the reload leaked into the successor,
/// and such clients waited until it exited).
#[test]
fn the_successor_inherits_no_client_connection() {
    let origin = Origin::start();
    let p = Ports::new("inherit.sock");
    let (main, _) = p.addrs();
    let running = Ringlb::start(&config(&p, &[origin.addr], false));
    let mut kept = common::client::Client::connect(main);
    kept.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(kept.read_response(false).status, 200);
    let file = write("inherit.toml", &config(&p, &[origin.addr], true));
    let (code, said) = reload(&file);
    assert_eq!(code, Some(0), "{said}");
    let _successor = Stop(successor(&said));
    common::eventually("the old process exits", Duration::from_secs(15), || {
        !alive(running.pid())
    });
    assert!(
        kept.is_closed_by_peer(Duration::from_secs(3)),
        "the kept-alive connection is still open after its process exited"
    );
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&p.socket);
}

/// After each of 30 reloads by handover, one fresh connection with nothing
/// else going on is answered promptly (found by an attacking helper: a few
/// waited seconds, until some other connection arrived).
#[test]
fn a_lone_connection_right_after_a_handover_is_answered() {
    let origin = Origin::start();
    let p = Ports::new("lone.sock");
    let (main, _) = p.addrs();
    // Only the drain timeout differs: a handover each time, same listeners.
    let text = config(&p, &[origin.addr], false);
    let files = [
        write("lone-a.toml", &text),
        write(
            "lone-b.toml",
            &text.replace("drain_timeout = \"10s\"", "drain_timeout = \"8s\""),
        ),
    ];
    let first = Ringlb::start(&config(&p, &[origin.addr], false));
    let mut last = Stop(0);
    let mut slow = Vec::new();
    for n in 0..30 {
        let (code, said) = reload(&files[(n + 1) % 2]);
        assert_eq!(code, Some(0), "reload {n}: {said}");
        last.0 = successor(&said);
        let started = Instant::now();
        let mut s = TcpStream::connect(main).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let answered = request(&mut s, &format!("lone{n}"), true);
        if answered.is_err() || started.elapsed() > Duration::from_secs(1) {
            slow.push((n, answered.err(), started.elapsed()));
        }
    }
    drop(last);
    assert!(
        slow.is_empty(),
        "slow or unanswered after a handover: {slow:?}\nLOG\n{}",
        first.log_text()
    );
    for f in files.iter().chain([&p.socket]) {
        let _ = std::fs::remove_file(f);
    }
}

/// A port-0 listener keeps its port across a reload by handover (found by
/// an attacking helper: the successor bound a new one and the old socket,
/// with its queue, closed), and a SIGHUP to the process that handed over
/// starts no second successor (found by the same helper: a SIGHUP racing a
/// handover put another file in force while the command said DONE).
#[test]
fn a_port_zero_listener_keeps_its_port_and_a_draining_process_refuses_a_reload() {
    let origin = Origin::start();
    let p = Ports::new("zero.sock");
    let text = config(&p, &[origin.addr], false).replacen(
        "[[upstream]]",
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nstatus = 200\nbody = \"zero\\n\"\n\n[[upstream]]",
        1,
    );
    let running = Ringlb::start(&text);
    let zero = running.addrs[1];
    // Keeps the old process draining for a while after the handover.
    let (main, _) = p.addrs();
    let slow = std::thread::spawn(move || common::client::get(main, "/slow/1500").status);
    std::thread::sleep(Duration::from_millis(200));
    let file = write(
        "zero.toml",
        &text.replace("drain_timeout = \"10s\"", "drain_timeout = \"8s\""),
    );
    let (code, said) = reload(&file);
    assert_eq!(code, Some(0), "{said}");
    let _successor = Stop(successor(&said));
    running.signal(libc::SIGHUP);
    common::eventually("the refusal is logged", Duration::from_secs(5), || {
        running.log_contains("is draining; reload that one")
    });
    assert_eq!(slow.join().unwrap(), 200);
    common::eventually("the old process exits", Duration::from_secs(15), || {
        !alive(running.pid())
    });
    let answer = common::client::get(zero, "/");
    assert_eq!(
        (answer.status, answer.body_str()),
        (200, "zero\n".to_string())
    );
    assert_eq!(
        running.log_text().matches("reload: started pid").count(),
        1,
        "{}",
        running.log_text()
    );
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&p.socket);
}
