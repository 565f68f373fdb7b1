//! Upstream pools as a worker sees them: the servers, how one is chosen, and the
//! idle connections kept to each. All of it is per worker (no locks, no atomics).

pub mod balance;
pub mod pool;

use crate::config::UpstreamConfig;
use balance::{Balancer, RoundRobin};
use std::net::SocketAddr;
use std::time::Duration;

/// One upstream as seen by one worker.
pub struct Upstream {
    pub name: String,
    pub servers: Vec<Server>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    balancer: RoundRobin,
}

pub struct Server {
    pub addr: SocketAddr,
    /// Index into the worker's connection pool.
    pub pool_slot: usize,
}

impl Upstream {
    /// Builds the worker-local view; `next_slot` hands out pool slots.
    pub fn new(cfg: &UpstreamConfig, next_slot: &mut usize) -> Upstream {
        let servers = cfg
            .servers
            .iter()
            .map(|&addr| {
                let s = Server {
                    addr,
                    pool_slot: *next_slot,
                };
                *next_slot += 1;
                s
            })
            .collect();
        Upstream {
            name: cfg.name.clone(),
            servers,
            connect_timeout: cfg.connect_timeout,
            response_timeout: cfg.response_timeout,
            balancer: RoundRobin::default(),
        }
    }

    /// Chooses the server for the next request.
    pub fn pick(&self) -> Option<&Server> {
        self.balancer
            .pick(self.servers.len())
            .map(|i| &self.servers[i])
    }
}
