//! Property tests: a message ringlb serialises re-parses to the same meaning.
//! Requests: parse -> rewrite -> parse keeps method, target, host, framing and
//! every end-to-end field. Chunked bodies: encode -> decode (in any split) gives
//! the original bytes and finds the exact end; re-encoding (in any split) gives
//! the canonical framing of the same chunks. Route paths: normalising is
//! idempotent and leaves no dot segment, double slash or decodable escape.

use proptest::prelude::*;
use ringlb::http::chunked::ChunkedDecoder;
use ringlb::http::reframe::Reframer;
use ringlb::http::request::{self, Limits, Underscores};
use ringlb::http::{rewrite, Framing};

const LIMITS: Limits = Limits {
    max_head_bytes: 65536,
    max_request_line_bytes: 8192,
    underscores: Underscores::Drop,
};

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9-]{0,15}"
}

fn field_value() -> impl Strategy<Value = String> {
    "[ -~]{0,40}".prop_map(|s| s.trim().to_string())
}

#[derive(Debug, Clone)]
struct Req {
    method: String,
    target: String,
    host: String,
    fields: Vec<(String, String)>,
    framing: u8, // 0 none, 1 length, 2 chunked
    body_len: u64,
}

fn request() -> impl Strategy<Value = Req> {
    (
        prop_oneof![
            Just("GET"),
            Just("POST"),
            Just("PUT"),
            Just("DELETE"),
            Just("PATCH"),
            Just("HEAD")
        ],
        "/[a-z0-9/._~%-]{0,30}(\\?[a-z0-9=&]{0,20})?",
        "[a-z][a-z0-9.-]{0,20}(:[0-9]{1,5})?",
        prop::collection::vec((token(), field_value()), 0..12),
        0u8..3,
        0u64..1_000_000,
    )
        .prop_map(|(m, target, host, fields, framing, body_len)| Req {
            method: m.to_string(),
            target,
            host,
            // Names ringlb owns or drops are not part of the end-to-end meaning.
            fields: fields
                .into_iter()
                .filter(|(n, _)| {
                    let n = n.to_ascii_lowercase();
                    !matches!(
                        n.as_str(),
                        "host"
                            | "content-length"
                            | "transfer-encoding"
                            | "connection"
                            | "keep-alive"
                            | "te"
                            | "trailer"
                            | "upgrade"
                            | "proxy-connection"
                            | "x-forwarded-for"
                            | "x-forwarded-proto"
                            | "via"
                            | "max-forwards"
                            | "expect"
                    )
                })
                .collect(),
            framing,
            body_len,
        })
}

fn serialise(r: &Req) -> String {
    let mut s = format!("{} {} HTTP/1.1\r\nHost: {}\r\n", r.method, r.target, r.host);
    for (n, v) in &r.fields {
        s.push_str(&format!("{n}: {v}\r\n"));
    }
    match r.framing {
        1 => s.push_str(&format!("Content-Length: {}\r\n", r.body_len)),
        2 => s.push_str("Transfer-Encoding: chunked\r\n"),
        _ => {}
    }
    s.push_str("\r\n");
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn rewritten_requests_keep_their_meaning(r in request()) {
        let raw = serialise(&r);
        let mut h1 = ringlb::http::header_slots();
        let first = request::parse(raw.as_bytes(), &mut h1, &LIMITS).unwrap().unwrap();
        let mut out = Vec::new();
        rewrite::write_request(&first, b"192.0.2.1", b"lb:80", None, &mut out);
        let mut h2 = ringlb::http::header_slots();
        let second = request::parse(&out, &mut h2, &LIMITS).unwrap().unwrap();
        prop_assert_eq!(second.head_len, out.len());
        // Against what was generated, not only against the first parse.
        prop_assert_eq!(second.method, r.method.as_str());
        prop_assert_eq!(second.target, r.target.as_str());
        prop_assert_eq!(second.host, r.host.as_bytes());
        prop_assert_eq!(first.framing, second.framing);
        let expected = match r.framing {
            1 if r.body_len > 0 => Framing::Length(r.body_len),
            2 => Framing::Chunked,
            _ => Framing::None,
        };
        prop_assert_eq!(second.framing, expected);
        for (n, v) in &r.fields {
            prop_assert!(
                second.headers.iter().any(|h| h.name.eq_ignore_ascii_case(n) && h.value == v.as_bytes()),
                "field {}: {} lost", n, v
            );
        }
        prop_assert_eq!(second.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("via")).count(), 1);
        // A second hop adds only its XFF element and its own Via line.
        let mut again = Vec::new();
        rewrite::write_request(&second, b"192.0.2.1", b"lb:80", None, &mut again);
        prop_assert_eq!(again.len(), out.len() + "192.0.2.1, ".len() + rewrite::VIA.len());
    }

    #[test]
    fn chunked_roundtrip_in_any_split(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..10),
        trailer in prop::option::of("[A-Za-z]{1,10}: [a-z0-9]{0,10}"),
        splits in prop::collection::vec(1usize..50, 1..20),
        tail in prop::collection::vec(any::<u8>(), 0..20),
    ) {
        let mut wire = Vec::new();
        let mut body = Vec::new();
        for c in &chunks {
            wire.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            wire.extend_from_slice(c);
            wire.extend_from_slice(b"\r\n");
            body.extend_from_slice(c);
        }
        wire.extend_from_slice(b"0\r\n");
        if let Some(t) = &trailer {
            wire.extend_from_slice(t.as_bytes());
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"\r\n");
        let end = wire.len();
        wire.extend_from_slice(&tail);

        let mut d = ChunkedDecoder::new();
        let mut decoded = Vec::new();
        let mut pos = 0;
        let mut split = splits.iter().cycle();
        let mut found_end = None;
        while pos < wire.len() && found_end.is_none() {
            let piece_end = (pos + split.next().unwrap()).min(wire.len());
            let mut at = pos;
            while at < piece_end {
                let p = d.step(&wire[at..piece_end]).unwrap();
                decoded.extend_from_slice(&wire[at + p.data.start..at + p.data.end]);
                at += p.consumed;
                if p.done {
                    found_end = Some(at);
                    break;
                }
                if p.consumed == 0 {
                    break;
                }
            }
            pos = at.max(piece_end.min(found_end.unwrap_or(piece_end)));
        }
        prop_assert_eq!(found_end, Some(end));
        prop_assert_eq!(decoded, body);
    }
}

/// A chunk-size line as a sender may spell it: leading zeros, either case,
/// extensions.
fn spelled_size(len: usize, zeros: usize, upper: bool, ext: &Option<String>) -> String {
    let hex = if upper {
        format!("{len:X}")
    } else {
        format!("{len:x}")
    };
    let ext = ext.as_ref().map_or(String::new(), |e| format!(";{e}"));
    format!("{}{hex}{ext}\r\n", "0".repeat(zeros))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn reframing_in_any_split_gives_the_canonical_framing(
        chunks in prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 1..200), 0usize..4, any::<bool>(), prop::option::of("[a-z]{1,8}(=[a-z0-9]{0,8})?")),
            0..8,
        ),
        last_zeros in 0usize..3,
        trailers in prop::collection::vec(
            (prop_oneof![Just("X-Sum"), Just("Content-Length"), Just("Host"), Just("connection"), Just("X-Other")], "[a-z0-9]{0,10}"),
            0..4,
        ),
        splits in prop::collection::vec(1usize..40, 1..20),
        tail in prop::collection::vec(any::<u8>(), 0..20),
    ) {
        let mut wire = Vec::new();
        let mut canonical = Vec::new();
        for (data, zeros, upper, ext) in &chunks {
            wire.extend_from_slice(spelled_size(data.len(), *zeros, *upper, ext).as_bytes());
            canonical.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            for out in [&mut wire, &mut canonical] {
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            }
        }
        wire.extend_from_slice(spelled_size(0, last_zeros, false, &None).as_bytes());
        canonical.extend_from_slice(b"0\r\n");
        for (name, value) in &trailers {
            let line = format!("{name}: {value}\r\n");
            wire.extend_from_slice(line.as_bytes());
            if matches!(*name, "X-Sum" | "X-Other") {
                canonical.extend_from_slice(line.as_bytes());
            }
        }
        wire.extend_from_slice(b"\r\n");
        canonical.extend_from_slice(b"\r\n");
        wire.extend_from_slice(&tail);

        // As the relay does: append what arrives, send the output, keep the rest.
        let mut r = Reframer::new(u64::MAX);
        let mut buf = Vec::new();
        let mut sent = Vec::new();
        let mut fed = 0;
        let mut split = splits.iter().cycle();
        while !r.is_done() {
            prop_assert!(fed < wire.len(), "the end was not found");
            let end = (fed + split.next().unwrap()).min(wire.len());
            buf.extend_from_slice(&wire[fed..end]);
            fed = end;
            let out = r.reframe(&mut buf).unwrap();
            prop_assert!(out.output <= out.consumed);
            sent.extend_from_slice(&buf[..out.output]);
            buf.drain(..out.consumed);
        }
        buf.extend_from_slice(&wire[fed..]);
        prop_assert_eq!(sent, canonical);
        prop_assert_eq!(buf, tail);
    }

    #[test]
    fn normalised_paths_are_clean_and_stable(path in "/[a-zA-Z0-9/.%_~-]{0,40}") {
        let mut s1 = Vec::new();
        let once = ringlb::http::path::normalise(&path, &mut s1).to_string();
        let mut s2 = Vec::new();
        let twice = ringlb::http::path::normalise(&once, &mut s2).to_string();
        prop_assert_eq!(&once, &twice);
        prop_assert!(once.starts_with('/'));
        prop_assert!(!once.contains("//"), "{}", once);
        for seg in once.split('/') {
            prop_assert!(seg != "." && seg != "..", "{}", once);
        }
        let b = once.as_bytes();
        for i in 0..b.len().saturating_sub(2) {
            if b[i] == b'%' {
                if let Ok(v) = u8::from_str_radix(&once[i + 1..i + 3], 16) {
                    prop_assert!(!(v.is_ascii_alphanumeric() || b"-._~/".contains(&v)), "{}", once);
                }
            }
        }
    }
}
