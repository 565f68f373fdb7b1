//! Request-head parser: never panics; whatever it accepts, ringlb's rewrite of it
//! re-parses to the same method, target, host and body framing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlb::error::ProxyError;
use ringlb::http::request::{self, Limits, Underscores};
use ringlb::http::{rewrite, MAX_HEADERS};

const LIMITS: Limits = Limits { max_head_bytes: 16384, max_request_line_bytes: 4096, underscores: Underscores::Drop };
const ROOMY: Limits = Limits { max_head_bytes: 1 << 20, max_request_line_bytes: 1 << 20, underscores: Underscores::Drop };

fuzz_target!(|data: &[u8]| {
    let mut h = ringlb::http::header_slots();
    let Ok(Some(head)) = request::parse(data, &mut h, &LIMITS) else { return };
    let mut out = Vec::new();
    rewrite::write_request(&head, b"127.0.0.1", b"lb:80", None, &mut out);
    let mut h2 = ringlb::http::header_slots();
    match request::parse(&out, &mut h2, &ROOMY) {
        Ok(Some(again)) => {
            assert_eq!(again.head_len, out.len());
            assert_eq!(again.method, head.method);
            assert_eq!(again.target, head.target);
            if head.host.is_empty() {
                assert_eq!(again.host, b"lb:80");
            } else {
                assert_eq!(again.host, head.host);
            }
            assert_eq!(again.framing, head.framing);
            assert!(!again.absolute_form);
        }
        // Forwarding fields added to a head already near the field limit.
        Err(ProxyError::HeadTooLarge(_)) if head.headers.len() > MAX_HEADERS - 4 => {}
        other => panic!("rewritten head does not re-parse: {other:?}\n{}", String::from_utf8_lossy(&out)),
    }
});
