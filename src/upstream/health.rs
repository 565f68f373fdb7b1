//! Health shared by all workers, and the active checker that maintains it.
//!
//! Active checks run once per process, in one thread with its own small event
//! loop: one task per server (HTTP or TCP), with jitter so checks do not line
//! up, `rise` successes to come up and `fall` failures to go down. Results are
//! published through atomics that workers read on every pick: no lock on the
//! request path. Workers publish passive ejections here too (on change only),
//! for the admin view.

use super::roster::{Member, Rosters};
use crate::config::{HealthCheck, HealthCheckKind};
use crate::io::{self, ReadOutcome};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One server's shared health, at its member id (see `roster`).
pub struct SharedServer {
    /// The member tag of the server that holds this id (see `roster`).
    tag: AtomicU64,
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
    /// Bumped whenever a server's active health changes.
    generation: AtomicU64,
}

/// Appends fields to an object of the admin view (see `Health::to_json`).
pub type Extra<'a> = &'a dyn Fn(usize, &mut String);

/// Health of every server, shared read-mostly by the workers: indexed by
/// member id, for as many servers as the roster's capacity.
pub struct Health {
    pub upstreams: Vec<SharedUpstream>,
    servers: Vec<SharedServer>,
    epoch: Instant,
}

impl SharedServer {
    /// Whether the server with member tag `tag` holds this id.
    pub fn holds(&self, tag: u64) -> bool {
        self.tag.load(Ordering::Acquire) == tag
    }

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
    /// Every server starts up (optimistic: traffic flows at once, checks
    /// correct it); `capacity` servers, by member id.
    pub fn new(config: &crate::config::Config, capacity: usize) -> Arc<Health> {
        Arc::new(Health {
            epoch: Instant::now(),
            upstreams: config
                .upstreams
                .iter()
                .map(|u| SharedUpstream {
                    name: u.name.clone(),
                    generation: AtomicU64::new(0),
                })
                .collect(),
            servers: (0..capacity)
                .map(|_| SharedServer {
                    tag: AtomicU64::new(0),
                    healthy: AtomicBool::new(true),
                    up_since_ms: AtomicU64::new(0),
                    ejected_by: AtomicU32::new(0),
                    last_check_ok: AtomicBool::new(true),
                    checks: AtomicU64::new(0),
                })
                .collect(),
        })
    }

    /// The servers of the first roster hold their ids (at start).
    pub fn claim(&self, member: Member) {
        self.servers[member.id]
            .tag
            .store(member.tag, Ordering::Release);
    }

    /// The health of the server with member id `id`.
    #[inline]
    pub fn server(&self, id: usize) -> &SharedServer {
        &self.servers[id]
    }

    /// A server that joins a running pool (`member` new in a roster): down
    /// until its first check passes when the upstream has active checks,
    /// else up at once. Either way it comes up now (slow start ramps from
    /// here). Called before the roster that holds it is published.
    pub fn joined(&self, up: usize, member: Member, checked: bool) {
        let s = &self.servers[member.id];
        s.tag.store(member.tag, Ordering::Release);
        s.healthy.store(!checked, Ordering::Relaxed);
        s.last_check_ok.store(!checked, Ordering::Relaxed);
        s.checks.store(0, Ordering::Relaxed);
        s.ejected_by.store(0, Ordering::Relaxed);
        let ms = Instant::now().duration_since(self.epoch).as_millis() as u64;
        s.up_since_ms.store(ms, Ordering::Relaxed);
        self.upstreams[up].generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// A server whose upstream has no active checks (any more): up.
    pub fn unchecked(&self, up: usize, id: usize) {
        let s = &self.servers[id];
        if !s.healthy.swap(true, Ordering::AcqRel) {
            let ms = Instant::now().duration_since(self.epoch).as_millis() as u64;
            s.up_since_ms.store(ms, Ordering::Relaxed);
            self.upstreams[up].generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn set(&self, up: usize, id: usize, addr: SocketAddr, healthy: bool, reason: &str) {
        let u = &self.upstreams[up];
        let s = &self.servers[id];
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
                "health: upstream {} server {addr}: {from} -> {to} ({reason})",
                u.name,
            );
        }
    }

    /// The admin view: every pool and server of `roster` as JSON.
    /// `extra.0(ui, out)` may append fields (`,"key":value`) to upstream
    /// `ui`'s object, `extra.1(id, out)` to the server with member id `id`,
    /// and `tail` to the top-level object.
    pub fn to_json(
        &self,
        roster: &super::roster::Roster,
        extra: (Extra<'_>, Extra<'_>),
        tail: &str,
    ) -> String {
        let mut out = String::from("{\"upstreams\":[");
        for (ui, cfg) in roster.upstreams.iter().enumerate() {
            if ui > 0 {
                out.push(',');
            }
            out.push_str(&format!(
                "{{\"name\":{:?},\"balance\":{:?},\"active_checks\":{},\"servers\":[",
                cfg.name,
                cfg.balance_name,
                cfg.health_check.is_some()
            ));
            for (si, (server, m)) in cfg.servers.iter().zip(&roster.members[ui]).enumerate() {
                if si > 0 {
                    out.push(',');
                }
                let s = self.server(m.id);
                let ejected = s.ejected_by.load(Ordering::Relaxed);
                let state = if !s.is_healthy() {
                    "down"
                } else if ejected > 0 {
                    "ejected"
                } else {
                    "up"
                };
                out.push_str(&format!(
                    "{{\"addr\":\"{}\",\"weight\":{},\"state\":\"{state}\",\"healthy\":{},\"ejected_by_workers\":{ejected},\"checks\":{},\"last_check_ok\":{}",
                    server.addr,
                    server.weight,
                    s.is_healthy(),
                    s.checks.load(Ordering::Relaxed),
                    s.last_check_ok.load(Ordering::Relaxed)
                ));
                extra.1(m.id, &mut out);
                out.push('}');
            }
            out.push(']');
            extra.0(ui, &mut out);
            out.push('}');
        }
        out.push_str(&format!(
            "],\"panics\":{}{tail}}}",
            crate::contain::panics()
        ));
        out
    }
}

/// Runs the active checks of every roster until `stop` is set (call inside
/// a monoio runtime): one task per server with checks, started when the
/// server joins and ended when it leaves (or its upstream's check changes).
/// A server that joined a running pool is checked at once; the others at a
/// random point of their first interval.
pub async fn run_checks(
    health: Arc<Health>,
    rosters: Arc<Rosters>,
    stop: Arc<crate::runtime::Shutdown>,
) {
    let owners: Owners = Rc::default();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut seen = None;
    let mut tasks = 0u64;
    while !stop.is_requested() {
        if seen != Some(rosters.number()) {
            let roster = rosters.current();
            seen = Some(roster.number);
            for (ui, cfg) in roster.upstreams.iter().enumerate() {
                let Some(check) = &cfg.health_check else {
                    continue;
                };
                for (server, &m) in cfg.servers.iter().zip(&roster.members[ui]) {
                    let key = (m.id, m.tag);
                    // A task checking this server this way runs already (a
                    // task for an older way ends when it next wakes).
                    if owners.borrow().get(&key).is_some_and(|(_, c)| c == check) {
                        continue;
                    }
                    tasks += 1;
                    owners.borrow_mut().insert(key, (tasks, check.clone()));
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let task = Checked {
                        health: health.clone(),
                        rosters: rosters.clone(),
                        owners: owners.clone(),
                        number: tasks,
                        up: ui,
                        member: m,
                        addr: server.addr,
                        check: check.clone(),
                        at_once: roster.number > 0 && server_is_new(&health, m.id),
                    };
                    let stop = stop.clone();
                    monoio::spawn(async move {
                        let (owners, number) = (task.owners.clone(), task.number);
                        check_server(task, seed, stop).await;
                        let mut owners = owners.borrow_mut();
                        if owners.get(&key).is_some_and(|(n, _)| *n == number) {
                            owners.remove(&key);
                        }
                    });
                }
            }
        }
        monoio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Per server (member id and tag): the task that checks it, and how.
type Owners = Rc<RefCell<HashMap<(usize, u64), (u64, HealthCheck)>>>;

/// A server `Health::joined` reset, not yet checked.
fn server_is_new(health: &Health, id: usize) -> bool {
    health.server(id).checks.load(Ordering::Relaxed) == 0
}

/// One server's checks: who, where, and how.
struct Checked {
    health: Arc<Health>,
    rosters: Arc<Rosters>,
    owners: Owners,
    /// This task's number in `owners`.
    number: u64,
    up: usize,
    member: Member,
    addr: SocketAddr,
    check: HealthCheck,
    /// First check now rather than at a random point of the interval.
    at_once: bool,
}

impl Checked {
    /// Whether this task still checks this server: the current roster has
    /// it, checked this way, and no newer task took it over.
    fn still_wanted(&self, seen: &mut u64) -> bool {
        let mine = |owners: &HashMap<(usize, u64), (u64, HealthCheck)>| {
            let key = (self.member.id, self.member.tag);
            owners.get(&key).is_some_and(|(n, _)| *n == self.number)
        };
        if !mine(&self.owners.borrow()) {
            return false;
        }
        if self.rosters.number() == *seen {
            return self.health.server(self.member.id).holds(self.member.tag);
        }
        let roster = self.rosters.current();
        *seen = roster.number;
        roster.has(self.up, self.member)
            && roster.upstreams[self.up].health_check.as_ref() == Some(&self.check)
            && self.health.server(self.member.id).holds(self.member.tag)
    }
}

async fn check_server(task: Checked, mut seed: u64, stop: Arc<crate::runtime::Shutdown>) {
    let (up, id, addr, check) = (task.up, task.member.id, task.addr, &task.check);
    let health = &task.health;
    let (mut ok_streak, mut fail_streak) = (0u32, 0u32);
    // First check at a random point of the first interval, later ones at
    // interval +- 10 %: checks of many servers spread out.
    let mut next = if task.at_once {
        Duration::ZERO
    } else {
        jitter(check.interval, &mut seed, true)
    };
    let mut seen = task.rosters.number();
    while !stop.is_requested() {
        monoio::time::sleep(next).await;
        if !task.still_wanted(&mut seen) {
            return;
        }
        next = jitter(check.interval, &mut seed, false);
        let result = probe(addr, check).await;
        // The server may have left (and its id gone to another) meanwhile.
        if !task.still_wanted(&mut seen) {
            return;
        }
        let s = health.server(id);
        s.checks.fetch_add(1, Ordering::Relaxed);
        s.last_check_ok.store(result.is_ok(), Ordering::Relaxed);
        // A server that just joined comes up on its first passing check.
        let rise = if task.at_once && s.checks.load(Ordering::Relaxed) == 1 {
            1
        } else {
            check.rise
        };
        match result {
            Ok(()) => {
                ok_streak += 1;
                fail_streak = 0;
                if ok_streak >= rise && !s.is_healthy() {
                    health.set(
                        up,
                        id,
                        addr,
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
                        id,
                        addr,
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
