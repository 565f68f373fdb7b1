//! DNS re-resolution: servers given as `HOST:PORT` with a host name are
//! resolved again every `resolve_interval`, in a thread of their own (the
//! system resolver blocks). A name stands for every address it resolves to;
//! addresses that appear join their pool and addresses that vanish leave it,
//! in place, as in a reload (`reload::publish_servers`): servers that stay
//! keep their connections, health and ejections. A failed or empty answer
//! keeps the last good addresses and is logged. The system resolver
//! (getaddrinfo) gives no TTL, so the interval is the refresh period; keep it
//! at or below the records' TTL.

use super::reload;
use super::Shutdown;
use crate::config::{resolve, Config, ServerConfig, UpstreamConfig};
use crate::upstream::roster::Roster;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Starts the resolver thread unless `resolve_interval` is zero (it idles
/// while no server is given by name: a reload may add one).
pub fn start(config: &Config, shutdown: Arc<Shutdown>) {
    let interval = config.resolve_interval;
    if interval.is_zero() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("ringlb-resolve".into())
        .spawn(move || {
            let mut failing = HashSet::new();
            while sleep(interval, &shutdown) {
                let Some(base) = reload::in_force() else {
                    continue;
                };
                // Resolve without holding anything (the resolver blocks);
                // then decide against what is in force by then.
                let answers = lookup(&base.upstreams);
                if answers.is_empty() {
                    continue;
                }
                let published = reload::refresh_servers(|base, current| {
                    resolved(&base.upstreams, current, &answers, &mut failing)
                });
                match published {
                    None => {}
                    Some(Ok(p)) => crate::info!(
                        "dns: server set {}: {} server(s) added, {} removed",
                        p.roster.number,
                        p.added.len(),
                        p.removed
                    ),
                    Some(Err(e)) => crate::warn!("dns: the new addresses are not in force: {e}"),
                }
            }
        });
    if let Err(e) = spawned {
        crate::warn!(
            "dns: cannot start the resolver thread ({e}); names stay as resolved at start"
        );
    }
}

/// What each server name in `upstreams` resolves to now.
fn lookup(upstreams: &[UpstreamConfig]) -> HashMap<Arc<str>, Result<Vec<SocketAddr>, String>> {
    let mut answers = HashMap::new();
    for s in upstreams.iter().flat_map(|u| &u.servers) {
        if let Some(name) = &s.name {
            if !answers.contains_key(name) {
                answers.insert(name.clone(), resolve(name));
            }
        }
    }
    answers
}

/// Sleeps `d` in short steps; false when a shutdown was requested.
fn sleep(d: Duration, shutdown: &Shutdown) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if shutdown.is_requested() {
            return false;
        }
        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(100)));
    }
    !shutdown.is_requested()
}

/// `base`'s upstreams with every named server resolved again (None when no
/// address changed). A name that fails keeps its addresses from `current`
/// (logged once per failing stretch in `failing`).
fn resolved(
    base: &[UpstreamConfig],
    current: &Roster,
    answers: &HashMap<Arc<str>, Result<Vec<SocketAddr>, String>>,
    failing: &mut HashSet<Arc<str>>,
) -> Option<Vec<UpstreamConfig>> {
    let mut next = base.to_vec();
    for (ui, up) in next.iter_mut().enumerate() {
        let mut servers: Vec<ServerConfig> = Vec::with_capacity(up.servers.len());
        let mut done: HashSet<(Arc<str>, u32)> = HashSet::new();
        for s in &up.servers {
            let Some(name) = &s.name else {
                servers.push(s.clone());
                continue;
            };
            if !done.insert((name.clone(), s.weight)) {
                continue; // one entry expanded to several addresses
            }
            // A name a reload added since the lookup: as the reload resolved it.
            let Some(answer) = answers.get(name) else {
                let as_loaded = up.servers.iter().filter(|b| b.name.as_ref() == Some(name));
                servers.extend(as_loaded.cloned());
                continue;
            };
            let addrs = match answer {
                Ok(addrs) => {
                    if failing.remove(name) {
                        crate::info!("dns: {name} resolves again");
                    }
                    addrs.clone()
                }
                Err(why) => {
                    if failing.insert(name.clone()) {
                        crate::warn!("dns: {why}; upstream {} keeps its last addresses", up.name);
                    }
                    last_good(current, ui, name)
                }
            };
            for addr in addrs {
                let server = ServerConfig {
                    addr,
                    name: Some(name.clone()),
                    weight: s.weight,
                };
                if !servers.contains(&server) {
                    servers.push(server);
                }
            }
        }
        up.servers = servers;
    }
    let same = next
        .iter()
        .zip(&current.upstreams)
        .all(|(n, c)| n.servers == c.servers);
    (!same).then_some(next)
}

/// The addresses `name` had in upstream `up` of `current`.
fn last_good(current: &Roster, up: usize, name: &Arc<str>) -> Vec<std::net::SocketAddr> {
    current.upstreams[up]
        .servers
        .iter()
        .filter(|s| s.name.as_ref() == Some(name))
        .map(|s| s.addr)
        .collect()
}
