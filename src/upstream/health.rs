//! Health shared by all workers, and the active checker that maintains it.
//!
//! Active checks run once per process, in one thread with its own small event
//! loop: one task per server (HTTP or TCP), with jitter so checks do not line
//! up, `rise` successes to come up and `fall` failures to go down. Results are
//! published through atomics that workers read on every pick: no lock on the
//! request path. Workers publish passive ejections here too (on change only),
//! for the admin view.

use crate::config::{HealthCheck, HealthCheckKind};
use crate::io::{self, ReadOutcome};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct SharedServer {
    pub addr: SocketAddr,
    pub weight: u32,
    healthy: AtomicBool,
    /// Milliseconds since `Health::epoch` when the server last came up (slow start).
    up_since_ms: AtomicU64,
    /// Workers that currently eject this server (passive health).
    pub ejected_by: AtomicU32,
    pub last_check_ok: AtomicBool,
    pub checks: AtomicU64,
}

pub struct SharedUpstream {
    pub name: String,
    pub servers: Vec<SharedServer>,
    /// Bumped whenever a server's active health changes.
    generation: AtomicU64,
}

/// Health of every upstream, shared read-mostly by the workers.
pub struct Health {
    pub upstreams: Vec<SharedUpstream>,
    epoch: Instant,
}

impl SharedServer {
    #[inline]
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn up_since(&self, epoch: Instant) -> Instant {
        epoch + Duration::from_millis(self.up_since_ms.load(Ordering::Relaxed))
    }
}

impl SharedUpstream {
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

impl Health {
    pub fn new(config: &crate::config::Config) -> Arc<Health> {
        Arc::new(Health {
            epoch: Instant::now(),
            upstreams: config
                .upstreams
                .iter()
                .map(|u| SharedUpstream {
                    name: u.name.clone(),
                    generation: AtomicU64::new(0),
                    servers: u
                        .servers
                        .iter()
                        .map(|s| SharedServer {
                            addr: s.addr,
                            weight: s.weight,
                            // Optimistic start: traffic flows at once; checks correct it.
                            healthy: AtomicBool::new(true),
                            up_since_ms: AtomicU64::new(0),
                            ejected_by: AtomicU32::new(0),
                            last_check_ok: AtomicBool::new(true),
                            checks: AtomicU64::new(0),
                        })
                        .collect(),
                })
                .collect(),
        })
    }

    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    fn set(&self, up: usize, server: usize, healthy: bool, reason: &str) {
        let u = &self.upstreams[up];
        let s = &u.servers[server];
        if s.healthy.swap(healthy, Ordering::AcqRel) != healthy {
            if healthy {
                let ms = Instant::now().duration_since(self.epoch).as_millis() as u64;
                s.up_since_ms.store(ms, Ordering::Relaxed);
            }
            u.generation.fetch_add(1, Ordering::AcqRel);
            let (from, to) = if healthy {
                ("down", "up")
            } else {
                ("up", "down")
            };
            crate::info!(
                "health: upstream {} server {}: {from} -> {to} ({reason})",
                u.name,
                s.addr
            );
        }
    }

    /// The admin view: every pool and server as JSON. `extra(ui, out)` may
    /// append fields (`,"key":value`) to upstream `ui`'s object, and
    /// `tail` to the top-level object.
    pub fn to_json(
        &self,
        configs: &[crate::config::UpstreamConfig],
        extra: &dyn Fn(usize, &mut String),
        tail: &str,
    ) -> String {
        let mut out = String::from("{\"upstreams\":[");
        for (ui, u) in self.upstreams.iter().enumerate() {
            if ui > 0 {
                out.push(',');
            }
            let cfg = &configs[ui];
            out.push_str(&format!(
                "{{\"name\":{:?},\"balance\":{:?},\"active_checks\":{},\"servers\":[",
                u.name,
                cfg.balance_name,
                cfg.health_check.is_some()
            ));
            for (si, s) in u.servers.iter().enumerate() {
                if si > 0 {
                    out.push(',');
                }
                let ejected = s.ejected_by.load(Ordering::Relaxed);
                let state = if !s.is_healthy() {
                    "down"
                } else if ejected > 0 {
                    "ejected"
                } else {
                    "up"
                };
                out.push_str(&format!(
                    "{{\"addr\":\"{}\",\"weight\":{},\"state\":\"{state}\",\"healthy\":{},\"ejected_by_workers\":{ejected},\"checks\":{},\"last_check_ok\":{}}}",
                    s.addr,
                    s.weight,
                    s.is_healthy(),
                    s.checks.load(Ordering::Relaxed),
                    s.last_check_ok.load(Ordering::Relaxed)
                ));
            }
            out.push(']');
            extra(ui, &mut out);
            out.push('}');
        }
        out.push_str(&format!(
            "],\"panics\":{}{tail}}}",
            crate::contain::panics()
        ));
        out
    }
}

/// Runs every active check until `stop` is set (call inside a monoio runtime).
pub async fn run_checks(
    health: Arc<Health>,
    configs: Vec<crate::config::UpstreamConfig>,
    stop: Arc<crate::runtime::Shutdown>,
) {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for (ui, cfg) in configs.iter().enumerate() {
        let Some(check) = cfg.health_check.clone() else {
            continue;
        };
        for si in 0..cfg.servers.len() {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            monoio::spawn(check_server(
                health.clone(),
                ui,
                si,
                check.clone(),
                seed,
                stop.clone(),
            ));
        }
    }
    while !stop.is_requested() {
        monoio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn check_server(
    health: Arc<Health>,
    up: usize,
    server: usize,
    check: HealthCheck,
    mut seed: u64,
    stop: Arc<crate::runtime::Shutdown>,
) {
    let addr = health.upstreams[up].servers[server].addr;
    let (mut ok_streak, mut fail_streak) = (0u32, 0u32);
    // First check at a random point of the first interval, later ones at
    // interval +- 10 %: checks of many servers spread out.
    let mut next = jitter(check.interval, &mut seed, true);
    while !stop.is_requested() {
        monoio::time::sleep(next).await;
        next = jitter(check.interval, &mut seed, false);
        let result = probe(addr, &check).await;
        let s = &health.upstreams[up].servers[server];
        s.checks.fetch_add(1, Ordering::Relaxed);
        s.last_check_ok.store(result.is_ok(), Ordering::Relaxed);
        match result {
            Ok(()) => {
                ok_streak += 1;
                fail_streak = 0;
                if ok_streak >= check.rise && !s.is_healthy() {
                    health.set(
                        up,
                        server,
                        true,
                        &format!("{} consecutive checks passed", ok_streak),
                    );
                }
            }
            Err(why) => {
                fail_streak += 1;
                ok_streak = 0;
                if fail_streak >= check.fall && s.is_healthy() {
                    health.set(
                        up,
                        server,
                        false,
                        &format!("{fail_streak} consecutive checks failed, last: {why}"),
                    );
                }
            }
        }
    }
}

fn jitter(interval: Duration, seed: &mut u64, first: bool) -> Duration {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    let unit = (*seed % 10_000) as f64 / 10_000.0;
    if first {
        interval.mul_f64(unit)
    } else {
        interval.mul_f64(0.9 + 0.2 * unit)
    }
}

/// One check: Ok, or why it failed.
async fn probe(addr: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    let deadline = Instant::now() + check.timeout;
    let mut conn = match io::connect(addr, check.timeout).await {
        Ok(c) => c,
        Err(io::ConnectError::TimedOut) => return Err("connect timeout".into()),
        Err(e) => return Err(format!("connect: {e}")),
    };
    let HealthCheckKind::Http {
        method,
        path,
        host,
        expect_status,
        body_contains,
    } = &check.kind
    else {
        return Ok(());
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ringlb-health-check\r\nConnection: close\r\n\r\n",
        host.clone().unwrap_or_else(|| addr.to_string())
    );
    let mut buf = crate::buf::Buffer::take();
    buf.extend(request.as_bytes());
    let n = buf.len();
    if conn
        .writer
        .write_front(&mut buf, n, check.timeout)
        .await
        .is_err()
    {
        return Err("write failed".into());
    }
    buf.clear();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("response timeout".into());
        }
        let done = match conn.reader.read(&mut buf, left).await {
            ReadOutcome::Data(_) => buf.spare() == 0,
            ReadOutcome::Eof => true,
            ReadOutcome::TimedOut => return Err("response timeout".into()),
            ReadOutcome::Failed(e) => return Err(format!("read: {e}")),
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(buf.data()) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if !done => continue,
            _ => return Err("invalid response".into()),
        };
        let status = resp.code.unwrap_or(0);
        if !expect_status.iter().any(|r| r.contains(&status)) {
            return Err(format!("status {status}"));
        }
        match body_contains {
            None => return Ok(()),
            Some(needle) => {
                let body = &buf.data()[head_len..];
                if body
                    .windows(needle.len().max(1))
                    .any(|w| w == needle.as_bytes())
                {
                    return Ok(());
                }
                if done {
                    return Err(format!("body lacks {needle:?}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks run once per `interval` (README: `interval`, active checks once
    /// per process): the first at a random point of the first interval, later
    /// ones at interval +- 10 %, spread rather than lined up.
    #[test]
    fn check_times_are_jittered_around_the_interval() {
        let interval = Duration::from_millis(100);
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let firsts: Vec<Duration> = (0..1000)
            .map(|_| jitter(interval, &mut seed, true))
            .collect();
        assert!(
            firsts.iter().all(|&d| d < interval),
            "a first check later than one interval: {:?}",
            firsts.iter().max()
        );
        assert!(firsts.iter().any(|&d| d < interval / 10));
        assert!(firsts.iter().any(|&d| d > interval * 9 / 10));
        let later: Vec<Duration> = (0..1000)
            .map(|_| jitter(interval, &mut seed, false))
            .collect();
        let (lo, hi) = (interval * 9 / 10, interval * 11 / 10);
        let outside: Vec<&Duration> = later.iter().filter(|&&d| d < lo || d > hi).collect();
        assert!(
            outside.is_empty(),
            "{} of 1000 outside +-10 %, e.g. {:?}",
            outside.len(),
            outside.first()
        );
        let mean = later.iter().sum::<Duration>() / later.len() as u32;
        assert!(
            mean > interval * 98 / 100 && mean < interval * 102 / 100,
            "one check per interval on average: {mean:?}"
        );
        let distinct: std::collections::BTreeSet<Duration> = later.iter().copied().collect();
        assert!(distinct.len() > 500, "spread: {}", distinct.len());
    }
}
