//! Passive health, per worker. Two ways a server stops taking requests:
//!
//! - **Ejection**: after `consecutive` failures in a row (connect errors,
//!   502/503/504, timeouts, resets) a server is ejected for a backoff that
//!   doubles with each ejection up to a cap. Ejections are ambiguous evidence
//!   (a shared cause, or a client whose requests make the backend fail, can
//!   produce them), so the pool caps them (`max_ejection_percent`) and never
//!   ejects the only server of a pool.
//! - **Refusal hold**: a refused connect is certain (the host said nothing
//!   listens there) and cheap to learn, so the server is held back for
//!   `REFUSED_HOLD` at once, without waiting for a streak and without the cap:
//!   the worker's other requests stop picking it immediately. The refusal also
//!   counts toward the ejection streak, so a server that stays down is ejected
//!   with backoff like any other.
//!
//! Either ends early when active checks see the server come back. Pure: time is
//! passed in.

use std::time::{Duration, Instant};

/// How long a refused connect keeps a server out of this worker's picks.
pub const REFUSED_HOLD: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
pub struct OutlierConfig {
    /// Consecutive failures that eject; 0 disables passive health (ejections
    /// and refusal holds).
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
    /// How many of `n` servers may be ejected at once: `max_ejection_percent`
    /// of them, rounded down, but at least one in a pool of two or more (as
    /// Envoy) and never the whole pool. A one-server pool is never ejected:
    /// ejecting it would turn a few failed requests (perhaps one client's,
    /// crafted to fail) into a 503 for everyone; active checks still take it
    /// down when it is really down.
    pub fn max_ejected(&self, n: usize) -> usize {
        if n < 2 || self.max_ejection_percent == 0 || self.consecutive == 0 {
            return 0;
        }
        (n * self.max_ejection_percent as usize / 100)
            .max(1)
            .min(n - 1)
    }
}

/// Why a server is out of this worker's picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ejected,
    Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Available,
    Out {
        kind: Kind,
        since: Instant,
        until: Instant,
    },
}

#[derive(Debug, Clone)]
pub struct Outlier {
    failures: u32,
    ejections: u32,
    state: State,
    /// When the last ejection ran out (a long healthy stretch after it forgets
    /// the backoff).
    ejection_ended: Option<Instant>,
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            failures: 0,
            ejections: 0,
            state: State::Available,
            ejection_ended: None,
        }
    }
}

/// What a recorded outcome changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    None,
    Ejected(Duration),
    Held(Duration),
}

impl Outlier {
    /// Whether the server is out of picks at `now` (ejected or held).
    pub fn is_out(&self, now: Instant) -> bool {
        matches!(self.state, State::Out { until, .. } if now < until)
    }

    /// Why the server is out (ejected or held), whether or not its time ran
    /// out already (`expire` ends it).
    pub fn out_kind(&self) -> Option<Kind> {
        match self.state {
            State::Out { kind, .. } => Some(kind),
            State::Available => None,
        }
    }

    /// When the current ejection or hold ends.
    pub fn out_until(&self) -> Option<Instant> {
        match self.state {
            State::Out { until, .. } => Some(until),
            State::Available => None,
        }
    }

    fn end(&mut self, now: Instant) -> Option<Kind> {
        let State::Out { kind, .. } = self.state else {
            return None;
        };
        self.state = State::Available;
        if kind == Kind::Ejected {
            self.ejection_ended = Some(now);
        }
        Some(kind)
    }

    /// Ends an ejection or hold that has run out; returns which.
    pub fn expire(&mut self, now: Instant) -> Option<Kind> {
        match self.state {
            State::Out { until, .. } if now >= until => self.end(now),
            _ => None,
        }
    }

    /// Ends an ejection or hold if active checks saw the server come up after
    /// it began (a restarted server need not sit out its backoff).
    pub fn back_if_up_since(&mut self, up_since: Instant, now: Instant) -> Option<Kind> {
        match self.state {
            State::Out { since, .. } if up_since > since => {
                self.failures = 0;
                self.end(now)
            }
            _ => None,
        }
    }

    /// Records a success. `now` is only asked for when earlier ejections may be
    /// forgotten, so the common case reads no clock.
    pub fn record_success(&mut self, now: impl FnOnce() -> Instant, cfg: &OutlierConfig) {
        self.failures = 0;
        // A long healthy stretch forgets earlier ejections.
        if self.ejections > 0 {
            let now = now();
            if self
                .ejection_ended
                .is_some_and(|t| now >= t + cfg.max_ejection)
            {
                self.ejections = 0;
            }
        }
    }

    /// Records a failure; ejects when the streak reaches the threshold and the
    /// pool allows one more ejection.
    pub fn record_failure(&mut self, now: Instant, cfg: &OutlierConfig, may_eject: bool) -> Change {
        if cfg.consecutive == 0 || self.is_out(now) {
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
        self.state = State::Out {
            kind: Kind::Ejected,
            since: now,
            until: now + d,
        };
        Change::Ejected(d)
    }

    /// Records a refused connect: a failure toward the streak (which may
    /// eject), and otherwise a hold of `REFUSED_HOLD`.
    pub fn record_refused(&mut self, now: Instant, cfg: &OutlierConfig, may_eject: bool) -> Change {
        if cfg.consecutive == 0 || self.is_out(now) {
            return Change::None;
        }
        match self.record_failure(now, cfg, may_eject) {
            Change::None => {
                self.state = State::Out {
                    kind: Kind::Refused,
                    since: now,
                    until: now + REFUSED_HOLD,
                };
                Change::Held(REFUSED_HOLD)
            }
            ejected => ejected,
        }
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
        assert!(o.is_out(t0 + Duration::from_secs(4)));
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(o.expire(t1), Some(Kind::Ejected));
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
    fn a_long_healthy_stretch_forgets_the_backoff() {
        let cfg = OutlierConfig {
            consecutive: 1,
            ..OutlierConfig::default()
        };
        let t0 = Instant::now();
        let mut o = Outlier::default();
        assert_eq!(
            o.record_failure(t0, &cfg, true),
            Change::Ejected(cfg.base_ejection)
        );
        let back = t0 + cfg.base_ejection;
        o.expire(back);
        o.record_success(|| back, &cfg);
        assert_eq!(
            o.record_failure(back, &cfg, true),
            Change::Ejected(cfg.base_ejection * 2),
            "soon after: backoff doubles"
        );
        let ended = back + cfg.base_ejection * 2;
        assert_eq!(o.expire(ended), Some(Kind::Ejected));
        let later = ended + cfg.max_ejection;
        o.record_success(|| later - Duration::from_millis(1), &cfg);
        o.record_success(|| later, &cfg);
        assert_eq!(
            o.record_failure(later, &cfg, true),
            Change::Ejected(cfg.base_ejection)
        );
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
        assert_eq!(cfg.max_ejected(2), 1, "at least one of two");
        assert_eq!(cfg.max_ejected(1), 0, "never the only server");
        let all = OutlierConfig {
            max_ejection_percent: 100,
            ..cfg
        };
        assert_eq!(all.max_ejected(4), 3, "never the whole pool");
        let none = OutlierConfig {
            max_ejection_percent: 0,
            ..cfg
        };
        assert_eq!(none.max_ejected(10), 0);
    }

    #[test]
    fn a_refusal_holds_at_once_and_counts_toward_the_streak() {
        let cfg = OutlierConfig {
            consecutive: 3,
            ..OutlierConfig::default()
        };
        let t0 = Instant::now();
        let mut o = Outlier::default();
        assert_eq!(o.record_refused(t0, &cfg, true), Change::Held(REFUSED_HOLD));
        assert!(o.is_out(t0));
        assert!(!o.is_out(t0 + REFUSED_HOLD));
        let t1 = t0 + REFUSED_HOLD;
        assert_eq!(o.expire(t1), Some(Kind::Refused));
        assert_eq!(o.record_refused(t1, &cfg, true), Change::Held(REFUSED_HOLD));
        let t2 = t1 + REFUSED_HOLD;
        o.expire(t2);
        assert_eq!(
            o.record_refused(t2, &cfg, true),
            Change::Ejected(cfg.base_ejection),
            "the third refusal in a row ejects"
        );
        // Not ejectable (pool cap): still held.
        let mut o = Outlier::default();
        for _ in 0..5 {
            assert_eq!(
                o.record_refused(t0, &cfg, false),
                Change::Held(REFUSED_HOLD)
            );
            o.expire(t0 + REFUSED_HOLD);
        }
        // Passive health off: no hold either.
        let off = OutlierConfig {
            consecutive: 0,
            ..cfg
        };
        assert_eq!(
            Outlier::default().record_refused(t0, &off, true),
            Change::None
        );
    }

    #[test]
    fn active_checks_end_a_hold_or_ejection_early() {
        let cfg = OutlierConfig::default();
        let t0 = Instant::now();
        let mut o = Outlier::default();
        o.record_refused(t0, &cfg, true);
        assert_eq!(o.back_if_up_since(t0 - Duration::from_millis(1), t0), None);
        assert_eq!(
            o.back_if_up_since(t0 + Duration::from_millis(1), t0),
            Some(Kind::Refused)
        );
        assert!(!o.is_out(t0));
    }
}
