//! ringlb: a thread-per-core io_uring HTTP/1.1 L7 load balancer.
//!
//! Module map: `config` (TOML, validation), `runtime` (workers, listeners,
//! drivers, signals, shutdown), `http` (parsing, framing, rewriting, canned
//! responses), `proxy` (per-connection state machine), `upstream` (servers,
//! balancing, connection pool), `buf` (buffer pool), `io` (monoio seam),
//! `error` (failure origin -> status), `log`.

pub mod access_log;
pub mod admin;
pub mod buf;
pub mod cli;
pub mod config;
pub mod contain;
pub mod deadline;
pub mod doctor;
pub mod error;
pub mod http;
pub mod io;
pub mod log;
pub mod memory;
pub mod metrics;
pub mod pooled;
pub mod proxy;
pub mod runtime;
pub mod upstream;
