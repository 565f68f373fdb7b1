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
//! `Connection: close`. An id is never given to a second listener (the
//! first one's connections may still be open under it); the table has room
//! for twice the listeners at start and 16 more, and a reload that needs
//! more goes through a fresh process.

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

/// What `plan` makes: the table, the listeners it opens, and the ids used.
pub struct Plan {
    pub table: Vec<Option<Listener>>,
    pub opened: Vec<Opened>,
    pub used: usize,
}

/// The listener table for `new` after `current`'s: listeners whose address
/// stays keep their id (and socket), new ones get an id never used before
/// (connections of a removed listener may still be open, and must not find
/// another listener's routes under their id) and sockets bound now. Err
/// (nothing bound is kept): a fresh process is needed (a new access log
/// file, every id used), or a new listener cannot listen.
pub fn plan(current: &Roster, new: &Config, targets: &[Target]) -> Result<Plan, NotInPlace> {
    let cells = current.listeners.len();
    let mut table: Vec<Option<Listener>> = vec![None; cells];
    let mut fresh = Vec::new();
    for l in &new.listeners {
        let log = log_of(l, targets)?;
        // Each listener of `current` is kept once (two `:0` listeners are two).
        let kept = (0..cells).find(|&id| {
            table[id].is_none()
                && current.listeners[id]
                    .as_ref()
                    .is_some_and(|c| c.config.addr == l.addr)
        });
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
    let mut used = current.listeners_used;
    let mut opened = Vec::new();
    for (l, log) in fresh {
        if used >= cells {
            return Err(NotInPlace::Fresh(format!(
                "every one of the {cells} listener ids of this process has been used"
            )));
        }
        let id = used;
        used += 1;
        let (sockets, bound) = super::listener::bind_all(l.addr, new.workers)
            .map_err(|e| NotInPlace::Refused(bind_error(current, &table, l, e)))?;
        table[id] = Some(Listener {
            config: l.clone(),
            bound,
            log,
        });
        opened.push(Opened { id, bound, sockets });
    }
    Ok(Plan {
        table,
        opened,
        used,
    })
}

/// Why `l` could not listen; with a hint when a listener this reload
/// removes holds its port (it closes only once the reload is in force).
fn bind_error(
    current: &Roster,
    table: &[Option<Listener>],
    l: &ListenerConfig,
    e: std::io::Error,
) -> String {
    let closing = current
        .listeners
        .iter()
        .zip(table)
        .find_map(|(c, n)| match (c, n) {
            (Some(c), None) if c.bound.port() == l.addr.port() => Some(c.bound),
            _ => None,
        });
    match closing {
        Some(old) => format!(
            "{e}: {old}, which this reload removes, still holds the port; \
             reload once without it, then once with {}",
            l.addr
        ),
        None => e.to_string(),
    }
}
