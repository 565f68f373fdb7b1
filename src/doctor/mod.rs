//! `ringlb doctor --config FILE`: compares what a config needs from the host
//! (descriptors, ephemeral ports, accept backlog, io_uring) with what the
//! host gives (`/proc/sys`, rlimits, a probe ring), and says how to fix each
//! gap. `assess` is pure (a config and a `Host` in, rows out) so that every
//! rule is unit-tested; `host` reads the machine; `render` prints.

pub mod host;
mod render;

pub use host::Host;
pub use render::{json, text};

use crate::config::{Config, IoMode};
use crate::runtime::fd_limit;

/// The accept backlog ringlb asks for on every listening socket.
pub use crate::runtime::listener::BACKLOG;

/// How a row's setting stands against the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Works, but the recommended value would serve an edge host better.
    Advice,
    /// The config cannot get what it asks for.
    Limits,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Advice => "advice",
            Verdict::Limits => "LIMITS",
        }
    }
}

/// One setting: its value now, what the config needs, why, and the fix.
#[derive(Debug, Clone)]
pub struct Row {
    pub setting: &'static str,
    pub now: String,
    pub needed: String,
    pub verdict: Verdict,
    pub why: String,
    /// A command that fixes it (empty when nothing needs fixing).
    pub fix: String,
}

/// What the config needs, derived once for every rule.
#[derive(Debug, Clone, Copy)]
pub struct Needs {
    /// Client connections, process-wide.
    pub clients: u64,
    /// Whether `clients` was configured (else derived from the descriptor limit).
    pub clients_configured: bool,
    /// Upstream connections at most open at once (in use plus pooled idle).
    pub upstream: u64,
    /// The most upstream connections to one server (ephemeral ports per
    /// destination).
    pub per_server: u64,
    /// Descriptors: clients, upstream connections, ringlb's own.
    pub descriptors: u64,
}

impl Needs {
    pub fn of(config: &Config, host: &Host) -> Needs {
        let (clients, source) = fd_limit::max_connections(config, host.nofile_hard);
        let clients = u64::from(clients);
        let workers = config.workers as u64;
        let mut in_use = 0u64;
        let mut idle = 0u64;
        let mut per_server = 0u64;
        for u in &config.upstreams {
            let servers = u.servers.len().max(1) as u64;
            let pool = u
                .admission
                .max_in_flight
                .map_or(clients, |n| u64::from(n).min(clients));
            let one = u
                .admission
                .max_in_flight_per_server
                .map_or(pool, |n| u64::from(n).min(pool));
            let pooled = workers * u.max_idle as u64;
            in_use += pool;
            idle += servers * pooled;
            // If the other servers are down, one takes the pool's whole load.
            per_server = per_server.max(one + pooled);
        }
        let upstream = in_use.min(clients) + idle;
        Needs {
            clients,
            clients_configured: source == "max_connections",
            upstream,
            per_server,
            descriptors: clients + upstream + fd_limit::reserved(config),
        }
    }
}

/// Every rule, in the order printed.
pub fn assess(config: &Config, host: &Host) -> Vec<Row> {
    let needs = Needs::of(config, host);
    vec![
        nofile(&needs, host),
        nr_open(&needs, host),
        file_max(&needs, host),
        ports(&needs, host),
        tw_reuse(&needs, host),
        somaxconn(host),
        syn_backlog(host),
        io_uring(config, host),
        memlock(config, host),
    ]
}

/// Whether any row limits the config (the exit status).
pub fn limits_anything(rows: &[Row]) -> bool {
    rows.iter().any(|r| r.verdict == Verdict::Limits)
}

fn at_least(now: u64, needed: u64) -> Verdict {
    if now >= needed {
        Verdict::Ok
    } else {
        Verdict::Limits
    }
}

fn nofile(needs: &Needs, host: &Host) -> Row {
    let needed = needs.descriptors;
    let (verdict, why) = if needs.clients_configured {
        (
            at_least(host.nofile_hard, needed),
            format!(
                "{} client + {} upstream connections + ringlb's own; ringlb raises its soft \
                 limit to this hard limit at start",
                needs.clients, needs.upstream
            ),
        )
    } else {
        // The cap follows the limit: nothing fails, but a low limit is a low cap.
        let verdict = if needs.clients < 10_000 {
            Verdict::Advice
        } else {
            Verdict::Ok
        };
        (
            verdict,
            format!(
                "max_connections is not set: derived from this limit as {} client connections",
                needs.clients
            ),
        )
    };
    let target = needed.max(1_048_576);
    Row {
        setting: "RLIMIT_NOFILE (hard)",
        now: host.nofile_hard.to_string(),
        needed: needed.to_string(),
        verdict,
        why,
        fix: fix_if(
            verdict,
            format!("LimitNOFILE={target} in the unit (or: ulimit -Hn {target})"),
        ),
    }
}

fn nr_open(needs: &Needs, host: &Host) -> Row {
    let fix = format!("sysctl -w fs.nr_open={}", needs.descriptors);
    let why = "the most RLIMIT_NOFILE can be raised to";
    descriptor_sysctl(("fs.nr_open", host.nr_open), needs, why, fix)
}

fn file_max(needs: &Needs, host: &Host) -> Row {
    let fix = "sysctl -w fs.file-max=2097152".to_string();
    let why = "open files for the whole host";
    descriptor_sysctl(("fs.file-max", host.file_max), needs, why, fix)
}

/// A host-wide descriptor limit (`setting`, its value now) against the
/// descriptors the config needs.
fn descriptor_sysctl(
    (setting, now): (&'static str, u64),
    needs: &Needs,
    why: &str,
    fix: String,
) -> Row {
    let verdict = at_least(now, needs.descriptors);
    Row {
        setting,
        now: now.to_string(),
        needed: needs.descriptors.to_string(),
        verdict,
        why: why.into(),
        fix: fix_if(verdict, fix),
    }
}

fn ports(needs: &Needs, host: &Host) -> Row {
    let (lo, hi) = host.port_range;
    let span = u64::from(hi.saturating_sub(lo)) + 1;
    let verdict = at_least(span, needs.per_server);
    Row {
        setting: "net.ipv4.ip_local_port_range",
        now: format!("{lo} {hi} ({span} ports)"),
        needed: format!("{} ports", needs.per_server),
        verdict,
        why: "one ephemeral port per upstream connection to the same server \
              (in use + pooled idle, all load on one server)"
            .into(),
        fix: fix_if(
            verdict,
            "sysctl -w net.ipv4.ip_local_port_range=\"1024 65000\"".into(),
        ),
    }
}

fn tw_reuse(needs: &Needs, host: &Host) -> Row {
    // 1: reuse TIME_WAIT ports for outgoing connections; 2 (the default):
    // loopback only.
    let verdict = if host.tw_reuse == 1 || needs.upstream == 0 {
        Verdict::Ok
    } else {
        Verdict::Advice
    };
    Row {
        setting: "net.ipv4.tcp_tw_reuse",
        now: host.tw_reuse.to_string(),
        needed: "1".into(),
        verdict,
        why: "upstream connections ringlb closes wait in TIME_WAIT on their port for 60 s; \
              1 lets new upstream connections reuse them"
            .into(),
        fix: fix_if(verdict, "sysctl -w net.ipv4.tcp_tw_reuse=1".into()),
    }
}

fn somaxconn(host: &Host) -> Row {
    let needed = BACKLOG as u64;
    let verdict = at_least(host.somaxconn, needed);
    Row {
        setting: "net.core.somaxconn",
        now: host.somaxconn.to_string(),
        needed: needed.to_string(),
        verdict,
        why: "ringlb listens with this backlog per worker socket; the kernel caps it here \
              and drops connections past it in an accept storm"
            .into(),
        fix: fix_if(verdict, "sysctl -w net.core.somaxconn=8192".into()),
    }
}

fn syn_backlog(host: &Host) -> Row {
    let needed = BACKLOG as u64;
    let verdict = if host.syn_backlog >= needed {
        Verdict::Ok
    } else {
        Verdict::Advice
    };
    Row {
        setting: "net.ipv4.tcp_max_syn_backlog",
        now: host.syn_backlog.to_string(),
        needed: needed.to_string(),
        verdict,
        why: "half-open connections held during a SYN burst (SYN cookies take over past it)".into(),
        fix: fix_if(
            verdict,
            "sysctl -w net.ipv4.tcp_max_syn_backlog=8192".into(),
        ),
    }
}

fn io_uring(config: &Config, host: &Host) -> Row {
    let usable = host.io_uring_probe.is_ok();
    let verdict = match (usable, config.io) {
        (true, _) | (false, IoMode::Epoll) => Verdict::Ok,
        (false, IoMode::Auto) => Verdict::Advice,
        (false, IoMode::Uring) => Verdict::Limits,
    };
    let now = match (&host.io_uring_disabled, &host.io_uring_probe) {
        (Some(d), Ok(())) => format!("io_uring_disabled={d}, probe ring ok"),
        (None, Ok(())) => "probe ring ok".into(),
        (Some(d), Err(e)) => format!("io_uring_disabled={d}, probe ring failed: {e}"),
        (None, Err(e)) => format!("probe ring failed: {e}"),
    };
    let why = match config.io {
        IoMode::Epoll => "the config asks for epoll (io = \"epoll\")",
        IoMode::Auto => "io = \"auto\" falls back to epoll without it",
        IoMode::Uring => "io = \"uring\" does not start without it",
    };
    Row {
        setting: "io_uring",
        now,
        needed: match config.io {
            IoMode::Epoll => "-".into(),
            _ => format!(
                "{} rings of {} entries",
                config.workers, config.ring_entries
            ),
        },
        verdict,
        why: why.into(),
        fix: fix_if(
            verdict,
            "sysctl -w kernel.io_uring_disabled=0 (and allow io_uring_setup in seccomp)".into(),
        ),
    }
}

fn memlock(config: &Config, host: &Host) -> Row {
    // Since Linux 5.12 rings are charged to the memory cgroup, not to
    // RLIMIT_MEMLOCK.
    let charged = host.kernel < (5, 12);
    let needed = if charged && config.io != IoMode::Epoll {
        config.workers as u64 * ring_bytes(config.ring_entries)
    } else {
        0
    };
    let verdict = at_least(host.memlock, needed);
    Row {
        setting: "RLIMIT_MEMLOCK",
        now: host.memlock_text(),
        needed: if charged {
            needed.to_string()
        } else {
            "- (Linux >= 5.12)".into()
        },
        verdict,
        why: if charged {
            "io_uring rings are locked memory on this kernel".into()
        } else {
            format!(
                "Linux {}.{} charges rings to the memory cgroup",
                host.kernel.0, host.kernel.1
            )
        },
        fix: fix_if(verdict, "LimitMEMLOCK=infinity in the unit".into()),
    }
}

/// Locked memory of one ring: submission entries, completion entries (twice
/// as many) and the ring headers, rounded to pages.
fn ring_bytes(entries: u32) -> u64 {
    let e = u64::from(entries);
    let bytes = e * 64 + 2 * e * 16 + e * 4 + 2 * 4096;
    bytes.div_ceil(4096) * 4096
}

fn fix_if(verdict: Verdict, fix: String) -> String {
    if verdict == Verdict::Ok {
        String::new()
    } else {
        fix
    }
}

#[cfg(test)]
mod tests;
