//! A worker's side of `upstream::roster`: when a new roster is published, the
//! worker builds its view of every upstream for it, carrying over what stays
//! (idle connections, latency estimates, ejections, admission), its routes
//! and access log sinks per listener, installs new caps, and says which
//! listeners to open and close. All of it takes effect between requests:
//! requests already running finish on what they started with; the next one
//! starts on the new roster.

use crate::config::LimitsConfig;
use crate::proxy::route::ListenerRoutes;
use crate::proxy::{conn_limit, WorkerCtx};
use crate::upstream::admission::share;
use crate::upstream::health::Health;
use crate::upstream::roster::{Roster, Rosters};
use crate::upstream::Upstream;
use std::sync::Arc;

/// The roster a worker serves with, and what it needs to take the next.
pub struct Follower {
    worker: usize,
    workers: usize,
    health: Arc<Health>,
    rosters: Arc<Rosters>,
    /// The roster in force (None before the first).
    number: Option<u64>,
    /// Per listener id: whether this worker accepts on it.
    accepting: Vec<bool>,
    /// The caps in force (installed at start).
    limits: Option<(LimitsConfig, u32)>,
}

/// Installs worker `worker`'s share of the connection and memory caps.
pub fn install_limits(
    (limits, max_connections): (LimitsConfig, u32),
    (worker, workers): (usize, usize),
) {
    let cap = share(Some(max_connections), workers, worker);
    conn_limit::install(
        cap.unwrap_or(1),
        limits.max_connections_per_ip,
        limits.pause_at_cap,
    );
    let memory = share(limits.max_memory_mb, workers, worker);
    crate::buf::set_cap(memory.map_or(usize::MAX, |mb| mb as usize * (1 << 20)));
}

/// What a new roster asks of a worker's accept loops.
pub enum Relisten {
    /// Start accepting on listener `id` with this socket.
    Open(usize, std::net::TcpListener),
    /// Stop accepting on listener `id`.
    Close(usize),
}

impl Follower {
    /// `accepting`: the listener ids this worker has sockets for at start.
    pub fn new(
        (worker, workers): (usize, usize),
        accepting: Vec<bool>,
        health: Arc<Health>,
        rosters: Arc<Rosters>,
    ) -> Self {
        Follower {
            worker,
            workers,
            health,
            rosters,
            number: None,
            accepting,
            limits: None,
        }
    }

    /// Takes the current roster if it is not the one in force (called at
    /// start and on every housekeeping tick, off the request path); returns
    /// the listeners to open and close.
    pub fn take(&mut self, ctx: &WorkerCtx) -> Vec<Relisten> {
        if self.number == Some(self.rosters.number()) {
            return Vec::new();
        }
        let roster = self.rosters.current();
        self.take_upstreams(ctx, &roster);
        ctx.client.set(roster.client);
        if self.limits.is_some_and(|l| l != roster.limits) {
            install_limits(roster.limits, (self.worker, self.workers));
        }
        self.limits = Some(roster.limits);
        *ctx.layout.borrow_mut() = roster.layout.clone();
        let changes = self.take_listeners(ctx, &roster);
        if self.number.is_some() {
            crate::info!(
                "worker {}: serving server set {} ({} servers)",
                self.worker,
                roster.number,
                roster.members.iter().map(Vec::len).sum::<usize>()
            );
        }
        self.number = Some(roster.number);
        self.rosters.applied(self.worker, roster.number);
        changes
    }

    /// New views of the upstreams, carrying over what stays.
    fn take_upstreams(&self, ctx: &WorkerCtx, roster: &Roster) {
        let before = ctx.upstreams();
        let mut pool = ctx.pool.borrow_mut();
        let mut names = ctx.server_names.borrow_mut();
        let fresh = roster
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, cfg)| {
                let members = &roster.members[i];
                for (s, &m) in cfg.servers.iter().zip(members) {
                    pool.assign(m, cfg.max_idle, cfg.idle_timeout);
                    names[m.id] = s.addr.to_string().into();
                }
                Upstream::new(
                    cfg,
                    i,
                    self.health.clone(),
                    (self.worker, self.workers),
                    members,
                    before.get(i),
                )
            })
            .collect();
        for (i, old) in before.iter().enumerate() {
            let stays = |m| roster.has(i, m);
            for s in old.servers.iter().filter(|s| !stays(s.member)) {
                pool.release(s.member);
            }
            old.retire(stays);
        }
        drop((pool, names));
        ctx.replace_upstreams(fresh);
    }

    /// New routes and access logs per listener; which listeners open and
    /// close. A closed listener keeps its routes for its connections' last
    /// requests.
    fn take_listeners(&mut self, ctx: &WorkerCtx, roster: &Roster) -> Vec<Relisten> {
        let mut routes = ctx.routes.borrow_mut();
        let mut logs = ctx.log_sinks.borrow_mut();
        routes.resize_with(roster.listeners.len(), ListenerRoutes::none);
        logs.resize(roster.listeners.len(), None);
        self.accepting.resize(roster.listeners.len(), false);
        let mut changes = Vec::new();
        for (id, l) in roster.listeners.iter().enumerate() {
            match l {
                Some(l) => {
                    routes[id] = ListenerRoutes::new(&l.config, l.bound);
                    logs[id] = l.log;
                    if !self.accepting[id] {
                        match self.rosters.collect(self.worker, id) {
                            Some(socket) => changes.push(Relisten::Open(id, socket)),
                            None => crate::warn!(
                                "worker {}: no socket for listener {}",
                                self.worker,
                                l.bound
                            ),
                        }
                        self.accepting[id] = true;
                    }
                }
                None => {
                    routes[id].open = false;
                    if self.accepting[id] {
                        changes.push(Relisten::Close(id));
                        self.accepting[id] = false;
                    }
                }
            }
        }
        changes
    }
}
