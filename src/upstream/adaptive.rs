//! Adaptive concurrency: the limit on a pool's requests in flight follows the
//! latency its servers answer with (a gradient, after Netflix's Gradient2 and
//! Envoy's adaptive concurrency filter).
//!
//! Each window (`window`, closed by the worker's housekeeping) gives the mean
//! response-head latency of the requests that ended in it: the short RTT. A
//! slow exponential average of the short RTTs is the long RTT, the latency the
//! pool has shown lately. Then
//!
//! ```text
//! gradient = clamp(tolerance x long / short, 0.5, 1.0)
//! target   = limit x gradient + sqrt(limit)
//! limit    = target                                   if target < limit (back off at once)
//!          = limit + (target - limit) x SMOOTHING     otherwise (probe slowly)
//! ```
//!
//! clamped to `[min_limit, max_limit]`. While latency stays within
//! `tolerance` of the long RTT the limit grows by about `sqrt(limit) x
//! SMOOTHING` a window (it probes for room). When latency jumps, the gradient
//! falls to 0.5 and the limit roughly halves each window, so a pool that
//! slows down gets fewer requests at once instead of a growing queue. The
//! long RTT follows a lasting change within about `1 / LONG_WEIGHT` windows
//! (a pool that stays slower is then given room again, as its new normal),
//! and falls faster (`RECOVERY`) when the short RTT drops below half of it,
//! so a pool that recovers gets its limit back within a few windows.
//!
//! Why a gradient: AIMD needs an absolute latency threshold per pool (cut
//! when latency exceeds X), which an operator would have to know and keep up
//! to date; the gradient compares the pool with itself. Why a long average
//! rather than Envoy's periodic minimum-RTT measurement: measuring the
//! minimum pins the pool to a few requests in flight every interval, which
//! sheds load on a healthy pool once a minute.

/// Weight of a window's short RTT in the long RTT.
const LONG_WEIGHT: f64 = 0.02;
/// How fast the limit moves toward its target, per window.
const SMOOTHING: f64 = 0.2;
/// Factor applied to the long RTT per window while the short RTT is below
/// half of it.
const RECOVERY: f64 = 0.8;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveConfig {
    pub min_limit: u32,
    pub max_limit: u32,
    pub initial_limit: u32,
    /// Short/long latency ratio tolerated before the limit falls.
    pub tolerance: f64,
    /// Length of a sampling window, in milliseconds.
    pub window_ms: u64,
}

impl Default for AdaptiveConfig {
    fn default() -> AdaptiveConfig {
        AdaptiveConfig {
            min_limit: 1,
            max_limit: 1000,
            initial_limit: 20,
            tolerance: 2.0,
            window_ms: 100,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Gradient {
    cfg: AdaptiveConfig,
    limit: f64,
    long_rtt_us: f64,
    /// The open window: latency sum and count, and when it opened (ms).
    sum_us: u64,
    samples: u32,
    opened_ms: u64,
}

impl Gradient {
    pub fn new(cfg: AdaptiveConfig) -> Gradient {
        Gradient {
            limit: f64::from(cfg.initial_limit.clamp(cfg.min_limit, cfg.max_limit)),
            cfg,
            long_rtt_us: 0.0,
            sum_us: 0,
            samples: 0,
            opened_ms: 0,
        }
    }

    /// The current limit (whole requests, at least `min_limit`).
    #[inline]
    pub fn limit(&self) -> u32 {
        self.limit as u32
    }

    /// A request's latency (request sent to response head), in µs.
    #[inline]
    pub fn sample(&mut self, us: u64) {
        self.sum_us += us;
        self.samples += 1;
    }

    /// Closes the window if it is due at `now_ms`; returns the new limit if
    /// it changed.
    pub fn tick(&mut self, now_ms: u64) -> Option<u32> {
        if now_ms.saturating_sub(self.opened_ms) < self.cfg.window_ms {
            return None;
        }
        self.opened_ms = now_ms;
        if self.samples == 0 {
            return None; // nothing ended: nothing learned
        }
        let short = (self.sum_us as f64 / f64::from(self.samples)).max(1.0);
        self.sum_us = 0;
        self.samples = 0;
        if self.long_rtt_us == 0.0 {
            self.long_rtt_us = short;
        } else {
            self.long_rtt_us += (short - self.long_rtt_us) * LONG_WEIGHT;
            if self.long_rtt_us > 2.0 * short {
                self.long_rtt_us *= RECOVERY;
            }
        }
        let gradient = (self.cfg.tolerance * self.long_rtt_us / short).clamp(0.5, 1.0);
        let target = self.limit * gradient + self.limit.sqrt();
        let before = self.limit();
        let next = if target < self.limit {
            target
        } else {
            self.limit + (target - self.limit) * SMOOTHING
        };
        self.limit = next.clamp(f64::from(self.cfg.min_limit), f64::from(self.cfg.max_limit));
        (self.limit() != before).then(|| self.limit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `windows` windows of `per_window` samples at `us` each.
    fn run(g: &mut Gradient, now: &mut u64, windows: usize, us: u64) {
        for _ in 0..windows {
            for _ in 0..10 {
                g.sample(us);
            }
            *now += 100;
            g.tick(*now);
        }
    }

    #[test]
    fn grows_while_latency_holds_falls_when_it_climbs_and_recovers() {
        let mut g = Gradient::new(AdaptiveConfig {
            max_limit: 200,
            ..Default::default()
        });
        let mut now = 0;
        run(&mut g, &mut now, 50, 10_000);
        let steady = g.limit();
        assert!(
            steady > 60,
            "grows toward the max while latency holds: {steady}"
        );
        run(&mut g, &mut now, 10, 200_000);
        let slowed = g.limit();
        assert!(
            slowed < steady / 3,
            "a 20x slower pool gets far fewer: {steady} -> {slowed}"
        );
        run(&mut g, &mut now, 60, 10_000);
        let back = g.limit();
        assert!(
            back > 2 * slowed,
            "recovers once latency is back: {slowed} -> {back}"
        );
    }

    #[test]
    fn stays_within_its_bounds_and_ignores_empty_windows() {
        let cfg = AdaptiveConfig {
            min_limit: 5,
            max_limit: 40,
            initial_limit: 10,
            ..Default::default()
        };
        let mut g = Gradient::new(cfg);
        let mut now = 0;
        run(&mut g, &mut now, 200, 1_000);
        assert_eq!(g.limit(), 40);
        run(&mut g, &mut now, 10, 1_000_000);
        assert_eq!(g.limit(), 5, "a 1000x slower pool falls to the floor");
        let before = g.limit();
        for _ in 0..10 {
            now += 100;
            assert_eq!(g.tick(now), None);
        }
        assert_eq!(g.limit(), before);
        // Slow for good: the new latency becomes the pool's normal and the
        // limit comes back, never past its ceiling.
        run(&mut g, &mut now, 400, 1_000_000);
        assert_eq!(g.limit(), 40);
    }

    #[test]
    fn a_window_closes_only_when_due() {
        let mut g = Gradient::new(AdaptiveConfig::default());
        g.sample(1000);
        assert_eq!(g.tick(50), None);
        assert_eq!(g.samples, 1, "the window is still open");
        g.tick(100);
        assert_eq!(g.samples, 0);
    }
}
