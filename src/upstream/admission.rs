//! Admission: how many requests one worker sends to one pool at once, and the
//! queue the rest wait in.
//!
//! A request takes a `Permit` before a server is picked and gives it back when
//! it ends, so a limited pool never has more requests in flight (nor opens more
//! connections) than its limit. Over the limit, a request waits in a FIFO
//! queue for at most `queue_timeout`, or is shed at once when the queue is
//! full or there is none. The queue allocates nothing per request: its
//! entries live in a slab sized once for the queue's capacity, and the FIFO
//! order is a ring of slab handles. A freed permit goes straight to the
//! oldest waiter (FIFO), never to a request that arrived later; a waiter that
//! leaves (timeout, client gone) frees its entry at once, and its handle left
//! in the ring is skipped.
//!
//! A queue absorbs bursts; under overload that lasts, a FIFO never empties
//! and adds its whole timeout to every admitted request. So when the queue
//! has not been empty once during a whole `queue_timeout` (a standing queue,
//! after CoDel), it switches to overload mode (adaptive LIFO, after
//! Facebook's servers): a freed slot goes to the newest waiter, and new
//! waiters wait at most `STANDING_WAIT_MS` (`queue_wait`), so admitted
//! requests keep about the servers' own latency and the excess is shed
//! within milliseconds. The mode ends after an interval in which no waiter
//! gave up (every one was served), so short lulls in a lasting overload do
//! not bring back the long waits.
//!
//! Limits are per worker: the process-wide `max_in_flight` and `queue_size`
//! are split across workers (`share`), so no counter is shared between threads.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// This worker's part of a process-wide `total` split over `workers` (the
/// first `total % workers` workers take one more). `None` stays unlimited.
pub fn share(total: Option<u32>, workers: usize, worker: usize) -> Option<u32> {
    let total = total?;
    let workers = workers.max(1) as u32;
    let base = total / workers;
    Some(base + u32::from((worker as u32) < total % workers))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitState {
    Free,
    Waiting,
    /// A permit was handed over; the waiter has not taken it yet.
    Granted,
}

#[derive(Debug)]
struct Entry {
    state: WaitState,
    /// Bumped each time the entry is reused, so a stale handle in the ring is
    /// recognised.
    generation: u32,
    waker: Option<Waker>,
}

/// A handle to a queue entry: its slab index and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Handle {
    index: u32,
    generation: u32,
}

/// The FIFO of waiting requests (capacity fixed at start).
#[derive(Debug)]
struct WaitQueue {
    entries: Vec<Entry>,
    free: Vec<u32>,
    /// Handles in arrival order; some may be stale (their waiter left).
    order: VecDeque<Handle>,
    waiting: u32,
}

impl WaitQueue {
    fn new(capacity: u32) -> WaitQueue {
        let cap = capacity as usize;
        WaitQueue {
            entries: (0..cap)
                .map(|_| Entry {
                    state: WaitState::Free,
                    generation: 0,
                    waker: None,
                })
                .collect(),
            free: (0..capacity).rev().collect(),
            // Room for every live waiter plus as many stale handles; `push`
            // drops the stale ones before the ring would grow.
            order: VecDeque::with_capacity(2 * cap),
            waiting: 0,
        }
    }

    fn is_live(&self, h: Handle) -> bool {
        let e = &self.entries[h.index as usize];
        e.generation == h.generation && e.state == WaitState::Waiting
    }

    /// Queues a waiter; None when the queue is full.
    fn push(&mut self) -> Option<Handle> {
        let index = self.free.pop()?;
        let e = &mut self.entries[index as usize];
        e.state = WaitState::Waiting;
        let h = Handle {
            index,
            generation: e.generation,
        };
        if self.order.len() == self.order.capacity() {
            let entries = &self.entries;
            self.order.retain(|&h| {
                let e = &entries[h.index as usize];
                e.generation == h.generation && e.state == WaitState::Waiting
            });
        }
        self.order.push_back(h);
        self.waiting += 1;
        Some(h)
    }

    /// Grants the oldest live waiter (the newest when `newest_first`) and
    /// wakes it; false if there is none.
    fn grant_next(&mut self, newest_first: bool) -> bool {
        loop {
            let next = if newest_first {
                self.order.pop_back()
            } else {
                self.order.pop_front()
            };
            let Some(h) = next else {
                return false;
            };
            if !self.is_live(h) {
                continue;
            }
            let e = &mut self.entries[h.index as usize];
            e.state = WaitState::Granted;
            self.waiting -= 1;
            if let Some(w) = e.waker.take() {
                w.wake();
            }
            return true;
        }
    }

    /// Frees an entry (its waiter took its grant or left).
    fn release(&mut self, h: Handle) -> WaitState {
        let e = &mut self.entries[h.index as usize];
        debug_assert_eq!(e.generation, h.generation);
        let was = e.state;
        if was == WaitState::Waiting {
            self.waiting -= 1;
        }
        e.state = WaitState::Free;
        e.generation = e.generation.wrapping_add(1);
        e.waker = None;
        self.free.push(h.index);
        was
    }
}

/// Why admission refused a request right away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// At the limit, and no queue was configured.
    Limit,
    /// At the limit and the queue is full.
    QueueFull,
}

/// The longest wait in a standing queue (ms; the timing wheel adds up to two
/// 10 ms ticks).
pub const STANDING_WAIT_MS: u64 = 10;

/// Standing-queue detection over intervals of `queue_timeout`.
#[derive(Debug, Clone, Copy, Default)]
struct Standing {
    /// When the current interval began (ms).
    since_ms: u64,
    /// The queue was empty at some point in this interval.
    drained: bool,
    /// A waiter gave up (timed out or left) in this interval.
    abandoned: bool,
    /// Overload mode: newest waiter first, short waits.
    on: bool,
}

/// One pool's admission state in one worker.
#[derive(Debug)]
pub struct Admission {
    /// The configured limit (this worker's share); `u32::MAX`: none.
    configured: u32,
    /// The limit in force: `configured`, or lower under adaptive concurrency.
    limit: Cell<u32>,
    in_flight: Cell<u32>,
    queue: RefCell<WaitQueue>,
    /// The standing-queue interval (the queue timeout, ms).
    interval_ms: u64,
    standing: Cell<Standing>,
}

impl Admission {
    /// `limit`: this worker's share of `max_in_flight` (None: unlimited);
    /// `queue`: its share of `queue_size`; `queue_timeout_ms`: the longest
    /// wait, also the standing-queue interval.
    pub fn new(limit: Option<u32>, queue: u32, queue_timeout_ms: u64) -> Admission {
        let configured = limit.unwrap_or(u32::MAX);
        Admission {
            configured,
            limit: Cell::new(configured),
            in_flight: Cell::new(0),
            queue: RefCell::new(WaitQueue::new(queue)),
            interval_ms: queue_timeout_ms.max(1),
            // Nothing seen yet: not standing.
            standing: Cell::new(Standing {
                drained: true,
                ..Standing::default()
            }),
        }
    }

    /// Whether the queue is standing (overload mode, see the module doc).
    pub fn is_standing(&self) -> bool {
        self.standing.get().on
    }

    /// How long a request entering the queue now may wait: `configured`, or
    /// `STANDING_WAIT_MS` while the queue is standing.
    pub fn queue_wait(&self, configured: std::time::Duration) -> std::time::Duration {
        if self.is_standing() {
            configured.min(std::time::Duration::from_millis(STANDING_WAIT_MS))
        } else {
            configured
        }
    }

    /// Closes a standing-queue interval when one is due at `now_ms`.
    fn observe(&self, now_ms: u64) {
        let mut st = self.standing.get();
        let gap = now_ms.saturating_sub(st.since_ms);
        if gap >= self.interval_ms {
            st.on = if gap >= 2 * self.interval_ms {
                // A whole interval passed in which no request had to queue:
                // nothing stands (and a stale flag must not keep the mode).
                false
            } else if st.on {
                st.abandoned
            } else {
                !st.drained
            };
            st.since_ms = now_ms;
            st.drained = self.queue.borrow().waiting == 0;
            st.abandoned = false;
            self.standing.set(st);
        }
    }

    /// Notes an empty queue (it drained in this interval).
    fn note_drained(&self) {
        if self.queue.borrow().waiting == 0 {
            let mut st = self.standing.get();
            st.drained = true;
            self.standing.set(st);
        }
    }

    /// Requests holding a permit now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.get()
    }

    /// Requests waiting in the queue now.
    pub fn queued(&self) -> u32 {
        self.queue.borrow().waiting
    }

    pub fn limit(&self) -> u32 {
        self.limit.get()
    }

    /// Whether the limit in force is below the configured one (adaptive).
    pub fn limit_is_adaptive(&self) -> bool {
        self.limit.get() < self.configured
    }

    /// Sets the limit in force (adaptive concurrency), never above the
    /// configured one; a higher limit admits waiters at once.
    pub fn set_limit(&self, limit: u32, room: &dyn Room) {
        self.limit.set(limit.min(self.configured).max(1));
        while self.in_flight.get() < self.limit.get() && room.room() {
            if !self.queue.borrow_mut().grant_next(self.is_standing()) {
                break;
            }
            self.in_flight.set(self.in_flight.get() + 1);
        }
    }

    /// Takes a permit at once if the limit allows and nobody waits before
    /// this request (`room`: the caller's own condition, such as a server
    /// with room under a per-server limit); otherwise queues the request, or
    /// refuses it when there is no queue or it is full.
    /// `now_ms` is read only when the request cannot enter at once (the
    /// common path reads no clock).
    pub fn enter(&self, room: bool, now_ms: impl FnOnce() -> u64) -> Result<Entered, Refused> {
        let queue_empty = self.queue.borrow().waiting == 0;
        if queue_empty && room && self.in_flight.get() < self.limit.get() {
            self.in_flight.set(self.in_flight.get() + 1);
            return Ok(Entered::Now);
        }
        if self.queue.borrow().entries.is_empty() {
            return Err(Refused::Limit);
        }
        self.observe(now_ms());
        let mut q = self.queue.borrow_mut();
        match q.push() {
            Some(h) => Ok(Entered::Queued(Queued { handle: h })),
            None => Err(Refused::QueueFull),
        }
    }

    /// A request holding a permit ended: hands the permit to the oldest
    /// waiter if `room` (the caller's condition) holds, or frees it.
    pub fn leave(&self, room: bool) {
        if room
            && self.in_flight.get() <= self.limit.get()
            && self.queue.borrow_mut().grant_next(self.is_standing())
        {
            self.note_drained();
            return; // the permit moved to the waiter
        }
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
    }

    /// Polls a queued request: ready once it was granted a permit.
    fn poll_queued(&self, q: &mut Queued, cx: &mut Context<'_>) -> Poll<()> {
        let mut queue = self.queue.borrow_mut();
        let e = &mut queue.entries[q.handle.index as usize];
        match e.state {
            WaitState::Granted => {
                queue.release(q.handle);
                q.handle.index = u32::MAX;
                Poll::Ready(())
            }
            _ => {
                if !e.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    e.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    /// A queued request gives up (timeout, client gone) before taking its
    /// permit. Returns whether it had been granted one meanwhile (the caller
    /// must then `leave` with it, so it passes on).
    fn abandon(&self, q: &mut Queued) -> bool {
        if q.handle.index == u32::MAX {
            return false;
        }
        let was = self.queue.borrow_mut().release(q.handle);
        q.handle.index = u32::MAX;
        if was != WaitState::Granted {
            let mut st = self.standing.get();
            st.abandoned = true;
            self.standing.set(st);
        }
        self.note_drained();
        was == WaitState::Granted
    }
}

/// The outcome of `Admission::enter`.
#[derive(Debug)]
pub enum Entered {
    /// A permit was taken.
    Now,
    /// The request waits in the queue: await `Wait` for its permit.
    Queued(Queued),
}

/// A request's place in the queue.
#[derive(Debug)]
pub struct Queued {
    handle: Handle,
}

/// The caller's own condition for admitting a request besides the limit (a
/// server with room under a per-server limit).
pub trait Room {
    fn room(&self) -> bool;
}

/// Always room (no condition beyond the limit).
pub struct AnyRoom;

impl Room for AnyRoom {
    fn room(&self) -> bool {
        true
    }
}

/// Waits for a queued request's permit. Dropping it before it is ready leaves
/// the queue; `room` is asked if a permit granted meanwhile must pass on.
pub struct Wait<'a> {
    admission: &'a Admission,
    queued: Queued,
    room: &'a dyn Room,
}

impl<'a> Wait<'a> {
    pub fn new(admission: &'a Admission, queued: Queued, room: &'a dyn Room) -> Wait<'a> {
        Wait {
            admission,
            queued,
            room,
        }
    }
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.admission.poll_queued(&mut this.queued, cx)
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if self.admission.abandon(&mut self.queued) {
            self.admission.leave(self.room.room());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn poll<F: Future + Unpin>(f: &mut F, waker: &Waker) -> Poll<F::Output> {
        Pin::new(f).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn a_standing_queue_serves_the_newest_with_short_waits_until_no_waiter_gives_up() {
        // Limit 1, queue 3, queue_timeout 100 ms.
        let a = Admission::new(Some(1), 3, 100);
        let long = std::time::Duration::from_millis(100);
        let waker = Waker::noop();
        assert!(matches!(a.enter(true, || 0), Ok(Entered::Now)));
        let mut w1 = Wait::new(&a, queued(a.enter(true, || 10)), &AnyRoom);
        // A burst that drains within the interval: not standing.
        a.leave(true);
        assert!(poll(&mut w1, waker).is_ready());
        drop(w1);
        // Each interval so far saw the queue empty (at 120 before w2 came).
        let mut w2 = Wait::new(&a, queued(a.enter(true, || 120)), &AnyRoom);
        let mut w3 = Wait::new(&a, queued(a.enter(true, || 240)), &AnyRoom);
        assert!(!a.is_standing());
        assert_eq!(a.queue_wait(long), long);
        // [240, 350) never saw the queue empty: standing from here.
        let mut w4 = Wait::new(&a, queued(a.enter(true, || 350)), &AnyRoom);
        assert!(a.is_standing());
        assert_eq!(a.queue_wait(long).as_millis() as u64, STANDING_WAIT_MS);
        // Newest first while standing.
        a.leave(true);
        assert!(poll(&mut w4, waker).is_ready());
        assert!(poll(&mut w2, waker).is_pending() && poll(&mut w3, waker).is_pending());
        drop(w4);
        a.leave(true);
        assert!(poll(&mut w3, waker).is_ready());
        drop((w2, w3));
        // A waiter gave up in this interval (w2): still standing.
        let mut w5 = Wait::new(&a, queued(a.enter(true, || 470)), &AnyRoom);
        assert!(a.is_standing());
        // An interval in which every waiter is served ends the mode.
        a.leave(true);
        assert!(poll(&mut w5, waker).is_ready());
        drop(w5);
        let _w6 = Wait::new(&a, queued(a.enter(true, || 580)), &AnyRoom);
        assert!(!a.is_standing(), "oldest first again");
    }

    #[test]
    fn a_standing_queue_ends_after_a_quiet_interval_even_if_its_last_waiter_gave_up() {
        let a = Admission::new(Some(1), 4, 100);
        assert!(matches!(a.enter(true, || 0), Ok(Entered::Now)));
        let w1 = Wait::new(&a, queued(a.enter(true, || 0)), &AnyRoom);
        let _w2 = Wait::new(&a, queued(a.enter(true, || 100)), &AnyRoom);
        let w3 = Wait::new(&a, queued(a.enter(true, || 200)), &AnyRoom);
        assert!(a.is_standing());
        drop((w1, w3)); // they gave up
                        // Load stops; the next request that has to queue comes much later.
        let _w4 = Wait::new(&a, queued(a.enter(true, || 5_000)), &AnyRoom);
        assert!(
            !a.is_standing(),
            "a burst after a quiet spell is absorbed again"
        );
    }

    #[test]
    fn a_fresh_queue_is_not_standing_however_late_its_first_wait() {
        let a = Admission::new(Some(1), 2, 100);
        assert!(matches!(a.enter(true, || 5_000_000), Ok(Entered::Now)));
        let _w = queued(a.enter(true, || 5_000_001));
        assert!(!a.is_standing());
    }

    fn queued(e: Result<Entered, Refused>) -> Queued {
        match e {
            Ok(Entered::Queued(q)) => q,
            other => panic!("expected to queue, got {other:?}"),
        }
    }

    #[test]
    fn shares_add_up_to_the_total() {
        for (total, workers) in [(20, 1), (20, 3), (7, 2), (1, 4), (0, 2)] {
            let sum: u32 = (0..workers)
                .map(|w| share(Some(total), workers, w).unwrap())
                .sum();
            assert_eq!(sum, total, "{total} over {workers}");
        }
        assert_eq!(share(None, 4, 0), None);
    }

    #[test]
    fn limit_without_queue_refuses_and_a_leave_makes_room() {
        let a = Admission::new(Some(2), 0, 100);
        assert!(matches!(a.enter(true, || 0), Ok(Entered::Now)));
        assert!(matches!(a.enter(true, || 0), Ok(Entered::Now)));
        assert_eq!(a.enter(true, || 0).unwrap_err(), Refused::Limit);
        a.leave(true);
        assert!(matches!(a.enter(true, || 0), Ok(Entered::Now)));
        assert_eq!(a.in_flight(), 2);
    }

    #[test]
    fn waiters_are_granted_first_in_first_out_and_newcomers_queue_behind() {
        let a = Admission::new(Some(1), 3, 100);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        assert!(matches!(a.enter(true, || 0), Ok(Entered::Now)));
        let mut w1 = Wait::new(&a, queued(a.enter(true, || 0)), &AnyRoom);
        let mut w2 = Wait::new(&a, queued(a.enter(true, || 0)), &AnyRoom);
        let mut w3 = Wait::new(&a, queued(a.enter(true, || 0)), &AnyRoom);
        assert_eq!(a.enter(true, || 0).unwrap_err(), Refused::QueueFull);
        assert!(poll(&mut w1, &waker).is_pending());
        assert!(poll(&mut w2, &waker).is_pending());
        assert!(poll(&mut w3, &waker).is_pending());
        a.leave(true); // the permit goes to w1, not to a newcomer
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert_eq!(a.in_flight(), 1);
        assert!(poll(&mut w1, &waker).is_ready());
        assert!(poll(&mut w2, &waker).is_pending());
        // A newcomer while w2 and w3 wait queues behind them (the queue has
        // room again: w1's entry was freed when it took its permit).
        let mut w4 = Wait::new(&a, queued(a.enter(true, || 0)), &AnyRoom);
        a.leave(true);
        assert!(poll(&mut w2, &waker).is_ready());
        assert!(poll(&mut w3, &waker).is_pending());
        assert!(poll(&mut w4, &waker).is_pending());
        drop((w1, w2));
        assert_eq!(a.queued(), 2);
    }

    #[test]
    fn a_waiter_that_leaves_frees_its_place_and_passes_on_a_grant() {
        let a = Admission::new(Some(1), 2, 100);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        assert!(matches!(a.enter(true, || 0), Ok(Entered::Now)));
        let mut w1 = Wait::new(&a, queued(a.enter(true, || 0)), &AnyRoom);
        let mut w2 = Wait::new(&a, queued(a.enter(true, || 0)), &AnyRoom);
        assert!(poll(&mut w1, &waker).is_pending());
        assert!(poll(&mut w2, &waker).is_pending());
        // w1 times out before any grant: its place is free at once.
        drop(w1);
        assert_eq!(a.queued(), 1);
        let w3 = Wait::new(&a, queued(a.enter(true, || 0)), &AnyRoom);
        // The permit goes to w2 (w1's stale handle is skipped) ...
        a.leave(true);
        assert_eq!(a.queued(), 1);
        // ... and w2 leaves before taking it: it passes on to w3.
        drop(w2);
        assert_eq!(a.queued(), 0);
        assert_eq!(a.in_flight(), 1);
        drop(w3); // granted and dropped: the permit is freed
        assert_eq!(a.in_flight(), 0);
    }

    #[test]
    fn stale_handles_never_grow_the_ring() {
        let a = Admission::new(Some(1), 4, 100);
        assert!(matches!(a.enter(true, || 0), Ok(Entered::Now)));
        for _ in 0..1000 {
            let w = Wait::new(&a, queued(a.enter(true, || 0)), &AnyRoom);
            drop(w);
        }
        let q = a.queue.borrow();
        assert!(q.order.capacity() <= 8, "{}", q.order.capacity());
        assert_eq!(q.waiting, 0);
    }

    #[test]
    fn a_raised_limit_admits_waiters_and_a_lowered_one_holds_them() {
        let a = Admission::new(Some(4), 4, 100);
        a.set_limit(1, &AnyRoom);
        assert!(matches!(a.enter(true, || 0), Ok(Entered::Now)));
        let w1 = Wait::new(&a, queued(a.enter(true, || 0)), &AnyRoom);
        let w2 = Wait::new(&a, queued(a.enter(true, || 0)), &AnyRoom);
        assert!(a.limit_is_adaptive());
        a.set_limit(3, &AnyRoom);
        assert_eq!(a.in_flight(), 3);
        assert_eq!(a.queued(), 0);
        a.set_limit(9, &AnyRoom);
        assert_eq!(a.limit(), 4, "never above the configured limit");
        drop((w1, w2));
    }
}
