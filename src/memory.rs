//! Giving memory back after a burst. Pools keep what steady traffic needs; a
//! burst (thousands of clients sending or closing at once) can take far more
//! buffers and request blocks than that for a moment. Once the worker has been
//! quiet for a little while, the free lists shrink back to their base size and
//! the allocator returns the pages this thread freed to the kernel.

use crate::{buf, pooled};

/// Free buffers and request blocks a worker pre-fills at start and keeps
/// after a trim.
pub const BASE_FREE: usize = 64;

/// Observations (50 ms apart) without a new request before a trim.
const QUIET_OBSERVATIONS: u32 = 2;

/// Decides when to trim: after activity, once the worker went quiet.
#[derive(Debug, Default)]
pub struct QuietWatch {
    last_started: u64,
    quiet_for: u32,
    dirty: bool,
}

impl QuietWatch {
    /// Feeds the worker's request counter and in-flight count; true when it is
    /// time to trim (once per burst).
    pub fn observe(&mut self, started: u64, busy: usize) -> bool {
        if started != self.last_started || busy > 0 {
            self.last_started = started;
            self.quiet_for = 0;
            self.dirty = true;
            return false;
        }
        self.quiet_for += 1;
        if self.dirty && self.quiet_for >= QUIET_OBSERVATIONS {
            self.dirty = false;
            return true;
        }
        false
    }
}

/// Shrinks this thread's pools to `BASE_FREE` and lets the allocator return
/// freed pages to the kernel.
pub fn trim() {
    buf::trim(BASE_FREE);
    pooled::trim(BASE_FREE);
    release_free_pages();
}

#[cfg(feature = "mimalloc")]
fn release_free_pages() {
    // SAFETY: mi_collect only walks the calling thread's mimalloc heap.
    unsafe { libmimalloc_sys::mi_collect(false) };
}

#[cfg(not(feature = "mimalloc"))]
fn release_free_pages() {
    // SAFETY: malloc_trim has no preconditions; it releases free pages of the
    // malloc arenas (taking their locks briefly, off the request path).
    unsafe { libc::malloc_trim(0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_after_a_burst_goes_quiet() {
        let mut w = QuietWatch::default();
        assert!(!w.observe(0, 0), "nothing happened yet");
        assert!(!w.observe(0, 0));
        assert!(!w.observe(10, 3), "busy");
        assert!(!w.observe(20, 0), "still starting requests");
        assert!(!w.observe(20, 0), "quiet for one observation");
        assert!(w.observe(20, 0), "quiet for two: trim");
        assert!(!w.observe(20, 0), "only once per burst");
        assert!(!w.observe(21, 0));
        assert!(!w.observe(21, 0));
        assert!(w.observe(21, 0), "the next burst trims again");
    }

    #[test]
    fn a_long_request_in_flight_postpones_the_trim() {
        let mut w = QuietWatch::default();
        assert!(!w.observe(5, 1));
        assert!(!w.observe(5, 1));
        assert!(!w.observe(5, 1));
        assert!(!w.observe(5, 0));
        assert!(w.observe(5, 0));
    }
}
