//! Configuration: the TOML schema (`raw`), validation with `file:line:column`
//! errors (here and in `client`, `listener`, `upstream`), and defaults.
//! Nothing here touches a socket: addresses are resolved once at load time.

mod client;
mod demo;
mod duration;
mod limits;
mod listener;
mod raw;
mod upstream;

pub use crate::http::request::{RequestIds, Underscores};
pub use crate::runtime::driver::UringSetup;
pub use crate::upstream::balance::Algorithm;
pub use crate::upstream::outlier::OutlierConfig;
pub use demo::DEMO_CONFIG;
pub use duration::parse_duration;
pub use limits::{AdmissionConfig, LimitsConfig};
pub use upstream::resolve;

use raw::RawConfig;
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
    /// How often servers given by name are resolved again (zero: never).
    pub resolve_interval: Duration,
    /// Where a running ringlb hands its listening sockets to its successor
    /// (`ringlb --config FILE --upgrade`), if anywhere.
    pub upgrade_socket: Option<std::path::PathBuf>,
    /// Event log filter and format.
    pub log_level: crate::log::Level,
    pub log_json: bool,
    pub client: ClientSettings,
    /// Client connection limits (`[limits]`).
    pub limits: LimitsConfig,
    pub listeners: Vec<ListenerConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    /// Admin listener (JSON pool state, /healthz), if configured.
    pub admin: Option<SocketAddr>,
}

/// Client-side timeouts and limits.
#[derive(Debug, Clone, Copy, PartialEq)]
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
    /// Whether an incoming `X-Request-Id` is kept, replaced, or none added.
    pub request_id: RequestIds,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings::DEFAULT
    }
}

impl ClientSettings {
    pub const DEFAULT: ClientSettings = ClientSettings {
        head_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        body_timeout: Duration::from_secs(60),
        write_timeout: Duration::from_secs(60),
        tunnel_idle_timeout: Duration::from_secs(300),
        max_head_bytes: 32 * 1024,
        max_request_line_bytes: 8 * 1024,
        max_chunk_bytes: 16 * 1024 * 1024,
        headers_with_underscores: Underscores::Drop,
        request_id: RequestIds::Keep,
    };
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    pub routes: Vec<RouteConfig>,
    pub default_action: Action,
    pub access_log: Option<AccessLogConfig>,
}

/// `access_log = { path = "...", format = "combined" | "json" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub target: crate::access_log::writer::Target,
    pub format: crate::access_log::Format,
}

/// A routing rule: first match wins; `host` compares case-insensitively without port.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// The route's label in metrics (unnamed routes are numbered).
    pub name: Option<String>,
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

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    /// The `HOST:PORT` it was given as, when HOST is a name (re-resolved
    /// every `resolve_interval`); None for an address.
    pub name: Option<std::sync::Arc<str>>,
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

#[derive(Debug, Clone, PartialEq)]
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

#[derive(Debug, Clone, PartialEq)]
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
    /// In-flight limits, queue and adaptive concurrency.
    pub admission: AdmissionConfig,
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

    /// The label values of the metrics for this config; `bound`: each
    /// listener's actual address.
    /// The metrics labels of `listener`, named `name`.
    pub fn listener_spec(
        &self,
        listener: &ListenerConfig,
        name: String,
    ) -> crate::metrics::layout::ListenerSpec {
        let upstream_of = |a: &Action| match a {
            Action::Proxy(i) => Some(*i),
            Action::Respond(_) => None,
        };
        crate::metrics::layout::ListenerSpec {
            name,
            routes: listener
                .routes
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let name = r.name.clone().unwrap_or_else(|| i.to_string());
                    (name, upstream_of(&r.action))
                })
                .collect(),
            default_upstream: upstream_of(&listener.default_action),
        }
    }

    /// The metrics labels of the upstreams.
    pub fn upstream_specs(&self) -> Vec<crate::metrics::layout::UpstreamSpec> {
        self.upstreams
            .iter()
            .map(|u| crate::metrics::layout::UpstreamSpec {
                name: u.name.clone(),
            })
            .collect()
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

/// The longest duration any key accepts (timers compute deadlines in
/// milliseconds; nothing here needs more).
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);
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
            .map(|s| {
                let end = s.end.min(self.text.len());
                key_before(&self.text[..s.start.min(end)])
                    .unwrap_or_else(|| key_at(&self.text[s.start..end]))
            })
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
                if d > MAX_DURATION {
                    return Err(self.err(s.span(), key, "must be at most 720h (30 days)"));
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
        let resolve_interval = self.duration(
            &raw.resolve_interval,
            "resolve_interval",
            Duration::from_secs(30),
        )?;
        let upgrade_socket = match &raw.upgrade_socket {
            Some(p) if p.get_ref().is_empty() => {
                return Err(self.err(p.span(), "upgrade_socket", "must be a file path"))
            }
            Some(p) => Some(std::path::PathBuf::from(p.get_ref())),
            None => None,
        };
        let log_level = match &raw.log_level {
            None => crate::log::Level::Info,
            Some(s) => crate::log::Level::parse(s.get_ref()).ok_or_else(|| {
                self.err(
                    s.span(),
                    "log_level",
                    "must be \"info\", \"warn\" or \"error\"",
                )
            })?,
        };
        let log_json = match raw.log_format.as_ref().map(|s| (s, s.get_ref().as_str())) {
            None | Some((_, "text")) => false,
            Some((_, "json")) => true,
            Some((s, _)) => {
                return Err(self.err(s.span(), "log_format", "must be \"text\" or \"json\""))
            }
        };
        let limits = self.limits(raw.limits.as_ref())?;

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
        self.limits_cover_workers(&raw, &limits, &upstreams, workers)?;
        let client = self.client(raw.client.unwrap_or_default())?;

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
            log_level,
            log_json,
            admin,
            workers,
            io,
            ring_entries,
            uring_setup,
            drain_timeout,
            resolve_interval,
            upgrade_socket,
            client,
            limits,
            listeners,
            upstreams,
        })
    }
}

/// The key a toml error span points at (`foo = 1` -> `foo`).
/// The key a value belongs to, when an error's span starts at the value
/// (`workers = "many"`: the span is `"many"`, the key `workers`); also in an
/// inline table (`{ cert = "a", key = 5 }`).
fn key_before(text: &str) -> Option<String> {
    let line = &text[text.rfind('\n').map_or(0, |i| i + 1)..];
    let (before, value) = line.rsplit_once('=')?;
    if !value.trim().is_empty() {
        return None; // the span does not start right after `=`
    }
    let key = before.rsplit([',', '{']).next()?.trim().trim_matches('"');
    (!key.is_empty()).then(|| key.to_string())
}

fn key_at(fragment: &str) -> String {
    let end = fragment
        .find(['=', '\n', ' ', ']'])
        .unwrap_or(fragment.len());
    fragment[..end].trim().trim_matches('"').to_string()
}

#[cfg(test)]
mod tests;
