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
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Starts the resolver thread if `config` names any server and re-resolves.
pub fn start(
    config: &Config,
    rosters: Arc<crate::upstream::roster::Rosters>,
    shutdown: Arc<Shutdown>,
) {
    let named = config
        .upstreams
        .iter()
        .any(|u| u.servers.iter().any(|s| s.name.is_some()));
    if !named || config.resolve_interval.is_zero() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("ringlb-resolve".into())
        .spawn(move || {
            let mut failing = HashSet::new();
            loop {
                // The interval in force (a reload by handover may change it).
                let Some(base) = reload::in_force() else {
                    return;
                };
                let interval = base.resolve_interval;
                if interval.is_zero() || !sleep(interval, &shutdown) {
                    return;
                }
                let current = rosters.current();
                let Some(next) = resolved(&base.upstreams, &current, &mut failing) else {
                    continue;
                };
                match reload::publish_servers(next) {
                    Ok(p) => crate::info!(
                        "dns: server set {}: {} server(s) added, {} removed",
                        p.roster.number,
                        p.added.len(),
                        p.removed
                    ),
                    Err(e) => crate::warn!("dns: the new addresses are not in force: {e}"),
                }
            }
        });
    if let Err(e) = spawned {
        crate::warn!(
            "dns: cannot start the resolver thread ({e}); names stay as resolved at start"
        );
    }
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
            let addrs = match resolve(name) {
                Ok(addrs) => {
                    if failing.remove(name) {
                        crate::info!("dns: {name} resolves again");
                    }
                    addrs
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
