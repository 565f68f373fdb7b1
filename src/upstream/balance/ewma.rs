//! Peak-EWMA latency estimate (as in linkerd2-proxy and Finagle): a sample
//! above the estimate replaces it at once (peak), samples below decay into it
//! with a time constant. Failures record a penalty latency. The balancer cost is
//! `estimate x (in-flight + 1)`, compared by power of two choices.

use std::time::{Duration, Instant};

/// Estimate used before any sample (and after a long silence decays to it).
pub const DEFAULT_RTT: Duration = Duration::from_millis(1);
/// Latency recorded for a failed request.
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);
/// Decay time constant.
pub const TAU: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub struct PeakEwma {
    estimate_ns: f64,
    stamp: Option<Instant>,
}

impl Default for PeakEwma {
    fn default() -> Self {
        PeakEwma {
            estimate_ns: DEFAULT_RTT.as_nanos() as f64,
            stamp: None,
        }
    }
}

impl PeakEwma {
    /// Records one observed latency at time `now`.
    pub fn observe(&mut self, rtt: Duration, now: Instant) {
        let sample = rtt.as_nanos() as f64;
        let current = self.decayed(now);
        self.estimate_ns = if sample > current {
            sample
        } else {
            let elapsed = self
                .stamp
                .map_or(0.0, |s| now.saturating_duration_since(s).as_nanos() as f64);
            let w = (-elapsed / TAU.as_nanos() as f64).exp();
            current * w + sample * (1.0 - w)
        };
        self.stamp = Some(now);
    }

    pub fn observe_failure(&mut self, now: Instant) {
        self.observe(FAILURE_PENALTY, now);
    }

    /// The estimate as of `now` (decays toward the default when idle).
    pub fn decayed(&self, now: Instant) -> f64 {
        match self.stamp {
            None => self.estimate_ns,
            Some(s) => {
                let elapsed = now.saturating_duration_since(s).as_nanos() as f64;
                let w = (-elapsed / TAU.as_nanos() as f64).exp();
                self.estimate_ns * w + DEFAULT_RTT.as_nanos() as f64 * (1.0 - w)
            }
        }
    }

    /// The estimate at the last update, without consulting the clock (hot path).
    #[inline]
    pub fn estimate_ns(&self) -> f64 {
        self.estimate_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_jump_and_lows_decay() {
        let t0 = Instant::now();
        let mut e = PeakEwma::default();
        e.observe(Duration::from_millis(50), t0);
        assert_eq!(e.estimate_ns(), 50e6, "a peak replaces the estimate");
        e.observe(Duration::from_millis(1), t0 + Duration::from_secs(1));
        let after_one = e.estimate_ns();
        assert!(after_one < 50e6 && after_one > 40e6, "{after_one}");
        for k in 2..60 {
            e.observe(Duration::from_millis(1), t0 + Duration::from_secs(k));
        }
        assert!(e.estimate_ns() < 2e6, "{}", e.estimate_ns());
        e.observe_failure(t0 + Duration::from_secs(61));
        assert_eq!(e.estimate_ns(), FAILURE_PENALTY.as_nanos() as f64);
    }
}
