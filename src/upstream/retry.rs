//! Retry budget, per worker and pool, after Finagle's and linkerd's: over a
//! sliding window of `WINDOW_SECS` seconds, retries may add at most `ratio` of
//! the requests of the window plus a floor of `min_per_second` x the window:
//!
//! ```text
//! retries in window + 1 <= min_per_second x WINDOW_SECS + ratio x requests in window
//! ```
//!
//! With the defaults (ratio 0.2, 10 per second) a worker may retry 100 times
//! in any 10 s however little traffic there is, and a fifth of its requests
//! beyond that. That covers the burst one dead server out of N causes (every
//! request in flight to it fails at the same instant and is retried elsewhere:
//! about 1/N of the worker's concurrency, all at once), which a small token
//! bucket refused, while a pool whose every server fails is sent at most
//! 1.2x its requests (plus the floor) instead of `1 + retries` times as many.
//!
//! Envoy's alternative caps retries *in flight* (a share of active requests);
//! it does not bound retries that fail fast, such as refused connects or a
//! server that closes at once, which is the storm seen most here.
//!
//! Time is passed in whole seconds by the worker's housekeeping (`advance`),
//! so counting a request reads no clock.

/// Seconds the budget looks back.
pub const WINDOW_SECS: usize = 10;

#[derive(Debug, Clone)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: u32,
    /// Requests and retries per second of the window, a ring indexed by second.
    requests: [u32; WINDOW_SECS],
    retries: [u32; WINDOW_SECS],
    /// The second the last bucket belongs to.
    second: u64,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_second: u32) -> RetryBudget {
        RetryBudget {
            ratio,
            min_per_second,
            requests: [0; WINDOW_SECS],
            retries: [0; WINDOW_SECS],
            second: 0,
        }
    }

    fn bucket(&self) -> usize {
        (self.second % WINDOW_SECS as u64) as usize
    }

    /// Moves the window to `second` (monotonic), forgetting what fell out of it.
    pub fn advance(&mut self, second: u64) {
        if second <= self.second {
            return;
        }
        let steps = (second - self.second).min(WINDOW_SECS as u64);
        for k in 1..=steps {
            let b = ((self.second + k) % WINDOW_SECS as u64) as usize;
            self.requests[b] = 0;
            self.retries[b] = 0;
        }
        self.second = second;
    }

    #[inline]
    pub fn on_request(&mut self) {
        let b = self.bucket();
        self.requests[b] = self.requests[b].saturating_add(1);
    }

    /// Retries the budget allows in the current window.
    pub fn allowed(&self) -> f64 {
        let requests: u64 = self.requests.iter().map(|&r| u64::from(r)).sum();
        f64::from(self.min_per_second) * WINDOW_SECS as f64 + self.ratio * requests as f64
    }

    /// Spends one retry if the window allows one more.
    pub fn try_retry(&mut self) -> bool {
        let spent: u64 = self.retries.iter().map(|&r| u64::from(r)).sum();
        if (spent + 1) as f64 > self.allowed() {
            return false;
        }
        let b = self.bucket();
        self.retries[b] += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sick_pool_gets_the_ratio_plus_the_floor() {
        let mut b = RetryBudget::new(0.2, 10);
        let mut retries = 0;
        for _ in 0..1000 {
            b.on_request();
            // every request wants 3 retries
            for _ in 0..3 {
                if b.try_retry() {
                    retries += 1;
                }
            }
        }
        assert_eq!(retries, 100 + 200);
    }

    #[test]
    fn a_burst_after_steady_traffic_is_covered() {
        let mut b = RetryBudget::new(0.2, 10);
        // 1 s of healthy traffic at 20k req/s, then a third of 60 in-flight
        // requests fail at once.
        b.advance(1);
        for _ in 0..20_000 {
            b.on_request();
        }
        assert!((0..20).all(|_| b.try_retry()));
        // Even without traffic, the floor covers a small burst.
        let mut idle = RetryBudget::new(0.2, 10);
        assert!((0..100).all(|_| idle.try_retry()));
        assert!(!idle.try_retry());
    }

    #[test]
    fn the_window_forgets_old_seconds() {
        let mut b = RetryBudget::new(0.0, 1);
        b.advance(100);
        assert!((0..10).all(|_| b.try_retry()));
        assert!(!b.try_retry());
        b.advance(105);
        assert!(!b.try_retry(), "all ten still in the window");
        b.advance(110);
        assert!((0..10).all(|_| b.try_retry()), "second 100 left the window");
        assert!(!b.try_retry());
        b.advance(1000);
        assert!(
            (0..10).all(|_| b.try_retry()),
            "a long gap clears everything"
        );
    }
}
