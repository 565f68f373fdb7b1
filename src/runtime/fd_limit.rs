//! The open-file limit and the client connection cap derived from it.
//!
//! At start ringlb raises its soft `RLIMIT_NOFILE` to the hard limit (as
//! nginx's `worker_rlimit_nofile` and HAProxy do), then caps client
//! connections so that each can hold an upstream connection too: without
//! `[limits] max_connections`, the cap is half of what the limit leaves
//! after ringlb's own descriptors (listeners, rings, logs, health checks).

use crate::config::Config;

/// Raises the soft open-file limit to the hard one; returns the soft limit
/// now in force.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on this process with a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// Descriptors ringlb needs besides client and upstream connections.
pub fn reserved(config: &Config) -> u64 {
    let listeners = (config.listeners.len() * config.workers) as u64;
    let servers: u64 = config
        .upstreams
        .iter()
        .map(|u| u.servers.len() as u64)
        .sum();
    // stdio, rings and their epoll/eventfd, idle watches, admin, log files.
    let fixed = 32 + 4 * config.workers as u64 + config.listeners.len() as u64;
    listeners + servers + fixed
}

/// The process-wide client connection cap: configured, or derived from the
/// open-file limit `nofile`. At least one per worker.
pub fn max_connections(config: &Config, nofile: u64) -> (u32, &'static str) {
    match config.limits.max_connections {
        Some(n) => (n, "max_connections"),
        None => {
            let usable = nofile.saturating_sub(reserved(config)) / 2;
            let n = usable.clamp(config.workers as u64, u64::from(u32::MAX)) as u32;
            (n, "derived from the open-file limit")
        }
    }
}

/// Whether `cap` client connections (each with an upstream one) fit `nofile`.
pub fn fits(config: &Config, cap: u32, nofile: u64) -> bool {
    2 * u64::from(cap) + reserved(config) <= nofile
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!(
            "workers = 2\n{extra}\n[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"a\"\n\
             [[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:9\", \"127.0.0.1:10\"]\n"
        );
        Config::parse(&text, "t.toml").unwrap()
    }

    #[test]
    fn the_cap_leaves_room_for_upstream_connections_and_ringlbs_own() {
        let c = config("");
        let (n, why) = max_connections(&c, 20_000);
        assert_eq!(why, "derived from the open-file limit");
        assert!(fits(&c, n, 20_000));
        assert!(!fits(&c, n + 1, 20_000));
        assert!(n > 9_900, "{n}");
        assert_eq!(max_connections(&c, 10).0, 2, "at least one per worker");
        let c = config("[limits]\nmax_connections = 50000\n");
        assert_eq!(max_connections(&c, 1024), (50_000, "max_connections"));
        assert!(!fits(&c, 50_000, 1024));
    }
}
