//! Binary upgrade under load: `ringlb --upgrade` takes the listening sockets
//! of the running ringlb over its `upgrade_socket`; the old one drains and
//! exits 0, and no client request fails across the handovers.

mod common;

use common::load::{check, free_port, request, Load};
use common::origin::Origin;
use common::{admin_get, server_list, temp_path, Ringlb};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

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
