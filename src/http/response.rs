//! Response heads from upstreams: parse, validate framing (RFC 9112 §6.3), and
//! decide how the body is delimited given the request method and status.

use super::fields::{eq_ci, list_has, parse_content_length, trim_ows};
use super::request::MAX_CONNECTION_FIELDS;
use super::{Framing, HeaderSlots};
use crate::error::ProxyError;

/// A parsed, validated response head borrowing the upstream read buffer.
#[derive(Debug)]
pub struct ResponseHead<'b, 'h> {
    pub status: u16,
    pub reason: &'b str,
    pub minor_version: u8,
    pub headers: &'h [httparse::Header<'b>],
    pub head_len: usize,
    /// How the body is delimited on the upstream connection.
    pub framing: Framing,
    /// The Content-Length value, kept for HEAD / 304 answers that carry no body.
    pub content_length: Option<u64>,
    /// The upstream sent `Transfer-Encoding: chunked` (kept for HEAD answers).
    pub chunked: bool,
    /// Whether the upstream connection may carry another request afterwards.
    pub upstream_keep_alive: bool,
    pub connection: [&'b [u8]; MAX_CONNECTION_FIELDS],
    pub connection_count: usize,
}

impl<'b> ResponseHead<'b, '_> {
    pub fn connection_values(&self) -> &[&'b [u8]] {
        &self.connection[..self.connection_count]
    }

    pub fn is_informational(&self) -> bool {
        (100..200).contains(&self.status)
    }
}

/// Parses a response head. `head_request`: the request was HEAD (no body follows).
pub fn parse<'b, 'h>(
    data: &'b [u8],
    headers: &'h mut HeaderSlots<'b>,
    head_request: bool,
    max_head_bytes: usize,
) -> Result<Option<ResponseHead<'b, 'h>>, ProxyError> {
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, data, headers);
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if data.len() > max_head_bytes {
                return Err(ProxyError::UpstreamBadResponse("response head too large"));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ProxyError::UpstreamBadResponse("too many header fields"))
        }
        Err(_) => return Err(ProxyError::UpstreamBadResponse("malformed response head")),
    };
    let status = resp.code.unwrap_or(0);
    if !(100..=999).contains(&status) {
        return Err(ProxyError::UpstreamBadResponse("invalid status code"));
    }
    let minor_version = resp.version.unwrap_or(1);
    let reason = resp.reason.unwrap_or("");
    let headers: &'h [httparse::Header<'b>] = resp.headers;

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut te_seen = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut connection: [&'b [u8]; MAX_CONNECTION_FIELDS] = [b""; MAX_CONNECTION_FIELDS];
    let mut connection_count = 0;
    for h in headers {
        let name = h.name.as_bytes();
        let value = h.value;
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(ProxyError::UpstreamBadResponse(
                "control character in field value",
            ));
        }
        match name.len() {
            14 if eq_ci(name, b"content-length") => {
                let n = parse_content_length(value)
                    .ok_or(ProxyError::UpstreamBadResponse("invalid Content-Length"))?;
                if content_length.is_some_and(|p| p != n) {
                    return Err(ProxyError::UpstreamBadResponse(
                        "conflicting Content-Length fields",
                    ));
                }
                content_length = Some(n);
            }
            17 if eq_ci(name, b"transfer-encoding") => {
                if te_seen || !eq_ci(trim_ows(value), b"chunked") {
                    return Err(ProxyError::UpstreamBadResponse(
                        "unsupported Transfer-Encoding",
                    ));
                }
                te_seen = true;
                chunked = true;
            }
            10 if eq_ci(name, b"connection") => {
                if connection_count == MAX_CONNECTION_FIELDS {
                    return Err(ProxyError::UpstreamBadResponse(
                        "too many Connection fields",
                    ));
                }
                connection[connection_count] = value;
                connection_count += 1;
                close |= list_has(value, b"close");
                keep_alive_token |= list_has(value, b"keep-alive");
            }
            _ => {}
        }
    }
    if te_seen && content_length.is_some() {
        return Err(ProxyError::UpstreamBadResponse(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    let bodyless = head_request || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = if bodyless {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else {
        match content_length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    let upstream_keep_alive =
        !close && (minor_version == 1 || keep_alive_token) && framing != Framing::UntilClose;
    Ok(Some(ResponseHead {
        status,
        reason,
        minor_version,
        headers,
        head_len,
        framing,
        content_length,
        chunked,
        upstream_keep_alive,
        connection,
        connection_count,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing(s: &str, head: bool) -> Result<Framing, ProxyError> {
        let mut h = crate::http::header_slots();
        parse(s.as_bytes(), &mut h, head, 65536).map(|r| r.unwrap().framing)
    }

    #[test]
    fn body_length_precedence() {
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false),
            Ok(Framing::Length(3))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true),
            Ok(Framing::None)
        );
        assert_eq!(
            framing(
                "HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
                false
            ),
            Ok(Framing::None)
        );
        assert_eq!(
            framing(
                "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Ok(Framing::None)
        );
        assert_eq!(
            framing("HTTP/1.1 100 Continue\r\n\r\n", false),
            Ok(Framing::None)
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\n\r\n", false),
            Ok(Framing::UntilClose)
        );
    }

    #[test]
    fn bad_framing_is_502() {
        for s in [
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            let e = framing(s, false).unwrap_err();
            assert_eq!(e.status(), Some(502), "{s:?}");
        }
    }

    #[test]
    fn keep_alive_of_upstream() {
        let mut h = crate::http::header_slots();
        let r = parse(
            b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
            &mut h,
            false,
            4096,
        )
        .unwrap()
        .unwrap();
        assert!(!r.upstream_keep_alive);
        let mut h = crate::http::header_slots();
        let r = parse(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            &mut h,
            false,
            4096,
        )
        .unwrap()
        .unwrap();
        assert!(!r.upstream_keep_alive);
    }
}
