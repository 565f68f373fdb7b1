//! Upstream pools as a worker sees them: servers, balancing, passive health,
//! retry budget, and the idle connections kept to each server.
//!
//! Per worker (no locks, no shared writes on the request path): balancer state,
//! in-flight counts, latency estimates, passive ejections, the retry budget, the
//! connection pool. Shared through atomics (`health::Health`): active health
//! (written by the checker thread), and passive ejections, published only when
//! they change, for the admin view.

pub mod adaptive;
pub mod admission;
pub mod balance;
pub mod health;
pub mod idle_watch;
pub mod outlier;
pub mod pool;
pub mod retry;
pub mod roster;

use crate::config::{HashKey, UpstreamConfig};
use crate::error::Shed;
use adaptive::Gradient;
use admission::{Admission, Entered, Refused, Room, Wait};
use balance::{Algorithm, Balancer, PeakEwma, Servers};
use health::Health;
use outlier::{Change, Kind, Outlier, OutlierConfig};
use retry::RetryBudget;
use roster::Member;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One server of a pool, as seen by one worker.
pub struct Server {
    pub addr: SocketAddr,
    /// Its stable handle: pool slot, metrics cells, shared health.
    pub member: Member,
    pub weight: u32,
    identity: u64,
    inflight: Cell<u32>,
    ewma: Cell<PeakEwma>,
    outlier: RefCell<Outlier>,
    /// When the server came back from an ejection (slow start).
    returned_at: Cell<Option<Instant>>,
}

/// One upstream pool as seen by one worker.
pub struct Upstream {
    pub name: String,
    pub servers: Vec<Server>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub retries: u32,
    pub retry_non_idempotent: bool,
    pub hash_key: Option<HashKey>,
    panic_mode: bool,
    slow_start: Duration,
    algorithm: Algorithm,
    balancer: RefCell<Balancer>,
    budget: RefCell<RetryBudget>,
    outlier_cfg: OutlierConfig,
    health: Arc<Health>,
    index: usize,
    worker: usize,
    local_generation: Cell<u64>,
    ejected: Cell<usize>,
    next_expiry: Cell<Option<Instant>>,
    /// Shared health generation last looked at (to un-eject servers that
    /// active checks saw come back).
    seen_generation: Cell<u64>,
    retry_cursor: Cell<usize>,
    /// Until when some server's slow-start ramp runs (weights move).
    ramp_until: Cell<Option<Instant>>,
    /// Requests in flight to the pool, and the queue for the rest (shared
    /// with the view a new roster makes while the limits stay).
    admission: Rc<Admission>,
    admission_cfg: crate::config::AdmissionConfig,
    /// This worker's share of `max_in_flight_per_server` (`u32::MAX`: none).
    per_server_limit: u32,
    /// Adaptive concurrency: the limit in force follows latency.
    adaptive: Option<Rc<RefCell<Gradient>>>,
    /// How long a request may wait in the queue.
    queue_timeout: Duration,
    /// A newer roster replaced this view: the requests still using it leave
    /// the shared ejection counts alone (the new view owns them).
    retired: Cell<bool>,
}

/// What admission decided for a request (see `Upstream::admit`).
pub enum Admit<'a> {
    Now(Permit<'a>),
    /// Wait for the permit (at most `queue_timeout`), then `Permit::new`.
    Queued(Wait<'a>),
    Shed(Shed),
}

/// A request's hold on one of its pool's in-flight slots. Dropping it frees
/// the slot (or hands it to the oldest queued request).
pub struct Permit<'a> {
    up: &'a Upstream,
}

impl<'a> Permit<'a> {
    /// The permit a queued request was granted (its `Wait` completed).
    pub fn granted(up: &'a Upstream) -> Permit<'a> {
        Permit { up }
    }

    /// Feeds the request's latency (request sent to response head, µs) to
    /// adaptive concurrency.
    #[inline]
    pub fn latency(&self, us: u64) {
        if let Some(g) = &self.up.adaptive {
            g.borrow_mut().sample(us);
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.up.admission.leave(self.up.room());
    }
}

impl Room for Upstream {
    /// With a per-server limit: some available server has room under it, or
    /// none is available at all (the request then goes on to its fast 503
    /// rather than waiting in the queue for a server that is not there).
    fn room(&self) -> bool {
        if self.per_server_limit == u32::MAX {
            return true;
        }
        let view = View {
            up: self,
            now: Instant::now(),
        };
        let mut any_up = false;
        for i in 0..self.servers.len() {
            if view.up_and_in(i) {
                any_up = true;
                if self.servers[i].inflight.get() < self.per_server_limit {
                    return true;
                }
            }
        }
        !any_up
    }
}

/// How one attempt on a server ended, for passive health and latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Connect failure, timeout, 502/503/504, broken response.
    Failure,
    /// The connect was refused: the server is held back at once (see `outlier`).
    Refused,
    /// The attempt ended for reasons that say nothing about the server.
    Neutral,
}

struct View<'a> {
    up: &'a Upstream,
    now: Instant,
}

impl View<'_> {
    /// Healthy and not ejected (whatever its load).
    #[inline]
    fn up_and_in(&self, i: usize) -> bool {
        self.up.shared(i).is_healthy() && !self.up.servers[i].outlier.borrow().is_out(self.now)
    }
}

impl Servers for View<'_> {
    #[inline]
    fn len(&self) -> usize {
        self.up.servers.len()
    }

    #[inline]
    fn available(&self, i: usize) -> bool {
        self.up.servers[i].inflight.get() < self.up.per_server_limit && self.up_and_in(i)
    }

    #[inline]
    fn weight(&self, i: usize) -> u32 {
        let s = &self.up.servers[i];
        let base = s.weight * 100;
        if self.up.slow_start.is_zero() {
            return base;
        }
        let shared_up = self.up.shared(i).up_since(self.up.health.epoch());
        let since = s.returned_at.get().map_or(shared_up, |r| r.max(shared_up));
        let elapsed = self.now.saturating_duration_since(since);
        if since == self.up.health.epoch() || elapsed >= self.up.slow_start {
            return base; // up since start-up, or ramp complete
        }
        let ramp = (elapsed.as_secs_f64() / self.up.slow_start.as_secs_f64()).max(0.1);
        ((f64::from(base) * ramp) as u32).max(1)
    }

    #[inline]
    fn inflight(&self, i: usize) -> u32 {
        self.up.servers[i].inflight.get()
    }

    #[inline]
    fn cost(&self, i: usize) -> f64 {
        let s = &self.up.servers[i];
        s.ewma.get().estimate_ns() * f64::from(s.inflight.get() + 1)
    }

    #[inline]
    fn generation(&self) -> u64 {
        (self.up.health.upstreams[self.up.index].generation() << 32)
            ^ self.up.local_generation.get()
    }

    #[inline]
    fn identity(&self, i: usize) -> u64 {
        self.up.servers[i].identity
    }

    #[inline]
    fn weights_changing(&self) -> bool {
        self.up.ramp_until.get().is_some_and(|t| self.now < t)
    }
}

/// A pool's admission for worker `worker` of `workers`: its share of the
/// limits, and the adaptive limit if set.
fn admission_for(
    a: &crate::config::AdmissionConfig,
    (worker, workers): (usize, usize),
) -> (Rc<Admission>, Option<Rc<RefCell<Gradient>>>) {
    let limit = admission::share(a.max_in_flight, workers, worker);
    // Adaptive limits are per worker (each measures its own latency);
    // `max_in_flight`, when set, caps them at this worker's share.
    let adaptive = a.adaptive.map(|mut g| {
        if let Some(share) = limit {
            g.max_limit = g.max_limit.min(share).max(g.min_limit);
            g.initial_limit = g.initial_limit.clamp(g.min_limit, g.max_limit);
        }
        Gradient::new(g)
    });
    let admission = Admission::new(
        limit,
        admission::share(Some(a.queue_size), workers, worker).unwrap_or(0),
        a.queue_timeout.as_millis() as u64,
    );
    if let Some(g) = &adaptive {
        admission.set_limit(g.limit(), &admission::AnyRoom);
    }
    (
        Rc::new(admission),
        adaptive.map(|g| Rc::new(RefCell::new(g))),
    )
}

impl Upstream {
    /// Builds the worker-local view of worker `worker` of `workers`, for
    /// servers `members` (in `cfg.servers` order). `before`: the view this
    /// one replaces (a new roster), whose servers that stay keep their
    /// latency estimate and ejection state here.
    pub fn new(
        cfg: &UpstreamConfig,
        index: usize,
        health: Arc<Health>,
        (worker, workers): (usize, usize),
        members: &[Member],
        before: Option<&Upstream>,
    ) -> Upstream {
        let servers = cfg
            .servers
            .iter()
            .zip(members)
            .map(|(s, &member)| {
                let old = before.and_then(|b| b.servers.iter().find(|o| o.member == member));
                Server {
                    addr: s.addr,
                    member,
                    weight: s.weight,
                    identity: balance::maglev_hash(s.addr.to_string().as_bytes()),
                    inflight: Cell::new(0),
                    ewma: Cell::new(old.map_or_else(PeakEwma::default, |o| o.ewma.get())),
                    outlier: RefCell::new(
                        old.map_or_else(Outlier::default, |o| o.outlier.borrow().clone()),
                    ),
                    returned_at: Cell::new(old.and_then(|o| o.returned_at.get())),
                }
            })
            .collect::<Vec<_>>();
        let ejected = servers
            .iter()
            .filter(|s| s.outlier.borrow().out_kind() == Some(Kind::Ejected))
            .count();
        let next_expiry = servers
            .iter()
            .filter_map(|s| s.outlier.borrow().out_until())
            .min();
        let seed = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(worker as u64 + 1) ^ index as u64;
        let a = &cfg.admission;
        // Unchanged limits: the new view shares the old one's admission, so
        // requests still in flight on the old view count against it.
        let (admission, adaptive) = match before {
            Some(b) if b.admission_cfg == *a => (b.admission.clone(), b.adaptive.clone()),
            _ => admission_for(a, (worker, workers)),
        };
        Upstream {
            name: cfg.name.clone(),
            balancer: RefCell::new(Balancer::new(cfg.balance, servers.len(), seed)),
            servers,
            connect_timeout: cfg.connect_timeout,
            response_timeout: cfg.response_timeout,
            retries: cfg.retries,
            retry_non_idempotent: cfg.retry_non_idempotent,
            hash_key: (cfg.balance == Algorithm::Maglev).then(|| cfg.hash_key.clone()),
            panic_mode: cfg.panic_mode,
            slow_start: cfg.slow_start,
            algorithm: cfg.balance,
            budget: RefCell::new(RetryBudget::new(
                cfg.retry_budget,
                cfg.min_retries_per_second,
            )),
            outlier_cfg: cfg.outlier,
            health,
            index,
            worker,
            local_generation: Cell::new(0),
            ejected: Cell::new(ejected),
            next_expiry: Cell::new(next_expiry),
            seen_generation: Cell::new(0),
            retry_cursor: Cell::new(worker),
            ramp_until: Cell::new(None),
            admission,
            admission_cfg: a.clone(),
            per_server_limit: admission::share(a.max_in_flight_per_server, workers, worker)
                .unwrap_or(u32::MAX),
            adaptive,
            queue_timeout: a.queue_timeout,
            retired: Cell::new(false),
        }
    }

    /// A newer view of this pool took over (`Upstream::new` with this as
    /// `before`): servers that left it (not in `stays`) and that this worker
    /// ejects are no longer counted as ejected by it.
    pub fn retire(&self, stays: impl Fn(Member) -> bool) {
        self.retired.set(true);
        for s in &self.servers {
            if !stays(s.member) && s.outlier.borrow().out_kind() == Some(Kind::Ejected) {
                self.shared_of(s).ejected_by.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// How long a request queued now may wait (`queue_timeout`, shorter
    /// while the queue is standing: see `admission`).
    #[inline]
    pub fn queue_wait(&self) -> std::time::Duration {
        self.admission.queue_wait(self.queue_timeout)
    }

    /// The pool's position in the config (its metrics slot).
    #[inline]
    pub fn index(&self) -> usize {
        self.index
    }

    /// Admission before a server is picked: a permit now, a place in the
    /// queue, or the limit that sheds the request.
    pub fn admit(&self) -> Admit<'_> {
        match self.admission.enter(self.room(), crate::deadline::now_ms) {
            Ok(Entered::Now) => Admit::Now(Permit { up: self }),
            Ok(Entered::Queued(q)) => Admit::Queued(Wait::new(&self.admission, q, self)),
            Err(Refused::QueueFull) => Admit::Shed(Shed::QueueFull),
            Err(Refused::Limit) if self.admission.limit_is_adaptive() => {
                Admit::Shed(Shed::Adaptive)
            }
            Err(Refused::Limit) => Admit::Shed(Shed::InFlight),
        }
    }

    /// Why `pick` found no server: every available one is at its per-server
    /// limit (the request is shed), or none is up (503 no healthy server).
    pub fn no_server_reason(&self) -> crate::error::ProxyError {
        let full = |s: &Server| s.inflight.get() >= self.per_server_limit;
        if self.per_server_limit != u32::MAX && self.servers.iter().any(full) {
            crate::error::ProxyError::Shed(Shed::InFlight)
        } else {
            crate::error::ProxyError::NoHealthyServer
        }
    }

    /// The admission limit in force, the requests holding a permit, and the
    /// requests queued (for `/status` and the metrics).
    pub fn admission_state(&self) -> (u32, u32, u32) {
        (
            self.admission.limit(),
            self.admission.in_flight(),
            self.admission.queued(),
        )
    }

    #[inline]
    fn shared(&self, i: usize) -> &health::SharedServer {
        self.shared_of(&self.servers[i])
    }

    #[inline]
    fn shared_of(&self, s: &Server) -> &health::SharedServer {
        self.health.server(s.member.id)
    }

    /// Chooses a server for a request, skipping servers in `tried` (a bitmask of
    /// the first 64). None: no server can take it (503).
    pub fn pick(&self, key: u64, tried: u64) -> Option<usize> {
        let now = Instant::now();
        let generation = self.health.upstreams[self.index].generation();
        if self.next_expiry.get().is_some_and(|t| now >= t)
            || generation != self.seen_generation.get()
        {
            self.seen_generation.set(generation);
            self.expire_ejections(now);
            self.update_ramp(now);
        }
        let view = View { up: self, now };
        let n = self.servers.len();
        let untried = |i: usize| i >= 64 || tried & (1 << i) == 0;
        if tried == 0 {
            if let Some(i) = self.balancer.borrow_mut().pick(&view, key) {
                return Some(i);
            }
        } else {
            // A retry: any other available server, without disturbing the
            // balancer's state (a skipped pick would skew weighted rotation).
            let start = self.retry_cursor.get();
            self.retry_cursor.set(start.wrapping_add(1));
            if let Some(i) = (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| untried(i) && view.available(i))
            {
                return Some(i);
            }
        }
        if self.panic_mode {
            // Every server is down: spread the attempts anyway (documented choice).
            let start = self.retry_cursor.get();
            self.retry_cursor.set(start.wrapping_add(1));
            return (0..n).map(|k| (start + k) % n).find(|&i| untried(i));
        }
        None
    }

    /// Counts a request toward the retry budget.
    #[inline]
    pub fn note_request(&self) {
        self.budget.borrow_mut().on_request();
    }

    /// Takes a retry token, if the budget allows one more retry.
    pub fn try_retry(&self) -> bool {
        self.budget.borrow_mut().try_retry()
    }

    /// Off the request path, a few times a second (`now_ms`: any monotonic
    /// milliseconds): moves the retry budget's window, and closes an adaptive
    /// concurrency window when one is due.
    pub fn housekeeping(&self, now_ms: u64) {
        self.budget.borrow_mut().advance(now_ms / 1000);
        let changed = self
            .adaptive
            .as_ref()
            .and_then(|g| g.borrow_mut().tick(now_ms));
        if let Some(limit) = changed {
            self.admission.set_limit(limit, self);
        }
    }

    #[inline]
    pub fn start(&self, i: usize) {
        let s = &self.servers[i];
        s.inflight.set(s.inflight.get() + 1);
    }

    /// The clock reading a latency-aware balancer needs at the start of an
    /// attempt (None for the others: no clock read per request).
    #[inline]
    pub fn latency_clock(&self) -> Option<Instant> {
        (self.algorithm == Algorithm::PeakEwma).then(Instant::now)
    }

    /// Ends an attempt started with `start`; `started` is `latency_clock()`'s
    /// reading. True if this outcome ejected the server.
    pub fn finish(&self, i: usize, outcome: Outcome, started: Option<Instant>) -> bool {
        let s = &self.servers[i];
        s.inflight.set(s.inflight.get().saturating_sub(1));
        if outcome == Outcome::Neutral {
            return false;
        }
        // One clock read at most, and none for a success without history.
        let ewma_now = started.map(|started| {
            let now = Instant::now();
            let mut e = s.ewma.get();
            match outcome {
                Outcome::Success => e.observe(now.saturating_duration_since(started), now),
                _ => e.observe_failure(now),
            }
            s.ewma.set(e);
            now
        });
        let now = || ewma_now.unwrap_or_else(Instant::now);
        if outcome == Outcome::Success {
            s.outlier
                .borrow_mut()
                .record_success(now, &self.outlier_cfg);
            return false;
        }
        let now = now();
        let mut o = s.outlier.borrow_mut();
        let may_eject = self.ejected.get() < self.outlier_cfg.max_ejected(self.servers.len());
        let change = if outcome == Outcome::Refused {
            o.record_refused(now, &self.outlier_cfg, may_eject)
        } else {
            o.record_failure(now, &self.outlier_cfg, may_eject)
        };
        let ejected = matches!(change, Change::Ejected(_));
        let out_for = match change {
            Change::None => return false,
            Change::Ejected(d) => {
                self.ejected.set(self.ejected.get() + 1);
                if !self.retired.get() {
                    self.shared(i).ejected_by.fetch_add(1, Ordering::Relaxed);
                }
                crate::warn!(
                    "worker {}: upstream {} server {}: up -> ejected for {:?} ({} consecutive failures)",
                    self.worker,
                    self.name,
                    s.addr,
                    d,
                    self.outlier_cfg.consecutive
                );
                d
            }
            Change::Held(d) => {
                crate::log::rate_limited(format_args!(
                    "worker {}: upstream {} server {}: connect refused, held back for {:?}",
                    self.worker, self.name, s.addr, d
                ));
                d
            }
        };
        self.local_generation.set(self.local_generation.get() + 1);
        let until = now + out_for;
        self.next_expiry
            .set(Some(self.next_expiry.get().map_or(until, |t| t.min(until))));
        ejected
    }

    /// Recomputes until when slow start moves some server's weight.
    fn update_ramp(&self, now: Instant) {
        if self.slow_start.is_zero() {
            return;
        }
        let epoch = self.health.epoch();
        let until = (0..self.servers.len())
            .map(|i| {
                let shared_up = self.shared(i).up_since(epoch);
                let since = self.servers[i]
                    .returned_at
                    .get()
                    .map_or(shared_up, |r| r.max(shared_up));
                if since == epoch {
                    epoch
                } else {
                    since + self.slow_start
                }
            })
            .filter(|&t| t > now)
            .max();
        self.ramp_until.set(until);
    }

    fn expire_ejections(&self, now: Instant) {
        let mut next: Option<Instant> = None;
        for (i, s) in self.servers.iter().enumerate() {
            let mut o = s.outlier.borrow_mut();
            let shared = self.shared(i);
            let checks_saw_it = shared
                .is_healthy()
                .then(|| o.back_if_up_since(shared.up_since(self.health.epoch()), now))
                .flatten();
            let ended = checks_saw_it.map(|k| (k, "active checks saw it come back"));
            let ended = ended.or_else(|| o.expire(now).map(|k| (k, "its time ran out")));
            match ended {
                Some((kind, why)) => {
                    self.local_generation.set(self.local_generation.get() + 1);
                    s.returned_at.set(Some(now));
                    if kind == Kind::Ejected {
                        self.ejected.set(self.ejected.get().saturating_sub(1));
                        if !self.retired.get() {
                            shared.ejected_by.fetch_sub(1, Ordering::Relaxed);
                        }
                        crate::info!(
                            "worker {}: upstream {} server {}: ejected -> up ({why})",
                            self.worker,
                            self.name,
                            s.addr,
                        );
                    }
                }
                None => {
                    if let Some(t) = o.out_until() {
                        next = Some(next.map_or(t, |n: Instant| n.min(t)));
                    }
                }
            }
        }
        self.next_expiry.set(next);
    }
}
