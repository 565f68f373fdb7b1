//! The path routes are matched against (and hashed on), normalised so that
//! spellings a backend treats as the same path cannot bypass a route:
//! `/%61dmin`, `//admin`, `/./admin` and `/x/../admin` all match `/admin`.
//!
//! Steps, after RFC 3986 §6.2.2: percent-encoded unreserved characters are
//! decoded, and so is `%2F` (a slash: many backends decode it, so for matching
//! it must count as one; nginx does the same); other escapes keep their
//! encoding, with upper-case hex digits. Then runs of slashes are merged (as
//! nginx's `merge_slashes`) and dot segments removed (§5.2.4). Case is kept:
//! paths are case-sensitive. The request forwarded upstream keeps its original
//! target.

use super::fields::hex_digit;

/// Whether `path` may change under normalisation (most paths do not, and
/// then cost one scan).
#[inline]
pub fn needs_normalising(path: &str) -> bool {
    let b = path.as_bytes();
    b.iter()
        .enumerate()
        .any(|(i, &c)| c == b'%' || (c == b'/' && matches!(b.get(i + 1), Some(b'/' | b'.'))))
}

/// `path` normalised; the result lives in `scratch` when it differs.
pub fn normalise<'a>(path: &'a str, scratch: &'a mut Vec<u8>) -> &'a str {
    if !path.starts_with('/') || !needs_normalising(path) {
        return path;
    }
    scratch.clear();
    scratch.extend_from_slice(path.as_bytes());
    // A malformed escape can meet a decoded character and form a new one
    // (`%0%61` -> `%0a`): decode until nothing changes, so that normalising
    // twice gives what normalising once gave. Each pass only shortens.
    while decode_in_place(scratch) {}
    merge_slashes(scratch);
    remove_dot_segments(scratch);
    // Only ASCII went in (targets are validated to 0x21-0x7E) and only ASCII
    // unreserved characters were decoded.
    std::str::from_utf8(scratch).unwrap_or(path)
}

/// Characters decoded for matching: the unreserved ones, and the slash.
fn decoded(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/')
}

/// Decodes the escapes of `decoded` characters (upper-casing the others'),
/// in place; true if the path got shorter.
fn decode_in_place(p: &mut Vec<u8>) -> bool {
    let (mut r, mut w) = (0, 0);
    while r < p.len() {
        let b = p[r];
        if b == b'%' && r + 2 < p.len() {
            if let (Some(h), Some(l)) = (hex_digit(p[r + 1]), hex_digit(p[r + 2])) {
                let c = h << 4 | l;
                if decoded(c) {
                    p[w] = c;
                    w += 1;
                } else {
                    p[w] = b'%';
                    p[w + 1] = p[r + 1].to_ascii_uppercase();
                    p[w + 2] = p[r + 2].to_ascii_uppercase();
                    w += 3;
                }
                r += 3;
                continue;
            }
        }
        p[w] = b;
        w += 1;
        r += 1;
    }
    let shorter = w < p.len();
    p.truncate(w);
    shorter
}

fn merge_slashes(p: &mut Vec<u8>) {
    let mut w = 0;
    for r in 0..p.len() {
        if p[r] == b'/' && w > 0 && p[w - 1] == b'/' {
            continue;
        }
        p[w] = p[r];
        w += 1;
    }
    p.truncate(w);
}

/// RFC 3986 §5.2.4 on an absolute path, in place: segments are copied down,
/// `.` dropped, `..` removing the segment before it (never above the root).
fn remove_dot_segments(p: &mut Vec<u8>) {
    debug_assert!(p.first() == Some(&b'/'));
    let len = p.len();
    let mut w = 0; // output length; the output always starts with '/'
    let mut r = 0;
    while r < len {
        // p[r] == b'/': a segment runs to the next slash.
        let start = r + 1;
        let end = p[start..len]
            .iter()
            .position(|&b| b == b'/')
            .map_or(len, |k| start + k);
        let seg_len = end - start;
        let last = end == len;
        let is_dot = seg_len == 1 && p[start] == b'.';
        let is_dotdot = seg_len == 2 && p[start] == b'.' && p[start + 1] == b'.';
        if is_dot || is_dotdot {
            if is_dotdot {
                // Back to the slash before the last output segment.
                w = p[..w].iter().rposition(|&b| b == b'/').unwrap_or(0);
            }
            if last {
                // "/a/." and "/a/b/.." end in a slash.
                p[w] = b'/';
                w += 1;
            }
        } else {
            p.copy_within(r..end, w);
            w += end - r;
        }
        r = end;
    }
    if w == 0 {
        p[0] = b'/';
        w = 1;
    }
    p.truncate(w);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> String {
        let mut s = Vec::new();
        normalise(p, &mut s).to_string()
    }

    #[test]
    fn bypass_spellings_all_reach_the_same_path() {
        for p in [
            "/admin",
            "/%61dmin",
            "/%61%64%6D%69%6e",
            "//admin",
            "///admin",
            "/./admin",
            "/x/../admin",
            "/x/y/../../admin",
            "/../admin",
            "/%2e/admin",
            "/%2E%2E/admin",
            "/x/%2e%2e/admin",
            "/x//..//admin",
        ] {
            assert_eq!(norm(p), "/admin", "{p}");
        }
    }

    #[test]
    fn what_stays() {
        assert_eq!(norm("/Admin"), "/Admin", "case-sensitive");
        assert_eq!(norm("/a%3fb%3F"), "/a%3Fb%3F", "reserved stays encoded");
        assert_eq!(norm("/a%2fb"), "/a/b", "an encoded slash is a slash");
        assert_eq!(norm("/a/..%2F..%2fadmin"), "/admin");
        assert_eq!(norm("/a/b/"), "/a/b/");
        assert_eq!(norm("/a/."), "/a/");
        assert_eq!(norm("/a/b/.."), "/a/");
        assert_eq!(norm("/.."), "/");
        assert_eq!(norm("/."), "/");
        assert_eq!(norm("/"), "/");
        assert_eq!(norm("/.well-known/x"), "/.well-known/x");
        assert_eq!(norm("/a..b/c"), "/a..b/c");
        assert_eq!(norm("/%zz/%4"), "/%zz/%4", "broken escapes kept");
        assert_eq!(
            norm("/%0%61"),
            "/%0A",
            "stable: an escape formed by decoding is decoded too"
        );
        assert_eq!(norm("*"), "*");
    }

    #[test]
    fn unchanged_paths_are_not_copied() {
        let mut s = Vec::new();
        let p = "/plain/path";
        assert!(std::ptr::eq(normalise(p, &mut s), p));
        assert!(s.is_empty());
    }
}
