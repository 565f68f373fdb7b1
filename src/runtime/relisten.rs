//! Listeners that open and close with an in-place reload.
//!
//! A listener is known by an id, its place in the roster's listener table,
//! kept while its address stays in the configuration (its metrics cells,
//! routes and accept loops are found by it). A reload binds the listeners
//! that are new (one SO_REUSEPORT socket per worker, with the same
//! exclusivity probe as at start) before it publishes the roster, and leaves
//! each worker's socket in `Rosters`' mailbox; each worker starts accepting
//! on them when it takes the roster. A listener the roster no longer has
//! stops accepting in every worker: what is already queued on its sockets is
//! still answered, its connections finish their requests with
//! `Connection: close`. The table has room for twice the listeners at start
//! and 16 more; a reload that needs more goes through a fresh process.

use super::reload::NotInPlace;
use crate::access_log::writer::Target;
use crate::access_log::Format;
use crate::config::{Config, ListenerConfig};
use crate::metrics::layout::ListenerSpec;
use crate::upstream::roster::{Listener, Roster};
use std::net::SocketAddr;

/// Room in the listener table for a config with `n` listeners.
pub fn capacity(n: usize) -> usize {
    2 * n + 16
}

/// A listener's access log: the index of its file among the writer's
/// `targets`, and the format. Err when the file is not one of them (a new
/// file needs a writer started for it: a fresh process).
pub fn log_of(
    l: &ListenerConfig,
    targets: &[Target],
) -> Result<Option<(usize, Format)>, NotInPlace> {
    let Some(a) = &l.access_log else {
        return Ok(None);
    };
    match targets.iter().position(|t| *t == a.target) {
        Some(file) => Ok(Some((file, a.format))),
        None => Err(NotInPlace::Fresh(format!(
            "listener {}: a new access log file",
            l.addr
        ))),
    }
}

/// The first table: the config's listeners at ids 0.. in order, bound to
/// `bound`, logging to `logs`.
pub fn first_table(
    config: &Config,
    bound: &[SocketAddr],
    logs: &[Option<(usize, Format)>],
) -> Vec<Option<Listener>> {
    let mut table: Vec<Option<Listener>> = config
        .listeners
        .iter()
        .zip(bound)
        .zip(logs)
        .map(|((l, &bound), &log)| {
            Some(Listener {
                config: l.clone(),
                bound,
                log,
            })
        })
        .collect();
    table.resize(capacity(config.listeners.len()), None);
    table
}

/// The metrics labels of every id of `table` (None where no listener is).
pub fn specs(config: &Config, table: &[Option<Listener>]) -> Vec<Option<ListenerSpec>> {
    table
        .iter()
        .map(|l| {
            l.as_ref()
                .map(|l| config.listener_spec(&l.config, l.bound.to_string()))
        })
        .collect()
}

/// A listener a reload opens: its id, its bound address and one socket per
/// worker.
pub struct Opened {
    pub id: usize,
    pub bound: SocketAddr,
    pub sockets: Vec<std::net::TcpListener>,
}

/// The listener table for `new` after `current`'s: listeners whose address
/// stays keep their id (and socket), new ones get a free id and sockets
/// bound now. Err (nothing bound is kept): a fresh process is needed (a new
/// access log file, the table is full), or a new listener cannot listen.
pub fn plan(
    current: &Roster,
    new: &Config,
    targets: &[Target],
) -> Result<(Vec<Option<Listener>>, Vec<Opened>), NotInPlace> {
    let cells = current.listeners.len();
    let mut table: Vec<Option<Listener>> = vec![None; cells];
    let mut fresh = Vec::new();
    for l in &new.listeners {
        let log = log_of(l, targets)?;
        let kept = current
            .listeners
            .iter()
            .position(|c| c.as_ref().is_some_and(|c| c.config.addr == l.addr));
        match kept {
            Some(id) => {
                let bound = current.listeners[id].as_ref().map_or(l.addr, |c| c.bound);
                table[id] = Some(Listener {
                    config: l.clone(),
                    bound,
                    log,
                });
            }
            None => fresh.push((l, log)),
        }
    }
    // New listeners take ids no listener of `current` holds (its sockets
    // may still be closing in a worker).
    let free: Vec<usize> = (0..cells)
        .filter(|&id| current.listeners[id].is_none() && table[id].is_none())
        .collect();
    let mut free = free.into_iter();
    let mut opened = Vec::new();
    for (l, log) in fresh {
        let id = free
            .next()
            .ok_or_else(|| NotInPlace::Fresh(format!("more than {cells} listeners at once")))?;
        let (sockets, bound) = super::listener::bind_all(l.addr, new.workers)
            .map_err(|e| NotInPlace::Refused(e.to_string()))?;
        table[id] = Some(Listener {
            config: l.clone(),
            bound,
            log,
        });
        opened.push(Opened { id, bound, sockets });
    }
    Ok((table, opened))
}
