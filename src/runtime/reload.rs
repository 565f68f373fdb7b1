//! Configuration reload: SIGHUP or `ringlb reload --config FILE` validates
//! the file first (a bad one changes nothing, and the reason is logged and
//! returned to the command), then puts it in force one of two ways:
//!
//! - **in place**, when the new file differs from the one in force only in
//!   its upstreams' servers and settings, its listeners (see `relisten`) and
//!   its client settings (the roster, see `upstream::roster`): the new
//!   roster is published and every worker takes it between requests. Servers that stay keep their idle
//!   connections, health and ejections; new ones join with a health check
//!   (and slow start where set); removed ones get no new request once the
//!   reload has answered.
//! - **by handover** for anything else (workers, the admin port, a new
//!   access log file, upstream names):
//!   this binary is started on the new file with `--upgrade` and takes the
//!   listening sockets over `upgrade_socket` (`handover`), so listeners that
//!   remain never stop accepting, new ones open and removed ones close; this
//!   process then finishes its in-flight requests on the old configuration
//!   and exits. Pooled connections, health and counters start afresh there.

use super::relisten::{self, Opened};
use crate::config::{Config, UpstreamConfig};
use crate::upstream::health::Health;
use crate::upstream::roster::{Published, Roster, Rosters, Settings};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The config file this process runs, and the socket it offers its
/// listeners on (where a successor must take them from), if any.
static RUNNING: OnceLock<(PathBuf, Option<PathBuf>)> = OnceLock::new();

/// What an in-place reload changes: the configuration in force and the
/// published server sets.
struct Live {
    config: Mutex<Arc<Config>>,
    rosters: Arc<Rosters>,
    health: Arc<Health>,
    sockets: Sockets,
    /// Held by whatever decides the next roster (a reload, a DNS refresh),
    /// from reading the configuration in force to publishing: neither
    /// publishes a set derived from what the other just replaced.
    changing: Mutex<()>,
}

static LIVE: OnceLock<Live> = OnceLock::new();

/// What an in-place reload needs to open and close listeners: the access
/// log files the writer has, and the sockets on offer to a successor.
pub struct Sockets {
    pub log_targets: Vec<crate::access_log::writer::Target>,
    pub offered: super::handover::Offered,
}

/// The workers serve `config` (`runtime::start`): in-place reloads start
/// from it.
pub fn serving(
    config: Arc<Config>,
    (rosters, health): (Arc<Rosters>, Arc<Health>),
    sockets: Sockets,
) {
    let _ = LIVE.set(Live {
        config: Mutex::new(config),
        rosters,
        health,
        sockets,
        changing: Mutex::new(()),
    });
}

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
static LOADED: Mutex<String> = Mutex::new(String::new());

/// How the configuration in force came to be.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// This process started on it (by hand, or as a reload's successor).
    Start,
    /// An in-place reload.
    InPlace,
}

/// Records the configuration this process runs (`source`: its file, or a
/// name for the built-in demo) for `/status`: the generation (reloads and
/// upgrades since a start by hand), how it was loaded, the file, a hash of
/// its bytes (FNV-1a, to tell two versions apart) and the load time.
pub fn loaded(source: &str, text: &[u8], how: How) {
    let hash = text.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let file = source.replace('\\', "\\\\").replace('"', "\\\"");
    let (generation, how) = match how {
        How::Start => (generation(), "start"),
        How::InPlace => (
            IN_PLACE.fetch_add(1, Ordering::AcqRel) + 1 + generation(),
            "in_place",
        ),
    };
    IN_FORCE.0.store(generation, Ordering::Release);
    IN_FORCE.1.store(at, Ordering::Release);
    let mut status = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    *status = format!(
        "{{\"generation\":{generation},\"loaded\":\"{how}\",\"file\":\"{file}\",\"hash\":\"{hash:016x}\",\"loaded_at_unix\":{at}}}"
    );
}

/// The generation in force and when it was loaded (Unix seconds).
static IN_FORCE: (AtomicU64, AtomicU64) = (AtomicU64::new(0), AtomicU64::new(0));

/// For `/metrics`: the generation in force and its load time (Unix seconds).
pub fn in_force_metrics() -> (u64, u64) {
    (
        IN_FORCE.0.load(Ordering::Acquire),
        IN_FORCE.1.load(Ordering::Acquire),
    )
}

/// The successor a reload by handover started and that has not taken over
/// or exited yet (0: none).
static SUCCESSOR: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// In-place reloads this process made.
static IN_PLACE: AtomicU64 = AtomicU64::new(0);

/// The `/status` `config` object (`{}` before `loaded`).
pub fn status_json() -> String {
    let status = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if status.is_empty() {
        "{}".into()
    } else {
        status.clone()
    }
}

/// Records what SIGHUP reloads: this config file, and the socket it offers
/// its listeners on (needed for a reload by handover).
pub fn remember(config: PathBuf, socket: Option<PathBuf>) {
    let _ = RUNNING.set((config, socket));
}

/// Where a reload reports back (the `ringlb reload` command's connection).
pub type Reporter = Arc<Mutex<Option<UnixStream>>>;

/// SIGHUP: reloads the config file this process was started with.
pub fn on_sighup() {
    let Some((config, _)) = RUNNING.get() else {
        crate::warn!(
            "SIGHUP received: this ringlb runs the built-in demo, which has no file to reload; \
             still serving"
        );
        return;
    };
    crate::info!("SIGHUP received: reloading {}", config.display());
    if let Err(e) = reload(config, None) {
        crate::warn!("reload refused: {e}; still serving with the current configuration");
    }
}

/// How a reload went on.
pub enum Reloaded {
    /// In force already (in place); what changed.
    InPlace(String),
    /// A successor with this pid is taking over.
    Successor(u32),
}

/// Validates `file` and puts it in force: in place when it can be, else by
/// starting a successor (`report`, if any, hears `ERROR ...` should the
/// successor exit before it takes over).
pub fn reload(file: &Path, report: Option<Reporter>) -> Result<Reloaded, String> {
    let text = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let parsed = Config::parse(&String::from_utf8_lossy(&text), &file.display().to_string())
        .map_err(|e| e.to_string())?;
    let live = LIVE.get().ok_or("this ringlb is still starting")?;
    let _changing = live.changing.lock().unwrap_or_else(|p| p.into_inner());
    // One handover at a time, and none from a process that handed over
    // (it only drains; the next reload is the successor's to make).
    if let Some(pid) = super::handover::handed_over() {
        return Err(format!(
            "this process handed its sockets to pid {pid} and is draining; reload that one"
        ));
    }
    let pending = SUCCESSOR.load(Ordering::Acquire);
    if pending != 0 {
        return Err(format!(
            "a reload by handover to pid {pending} is in progress"
        ));
    }
    let current = live
        .config
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let in_place = match needs_fresh_process(&current, &parsed) {
        None => in_place_settings(live, &parsed),
        Some(why) => Err(NotInPlace::Fresh(why)),
    };
    match in_place {
        Ok(settings) => {
            let summary = reload_in_place(live, parsed, settings)?;
            loaded(&file.display().to_string(), &text, How::InPlace);
            Ok(Reloaded::InPlace(summary))
        }
        Err(NotInPlace::Refused(why)) => Err(why),
        Err(NotInPlace::Fresh(why)) => {
            crate::info!("reload: {why}: handing over to a fresh process");
            start_successor(file, &parsed, report).map(Reloaded::Successor)
        }
    }
}

/// Why `new` cannot be put in force in place (None: it can): it changes
/// more than the upstreams' servers and settings, the listeners' routes and
/// the client settings.
pub fn needs_fresh_process(current: &Config, new: &Config) -> Option<String> {
    let names = |c: &Config| {
        c.upstreams
            .iter()
            .map(|u| u.name.clone())
            .collect::<Vec<_>>()
    };
    if names(current) != names(new) {
        return Some("the upstreams' names or order changed".into());
    }
    let checks = |c: &Config| c.upstreams.iter().any(|u| u.health_check.is_some());
    if current.admin.is_none() && !checks(current) && checks(new) {
        return Some("active checks are new (their thread starts with the process)".into());
    }
    // Everything but what a roster carries (upstreams, listeners, client
    // settings), compared as written out.
    let rest = |c: &Config| {
        let mut c = c.clone();
        c.upstreams.clear();
        c.listeners.clear();
        c.client = Default::default();
        c.limits = Default::default();
        c.log_level = crate::log::Level::Info;
        c.log_json = false;
        format!("{c:?}")
    };
    (rest(current) != rest(new)).then(|| {
        "more than the upstreams, listeners and client settings changed (limits, workers, \
         the admin port, ...)"
            .into()
    })
}

/// Why a file is not put in force in place.
pub enum NotInPlace {
    /// It needs a fresh process (a handover).
    Fresh(String),
    /// It cannot be put in force at all (a new listener cannot listen).
    Refused(String),
}

/// What the workers take for `new` in place, with its metrics layout, and
/// the listeners it opens (bound already); Err when its servers, routes or
/// listeners do not fit the cells fixed at start, it names a new access log
/// file, or a new listener cannot listen.
fn in_place_settings(live: &Live, new: &Config) -> Result<(Settings, Vec<Opened>), NotInPlace> {
    live.rosters
        .fits(&new.upstreams)
        .map_err(NotInPlace::Fresh)?;
    let current = live.rosters.current();
    let relisten::Plan {
        table,
        opened,
        used: listeners_used,
    } = relisten::plan(&current, new, &live.sockets.log_targets)?;
    let offered = live.sockets.offered.lock().map_or(0, |o| o.len());
    let new_sockets: usize = opened.iter().map(|o| o.sockets.len()).sum();
    if new.upgrade_socket.is_some() && offered + new_sockets > super::handover::MAX_FDS {
        return Err(NotInPlace::Refused(format!(
            "more than {} sockets to offer a successor",
            super::handover::MAX_FDS
        )));
    }
    let layout = current
        .layout
        .next(relisten::specs(new, &table), new.upstream_specs())
        .map_err(NotInPlace::Fresh)?;
    let settings = Settings {
        upstreams: new.upstreams.clone(),
        client: new.client,
        limits: (new.limits, super::connection_cap(new)),
        listeners: table,
        listeners_used,
        layout: Arc::new(layout),
    };
    Ok((settings, opened))
}

/// Publishes `settings` (for `new`), with the listeners it opens, and waits
/// until every worker serves them.
fn reload_in_place(
    live: &Live,
    new: Config,
    (settings, opened): (Settings, Vec<Opened>),
) -> Result<String, String> {
    super::notify::notify("RELOADING=1\nSTATUS=reloading in place");
    let before = live.rosters.current();
    let closing: Vec<SocketAddr> = before
        .listeners
        .iter()
        .zip(&settings.listeners)
        .filter_map(|(b, n)| match (b, n) {
            (Some(b), None) => Some(b.bound),
            _ => None,
        })
        .collect();
    let opened_ids: Vec<usize> = opened.iter().map(|o| o.id).collect();
    offer_and_deliver(live, opened);
    let outcome = publish(live, settings).map(|p| {
        crate::log::configure(new.log_level, new.log_json);
        withdraw_offers(live, &closing);
        for (id, l) in p.roster.listeners.iter().enumerate() {
            if let (Some(l), true) = (l, opened_ids.contains(&id)) {
                crate::info!("listening on {}", l.bound);
            }
        }
        for addr in &closing {
            crate::info!("no longer listening on {addr}");
        }
        *live.config.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        let summary = format!(
            "in place: server set {}, {} server(s) added, {} removed",
            p.roster.number,
            p.added.len(),
            p.removed
        );
        crate::info!("reload {summary}");
        summary
    });
    if outcome.is_err() {
        // Nothing changed: the new listeners close again.
        let bound: Vec<SocketAddr> = opened_ids
            .iter()
            .filter_map(|&id| live.rosters.withdraw(id))
            .collect();
        withdraw_offers(live, &bound);
    }
    super::notify::notify("READY=1\nSTATUS=serving");
    outcome
}

/// Leaves each worker its socket of every listener in `opened`, and offers
/// copies to a successor.
fn offer_and_deliver(live: &Live, opened: Vec<Opened>) {
    let mut offered = live
        .sockets
        .offered
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    for o in opened {
        // Never two sets of sockets offered for one address.
        offered.retain(|h| !(h.role == super::handover::Role::Listener && h.addr == o.bound));
        for (worker, socket) in o.sockets.into_iter().enumerate() {
            match socket.try_clone() {
                Ok(copy) => offered.push(super::handover::Handed {
                    role: super::handover::Role::Listener,
                    addr: o.bound,
                    fd: copy.into(),
                }),
                Err(e) => crate::warn!("listener {}: not offered to a successor: {e}", o.bound),
            }
            live.rosters.deliver(worker, o.id, socket, o.bound);
        }
    }
}

/// Stops offering the sockets of the listeners bound to `bound`.
fn withdraw_offers(live: &Live, bound: &[SocketAddr]) {
    let mut offered = live
        .sockets
        .offered
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    offered.retain(|h| !(h.role == super::handover::Role::Listener && bound.contains(&h.addr)));
}

/// The configuration in force, as loaded (servers given by name as they
/// resolved then), once the workers serve.
pub fn in_force() -> Option<Arc<Config>> {
    let live = LIVE.get()?;
    Some(
        live.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
    )
}

/// A DNS refresh: `next` sees the configuration in force (as loaded) and
/// the roster in force, and returns the upstreams to put in force in place
/// (None: nothing changed). New servers join the shared health (checked
/// first where their pool has checks), then every worker takes them.
/// Returns once all do (None when nothing was published).
pub fn refresh_servers(
    next: impl FnOnce(&Config, &Roster) -> Option<Vec<UpstreamConfig>>,
) -> Option<Result<Published, String>> {
    let live = LIVE.get()?;
    let _changing = live.changing.lock().unwrap_or_else(|p| p.into_inner());
    let base = live
        .config
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let current = live.rosters.current();
    let upstreams = next(&base, &current)?;
    Some(publish(live, current.with_upstreams(upstreams)))
}

fn publish(live: &Live, settings: Settings) -> Result<Published, String> {
    let health = &live.health;
    let checked: Vec<bool> = settings
        .upstreams
        .iter()
        .map(|u| u.health_check.is_some())
        .collect();
    let p = live.rosters.publish(settings, WORKER_WAIT, &|added| {
        for &(up, m) in added {
            health.joined(up, m, checked[up]);
        }
    })?;
    // Servers of a pool whose checks were removed: nothing would ever bring
    // a server they held down back up.
    for (ui, u) in p.roster.upstreams.iter().enumerate() {
        if u.health_check.is_none() {
            for m in &p.roster.members[ui] {
                health.unchecked(ui, m.id);
            }
        }
    }
    if !live.rosters.wait_applied(p.roster.number, WORKER_WAIT) {
        return Err("a worker did not take the new server set in time".into());
    }
    Ok(p)
}

/// How long a reload waits for every worker (they look every 50 ms).
const WORKER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts a successor on `config` (validated as `parsed`); `report`, if any,
/// hears `ERROR ...` should the successor exit before it takes over.
fn start_successor(
    config: &Path,
    parsed: &Config,
    report: Option<Reporter>,
) -> Result<u32, String> {
    let Some((_, Some(socket))) = RUNNING.get() else {
        return Err(
            "this change needs a fresh process, which takes the sockets over upgrade_socket: \
             set upgrade_socket (and restart once)"
                .into(),
        );
    };
    if parsed.upgrade_socket.is_none() {
        return Err(format!(
            "{}: the new configuration must set upgrade_socket too",
            config.display()
        ));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    super::notify::notify("RELOADING=1\nSTATUS=reloading");
    let mut command = Command::new(exe);
    command
        .arg("--config")
        .arg(config)
        .arg("--upgrade")
        .env(
            "RINGLB_GENERATION",
            (generation() + IN_PLACE.load(Ordering::Acquire) + 1).to_string(),
        )
        .env("RINGLB_UPGRADE_FROM", socket)
        .stdin(Stdio::null());
    inherit_only_stdio(&mut command);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start the successor: {e}"))?;
    let pid = child.id();
    SUCCESSOR.store(pid, Ordering::Release);
    crate::info!(
        "reload: started pid {pid} with {}; it takes the listening sockets over",
        config.display()
    );
    // Reaps it if it fails before taking over (and says so).
    std::thread::Builder::new()
        .name("ringlb-reload".into())
        .spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = SUCCESSOR.compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Acquire);
                if super::handover::handed_to(pid) {
                    // It took over, served, and was replaced in turn (while
                    // this process still drained).
                    return;
                }
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

/// The successor inherits standard input, output and error only. Sockets
/// accepted through io_uring carry no close-on-exec flag: without this, the
/// successor would hold a copy of every client and upstream connection open
/// at the reload, and a client whose connection the old process closed
/// would wait on it (its peer still open) until the successor exits. The
/// listening sockets reach it over `upgrade_socket` instead.
fn inherit_only_stdio(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: runs in the forked child before exec, and only makes the
    // close_range(2) system call (async-signal-safe: no allocation, no
    // locks). It closes descriptors 3 and up of the child alone; std's own
    // exec-error pipe among them, which only means a failed exec is seen as
    // the child's exit instead.
    unsafe {
        command.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
}
