//! Incremental, strict chunked transfer-coding decoder (RFC 9112 §7.1).
//!
//! It tells ringlb where a chunked body ends and rejects anything ambiguous:
//! non-hex, overflowing or oversize chunk sizes, bare LF or CR, control bytes
//! in extensions, trailer lines that are not valid fields, and oversize
//! extensions or trailers. It reports which input bytes are chunk data (for
//! re-framing to HTTP/1.0) and each line it completes (for re-encoding the
//! framing canonically, `reframe`).

use super::fields::hex_digit;
use std::ops::Range;

/// Longest chunk-size in hex digits (16 = 64 bits).
const MAX_SIZE_DIGITS: u8 = 16;
/// Longest chunk extension accepted per chunk.
const MAX_EXT_BYTES: usize = 4096;
/// Longest trailer section accepted.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    InvalidSize,
    SizeOverflow,
    /// Larger than the configured maximum (`max_chunk_bytes`).
    SizeTooLarge,
    InvalidExtension,
    ExtensionTooLong,
    InvalidLineEnding,
    InvalidTrailer,
    TrailerTooLong,
}

impl ChunkError {
    pub fn reason(self) -> &'static str {
        match self {
            ChunkError::InvalidSize => "invalid chunk size",
            ChunkError::SizeOverflow => "chunk size overflow",
            ChunkError::SizeTooLarge => "chunk size above max_chunk_bytes",
            ChunkError::InvalidExtension => "invalid chunk extension",
            ChunkError::ExtensionTooLong => "chunk extension too long",
            ChunkError::InvalidLineEnding => "invalid line ending in chunked body",
            ChunkError::InvalidTrailer => "invalid trailer field",
            ChunkError::TrailerTooLong => "trailer section too long",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first hex digit of a chunk-size.
    SizeStart,
    /// Inside the hex digits.
    Size,
    /// Whitespace after the size, before `;` or CR.
    SizeWs,
    /// Inside chunk extensions, until CR.
    Ext,
    /// After CR of the size line.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// Expecting CR after data.
    DataCr,
    /// Expecting LF after data.
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// Inside a trailer field's name (a token, up to the colon).
    TrailerName,
    /// Inside a trailer field's value (no control bytes but HTAB).
    TrailerValue,
    /// After CR of a trailer line.
    TrailerLf,
    /// After CR of the final empty line.
    FinalLf,
    Done,
}

/// A line the decoder completed, with its LF, at the end of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// A chunk-size line (0: the last chunk), extensions and all.
    Size(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// A valid trailer field line; its name is its first `name_len` bytes.
    Trailer { name_len: usize },
    /// The empty line that ends the body.
    End,
}

/// One step of decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Input bytes consumed by this step.
    pub consumed: usize,
    /// Chunk-data bytes within the consumed input (empty when none).
    pub data: Range<usize>,
    /// The body ended (last-chunk and trailers complete) within `consumed`.
    pub done: bool,
    /// The line this step completed (a step ends at the end of each line).
    pub line: Option<Line>,
}

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: u8,
    ext_len: usize,
    trailer_len: usize,
    trailer_name_len: usize,
    max_size: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder::with_max_size(u64::MAX)
    }

    /// A decoder that refuses chunks larger than `max_size` bytes.
    pub fn with_max_size(max_size: u64) -> Self {
        ChunkedDecoder {
            state: State::SizeStart,
            size: 0,
            digits: 0,
            ext_len: 0,
            trailer_len: 0,
            trailer_name_len: 0,
            max_size,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input` until one data run is found, a line is complete,
    /// or the input is exhausted. Call again with the rest while
    /// `consumed < input.len()`.
    pub fn step(&mut self, input: &[u8]) -> Result<Progress, ChunkError> {
        let line = |consumed, line| {
            Ok(Progress {
                consumed,
                data: 0..0,
                done: line == Line::End,
                line: Some(line),
            })
        };
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Data => {
                    if i > 0 {
                        break; // a data run starts a step of its own
                    }
                    let n = (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    return Ok(Progress {
                        consumed: i + n,
                        data: i..i + n,
                        done: false,
                        line: None,
                    });
                }
                State::SizeStart | State::Size => match hex_digit(b) {
                    Some(v) => {
                        if self.digits == MAX_SIZE_DIGITS || self.size > (u64::MAX >> 4) {
                            return Err(ChunkError::SizeOverflow);
                        }
                        self.size = (self.size << 4) | u64::from(v);
                        if self.size > self.max_size {
                            return Err(ChunkError::SizeTooLarge);
                        }
                        self.digits += 1;
                        self.state = State::Size;
                    }
                    None if self.state == State::SizeStart => return Err(ChunkError::InvalidSize),
                    None => match b {
                        b'\r' => self.state = State::SizeLf,
                        b';' => self.state = State::Ext,
                        b' ' | b'\t' => self.state = State::SizeWs,
                        _ => return Err(ChunkError::InvalidSize),
                    },
                },
                State::SizeWs => match b {
                    b' ' | b'\t' => {}
                    b';' => self.state = State::Ext,
                    _ => return Err(ChunkError::InvalidSize),
                },
                State::Ext => {
                    if b == b'\r' {
                        self.state = State::SizeLf;
                    } else if (b < 0x20 && b != b'\t') || b == 0x7f {
                        return Err(ChunkError::InvalidExtension);
                    } else {
                        self.ext_len += 1;
                        if self.ext_len > MAX_EXT_BYTES {
                            return Err(ChunkError::ExtensionTooLong);
                        }
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::InvalidLineEnding);
                    }
                    self.ext_len = 0;
                    self.digits = 0;
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                    return line(i + 1, Line::Size(self.size));
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::InvalidLineEnding);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::InvalidLineEnding);
                    }
                    self.state = State::SizeStart;
                    return line(i + 1, Line::DataEnd);
                }
                State::TrailerStart => {
                    if b == b'\r' {
                        self.state = State::FinalLf;
                    } else if is_tchar(b) {
                        self.trailer_name_len = 0;
                        self.state = State::TrailerName;
                        continue; // re-examine b as part of the name
                    } else {
                        // obs-fold, bare LF, empty name, anything not a token
                        return Err(ChunkError::InvalidTrailer);
                    }
                }
                State::TrailerName => {
                    if b == b':' {
                        self.state = State::TrailerValue;
                    } else if is_tchar(b) {
                        self.trailer_name_len += 1;
                    } else {
                        return Err(ChunkError::InvalidTrailer); // no space before the colon
                    }
                    self.count_trailer_byte()?;
                }
                State::TrailerValue => {
                    if b == b'\r' {
                        self.state = State::TrailerLf;
                    } else if (b < 0x20 && b != b'\t') || b == 0x7f {
                        return Err(ChunkError::InvalidTrailer);
                    }
                    self.count_trailer_byte()?;
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::InvalidLineEnding);
                    }
                    self.state = State::TrailerStart;
                    let name_len = self.trailer_name_len;
                    return line(i + 1, Line::Trailer { name_len });
                }
                State::FinalLf => {
                    if b != b'\n' {
                        return Err(ChunkError::InvalidLineEnding);
                    }
                    self.state = State::Done;
                    return line(i + 1, Line::End);
                }
                State::Done => {
                    return Ok(Progress {
                        consumed: i,
                        data: 0..0,
                        done: true,
                        line: None,
                    })
                }
            }
            i += 1;
        }
        Ok(Progress {
            consumed: i,
            data: 0..0,
            done: self.state == State::Done,
            line: None,
        })
    }

    /// Whether the decoder stands at the start of a line or a data run (no
    /// partial line consumed).
    pub fn at_boundary(&self) -> bool {
        matches!(
            self.state,
            State::SizeStart | State::Data | State::DataCr | State::TrailerStart | State::Done
        )
    }

    fn count_trailer_byte(&mut self) -> Result<(), ChunkError> {
        self.trailer_len += 1;
        if self.trailer_len > MAX_TRAILER_BYTES {
            return Err(ChunkError::TrailerTooLong);
        }
        Ok(())
    }

    /// Scans `input` to the end of the body or of the input, ignoring data
    /// boundaries. Returns (bytes that belong to the body, done).
    pub fn scan(&mut self, input: &[u8]) -> Result<(usize, bool), ChunkError> {
        let mut pos = 0;
        while pos < input.len() {
            let p = self.step(&input[pos..])?;
            pos += p.consumed;
            if p.done {
                return Ok((pos, true));
            }
        }
        Ok((pos, self.is_done()))
    }
}

/// RFC 9110 tchar: the characters of a token (a field name).
#[inline]
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Writes a chunk-size line (`{len:x}\r\n`) ending exactly at `out.len()`
/// position `end` of `out`; returns its start. `out[end-18..end]` must be writable.
pub fn write_size_line_before(out: &mut [u8], end: usize, len: usize) -> usize {
    let mut i = end;
    i -= 2;
    out[i] = b'\r';
    out[i + 1] = b'\n';
    let mut n = len;
    loop {
        i -= 1;
        out[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let p = d.step(&input[pos..])?;
            out.extend_from_slice(&input[pos + p.data.start..pos + p.data.end]);
            pos += p.consumed;
            if p.done {
                return Ok((out, pos, true));
            }
        }
        Ok((out, pos, false))
    }

    #[test]
    fn decodes_and_finds_end() {
        let input = b"5\r\nhello\r\n6;name=val\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (data, used, done) = decode_all(input).unwrap();
        assert_eq!(data, b"hello world");
        assert!(done);
        assert_eq!(&input[used..], b"NEXT");
    }

    #[test]
    fn byte_at_a_time_matches() {
        let input = b"a\r\n0123456789\r\n0\r\n\r\n";
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        for (i, b) in input.iter().enumerate() {
            let p = d.step(std::slice::from_ref(b)).unwrap();
            if !p.data.is_empty() {
                out.push(*b);
            }
            assert_eq!(p.done, i == input.len() - 1);
        }
        assert_eq!(out, b"0123456789");
    }

    #[test]
    fn rejects_ambiguous_framing() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"-1\r\n",
            b"+5\r\nhello\r\n",
            b"\r\n",
            b"10000000000000000\r\n",
            b"ffffffffffffffffff\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5;\x00\r\n",
            b"0\r\n folded\r\n\r\n",
            b"0\r\nX: y\n\r\n",
            b"5 5\r\n",
        ] {
            assert!(
                decode_all(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn size_line_writer() {
        let mut buf = [0u8; 32];
        let start = write_size_line_before(&mut buf, 20, 0x1a2f);
        assert_eq!(&buf[start..20], b"1a2f\r\n");
        let start = write_size_line_before(&mut buf, 20, 0);
        assert_eq!(&buf[start..20], b"0\r\n");
    }

    #[test]
    fn extension_and_trailer_limits() {
        let mut long_ext = b"1;".to_vec();
        long_ext.extend(std::iter::repeat_n(b'a', MAX_EXT_BYTES + 1));
        assert_eq!(
            decode_all(&long_ext).unwrap_err(),
            ChunkError::ExtensionTooLong
        );
        let mut long_trailer = b"0\r\n".to_vec();
        for _ in 0..2000 {
            long_trailer.extend_from_slice(b"X-Trailer: 0123456789\r\n");
        }
        assert_eq!(
            decode_all(&long_trailer).unwrap_err(),
            ChunkError::TrailerTooLong
        );
    }
}
