//! Admission of one request to its pool: a permit for one of the pool's
//! in-flight slots at once, after a wait in the queue (watching the client
//! for a close meanwhile), or the overload error that sheds the request.

use super::WorkerCtx;
use crate::error::{ProxyError, Shed};
use crate::io::{Conn, Watched};
use crate::upstream::{Admit, Permit, Upstream};

/// A permit for one of the pool's in-flight slots: at once, after a wait in
/// the queue, or the overload error that sheds the request. A client that
/// closes while queued leaves the queue at once.
pub async fn admit<'u>(
    ctx: &WorkerCtx,
    upstream: &'u Upstream,
    client: &Conn,
) -> Result<Permit<'u>, ProxyError> {
    match upstream.admit() {
        Admit::Now(p) => Ok(p),
        Admit::Shed(why) => Err(ProxyError::Shed(why)),
        Admit::Queued(wait) => match client
            .reader
            .until_closed_within(upstream.queue_wait(), wait)
            .await
        {
            Watched::Done(()) => {
                ctx.metrics.waited[upstream.index()].inc();
                Ok(Permit::granted(upstream))
            }
            Watched::TimedOut => Err(ProxyError::Shed(Shed::QueueTimeout)),
            Watched::Closed => Err(ProxyError::ClientGone),
        },
    }
}
