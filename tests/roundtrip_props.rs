//! Property tests: a message ringlb serialises re-parses to the same meaning.
//! Requests: parse -> rewrite -> parse keeps method, target, host, framing and
//! every end-to-end field. Chunked bodies: encode -> decode (in any split) gives
//! the original bytes and finds the exact end.

use proptest::prelude::*;
use ringlb::http::chunked::ChunkedDecoder;
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
        rewrite::write_request(&first, b"192.0.2.1", b"lb:80", &mut out);
        let mut h2 = ringlb::http::header_slots();
        let second = request::parse(&out, &mut h2, &LIMITS).unwrap().unwrap();
        prop_assert_eq!(second.head_len, out.len());
        prop_assert_eq!(first.method, second.method);
        prop_assert_eq!(first.target, second.target);
        prop_assert_eq!(first.host, second.host);
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
        rewrite::write_request(&second, b"192.0.2.1", b"lb:80", &mut again);
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
