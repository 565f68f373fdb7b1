//! Worker threads: one per core, pinned, each with its own monoio runtime, its own
//! SO_REUSEPORT listeners, buffers and upstream connection pool. Also owns the
//! shutdown sequence: stop accepting, drain in-flight requests, exit.

pub mod driver;
pub mod listener;
pub mod monitor;
pub mod signals;

use crate::buf::Buffer;
use crate::config::Config;
use crate::http::request::Limits;
use crate::proxy::route::ListenerRoutes;
use crate::proxy::{client, WorkerCtx};
use crate::upstream::health::{self, Health};
use crate::upstream::idle_watch::IdleWatch;
use crate::upstream::pool::ConnPool;
use crate::upstream::Upstream;
use monoio::io::Canceller;
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
}

impl Shutdown {
    pub fn request(&self) {
        self.requested.store(true, Ordering::Release);
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
    threads: Vec<std::thread::JoinHandle<()>>,
    exits: std::sync::mpsc::Receiver<monitor::ThreadExit>,
    shutdown: Arc<Shutdown>,
}

impl Running {
    /// Waits for every worker to finish after a shutdown request. False if a
    /// thread died on its own (see `monitor`): exit non-zero.
    pub fn wait(self) -> bool {
        let ok = monitor::wait_for_workers(&self.exits, self.threads.len(), &self.shutdown);
        for t in self.threads {
            let _ = t.join();
        }
        ok
    }
}

/// Binds every listener and starts the workers. Returns once all are running.
pub fn start(config: Config, shutdown: Arc<Shutdown>) -> std::io::Result<Running> {
    let workers = config.workers;
    let mut per_worker: Vec<Vec<std::net::TcpListener>> =
        (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for l in &config.listeners {
        let (sockets, addr) = listener::bind_all(l.addr, workers)?;
        for (w, s) in sockets.into_iter().enumerate() {
            per_worker[w].push(s);
        }
        crate::info!("listening on {addr}");
        bound.push(addr);
    }
    let health = Health::new(&config);
    let admin = match config.admin {
        Some(addr) => {
            let (mut sockets, bound_admin) = listener::bind_all(addr, 1)?;
            crate::admin::announce(bound_admin);
            sockets.pop()
        }
        None => None,
    };
    let (exit_tx, exits) = std::sync::mpsc::channel();
    start_health_thread(
        &config,
        health.clone(),
        admin,
        shutdown.clone(),
        exit_tx.clone(),
    )?;
    let routes: Arc<Vec<ListenerRoutes>> = Arc::new(
        config
            .listeners
            .iter()
            .zip(&bound)
            .map(|(l, &b)| ListenerRoutes::new(l, b))
            .collect(),
    );
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let config = Arc::new(config);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut threads = Vec::with_capacity(workers);
    for (id, sockets) in per_worker.into_iter().enumerate() {
        let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
        let config = config.clone();
        let routes = routes.clone();
        let shutdown = shutdown.clone();
        let ready = ready_tx.clone();
        let health = health.clone();
        let exit_tx = exit_tx.clone();
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
                IN_WORKER.with(|w| w.set(true));
                Buffer::prefill(crate::memory::BASE_FREE);
                crate::pooled::prefill(crate::memory::BASE_FREE);
                rt.block_on(async move {
                    // Inside the runtime: the idle watcher registers with it.
                    let ctx = worker_ctx(&config, routes, &health, id);
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
    Ok(Running {
        bound,
        threads,
        exits,
        shutdown,
    })
}

/// The health thread: active checks for every upstream that has them, and the
/// admin listener, in one small epoll event loop of their own.
fn start_health_thread(
    config: &Config,
    health: Arc<Health>,
    admin: Option<std::net::TcpListener>,
    shutdown: Arc<Shutdown>,
    exit_tx: std::sync::mpsc::Sender<monitor::ThreadExit>,
) -> std::io::Result<()> {
    if admin.is_none() && config.upstreams.iter().all(|u| u.health_check.is_none()) {
        return Ok(());
    }
    let configs = Arc::new(config.upstreams.clone());
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
                            monoio::spawn(crate::admin::serve(l, health.clone(), configs.clone()));
                        }
                        Err(e) => crate::error!("admin listener: {e}"),
                    }
                }
                health::run_checks(health, configs.to_vec(), shutdown).await;
            });
        })?;
    Ok(())
}

fn worker_ctx(
    config: &Config,
    routes: Arc<Vec<ListenerRoutes>>,
    health: &Arc<Health>,
    id: usize,
) -> Rc<WorkerCtx> {
    let mut pool = ConnPool::default();
    let mut next_slot = 0;
    let upstreams = config
        .upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let up = Upstream::new(u, i, health.clone(), id, &mut next_slot);
            for _ in &up.servers {
                pool.add_slot(u.max_idle, u.idle_timeout);
            }
            up
        })
        .collect();
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
    Rc::new(WorkerCtx {
        routes,
        upstreams,
        pool: RefCell::new(pool),
        idle_watch,
        client: config.client.clone(),
        limits: Limits {
            max_head_bytes: config.client.max_head_bytes,
            max_request_line_bytes: config.client.max_request_line_bytes,
            underscores: config.client.headers_with_underscores,
        },
        draining: Cell::new(false),
        busy: Cell::new(0),
        started: Cell::new(0),
    })
}

async fn worker_main(
    id: usize,
    ctx: Rc<WorkerCtx>,
    sockets: Vec<std::net::TcpListener>,
    shutdown: Arc<Shutdown>,
    drain_timeout: Duration,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let mut cancellers = Vec::new();
    let listening: Vec<std::os::fd::RawFd> = sockets
        .iter()
        .map(std::os::fd::AsRawFd::as_raw_fd)
        .collect();
    for (idx, socket) in sockets.into_iter().enumerate() {
        let listener = match TcpListener::from_std(socket) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!("worker {id}: listener: {e}")));
                return;
            }
        };
        let canceller = Canceller::new();
        monoio::spawn(accept_loop(ctx.clone(), idx, listener, canceller.handle()));
        cancellers.push(canceller);
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
        let second = crate::deadline::now_ms() / 1000;
        for up in &ctx.upstreams {
            up.housekeeping(second);
        }
        if ticks % 20 == 0 {
            ctx.pool.borrow_mut().sweep();
        }
        if quiet.observe(ctx.started.get(), ctx.busy.get()) {
            crate::memory::trim();
        }
    }
    ctx.draining.set(true);
    // Out of the listening tables now: new connections are refused at once
    // (instead of waiting in a backlog nobody accepts from), and the port is
    // free for a successor even while the ring still holds the socket.
    for fd in listening {
        listener::stop_listening(fd);
    }
    for c in cancellers {
        c.cancel();
    }
    let deadline = Instant::now() + drain_timeout;
    while ctx.busy.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    if ctx.busy.get() > 0 {
        crate::warn!(
            "worker {id}: drain deadline passed with {} requests in flight",
            ctx.busy.get()
        );
    }
    ctx.pool.borrow_mut().clear();
}

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

async fn accept_loop(
    ctx: Rc<WorkerCtx>,
    idx: usize,
    listener: TcpListener,
    cancel: monoio::io::CancelHandle,
) {
    loop {
        match listener.cancelable_accept(cancel.clone()).await {
            Ok((stream, peer)) => {
                // A panic ends this connection only (see `contain`).
                let serve = client::serve(ctx.clone(), idx, stream, peer);
                monoio::spawn(crate::contain::CatchUnwind::new(serve));
            }
            Err(_) if ctx.draining.get() => return,
            Err(e) => {
                crate::log::rate_limited(format_args!("accept failed: {e}"));
                // EMFILE / ENFILE / ENOBUFS: back off instead of spinning.
                monoio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
