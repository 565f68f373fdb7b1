//! The part of the configuration that changes while ringlb serves (a
//! reload in place, a DNS answer), as a value, under handles that stay
//! stable.
//!
//! How the configuration splits (see also `runtime::reload`):
//! - the roster is a value: every upstream's servers and settings (upstream
//!   names and order fixed), the listeners and their routes with the
//!   metrics layout that labels them, the client timeouts and limits, and
//!   the connection and memory caps.
//!   `Rosters::publish` makes the next one, and each worker takes it at its
//!   next housekeeping tick, between requests (`runtime::swap`). A request
//!   in flight finishes on what it started with (it holds an `Rc` of the
//!   worker's upstream list and of its route), so nothing is cut off;
//! - the rest (workers, the admin port, the access log files, upstream
//!   names) shapes threads and per-upstream cells, and is
//!   fixed for the life of a process; changing it hands the sockets to a
//!   fresh process.
//!
//! A server is known by a `Member`: its `id`, a small index that is the same
//! in every worker (its pool slot, its metrics cells, its shared health), and
//! a `tag`, new each time an id is given to a server. A server that stays in
//! its upstream across a change keeps its member, and with it its idle
//! connections, its health and its ejection state; a new server gets a free
//! id and a fresh tag. Listeners (`runtime::relisten`) and route slots
//! (`metrics::layout`) are handles the same way. Ids are handed out up to a
//! capacity fixed at start (the cells are allocated once); a reload that
//! needs more goes through a fresh process.
//!
//! `publish` waits for every worker to take the previous roster first, so a
//! worker never skips one and an id freed by one roster is reused only once
//! no worker lends it to a server that left.

use crate::config::{ClientSettings, LimitsConfig, ListenerConfig, UpstreamConfig};
use crate::metrics::Layout;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A server's stable handle: `id` indexes per-server state everywhere, `tag`
/// tells two servers that held the same id apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub id: usize,
    pub tag: u64,
}

/// One published server set, with the client settings that go with it
/// (the other part of the configuration an in-place reload changes).
pub struct Roster {
    /// Counts publications (the first roster is 0).
    pub number: u64,
    /// Every upstream as configured, with its servers' addresses as resolved.
    pub upstreams: Vec<UpstreamConfig>,
    /// Per upstream, per server (in `upstreams[u].servers` order).
    pub members: Vec<Vec<Member>>,
    /// Client timeouts and limits.
    pub client: ClientSettings,
    /// Connection and memory caps, and `max_connections` as derived.
    pub limits: (LimitsConfig, u32),
    /// The listeners by id (see `Listener`): None for an id no listener
    /// holds.
    pub listeners: Vec<Option<Listener>>,
    /// Listener ids below this have been used (an id is never used twice).
    pub listeners_used: usize,
    /// The metrics labels of the listeners, routes and upstreams.
    pub layout: Arc<Layout>,
}

/// A listener as a roster has it. Its id (its place in the roster's table)
/// is kept as long as its address stays in the configuration.
#[derive(Clone)]
pub struct Listener {
    pub config: ListenerConfig,
    /// The address it is bound to (the port chosen for port 0).
    pub bound: SocketAddr,
    /// Its access log: the writer's file index and the format.
    pub log: Option<(usize, crate::access_log::Format)>,
}

/// What a roster carries besides its members: the part of the configuration
/// an in-place reload changes.
pub struct Settings {
    pub upstreams: Vec<UpstreamConfig>,
    pub client: ClientSettings,
    pub limits: (LimitsConfig, u32),
    pub listeners: Vec<Option<Listener>>,
    pub listeners_used: usize,
    pub layout: Arc<Layout>,
}

impl Roster {
    fn of(number: u64, members: Vec<Vec<Member>>, settings: Settings) -> Roster {
        let Settings {
            upstreams,
            client,
            limits,
            listeners,
            listeners_used,
            layout,
        } = settings;
        Roster {
            number,
            upstreams,
            members,
            client,
            limits,
            listeners,
            listeners_used,
            layout,
        }
    }

    /// This roster's settings with other upstreams (a DNS change).
    pub fn with_upstreams(&self, upstreams: Vec<UpstreamConfig>) -> Settings {
        Settings {
            upstreams,
            client: self.client,
            limits: self.limits,
            listeners: self.listeners.clone(),
            listeners_used: self.listeners_used,
            layout: self.layout.clone(),
        }
    }
}

impl Roster {
    /// Whether upstream `up` has `member` in this roster.
    pub fn has(&self, up: usize, member: Member) -> bool {
        self.members.get(up).is_some_and(|m| m.contains(&member))
    }

    /// The server behind `member` in upstream `up`.
    pub fn server_addr(&self, up: usize, member: Member) -> Option<SocketAddr> {
        let i = self.members.get(up)?.iter().position(|&m| m == member)?;
        Some(self.upstreams[up].servers[i].addr)
    }
}

/// The current roster, and the workers' progress through the rosters.
pub struct Rosters {
    current: Mutex<Arc<Roster>>,
    /// `current`'s number, for a lock-free "has it changed?" per tick.
    number: AtomicU64,
    /// Per worker: the roster it serves with.
    applied: Vec<AtomicU64>,
    /// Serializes `publish` (a reload and a DNS refresh may race).
    publishing: Mutex<Allocator>,
    capacity: usize,
    /// Sockets of listeners a reload opened, until their worker takes them:
    /// (worker, listener id, socket).
    sockets: Mutex<Vec<Delivered>>,
}

/// Hands out ids and tags.
#[derive(Clone, Copy)]
struct Allocator {
    /// Ids below this have been used.
    high_water: usize,
    next_tag: u64,
}

/// A server new in a roster: its upstream's index and its member.
pub type Joined = (usize, Member);

/// The members a roster would have (see `Rosters::plan`).
struct Plan {
    members: Vec<Vec<Member>>,
    added: Vec<Joined>,
    removed: usize,
    alloc: Allocator,
}

/// A listening socket left for a worker: (worker, listener id, socket, its
/// bound address).
type Delivered = (usize, usize, std::net::TcpListener, SocketAddr);

/// A roster `publish` made: the roster and the members new in it.
pub struct Published {
    pub roster: Arc<Roster>,
    pub added: Vec<Joined>,
    pub removed: usize,
}

impl Rosters {
    /// The first roster: servers numbered in config order. `capacity`: most
    /// servers at once over the life of the process.
    pub fn new(settings: Settings, workers: usize, capacity: usize) -> Arc<Rosters> {
        let mut id = 0;
        let members = settings
            .upstreams
            .iter()
            .map(|u| {
                u.servers
                    .iter()
                    .map(|_| {
                        id += 1;
                        Member {
                            id: id - 1,
                            tag: id as u64,
                        }
                    })
                    .collect()
            })
            .collect();
        Arc::new(Rosters {
            current: Mutex::new(Arc::new(Roster::of(0, members, settings))),
            number: AtomicU64::new(0),
            applied: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            publishing: Mutex::new(Allocator {
                high_water: id,
                next_tag: id as u64 + 1,
            }),
            capacity: capacity.max(id),
            sockets: Mutex::new(Vec::new()),
        })
    }

    /// Leaves `socket` for worker `worker`'s listener `id` (before the
    /// roster that opens it is published).
    pub fn deliver(
        &self,
        worker: usize,
        id: usize,
        socket: std::net::TcpListener,
        bound: SocketAddr,
    ) {
        let mut sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        sockets.push((worker, id, socket, bound));
    }

    /// Worker `worker`'s socket for listener `id`, if one was delivered.
    pub fn collect(&self, worker: usize, id: usize) -> Option<std::net::TcpListener> {
        let mut sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        let i = sockets
            .iter()
            .position(|(w, l, ..)| *w == worker && *l == id)?;
        Some(sockets.swap_remove(i).2)
    }

    /// Drops (closes) every socket delivered for listener `id` and not
    /// taken; returns its bound address if there was one.
    pub fn withdraw(&self, id: usize) -> Option<SocketAddr> {
        let mut sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        let bound = sockets.iter().find(|(_, l, ..)| *l == id).map(|d| d.3);
        sockets.retain(|(_, l, ..)| *l != id);
        bound
    }

    /// The capacity for a config: room for every server twice over and some,
    /// so servers can come and go (a reload, DNS) without a fresh process.
    pub fn capacity_for(upstreams: &[UpstreamConfig]) -> usize {
        let n: usize = upstreams.iter().map(|u| u.servers.len()).sum();
        (2 * n + 64).min(u16::MAX as usize)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The current roster's number (cheap: for a per-tick check).
    pub fn number(&self) -> u64 {
        self.number.load(Ordering::Acquire)
    }

    pub fn current(&self) -> Arc<Roster> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Worker `worker` now serves with roster `number`.
    pub fn applied(&self, worker: usize, number: u64) {
        if let Some(a) = self.applied.get(worker) {
            a.store(number, Ordering::Release);
        }
    }

    /// Waits until every worker serves with roster `number` or a later one.
    pub fn wait_applied(&self, number: u64, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self
                .applied
                .iter()
                .all(|a| a.load(Ordering::Acquire) >= number)
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether `upstreams` would fit the capacity if published now.
    pub fn fits(&self, upstreams: &[UpstreamConfig]) -> Result<(), String> {
        let alloc = *self.publishing.lock().unwrap_or_else(|p| p.into_inner());
        self.plan(alloc, &self.current(), upstreams).map(|_| ())
    }

    /// The members of `upstreams` after `old`: servers still present keep
    /// theirs, new ones get ids from `alloc` (returned as it is after).
    fn plan(
        &self,
        mut alloc: Allocator,
        old: &Roster,
        upstreams: &[UpstreamConfig],
    ) -> Result<Plan, String> {
        // Per upstream: the old members by address, to match the new servers.
        let mut members = Vec::with_capacity(upstreams.len());
        let mut kept = vec![false; self.capacity];
        let mut fresh = Vec::new();
        for (ui, u) in upstreams.iter().enumerate() {
            let mut old_by_addr: Vec<(SocketAddr, Member)> = old.upstreams[ui]
                .servers
                .iter()
                .zip(&old.members[ui])
                .map(|(s, &m)| (s.addr, m))
                .collect();
            let mut mine = Vec::with_capacity(u.servers.len());
            for (si, s) in u.servers.iter().enumerate() {
                match old_by_addr.iter().position(|(a, _)| *a == s.addr) {
                    Some(i) => {
                        let m = old_by_addr.swap_remove(i).1;
                        kept[m.id] = true;
                        mine.push(m);
                    }
                    None => {
                        fresh.push((ui, si));
                        mine.push(Member { id: 0, tag: 0 });
                    }
                }
            }
            members.push(mine);
        }
        let removed = old.members.iter().flatten().filter(|m| !kept[m.id]).count();
        // Fresh ids first (never used), then ids no server holds any more.
        let old_ids: Vec<bool> = {
            let mut v = vec![false; self.capacity];
            for m in old.members.iter().flatten() {
                v[m.id] = true;
            }
            v
        };
        let mut reusable = (0..alloc.high_water).filter(|&id| !old_ids[id]);
        let mut added = Vec::with_capacity(fresh.len());
        for (ui, si) in fresh {
            let id = if alloc.high_water < self.capacity {
                alloc.high_water += 1;
                alloc.high_water - 1
            } else {
                // Not an id the old roster holds: a worker still serving it
                // would settle that server's shared state after it was reset.
                match reusable.next() {
                    Some(id) => id,
                    None => {
                        return Err(format!(
                            "more than {} servers at once (the capacity fixed at start)",
                            self.capacity
                        ))
                    }
                }
            };
            let m = Member {
                id,
                tag: alloc.next_tag,
            };
            alloc.next_tag += 1;
            members[ui][si] = m;
            added.push((ui, m));
        }
        Ok(Plan {
            members,
            added,
            removed,
            alloc,
        })
    }

    /// Publishes `upstreams` (same names in the same order as now) as the
    /// next roster: servers still present keep their members; `joining`
    /// sees the new members (per upstream) before any worker can. Refused
    /// when the workers have not taken the current roster within `within`,
    /// or when the new servers do not fit the capacity.
    pub fn publish(
        &self,
        settings: Settings,
        within: Duration,
        joining: &dyn Fn(&[Joined]),
    ) -> Result<Published, String> {
        let mut alloc = self.publishing.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current();
        let names = |u: &[UpstreamConfig]| u.iter().map(|u| u.name.clone()).collect::<Vec<_>>();
        if names(&old.upstreams) != names(&settings.upstreams) {
            return Err("the upstreams' names or order changed".into());
        }
        if !self.wait_applied(old.number, within) {
            return Err("a worker has not taken the previous server set yet".into());
        }
        let Plan {
            members,
            added,
            removed,
            alloc: next,
        } = self.plan(*alloc, &old, &settings.upstreams)?;
        *alloc = next;
        joining(&added);
        let roster = Arc::new(Roster::of(old.number + 1, members, settings));
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = roster.clone();
        self.number.store(roster.number, Ordering::Release);
        Ok(Published {
            roster,
            added,
            removed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(name: &str, addrs: &[&str]) -> UpstreamConfig {
        let text = format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{name}\"\n\
             [[upstream]]\nname = \"{name}\"\nservers = [{}]\n",
            addrs
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        crate::config::Config::parse(&text, "t.toml")
            .expect("test config")
            .upstreams
            .remove(0)
    }

    const NOW: Duration = Duration::from_millis(100);
    /// Publishes one upstream `name` with `addrs`.
    fn publish(r: &Rosters, name: &str, addrs: &[&str]) -> Result<Published, String> {
        r.publish(settings(vec![upstream(name, addrs)]), NOW, &|_| {})
    }

    fn settings(upstreams: Vec<UpstreamConfig>) -> Settings {
        Settings {
            upstreams,
            client: ClientSettings::DEFAULT,
            limits: Default::default(),
            listeners: Vec::new(),
            listeners_used: 0,
            layout: Arc::new(Layout::new(Vec::new(), Vec::new(), (1, 8))),
        }
    }

    #[test]
    fn servers_that_stay_keep_their_member_and_new_ones_get_fresh_ids() {
        let r = Rosters::new(
            settings(vec![upstream("a", &["127.0.0.1:1", "127.0.0.1:2"])]),
            1,
            8,
        );
        let first = r.current();
        r.applied(0, 0);
        let p = publish(&r, "a", &["127.0.0.1:2", "127.0.0.1:3"]).unwrap();
        assert_eq!(p.roster.number, 1);
        assert_eq!(p.roster.members[0][0], first.members[0][1], "kept");
        assert_eq!(p.added.len(), 1);
        assert_eq!(p.removed, 1);
        let new = p.roster.members[0][1];
        assert_eq!(new.id, 2, "a never-used id before a freed one");
        assert!(new.tag > first.members[0][1].tag);
    }

    #[test]
    fn a_worker_that_lags_blocks_the_next_roster() {
        let r = Rosters::new(settings(vec![upstream("a", &["127.0.0.1:1"])]), 2, 8);
        r.applied(0, 0);
        r.applied(1, 0);
        publish(&r, "a", &["127.0.0.1:2"]).unwrap();
        r.applied(0, 1);
        let e = publish(&r, "a", &["127.0.0.1:3"])
            .err()
            .expect("worker 1 still serves roster 0");
        assert!(e.contains("not taken"), "{e}");
        r.applied(1, 1);
        assert!(publish(&r, "a", &["127.0.0.1:3"]).is_ok());
    }

    #[test]
    fn ids_are_reused_with_a_new_tag_only_at_capacity() {
        let r = Rosters::new(settings(vec![upstream("a", &["127.0.0.1:1"])]), 1, 2);
        let mut seen = vec![r.current().members[0][0]];
        for (n, port) in (2..6).enumerate() {
            r.applied(0, n as u64);
            let addr = format!("127.0.0.1:{port}");
            let p = publish(&r, "a", &[&addr]).unwrap();
            let m = p.roster.members[0][0];
            assert!(m.id < 2, "within capacity: {m:?}");
            assert!(seen.iter().all(|s| s.tag != m.tag), "a tag is never reused");
            seen.push(m);
        }
        r.applied(0, 4);
        let three: Vec<String> = (7..10).map(|p| format!("127.0.0.1:{p}")).collect();
        let three: Vec<&str> = three.iter().map(String::as_str).collect();
        let e = publish(&r, "a", &three)
            .err()
            .expect("three servers do not fit two ids");
        assert!(e.contains("capacity"), "{e}");
    }

    #[test]
    fn renamed_upstreams_are_refused() {
        let r = Rosters::new(settings(vec![upstream("a", &["127.0.0.1:1"])]), 1, 8);
        assert!(publish(&r, "b", &["127.0.0.1:1"]).is_err());
    }
}
