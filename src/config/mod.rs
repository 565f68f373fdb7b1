//! Configuration: the TOML schema, validation with `file:line:column` errors, and
//! defaults. Nothing here touches a socket: addresses are resolved once at load time.

mod demo;
mod duration;
mod raw;

pub use crate::http::request::Underscores;
pub use crate::runtime::driver::UringSetup;
pub use crate::upstream::balance::Algorithm;
pub use crate::upstream::outlier::OutlierConfig;
pub use demo::DEMO_CONFIG;
pub use duration::parse_duration;

use raw::{RawConfig, RawListener, RawRoute, RawUpstream};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// Which io driver the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// io_uring when the kernel allows it, epoll otherwise.
    Auto,
    Uring,
    Epoll,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub workers: usize,
    pub io: IoMode,
    pub ring_entries: u32,
    pub uring_setup: UringSetup,
    pub drain_timeout: Duration,
    pub client: ClientSettings,
    pub listeners: Vec<ListenerConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    /// Admin listener (JSON pool state, /healthz), if configured.
    pub admin: Option<SocketAddr>,
}

/// Client-side timeouts and limits.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// From the first byte of a request head to its end (slowloris guard).
    pub head_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Longest pause while reading a request body.
    pub body_timeout: Duration,
    /// Longest stall while writing to the client.
    pub write_timeout: Duration,
    /// Longest silence on both sides of an upgraded (WebSocket) tunnel.
    pub tunnel_idle_timeout: Duration,
    /// Largest request head (request line + fields); larger is 431.
    pub max_head_bytes: usize,
    /// Longest request line; longer is 414.
    pub max_request_line_bytes: usize,
    /// Largest chunk a chunked request body may announce; larger is 400
    /// (keeps sizes far below what a backend that truncates them would misread).
    pub max_chunk_bytes: u64,
    /// What happens to request header fields whose names contain `_`.
    pub headers_with_underscores: Underscores,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            tunnel_idle_timeout: Duration::from_secs(300),
            max_head_bytes: 32 * 1024,
            max_request_line_bytes: 8 * 1024,
            max_chunk_bytes: 16 * 1024 * 1024,
            headers_with_underscores: Underscores::Drop,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    pub routes: Vec<RouteConfig>,
    pub default_action: Action,
}

/// A routing rule: first match wins; `host` compares case-insensitively without port.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub host: Option<String>,
    pub path_prefix: String,
    pub action: Action,
}

/// What a matched request gets.
#[derive(Debug, Clone)]
pub enum Action {
    /// Forward to the upstream with this index in `Config::upstreams`.
    Proxy(usize),
    /// Answer directly from ringlb.
    Respond(DirectResponse),
}

#[derive(Debug, Clone)]
pub struct DirectResponse {
    pub status: u16,
    pub body: String,
    pub content_type: String,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    /// Relative weight for weight-aware balancing (`"ADDR weight=N"`), default 1.
    pub weight: u32,
}

/// What Maglev hashes to choose a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Path,
    /// A request header's value (lower-case name).
    Header(String),
}

#[derive(Debug, Clone)]
pub enum HealthCheckKind {
    Tcp,
    Http {
        method: String,
        path: String,
        host: Option<String>,
        expect_status: Vec<std::ops::RangeInclusive<u16>>,
        body_contains: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub servers: Vec<ServerConfig>,
    pub balance: Algorithm,
    pub balance_name: String,
    pub hash_key: HashKey,
    /// Further servers tried after a failure that allows a retry.
    pub retries: u32,
    pub retry_non_idempotent: bool,
    /// Retries allowed as a share of the requests of the last 10 s (see `upstream::retry`).
    pub retry_budget: f64,
    /// Retries per second allowed on top of `retry_budget`, however little traffic.
    pub min_retries_per_second: u32,
    /// With every server down, try them anyway instead of answering 503.
    pub panic_mode: bool,
    /// Ramp of a returning server's weight; zero disables.
    pub slow_start: Duration,
    pub health_check: Option<HealthCheck>,
    pub outlier: OutlierConfig,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    /// Idle pooled connections kept per server and per worker.
    pub max_idle: usize,
}

/// A configuration error pointing at the offending place in the file.
#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else if self.key.is_empty() {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        } else {
            write!(
                f,
                "{}:{}:{}: `{}`: {}",
                self.file, self.line, self.column, self.key, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, &file)
    }

    /// Parses and validates config text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let ctx = Ctx { text, file };
        let raw: RawConfig = toml::from_str(text).map_err(|e| ctx.toml_error(&e))?;
        ctx.validate(raw)
    }
}

struct Ctx<'a> {
    text: &'a str,
    file: &'a str,
}

impl Ctx<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        (line, column)
    }

    fn err(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        let (line, column) = self.position(span.start);
        ConfigError {
            file: self.file.to_string(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let (line, column) = e.span().map_or((1, 1), |s| self.position(s.start));
        let key = e
            .span()
            .map(|s| key_at(&self.text[s.start..s.end.min(self.text.len())]))
            .unwrap_or_default();
        ConfigError {
            file: self.file.to_string(),
            line,
            column,
            key,
            message: e.message().trim().to_string(),
        }
    }

    fn duration(
        &self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => {
                let d = parse_duration(s.get_ref()).map_err(|m| self.err(s.span(), key, m))?;
                if d.is_zero() {
                    return Err(self.err(s.span(), key, "must be greater than zero"));
                }
                Ok(d)
            }
        }
    }

    fn int(
        &self,
        v: &Option<Spanned<i64>>,
        key: &str,
        min: i64,
        max: i64,
        default: i64,
    ) -> Result<i64, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => {
                let n = *s.get_ref();
                if n < min || n > max {
                    return Err(self.err(
                        s.span(),
                        key,
                        format!("must be between {min} and {max}, got {n}"),
                    ));
                }
                Ok(n)
            }
        }
    }

    fn addr(&self, s: &Spanned<String>, key: &str) -> Result<SocketAddr, ConfigError> {
        let text = s.get_ref();
        if let Ok(a) = text.parse::<SocketAddr>() {
            return Ok(a);
        }
        match text.to_socket_addrs() {
            Ok(mut it) => it
                .next()
                .ok_or_else(|| self.err(s.span(), key, format!("`{text}` resolves to no address"))),
            Err(e) => Err(self.err(s.span(), key, format!("`{text}` is not HOST:PORT ({e})"))),
        }
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let workers = match &raw.workers {
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(_) => self.int(&raw.workers, "workers", 1, 1024, 1)? as usize,
        };
        let io = match &raw.io {
            None => IoMode::Auto,
            Some(s) => match s.get_ref().as_str() {
                "auto" => IoMode::Auto,
                "uring" => IoMode::Uring,
                "epoll" => IoMode::Epoll,
                other => {
                    return Err(self.err(
                        s.span(),
                        "io",
                        format!("`{other}` is not one of \"auto\", \"uring\", \"epoll\""),
                    ))
                }
            },
        };
        let ring_entries = self.int(&raw.ring_entries, "ring_entries", 256, 32768, 1024)? as u32;
        let uring_setup = match &raw.uring_setup {
            None => UringSetup::Coop,
            Some(s) => match s.get_ref().as_str() {
                "coop" => UringSetup::Coop,
                "defer" => UringSetup::Defer,
                "plain" => UringSetup::Plain,
                other => {
                    return Err(self.err(
                        s.span(),
                        "uring_setup",
                        format!("`{other}` is not one of \"coop\", \"defer\", \"plain\""),
                    ))
                }
            },
        };
        let drain_timeout =
            self.duration(&raw.drain_timeout, "drain_timeout", Duration::from_secs(30))?;
        let client = self.client(raw.client.unwrap_or_default())?;

        let mut upstreams = Vec::with_capacity(raw.upstream.len());
        for up in &raw.upstream {
            let cfg = self.upstream(up)?;
            if upstreams
                .iter()
                .any(|u: &UpstreamConfig| u.name == cfg.name)
            {
                return Err(self.err(
                    up.name.span(),
                    "name",
                    format!("upstream `{}` is defined twice", cfg.name),
                ));
            }
            upstreams.push(cfg);
        }

        if raw.listener.is_empty() {
            return Err(self.err(0..0, "listener", "at least one [[listener]] is required"));
        }
        let mut listeners: Vec<ListenerConfig> = Vec::with_capacity(raw.listener.len());
        for l in &raw.listener {
            let cfg = self.listener(l, &upstreams)?;
            for (o, raw_o) in listeners.iter().zip(&raw.listener) {
                self.no_collision(cfg.addr, o.addr, l.listen.span(), raw_o.listen.span())?;
            }
            listeners.push(cfg);
        }
        let admin = match &raw.admin {
            Some(a) => {
                let addr = self.addr(&a.listen, "listen")?;
                for (o, raw_o) in listeners.iter().zip(&raw.listener) {
                    self.no_collision(addr, o.addr, a.listen.span(), raw_o.listen.span())?;
                }
                Some(addr)
            }
            None => None,
        };
        Ok(Config {
            admin,
            workers,
            io,
            ring_entries,
            uring_setup,
            drain_timeout,
            client,
            listeners,
            upstreams,
        })
    }

    /// Two listening addresses that `run` could not both bind: the same
    /// port in the same family, on the same address or one of them on every
    /// address (`0.0.0.0`, `[::]`). Port 0 (a free port, chosen at start) never
    /// collides.
    fn no_collision(
        &self,
        addr: SocketAddr,
        other: SocketAddr,
        span: Range<usize>,
        other_span: Range<usize>,
    ) -> Result<(), ConfigError> {
        let collides = addr.port() != 0
            && addr.port() == other.port()
            && addr.is_ipv4() == other.is_ipv4()
            && (addr.ip() == other.ip()
                || addr.ip().is_unspecified()
                || other.ip().is_unspecified());
        if !collides {
            return Ok(());
        }
        let (line, _) = self.position(other_span.start);
        let why = if addr.ip() == other.ip() {
            "the same address".to_string()
        } else {
            let every = if addr.ip().is_unspecified() {
                addr
            } else {
                other
            };
            format!("{} covers every address", every.ip())
        };
        Err(self.err(
            span,
            "listen",
            format!(
                "{addr} collides with {other} (line {line}): {why} on port {}",
                addr.port()
            ),
        ))
    }

    fn client(&self, c: raw::RawClient) -> Result<ClientSettings, ConfigError> {
        let d = ClientSettings::default();
        Ok(ClientSettings {
            head_timeout: self.duration(&c.head_timeout, "head_timeout", d.head_timeout)?,
            idle_timeout: self.duration(&c.idle_timeout, "idle_timeout", d.idle_timeout)?,
            body_timeout: self.duration(&c.body_timeout, "body_timeout", d.body_timeout)?,
            write_timeout: self.duration(&c.write_timeout, "write_timeout", d.write_timeout)?,
            tunnel_idle_timeout: self.duration(
                &c.tunnel_idle_timeout,
                "tunnel_idle_timeout",
                d.tunnel_idle_timeout,
            )?,
            max_head_bytes: self.int(
                &c.max_head_bytes,
                "max_head_bytes",
                1024,
                1 << 20,
                d.max_head_bytes as i64,
            )? as usize,
            max_request_line_bytes: self.int(
                &c.max_request_line_bytes,
                "max_request_line_bytes",
                64,
                1 << 20,
                d.max_request_line_bytes as i64,
            )? as usize,
            max_chunk_bytes: self.int(
                &c.max_chunk_bytes,
                "max_chunk_bytes",
                1,
                1 << 31,
                d.max_chunk_bytes as i64,
            )? as u64,
            headers_with_underscores: match &c.headers_with_underscores {
                None => d.headers_with_underscores,
                Some(s) => match s.get_ref().as_str() {
                    "drop" => Underscores::Drop,
                    "pass" => Underscores::Pass,
                    "reject" => Underscores::Reject,
                    other => {
                        return Err(self.err(
                            s.span(),
                            "headers_with_underscores",
                            format!("`{other}` is not one of \"drop\", \"pass\", \"reject\""),
                        ))
                    }
                },
            },
        })
    }

    fn upstream(&self, up: &RawUpstream) -> Result<UpstreamConfig, ConfigError> {
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
            servers.push(self.server(s)?);
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
        })
    }

    /// `"ADDR"` or `"ADDR weight=N"`.
    fn server(&self, s: &Spanned<String>) -> Result<ServerConfig, ConfigError> {
        let mut parts = s.get_ref().split_whitespace();
        let addr_text = parts.next().unwrap_or("");
        let addr_spanned = Spanned::new(s.span(), addr_text.to_string());
        let addr = self.addr(&addr_spanned, "servers")?;
        if addr.port() == 0 {
            return Err(self.err(s.span(), "servers", "port 0 is not a valid upstream port"));
        }
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
        Ok(ServerConfig { addr, weight })
    }

    fn health_check(&self, h: &Spanned<raw::RawHealthCheck>) -> Result<HealthCheck, ConfigError> {
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
    fn status_ranges(
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

    fn action(
        &self,
        upstream: &Option<Spanned<String>>,
        status: &Option<Spanned<i64>>,
        body: &Option<String>,
        content_type: &Option<String>,
        upstreams: &[UpstreamConfig],
        anchor: Range<usize>,
    ) -> Result<Action, ConfigError> {
        match (upstream, status) {
            (Some(_), Some(s)) => Err(self.err(
                s.span(),
                "status",
                "set either `upstream` or `status`, not both",
            )),
            (Some(u), None) => {
                let idx = upstreams
                    .iter()
                    .position(|x| &x.name == u.get_ref())
                    .ok_or_else(|| {
                        self.err(
                            u.span(),
                            "upstream",
                            format!("no [[upstream]] is named `{}`", u.get_ref()),
                        )
                    })?;
                Ok(Action::Proxy(idx))
            }
            (None, Some(s)) => {
                let code = *s.get_ref();
                if !(200..=599).contains(&code) || code == 204 || code == 304 {
                    return Err(self.err(s.span(), "status", format!("{code} is not a status a direct response can send (200-599, not 204/304)")));
                }
                Ok(Action::Respond(DirectResponse {
                    status: code as u16,
                    body: body.clone().unwrap_or_default(),
                    content_type: content_type
                        .clone()
                        .unwrap_or_else(|| "text/plain".to_string()),
                }))
            }
            (None, None) => Err(self.err(
                anchor,
                "upstream",
                "needs `upstream = \"NAME\"` or a direct response (`status`, `body`)",
            )),
        }
    }

    fn listener(
        &self,
        l: &RawListener,
        upstreams: &[UpstreamConfig],
    ) -> Result<ListenerConfig, ConfigError> {
        let addr = self.addr(&l.listen, "listen")?;
        let default_action = self.action(
            &l.upstream,
            &l.status,
            &l.body,
            &l.content_type,
            upstreams,
            l.listen.span(),
        )?;
        let mut routes = Vec::with_capacity(l.route.len());
        for r in &l.route {
            routes.push(self.route(r, upstreams, l.listen.span())?);
        }
        Ok(ListenerConfig {
            addr,
            routes,
            default_action,
        })
    }

    fn route(
        &self,
        r: &RawRoute,
        upstreams: &[UpstreamConfig],
        anchor: Range<usize>,
    ) -> Result<RouteConfig, ConfigError> {
        let anchor = r
            .host
            .as_ref()
            .map(|h| h.span())
            .or_else(|| r.path_prefix.as_ref().map(|p| p.span()))
            .unwrap_or(anchor);
        let path_prefix = match &r.path_prefix {
            None => "/".to_string(),
            Some(p) if !p.get_ref().starts_with('/') => {
                return Err(self.err(p.span(), "path_prefix", "must start with `/`"))
            }
            Some(p) => p.get_ref().clone(),
        };
        let host = r.host.as_ref().map(|h| h.get_ref().to_ascii_lowercase());
        let action = self.action(
            &r.upstream,
            &r.status,
            &r.body,
            &r.content_type,
            upstreams,
            anchor,
        )?;
        Ok(RouteConfig {
            host,
            path_prefix,
            action,
        })
    }
}

/// The key a toml error span points at (`foo = 1` -> `foo`).
fn key_at(fragment: &str) -> String {
    let end = fragment
        .find(['=', '\n', ' ', ']'])
        .unwrap_or(fragment.len());
    fragment[..end].trim().trim_matches('"').to_string()
}

#[cfg(test)]
mod tests;
