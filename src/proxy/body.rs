//! Streaming bodies between two connections through one pooled buffer:
//! pass-through (Content-Length or validated chunked), chunked -> raw for
//! HTTP/1.0 clients, and read-until-close -> chunked re-framing.
//! Memory is bounded by the buffer, never by the body size.

use crate::buf::Buffer;
use crate::http::chunked::{write_size_line_before, ChunkError, ChunkedDecoder};
use crate::http::Framing;
use crate::io::{ReadOutcome, Reader, Writer};
use std::time::Duration;

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

/// Tracks where a pass-through body ends.
#[derive(Debug, Clone)]
pub enum BodyState {
    Length(u64),
    Chunked(ChunkedDecoder),
}

impl BodyState {
    /// For a request or response framing; `None` and `UntilClose` have no
    /// pass-through state (an empty length).
    pub fn new(framing: Framing) -> BodyState {
        match framing {
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(ChunkedDecoder::new()),
            Framing::None | Framing::UntilClose => BodyState::Length(0),
        }
    }

    /// How many leading bytes of `data` belong to the body, and whether the body
    /// ends within them.
    pub fn take(&mut self, data: &[u8]) -> Result<(usize, bool), ChunkError> {
        match self {
            BodyState::Length(rem) => {
                let n = (data.len() as u64).min(*rem);
                *rem -= n;
                Ok((n as usize, *rem == 0))
            }
            BodyState::Chunked(d) => {
                if d.is_done() {
                    return Ok((0, true));
                }
                d.scan(data)
            }
        }
    }
}

/// Relays a pass-through body: bytes already in `buf` first, then reads from `src`
/// until `state` says the body ended. Extra bytes after the body stay in `buf`.
pub async fn relay(
    src: &mut Reader,
    dst: &mut Writer,
    buf: &mut Buffer,
    state: &mut BodyState,
    read_timeout: Duration,
    write_timeout: Duration,
) -> Result<(), RelayError> {
    loop {
        if !buf.is_empty() {
            let (n, done) = state.take(buf.data()).map_err(RelayError::Framing)?;
            dst.write_front(buf, n, write_timeout)
                .await
                .map_err(|_| RelayError::Sink)?;
            if done {
                return Ok(());
            }
        } else if let (0, true) = state.take(&[]).map_err(RelayError::Framing)? {
            return Ok(());
        }
        read_more(src, buf, read_timeout, 0).await?;
    }
}

/// Reads into `buf` (emptied first when all its data is consumed).
async fn read_more(
    src: &mut Reader,
    buf: &mut Buffer,
    timeout: Duration,
    tail: usize,
) -> Result<usize, RelayError> {
    if buf.is_empty() {
        buf.clear();
    } else if buf.spare() <= tail {
        buf.compact();
    }
    match src.read_leaving(buf, timeout, tail).await {
        ReadOutcome::Data(n) => Ok(n),
        ReadOutcome::TimedOut => Err(RelayError::Stalled),
        ReadOutcome::Eof | ReadOutcome::Failed(_) => Err(RelayError::Source),
    }
}

/// Decodes a chunked body and sends only its data (for HTTP/1.0 clients).
pub async fn relay_dechunked(
    src: &mut Reader,
    dst: &mut Writer,
    buf: &mut Buffer,
    read_timeout: Duration,
    write_timeout: Duration,
) -> Result<(), RelayError> {
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
        dst.write_front(buf, write_at, write_timeout)
            .await
            .map_err(|_| RelayError::Sink)?;
        if done {
            return Ok(());
        }
        read_more(src, buf, read_timeout, 0).await?;
    }
}

/// Room kept in front of data for a chunk-size line (16 hex digits + CRLF).
pub const CHUNK_HEADROOM: usize = 18;

/// Relays a read-until-close body, re-framed as chunks for an HTTP/1.1 client.
/// `buf` may hold initial body bytes, with at least `CHUNK_HEADROOM` consumed
/// bytes in front of them.
pub async fn relay_close_delimited_as_chunked(
    src: &mut Reader,
    dst: &mut Writer,
    buf: &mut Buffer,
    read_timeout: Duration,
    write_timeout: Duration,
) -> Result<(), RelayError> {
    loop {
        if !buf.is_empty() {
            if buf.pos() < CHUNK_HEADROOM || buf.spare() < 2 {
                buf.reserve(CHUNK_HEADROOM + 2);
                buf.replace_prefix(0, &[0u8; CHUNK_HEADROOM]);
                buf.consume(CHUNK_HEADROOM);
            }
            let len = buf.len();
            let pos = buf.pos();
            let start = write_size_line_before(buf.raw_mut(), pos, len);
            buf.set_pos(start);
            buf.extend(b"\r\n");
            let total = buf.len();
            dst.write_front(buf, total, write_timeout)
                .await
                .map_err(|_| RelayError::Sink)?;
        }
        buf.reset_with_headroom(CHUNK_HEADROOM);
        match src.read_leaving(buf, read_timeout, 2).await {
            ReadOutcome::Data(_) => {}
            ReadOutcome::Eof => {
                return dst
                    .write_static(b"0\r\n\r\n", write_timeout)
                    .await
                    .map_err(|_| RelayError::Sink);
            }
            ReadOutcome::TimedOut | ReadOutcome::Failed(_) => return Err(RelayError::Source),
        }
    }
}

/// Relays a read-until-close body as raw bytes (the client connection closes after).
pub async fn relay_until_close(
    src: &mut Reader,
    dst: &mut Writer,
    buf: &mut Buffer,
    read_timeout: Duration,
    write_timeout: Duration,
) -> Result<(), RelayError> {
    loop {
        let n = buf.len();
        dst.write_front(buf, n, write_timeout)
            .await
            .map_err(|_| RelayError::Sink)?;
        buf.clear();
        match src.read(buf, read_timeout).await {
            ReadOutcome::Data(_) => {}
            ReadOutcome::Eof => return Ok(()),
            ReadOutcome::TimedOut | ReadOutcome::Failed(_) => return Err(RelayError::Source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_state_lengths() {
        let mut s = BodyState::new(Framing::Length(5));
        assert_eq!(s.take(b"abc").unwrap(), (3, false));
        assert_eq!(s.take(b"defGET").unwrap(), (2, true));
        let mut s = BodyState::new(Framing::Chunked);
        assert_eq!(s.take(b"3\r\nabc\r\n0\r\n\r\nGET").unwrap(), (13, true));
        assert_eq!(s.take(b"GET").unwrap(), (0, true));
        let mut s = BodyState::new(Framing::None);
        assert_eq!(s.take(b"GET").unwrap(), (0, true));
    }
}
