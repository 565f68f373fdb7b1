//! `GET /metrics`: every worker's cells summed, in the Prometheus text
//! exposition format 0.0.4. Runs on the admin thread, off the request path.

use super::{Registry, WorkerMetrics, BUCKETS_US, CLASSES};
use std::fmt::Write;

/// What the metrics do not hold themselves: the servers each upstream has
/// now (the roster), each server's shared health as `(up, workers ejecting
/// it)` by member id, and the panics caught.
pub struct Outside<'a> {
    pub roster: &'a crate::upstream::roster::Roster,
    pub server_health: &'a dyn Fn(usize) -> (bool, u32),
    pub panics: u64,
    /// The configuration in force: its generation and load time (Unix s).
    pub config: (u64, u64),
}

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Escapes a label value (backslash, double quote, newline).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Sums `f` over the workers.
fn sum(reg: &Registry, f: impl Fn(&WorkerMetrics) -> u64) -> u64 {
    reg.workers.iter().map(|w| f(w)).sum()
}

fn sum_i(reg: &Registry, f: impl Fn(&WorkerMetrics) -> i64) -> i64 {
    reg.workers.iter().map(|w| f(w)).sum()
}

pub fn render(reg: &Registry, outside: &Outside<'_>) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let l = outside.roster.layout.as_ref();
    requests(&mut out, reg, l);
    histograms(&mut out, reg, l);

    family(
        &mut out,
        "ringlb_client_bytes_received_total",
        "counter",
        "Bytes received from clients.",
    );
    for (i, name) in l
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, n)| !n.is_empty())
    {
        let v = sum(reg, |w| w.client_bytes_in[i].get());
        let _ = writeln!(
            out,
            "ringlb_client_bytes_received_total{{listener=\"{}\"}} {v}",
            esc(name)
        );
    }
    family(
        &mut out,
        "ringlb_client_bytes_sent_total",
        "counter",
        "Bytes sent to clients.",
    );
    for (i, name) in l
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, n)| !n.is_empty())
    {
        let v = sum(reg, |w| w.client_bytes_out[i].get());
        let _ = writeln!(
            out,
            "ringlb_client_bytes_sent_total{{listener=\"{}\"}} {v}",
            esc(name)
        );
    }
    family(
        &mut out,
        "ringlb_upstream_bytes_sent_total",
        "counter",
        "Bytes sent to upstream servers.",
    );
    for (i, u) in l.upstreams.iter().enumerate() {
        let v = sum(reg, |w| w.upstream_bytes_out[i].get());
        let _ = writeln!(
            out,
            "ringlb_upstream_bytes_sent_total{{upstream=\"{}\"}} {v}",
            esc(&u.name)
        );
    }
    family(
        &mut out,
        "ringlb_upstream_bytes_received_total",
        "counter",
        "Bytes received from upstream servers.",
    );
    for (i, u) in l.upstreams.iter().enumerate() {
        let v = sum(reg, |w| w.upstream_bytes_in[i].get());
        let _ = writeln!(
            out,
            "ringlb_upstream_bytes_received_total{{upstream=\"{}\"}} {v}",
            esc(&u.name)
        );
    }

    connections(&mut out, reg);
    servers(&mut out, reg, outside);
    family(
        &mut out,
        "ringlb_config_generation",
        "gauge",
        "Reloads and binary upgrades since ringlb was started by hand.",
    );
    let _ = writeln!(out, "ringlb_config_generation {}", outside.config.0);
    family(
        &mut out,
        "ringlb_config_loaded_timestamp_seconds",
        "gauge",
        "When the configuration in force was loaded (Unix time).",
    );
    let _ = writeln!(
        out,
        "ringlb_config_loaded_timestamp_seconds {}",
        outside.config.1
    );
    family(
        &mut out,
        "ringlb_server_set",
        "gauge",
        "Server sets put in force since start (reloads in place, DNS changes).",
    );
    let _ = writeln!(out, "ringlb_server_set {}", outside.roster.number);

    family(
        &mut out,
        "ringlb_rejected_requests_total",
        "counter",
        "Requests rejected before they were forwarded, by status and reason.",
    );
    for r in super::Reject::ALL {
        let (code, reason) = r.label();
        let v = sum(reg, |w| w.rejected[r as usize].get());
        let _ = writeln!(
            out,
            "ringlb_rejected_requests_total{{code=\"{code}\",reason=\"{reason}\"}} {v}"
        );
    }
    shedding(&mut out, reg, l);
    family(
        &mut out,
        "ringlb_panics_total",
        "counter",
        "Panics caught (each ended one connection).",
    );
    let _ = writeln!(out, "ringlb_panics_total {}", outside.panics);
    process(&mut out, reg);
    out
}

/// Shed decisions by reason, and each pool's admission limit and queue.
fn shedding(out: &mut String, reg: &Registry, layout: &super::Layout) {
    family(
        out,
        "ringlb_shed_total",
        "counter",
        "Requests and connections shed with a 503 (or closed), by reason, per worker.",
    );
    for why in crate::error::Shed::ALL {
        for (i, w) in reg.workers.iter().enumerate() {
            let v = w.shed[why as usize].get();
            let _ = writeln!(
                out,
                "ringlb_shed_total{{reason=\"{}\",worker=\"{i}\"}} {v}",
                why.label()
            );
        }
    }
    family(
        out,
        "ringlb_upstream_in_flight_limit",
        "gauge",
        "Requests a worker lets into the pool at once (limited pools only; adaptive pools move it).",
    );
    for (u, up) in layout.upstreams.iter().enumerate() {
        for (i, w) in reg.workers.iter().enumerate() {
            let limit = w.admission_limit[u].get();
            if limit >= 0 && limit < i64::from(u32::MAX) {
                let _ = writeln!(
                    out,
                    "ringlb_upstream_in_flight_limit{{upstream=\"{}\",worker=\"{i}\"}} {limit}",
                    esc(&up.name)
                );
            }
        }
    }
    family(
        out,
        "ringlb_upstream_queued",
        "gauge",
        "Requests waiting in the pool's queues for an in-flight slot.",
    );
    for (u, up) in layout.upstreams.iter().enumerate() {
        let v = sum_i(reg, |w| w.queued[u].get());
        let _ = writeln!(
            out,
            "ringlb_upstream_queued{{upstream=\"{}\"}} {v}",
            esc(&up.name)
        );
    }
    family(
        out,
        "ringlb_upstream_queued_requests_total",
        "counter",
        "Requests that waited in the pool's queue for a slot and then went on.",
    );
    for (u, up) in layout.upstreams.iter().enumerate() {
        let v = sum(reg, |w| w.waited[u].get());
        let _ = writeln!(
            out,
            "ringlb_upstream_queued_requests_total{{upstream=\"{}\"}} {v}",
            esc(&up.name)
        );
    }
}

fn requests(out: &mut String, reg: &Registry, layout: &super::Layout) {
    let l = layout;
    family(out, "ringlb_requests_total", "counter", "Requests answered, by listener, route, upstream and status class (none: no status was sent).");
    for (si, slot) in l.slots.iter().enumerate() {
        let Some(slot) = slot else { continue };
        let upstream = slot.upstream.map_or("", |u| l.upstreams[u].name.as_str());
        for (ci, class) in CLASSES.iter().enumerate() {
            let v = sum(reg, |w| w.requests[si][ci].get());
            let _ = writeln!(
                out,
                "ringlb_requests_total{{listener=\"{}\",route=\"{}\",upstream=\"{}\",code=\"{class}\"}} {v}",
                esc(&l.listeners[slot.listener]),
                esc(&slot.route),
                esc(upstream)
            );
        }
    }
}

fn histograms(out: &mut String, reg: &Registry, layout: &super::Layout) {
    let l = layout;
    type Pick = fn(&WorkerMetrics, usize) -> &super::Histogram;
    let kinds: [(&str, &str, Pick); 2] = [
        (
            "ringlb_request_duration_seconds",
            "Time from a request's head to the end of its answer, per upstream.",
            |w, i| &w.duration[i],
        ),
        (
            "ringlb_upstream_response_head_seconds",
            "Time from a request sent upstream to its response head, per upstream.",
            |w, i| &w.head_latency[i],
        ),
    ];
    for (name, help, pick) in kinds {
        family(out, name, "histogram", help);
        for (ui, u) in l.upstreams.iter().enumerate() {
            let mut buckets = [0u64; BUCKETS_US.len() + 1];
            let mut sum_us = 0;
            for w in &reg.workers {
                let (b, s) = pick(w, ui).snapshot();
                for (t, v) in buckets.iter_mut().zip(b) {
                    *t += v;
                }
                sum_us += s;
            }
            let up = esc(&u.name);
            for (le, v) in BUCKETS_US.iter().zip(&buckets) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{upstream=\"{up}\",le=\"{}\"}} {v}",
                    *le as f64 / 1e6
                );
            }
            let total = buckets[BUCKETS_US.len()];
            let _ = writeln!(
                out,
                "{name}_bucket{{upstream=\"{up}\",le=\"+Inf\"}} {total}"
            );
            let _ = writeln!(
                out,
                "{name}_sum{{upstream=\"{up}\"}} {}",
                sum_us as f64 / 1e6
            );
            let _ = writeln!(out, "{name}_count{{upstream=\"{up}\"}} {total}");
        }
    }
}

fn connections(out: &mut String, reg: &Registry) {
    type Row = (
        &'static str,
        &'static str,
        &'static str,
        fn(&WorkerMetrics) -> i64,
    );
    let rows: [Row; 4] = [
        (
            "ringlb_client_connections_accepted_total",
            "counter",
            "Client connections accepted, per worker.",
            |w| w.connections_accepted.get() as i64,
        ),
        (
            "ringlb_client_connections_closed_total",
            "counter",
            "Client connections closed, per worker.",
            |w| w.connections_closed.get() as i64,
        ),
        (
            "ringlb_client_connections_open",
            "gauge",
            "Client connections open, per worker.",
            |w| w.connections_accepted.get() as i64 - w.connections_closed.get() as i64,
        ),
        (
            "ringlb_access_log_dropped_lines_total",
            "counter",
            "Access log lines dropped because the log writer fell behind, per worker.",
            |w| w.access_log_dropped.get() as i64,
        ),
    ];
    for (name, kind, help, f) in rows {
        family(out, name, kind, help);
        for (i, w) in reg.workers.iter().enumerate() {
            let _ = writeln!(out, "{name}{{worker=\"{i}\"}} {}", f(w));
        }
    }
}

fn servers(out: &mut String, reg: &Registry, outside: &Outside<'_>) {
    let (l, health) = (outside.roster, outside.server_health);
    type Cell = fn(&super::ServerMetrics) -> i64;
    let rows: [(&str, &str, &str, Cell); 8] = [
        (
            "ringlb_upstream_connections_created_total",
            "counter",
            "Connections opened to a server.",
            |s| s.connections_created.get() as i64,
        ),
        (
            "ringlb_upstream_connections_reused_total",
            "counter",
            "Requests sent on a pooled connection.",
            |s| s.connections_reused.get() as i64,
        ),
        (
            "ringlb_upstream_connections_open",
            "gauge",
            "Connections open to a server (busy or idle).",
            |s| s.connections_open.get(),
        ),
        (
            "ringlb_upstream_connections_idle",
            "gauge",
            "Pooled idle connections to a server.",
            |s| s.connections_idle.get(),
        ),
        (
            "ringlb_upstream_in_flight",
            "gauge",
            "Requests in flight to a server.",
            |s| s.in_flight.get(),
        ),
        (
            "ringlb_upstream_response_timeouts_total",
            "counter",
            "Responses that timed out (504, or a body that stalled).",
            |s| s.response_timeouts.get() as i64,
        ),
        (
            "ringlb_upstream_retries_total",
            "counter",
            "Requests retried on another server after this one failed.",
            |s| s.retries.get() as i64,
        ),
        (
            "ringlb_server_ejections_total",
            "counter",
            "Passive ejections of a server (summed over workers).",
            |s| s.ejections.get() as i64,
        ),
    ];
    for (name, kind, help, f) in rows {
        family(out, name, kind, help);
        for_servers(l, |id, label| {
            let v = sum_i(reg, |w| f(&w.servers[id]));
            let _ = writeln!(out, "{name}{{{label}}} {v}");
        });
    }
    family(out, "ringlb_upstream_connect_failures_total", "counter", "Failed connects to a server, by cause (local: ringlb's own limits, not counted against the server).");
    for_servers(l, |id, label| {
        for cause in super::ConnectFailure::ALL {
            let v = sum(reg, |w| {
                w.servers[id].connect_failures[cause as usize].get()
            });
            let _ = writeln!(
                out,
                "ringlb_upstream_connect_failures_total{{{label},cause=\"{}\"}} {v}",
                cause.label()
            );
        }
    });
    family(
        out,
        "ringlb_server_up",
        "gauge",
        "1 while active checks (or the optimistic start) hold the server up.",
    );
    for_servers(l, |id, label| {
        let (up, _) = health(id);
        let _ = writeln!(out, "ringlb_server_up{{{label}}} {}", u8::from(up));
    });
    family(
        out,
        "ringlb_server_ejected_workers",
        "gauge",
        "Workers that currently eject the server.",
    );
    for_servers(l, |id, label| {
        let (_, n) = health(id);
        let _ = writeln!(out, "ringlb_server_ejected_workers{{{label}}} {n}");
    });
}

/// Calls `f(member id, labels)` for every server of the roster.
fn for_servers(roster: &crate::upstream::roster::Roster, mut f: impl FnMut(usize, &str)) {
    for (u, members) in roster.upstreams.iter().zip(&roster.members) {
        for (server, m) in u.servers.iter().zip(members) {
            let label = format!(
                "upstream=\"{}\",server=\"{}\"",
                esc(&u.name),
                esc(&server.addr.to_string())
            );
            f(m.id, &label);
        }
    }
}

fn process(out: &mut String, reg: &Registry) {
    family(
        out,
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
    );
    let page = 4096u64;
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page);
    let _ = writeln!(out, "process_resident_memory_bytes {rss}");
    family(out, "process_open_fds", "gauge", "Open file descriptors.");
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let _ = writeln!(out, "process_open_fds {fds}");
    family(
        out,
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch in seconds.",
    );
    let start = reg
        .started
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let _ = writeln!(out, "process_start_time_seconds {start:.3}");
    family(
        out,
        "ringlb_build_info",
        "gauge",
        "Version, commit and io driver of the running ringlb (always 1).",
    );
    let _ = writeln!(
        out,
        "ringlb_build_info{{version=\"{}\",commit=\"{}\",io=\"{}\",workers=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        option_env!("RINGLB_COMMIT").unwrap_or("unknown"),
        reg.driver.get().copied().unwrap_or("unknown"),
        reg.workers.len()
    );
}
