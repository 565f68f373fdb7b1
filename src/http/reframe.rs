//! Chunked framing re-encoded canonically, in place, as it streams through.
//!
//! Forwarding chunk-size lines byte for byte would hand a backend sizes such
//! as `100000005` (which one that keeps 32 bits reads as 5: smuggling) and
//! extensions it may parse its own way. Instead every size line goes out as
//! lower-case hex without leading zeros or extensions, chunk data unchanged,
//! and the trailer section keeps only fields that may be trailers: framing,
//! routing and connection fields (Content-Length, Transfer-Encoding, Host,
//! Connection and the other hop-by-hop ones) are dropped. Validation is the
//! decoder's (`chunked`), so the two can never disagree.
//!
//! Every canonical line is at most as long as the line it replaces, so the
//! output is written over the input in the same buffer: no allocation, and no
//! copy at all for data when the sender's framing was canonical already. A
//! line cut by the end of the input is left in place, unconsumed, to be
//! completed by the next read.

use super::chunked::{ChunkError, ChunkedDecoder, Line};
use super::fields::{eq_ci, is_hop_by_hop};

#[derive(Debug, Clone)]
pub struct Reframer {
    decoder: ChunkedDecoder,
}

/// What one call made of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reframed {
    /// Input bytes used.
    pub consumed: usize,
    /// Canonical output bytes, now at the front of the buffer.
    pub output: usize,
    /// The body ended within the consumed input.
    pub done: bool,
}

/// The longest canonical size line: 16 hex digits and CRLF.
const MAX_SIZE_LINE: usize = 18;

impl Reframer {
    /// `max_chunk`: the largest chunk accepted (a larger one is an error).
    pub fn new(max_chunk: u64) -> Reframer {
        Reframer {
            decoder: ChunkedDecoder::with_max_size(max_chunk),
        }
    }

    pub fn is_done(&self) -> bool {
        self.decoder.is_done()
    }

    /// Rewrites the chunked body bytes at the front of `buf` canonically.
    /// `buf[..output]` is then ready to send; `buf[consumed..]` is untouched
    /// (the rest of a cut line, or what follows the body).
    pub fn reframe(&mut self, buf: &mut [u8]) -> Result<Reframed, ChunkError> {
        let (mut r, mut w) = (0, 0);
        while r < buf.len() && !self.decoder.is_done() {
            let before = self.decoder.clone();
            let p = self.decoder.step(&buf[r..])?;
            if !p.data.is_empty() {
                buf.copy_within(r + p.data.start..r + p.data.end, w);
                w += p.data.len();
            }
            match p.line {
                Some(Line::Size(size)) => {
                    let mut line = [0u8; MAX_SIZE_LINE];
                    let n = size_line(size, &mut line);
                    debug_assert!(n <= p.consumed, "a canonical line is never longer");
                    buf[w..w + n].copy_from_slice(&line[..n]);
                    w += n;
                }
                Some(Line::DataEnd | Line::End) => {
                    buf[w..w + 2].copy_from_slice(b"\r\n");
                    w += 2;
                }
                Some(Line::Trailer { name_len }) => {
                    let name = &buf[r..r + name_len];
                    if !(is_hop_by_hop(name) || eq_ci(name, b"host")) {
                        buf.copy_within(r..r + p.consumed, w);
                        w += p.consumed;
                    }
                }
                None if p.data.is_empty() && !self.decoder.at_boundary() => {
                    // A line cut by the end of the input: leave it for later.
                    self.decoder = before;
                    break;
                }
                None => {}
            }
            r += p.consumed;
        }
        Ok(Reframed {
            consumed: r,
            output: w,
            done: self.decoder.is_done(),
        })
    }
}

/// Writes `{size:x}\r\n` into `out`; returns its length.
fn size_line(size: u64, out: &mut [u8; MAX_SIZE_LINE]) -> usize {
    let digits = ((64 - size.leading_zeros()).div_ceil(4)).max(1) as usize;
    for (i, digit) in out[..digits].iter_mut().enumerate() {
        let nibble = (size >> (4 * (digits - 1 - i))) & 0xf;
        *digit = b"0123456789abcdef"[nibble as usize];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    digits + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `piece` bytes, as reads would deliver it, and
    /// collects what would be sent.
    fn stream(input: &[u8], piece: usize, max: u64) -> Result<(Vec<u8>, Vec<u8>), ChunkError> {
        let mut r = Reframer::new(max);
        let mut buf = Vec::new();
        let mut sent = Vec::new();
        let mut fed = 0;
        loop {
            let end = (fed + piece).min(input.len());
            buf.extend_from_slice(&input[fed..end]);
            fed = end;
            let out = r.reframe(&mut buf)?;
            sent.extend_from_slice(&buf[..out.output]);
            buf.drain(..out.consumed);
            if out.done {
                return Ok((sent, buf));
            }
            if fed == input.len() {
                return Ok((sent, buf));
            }
        }
    }

    #[test]
    fn sizes_and_trailers_go_out_canonical() {
        let input = b"0005;name=val\r\nhello\r\n00a\r\n0123456789\r\n000;last\r\n\
                      X-Checksum: abc\r\nContent-Length: 5\r\nhost: evil\r\nTransfer-Encoding: chunked\r\n\
                      Connection: close\r\nX-Other:\tv\r\n\r\nGET /next";
        for piece in [1, 2, 3, 7, 16, input.len()] {
            let (sent, rest) = stream(input, piece, u64::MAX).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&sent),
                "5\r\nhello\r\na\r\n0123456789\r\n0\r\nX-Checksum: abc\r\nX-Other:\tv\r\n\r\n",
                "pieces of {piece}"
            );
            if piece == input.len() {
                assert_eq!(rest, b"GET /next");
            }
        }
    }

    #[test]
    fn canonical_input_is_not_moved() {
        let input = b"5\r\nhello\r\n0\r\n\r\n";
        let mut buf = input.to_vec();
        let out = Reframer::new(u64::MAX).reframe(&mut buf).unwrap();
        assert_eq!(
            (out.consumed, out.output, out.done),
            (input.len(), input.len(), true)
        );
        assert_eq!(&buf, input);
    }

    #[test]
    fn sizes_a_truncating_backend_would_misread_are_refused() {
        for input in [
            &b"100000005\r\n"[..],
            b"FFFFFFFFFFFFFFFF\r\n",
            b"1000001\r\n",
        ] {
            assert_eq!(
                stream(input, input.len(), 1 << 20).unwrap_err(),
                ChunkError::SizeTooLarge,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert!(stream(b"100000\r\n", 8, 1 << 20).is_ok());
    }

    #[test]
    fn invalid_trailers_are_refused() {
        for bad in [
            &b"0\r\nNoColon\r\n\r\n"[..],
            b"0\r\nX : spaced\r\n\r\n",
            b"0\r\n: empty\r\n\r\n",
            b"0\r\nX: a\x01b\r\n\r\n",
            b"0\r\n folded\r\n\r\n",
            b"0\r\nX(y): z\r\n\r\n",
        ] {
            assert_eq!(
                stream(bad, bad.len(), u64::MAX).unwrap_err(),
                ChunkError::InvalidTrailer,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn size_lines() {
        let mut l = [0u8; MAX_SIZE_LINE];
        for (size, text) in [
            (0, "0\r\n"),
            (0xa, "a\r\n"),
            (0x1a2f, "1a2f\r\n"),
            (u64::MAX, "ffffffffffffffff\r\n"),
        ] {
            let n = size_line(size, &mut l);
            assert_eq!(&l[..n], text.as_bytes());
        }
    }
}
