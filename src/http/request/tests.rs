use super::*;

const LIMITS: Limits = Limits {
    max_head_bytes: 8192,
    max_request_line_bytes: 1024,
    underscores: Underscores::Drop,
};

fn parse_str(s: &str) -> Result<Option<(Framing, bool, String, String)>, ProxyError> {
    let mut h = crate::http::header_slots();
    parse(s.as_bytes(), &mut h, &LIMITS).map(|o| {
        o.map(|r| {
            (
                r.framing,
                r.keep_alive,
                r.target.to_string(),
                String::from_utf8_lossy(r.host).into_owned(),
            )
        })
    })
}

fn rejects(s: &str) -> ProxyError {
    parse_str(s).expect_err(s)
}

#[test]
fn simple_get() {
    let r = parse_str("GET /a?b HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(
        r,
        (Framing::None, true, "/a?b".into(), "example.com".into())
    );
}

#[test]
fn partial_needs_more() {
    assert!(parse_str("GET / HTTP/1.1\r\nHost: x\r\n")
        .unwrap()
        .is_none());
}

#[test]
fn framing() {
    let r = parse_str("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap()
        .unwrap();
    assert_eq!(r.0, Framing::Length(5));
    let r = parse_str("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(r.0, Framing::Chunked);
    let r =
        parse_str("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
    assert_eq!(r.0, Framing::Length(5));
}

#[test]
fn smuggling_vectors_rejected() {
    for s in [
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 43\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a@b\r\n\r\n",
        "GET /\r\n\r\n",
        "GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        "GET x HTTP/1.1\r\nHost: x\r\n\r\n",
        "CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let e = rejects(s);
        assert!(matches!(e.status(), Some(400 | 501)), "{s:?} -> {e:?}");
    }
}

#[test]
fn size_limits() {
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(2000));
    assert_eq!(rejects(&long_line), ProxyError::UriTooLong);
    let partial_long_line = format!("GET /{}", "a".repeat(2000));
    assert_eq!(rejects(&partial_long_line), ProxyError::UriTooLong);
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n",
        "b".repeat(9000)
    );
    assert!(matches!(rejects(&big_head), ProxyError::HeadTooLarge(_)));
    let many = format!(
        "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
        "A: b\r\n".repeat(200)
    );
    assert!(matches!(rejects(&many), ProxyError::HeadTooLarge(_)));
}

#[test]
fn http10_keep_alive_only_if_asked() {
    let r = parse_str("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
    assert!(!r.1);
    let r = parse_str("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(r.1);
    let r = parse_str("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(!r.1);
}

#[test]
fn absolute_form_replaces_host() {
    let r = parse_str("GET http://Other.example:8080/p?q HTTP/1.1\r\nHost: ignored\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!((r.2.as_str(), r.3.as_str()), ("/p?q", "Other.example:8080"));
    let r = parse_str("GET http://h HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(r.2, "/");
}

#[test]
fn host_helpers() {
    assert!(valid_host(b"example.com:80"));
    assert!(valid_host(b"[::1]:8080"));
    assert!(!valid_host(b"example.com:80x"));
    assert!(!valid_host(b"a/b"));
    assert_eq!(host_without_port(b"example.com:80"), b"example.com");
    assert_eq!(host_without_port(b"[::1]:80"), b"[::1]");
}

#[test]
fn later_minor_versions_are_downgraded_to_1_1() {
    let mut req = b"GET / HTTP/1.2\r\nHost: x\r\n\r\n".to_vec();
    let mut h = crate::http::header_slots();
    assert_eq!(
        parse(&req, &mut h, &LIMITS).unwrap_err(),
        ProxyError::BadRequest(UNSUPPORTED_VERSION)
    );
    assert!(downgrade_minor_version(&mut req));
    assert_eq!(&req[..16], b"GET / HTTP/1.1\r\n");
    let mut h = crate::http::header_slots();
    assert_eq!(
        parse(&req, &mut h, &LIMITS).unwrap().unwrap().minor_version,
        1
    );
    for bad in [
        &b"GET / HTTP/2.0\r\n\r\n"[..],
        b"GET / HTTP/1.10\r\n\r\n",
        b"GET / HTTP/1.x\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.2",
        b"GET /HTTP/1.2\r\n\r\n",
    ] {
        let mut b = bad.to_vec();
        assert!(
            !downgrade_minor_version(&mut b),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
        assert_eq!(b, bad);
    }
}

#[test]
fn field_names_with_underscores_follow_the_policy() {
    let req = b"GET / HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 6.6.6.6\r\n\r\n";
    for (policy, reject, dropped) in [
        (Underscores::Drop, false, true),
        (Underscores::Pass, false, false),
        (Underscores::Reject, true, false),
    ] {
        let limits = Limits {
            underscores: policy,
            ..LIMITS
        };
        let mut h = crate::http::header_slots();
        match parse(req, &mut h, &limits) {
            Err(e) => {
                assert!(reject, "{policy:?}: {e}");
                assert_eq!(e.status(), Some(400));
            }
            Ok(head) => {
                assert!(!reject, "{policy:?}");
                assert_eq!(head.unwrap().drop_underscored, dropped, "{policy:?}");
            }
        }
    }
}
