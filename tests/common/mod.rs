//! Shared test harness: the real ringlb binary, scripted origins on loopback,
//! and a small HTTP/1.1 client. Every wait has a deadline.
#![allow(dead_code)]

pub mod client;
#[allow(dead_code)]
pub mod load;
pub mod origin;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const DEADLINE: Duration = Duration::from_secs(20);

/// A ringlb process started from a config text.
pub struct Ringlb {
    child: Child,
    pub addrs: Vec<SocketAddr>,
    pub log: Arc<Mutex<Vec<String>>>,
    pub config_path: PathBuf,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

pub fn temp_path(name: &str) -> PathBuf {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("ringlb-test-{}-{n}-{name}", std::process::id()))
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ringlb")
}

impl Ringlb {
    /// Starts ringlb with `config` and waits until every listener is bound.
    pub fn start(config: &str) -> Ringlb {
        Ringlb::start_with(config, |_| {})
    }

    /// Like `start`, with the debug build's test hooks on (see `contain.rs`).
    pub fn start_with_test_hooks(config: &str) -> Ringlb {
        Ringlb::start_with(config, |c| {
            c.env("RINGLB_TEST_HOOKS", "1");
        })
    }

    /// Like `start`, letting `setup` adjust the command first.
    pub fn start_with(config: &str, setup: impl FnOnce(&mut Command)) -> Ringlb {
        let path = temp_path("config.toml");
        std::fs::write(&path, config).unwrap();
        let listeners = config.matches("[[listener]]").count();
        let workers = config
            .lines()
            .find_map(|l| l.trim().strip_prefix("workers = "))
            .and_then(|n| n.trim().parse::<usize>().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let mut command = Command::new(bin());
        command
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        setup(&mut command);
        let mut child = command.spawn().expect("spawn ringlb");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut r = Ringlb {
            child,
            addrs: Vec::new(),
            log,
            config_path: path,
        };
        let deadline = Instant::now() + DEADLINE;
        loop {
            let (addrs, workers_up) = {
                let log = r.log.lock().unwrap();
                let addrs: Vec<SocketAddr> = log
                    .iter()
                    .filter(|l| !l.contains("admin"))
                    .filter_map(|l| l.split("listening on ").nth(1))
                    // Text lines end with the address; JSON lines with `"}`.
                    .map(|a| a.trim().trim_end_matches(['"', '}']).parse().unwrap())
                    .collect();
                let workers = log
                    .iter()
                    .filter(|l| l.contains(" driver, pinned to"))
                    .count();
                (addrs, workers)
            };
            if addrs.len() == listeners && workers_up >= workers {
                r.addrs = addrs;
                // Workers log their driver just before they accept; give them a moment.
                std::thread::sleep(Duration::from_millis(50));
                return r;
            }
            if let Some(status) = r.child.try_wait().unwrap() {
                panic!(
                    "ringlb exited early ({status}): {:?}",
                    r.log.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "ringlb did not start: {:?}",
                r.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A field of /proc/PID/status in kB (VmRSS, VmHWM, ...).
    pub fn status_kb(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find_map(|l| {
                l.strip_prefix(field)
                    .and_then(|r| r.trim_start_matches(':').split_whitespace().next())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{field} not in /proc status"))
    }

    /// CPU time the process has used so far (all threads, from schedstat), in ns.
    pub fn cpu_ns(&self) -> u64 {
        let dir = format!("/proc/{}/task", self.pid());
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }

    /// Waits for exit with a deadline; returns the exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// The admin listener's address, if one was configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.log.lock().unwrap().iter().find_map(|l| {
            l.split("admin listening on ")
                .nth(1)
                .and_then(|a| a.trim().trim_end_matches(['"', '}']).parse().ok())
        })
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Ringlb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// `"ADDR", "ADDR", ...`: the value of a `servers` key.
pub fn server_list(servers: &[SocketAddr]) -> String {
    servers
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// For `Ringlb::start_with`: runs ringlb with an open-file limit of `n`, as
/// `prlimit --nofile=n:n` would.
pub fn with_nofile(n: u64) -> impl FnOnce(&mut Command) {
    move |c| {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit between fork and exec, on the child alone.
        unsafe {
            c.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// A config with one proxied listener on an ephemeral port in front of `servers`.
pub fn proxy_config(servers: &[SocketAddr], extra_upstream: &str, top: &str) -> String {
    let list = server_list(servers);
    format!(
        "workers = 1\n{top}\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n\n\
         [[upstream]]\nname = \"app\"\nservers = [{list}]\n{extra_upstream}\n"
    )
}

/// Polls `cond` until true or the deadline.
pub fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The I/O driver a test runs ringlb on: io_uring (the default) or epoll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    Uring,
    Epoll,
}

impl Io {
    /// The top-level config line that selects this driver ("" for the default).
    pub fn top(self) -> &'static str {
        match self {
            Io::Uring => "",
            Io::Epoll => "io = \"epoll\"",
        }
    }

    /// The driver name each worker logs for this driver (default ring flags).
    pub fn driver(self) -> &'static str {
        match self {
            Io::Uring => "io_uring (coop_taskrun, single_issuer)",
            Io::Epoll => "epoll",
        }
    }
}

impl Ringlb {
    /// The driver each worker logged ("worker N: DRIVER driver, pinned to ...").
    pub fn drivers(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| {
                let (before, _) = l.split_once(" driver, pinned to")?;
                before.split_once(": ").map(|(_, d)| d.to_string())
            })
            .collect()
    }

    /// Panics unless every worker logged `driver` as its driver.
    pub fn assert_driver(&self, driver: &str) {
        let drivers = self.drivers();
        assert!(
            !drivers.is_empty() && drivers.iter().all(|d| d == driver),
            "expected every worker on {driver:?}, got {drivers:?}:\n{}",
            self.log_text()
        );
    }

    /// The submission queue size of every io_uring ring the process holds
    /// (`SqMask` + 1 in /proc/PID/fdinfo).
    pub fn uring_sq_entries(&self) -> Vec<u32> {
        let dir = format!("/proc/{}/fd", self.pid());
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                let e = e.ok()?;
                let target = std::fs::read_link(e.path()).ok()?;
                if !target.to_string_lossy().contains("io_uring") {
                    return None;
                }
                let info = std::fs::read_to_string(format!(
                    "/proc/{}/fdinfo/{}",
                    self.pid(),
                    e.file_name().to_string_lossy()
                ))
                .ok()?;
                let mask = info
                    .lines()
                    .find_map(|l| l.strip_prefix("SqMask:"))?
                    .trim()
                    .trim_start_matches("0x");
                u32::from_str_radix(mask, 16).ok().map(|m| m + 1)
            })
            .collect()
    }
}

/// `GET path` on the admin listener; returns the whole answer (head and body).
pub fn admin_get(admin: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The value of one exact series on the admin listener's `/metrics` (0 if
/// absent).
pub fn metric(admin: SocketAddr, series: &str) -> f64 {
    admin_get(admin, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// Runs `ringlb --config FILE`, which must exit by itself within 10 s
/// (`why`: what it means if it keeps running): its status and stderr.
#[allow(dead_code)]
pub fn run_expecting_exit(config: &std::path::Path, why: &str) -> (Option<i32>, String) {
    let mut child = Command::new(bin())
        .arg("--config")
        .arg(config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{why}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    (status.code(), err)
}

/// Runs `ringlb reload --config FILE`: its exit code and what it printed.
pub fn reload(file: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(bin())
        .args(["reload", "--config"])
        .arg(file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Whether process `pid` runs (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// The pid in a `DONE pid` answer.
pub fn successor(said: &str) -> u32 {
    said.split("DONE ")
        .nth(1)
        .and_then(|p| p.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no DONE in {said:?}"))
}

/// Stops a ringlb that is not the test's child (a successor) and waits.
pub fn stop(pid: u32) {
    if pid == 0 {
        return;
    }
    // SAFETY: kill(2) on a pid this test started (through a reload).
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops the process when dropped (a successor is not the test's child, so
/// nothing else would if the test fails).
pub struct Stop(pub u32);

impl Drop for Stop {
    fn drop(&mut self) {
        stop(self.0);
    }
}
