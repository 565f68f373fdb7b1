//! What an operator sees of each request besides its answer: its request id
//! (`X-Request-Id`), its metrics, and its access log line.

use super::tally::Tally;
use super::{ClientIp, WorkerCtx};
use crate::access_log::format::{self, Clock, Outcome};
use crate::access_log::Capture;
use crate::http::fields::eq_ci;
use crate::http::request::{RequestHead, RequestIds};
use std::cell::Cell;
use std::io::Write;

thread_local! {
    /// (seed, requests so far) of this worker's id sequence.
    static IDS: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

fn mix(mut z: u64) -> u64 {
    // splitmix64's finaliser.
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A new request id: 32 hex digits, unique per worker and start (a seed from
/// the clock, the process and the thread, and a counter).
fn next_id() -> [u8; 32] {
    let (mut seed, n) = IDS.with(|c| c.get());
    if seed == 0 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let thread = std::thread::current().id();
        let thread: u64 = format!("{thread:?}")
            .bytes()
            .fold(0, |a, b| a.wrapping_mul(31) ^ u64::from(b));
        seed = mix(t ^ (u64::from(std::process::id()) << 32) ^ thread) | 1;
    }
    IDS.with(|c| c.set((seed, n + 1)));
    let mut out = [0u8; 32];
    let _ = write!(&mut out[..], "{:016x}{:016x}", seed, mix(seed ^ n));
    out
}

/// The id to send upstream in place of the client's (None: keep what the
/// client sent, or add none).
pub fn request_id(policy: RequestIds, head: &RequestHead<'_, '_>) -> Option<[u8; 32]> {
    match policy {
        RequestIds::Off => None,
        RequestIds::Keep if head.request_id.is_some() => None,
        RequestIds::Keep | RequestIds::Replace => Some(next_id()),
    }
}

/// The head's fields for the access log. `id`: the id sent upstream, if
/// ringlb chose it.
pub fn capture(head: &RequestHead<'_, '_>, id: Option<&[u8]>) -> Capture {
    let field = |name: &[u8]| {
        head.headers
            .iter()
            .find(|h| eq_ci(h.name.as_bytes(), name))
            .map_or(&b""[..], |h| h.value)
    };
    let mut c = Capture::new(
        head.method.as_bytes(),
        head.target.as_bytes(),
        field(b"referer"),
        field(b"user-agent"),
        head.minor_version,
    );
    c.set_request_id(id.or(head.request_id).unwrap_or_default());
    c
}

/// What the log can say of a request rejected before its head parsed: the
/// first two words of its first line.
pub fn capture_raw(data: &[u8]) -> Capture {
    let line = data.split(|&b| b == b'\n').next().unwrap_or(data);
    let mut words = line.split(|&b| b == b' ' || b == b'\r');
    let method = words.next().unwrap_or_default();
    let target = words.next().unwrap_or_default();
    Capture::new(method, target, b"", b"", 1)
}

/// The request is over: metrics, and the access log line if its listener logs.
pub fn finish(ctx: &WorkerCtx, ip: &ClientIp, tally: &Tally) {
    let duration_us = tally.started.elapsed().as_micros() as u64;
    tally.record(&ctx.metrics, duration_us);
    let listener = tally.listener as usize;
    let (Some(log), Some((file, form)), Some(capture)) = (
        &ctx.access_log,
        ctx.log_sinks.borrow()[listener],
        tally.capture.as_ref(),
    ) else {
        return;
    };
    let upstream = tally.upstream.get().map(usize::from);
    let layout = ctx.layout.borrow();
    // The server's address as text (formatted when it joined).
    let names = ctx.server_names.borrow();
    let server = tally
        .server
        .get()
        .and_then(|id| names.get(usize::from(id)))
        .map(|name| &**name);
    // The reason as text without allocating, into a buffer on the stack.
    let mut why = [0u8; 160];
    let reason = tally
        .failed
        .get()
        .map(|e| stack_text(&mut why, format_args!("{e}")));
    let outcome = Outcome {
        client: ip.as_str(),
        status: tally.status.get(),
        bytes_sent: tally.client_out.get(),
        request_bytes: tally.request_bytes(),
        duration_us,
        upstream: upstream
            .and_then(|u| layout.upstreams.get(u))
            .map(|l| l.name.as_str()),
        server,
        upstream_us: tally.head_latency_us(),
        retries: tally.retries.get(),
        reason,
    };
    let now = Clock::now();
    log.line(file, crate::deadline::now_ms(), |out| {
        format::write_line(out, form, &now, capture, &outcome)
    });
}

/// Formats `args` into `buf` (cut at its size); returns the text.
fn stack_text<'a>(buf: &'a mut [u8], args: std::fmt::Arguments<'_>) -> &'a str {
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = cursor.write_fmt(args);
    let n = cursor.position() as usize;
    // Cut at a character boundary if the text was cut.
    let mut n = n;
    while std::str::from_utf8(&buf[..n]).is_err() {
        n -= 1;
    }
    std::str::from_utf8(&buf[..n]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_hex() {
        let a = next_id();
        let b = next_id();
        assert_ne!(a, b);
        assert!(a.iter().all(u8::is_ascii_hexdigit));
        assert_eq!(&a[..16], &b[..16], "one worker's seed");
    }
}
