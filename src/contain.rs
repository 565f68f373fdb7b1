//! Panics stop at the task boundary. monoio does not catch a panic in a task:
//! it would unwind through the worker's event loop and take every connection
//! of the worker down with it. Each connection task runs inside `CatchUnwind`,
//! so a panic ends only that connection (its future, and with it its sockets
//! and buffers, is dropped); the panic hook logs it once, with its message
//! and place, and counts it (`panics`, shown in `/status`). A thread that dies
//! anyway is noticed by the main thread, which then stops the process with a
//! non-zero status (see `runtime::Running::wait`).
//!
//! Debug builds (the test suite's) also carry test hooks, off unless the
//! environment sets `RINGLB_TEST_HOOKS=1`: a request with the field
//! `X-Ringlb-Test-Panic: request` panics inside its connection task, one with
//! `worker` makes its worker thread panic outside any task.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

static PANICS: AtomicU64 = AtomicU64::new(0);

/// Panics seen since start (every thread).
pub fn panics() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

/// Logs every panic as one error line (thread, place, message) and counts it.
pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        let thread = std::thread::current();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        crate::error!(
            "panic in thread {} at {place}: {message}",
            thread.name().unwrap_or("?")
        );
    }));
}

/// A future whose panics end it (with `Err`) instead of unwinding further.
pub struct CatchUnwind<F> {
    inner: F,
}

impl<F: Future> CatchUnwind<F> {
    pub fn new(inner: F) -> CatchUnwind<F> {
        CatchUnwind { inner }
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `inner` is structurally pinned: it is never moved out of
        // `self`, and after a panic it is only dropped in place with `self`.
        let inner = unsafe { self.map_unchecked_mut(|s| &mut s.inner) };
        // The future is not polled again after a panic, so whatever state the
        // panic left it in is only ever dropped.
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

#[cfg(debug_assertions)]
pub mod test_hooks {
    //! See the module doc above: compiled into debug builds only, and inert
    //! unless `RINGLB_TEST_HOOKS=1`.
    use std::cell::Cell;
    use std::sync::OnceLock;

    fn enabled() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| std::env::var("RINGLB_TEST_HOOKS").as_deref() == Ok("1"))
    }

    thread_local! {
        static WORKER_PANIC: Cell<bool> = const { Cell::new(false) };
    }

    /// Acts on `X-Ringlb-Test-Panic` in a request head.
    pub fn on_request(headers: &[httparse::Header<'_>]) {
        if !enabled() {
            return;
        }
        for h in headers {
            if h.name.eq_ignore_ascii_case("x-ringlb-test-panic") {
                match h.value {
                    b"request" => panic!("test hook: a panic inside a connection task"),
                    b"worker" => WORKER_PANIC.with(|w| w.set(true)),
                    _ => {}
                }
            }
        }
    }

    /// True once if a request asked this worker thread to panic.
    pub fn worker_panic_requested() -> bool {
        WORKER_PANIC.with(|w| w.replace(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    #[test]
    fn a_panicking_future_ends_with_err_and_is_dropped() {
        let dropped = std::rc::Rc::new(());
        let witness = dropped.clone();
        let mut f = Box::pin(CatchUnwind::new(async move {
            let _keep = witness;
            if std::hint::black_box(true) {
                panic!("boom");
            }
        }));
        let mut cx = Context::from_waker(Waker::noop());
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let r = f.as_mut().poll(&mut cx);
        std::panic::set_hook(prev);
        assert_eq!(r, Poll::Ready(Err(())));
        drop(f);
        assert_eq!(std::rc::Rc::strong_count(&dropped), 1);
    }
}
