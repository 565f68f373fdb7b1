//! Validating `[[upstream]]` tables: servers, balancing, retries, health
//! checks, passive health.

use super::raw::{self, RawUpstream};
use super::*;

impl Ctx<'_> {
    pub(super) fn upstream(&self, up: &RawUpstream) -> Result<UpstreamConfig, ConfigError> {
        let name = up.name.get_ref().trim().to_string();
        if name.is_empty() {
            return Err(self.err(up.name.span(), "name", "must not be empty"));
        }
        if up.servers.get_ref().is_empty() {
            return Err(self.err(up.servers.span(), "servers", "needs at least one server"));
        }
        if up.servers.get_ref().len() > 4096 {
            return Err(self.err(
                up.servers.span(),
                "servers",
                "at most 4096 servers per upstream",
            ));
        }
        let mut servers = Vec::new();
        for s in up.servers.get_ref() {
            for server in self.server(s)? {
                if !servers.contains(&server) {
                    servers.push(server);
                }
            }
        }
        let (balance, balance_name) = match &up.balance {
            None => (Algorithm::RoundRobin, "round_robin".to_string()),
            Some(b) => match Algorithm::parse(b.get_ref()) {
                Some(a) => (a, b.get_ref().clone()),
                None => {
                    return Err(self.err(
                        b.span(),
                        "balance",
                        format!("`{}` is not one of {}", b.get_ref(), Algorithm::NAMES),
                    ))
                }
            },
        };
        let hash_key = match &up.hash_key {
            None => HashKey::ClientIp,
            Some(k) => match k.get_ref().as_str() {
                "client_ip" => HashKey::ClientIp,
                "path" => HashKey::Path,
                h if h.starts_with("header:") && h.len() > 7 => {
                    HashKey::Header(h[7..].to_ascii_lowercase())
                }
                other => {
                    return Err(self.err(
                        k.span(),
                        "hash_key",
                        format!("`{other}` is not \"client_ip\", \"path\" or \"header:NAME\""),
                    ))
                }
            },
        };
        if let (Some(k), false) = (&up.hash_key, balance == Algorithm::Maglev) {
            return Err(self.err(k.span(), "hash_key", "only used with balance = \"maglev\""));
        }
        let slow_start = match &up.slow_start {
            None => Duration::ZERO,
            Some(s) => {
                let d =
                    parse_duration(s.get_ref()).map_err(|m| self.err(s.span(), "slow_start", m))?;
                if !d.is_zero() && matches!(balance, Algorithm::RoundRobin | Algorithm::Maglev) {
                    return Err(self.err(
                        s.span(),
                        "slow_start",
                        "needs a weight-aware balance (weighted_round_robin, least_inflight, p2c, peak_ewma)",
                    ));
                }
                d
            }
        };
        let retry_budget = match &up.retry_budget {
            None => 0.2,
            Some(b) if (0.0..=1.0).contains(b.get_ref()) => *b.get_ref(),
            Some(b) => {
                return Err(self.err(
                    b.span(),
                    "retry_budget",
                    "must be a ratio between 0.0 and 1.0",
                ))
            }
        };
        let health_check = match &up.health_check {
            None => None,
            Some(h) => Some(self.health_check(h)?),
        };
        let outlier = match &up.outlier {
            None => OutlierConfig::default(),
            Some(o) => {
                let d = OutlierConfig::default();
                OutlierConfig {
                    consecutive: self.int(
                        &o.consecutive_failures,
                        "consecutive_failures",
                        0,
                        1000,
                        d.consecutive as i64,
                    )? as u32,
                    base_ejection: self.duration(
                        &o.base_ejection,
                        "base_ejection",
                        d.base_ejection,
                    )?,
                    max_ejection: self.duration(&o.max_ejection, "max_ejection", d.max_ejection)?,
                    max_ejection_percent: self.int(
                        &o.max_ejection_percent,
                        "max_ejection_percent",
                        0,
                        100,
                        d.max_ejection_percent as i64,
                    )? as u32,
                }
            }
        };
        Ok(UpstreamConfig {
            name,
            servers,
            balance,
            balance_name,
            hash_key,
            retries: self.int(&up.retries, "retries", 0, 10, 1)? as u32,
            retry_non_idempotent: up.retry_non_idempotent.unwrap_or(false),
            retry_budget,
            min_retries_per_second: self.int(
                &up.min_retries_per_second,
                "min_retries_per_second",
                0,
                100_000,
                10,
            )? as u32,
            panic_mode: up.panic_mode.unwrap_or(false),
            slow_start,
            health_check,
            outlier,
            connect_timeout: self.duration(
                &up.connect_timeout,
                "connect_timeout",
                Duration::from_secs(3),
            )?,
            response_timeout: self.duration(
                &up.response_timeout,
                "response_timeout",
                Duration::from_secs(30),
            )?,
            idle_timeout: self.duration(
                &up.idle_timeout,
                "idle_timeout",
                Duration::from_secs(30),
            )?,
            max_idle: self.int(&up.max_idle, "max_idle", 0, 100_000, 256)? as usize,
            admission: self.admission(up)?,
        })
    }

    /// `"ADDR"` or `"ADDR weight=N"`.
    /// One `servers` entry: `"ADDR [weight=N]"`, where a host name stands
    /// for every address it resolves to (each a server of that weight).
    pub(super) fn server(&self, s: &Spanned<String>) -> Result<Vec<ServerConfig>, ConfigError> {
        let mut parts = s.get_ref().split_whitespace();
        let addr_text = parts.next().unwrap_or("");
        let mut weight = 1;
        for p in parts {
            match p
                .strip_prefix("weight=")
                .and_then(|w| w.parse::<u32>().ok())
            {
                Some(w) if (1..=1000).contains(&w) => weight = w,
                _ => {
                    return Err(self.err(
                        s.span(),
                        "servers",
                        format!("`{p}`: only `weight=N` (1-1000) may follow the address"),
                    ))
                }
            }
        }
        if let Ok(addr) = addr_text.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(self.err(s.span(), "servers", "port 0 is not a valid upstream port"));
            }
            return Ok(vec![ServerConfig {
                addr,
                name: None,
                weight,
            }]);
        }
        let addrs = resolve(addr_text).map_err(|why| self.err(s.span(), "servers", why))?;
        if addrs.iter().any(|a| a.port() == 0) {
            return Err(self.err(s.span(), "servers", "port 0 is not a valid upstream port"));
        }
        let name: std::sync::Arc<str> = addr_text.into();
        Ok(addrs
            .into_iter()
            .map(|addr| ServerConfig {
                addr,
                name: Some(name.clone()),
                weight,
            })
            .collect())
    }

    pub(super) fn health_check(
        &self,
        h: &Spanned<raw::RawHealthCheck>,
    ) -> Result<HealthCheck, ConfigError> {
        let r = h.get_ref();
        let kind = match r.kind.as_ref().map(|k| k.get_ref().as_str()) {
            None | Some("http") => {
                let path = match &r.path {
                    None => "/".to_string(),
                    Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
                    Some(p) => return Err(self.err(p.span(), "path", "must start with `/`")),
                };
                let expect_status = match &r.expect_status {
                    None => vec![200..=399],
                    Some(e) => self.status_ranges(e)?,
                };
                HealthCheckKind::Http {
                    method: r.method.clone().unwrap_or_else(|| "GET".to_string()),
                    path,
                    host: r.host.clone(),
                    expect_status,
                    body_contains: r.body_contains.clone(),
                }
            }
            Some("tcp") => HealthCheckKind::Tcp,
            Some(other) => {
                let k = r.kind.as_ref().unwrap();
                return Err(self.err(
                    k.span(),
                    "type",
                    format!("`{other}` is not \"http\" or \"tcp\""),
                ));
            }
        };
        let interval = self.duration(&r.interval, "interval", Duration::from_secs(2))?;
        let timeout = self.duration(&r.timeout, "timeout", Duration::from_secs(1))?;
        if timeout > interval {
            return Err(self.err(h.span(), "timeout", "must not exceed the check interval"));
        }
        Ok(HealthCheck {
            kind,
            interval,
            timeout,
            rise: self.int(&r.rise, "rise", 1, 100, 2)? as u32,
            fall: self.int(&r.fall, "fall", 1, 100, 3)? as u32,
        })
    }

    /// `"200-399"`, `"200,204"`, `"2xx"`.
    pub(super) fn status_ranges(
        &self,
        e: &Spanned<String>,
    ) -> Result<Vec<std::ops::RangeInclusive<u16>>, ConfigError> {
        let mut out = Vec::new();
        for part in e.get_ref().split(',').map(str::trim) {
            let range = if let Some(c) = part.strip_suffix("xx").and_then(|c| c.parse::<u16>().ok())
            {
                Some(c * 100..=c * 100 + 99)
            } else if let Some((a, b)) = part.split_once('-') {
                a.trim()
                    .parse()
                    .ok()
                    .zip(b.trim().parse().ok())
                    .map(|(a, b)| a..=b)
            } else {
                part.parse().ok().map(|s| s..=s)
            };
            match range {
                Some(r) if *r.start() >= 100 && *r.end() <= 599 && r.start() <= r.end() => {
                    out.push(r)
                }
                _ => {
                    return Err(self.err(
                        e.span(),
                        "expect_status",
                        format!("`{part}` is not a status, range (200-399) or class (2xx)"),
                    ))
                }
            }
        }
        Ok(out)
    }
}

/// Every address `HOST:PORT` resolves to (sorted, without repeats), or why
/// there is none.
pub fn resolve(host_port: &str) -> Result<Vec<SocketAddr>, String> {
    use std::net::ToSocketAddrs;
    let mut addrs: Vec<SocketAddr> = host_port
        .to_socket_addrs()
        .map_err(|e| format!("`{host_port}` is not HOST:PORT ({e})"))?
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(format!("`{host_port}` resolves to no address"));
    }
    Ok(addrs)
}
