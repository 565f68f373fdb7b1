//! Passive health (outlier ejection), per worker: a server that fails
//! `consecutive` times in a row (connect errors, 502/503/504, timeouts) is ejected
//! for a backoff that doubles with each ejection up to a cap. The pool decides
//! whether ejecting is allowed (its `max_ejection_percent`), so a shared cause
//! never ejects a whole pool. Pure: time is passed in.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct OutlierConfig {
    /// Consecutive failures that eject; 0 disables passive ejection.
    pub consecutive: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// Most of the pool (in percent) that may be ejected at once.
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive: 5,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(60),
            max_ejection_percent: 50,
        }
    }
}

impl OutlierConfig {
    /// How many of `n` servers may be ejected at once (at least one if enabled,
    /// never all of a pool of more than one).
    pub fn max_ejected(&self, n: usize) -> usize {
        let by_percent = n * self.max_ejection_percent as usize / 100;
        by_percent.max(1).min(n.saturating_sub(1).max(1))
    }
}

#[derive(Debug, Default, Clone)]
pub struct Outlier {
    failures: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
    ejected_at: Option<Instant>,
}

/// What a recorded outcome changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    None,
    Ejected(Duration),
}

impl Outlier {
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| now < t)
    }

    pub fn ejected_until(&self) -> Option<Instant> {
        self.ejected_until
    }

    /// Clears an ejection that has run out; true if it did.
    pub fn expire(&mut self, now: Instant) -> bool {
        if self.ejected_until.is_some_and(|t| now >= t) {
            self.ejected_until = None;
            return true;
        }
        false
    }

    /// Clears the ejection if active checks saw the server come up after it
    /// was ejected (a restarted server need not sit out its backoff).
    pub fn uneject_if_up_since(&mut self, up_since: Instant) -> bool {
        if self.ejected_until.is_some() && self.ejected_at.is_some_and(|at| up_since > at) {
            self.ejected_until = None;
            self.failures = 0;
            return true;
        }
        false
    }

    /// Records a success. `now` is only asked for when earlier ejections may be
    /// forgotten, so the common case reads no clock.
    pub fn record_success(&mut self, now: impl FnOnce() -> Instant, cfg: &OutlierConfig) {
        self.failures = 0;
        // A long healthy stretch forgets earlier ejections.
        if self.ejections > 0 {
            let now = now();
            if self
                .ejected_until
                .is_none_or(|t| now >= t + cfg.max_ejection)
            {
                self.ejections = 0;
            }
        }
    }

    /// Records a failure; ejects when the streak reaches the threshold and the
    /// pool allows one more ejection.
    pub fn record_failure(&mut self, now: Instant, cfg: &OutlierConfig, may_eject: bool) -> Change {
        if cfg.consecutive == 0 || self.is_ejected(now) {
            return Change::None;
        }
        self.failures += 1;
        if self.failures < cfg.consecutive || !may_eject {
            return Change::None;
        }
        self.failures = 0;
        self.ejections += 1;
        let factor = 1u32 << (self.ejections - 1).min(16);
        let d = cfg
            .base_ejection
            .saturating_mul(factor)
            .min(cfg.max_ejection);
        self.ejected_until = Some(now + d);
        self.ejected_at = Some(now);
        Change::Ejected(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejects_after_streak_with_doubling_capped_backoff() {
        let cfg = OutlierConfig {
            consecutive: 3,
            ..OutlierConfig::default()
        };
        let t0 = Instant::now();
        let mut o = Outlier::default();
        assert_eq!(o.record_failure(t0, &cfg, true), Change::None);
        o.record_success(|| t0, &cfg);
        assert_eq!(o.record_failure(t0, &cfg, true), Change::None);
        assert_eq!(o.record_failure(t0, &cfg, true), Change::None);
        assert_eq!(
            o.record_failure(t0, &cfg, true),
            Change::Ejected(Duration::from_secs(5))
        );
        assert!(o.is_ejected(t0 + Duration::from_secs(4)));
        let t1 = t0 + Duration::from_secs(5);
        assert!(o.expire(t1));
        for _ in 0..2 {
            o.record_failure(t1, &cfg, true);
        }
        assert_eq!(
            o.record_failure(t1, &cfg, true),
            Change::Ejected(Duration::from_secs(10))
        );
        let mut t = t1;
        let mut last = Duration::ZERO;
        for _ in 0..6 {
            t += Duration::from_secs(120);
            o.expire(t);
            for _ in 0..2 {
                o.record_failure(t, &cfg, true);
            }
            if let Change::Ejected(d) = o.record_failure(t, &cfg, true) {
                last = d;
            }
        }
        assert_eq!(last, Duration::from_secs(60), "capped");
    }

    #[test]
    fn pool_cap_prevents_ejection() {
        let cfg = OutlierConfig {
            consecutive: 1,
            ..OutlierConfig::default()
        };
        let mut o = Outlier::default();
        assert_eq!(o.record_failure(Instant::now(), &cfg, false), Change::None);
        assert_eq!(cfg.max_ejected(3), 1);
        assert_eq!(cfg.max_ejected(10), 5);
        assert_eq!(cfg.max_ejected(1), 1);
        let all = OutlierConfig {
            max_ejection_percent: 100,
            ..cfg
        };
        assert_eq!(all.max_ejected(4), 3, "never the whole pool");
    }
}
