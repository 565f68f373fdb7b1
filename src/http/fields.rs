//! Small, allocation-free helpers for header field values: token lists,
//! Content-Length lists, hop-by-hop names.

/// ASCII case-insensitive equality.
#[inline]
pub fn eq_ci(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Trims optional whitespace (SP / HTAB) at both ends.
#[inline]
pub fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Iterates the non-empty elements of a comma-separated list, trimmed.
pub fn list_items(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(trim_ows)
        .filter(|t| !t.is_empty())
}

/// Whether a comma-separated token list contains `token` (case-insensitive).
pub fn list_has(v: &[u8], token: &[u8]) -> bool {
    list_items(v).any(|t| eq_ci(t, token))
}

/// Parses one Content-Length field value (`1*DIGIT`, or a list of identical
/// values such as `5, 5`). Returns `None` for anything invalid or overflowing.
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    let mut value: Option<u64> = None;
    let mut any = false;
    for part in v.split(|&b| b == b',') {
        let part = trim_ows(part);
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().try_fold(0u64, |acc, &d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })?;
        match value {
            Some(prev) if prev != n => return None,
            _ => value = Some(n),
        }
        any = true;
    }
    if any {
        value
    } else {
        None
    }
}

/// Fields that describe one connection and are never forwarded (RFC 9110 §7.6.1).
/// Content-Length and Transfer-Encoding are listed too: ringlb re-emits framing itself.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 8] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    ];
    // Cheap length pre-filter before the case-insensitive compares.
    matches!(name.len(), 2 | 7 | 10 | 14 | 16 | 17) && HOP.iter().any(|h| eq_ci(name, h))
}

/// Whether `name` is one of the fields listed in the message's Connection
/// headers. Framing fields can never be removed this way.
pub fn listed_in_connection(name: &[u8], connection_values: &[&[u8]]) -> bool {
    if eq_ci(name, b"content-length") || eq_ci(name, b"transfer-encoding") || eq_ci(name, b"host") {
        return false;
    }
    connection_values.iter().any(|v| list_has(v, name))
}

/// The value of one hex digit.
#[inline]
pub fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Writes a decimal number without allocating.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_rules() {
        assert_eq!(parse_content_length(b"42"), Some(42));
        assert_eq!(parse_content_length(b"5, 5"), Some(5));
        assert_eq!(parse_content_length(b"5, 6"), None);
        assert_eq!(parse_content_length(b"+5"), None);
        assert_eq!(parse_content_length(b"-1"), None);
        assert_eq!(parse_content_length(b"0x10"), None);
        assert_eq!(parse_content_length(b""), None);
        assert_eq!(parse_content_length(b"5,"), None);
        assert_eq!(parse_content_length(b"99999999999999999999"), None);
        assert_eq!(parse_content_length(b"18446744073709551616"), None);
        assert_eq!(parse_content_length(b" 7 "), Some(7));
    }

    #[test]
    fn token_lists() {
        assert!(list_has(b"keep-alive, Upgrade", b"upgrade"));
        assert!(!list_has(b"keep-alive-x", b"keep-alive"));
        assert!(listed_in_connection(b"X-Secret", &[b"close, x-secret"]));
        assert!(!listed_in_connection(
            b"Content-Length",
            &[b"content-length"]
        ));
    }

    #[test]
    fn hop_by_hop_names() {
        for n in [
            "Connection",
            "TE",
            "keep-alive",
            "Transfer-Encoding",
            "Upgrade",
            "Proxy-Connection",
            "Trailer",
        ] {
            assert!(is_hop_by_hop(n.as_bytes()), "{n}");
        }
        for n in ["Host", "Accept", "Content-Type", "X-Forwarded-For"] {
            assert!(!is_hop_by_hop(n.as_bytes()), "{n}");
        }
    }

    #[test]
    fn decimal() {
        let mut v = Vec::new();
        push_u64(&mut v, 0);
        v.push(b' ');
        push_u64(&mut v, 18446744073709551615);
        assert_eq!(v, b"0 18446744073709551615");
    }
}
