use super::*;
use crate::http::request::{self, Limits, Underscores};
use crate::http::response;

fn forward(raw: &str) -> String {
    let mut h = crate::http::header_slots();
    let limits = Limits {
        max_head_bytes: 8192,
        max_request_line_bytes: 1024,
        underscores: Underscores::Drop,
    };
    let head = request::parse(raw.as_bytes(), &mut h, &limits)
        .unwrap()
        .unwrap();
    let mut out = Vec::new();
    write_request(&head, b"10.1.2.3", b"lb.example:80", None, &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn hop_by_hop_removed_and_forwarding_fields_added() {
    let out = forward(
        "GET /x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: 5\r\nTE: trailers\r\n\
         X-Secret: s\r\nProxy-Connection: close\r\nUpgrade: h2c\r\nX-Forwarded-For: 1.1.1.1\r\n\
         X-Forwarded-Proto: https\r\nAccept: */*\r\n\r\n",
    );
    assert_eq!(
        out,
        "GET /x HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nX-Forwarded-For: 1.1.1.1, 10.1.2.3\r\n\
         X-Forwarded-Proto: http\r\nVia: 1.1 ringlb\r\n\r\n"
    );
}

#[test]
fn framing_is_normalised() {
    let out = forward("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n");
    assert!(out.contains("\r\nContent-Length: 5\r\n"), "{out}");
    assert_eq!(out.matches("Content-Length").count(), 1);
    let out = forward("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n");
    assert!(out.contains("\r\nTransfer-Encoding: chunked\r\n"), "{out}");
    let out = forward("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    assert!(out.contains("\r\nContent-Length: 0\r\n"), "{out}");
}

#[test]
fn http10_request_forwarded_as_11_and_absolute_form_host() {
    let out = forward("GET http://b.example/p HTTP/1.0\r\nHost: a\r\n\r\n");
    assert!(
        out.starts_with("GET /p HTTP/1.1\r\nHost: b.example\r\n"),
        "{out}"
    );
    assert_eq!(out.matches("Host:").count(), 1);
}

fn client_head(raw: &str, body: BodyOut, conn: ConnOut, head_req: bool) -> String {
    let mut h = crate::http::header_slots();
    let head = response::parse(raw.as_bytes(), &mut h, head_req, 8192)
        .unwrap()
        .unwrap();
    let mut out = Vec::new();
    write_response(&head, body, conn, &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn response_head_rewrite() {
    let out = client_head(
        "HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 3\r\nServer: s\r\n\r\n",
        BodyOut::Length(3),
        ConnOut::Close,
        false,
    );
    assert_eq!(out, "HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 3\r\nConnection: close\r\nVia: 1.1 ringlb\r\n\r\n");
    let out = client_head(
        "HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n",
        BodyOut::None,
        ConnOut::Persistent,
        true,
    );
    assert!(
        out.contains("Content-Length: 42\r\n"),
        "HEAD keeps the GET length: {out}"
    );
    let out = client_head(
        "HTTP/1.1 204 No Content\r\nContent-Length: 42\r\n\r\n",
        BodyOut::None,
        ConnOut::Persistent,
        false,
    );
    assert!(!out.contains("Content-Length"), "{out}");
}

#[test]
fn max_forwards_is_decremented_for_options_and_trace_only() {
    let out = forward("TRACE / HTTP/1.1\r\nHost: a\r\nMax-Forwards: 5\r\n\r\n");
    assert!(out.contains("\r\nMax-Forwards: 4\r\n"), "{out}");
    let out = forward("GET / HTTP/1.1\r\nHost: a\r\nMax-Forwards: 5\r\n\r\n");
    assert!(out.contains("\r\nMax-Forwards: 5\r\n"), "{out}");
}

#[test]
fn local_answers() {
    let mut h = crate::http::header_slots();
    let limits = Limits {
        max_head_bytes: 8192,
        max_request_line_bytes: 1024,
        underscores: Underscores::Drop,
    };
    let raw = b"TRACE /t HTTP/1.1\r\nHost: a\r\nCookie: secret\r\nMax-Forwards: 0\r\n\r\n";
    let head = request::parse(raw, &mut h, &limits).unwrap().unwrap();
    assert!(head.answer_locally());
    let mut out = Vec::new();
    write_local_answer(&head, &mut out);
    let text = String::from_utf8(out).unwrap();
    let (resp_head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        resp_head.contains(&format!("Content-Length: {}", body.len())),
        "{text}"
    );
    assert!(
        body.starts_with("TRACE /t HTTP/1.1\r\nHost: a\r\n"),
        "{body}"
    );
    assert!(!body.contains("secret"));
}

#[test]
fn http10_request_without_host_gets_the_listener_authority() {
    let out = forward("GET / HTTP/1.0\r\n\r\n");
    assert!(
        out.starts_with("GET / HTTP/1.1\r\nHost: lb.example:80\r\n"),
        "{out}"
    );
}
