//! Worker threads: one per core, pinned, each with its own monoio runtime, its own
//! SO_REUSEPORT listeners, buffers and upstream connection pool. Also owns the
//! shutdown sequence: stop accepting, drain in-flight requests, exit.

mod accept;
pub mod driver;
pub mod fd_limit;
pub mod handover;
pub mod listener;
pub mod monitor;
pub mod notify;
mod relisten;
pub mod reload;
mod resolve;
pub mod signals;
mod swap;

use crate::buf::Buffer;
use crate::config::Config;
use crate::metrics::{Registry, WorkerMetrics};
use crate::proxy::{conn_limit, WorkerCtx};
use crate::upstream::health::{self, Health};
use crate::upstream::idle_watch::IdleWatch;
use crate::upstream::pool::ConnPool;
use crate::upstream::roster::{Rosters, Settings};
use monoio::net::TcpListener;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Process-wide shutdown request, polled by each worker off the request path.
#[derive(Default)]
pub struct Shutdown {
    requested: AtomicBool,
    /// The listening sockets now belong to a successor too: stop accepting
    /// without shutting them down (see `handover`).
    handed_over: AtomicBool,
}

impl Shutdown {
    pub fn request(&self) {
        self.requested.store(true, Ordering::Release);
    }

    /// A successor took the listening sockets over: drain and exit, leaving
    /// the sockets open for it.
    pub fn hand_over(&self) {
        self.handed_over.store(true, Ordering::Release);
        self.request();
    }

    pub fn handed_over(&self) -> bool {
        self.handed_over.load(Ordering::Acquire)
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }
}

thread_local! {
    static IN_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread is a ringlb worker (used by allocation-counting tests).
pub fn in_worker() -> bool {
    IN_WORKER.try_with(|w| w.get()).unwrap_or(false)
}

/// A running set of workers.
pub struct Running {
    pub bound: Vec<SocketAddr>,
    /// The admin listener's address, if one is configured.
    pub admin: Option<SocketAddr>,
    threads: Vec<std::thread::JoinHandle<()>>,
    exits: std::sync::mpsc::Receiver<monitor::ThreadExit>,
    shutdown: Arc<Shutdown>,
    /// The access log writer: joined last, so every line reaches its file.
    log_writer: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Waits for every worker to finish after a shutdown request. False if a
    /// thread died on its own (see `monitor`): exit non-zero.
    pub fn wait(self) -> bool {
        let ok = monitor::wait_for_workers(&self.exits, self.threads.len(), &self.shutdown);
        for t in self.threads {
            let _ = t.join();
        }
        if let Some(writer) = self.log_writer {
            // Every worker closed its side: the writer finishes what they
            // sent. Bounded, for a worker that died before closing.
            let deadline = Instant::now() + Duration::from_secs(3);
            while !writer.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        ok
    }
}

/// Binds every listener (or adopts the sockets a predecessor handed over,
/// `inherited`) and starts the workers. Returns once all are running.
pub fn start(
    config: Config,
    shutdown: Arc<Shutdown>,
    mut inherited: Vec<handover::Handed>,
) -> std::io::Result<Running> {
    let workers = config.workers;
    let upgrading = !inherited.is_empty();
    let max_connections = connection_cap(&config);
    let mut per_worker: Vec<Vec<(usize, std::net::TcpListener)>> =
        (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    // Our own copies of every listening socket, for a successor.
    let mut offered = Vec::new();
    let named: Vec<SocketAddr> = config.listeners.iter().map(|l| l.addr).collect();
    for (idx, l) in config.listeners.iter().enumerate() {
        let (mine, at) = handover::claim_listener(&mut inherited, l.addr, &named);
        let (sockets, addr) = if mine.is_empty() {
            listener::bind_all(l.addr, workers)?
        } else {
            crate::info!("taking over {} socket(s) on {at}", mine.len());
            (listener::adopt(mine, at, workers)?, at)
        };
        for (i, s) in sockets.into_iter().enumerate() {
            if config.upgrade_socket.is_some() {
                offered.push(handover::Handed {
                    role: handover::Role::Listener,
                    addr,
                    fd: s.try_clone()?.into(),
                });
            }
            per_worker[i % workers].push((idx, s));
        }
        crate::info!("listening on {addr}");
        bound.push(addr);
    }
    let capacity = Rosters::capacity_for(&config.upstreams);
    let health = Health::new(&config, capacity);
    let (log_sinks, mut log_ends, log_writer, log_targets) = start_access_logs(&config)?;
    let table = relisten::first_table(&config, &bound, &log_sinks);
    let layout = Arc::new(crate::metrics::Layout::new(
        relisten::specs(&config, &table),
        config.upstream_specs(),
        (workers, capacity),
    ));
    let worker_metrics: Vec<Arc<WorkerMetrics>> = (0..workers)
        .map(|_| Arc::new(WorkerMetrics::new(&layout)))
        .collect();
    let accepting: Vec<bool> = table.iter().map(Option::is_some).collect();
    let rosters = Rosters::new(
        Settings {
            upstreams: config.upstreams.clone(),
            client: config.client,
            limits: (config.limits, max_connections),
            listeners: table,
            listeners_used: config.listeners.len(),
            layout,
        },
        workers,
        capacity,
    );
    for m in rosters.current().members.iter().flatten() {
        health.claim(*m);
    }
    let registry = Arc::new(Registry {
        workers: worker_metrics.clone(),
        driver: std::sync::OnceLock::new(),
        started: std::time::SystemTime::now(),
    });
    let (admin, admin_addr) = match config.admin {
        Some(addr) => {
            let mine = handover::claim(&mut inherited, handover::Role::Admin, addr);
            let (mut sockets, bound_admin) = if mine.is_empty() {
                listener::bind_all(addr, 1)?
            } else {
                (listener::adopt(mine, addr, 1)?, addr)
            };
            crate::admin::announce(bound_admin);
            let socket = sockets.pop();
            if let (Some(s), Some(_)) = (&socket, &config.upgrade_socket) {
                offered.push(handover::Handed {
                    role: handover::Role::Admin,
                    addr: bound_admin,
                    fd: s.try_clone()?.into(),
                });
            }
            (socket, Some(bound_admin))
        }
        None => (None, None),
    };
    for gone in inherited {
        crate::info!(
            "taking over: {} is not in this config; its socket closes",
            gone.addr
        );
    }
    // Before any worker accepts: a process that cannot offer its sockets
    // exits here, without having taken (and then dropped) a connection.
    let offered = Arc::new(std::sync::Mutex::new(offered));
    let offer = match &config.upgrade_socket {
        Some(path) => Some(handover::offer(
            path,
            offered.clone(),
            shutdown.clone(),
            upgrading,
        )?),
        None => None,
    };
    let (exit_tx, exits) = std::sync::mpsc::channel();
    start_health_thread(
        &config,
        (health.clone(), rosters.clone(), registry.clone()),
        admin,
        shutdown.clone(),
        exit_tx.clone(),
    )?;
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let config = Arc::new(config);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut threads = Vec::with_capacity(workers);
    for (id, sockets) in per_worker.into_iter().enumerate() {
        let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
        let config = config.clone();
        let accepting = accepting.clone();
        let shutdown = shutdown.clone();
        let ready = ready_tx.clone();
        let shared = (health.clone(), rosters.clone());
        let exit_tx = exit_tx.clone();
        let metrics = worker_metrics[id].clone();
        let registry = registry.clone();
        let logs = log_ends.as_mut().map(|e| e.remove(0));
        let t = std::thread::Builder::new()
            .name(format!("ringlb-w{id}"))
            .spawn(move || {
                let _notice = monitor::ExitNotice::new(format!("worker {id}"), true, exit_tx);
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                let rt = match driver::build(config.io, config.ring_entries, config.uring_setup) {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready.send(Err(format!("worker {id}: {e}")));
                        return;
                    }
                };
                crate::info!(
                    "worker {id}: {} driver, pinned to {}",
                    rt.name(config.uring_setup),
                    core.map_or("no core".to_string(), |c| format!("core {}", c.id))
                );
                let _ = registry.driver.set(rt.kind());
                crate::metrics::set_current(metrics.clone());
                IN_WORKER.with(|w| w.set(true));
                swap::install_limits((config.limits, max_connections), (id, workers));
                Buffer::prefill(crate::memory::BASE_FREE);
                crate::pooled::prefill(crate::memory::BASE_FREE);
                rt.block_on(async move {
                    // Inside the runtime: the idle watcher registers with it.
                    let log = logs.map(|ends| crate::access_log::WorkerLog::new(id, ends));
                    let ctx = worker_ctx(&config, accepting, shared, id, (metrics, log));
                    worker_main(id, ctx, sockets, shutdown, config.drain_timeout, ready).await
                });
            })?;
        threads.push(t);
    }
    drop(ready_tx);
    for _ in 0..workers {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shutdown.request();
                return Err(std::io::Error::other(e));
            }
            Err(_) => return Err(std::io::Error::other("a worker exited during start-up")),
        }
    }
    if let Some(offer) = offer {
        offer.publish()?;
    }

    resolve::start(&config, shutdown.clone());
    reload::serving(
        config.clone(),
        (rosters, health),
        reload::Sockets {
            log_targets,
            offered,
        },
    );
    Ok(Running {
        bound,
        admin: admin_addr,
        threads,
        exits,
        shutdown,
        log_writer,
    })
}

/// Raises the open-file limit and works out the client connection cap
/// (logged, with a warning when a configured cap does not fit the limit).
pub(crate) fn connection_cap(config: &Config) -> u32 {
    let nofile = fd_limit::raise_nofile();
    let (cap, source) = fd_limit::max_connections(config, nofile);
    crate::info!(
        "client connections: at most {cap} ({source}; open-file limit {nofile}){}",
        config
            .limits
            .max_connections_per_ip
            .map_or(String::new(), |n| format!(
                ", {n} per client address and worker"
            ))
    );
    if !fd_limit::fits(config, cap, nofile) {
        crate::warn!(
            "max_connections = {cap} with an upstream connection each needs more than the \
             open-file limit ({nofile}): raise it (LimitNOFILE=, ulimit -n) or lower max_connections"
        );
    }
    cap
}

/// The health thread: active checks for every upstream that has them, and the
/// admin listener, in one small epoll event loop of their own.
fn start_health_thread(
    config: &Config,
    (health, rosters, registry): (Arc<Health>, Arc<Rosters>, Arc<Registry>),
    admin: Option<std::net::TcpListener>,
    shutdown: Arc<Shutdown>,
    exit_tx: std::sync::mpsc::Sender<monitor::ThreadExit>,
) -> std::io::Result<()> {
    // Always started when there is an admin port or a check; else a reload
    // that adds checks goes through a fresh process (see `reload`).
    if admin.is_none() && config.upstreams.iter().all(|u| u.health_check.is_none()) {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("ringlb-health".into())
        .spawn(move || {
            let _notice = monitor::ExitNotice::new("ringlb-health".into(), false, exit_tx);
            let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build();
            let Ok(mut rt) = rt else {
                crate::error!("health thread: cannot build its event loop; active checks are off");
                return;
            };
            rt.block_on(async move {
                if let Some(socket) = admin {
                    match TcpListener::from_std(socket) {
                        Ok(l) => {
                            let state = crate::admin::State {
                                health: health.clone(),
                                rosters: rosters.clone(),
                                metrics: registry,
                            };
                            monoio::spawn(crate::admin::serve(l, Rc::new(state)));
                        }
                        Err(e) => crate::error!("admin listener: {e}"),
                    }
                }
                health::run_checks(health, rosters, shutdown).await;
            });
        })?;
    Ok(())
}

/// The access log writer, if any listener logs: per listener its file index
/// and format, per worker its ends of the writer's channels, the writer, and
/// its files.
type LogSetup = (
    Vec<Option<(usize, crate::access_log::Format)>>,
    Option<Vec<crate::access_log::writer::WorkerEnds>>,
    Option<std::thread::JoinHandle<()>>,
    Vec<crate::access_log::writer::Target>,
);

fn start_access_logs(config: &Config) -> std::io::Result<LogSetup> {
    let mut targets: Vec<crate::access_log::writer::Target> = Vec::new();
    let sinks = config
        .listeners
        .iter()
        .map(|l| {
            l.access_log.as_ref().map(|a| {
                let file = targets
                    .iter()
                    .position(|t| *t == a.target)
                    .unwrap_or_else(|| {
                        targets.push(a.target.clone());
                        targets.len() - 1
                    });
                (file, a.format)
            })
        })
        .collect();
    if targets.is_empty() {
        return Ok((sinks, None, None, targets));
    }
    let (ends, writer) = crate::access_log::writer::start(targets.clone(), config.workers)?;
    Ok((sinks, Some(ends), Some(writer), targets))
}

/// A worker's observability: its metrics and its access log side.
type Observers = (Arc<WorkerMetrics>, Option<crate::access_log::WorkerLog>);

/// `accepting`: per listener id, whether this worker got a socket for it.
fn worker_ctx(
    config: &Config,
    accepting: Vec<bool>,
    (health, rosters): (Arc<Health>, Arc<Rosters>),
    id: usize,
    (metrics, access_log): Observers,
) -> (Rc<WorkerCtx>, swap::Follower) {
    let idle_watch = match IdleWatch::new() {
        Ok(w) => Some(w),
        Err(e) => {
            crate::warn!(
                "worker {id}: no idle watch for pooled upstream connections ({e}): \
                 connections a server closes are found when next used"
            );
            None
        }
    };
    let ctx = Rc::new(WorkerCtx {
        routes: Default::default(),
        layout: RefCell::new(rosters.current().layout.clone()),
        upstreams: Default::default(),
        server_names: RefCell::new(vec![Box::from(""); rosters.capacity()]),
        pool: RefCell::new(ConnPool::new(rosters.capacity())),
        metrics,
        access_log,
        log_sinks: Default::default(),
        idle_watch,
        client: Cell::new(config.client),
        draining: Cell::new(false),
        busy: Cell::new(0),
        started: Cell::new(0),
        shed_log: Default::default(),
    });
    let mut roster = swap::Follower::new((id, config.workers), accepting, health, rosters);
    roster.take(&ctx);
    (ctx, roster)
}

async fn worker_main(
    id: usize,
    (ctx, mut roster): (Rc<WorkerCtx>, swap::Follower),
    sockets: Vec<(usize, std::net::TcpListener)>,
    shutdown: Arc<Shutdown>,
    drain_timeout: Duration,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let mut accepting = accept::Accepting::default();
    for (idx, socket) in sockets {
        if let Err(e) = accepting.open(&ctx, idx, socket) {
            let _ = ready.send(Err(format!("worker {id}: listener: {e}")));
            return;
        }
    }
    let _ = ready.send(Ok(()));
    drop(ready);
    if ctx.idle_watch.is_some() {
        monoio::spawn(watch_idle_connections(ctx.clone()));
    }

    // Off the request path: poll the shutdown flag, sweep stale pooled
    // connections, and give memory back once a burst has passed.
    let mut ticks = 0u32;
    let mut quiet = crate::memory::QuietWatch::default();
    while !shutdown.is_requested() {
        monoio::time::sleep(Duration::from_millis(50)).await;
        ticks = ticks.wrapping_add(1);
        #[cfg(debug_assertions)]
        if crate::contain::test_hooks::worker_panic_requested() {
            panic!("test hook: a panic outside any connection task");
        }
        accepting.apply(&ctx, roster.take(&ctx));
        accepting.sweep(&ctx);
        let now_ms = crate::deadline::now_ms();
        for (i, up) in ctx.upstreams().iter().enumerate() {
            up.housekeeping(now_ms);
            let (limit, _, queued) = up.admission_state();
            ctx.metrics.admission_limit[i].set(i64::from(limit));
            ctx.metrics.queued[i].set(i64::from(queued));
        }
        ctx.shed_log.tick(id, now_ms);
        if ticks % 20 == 0 {
            ctx.pool.borrow_mut().sweep();
        }
        if let Some(log) = &ctx.access_log {
            log.flush_due(crate::deadline::now_ms());
        }
        if quiet.observe(ctx.started.get(), ctx.busy.get()) {
            crate::memory::trim();
        }
    }
    ctx.draining.set(true);
    // Out of the listening tables now: new connections are refused at once
    // (instead of waiting in a backlog nobody accepts from), and the port is
    // free for a successor even while the ring still holds the socket.
    // Unless a successor shares the sockets: then they stay open for it, and
    // the connections in their queues are its to accept.
    if !shutdown.handed_over() {
        for (_, fd, _) in accepting.loops.values() {
            listener::stop_listening(*fd);
        }
    }
    for (_, (c, _, _)) in accepting.loops.drain() {
        c.cancel();
    }
    let deadline = Instant::now() + drain_timeout;
    // Connections accepted as the drain began get a moment to send their
    // first request (it is then counted in `busy`).
    while Instant::now() < deadline
        && (ctx.busy.get() > 0
            || accepting.running()
            || conn_limit::since_last_accept(crate::deadline::now_ms()) < FRESH_GRACE_MS)
    {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    if ctx.busy.get() > 0 {
        crate::warn!(
            "worker {id}: drain deadline passed with {} requests in flight",
            ctx.busy.get()
        );
    }
    ctx.pool.borrow_mut().clear();
    if let Some(log) = &ctx.access_log {
        log.close();
    }
}

/// How long after its last accept a draining worker waits for a request on
/// that connection.
const FRESH_GRACE_MS: u64 = 200;

/// Drops pooled connections as soon as their server closes them.
async fn watch_idle_connections(ctx: Rc<WorkerCtx>) {
    let Some(watch) = &ctx.idle_watch else {
        return;
    };
    while !ctx.draining.get() {
        if let Err(e) = watch.wait().await {
            crate::warn!("idle watch stopped: {e}; closed connections are found when next used");
            return;
        }
        watch.drain(|closed| ctx.pool.borrow_mut().peer_closed(closed));
    }
}
