//! Formatting one access log line, without allocating: the fields of the
//! request head are copied when it is parsed (`Capture`, bounded sizes), the
//! rest comes from the request's tally when it ends.
//!
//! `combined`: `CLIENT - - [27/Nov/2026:17:00:21 +0000] "METHOD TARGET PROTOCOL"
//! STATUS BYTES "REFERER" "USER-AGENT"` (`"` and `\` and bytes outside
//! printable ASCII escaped as `\xHH`, as nginx does).
//!
//! `json`: one object a line, with `time` (RFC 3339, ms), `client`, `method`,
//! `target`, `protocol`, `status`, `bytes_sent`, `request_bytes`,
//! `duration_ms`, `upstream`, `server`, `upstream_ms`, `retries`,
//! `request_id` and `reason` (null unless the request was rejected or shed).

use std::io::Write;

/// Which format a listener's log uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Combined,
    Json,
}

/// Longest kept copy of each captured field, in bytes (longer ones are cut).
const MAX_TARGET: usize = 2048;
const MAX_HEADER: usize = 512;
const MAX_METHOD: usize = 32;
const MAX_ID: usize = 128;
/// Longest line `write_line` can produce (every captured byte escaped to six).
pub const LONGEST_LINE: usize = 6 * (MAX_TARGET + 2 * MAX_HEADER + MAX_METHOD + MAX_ID) + 1024;

/// The request head's fields a log line needs, copied before the head is
/// rewritten or consumed. Its buffer comes from (and goes back to) a
/// per-thread free list.
pub struct Capture {
    buf: Vec<u8>,
    /// Ends of method, target, referer, user agent and request id in `buf`.
    ends: [u16; 5],
    pub minor_version: u8,
}

thread_local! {
    static FREE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Capture {
    pub fn new(
        method: &[u8],
        target: &[u8],
        referer: &[u8],
        user_agent: &[u8],
        minor_version: u8,
    ) -> Capture {
        let mut buf = FREE.with(|f| f.borrow_mut().pop()).unwrap_or_else(|| {
            Vec::with_capacity(MAX_METHOD + MAX_TARGET + 2 * MAX_HEADER + MAX_ID)
        });
        buf.clear();
        let mut ends = [0u16; 5];
        for (i, (field, max)) in [
            (method, MAX_METHOD),
            (target, MAX_TARGET),
            (referer, MAX_HEADER),
            (user_agent, MAX_HEADER),
        ]
        .into_iter()
        .enumerate()
        {
            buf.extend_from_slice(&field[..field.len().min(max)]);
            ends[i] = buf.len() as u16;
        }
        ends[4] = buf.len() as u16;
        Capture {
            buf,
            ends,
            minor_version,
        }
    }

    /// Records the request id (once known).
    pub fn set_request_id(&mut self, id: &[u8]) {
        self.buf.truncate(self.ends[3] as usize);
        self.buf.extend_from_slice(&id[..id.len().min(MAX_ID)]);
        self.ends[4] = self.buf.len() as u16;
    }

    fn field(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.buf[start..self.ends[i] as usize]
    }

    pub fn method(&self) -> &[u8] {
        self.field(0)
    }
    pub fn target(&self) -> &[u8] {
        self.field(1)
    }
    pub fn referer(&self) -> &[u8] {
        self.field(2)
    }
    pub fn user_agent(&self) -> &[u8] {
        self.field(3)
    }
    pub fn request_id(&self) -> &[u8] {
        self.field(4)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let _ = FREE.try_with(|f| {
            if let Ok(mut f) = f.try_borrow_mut() {
                if f.len() < 1024 {
                    f.push(buf);
                }
            }
        });
    }
}

/// What a line says about the request's outcome.
pub struct Outcome<'a> {
    pub client: &'a str,
    pub status: u16,
    pub bytes_sent: u64,
    pub request_bytes: u64,
    pub duration_us: u64,
    pub upstream: Option<&'a str>,
    pub server: Option<&'a str>,
    pub upstream_us: Option<u64>,
    pub retries: u8,
    pub reason: Option<&'a str>,
}

/// Writes one line (with its newline) into `out`. `now`: the time to log.
pub fn write_line(out: &mut Vec<u8>, format: Format, now: &Clock, c: &Capture, o: &Outcome<'_>) {
    match format {
        Format::Combined => {
            out.extend_from_slice(o.client.as_bytes());
            out.extend_from_slice(b" - - [");
            now.clf(out);
            out.extend_from_slice(b"] \"");
            escape_clf(out, c.method());
            out.push(b' ');
            escape_clf(out, c.target());
            out.extend_from_slice(b" HTTP/1.");
            push_u64(out, u64::from(c.minor_version));
            out.extend_from_slice(b"\" ");
            push_u64(out, u64::from(o.status));
            out.push(b' ');
            push_u64(out, o.bytes_sent);
            out.extend_from_slice(b" \"");
            escape_clf(
                out,
                if c.referer().is_empty() {
                    b"-"
                } else {
                    c.referer()
                },
            );
            out.extend_from_slice(b"\" \"");
            escape_clf(
                out,
                if c.user_agent().is_empty() {
                    b"-"
                } else {
                    c.user_agent()
                },
            );
            out.extend_from_slice(b"\"\n");
        }
        Format::Json => {
            out.extend_from_slice(b"{\"time\":\"");
            now.rfc3339(out);
            out.extend_from_slice(b"\",\"client\":\"");
            out.extend_from_slice(o.client.as_bytes());
            out.extend_from_slice(b"\",\"method\":\"");
            escape_json(out, c.method());
            out.extend_from_slice(b"\",\"target\":\"");
            escape_json(out, c.target());
            out.extend_from_slice(b"\",\"protocol\":\"HTTP/1.");
            push_u64(out, u64::from(c.minor_version));
            out.extend_from_slice(b"\",\"status\":");
            push_u64(out, u64::from(o.status));
            out.extend_from_slice(b",\"bytes_sent\":");
            push_u64(out, o.bytes_sent);
            out.extend_from_slice(b",\"request_bytes\":");
            push_u64(out, o.request_bytes);
            out.extend_from_slice(b",\"duration_ms\":");
            push_ms(out, o.duration_us);
            out.extend_from_slice(b",\"upstream\":");
            json_str_or_null(out, o.upstream.map(str::as_bytes));
            out.extend_from_slice(b",\"server\":");
            json_str_or_null(out, o.server.map(str::as_bytes));
            out.extend_from_slice(b",\"upstream_ms\":");
            match o.upstream_us {
                Some(us) => push_ms(out, us),
                None => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(b",\"retries\":");
            push_u64(out, u64::from(o.retries));
            out.extend_from_slice(b",\"request_id\":");
            let id = c.request_id();
            json_str_or_null(out, (!id.is_empty()).then_some(id));
            out.extend_from_slice(b",\"reason\":");
            json_str_or_null(out, o.reason.map(str::as_bytes));
            out.extend_from_slice(b"}\n");
        }
    }
}

/// `n` in decimal, without the formatting machinery.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Microseconds as milliseconds with three decimals (`1.500`).
fn push_ms(out: &mut Vec<u8>, us: u64) {
    push_u64(out, us / 1000);
    let frac = us % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

fn json_str_or_null(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        Some(v) => {
            out.push(b'"');
            escape_json(out, v);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// JSON string content: `"`, `\` and control bytes escaped; bytes above
/// 0x7E (obs-text in a header value) as `\u00XX`, so the line is valid UTF-8.
fn escape_json(out: &mut Vec<u8>, v: &[u8]) {
    let plain = |b: u8| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\';
    escape_runs(out, v, plain, |out, b| match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        _ => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[(b >> 4) as usize],
            HEX[(b & 15) as usize],
        ]),
    });
}

/// Copies `v` into `out`, runs of `plain` bytes at once, the others through
/// `escape`.
fn escape_runs(
    out: &mut Vec<u8>,
    v: &[u8],
    plain: impl Fn(u8) -> bool,
    escape: impl Fn(&mut Vec<u8>, u8),
) {
    let mut rest = v;
    while !rest.is_empty() {
        let run = rest.iter().position(|&b| !plain(b)).unwrap_or(rest.len());
        out.extend_from_slice(&rest[..run]);
        if let Some(&b) = rest.get(run) {
            escape(out, b);
            rest = &rest[run + 1..];
        } else {
            break;
        }
    }
}

/// nginx's escaping for the combined format: `"`, `\` and bytes outside
/// printable ASCII as `\xHH`.
fn escape_clf(out: &mut Vec<u8>, v: &[u8]) {
    let plain = |b: u8| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\';
    escape_runs(out, v, plain, |out, b| {
        out.extend_from_slice(&[b'\\', b'x', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]])
    });
}

/// The wall clock a worker logs with: the calendar part is worked out once a
/// second, the milliseconds per line.
pub struct Clock {
    secs: u64,
    ms: u32,
    /// `2026-11-27T17:00:21` and `27/Nov/2026:17:00:21`.
    iso: [u8; 19],
    clf: [u8; 20],
}

/// A second and its two calendar forms.
type Calendar = (u64, [u8; 19], [u8; 20]);

thread_local! {
    static LAST: std::cell::Cell<Option<Calendar>> = const { std::cell::Cell::new(None) };
}

impl Clock {
    /// Now (one clock read; the calendar is reused within a second).
    pub fn now() -> Clock {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = t.as_secs();
        let (iso, clf) = match LAST.with(|l| l.get()) {
            Some((s, iso, clf)) if s == secs => (iso, clf),
            _ => {
                let (iso, clf) = calendar(secs);
                LAST.with(|l| l.set(Some((secs, iso, clf))));
                (iso, clf)
            }
        };
        Clock {
            secs,
            ms: t.subsec_millis(),
            iso,
            clf,
        }
    }

    fn rfc3339(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.iso);
        let ms = self.ms;
        out.extend_from_slice(&[
            b'.',
            b'0' + (ms / 100) as u8,
            b'0' + (ms / 10 % 10) as u8,
            b'0' + (ms % 10) as u8,
            b'Z',
        ]);
    }

    fn clf(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.clf);
        out.extend_from_slice(b" +0000");
    }

    pub fn secs(&self) -> u64 {
        self.secs
    }
}

fn calendar(secs: u64) -> ([u8; 19], [u8; 20]) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s) = crate::log::civil_time(secs);
    let mut iso = [0u8; 19];
    let mut clf = [0u8; 20];
    let _ = write!(&mut iso[..], "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
    let _ = write!(
        &mut clf[..],
        "{d:02}/{}/{y:04}:{h:02}:{mi:02}:{s:02}",
        MONTHS[(mo - 1) as usize]
    );
    (iso, clf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome() -> Outcome<'static> {
        Outcome {
            client: "10.0.0.1",
            status: 200,
            bytes_sent: 1234,
            request_bytes: 99,
            duration_us: 1500,
            upstream: Some("app"),
            server: Some("127.0.0.1:9001"),
            upstream_us: Some(800),
            retries: 1,
            reason: None,
        }
    }

    #[test]
    fn both_formats() {
        let mut c = Capture::new(b"GET", b"/a\"b\\c", b"", b"curl/8\x01", 1);
        c.set_request_id(b"abc123");
        let now = Clock::now();
        let mut out = Vec::new();
        write_line(&mut out, Format::Combined, &now, &c, &outcome());
        let line = String::from_utf8(out).unwrap();
        assert!(line.starts_with("10.0.0.1 - - ["), "{line}");
        assert!(
            line.ends_with("] \"GET /a\\x22b\\x5cc HTTP/1.1\" 200 1234 \"-\" \"curl/8\\x01\"\n"),
            "{line}"
        );
        let mut out = Vec::new();
        write_line(&mut out, Format::Json, &now, &c, &outcome());
        let line = String::from_utf8(out).unwrap();
        assert!(line.contains("\"target\":\"/a\\\"b\\\\c\""), "{line}");
        assert!(line.contains("\"duration_ms\":1.500,"), "{line}");
        assert!(line.contains("\"upstream_ms\":0.800,"), "{line}");
        assert!(
            line.contains("\"request_id\":\"abc123\",\"reason\":null}"),
            "{line}"
        );
    }

    #[test]
    fn the_longest_line_fits() {
        let long = vec![0x01u8; 10_000];
        let mut c = Capture::new(&long, &long, &long, &long, 1);
        c.set_request_id(&long);
        let mut out = Vec::new();
        write_line(&mut out, Format::Json, &Clock::now(), &c, &outcome());
        assert!(out.len() <= LONGEST_LINE, "{}", out.len());
    }

    #[test]
    fn numbers_without_the_formatter() {
        for n in [0, 7, 10, 999, 1000, 123_456_789, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        for (us, text) in [
            (0, "0.000"),
            (7, "0.007"),
            (999, "0.999"),
            (1500, "1.500"),
            (60_000_123, "60000.123"),
        ] {
            let mut out = Vec::new();
            push_ms(&mut out, us);
            assert_eq!(out, text.as_bytes());
        }
    }

    #[test]
    fn escapes_between_plain_runs() {
        let mut out = Vec::new();
        escape_json(&mut out, b"\"a\\b\x7fc\xff");
        assert_eq!(out, b"\\\"a\\\\b\\u007fc\\u00ff");
        let mut out = Vec::new();
        escape_clf(&mut out, b"x\"\x00y\x80");
        assert_eq!(out, b"x\\x22\\x00y\\x80");
    }

    #[test]
    fn calendar_forms() {
        let (iso, clf) = calendar(1_795_696_496);
        assert_eq!(&iso, b"2026-11-26T12:34:56");
        assert_eq!(&clf, b"26/Nov/2026:12:34:56");
    }
}
