//! The TOML schema exactly as users write it. Every table denies unknown keys so a
//! typo is an error with a line number, never a silently ignored setting.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub workers: Option<Spanned<i64>>,
    pub io: Option<Spanned<String>>,
    pub ring_entries: Option<Spanned<i64>>,
    pub uring_setup: Option<Spanned<String>>,
    pub drain_timeout: Option<Spanned<String>>,
    pub resolve_interval: Option<Spanned<String>>,
    pub upgrade_socket: Option<Spanned<String>>,
    pub log_level: Option<Spanned<String>>,
    pub log_format: Option<Spanned<String>>,
    pub client: Option<RawClient>,
    pub limits: Option<RawLimits>,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub listener: Vec<RawListener>,
    #[serde(default)]
    pub upstream: Vec<RawUpstream>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub head_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub body_timeout: Option<Spanned<String>>,
    pub write_timeout: Option<Spanned<String>>,
    pub tunnel_idle_timeout: Option<Spanned<String>>,
    pub max_head_bytes: Option<Spanned<i64>>,
    pub max_request_line_bytes: Option<Spanned<i64>>,
    pub max_chunk_bytes: Option<Spanned<i64>>,
    pub headers_with_underscores: Option<Spanned<String>>,
    pub request_id: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub listen: Spanned<String>,
    pub upstream: Option<Spanned<String>>,
    pub status: Option<Spanned<i64>>,
    pub body: Option<String>,
    pub content_type: Option<String>,
    pub access_log: Option<Spanned<RawAccessLog>>,
    #[serde(default)]
    pub route: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    pub path: Spanned<String>,
    pub format: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub upstream: Option<Spanned<String>>,
    pub status: Option<Spanned<i64>>,
    pub body: Option<String>,
    pub content_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: Spanned<String>,
    pub servers: Spanned<Vec<Spanned<String>>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub response_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub max_idle: Option<Spanned<i64>>,
    pub balance: Option<Spanned<String>>,
    pub hash_key: Option<Spanned<String>>,
    pub retries: Option<Spanned<i64>>,
    pub retry_non_idempotent: Option<bool>,
    pub retry_budget: Option<Spanned<f64>>,
    pub min_retries_per_second: Option<Spanned<i64>>,
    pub panic_mode: Option<bool>,
    pub slow_start: Option<Spanned<String>>,
    pub health_check: Option<Spanned<RawHealthCheck>>,
    pub outlier: Option<RawOutlier>,
    pub max_in_flight: Option<Spanned<i64>>,
    pub max_in_flight_per_server: Option<Spanned<i64>>,
    pub queue_size: Option<Spanned<i64>>,
    pub queue_timeout: Option<Spanned<String>>,
    pub adaptive_concurrency: Option<Spanned<RawAdaptive>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdaptive {
    pub enabled: Option<bool>,
    pub min_limit: Option<Spanned<i64>>,
    pub max_limit: Option<Spanned<i64>>,
    pub initial_limit: Option<Spanned<i64>>,
    pub tolerance: Option<Spanned<f64>>,
    pub window: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<Spanned<i64>>,
    pub max_connections_per_ip: Option<Spanned<i64>>,
    pub max_memory_mb: Option<Spanned<i64>>,
    pub at_connection_cap: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    #[serde(rename = "type")]
    pub kind: Option<Spanned<String>>,
    pub method: Option<String>,
    pub path: Option<Spanned<String>>,
    pub host: Option<String>,
    pub expect_status: Option<Spanned<String>>,
    pub body_contains: Option<String>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    pub consecutive_failures: Option<Spanned<i64>>,
    pub base_ejection: Option<Spanned<String>>,
    pub max_ejection: Option<Spanned<String>>,
    pub max_ejection_percent: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Spanned<String>,
}
