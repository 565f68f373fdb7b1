//! The admin listener: `GET /status` (every pool and server as JSON),
//! `GET /metrics` (Prometheus text format, see `metrics`) and `GET /healthz`,
//! served by the health thread, off the request path.
//!
//! It is built so that it can never starve the proxy: at most
//! `MAX_CONNECTIONS` admin connections at a time (more are closed as soon as
//! they are accepted, holding no descriptor), a deadline for the whole request
//! (`REQUEST_DEADLINE`: a slow drip gets 408), one request per connection, and
//! a strict parse (the proxy's own request parser): only `GET` and `HEAD`
//! (405 otherwise), only the exact paths (404 otherwise), 400 for anything
//! malformed. ringlb warns at start when the listener is reachable beyond
//! loopback.

use crate::buf::Buffer;
use crate::http::request::{self, Limits, Method, Underscores};
use crate::io::{Conn, ReadOutcome};
use crate::upstream::health::Health;
use monoio::net::TcpListener;
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Admin connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 16;
/// From accept to the end of the request head.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const LIMITS: Limits = Limits {
    max_head_bytes: 8192,
    max_request_line_bytes: 1024,
    underscores: Underscores::Drop,
};

/// Logs where the admin listener is and warns when it is reachable from
/// other hosts.
pub fn announce(bound: SocketAddr) {
    crate::info!("admin listening on {bound}");
    if !bound.ip().is_loopback() {
        crate::warn!(
            "the admin listener on {bound} is reachable beyond this host: /status shows \
             every upstream server; bind it to 127.0.0.1 or ::1 unless a firewall protects it"
        );
    }
}

/// What the admin pages read.
pub struct State {
    pub health: Arc<Health>,
    /// The servers each upstream has now.
    pub rosters: Arc<crate::upstream::roster::Rosters>,
    pub metrics: Arc<crate::metrics::Registry>,
}

pub async fn serve(listener: TcpListener, state: Rc<State>) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, most likely: back off instead of spinning.
            monoio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if open.get() >= MAX_CONNECTIONS {
            crate::log::rate_limited(format_args!(
                "admin: {MAX_CONNECTIONS} connections already open: closing a new one"
            ));
            continue; // dropped: closed at once
        }
        open.set(open.get() + 1);
        let (state, open) = (state.clone(), open.clone());
        monoio::spawn(async move {
            answer(Conn::new(stream), &state).await;
            open.set(open.get() - 1);
        });
    }
}

/// Reads one request within the deadline and answers it.
async fn answer(mut conn: Conn, state: &State) {
    let mut buf = Buffer::take();
    conn.reader.arm(REQUEST_DEADLINE);
    let reply = loop {
        let mut headers = crate::http::header_slots();
        match request::parse(buf.data(), &mut headers, &LIMITS) {
            Ok(Some(head)) => break respond(&head, state),
            Ok(None) => {}
            Err(e) => break Reply::error(e.status().unwrap_or(400), "malformed request\n"),
        }
        match conn.reader.read_armed(&mut buf).await {
            ReadOutcome::Data(_) if buf.spare() > 0 => {}
            ReadOutcome::Data(_) => break Reply::error(431, "request head too large\n"),
            ReadOutcome::TimedOut => break Reply::error(408, "request timeout\n"),
            ReadOutcome::Eof | ReadOutcome::Failed(_) => return,
        }
    };
    conn.reader.disarm();
    let mut out = Buffer::take_large();
    out.clear();
    let text = reply.render();
    if out.spare() < text.len() {
        let _ = out.reserve(text.len()); // a large buffer always grows
    }
    out.extend(text.as_bytes());
    let n = out.len();
    let _ = conn.writer.write_front(&mut out, n, WRITE_TIMEOUT).await;
    conn.writer.shutdown_write();
}

struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
    /// HEAD: the head alone, with the length the body would have.
    head_only: bool,
    allow: bool,
}

impl Reply {
    fn error(status: u16, body: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain",
            body: body.to_string(),
            head_only: false,
            allow: false,
        }
    }

    fn render(&self) -> String {
        let reason = crate::proxy::route::reason_phrase(self.status);
        let allow = if self.allow {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        };
        format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n{}",
            self.status,
            self.content_type,
            self.body.len(),
            if self.head_only { "" } else { &self.body }
        )
    }
}

/// `/status`: health from the checker, each pool's admission state and the
/// shed counts from the workers' metrics.
fn status_json(state: &State) -> String {
    let reg = &state.metrics;
    let admission = |ui: usize, out: &mut String| {
        let limits: Vec<String> = reg
            .workers
            .iter()
            .map(|w| w.admission_limit[ui].get())
            .filter(|&l| l >= 0 && l < i64::from(u32::MAX))
            .map(|l| l.to_string())
            .collect();
        let queued: i64 = reg.workers.iter().map(|w| w.queued[ui].get()).sum();
        let limits = if limits.is_empty() {
            "null".to_string()
        } else {
            format!("[{}]", limits.join(","))
        };
        out.push_str(&format!(
            ",\"admission\":{{\"limit_per_worker\":{limits},\"queued\":{queued}}}"
        ));
    };
    // Shed counts per reason: the total and each worker's.
    let shed: Vec<String> = crate::error::Shed::ALL
        .iter()
        .map(|&why| {
            let per: Vec<u64> = reg
                .workers
                .iter()
                .map(|w| w.shed[why as usize].get())
                .collect();
            let per_text: Vec<String> = per.iter().map(u64::to_string).collect();
            format!(
                "\"{}\":{{\"total\":{},\"per_worker\":[{}]}}",
                why.label(),
                per.iter().sum::<u64>(),
                per_text.join(",")
            )
        })
        .collect();
    // Per server: its idle pooled connections over all workers.
    let idle = |id: usize, out: &mut String| {
        let n: i64 = reg
            .workers
            .iter()
            .map(|w| w.servers[id].connections_idle.get())
            .sum();
        out.push_str(&format!(",\"idle_connections\":{n}"));
    };
    let roster = state.rosters.current();
    let tail = format!(
        ",\"shed\":{{{}}},\"config\":{},\"server_set\":{}",
        shed.join(","),
        crate::runtime::reload::status_json(),
        roster.number
    );
    state.health.to_json(&roster, (&admission, &idle), &tail)
}

fn respond(head: &request::RequestHead<'_, '_>, state: &State) -> Reply {
    if !matches!(head.kind, Method::Get | Method::Head) {
        return Reply {
            allow: true,
            ..Reply::error(405, "only GET and HEAD\n")
        };
    }
    let (content_type, body) = match head.target {
        "/status" => ("application/json", status_json(state)),
        "/metrics" => {
            let health = &state.health;
            let server_health = |id: usize| {
                let s = health.server(id);
                (
                    s.is_healthy(),
                    s.ejected_by.load(std::sync::atomic::Ordering::Relaxed),
                )
            };
            let roster = state.rosters.current();
            let outside = crate::metrics::expose::Outside {
                roster: &roster,
                server_health: &server_health,
                config: crate::runtime::reload::in_force_metrics(),
                panics: crate::contain::panics(),
            };
            let text = crate::metrics::expose::render(&state.metrics, &outside);
            (crate::metrics::expose::CONTENT_TYPE, text)
        }
        "/healthz" => ("text/plain", "ok\n".to_string()),
        _ => return Reply::error(404, "try /status, /metrics or /healthz\n"),
    };
    Reply {
        status: 200,
        content_type,
        body,
        head_only: head.kind == Method::Head,
        allow: false,
    }
}
