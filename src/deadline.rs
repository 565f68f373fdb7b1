//! Per-thread coarse deadlines: the timeouts of every socket operation.
//!
//! A `Timer` is one reusable entry in this thread's timing wheel. Arming it is a
//! store (its deadline) and, only when the entry is not yet in the wheel or would
//! fire too late where it sits, an O(1) link. The wheel is advanced by one ticker
//! task per thread every `TICK_MS` while any entry is linked; an entry found in a
//! slot before its (moved) deadline is relinked then, so a connection that re-arms
//! on every operation costs the wheel about one relink per timeout period.
//!
//! This replaces a runtime timer per operation: no timer struct inside every
//! pending read (monoio's is 640 bytes), no wheel insert and remove per read, and
//! one coarse clock read per arm. Deadlines fire between the timeout and the
//! timeout plus two ticks; they never fire early.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Wheel resolution in milliseconds.
pub const TICK_MS: u64 = 10;
/// Slots in the wheel (a deadline further away than this wraps and is relinked).
const SLOTS: usize = 1024;
const NONE: u32 = u32::MAX;
const DISARMED: u64 = u64::MAX;

#[derive(Debug)]
struct Entry {
    /// Tick at which the entry fires; `DISARMED` when no operation is timed.
    deadline: u64,
    /// Tick of the slot the entry is linked into; `DISARMED` when unlinked.
    linked_at: u64,
    prev: u32,
    next: u32,
    fired: bool,
    waker: Option<Waker>,
}

/// Entries per page of the slab.
const PAGE: usize = 512;

/// The entry slab, in fixed-size pages: growing never copies, and capacity
/// exceeds use by less than a page. (A doubling `Vec` here held up to twice
/// what it used: ~260 bytes per connection after a burst of 3,000.)
#[derive(Debug, Default)]
struct Pages {
    pages: Vec<Vec<Entry>>,
    len: usize,
}

impl Pages {
    fn push(&mut self, e: Entry) -> u32 {
        if self.len % PAGE == 0 {
            self.pages.push(Vec::with_capacity(PAGE));
        }
        self.pages[self.len / PAGE].push(e);
        self.len += 1;
        (self.len - 1) as u32
    }
}

impl std::ops::Index<u32> for Pages {
    type Output = Entry;
    #[inline]
    fn index(&self, id: u32) -> &Entry {
        &self.pages[id as usize / PAGE][id as usize % PAGE]
    }
}

impl std::ops::IndexMut<u32> for Pages {
    #[inline]
    fn index_mut(&mut self, id: u32) -> &mut Entry {
        &mut self.pages[id as usize / PAGE][id as usize % PAGE]
    }
}

/// The timing wheel: entries in a slab, each slot a doubly linked list through it.
#[derive(Debug)]
pub struct Wheel {
    entries: Pages,
    free: u32,
    heads: Box<[u32]>,
    linked: usize,
    /// Every tick up to and including this one has been processed.
    done: u64,
    ticker: Option<Waker>,
    ticker_running: bool,
}

impl Default for Wheel {
    fn default() -> Self {
        Wheel::new()
    }
}

impl Wheel {
    pub fn new() -> Wheel {
        Wheel {
            entries: Pages::default(),
            free: NONE,
            heads: vec![NONE; SLOTS].into_boxed_slice(),
            linked: 0,
            done: 0,
            ticker: None,
            ticker_running: false,
        }
    }

    /// A fresh, disarmed entry (reusing a freed one when there is any).
    pub fn alloc(&mut self) -> u32 {
        let fresh = Entry {
            deadline: DISARMED,
            linked_at: DISARMED,
            prev: NONE,
            next: NONE,
            fired: false,
            waker: None,
        };
        if self.free != NONE {
            let id = self.free;
            self.free = self.entries[id].next;
            self.entries[id] = fresh;
            id
        } else {
            self.entries.push(fresh)
        }
    }

    /// Returns an entry to the free list.
    pub fn release(&mut self, id: u32) {
        self.unlink(id);
        let e = &mut self.entries[id];
        e.waker = None;
        e.deadline = DISARMED;
        e.next = self.free;
        self.free = id;
    }

    /// Sets the entry to fire at tick `deadline` (`now` is the current tick).
    pub fn arm(&mut self, id: u32, deadline: u64, now: u64) {
        let e = &mut self.entries[id];
        e.deadline = deadline;
        e.fired = false;
        if e.linked_at != DISARMED && e.linked_at <= deadline {
            return; // found there early and relinked then
        }
        self.unlink(id);
        if self.linked == 0 {
            self.done = now;
        }
        self.link(id, deadline.max(self.done + 1));
    }

    pub fn disarm(&mut self, id: u32) {
        let e = &mut self.entries[id];
        e.deadline = DISARMED;
        e.fired = false;
    }

    /// Whether the entry's deadline passed; otherwise remembers `waker` to wake then.
    pub fn poll_fired(&mut self, id: u32, waker: &Waker) -> bool {
        let e = &mut self.entries[id];
        if e.fired {
            return true;
        }
        match &e.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => e.waker = Some(waker.clone()),
        }
        false
    }

    /// Whether any entry is linked (the ticker parks when none is).
    pub fn is_empty(&self) -> bool {
        self.linked == 0
    }

    /// Processes every tick up to `now`: fires due entries (waking their tasks),
    /// drops disarmed ones from the wheel and relinks those whose deadline moved.
    pub fn advance(&mut self, now: u64) {
        if now <= self.done {
            return;
        }
        let first = if now - self.done > SLOTS as u64 {
            now - SLOTS as u64 + 1
        } else {
            self.done + 1
        };
        for tick in first..=now {
            let slot = (tick % SLOTS as u64) as usize;
            let mut id = std::mem::replace(&mut self.heads[slot], NONE);
            while id != NONE {
                let next = self.entries[id].next;
                self.linked -= 1;
                let e = &mut self.entries[id];
                e.linked_at = DISARMED;
                e.prev = NONE;
                e.next = NONE;
                if e.deadline == DISARMED {
                    // no operation is timed: out of the wheel until armed again
                } else if e.deadline <= now {
                    e.deadline = DISARMED;
                    e.fired = true;
                    if let Some(w) = e.waker.take() {
                        w.wake();
                    }
                } else {
                    let at = e.deadline;
                    self.link(id, at);
                }
                id = next;
            }
        }
        self.done = now;
    }

    fn link(&mut self, id: u32, at: u64) {
        let slot = (at % SLOTS as u64) as usize;
        let head = self.heads[slot];
        {
            let e = &mut self.entries[id];
            e.linked_at = at;
            e.prev = NONE;
            e.next = head;
        }
        if head != NONE {
            self.entries[head].prev = id;
        }
        self.heads[slot] = id;
        self.linked += 1;
    }

    fn unlink(&mut self, id: u32) {
        let (at, prev, next) = {
            let e = &self.entries[id];
            (e.linked_at, e.prev, e.next)
        };
        if at == DISARMED {
            return;
        }
        if prev != NONE {
            self.entries[prev].next = next;
        } else {
            self.heads[(at % SLOTS as u64) as usize] = next;
        }
        if next != NONE {
            self.entries[next].prev = prev;
        }
        let e = &mut self.entries[id];
        e.linked_at = DISARMED;
        e.prev = NONE;
        e.next = NONE;
        self.linked -= 1;
    }
}

thread_local! {
    static WHEEL: RefCell<Wheel> = RefCell::new(Wheel::new());
}

/// Milliseconds of the coarse monotonic clock (a cheap vDSO read, no syscall;
/// resolution a few milliseconds): for timeouts, not for latency measurements.
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; COARSE is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// The current wheel tick.
pub fn now_tick() -> u64 {
    now_ms() / TICK_MS
}

/// Ticks to add to the current one so that at least `timeout` passes.
fn ticks_for(timeout: Duration) -> u64 {
    let ms = timeout.as_millis().min(u64::MAX as u128 / 2) as u64;
    ms.div_ceil(TICK_MS) + 1
}

/// One reusable deadline, owned by one connection side. Awaited by one task at a time.
///
/// A timer takes its wheel entry when first armed. A `transient` one gives it
/// back whenever it is disarmed (for sides that are timed only now and then,
/// such as a connection's writes: an idle keep-alive connection then holds a
/// single entry, the one its idle wait needs).
#[derive(Debug)]
pub struct Timer {
    id: Cell<u32>,
    transient: bool,
    /// The entry lives in this thread's wheel: the timer must not leave the thread.
    _not_send: PhantomData<*const ()>,
}

impl Default for Timer {
    fn default() -> Self {
        Timer::new()
    }
}

impl Timer {
    /// A timer that keeps its wheel entry once it has one (cheapest re-arming).
    pub fn new() -> Timer {
        Timer {
            id: Cell::new(NONE),
            transient: false,
            _not_send: PhantomData,
        }
    }

    /// A timer that holds a wheel entry only while armed.
    pub fn transient() -> Timer {
        Timer {
            id: Cell::new(NONE),
            transient: true,
            _not_send: PhantomData,
        }
    }

    /// Sets the deadline `timeout` from now (replacing any earlier one).
    pub fn arm(&self, timeout: Duration) {
        let now = now_tick();
        let wake_ticker = WHEEL.with(|w| {
            let mut w = w.borrow_mut();
            let mut id = self.id.get();
            if id == NONE {
                id = w.alloc();
                self.id.set(id);
            }
            w.arm(id, now + ticks_for(timeout), now);
            if !w.ticker_running {
                w.ticker_running = true;
                monoio::spawn(ticker());
                return None;
            }
            w.ticker.take()
        });
        if let Some(t) = wake_ticker {
            t.wake();
        }
    }

    pub fn disarm(&self) {
        let id = self.id.get();
        if id == NONE {
            return;
        }
        WHEEL.with(|w| {
            let mut w = w.borrow_mut();
            if self.transient {
                w.release(id);
                self.id.set(NONE);
            } else {
                w.disarm(id);
            }
        });
    }

    /// Runs `f` until it completes (`Some`) or this timer's deadline passes
    /// (`None`; `f` is dropped, which cancels its in-flight operation).
    pub fn race<F: Future>(&self, f: F) -> Race<'_, F> {
        Race {
            timer: self,
            f,
            disarm: false,
        }
    }

    /// Arms for `timeout` and runs `f` within it; disarms when done.
    pub fn within<F: Future>(&self, timeout: Duration, f: F) -> Race<'_, F> {
        self.arm(timeout);
        Race {
            timer: self,
            f,
            disarm: true,
        }
    }
}

/// A future raced against a `Timer` (a plain struct rather than an `async fn`,
/// so that it adds 16 bytes to the future it wraps, not a copy of it).
pub struct Race<'t, F> {
    timer: &'t Timer,
    f: F,
    disarm: bool,
}

impl<F: Future> Future for Race<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `f` is structurally pinned: it is never moved out of `self`,
        // and `Race` has no Unpin impl of its own beyond what `F` allows.
        let this = unsafe { self.get_unchecked_mut() };
        let f = unsafe { Pin::new_unchecked(&mut this.f) };
        if let Poll::Ready(r) = f.poll(cx) {
            return Poll::Ready(Some(r));
        }
        let id = this.timer.id.get();
        if id != NONE && WHEEL.with(|w| w.borrow_mut().poll_fired(id, cx.waker())) {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

impl<F> Drop for Race<'_, F> {
    fn drop(&mut self) {
        if self.disarm {
            self.timer.disarm();
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let id = self.id.get();
        if id == NONE {
            return;
        }
        // try_with: thread-local teardown may already have dropped the wheel.
        let _ = WHEEL.try_with(|w| {
            if let Ok(mut w) = w.try_borrow_mut() {
                w.release(id);
            }
        });
    }
}

/// Advances this thread's wheel every tick while it holds entries; parks otherwise.
async fn ticker() {
    loop {
        let parked = poll_fn(|cx| {
            WHEEL.with(|w| {
                let mut w = w.borrow_mut();
                if w.is_empty() {
                    w.ticker = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    w.ticker = None;
                    Poll::Ready(())
                }
            })
        });
        parked.await;
        monoio::time::sleep(Duration::from_millis(TICK_MS)).await;
        let now = now_tick();
        WHEEL.with(|w| w.borrow_mut().advance(now));
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
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn fires_at_deadline_not_before() {
        let mut w = Wheel::new();
        let (count, wk) = waker();
        let id = w.alloc();
        w.arm(id, 105, 100);
        assert!(!w.poll_fired(id, &wk));
        w.advance(104);
        assert!(!w.poll_fired(id, &wk));
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        w.advance(105);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(w.poll_fired(id, &wk));
        assert!(w.is_empty());
    }

    #[test]
    fn rearming_later_relinks_lazily_and_earlier_relinks_now() {
        let mut w = Wheel::new();
        let (count, wk) = waker();
        let id = w.alloc();
        w.arm(id, 110, 100);
        w.poll_fired(id, &wk);
        w.arm(id, 150, 100); // later: stays in slot 110
        w.advance(120);
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            0,
            "moved deadline must not fire"
        );
        assert!(!w.is_empty(), "relinked at its new deadline");
        w.arm(id, 125, 120); // earlier than where it sits (150): relinked now
        w.advance(125);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn disarmed_entries_leave_the_wheel_without_firing() {
        let mut w = Wheel::new();
        let (count, wk) = waker();
        let id = w.alloc();
        w.arm(id, 103, 100);
        w.poll_fired(id, &wk);
        w.disarm(id);
        w.advance(200);
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        assert!(w.is_empty());
        assert!(!w.poll_fired(id, &wk));
    }

    #[test]
    fn far_deadlines_wrap_around_the_wheel() {
        let mut w = Wheel::new();
        let (count, wk) = waker();
        let id = w.alloc();
        let far = 100 + 3 * SLOTS as u64 + 7;
        w.arm(id, far, 100);
        w.poll_fired(id, &wk);
        for t in (101..far).step_by(97) {
            w.advance(t);
        }
        w.advance(far - 1);
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        w.advance(far);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_long_pause_still_fires_everything_due() {
        let mut w = Wheel::new();
        let (count, wk) = waker();
        let ids: Vec<u32> = (0..50).map(|_| w.alloc()).collect();
        for (i, &id) in ids.iter().enumerate() {
            w.arm(id, 101 + i as u64 * 37, 100);
            w.poll_fired(id, &wk);
        }
        w.advance(100 + 10 * SLOTS as u64);
        assert_eq!(count.0.load(Ordering::SeqCst), 50);
        assert!(w.is_empty());
    }

    #[test]
    fn entries_on_several_pages_link_and_fire() {
        let mut w = Wheel::new();
        let (count, wk) = waker();
        let n = 2 * PAGE + 5;
        let ids: Vec<u32> = (0..n).map(|_| w.alloc()).collect();
        assert_eq!(ids.last(), Some(&((n - 1) as u32)));
        for (i, &id) in ids.iter().enumerate() {
            w.arm(id, 101 + (i % 7) as u64, 100);
            w.poll_fired(id, &wk);
        }
        w.advance(107);
        assert_eq!(count.0.load(Ordering::SeqCst), n);
        assert!(w.is_empty());
    }

    #[test]
    fn a_transient_timer_holds_an_entry_only_while_armed() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let linked = || WHEEL.with(|w| w.borrow().linked);
            let (persistent, transient) = (Timer::new(), Timer::transient());
            assert_eq!((persistent.id.get(), transient.id.get()), (NONE, NONE));
            persistent.arm(Duration::from_secs(5));
            transient.arm(Duration::from_secs(5));
            assert_eq!(linked(), 2);
            transient.disarm();
            assert_eq!(transient.id.get(), NONE, "entry given back");
            assert_eq!(linked(), 1);
            persistent.disarm();
            assert_ne!(persistent.id.get(), NONE, "kept for cheap re-arming");
            // A transient timer still times out what it races.
            let late = transient.within(Duration::from_millis(30), std::future::pending::<()>());
            assert_eq!(late.await, None);
            assert_eq!(transient.id.get(), NONE);
        });
    }

    #[test]
    fn released_entries_are_unlinked_and_reused() {
        let mut w = Wheel::new();
        let a = w.alloc();
        let b = w.alloc();
        w.arm(a, 110, 100);
        w.arm(b, 110, 100);
        w.release(a);
        let c = w.alloc();
        assert_eq!(c, a, "freed entry reused");
        let (count, wk) = waker();
        w.poll_fired(b, &wk);
        w.advance(110);
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "b still fires after a was unlinked"
        );
        assert!(w.is_empty());
    }
}
