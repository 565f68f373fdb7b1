//! DNS re-resolution against a name the test controls: ringlb runs in a
//! mount namespace of its own whose `/etc/hosts` is a file the test writes
//! (the host's file is never touched). Addresses that appear join the pool,
//! addresses that vanish leave it, a name that stops resolving keeps its
//! last addresses, and no request fails meanwhile.

mod common;

use common::load::{free_port, requests, Load};
use common::origin::Origin;
use common::{admin_get, temp_path, Ringlb};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

const NAME: &str = "app.ringlb.test";

/// Runs the command in a new mount namespace where `hosts` is bind-mounted
/// over `/etc/hosts` (as root; else in a user namespace too, mapping the
/// caller to root there).
fn with_hosts_file(hosts: &Path) -> impl FnOnce(&mut std::process::Command) {
    let hosts = std::ffi::CString::new(hosts.to_str().unwrap()).unwrap();
    move |c| {
        // SAFETY: the closure runs in the forked child before exec; it calls
        // only raw system calls (no allocation, no locks), as pre_exec needs.
        unsafe {
            c.pre_exec(move || {
                let uid = libc::geteuid();
                let gid = libc::getegid();
                let flags = if uid == 0 {
                    libc::CLONE_NEWNS
                } else {
                    libc::CLONE_NEWNS | libc::CLONE_NEWUSER
                };
                if libc::unshare(flags) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if uid != 0 {
                    map_id(c"/proc/self/setgroups", b"deny", 4)?;
                    map_id(c"/proc/self/uid_map", &id_line(uid), 0)?;
                    map_id(c"/proc/self/gid_map", &id_line(gid), 0)?;
                }
                // Private: the bind mount must not leak to the host.
                let root = c"/";
                if libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::mount(
                    hosts.as_ptr(),
                    c"/etc/hosts".as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// `0 ID 1` for an id map: root inside is `id` outside.
fn id_line(id: u32) -> [u8; 16] {
    let mut line = *b"0 0000000000 1\n\0";
    let mut n = id;
    for i in (2..12).rev() {
        line[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    line
}

/// Writes `bytes` (up to the first NUL, or `len` if not zero) to `path`.
fn map_id(path: &std::ffi::CStr, bytes: &[u8], len: usize) -> std::io::Result<()> {
    let len = if len > 0 {
        len
    } else {
        bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len())
    };
    // SAFETY: plain open/write/close on a path and a buffer we own.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = libc::write(fd, bytes.as_ptr().cast(), len);
        libc::close(fd);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Rewrites the hosts file in place (same inode: the bind mount follows).
fn hosts(path: &Path, addrs: &[&str]) {
    let text: String = addrs.iter().map(|a| format!("{a} {NAME}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// The addresses `/status` lists for upstream `app`.
fn servers(admin: SocketAddr) -> Vec<String> {
    let answer = admin_get(admin, "/status");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let status: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let mut addrs: Vec<String> = status["upstreams"][0]["servers"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|s| s["addr"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    addrs.sort();
    addrs
}

/// A port free on both 127.0.0.2 and 127.0.0.3.
fn port_on_both() -> u16 {
    for _ in 0..50 {
        let a = TcpListener::bind("127.0.0.2:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.3", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

/// Origins on 127.0.0.2 and 127.0.0.3 at one port, and a hosts file (named
/// `hosts_name`) mapping the test's name to 127.0.0.2.
struct Names {
    two: SocketAddr,
    three: SocketAddr,
    origins: (Origin, Origin),
    hosts_file: std::path::PathBuf,
}

impl Names {
    fn start(hosts_name: &str) -> Names {
        let port = port_on_both();
        let two: SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
        let three: SocketAddr = format!("127.0.0.3:{port}").parse().unwrap();
        let origins = (Origin::start_on(two), Origin::start_on(three));
        let hosts_file = temp_path(hosts_name);
        hosts(&hosts_file, &["127.0.0.2"]);
        Names {
            two,
            three,
            origins,
            hosts_file,
        }
    }

    fn port(&self) -> u16 {
        self.two.port()
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.hosts_file);
    }
}

#[test]
fn a_name_is_resolved_again_and_its_addresses_join_and_leave_the_pool() {
    let names = Names::start("hosts");
    let (two, three, port) = (names.two, names.three, names.port());
    let hosts_file = names.hosts_file.clone();
    let a = &names.origins.0;
    let (main, admin) = (
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
    );
    let config = format!(
        "workers = 2\nresolve_interval = \"100ms\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [[listener]]\nlisten = \"{main}\"\nupstream = \"app\"\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{NAME}:{port}\"]\n"
    );
    let running = Ringlb::start_with(&config, with_hosts_file(&hosts_file));
    assert_eq!(servers(admin), vec![two.to_string()]);
    let load = Load::start(main, 4);

    // The name moves to another address: the old one leaves the pool.
    hosts(&hosts_file, &["127.0.0.3"]);
    // Listed once published; in force once every worker took it (logged).
    common::eventually("the new address in force", Duration::from_secs(5), || {
        servers(admin) == vec![three.to_string()] && running.log_contains("dns: server set 1:")
    });
    let seen = a.stats.requests.load(Ordering::Relaxed);
    requests(main, "moved", 20);
    assert_eq!(
        a.stats.requests.load(Ordering::Relaxed),
        seen,
        "the address the name left still gets requests"
    );

    // Two addresses: both serve.
    hosts(&hosts_file, &["127.0.0.2", "127.0.0.3"]);
    common::eventually("both addresses in force", Duration::from_secs(5), || {
        servers(admin).len() == 2 && running.log_contains("dns: server set 2:")
    });
    let seen = a.stats.requests.load(Ordering::Relaxed);
    requests(main, "both", 20);
    assert!(a.stats.requests.load(Ordering::Relaxed) > seen);

    // The name stops resolving: the last good addresses stay.
    hosts(&hosts_file, &[]);
    common::eventually("the failure is logged", Duration::from_secs(5), || {
        running.log_contains("keeps its last addresses")
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(servers(admin).len(), 2, "a failed lookup emptied the pool");
    requests(main, "unresolved", 20);
    hosts(&hosts_file, &["127.0.0.3"]);
    common::eventually("resolving again", Duration::from_secs(5), || {
        running.log_contains("resolves again") && servers(admin) == vec![three.to_string()]
    });

    let (ok, failures) = load.finish();
    assert!(failures.is_empty(), "{failures:?}");
    assert!(ok > 20, "only {ok} requests");
}

/// A reload in place is not undone by the next DNS refresh (found by an
/// attacking helper: the refresh republished the servers of the file
/// before the reload for one interval).
#[test]
fn a_dns_refresh_keeps_what_a_reload_put_in_force() {
    let names = Names::start("hosts-reload");
    let (three, port) = (names.three, names.port());
    let hosts_file = names.hosts_file.clone();
    let b = &names.origins.1;
    let (main, admin) = (
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
    );
    let config = |extra: &str| {
        format!(
            "workers = 2\nresolve_interval = \"50ms\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
             [[listener]]\nlisten = \"{main}\"\nupstream = \"app\"\n\n\
             [[upstream]]\nname = \"app\"\nservers = [\"{NAME}:{port}\"{extra}]\n"
        )
    };
    let running = Ringlb::start_with(&config(""), with_hosts_file(&hosts_file));
    // SIGHUP: the process re-reads its own file (in its own namespace).
    std::fs::write(&running.config_path, config(&format!(", \"{three}\""))).unwrap();
    running.signal(libc::SIGHUP);
    common::eventually("the reload in force", Duration::from_secs(5), || {
        running.log_contains("reload in place")
    });
    // Twenty refresh intervals: the added server stays, and no refresh
    // publishes anything (the answers did not change).
    for _ in 0..20 {
        assert_eq!(servers(admin).len(), 2, "a refresh undid the reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !running.log_contains("dns: server set"),
        "{}",
        running.log_text()
    );
    let seen = b.stats.requests.load(Ordering::Relaxed);
    requests(main, "after", 20);
    assert!(b.stats.requests.load(Ordering::Relaxed) > seen);
}

/// A name that a reload brings in is resolved again like the others, even
/// when ringlb started without any (found by an attacking helper).
#[test]
fn a_name_added_by_a_reload_is_resolved_again() {
    let names = Names::start("hosts-added");
    let (two, three, port) = (names.two, names.three, names.port());
    let hosts_file = names.hosts_file.clone();
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let main = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = |server: &str| {
        format!(
            "workers = 2\nresolve_interval = \"50ms\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
             [[listener]]\nlisten = \"{main}\"\nupstream = \"app\"\n\n\
             [[upstream]]\nname = \"app\"\nservers = [\"{server}\"]\n"
        )
    };
    let running = Ringlb::start_with(&config(&three.to_string()), with_hosts_file(&hosts_file));
    std::fs::write(&running.config_path, config(&format!("{NAME}:{port}"))).unwrap();
    running.signal(libc::SIGHUP);
    common::eventually("the name in force", Duration::from_secs(5), || {
        servers(admin) == vec![two.to_string()]
    });
    hosts(&hosts_file, &["127.0.0.3"]);
    common::eventually("the name resolved again", Duration::from_secs(5), || {
        servers(admin) == vec![three.to_string()]
    });
    requests(main, "after", 5);
}
