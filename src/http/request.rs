//! Request heads: parse with httparse, then validate framing and fields the way
//! RFC 9112 asks of a server (and of an intermediary that must not be fooled).

use super::fields::{eq_ci, list_has, parse_content_length, trim_ows};
use super::{Framing, HeaderSlots};
use crate::error::ProxyError;

/// What a request head may be: sizes, and what to do with field names that
/// contain underscores.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_request_line_bytes: usize,
    pub underscores: Underscores,
}

/// `X-Request-Id`: keep a valid incoming one (else add one), always replace
/// it, or add none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestIds {
    Keep,
    Replace,
    Off,
}

/// Request header names with underscores: CGI-style backends turn `-` into `_`,
/// so `X_Forwarded_For` would merge with (and spoof) ringlb's `X-Forwarded-For`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underscores {
    /// Removed before forwarding (default, as nginx).
    Drop,
    /// Forwarded unchanged.
    Pass,
    /// The request is answered 400.
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Trace,
    Connect,
    Patch,
    Other,
}

impl Method {
    fn from_bytes(m: &[u8]) -> Method {
        match m {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"CONNECT" => Method::Connect,
            b"PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }

    /// RFC 9110 §9.2.2: safe to retry automatically.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }
}

/// Most Connection field lines kept for hop-by-hop removal.
pub const MAX_CONNECTION_FIELDS: usize = 8;

/// A parsed and validated request head, borrowing the read buffer.
#[derive(Debug)]
pub struct RequestHead<'b, 'h> {
    pub method: &'b str,
    pub kind: Method,
    /// Origin-form target to forward (absolute-form is reduced to its path).
    pub target: &'b str,
    /// Whether the request used absolute-form (Host is then replaced).
    pub absolute_form: bool,
    pub minor_version: u8,
    pub headers: &'h [httparse::Header<'b>],
    /// Length of the whole head including the final CRLF.
    pub head_len: usize,
    /// Effective host (authority of absolute-form, else the Host field).
    pub host: &'b [u8],
    pub framing: Framing,
    /// The validated Content-Length, if one was sent.
    pub content_length: Option<u64>,
    /// Whether the client asked to keep the connection open afterwards.
    pub keep_alive: bool,
    /// HTTP/1.1 request without a body asking to switch protocols (`Upgrade`
    /// listed in Connection): forwarded with its Upgrade field, tunnelled on 101.
    pub upgrade: bool,
    pub expect_continue: bool,
    /// A valid Max-Forwards value (meaningful for OPTIONS and TRACE only).
    pub max_forwards: Option<u64>,
    pub connection: [&'b [u8]; MAX_CONNECTION_FIELDS],
    pub connection_count: usize,
    /// Some field name holds `_` and the policy is to drop such fields.
    pub drop_underscored: bool,
    /// The `X-Request-Id` the client sent, if exactly one and well-formed.
    pub request_id: Option<&'b [u8]>,
}

impl<'b> RequestHead<'b, '_> {
    pub fn connection_values(&self) -> &[&'b [u8]] {
        &self.connection[..self.connection_count]
    }

    /// Host without port, for routing.
    pub fn host_name(&self) -> &'b [u8] {
        host_without_port(self.host)
    }

    /// OPTIONS or TRACE with `Max-Forwards: 0`: ringlb must answer itself
    /// (RFC 9110 §7.6.2).
    pub fn answer_locally(&self) -> bool {
        matches!(self.kind, Method::Options | Method::Trace) && self.max_forwards == Some(0)
    }

    /// Path part of the target (before `?`).
    pub fn path(&self) -> &'b str {
        self.target.split('?').next().unwrap_or(self.target)
    }
}

/// Parses a request head from `data`. `Ok(None)`: incomplete, read more.
pub fn parse<'b, 'h>(
    data: &'b [u8],
    headers: &'h mut HeaderSlots<'b>,
    limits: &Limits,
) -> Result<Option<RequestHead<'b, 'h>>, ProxyError> {
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(data, headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            let line_end = data
                .iter()
                .take(limits.max_request_line_bytes + 2)
                .position(|&b| b == b'\n');
            if line_end.is_none() && data.len() > limits.max_request_line_bytes + 1 {
                return Err(ProxyError::UriTooLong);
            }
            if data.len() > limits.max_head_bytes {
                return Err(ProxyError::HeadTooLarge("head exceeds max_head_bytes"));
            }
            return Ok(None);
        }
        Err(e) => return Err(map_parse_error(e, data, limits)),
    };
    let line_len = data.iter().position(|&b| b == b'\n').unwrap_or(0);
    if line_len > limits.max_request_line_bytes + 1 {
        return Err(ProxyError::UriTooLong);
    }
    if head_len > limits.max_head_bytes {
        return Err(ProxyError::HeadTooLarge("head exceeds max_head_bytes"));
    }
    let method = req.method.unwrap_or("");
    let raw_target = req.path.unwrap_or("");
    let minor_version = req.version.unwrap_or(1);
    let kind = Method::from_bytes(method.as_bytes());
    let headers: &'h [httparse::Header<'b>] = req.headers;
    if kind == Method::Connect {
        return Err(ProxyError::NotImplemented("CONNECT is not proxied"));
    }
    if !raw_target.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(ProxyError::BadRequest("invalid byte in request target"));
    }
    let (target, authority) = split_target(raw_target, kind)?;

    let mut host: Option<&'b [u8]> = None;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut te_seen = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    let mut max_forwards = None;
    let mut upgrade_token = false;
    let mut upgrade_field = false;
    let mut connection: [&'b [u8]; MAX_CONNECTION_FIELDS] = [b""; MAX_CONNECTION_FIELDS];
    let mut connection_count = 0;
    let mut drop_underscored = false;
    let mut request_id: Option<Option<&'b [u8]>> = None;

    for h in headers {
        let name = h.name.as_bytes();
        let value = h.value;
        if limits.underscores != Underscores::Pass && name.contains(&b'_') {
            if limits.underscores == Underscores::Reject {
                return Err(ProxyError::BadRequest("field name with an underscore"));
            }
            drop_underscored = true;
        }
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(ProxyError::BadRequest("control character in field value"));
        }
        match name.len() {
            4 if eq_ci(name, b"host") => {
                if host.is_some() {
                    return Err(ProxyError::BadRequest("more than one Host field"));
                }
                let v = trim_ows(value);
                if !valid_host(v) {
                    return Err(ProxyError::BadRequest("invalid Host field"));
                }
                host = Some(v);
            }
            14 if eq_ci(name, b"content-length") => {
                let n = parse_content_length(value)
                    .ok_or(ProxyError::BadRequest("invalid Content-Length"))?;
                if content_length.is_some_and(|prev| prev != n) {
                    return Err(ProxyError::BadRequest("conflicting Content-Length fields"));
                }
                content_length = Some(n);
            }
            17 if eq_ci(name, b"transfer-encoding") => {
                let v = trim_ows(value);
                if te_seen || !eq_ci(v, b"chunked") {
                    return Err(ProxyError::BadRequest(
                        "Transfer-Encoding other than a single final chunked",
                    ));
                }
                te_seen = true;
                chunked = true;
            }
            10 if eq_ci(name, b"connection") => {
                if connection_count == MAX_CONNECTION_FIELDS {
                    return Err(ProxyError::BadRequest("too many Connection fields"));
                }
                connection[connection_count] = value;
                connection_count += 1;
                close |= list_has(value, b"close");
                keep_alive_token |= list_has(value, b"keep-alive");
                upgrade_token |= list_has(value, b"upgrade");
            }
            7 if eq_ci(name, b"upgrade") => upgrade_field = true,
            12 if eq_ci(name, b"x-request-id") => {
                let v = trim_ows(value);
                // A second one, or a malformed one, is replaced.
                request_id = Some(match request_id {
                    None if valid_request_id(v) => Some(v),
                    _ => None,
                });
            }
            12 if eq_ci(name, b"max-forwards") => {
                let v = trim_ows(value);
                if !v.is_empty() && !v.contains(&b',') {
                    max_forwards = parse_content_length(v);
                }
            }
            6 if eq_ci(name, b"expect") && eq_ci(trim_ows(value), b"100-continue") => {
                expect_continue = minor_version == 1;
            }
            _ => {}
        }
    }

    if te_seen && content_length.is_some() {
        return Err(ProxyError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if te_seen && minor_version == 0 {
        return Err(ProxyError::BadRequest(
            "Transfer-Encoding in an HTTP/1.0 request",
        ));
    }
    let host = match (authority, host) {
        (Some(a), _) => a,
        (None, Some(h)) if !h.is_empty() => h,
        (None, Some(_)) => return Err(ProxyError::BadRequest("empty Host field")),
        (None, None) if minor_version == 1 => {
            return Err(ProxyError::BadRequest("missing Host field"))
        }
        (None, None) => b"",
    };
    let framing = if chunked {
        Framing::Chunked
    } else {
        match content_length {
            Some(0) | None => Framing::None,
            Some(n) => Framing::Length(n),
        }
    };
    let keep_alive = !close && (minor_version == 1 || keep_alive_token);
    let upgrade = upgrade_field && upgrade_token && minor_version == 1 && framing == Framing::None;
    Ok(Some(RequestHead {
        method,
        kind,
        target,
        absolute_form: authority.is_some(),
        minor_version,
        headers,
        head_len,
        host,
        framing,
        content_length,
        keep_alive,
        upgrade,
        expect_continue,
        max_forwards,
        connection,
        connection_count,
        drop_underscored,
        request_id: request_id.flatten(),
    }))
}

/// A request id worth keeping: 1 to 128 bytes of letters, digits and
/// `-_.:+/=` (UUIDs, hex, base64, W3C trace ids).
pub fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-_.:+/=".contains(&b))
}

/// The reason given for a request line whose version httparse refuses.
pub const UNSUPPORTED_VERSION: &str = "invalid or unsupported HTTP version";

/// RFC 9110 §2.5: a request of a later HTTP/1.x minor version is handled as
/// the highest one ringlb speaks. If the request line in `data` ends in
/// `HTTP/1.2` to `HTTP/1.9`, rewrites it to `HTTP/1.1` in place (same length)
/// and returns true.
pub fn downgrade_minor_version(data: &mut [u8]) -> bool {
    let Some(nl) = data.iter().position(|&b| b == b'\n') else {
        return false;
    };
    let line = &data[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let n = line.len();
    if n < 9 || &line[n - 9..n - 1] != b" HTTP/1." || !(b'2'..=b'9').contains(&line[n - 1]) {
        return false;
    }
    data[n - 1] = b'1';
    true
}

fn map_parse_error(e: httparse::Error, data: &[u8], limits: &Limits) -> ProxyError {
    use httparse::Error as E;
    match e {
        E::TooManyHeaders => ProxyError::HeadTooLarge("too many header fields"),
        E::HeaderName => ProxyError::BadRequest("invalid field name (or whitespace before colon)"),
        E::HeaderValue => ProxyError::BadRequest("invalid field value (obs-fold, bare CR or NUL)"),
        E::NewLine => ProxyError::BadRequest("invalid line ending"),
        E::Version => {
            let line_end = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
            if line_end > limits.max_request_line_bytes {
                ProxyError::UriTooLong
            } else {
                ProxyError::BadRequest(UNSUPPORTED_VERSION)
            }
        }
        E::Token => ProxyError::BadRequest("invalid method or request target"),
        E::Status => ProxyError::BadRequest("invalid request line"),
    }
}

/// Splits an absolute-form target into (path, authority); origin-form and
/// asterisk-form are validated and returned as they are.
fn split_target(target: &str, kind: Method) -> Result<(&str, Option<&[u8]>), ProxyError> {
    if target.starts_with('/') {
        return Ok((target, None));
    }
    if target == "*" {
        return if kind == Method::Options {
            Ok((target, None))
        } else {
            Err(ProxyError::BadRequest(
                "asterisk-form target outside OPTIONS",
            ))
        };
    }
    let rest = strip_prefix_ci(target, "http://")
        .or_else(|| strip_prefix_ci(target, "https://"))
        .ok_or(ProxyError::BadRequest(
            "request target is not origin-form or absolute-form",
        ))?;
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.is_empty() || authority.contains('@') || !valid_host(authority.as_bytes()) {
        return Err(ProxyError::BadRequest(
            "invalid authority in absolute-form target",
        ));
    }
    let path = match path {
        "" if kind == Method::Options => "*",
        "" => "/",
        p if p.starts_with('?') => {
            return Err(ProxyError::BadRequest("absolute-form target without path"))
        }
        p => p,
    };
    Ok((path, Some(authority.as_bytes())))
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len()
        && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

/// Host = uri-host [ ":" port ], uri-host being a reg-name or an IP-literal.
pub fn valid_host(v: &[u8]) -> bool {
    if v.is_empty() {
        return true; // emptiness is judged by the caller
    }
    let (name, port) = if v[0] == b'[' {
        match v.iter().position(|&b| b == b']') {
            Some(end) => {
                let inner = &v[1..end];
                if inner.is_empty()
                    || !inner
                        .iter()
                        .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
                {
                    return false;
                }
                (&v[..=end], &v[end + 1..])
            }
            None => return false,
        }
    } else {
        match v.iter().position(|&b| b == b':') {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, &v[v.len()..]),
        }
    };
    if !port.is_empty()
        && (port[0] != b':' || port.len() > 6 || !port[1..].iter().all(u8::is_ascii_digit))
    {
        return false;
    }
    if name.first() == Some(&b'[') {
        return true;
    }
    !name.is_empty()
        && name.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b'%'
                )
        })
}

/// Strips `:port` (keeping IPv6 literals whole).
pub fn host_without_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return match host.iter().position(|&b| b == b']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.iter().position(|&b| b == b':') {
        Some(i) => &host[..i],
        None => host,
    }
}

#[cfg(test)]
mod tests;
