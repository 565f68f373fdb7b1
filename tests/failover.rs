//! Fail over without losing a request: one of three origins dies under a
//! concurrent load of idempotent GETs (SIGKILL: the kernel resets its busy
//! sockets and closes its idle ones; or a graceful stop that closes its idle
//! connections) and no client may see an error. Then it comes back and must
//! receive traffic again. Each case runs several times, so that an
//! intermittent loss shows; the test asserts outcomes, not latencies.
//!
//! The origins are separate processes (this test binary run again with
//! `RINGLB_TEST_ORIGIN_PORT` set, see `child_origin`), so that killing one is
//! a real process death.

mod common;

use common::client::Client;
use common::origin::{read_head, token_field};
use common::{eventually, Ringlb};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PORT_VAR: &str = "RINGLB_TEST_ORIGIN_PORT";

/// Not a test: the entry point of an origin process when `PORT_VAR` is set
/// (otherwise it returns at once). Answers every request with `origin PORT`
/// and the request's token; a line on stdin (or its end) stops it gracefully:
/// no more accepts, idle connections closed, requests in progress answered.
#[test]
fn child_origin() {
    let Ok(port) = std::env::var(PORT_VAR) else {
        return;
    };
    let listener = TcpListener::bind(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let (s2, c2) = (stop.clone(), conns.clone());
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        s2.store(true, Ordering::SeqCst);
        for c in c2.lock().unwrap().iter() {
            let _ = c.shutdown(std::net::Shutdown::Read);
        }
    });
    println!("origin ready on {port}");
    std::io::stdout().flush().unwrap();
    let body = format!("origin {port}");
    while !stop.load(Ordering::SeqCst) {
        let Ok((mut s, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        s.set_nonblocking(false).unwrap();
        s.set_nodelay(true).unwrap();
        conns.lock().unwrap().push(s.try_clone().unwrap());
        let (stop, body) = (stop.clone(), body.clone());
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            while let Some(head) = read_head(&mut s, &mut buf) {
                let r = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{}\r\n{body}",
                    body.len(),
                    token_field(&head)
                );
                if s.write_all(r.as_bytes()).is_err() || stop.load(Ordering::SeqCst) {
                    return;
                }
            }
        });
    }
    drop(listener);
    std::thread::sleep(Duration::from_millis(300)); // requests in progress finish
    std::process::exit(0);
}

/// An origin process.
struct OriginProcess {
    child: Child,
    port: u16,
}

impl OriginProcess {
    fn start(port: u16) -> OriginProcess {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args(["child_origin", "--exact", "--nocapture", "--test-threads=1"])
                .env(PORT_VAR, port.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let out = BufReader::new(child.stdout.take().unwrap());
            let ready = out
                .lines()
                .map_while(Result::ok)
                .any(|l| l.contains("origin ready on"));
            if ready {
                return OriginProcess { child, port };
            }
            // The port was not free yet (bind panicked): try again.
            let _ = child.wait();
            assert!(Instant::now() < deadline, "origin on {port} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stop_gracefully(mut self) {
        let _ = self.child.stdin.take().unwrap().write_all(b"stop\n");
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "origin did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for OriginProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Bounded load: `n` clients sending GETs on kept-alive connections (a new one
/// every few requests); counts answers per origin and keeps every failure.
struct Load {
    stop: Arc<AtomicBool>,
    per_origin: Arc<Mutex<std::collections::HashMap<String, usize>>>,
    total: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, n: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let per_origin: Arc<Mutex<std::collections::HashMap<String, usize>>> = Arc::default();
        let total = Arc::new(AtomicUsize::new(0));
        let failures: Arc<Mutex<Vec<String>>> = Arc::default();
        let threads = (0..n)
            .map(|id| {
                let (stop, per_origin, total, failures) = (
                    stop.clone(),
                    per_origin.clone(),
                    total.clone(),
                    failures.clone(),
                );
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let mut c = Client::connect(addr);
                    for i in 0..1_000_000u64 {
                        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                            break;
                        }
                        if (i + id as u64) % 7 == 0 {
                            c = Client::connect(addr);
                        }
                        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
                        match c.try_read_response(false) {
                            Some(r) if r.status == 200 => {
                                *per_origin.lock().unwrap().entry(r.body_str()).or_default() += 1;
                                total.fetch_add(1, Ordering::Relaxed);
                            }
                            Some(r) => failures.lock().unwrap().push(format!(
                                "status {}: {}",
                                r.status,
                                r.body_str()
                            )),
                            None => {
                                failures.lock().unwrap().push("connection closed".into());
                                c = Client::connect(addr);
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            per_origin,
            total,
            failures,
            threads,
        }
    }

    fn served_by(&self, port: u16) -> usize {
        let key = format!("origin {port}");
        self.per_origin
            .lock()
            .unwrap()
            .get(&key)
            .copied()
            .unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("a client panicked (response desync?)");
        }
        (
            self.total.load(Ordering::Relaxed),
            self.failures.lock().unwrap().clone(),
        )
    }
}

const CHECK_INTERVAL_MS: u64 = 300;

fn config(origins: &[SocketAddr]) -> String {
    let servers = common::server_list(origins);
    format!(
        "workers = 2\n[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n\n\
         [[upstream]]\nname = \"app\"\nservers = [{servers}]\nretries = 2\n\
         [upstream.health_check]\npath = \"/\"\ninterval = \"{CHECK_INTERVAL_MS}ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 2\n"
    )
}

#[derive(Clone, Copy, Debug)]
enum Death {
    Kill,
    GracefulStop,
}

fn lose_one_of_three(death: Death, cycles: usize) {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut origins: Vec<Option<OriginProcess>> = ports
        .iter()
        .map(|&p| Some(OriginProcess::start(p)))
        .collect();
    let addrs: Vec<SocketAddr> = origins.iter().flatten().map(|o| o.addr()).collect();
    let lb = Ringlb::start(&config(&addrs));
    let load = Load::start(lb.addr(), 32);
    eventually("traffic on every origin", Duration::from_secs(10), || {
        ports.iter().all(|&p| load.served_by(p) > 20)
    });
    let victim = ports[1];
    for cycle in 0..cycles {
        let before = load.total();
        let origin = origins[1].take().unwrap();
        match death {
            Death::Kill => origin.kill(),
            Death::GracefulStop => origin.stop_gracefully(),
        }
        // Load goes on without it until the active checks agree it is down.
        let down = format!("server 127.0.0.1:{victim}: up -> down");
        let downs = lb.log_text().matches(&down).count();
        eventually(
            "the checks to take it down",
            Duration::from_secs(10),
            || lb.log_text().matches(&down).count() > downs,
        );
        let restarted = Instant::now();
        origins[1] = Some(OriginProcess::start(victim));
        let served = load.served_by(victim);
        // Back once the checks see it up (2 intervals, +10 % jitter, plus the
        // check timeout), which also ends any refusal hold or ejection early;
        // with room for a slow CI host.
        let bound = Duration::from_millis(2 * CHECK_INTERVAL_MS * 11 / 10 + 200 + 1500);
        eventually("the restarted origin to get traffic", bound, || {
            load.served_by(victim) > served + 20
        });
        eprintln!(
            "{death:?} cycle {cycle}: {} requests through it, back after {:?}",
            load.total() - before,
            restarted.elapsed()
        );
    }
    let (total, failures) = load.finish();
    eprintln!("{death:?}: {total} requests, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{death:?}: client-visible errors: {failures:?}\n{}",
        lb.log_text()
    );
}

#[test]
fn a_killed_origin_costs_no_client_a_request() {
    lose_one_of_three(Death::Kill, 4);
}

#[test]
fn a_gracefully_stopped_origin_costs_no_client_a_request() {
    lose_one_of_three(Death::GracefulStop, 4);
}
