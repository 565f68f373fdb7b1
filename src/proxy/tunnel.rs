//! Byte tunnel after a `101 Switching Protocols` (WebSocket and other upgrades):
//! both directions at once until either side closes (its half-close is passed
//! on), one side fails, or both stay silent past the idle timeout.

use crate::buf::Buffer;
use crate::deadline::Timer;
use crate::io::{Conn, ReadOutcome, Reader, Writer};
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

/// Runs the tunnel. `client_pending` / `upstream_pending` hold bytes that each
/// side sent right after the handshake; they are delivered first.
pub async fn run(
    client: &mut Conn,
    upstream: &mut Conn,
    client_pending: &mut Buffer,
    upstream_pending: &mut Buffer,
    idle: Duration,
    write_timeout: Duration,
) {
    if client_pending.capacity() == 0 {
        *client_pending = Buffer::take();
    }
    // One idle deadline for both directions: traffic either way pushes it back.
    let idle_timer = Timer::new();
    idle_timer.arm(idle);
    let up = pump(
        &mut client.reader,
        &mut upstream.writer,
        client_pending,
        &idle_timer,
        idle,
        write_timeout,
    );
    let down = pump(
        &mut upstream.reader,
        &mut client.writer,
        upstream_pending,
        &idle_timer,
        idle,
        write_timeout,
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

/// One direction. Ok on a clean end of stream (passed on as a half-close).
async fn pump(
    src: &mut Reader,
    dst: &mut Writer,
    buf: &mut Buffer,
    idle_timer: &Timer,
    idle: Duration,
    write_timeout: Duration,
) -> Result<(), ()> {
    loop {
        if !buf.is_empty() {
            let n = buf.len();
            dst.write_front(buf, n, write_timeout)
                .await
                .map_err(|_| ())?;
            idle_timer.arm(idle);
        }
        buf.clear();
        match src.read_within(buf, idle_timer).await {
            ReadOutcome::Data(_) => idle_timer.arm(idle),
            ReadOutcome::Eof => {
                dst.shutdown_write();
                return Ok(());
            }
            ReadOutcome::TimedOut | ReadOutcome::Failed(_) => return Err(()),
        }
    }
}
