//! Pre-rendered error responses: static bytes with Content-Length, written as they are.

/// A canned response: bytes to keep the connection, and bytes to close it.
pub struct Canned {
    pub keep_alive: &'static [u8],
    pub close: &'static [u8],
}

/// Status line and fields shared by both variants of a canned response.
macro_rules! head {
    ($code:literal, $reason:literal, $extra:literal, $len:literal) => {
        concat!(
            "HTTP/1.1 ",
            $code,
            " ",
            $reason,
            "\r\nContent-Type: text/plain\r\nContent-Length: ",
            $len,
            "\r\n",
            $extra
        )
    };
}

macro_rules! define {
    ($name:ident, $code:literal, $reason:literal, $extra:literal, $body:literal, $len:literal) => {
        pub const $name: Canned = Canned {
            keep_alive: concat!(head!($code, $reason, $extra, $len), "\r\n", $body).as_bytes(),
            close: concat!(
                head!($code, $reason, $extra, $len),
                "Connection: close\r\n\r\n",
                $body
            )
            .as_bytes(),
        };
    };
}

define!(BAD_REQUEST, "400", "Bad Request", "", "bad request\n", "12");
define!(NOT_FOUND, "404", "Not Found", "", "no route\n", "9");
define!(
    REQUEST_TIMEOUT,
    "408",
    "Request Timeout",
    "",
    "request timeout\n",
    "16"
);
define!(
    URI_TOO_LONG,
    "414",
    "URI Too Long",
    "",
    "request line too long\n",
    "22"
);
define!(
    HEAD_TOO_LARGE,
    "431",
    "Request Header Fields Too Large",
    "",
    "request head too large\n",
    "23"
);
define!(
    INTERNAL,
    "500",
    "Internal Server Error",
    "",
    "internal error\n",
    "15"
);
define!(
    NOT_IMPLEMENTED,
    "501",
    "Not Implemented",
    "",
    "not implemented\n",
    "16"
);
define!(BAD_GATEWAY, "502", "Bad Gateway", "", "bad gateway\n", "12");
define!(
    UNAVAILABLE,
    "503",
    "Service Unavailable",
    "Retry-After: 1\r\n",
    "no healthy upstream\n",
    "20"
);
define!(
    LOCAL_RESOURCES,
    "503",
    "Service Unavailable",
    "Retry-After: 1\r\n",
    "proxy out of local resources\n",
    "29"
);
define!(
    GATEWAY_TIMEOUT,
    "504",
    "Gateway Timeout",
    "",
    "gateway timeout\n",
    "16"
);

// Overload answers: the body names the limit that fired (`error::Shed`).
define!(
    SHED_CONN_LIMIT,
    "503",
    "Service Unavailable",
    "Retry-After: 1\r\n",
    "overloaded: conn_limit\n",
    "23"
);
define!(
    SHED_IP_LIMIT,
    "503",
    "Service Unavailable",
    "Retry-After: 1\r\n",
    "overloaded: ip_limit\n",
    "21"
);
define!(
    SHED_IN_FLIGHT,
    "503",
    "Service Unavailable",
    "Retry-After: 1\r\n",
    "overloaded: in_flight\n",
    "22"
);
define!(
    SHED_QUEUE_FULL,
    "503",
    "Service Unavailable",
    "Retry-After: 1\r\n",
    "overloaded: queue_full\n",
    "23"
);
define!(
    SHED_MEMORY,
    "503",
    "Service Unavailable",
    "Retry-After: 1\r\n",
    "overloaded: memory\n",
    "19"
);
define!(
    SHED_QUEUE_TIMEOUT,
    "503",
    "Service Unavailable",
    "Retry-After: 1\r\n",
    "overloaded: queue_timeout\n",
    "26"
);
define!(
    SHED_ADAPTIVE,
    "503",
    "Service Unavailable",
    "Retry-After: 1\r\n",
    "overloaded: adaptive\n",
    "21"
);

/// The canned response for a shed request or connection.
pub fn for_shed(why: crate::error::Shed) -> &'static Canned {
    use crate::error::Shed;
    match why {
        Shed::ConnLimit => &SHED_CONN_LIMIT,
        Shed::IpLimit => &SHED_IP_LIMIT,
        Shed::InFlight => &SHED_IN_FLIGHT,
        Shed::QueueFull => &SHED_QUEUE_FULL,
        Shed::QueueTimeout => &SHED_QUEUE_TIMEOUT,
        Shed::Adaptive => &SHED_ADAPTIVE,
        Shed::Memory => &SHED_MEMORY,
    }
}

/// The canned response for a failure (the status from `ProxyError::status`,
/// with a body that says which 503 it is); `None`: close without an answer.
pub fn for_error(e: crate::error::ProxyError) -> Option<&'static Canned> {
    match e {
        crate::error::ProxyError::LocalResources(_) => Some(&LOCAL_RESOURCES),
        crate::error::ProxyError::Shed(why) => Some(for_shed(why)),
        e => e.status().map(for_status),
    }
}

/// The canned response for a status from the DESIGN status table.
pub fn for_status(status: u16) -> &'static Canned {
    match status {
        400 => &BAD_REQUEST,
        404 => &NOT_FOUND,
        408 => &REQUEST_TIMEOUT,
        414 => &URI_TOO_LONG,
        431 => &HEAD_TOO_LARGE,
        501 => &NOT_IMPLEMENTED,
        502 => &BAD_GATEWAY,
        503 => &UNAVAILABLE,
        504 => &GATEWAY_TIMEOUT,
        _ => &INTERNAL,
    }
}

/// `100 Continue` as forwarded to HTTP/1.1 clients.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_lengths_are_right() {
        for status in [400, 404, 408, 414, 431, 500, 501, 502, 503, 504] {
            for bytes in [for_status(status).keep_alive, for_status(status).close] {
                let text = std::str::from_utf8(bytes).unwrap();
                let (head, body) = text.split_once("\r\n\r\n").unwrap();
                let cl: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .unwrap()
                    .parse()
                    .unwrap();
                assert_eq!(cl, body.len(), "{status}");
                assert!(head.starts_with(&format!("HTTP/1.1 {status} ")));
            }
        }
        let shed = crate::error::Shed::ALL.map(for_shed);
        for c in [&UNAVAILABLE, &LOCAL_RESOURCES].into_iter().chain(shed) {
            for bytes in [c.keep_alive, c.close] {
                let text = std::str::from_utf8(bytes).unwrap();
                assert!(text.contains("Retry-After: 1\r\n"));
                let (head, body) = text.split_once("\r\n\r\n").unwrap();
                assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
                assert!(head.starts_with("HTTP/1.1 503 "));
            }
        }
    }
}
