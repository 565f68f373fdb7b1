//! A worker's side of `upstream::roster`: when a new roster is published, the
//! worker builds its view of every upstream for it, carrying over what stays
//! (idle connections, latency estimates, ejections), and puts it in force
//! between requests: requests already running finish on the view they
//! started with; the next one starts on the new view.

use crate::proxy::route::ListenerRoutes;
use crate::proxy::WorkerCtx;
use crate::upstream::health::Health;
use crate::upstream::roster::Rosters;
use crate::upstream::Upstream;
use std::net::SocketAddr;
use std::sync::Arc;

/// The roster a worker serves with, and what it needs to take the next.
pub struct Roster {
    worker: usize,
    workers: usize,
    /// Each listener's bound address (for its routes' authority).
    bound: Arc<Vec<SocketAddr>>,
    health: Arc<Health>,
    rosters: Arc<Rosters>,
    /// The roster in force (None before the first).
    number: Option<u64>,
}

impl Roster {
    pub fn new(
        (worker, workers): (usize, usize),
        bound: Arc<Vec<SocketAddr>>,
        health: Arc<Health>,
        rosters: Arc<Rosters>,
    ) -> Self {
        Roster {
            worker,
            workers,
            bound,
            health,
            rosters,
            number: None,
        }
    }

    /// Takes the current roster if it is not the one in force (called at
    /// start and on every housekeeping tick, off the request path).
    pub fn take(&mut self, ctx: &WorkerCtx) {
        if self.number == Some(self.rosters.number()) {
            return;
        }
        let roster = self.rosters.current();
        let before = ctx.upstreams();
        let upstreams: Vec<Upstream> = {
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
            fresh
        };
        ctx.replace_upstreams(upstreams);
        ctx.client.set(roster.client);
        *ctx.routes.borrow_mut() = roster
            .listeners
            .iter()
            .zip(self.bound.iter())
            .map(|(l, &b)| ListenerRoutes::new(l, b))
            .collect();
        *ctx.layout.borrow_mut() = roster.layout.clone();
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
    }
}
