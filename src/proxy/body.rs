//! Streaming bodies between two connections through one pooled buffer:
//! pass-through (Content-Length, or chunked re-encoded canonically in place,
//! `http::reframe`), chunked -> raw for HTTP/1.0 clients, and read-until-close
//! -> chunked re-framing. Memory is bounded by the buffer, never by the body size.

use crate::buf::Buffer;
use crate::http::chunked::{write_size_line_before, ChunkError, ChunkedDecoder};
use crate::http::reframe::Reframer;
use crate::http::Framing;
use crate::io::{ReadOutcome, Reader, Writer};
use std::cell::Cell;
use std::time::Duration;

/// One direction of a relay: where bytes come from and go, how long each side
/// may stall, and where the bytes moved are counted (metrics, access log).
pub struct Pipe<'a> {
    pub src: &'a mut Reader,
    pub dst: &'a mut Writer,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub read: &'a Cell<u64>,
    pub written: &'a Cell<u64>,
}

impl Pipe<'_> {
    /// Writes the first `n` bytes of `buf` and consumes them.
    async fn send(&mut self, buf: &mut Buffer, n: usize) -> Result<(), RelayError> {
        self.dst
            .write_front(buf, n, self.write_timeout)
            .await
            .map_err(|_| RelayError::Sink)?;
        self.written.set(self.written.get() + n as u64);
        Ok(())
    }

    /// Reads into `buf` (emptied first when all its data is consumed),
    /// leaving `tail` bytes free.
    async fn read_more(&mut self, buf: &mut Buffer, tail: usize) -> Result<usize, RelayError> {
        if buf.is_empty() {
            buf.clear();
        } else if buf.spare() <= tail {
            buf.compact();
        }
        self.read_raw(buf, tail).await?.ok_or(RelayError::Source)
    }

    /// One read; `Ok(None)` on a clean end of stream. A body streams through
    /// a large buffer: a small one is enlarged first when the memory cap
    /// has room (and streams a page at a time when it has not).
    async fn read_raw(
        &mut self,
        buf: &mut Buffer,
        tail: usize,
    ) -> Result<Option<usize>, RelayError> {
        buf.enlarge();
        if buf.spare() <= tail {
            // A framing line cut by the end of a full page, and no room under
            // the cap: this request is forwarded already and must finish.
            buf.reserve_running(tail + 1);
        }
        match self.src.read_leaving(buf, self.read_timeout, tail).await {
            ReadOutcome::Data(n) => {
                self.read.set(self.read.get() + n as u64);
                Ok(Some(n))
            }
            ReadOutcome::Eof => Ok(None),
            ReadOutcome::TimedOut => Err(RelayError::Stalled),
            ReadOutcome::Failed(_) => Err(RelayError::Source),
        }
    }
}

/// Where a body relay failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayError {
    /// The sending side closed early or failed.
    Source,
    /// The sending side paused past its timeout.
    Stalled,
    /// The receiving side failed or stopped reading.
    Sink,
    /// The body framing was invalid.
    Framing(ChunkError),
}

/// Tracks where a pass-through body ends (and re-encodes chunked framing).
#[derive(Debug, Clone)]
pub enum BodyState {
    Length(u64),
    Chunked(Reframer),
}

impl BodyState {
    /// For a request body: chunks larger than `max_chunk` are refused.
    /// `None` has no pass-through state (an empty length).
    pub fn request(framing: Framing, max_chunk: u64) -> BodyState {
        match framing {
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(Reframer::new(max_chunk)),
            Framing::None | Framing::UntilClose => BodyState::Length(0),
        }
    }

    /// For a response body (any chunk size).
    pub fn response(framing: Framing) -> BodyState {
        BodyState::request(framing, u64::MAX)
    }

    pub fn is_done(&self) -> bool {
        match self {
            BodyState::Length(rem) => *rem == 0,
            BodyState::Chunked(r) => r.is_done(),
        }
    }

    /// Readies the body bytes at `buf.data()[offset..]` for sending. Returns
    /// how many bytes after `offset` are now ready (chunked framing rewritten
    /// in place) and whether the body ends within them; the bytes after those
    /// are left: the rest of a cut chunk line, or what follows the body.
    pub fn frame(&mut self, buf: &mut Buffer, offset: usize) -> Result<(usize, bool), ChunkError> {
        match self {
            BodyState::Length(rem) => {
                let n = ((buf.len() - offset) as u64).min(*rem);
                *rem -= n;
                Ok((n as usize, *rem == 0))
            }
            BodyState::Chunked(r) => {
                if r.is_done() {
                    return Ok((0, true));
                }
                let len = buf.len();
                let data = &mut buf.data_mut()[offset..];
                let out = r.reframe(data)?;
                if out.output < out.consumed {
                    // Close the gap the shorter framing left.
                    data.copy_within(out.consumed.., out.output);
                    buf.truncate_data(len - (out.consumed - out.output));
                }
                Ok((out.output, out.done))
            }
        }
    }
}

/// Relays a pass-through body: bytes already in `buf` first, then reads from
/// the source until `state` says the body ended. Extra bytes after the body
/// stay in `buf`.
pub async fn relay(
    mut pipe: Pipe<'_>,
    buf: &mut Buffer,
    state: &mut BodyState,
) -> Result<(), RelayError> {
    loop {
        if !buf.is_empty() {
            let (n, done) = state.frame(buf, 0).map_err(RelayError::Framing)?;
            pipe.send(buf, n).await?;
            if done {
                return Ok(());
            }
        } else if state.is_done() {
            return Ok(());
        }
        pipe.read_more(buf, 0).await?;
    }
}

/// Decodes a chunked body and sends only its data (for HTTP/1.0 clients).
pub async fn relay_dechunked(mut pipe: Pipe<'_>, buf: &mut Buffer) -> Result<(), RelayError> {
    let mut decoder = ChunkedDecoder::new();
    loop {
        // Compact the data runs of the buffered input to its front, in place.
        let base = buf.pos();
        let mut read_at = 0;
        let mut write_at = 0;
        let mut done = false;
        {
            let data = buf.data_mut();
            while read_at < data.len() {
                let p = decoder
                    .step(&data[read_at..])
                    .map_err(RelayError::Framing)?;
                let run = read_at + p.data.start..read_at + p.data.end;
                data.copy_within(run.clone(), write_at);
                write_at += run.len();
                read_at += p.consumed;
                if p.done {
                    done = true;
                    break;
                }
            }
        }
        let leftover = buf.len() - read_at;
        if leftover > 0 {
            // Bytes after the body: keep them after the decoded data.
            let raw = buf.raw_mut();
            raw.copy_within(base + read_at.., base + write_at);
            raw.truncate(base + write_at + leftover);
        } else {
            buf.truncate_data(write_at);
        }
        pipe.send(buf, write_at).await?;
        if done {
            return Ok(());
        }
        pipe.read_more(buf, 0).await?;
    }
}

/// Room kept in front of data for a chunk-size line (16 hex digits + CRLF).
pub const CHUNK_HEADROOM: usize = 18;

/// Relays a read-until-close body, re-framed as chunks for an HTTP/1.1 client.
/// `buf` may hold initial body bytes, with at least `CHUNK_HEADROOM` consumed
/// bytes in front of them.
pub async fn relay_close_delimited_as_chunked(
    mut pipe: Pipe<'_>,
    buf: &mut Buffer,
) -> Result<(), RelayError> {
    loop {
        if !buf.is_empty() {
            if buf.pos() < CHUNK_HEADROOM || buf.spare() < 2 {
                // A page always has this room once compacted.
                let _ = buf.reserve(CHUNK_HEADROOM + 2);
                buf.replace_prefix(0, &[0u8; CHUNK_HEADROOM]);
                buf.consume(CHUNK_HEADROOM);
            }
            let len = buf.len();
            let pos = buf.pos();
            let start = write_size_line_before(buf.raw_mut(), pos, len);
            buf.set_pos(start);
            buf.extend(b"\r\n");
            let total = buf.len();
            pipe.send(buf, total).await?;
        }
        buf.reset_with_headroom(CHUNK_HEADROOM);
        if pipe.read_raw(buf, 2).await?.is_none() {
            let last: &[u8] = b"0\r\n\r\n";
            pipe.dst
                .write_static(last, pipe.write_timeout)
                .await
                .map_err(|_| RelayError::Sink)?;
            pipe.written.set(pipe.written.get() + last.len() as u64);
            return Ok(());
        }
    }
}

/// Relays a read-until-close body as raw bytes (the client connection closes after).
pub async fn relay_until_close(mut pipe: Pipe<'_>, buf: &mut Buffer) -> Result<(), RelayError> {
    loop {
        let n = buf.len();
        pipe.send(buf, n).await?;
        buf.clear();
        if pipe.read_raw(buf, 0).await?.is_none() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(bytes: &[u8]) -> Buffer {
        let mut b = Buffer::take();
        b.extend(bytes);
        b
    }

    #[test]
    fn body_state_lengths() {
        let mut s = BodyState::response(Framing::Length(5));
        assert_eq!(s.frame(&mut buffer(b"abc"), 0).unwrap(), (3, false));
        assert_eq!(s.frame(&mut buffer(b"HEADdefGET"), 4).unwrap(), (2, true));
        let mut s = BodyState::response(Framing::Chunked);
        let mut b = buffer(b"HEAD3\r\nabc\r\n0\r\n\r\nGET");
        assert_eq!(s.frame(&mut b, 4).unwrap(), (13, true));
        assert_eq!(s.frame(&mut buffer(b"GET"), 0).unwrap(), (0, true));
        let mut s = BodyState::response(Framing::None);
        assert_eq!(s.frame(&mut buffer(b"GET"), 0).unwrap(), (0, true));
    }

    #[test]
    fn chunked_framing_is_rewritten_in_place_and_the_rest_kept() {
        let mut s = BodyState::request(Framing::Chunked, 1 << 20);
        let mut b = buffer(b"HEAD0003;x=y\r\nabc\r\n00");
        assert_eq!(s.frame(&mut b, 4).unwrap(), (8, false));
        assert_eq!(
            b.data(),
            b"HEAD3\r\nabc\r\n00",
            "the cut line stays after the output"
        );
        b.consume(4 + 8);
        b.extend(b"0;end\r\nTE: x\r\n\r\nNEXT");
        assert_eq!(s.frame(&mut b, 0).unwrap(), (5, true));
        assert_eq!(b.data(), b"0\r\n\r\nNEXT", "TE dropped from the trailers");
        let mut s = BodyState::request(Framing::Chunked, 16);
        assert_eq!(
            s.frame(&mut buffer(b"11\r\n"), 0).unwrap_err(),
            ChunkError::SizeTooLarge
        );
    }
}
