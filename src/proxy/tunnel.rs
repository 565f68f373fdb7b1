//! Byte tunnel after a `101 Switching Protocols` (WebSocket and other upgrades):
//! both directions at once until either side closes (its half-close is passed
//! on), one side fails, or both stay silent past the idle timeout.

use super::tally::Tally;
use crate::buf::Buffer;
use crate::deadline::Timer;
use crate::io::{Conn, ReadOutcome, Reader, Writer};
use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

/// Runs the tunnel. `pending` holds the bytes that each side (client,
/// upstream) sent right after the handshake; they are delivered first. What
/// moves is counted in `tally`.
pub async fn run(
    client: &mut Conn,
    upstream: &mut Conn,
    pending: (&mut Buffer, &mut Buffer),
    idle: Duration,
    write_timeout: Duration,
    tally: &Tally,
) {
    let (client_pending, upstream_pending) = pending;
    // Read from the client: the same bytes as `pumped` counts when written.
    let read_from_client = Cell::new(0);
    if client_pending.capacity() == 0 {
        *client_pending = Buffer::take();
    }
    // One idle deadline for both directions: traffic either way pushes it back.
    let idle_timer = Timer::new();
    idle_timer.arm(idle);
    let up = pump(
        (&mut client.reader, &mut upstream.writer),
        client_pending,
        (&idle_timer, idle, write_timeout),
        (&read_from_client, &tally.pumped),
    );
    let down = pump(
        (&mut upstream.reader, &mut client.writer),
        upstream_pending,
        (&idle_timer, idle, write_timeout),
        (&tally.upstream_in, &tally.client_out),
    );
    let mut up = pin!(up);
    let mut down = pin!(down);
    let (mut up_done, mut down_done) = (false, false);
    poll_fn(|cx| {
        if !up_done {
            if let Poll::Ready(r) = up.as_mut().poll(cx) {
                if r.is_err() {
                    return Poll::Ready(());
                }
                up_done = true;
            }
        }
        if !down_done {
            if let Poll::Ready(r) = down.as_mut().poll(cx) {
                if r.is_err() {
                    return Poll::Ready(());
                }
                down_done = true;
            }
        }
        if up_done && down_done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

/// One direction (source, sink), with the shared idle deadline (timer, its
/// length, the write timeout) and where to count bytes (read, written). Ok on
/// a clean end of stream (passed on as a half-close).
async fn pump(
    (src, dst): (&mut Reader, &mut Writer),
    buf: &mut Buffer,
    (idle_timer, idle, write_timeout): (&Timer, Duration, Duration),
    (read, written): (&Cell<u64>, &Cell<u64>),
) -> Result<(), ()> {
    loop {
        if !buf.is_empty() {
            let n = buf.len();
            dst.write_front(buf, n, write_timeout)
                .await
                .map_err(|_| ())?;
            Tally::add(written, n);
            idle_timer.arm(idle);
        }
        buf.clear();
        match src.read_within(buf, idle_timer).await {
            ReadOutcome::Data(n) => {
                Tally::add(read, n);
                idle_timer.arm(idle);
                if buf.spare() == 0 {
                    // A busy direction moves to a large buffer (room
                    // permitting); a quiet one keeps its page.
                    buf.enlarge();
                }
            }
            ReadOutcome::Eof => {
                dst.shutdown_write();
                return Ok(());
            }
            ReadOutcome::TimedOut | ReadOutcome::Failed(_) => return Err(()),
        }
    }
}
