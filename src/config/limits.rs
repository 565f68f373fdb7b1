//! Validating the overload limits: `[limits]` (client connections) and each
//! upstream's admission keys (`max_in_flight`, `max_in_flight_per_server`,
//! `queue_size`, `queue_timeout`, `[upstream.adaptive_concurrency]`).

use super::raw::{self, RawUpstream};
use super::*;
use crate::upstream::adaptive::AdaptiveConfig;

/// `[limits]`: client connections, process-wide (each worker enforces its
/// share).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LimitsConfig {
    /// None: derived from the open-file limit at start.
    pub max_connections: Option<u32>,
    pub max_connections_per_ip: Option<u32>,
    /// Buffer memory for the whole process, in MiB (split across workers):
    /// past its share a worker sheds new requests (`Shed::Memory`).
    pub max_memory_mb: Option<u32>,
    /// At `max_connections`: answer new connections 503 + close, or stop
    /// accepting until a connection closes.
    pub pause_at_cap: bool,
}

/// One upstream's admission limits (see `upstream::admission`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdmissionConfig {
    /// Requests in flight to the pool, process-wide.
    pub max_in_flight: Option<u32>,
    /// Requests in flight to each server, process-wide.
    pub max_in_flight_per_server: Option<u32>,
    /// Requests that may wait for a slot, process-wide (0: none wait).
    pub queue_size: u32,
    pub queue_timeout: Duration,
    /// Adaptive concurrency, per worker.
    pub adaptive: Option<AdaptiveConfig>,
}

impl AdmissionConfig {
    pub fn limits_anything(&self) -> bool {
        self.max_in_flight.is_some()
            || self.max_in_flight_per_server.is_some()
            || self.adaptive.is_some()
    }
}

const MAX_COUNT: i64 = 10_000_000;

impl Ctx<'_> {
    fn optional_count(
        &self,
        v: &Option<Spanned<i64>>,
        key: &str,
    ) -> Result<Option<u32>, ConfigError> {
        match v {
            None => Ok(None),
            Some(_) => Ok(Some(self.int(v, key, 1, MAX_COUNT, 1)? as u32)),
        }
    }

    pub(super) fn limits(&self, l: Option<&raw::RawLimits>) -> Result<LimitsConfig, ConfigError> {
        let Some(l) = l else {
            return Ok(LimitsConfig::default());
        };
        Ok(LimitsConfig {
            max_connections: self.optional_count(&l.max_connections, "max_connections")?,
            max_connections_per_ip: self
                .optional_count(&l.max_connections_per_ip, "max_connections_per_ip")?,
            max_memory_mb: self.optional_count(&l.max_memory_mb, "max_memory_mb")?,
            pause_at_cap: match &l.at_connection_cap {
                None => false,
                Some(v) => match v.get_ref().as_str() {
                    "refuse" => false,
                    "pause" => true,
                    other => {
                        return Err(self.err(
                            v.span(),
                            "at_connection_cap",
                            format!("{other:?}: expected \"refuse\" or \"pause\""),
                        ))
                    }
                },
            },
        })
    }

    pub(super) fn admission(&self, up: &RawUpstream) -> Result<AdmissionConfig, ConfigError> {
        let max_in_flight = self.optional_count(&up.max_in_flight, "max_in_flight")?;
        let max_in_flight_per_server =
            self.optional_count(&up.max_in_flight_per_server, "max_in_flight_per_server")?;
        let queue_size = self.int(&up.queue_size, "queue_size", 0, MAX_COUNT, 0)? as u32;
        let queue_timeout = self.duration(
            &up.queue_timeout,
            "queue_timeout",
            Duration::from_millis(100),
        )?;
        // A disabled table is still checked: enabling it later must not
        // uncover errors.
        let adaptive = match &up.adaptive_concurrency {
            Some(a) => {
                let cfg = self.adaptive(a.get_ref(), max_in_flight)?;
                a.get_ref().enabled.unwrap_or(false).then_some(cfg)
            }
            None => None,
        };
        let cfg = AdmissionConfig {
            max_in_flight,
            max_in_flight_per_server,
            queue_size,
            queue_timeout,
            adaptive,
        };
        if let Some(q) = &up.queue_size {
            if queue_size > 0 && !cfg.limits_anything() {
                return Err(self.err(
                    q.span(),
                    "queue_size",
                    "a queue needs a limit to wait for: set max_in_flight, \
                     max_in_flight_per_server or adaptive_concurrency",
                ));
            }
        }
        if let (Some(t), 0) = (&up.queue_timeout, queue_size) {
            return Err(self.err(t.span(), "queue_timeout", "needs queue_size above 0"));
        }
        Ok(cfg)
    }

    fn adaptive(
        &self,
        a: &raw::RawAdaptive,
        max_in_flight: Option<u32>,
    ) -> Result<AdaptiveConfig, ConfigError> {
        let d = AdaptiveConfig::default();
        let min_limit = self.int(&a.min_limit, "min_limit", 1, MAX_COUNT, 1)? as u32;
        let default_max = max_in_flight.unwrap_or(d.max_limit).max(min_limit);
        let max_limit = self.int(
            &a.max_limit,
            "max_limit",
            1,
            MAX_COUNT,
            i64::from(default_max),
        )? as u32;
        if max_limit < min_limit {
            let span = a.max_limit.as_ref().map_or(0..0, |s| s.span());
            return Err(self.err(span, "max_limit", "must not be below min_limit"));
        }
        if let Some(cap) = max_in_flight {
            // Limits apply per worker; max_in_flight caps them at its share.
            if let (Some(m), true) = (&a.max_limit, max_limit > cap) {
                return Err(self.err(
                    m.span(),
                    "max_limit",
                    format!("{max_limit} is above max_in_flight ({cap}), which caps it"),
                ));
            }
            if let (Some(m), true) = (&a.min_limit, min_limit > cap) {
                return Err(self.err(
                    m.span(),
                    "min_limit",
                    format!("{min_limit} is above max_in_flight ({cap})"),
                ));
            }
        }
        let initial_default = d.initial_limit.clamp(min_limit, max_limit);
        let initial_limit = self.int(
            &a.initial_limit,
            "initial_limit",
            i64::from(min_limit),
            i64::from(max_limit),
            i64::from(initial_default),
        )? as u32;
        let tolerance = match &a.tolerance {
            None => d.tolerance,
            Some(t) if (1.0..=100.0).contains(t.get_ref()) => *t.get_ref(),
            Some(t) => {
                return Err(self.err(t.span(), "tolerance", "must be between 1.0 and 100.0"))
            }
        };
        let window = self.duration(&a.window, "window", Duration::from_millis(d.window_ms))?;
        if window < Duration::from_millis(50) {
            let span = a.window.as_ref().map_or(0..0, |s| s.span());
            return Err(self.err(span, "window", "must be at least 50ms"));
        }
        Ok(AdaptiveConfig {
            min_limit,
            max_limit,
            initial_limit,
            tolerance,
            window_ms: window.as_millis() as u64,
        })
    }

    /// Each worker needs at least one of every process-wide limit.
    pub(super) fn limits_cover_workers(
        &self,
        raw: &RawConfig,
        limits: &LimitsConfig,
        upstreams: &[UpstreamConfig],
        workers: usize,
    ) -> Result<(), ConfigError> {
        let below = |n: Option<u32>| n.is_some_and(|n| (n as usize) < workers);
        let message = |n: u32| {
            format!("{n} is below the number of workers ({workers}): each worker enforces its share and needs at least 1")
        };
        // A process-wide limit split across workers must give each at least 1.
        let at_least_one_each = |n: Option<u32>, key: &str, raw: &Option<Spanned<i64>>| {
            if !below(n) {
                return Ok(());
            }
            let span = raw.as_ref().map_or(0..0, |s| s.span());
            Err(self.err(span, key, message(n.unwrap_or(0))))
        };
        if let Some(l) = &raw.limits {
            at_least_one_each(limits.max_memory_mb, "max_memory_mb", &l.max_memory_mb)?;
            at_least_one_each(
                limits.max_connections,
                "max_connections",
                &l.max_connections,
            )?;
        }
        for (u, r) in upstreams.iter().zip(&raw.upstream) {
            let a = &u.admission;
            at_least_one_each(a.max_in_flight, "max_in_flight", &r.max_in_flight)?;
            at_least_one_each(
                a.max_in_flight_per_server,
                "max_in_flight_per_server",
                &r.max_in_flight_per_server,
            )?;
            if let (Some(g), Some(cap)) = (&a.adaptive, a.max_in_flight) {
                let share = cap as usize / workers;
                if (g.min_limit as usize) > share {
                    let span = r
                        .adaptive_concurrency
                        .as_ref()
                        .and_then(|t| t.get_ref().min_limit.as_ref())
                        .map_or(0..0, |s| s.span());
                    return Err(self.err(
                        span,
                        "min_limit",
                        format!(
                            "{} is above each worker's share of max_in_flight ({share} = {cap} / {workers} workers)",
                            g.min_limit
                        ),
                    ));
                }
            }
            if a.queue_size > 0 && (a.queue_size as usize) < workers {
                let span = r.queue_size.as_ref().map_or(0..0, |s| s.span());
                return Err(self.err(span, "queue_size", message(a.queue_size)));
            }
        }
        Ok(())
    }
}
