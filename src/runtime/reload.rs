//! Configuration reload, as a handover to a fresh process: SIGHUP or
//! `ringlb reload --config FILE` validates the file first (a bad one changes
//! nothing, and the reason is logged and returned to the command), then
//! starts this binary on it with `--upgrade`. The successor takes the
//! listening sockets over `upgrade_socket` (`handover`), so listeners that
//! remain never stop accepting, new ones open and removed ones close; this
//! process then stops accepting, finishes its in-flight requests on the old
//! configuration and exits.
//!
//! What this does not keep (yet): pooled upstream connections, health and
//! ejection state, and counters start afresh in the successor. Keeping them
//! needs the configuration to be a value each worker swaps at a safe point
//! (pools and health state keyed by server address rather than position),
//! which is the next step.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

/// The config file this process runs, and the socket it offers its
/// listeners on (where a successor must take them from).
static RUNNING: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();

/// This process's place in a line of reloads and upgrades (0: started by hand).
pub fn generation() -> u64 {
    std::env::var("RINGLB_GENERATION")
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

/// The socket a successor takes the sockets from: the running process's,
/// passed down by `start_successor`, else the config's own.
pub fn takeover_path(config_socket: PathBuf) -> PathBuf {
    std::env::var_os("RINGLB_UPGRADE_FROM").map_or(config_socket, PathBuf::from)
}

/// `ringlb reload`'s side: asks the ringlb offering on `socket` to reload
/// with `file`, and returns what it said (`STARTED pid`, then `DONE pid` or
/// `ERROR why`). A request queued just as the running ringlb handed over is
/// dropped with its listener; the successor answers on the same path a
/// moment later, so a request with no answer is retried for two seconds.
pub fn ask(socket: &Path, file: &Path) -> std::io::Result<String> {
    use std::io::{BufRead, BufReader};
    let absolute = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let once = || -> std::io::Result<String> {
        let mut s = UnixStream::connect(socket)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(120)))?;
        writeln!(s, "RELOAD {}", absolute.display())?;
        let mut said = Vec::new();
        for line in BufReader::new(s).lines() {
            let line = line?;
            let last = line.starts_with("DONE") || line.starts_with("ERROR");
            said.push(line);
            if last {
                break;
            }
        }
        if said.is_empty() {
            return Err(std::io::Error::other("closed without an answer"));
        }
        Ok(said.join("\n"))
    };
    let mut outcome = once();
    for _ in 0..10 {
        if outcome.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        outcome = once();
    }
    outcome
}

/// What `/status` says about the configuration in force.
static LOADED: OnceLock<String> = OnceLock::new();

/// Records the configuration this process runs (`source`: its file, or a
/// name for the built-in demo) for `/status`: the generation, the file, a
/// hash of its bytes (FNV-1a, to tell two versions apart) and the load time.
pub fn loaded(source: &str, text: &[u8]) {
    let hash = text.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let file = source.replace('\\', "\\\\").replace('"', "\\\"");
    let _ = LOADED.set(format!(
        "{{\"generation\":{},\"file\":\"{file}\",\"hash\":\"{hash:016x}\",\"loaded_at_unix\":{at}}}",
        generation()
    ));
}

/// The `/status` `config` object (`{}` before `loaded`).
pub fn status_json() -> &'static str {
    LOADED.get().map_or("{}", String::as_str)
}

/// Records what SIGHUP reloads: this config file, offered on `socket`.
pub fn remember(config: PathBuf, socket: PathBuf) {
    let _ = RUNNING.set((config, socket));
}

/// Where a reload reports back (the `ringlb reload` command's connection).
pub type Reporter = Arc<Mutex<Option<UnixStream>>>;

/// SIGHUP: reloads the config file this process was started with.
pub fn on_sighup() {
    let Some((config, _)) = RUNNING.get() else {
        crate::warn!(
            "SIGHUP received: reload needs `upgrade_socket` in the config (a reload hands the \
             listening sockets to a fresh process); still serving"
        );
        return;
    };
    crate::info!("SIGHUP received: reloading {}", config.display());
    if let Err(e) = start_successor(config, None) {
        crate::warn!("reload refused: {e}; still serving with the current configuration");
    }
}

/// Validates `config` and starts a successor on it; `report`, if any, hears
/// `ERROR ...` should the successor exit before it takes over.
pub fn start_successor(config: &Path, report: Option<Reporter>) -> Result<u32, String> {
    let Some((_, socket)) = RUNNING.get() else {
        return Err("this ringlb offers no upgrade_socket".into());
    };
    let parsed = crate::config::Config::load(config).map_err(|e| e.to_string())?;
    if parsed.upgrade_socket.is_none() {
        return Err(format!(
            "{}: the new configuration must set upgrade_socket too",
            config.display()
        ));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    super::notify::notify("RELOADING=1\nSTATUS=reloading");
    let mut child = Command::new(exe)
        .arg("--config")
        .arg(config)
        .arg("--upgrade")
        .env("RINGLB_GENERATION", (generation() + 1).to_string())
        .env("RINGLB_UPGRADE_FROM", socket)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the successor: {e}"))?;
    let pid = child.id();
    crate::info!(
        "reload: started pid {pid} with {}; it takes the listening sockets over",
        config.display()
    );
    // Reaps it if it fails before taking over (and says so).
    std::thread::Builder::new()
        .name("ringlb-reload".into())
        .spawn(move || {
            if let Ok(status) = child.wait() {
                crate::warn!(
                    "reload: pid {pid} exited ({status}) before taking over; still serving"
                );
                if let Some(r) = report {
                    if let Some(mut s) = r.lock().ok().and_then(|mut g| g.take()) {
                        let _ = writeln!(s, "ERROR the new process exited ({status}); see the log");
                    }
                }
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(pid)
}
