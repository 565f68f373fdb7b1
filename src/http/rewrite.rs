//! Writing the heads ringlb sends: the request to the upstream and the response
//! to the client. Hop-by-hop fields and every field named in Connection are
//! dropped, framing is re-emitted from the validated values, X-Forwarded-For is
//! appended to, X-Forwarded-Proto set and `Via: 1.1 ringlb` added. Everything is
//! written into a caller-owned `Vec<u8>` that is reused, so nothing allocates.

use super::fields::{eq_ci, is_hop_by_hop, listed_in_connection, push_u64};
use super::request::{Method, RequestHead};
use super::response::ResponseHead;
use super::Framing;

/// How the response body goes to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyOut {
    /// No body (HEAD, 1xx, 204, 304, or empty).
    None,
    Length(u64),
    /// Chunked: passed through, or re-framed from a read-until-close body.
    Chunked,
    /// Raw bytes until ringlb closes the connection (HTTP/1.0 clients).
    Raw,
}

/// What the response says about the client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnOut {
    /// HTTP/1.1 persistent connection: no field needed.
    Persistent,
    /// HTTP/1.0 client that asked for keep-alive.
    KeepAlive10,
    /// ringlb closes after this response.
    Close,
}

pub const VIA: &[u8] = b"Via: 1.1 ringlb\r\n";

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes the request head to forward upstream. `default_host` becomes the Host
/// of an HTTP/1.0 request that had none (the request goes out as HTTP/1.1,
/// which requires one): the address of the listener the client reached.
/// `request_id`: an `X-Request-Id` to send instead of any the client sent
/// (None: the client's fields go through as they are).
pub fn write_request(
    head: &RequestHead<'_, '_>,
    client_ip: &[u8],
    default_host: &[u8],
    request_id: Option<&[u8]>,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if head.absolute_form {
        push_field(out, b"Host", head.host);
    } else if head.host.is_empty() {
        push_field(out, b"Host", default_host);
    }
    let conn = head.connection_values();
    let mut xff_seen = false;
    for h in head.headers {
        let name = h.name.as_bytes();
        if head.drop_underscored && name.contains(&b'_') {
            continue;
        }
        if request_id.is_some() && eq_ci(name, b"x-request-id") {
            continue;
        }
        let kept_upgrade = head.upgrade && eq_ci(name, b"upgrade");
        if !kept_upgrade
            && (is_hop_by_hop(name)
                || (!conn.is_empty() && listed_in_connection(name, conn))
                || (head.absolute_form && eq_ci(name, b"host"))
                || eq_ci(name, b"x-forwarded-proto"))
        {
            continue;
        }
        if eq_ci(name, b"x-forwarded-for") {
            xff_seen = true;
            continue;
        }
        if let (Some(n @ 1..), true) = (head.max_forwards, eq_ci(name, b"max-forwards")) {
            if matches!(head.kind, Method::Options | Method::Trace) {
                out.extend_from_slice(b"Max-Forwards: ");
                push_u64(out, n - 1);
                out.extend_from_slice(b"\r\n");
                continue;
            }
        }
        push_field(out, name, h.value);
    }
    match head.framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::None | Framing::UntilClose => {
            if head.content_length == Some(0) {
                out.extend_from_slice(b"Content-Length: 0\r\n");
            }
        }
    }
    if head.upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    if xff_seen {
        for h in head
            .headers
            .iter()
            .filter(|h| eq_ci(h.name.as_bytes(), b"x-forwarded-for"))
        {
            out.extend_from_slice(super::fields::trim_ows(h.value));
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(client_ip);
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: http\r\n");
    if let Some(id) = request_id {
        push_field(out, b"X-Request-Id", id);
    }
    out.extend_from_slice(VIA);
    out.extend_from_slice(b"\r\n");
}

/// The answer to OPTIONS or TRACE with `Max-Forwards: 0`: OPTIONS lists the
/// methods; TRACE reflects the request head (minus credentials) as message/http.
pub fn write_local_answer(head: &RequestHead<'_, '_>, out: &mut Vec<u8>) {
    out.clear();
    if head.kind == Method::Options {
        out.extend_from_slice(
            b"HTTP/1.1 200 OK\r\nAllow: GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH\r\n\
              Content-Length: 0\r\nVia: 1.1 ringlb\r\n\r\n",
        );
        return;
    }
    let mut body_len = head.method.len() + 1 + head.target.len() + 11;
    let reflected = |name: &[u8]| {
        !(eq_ci(name, b"cookie")
            || eq_ci(name, b"authorization")
            || eq_ci(name, b"proxy-authorization"))
    };
    for h in head.headers.iter().filter(|h| reflected(h.name.as_bytes())) {
        body_len += h.name.len() + 2 + h.value.len() + 2;
    }
    body_len += 2;
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: message/http\r\nContent-Length: ");
    push_u64(out, body_len as u64);
    out.extend_from_slice(b"\r\nVia: 1.1 ringlb\r\n\r\n");
    let start = out.len();
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(if head.minor_version == 0 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    for h in head.headers.iter().filter(|h| reflected(h.name.as_bytes())) {
        push_field(out, h.name.as_bytes(), h.value);
    }
    out.extend_from_slice(b"\r\n");
    debug_assert_eq!(out.len() - start, body_len);
}

/// Writes the response head for the client.
pub fn write_response(
    head: &ResponseHead<'_, '_>,
    body: BodyOut,
    conn_out: ConnOut,
    out: &mut Vec<u8>,
) {
    out.clear();
    write_status_line(head, out);
    write_end_to_end_fields(head, out);
    match body {
        BodyOut::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyOut::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyOut::Raw => {}
        BodyOut::None => {
            // HEAD and 304 keep the length the GET would have had.
            if head.status != 204 && !head.is_informational() {
                if let Some(n) = head.content_length {
                    out.extend_from_slice(b"Content-Length: ");
                    push_u64(out, n);
                    out.extend_from_slice(b"\r\n");
                } else if head.chunked {
                    out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
                }
            }
        }
    }
    match conn_out {
        ConnOut::Persistent => {}
        ConnOut::KeepAlive10 => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        ConnOut::Close => out.extend_from_slice(b"Connection: close\r\n"),
    }
    out.extend_from_slice(VIA);
    out.extend_from_slice(b"\r\n");
}

/// Writes a 1xx response for an HTTP/1.1 client.
pub fn write_informational(head: &ResponseHead<'_, '_>, out: &mut Vec<u8>) {
    out.clear();
    write_status_line(head, out);
    write_end_to_end_fields(head, out);
    out.extend_from_slice(b"\r\n");
}

/// Writes a `101 Switching Protocols` for the client: end-to-end fields plus the
/// upgrade's own Upgrade field and `Connection: upgrade`.
pub fn write_switching_protocols(head: &ResponseHead<'_, '_>, out: &mut Vec<u8>) {
    out.clear();
    write_status_line(head, out);
    write_end_to_end_fields(head, out);
    for h in head
        .headers
        .iter()
        .filter(|h| eq_ci(h.name.as_bytes(), b"upgrade"))
    {
        push_field(out, b"Upgrade", h.value);
    }
    out.extend_from_slice(b"Connection: upgrade\r\n");
    out.extend_from_slice(VIA);
    out.extend_from_slice(b"\r\n");
}

fn write_status_line(head: &ResponseHead<'_, '_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(head.status));
    out.push(b' ');
    out.extend_from_slice(head.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn write_end_to_end_fields(head: &ResponseHead<'_, '_>, out: &mut Vec<u8>) {
    let conn = head.connection_values();
    for h in head.headers {
        let name = h.name.as_bytes();
        if is_hop_by_hop(name) || (!conn.is_empty() && listed_in_connection(name, conn)) {
            continue;
        }
        push_field(out, name, h.value);
    }
}

#[cfg(test)]
mod tests;
