//! Client connection caps, per worker: `[limits] max_connections` (this
//! worker's share) and `max_connections_per_ip`.
//!
//! Each worker counts its own connections (no shared counter). A connection
//! holds a `ConnSlot` for its whole life; dropping it, however the
//! connection ends (a panic included), gives the slot back. The per-address
//! counts live in a map sized at start for twice the worker's cap, so
//! counting never allocates (a hash map with at most half its capacity in
//! use rehashes in place).
//!
//! Over a cap, the connection is accepted and refused (`refuse`): a
//! pre-rendered `503` with `Connection: close`, then a bounded linger that
//! reads what the client still sends, so the answer is not lost to a reset.
//! Pausing accept instead leaves clients in the kernel's backlog with no
//! answer until a slot frees, and past the backlog their SYNs are dropped and
//! retried for seconds: a client then learns nothing, while a 503 tells it
//! at once to come back later.

use super::ClientIp;
use crate::error::Shed;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

struct Limits {
    cap: u32,
    /// At the cap, stop accepting instead of refusing (`at_connection_cap`).
    pause: bool,
    open: Cell<u32>,
    /// None: no per-address cap.
    per_ip: Option<PerIp>,
    /// Connections being refused right now (each lingers briefly).
    refusing: Cell<u32>,
    /// Refusals answered in the current window: (window start ms, count).
    refused: Cell<(u64, u32)>,
}

/// The per-address cap and the connections each address holds now.
struct PerIp {
    max: u32,
    open: RefCell<HashMap<[u8; super::MAX_IP_TEXT], u32>>,
}

thread_local! {
    static LIMITS: RefCell<Option<Limits>> = const { RefCell::new(None) };
}

/// Sets this worker's caps: at start, and again after a reload in place.
/// `cap`: its share of `max_connections`. The connections it holds stay
/// counted; per-address counts start afresh when the per-address cap is
/// newly set (connections already open are not counted against it).
pub fn install(cap: u32, per_ip: Option<u32>, pause: bool) {
    let kept = LIMITS.with(|l| {
        let mut l = l.borrow_mut();
        let Some(l) = l.as_mut() else {
            return false;
        };
        l.cap = cap;
        l.pause = pause;
        l.per_ip = match (l.per_ip.take(), per_ip) {
            (Some(mut had), Some(max)) => {
                had.max = max;
                Some(had)
            }
            (_, Some(max)) => Some(PerIp {
                max,
                open: RefCell::new(HashMap::new()),
            }),
            (_, None) => None,
        };
        true
    });
    if !kept {
        install_first(cap, per_ip, pause);
    }
}

fn install_first(cap: u32, per_ip: Option<u32>, pause: bool) {
    let per_ip = per_ip.map(|n| {
        let room = (cap as usize).saturating_mul(2).min(1 << 22);
        PerIp {
            max: n,
            open: RefCell::new(HashMap::with_capacity(room)),
        }
    });
    LIMITS.with(|l| {
        *l.borrow_mut() = Some(Limits {
            cap,
            pause,
            open: Cell::new(0),
            per_ip,
            refusing: Cell::new(0),
            refused: Cell::new((0, 0)),
        })
    });
}

/// A client connection's place under the caps, and its address.
pub struct ConnSlot {
    ip: ClientIp,
}

thread_local! {
    /// When this worker last accepted a connection (`deadline::now_ms`).
    static LAST_ACCEPT_MS: Cell<u64> = const { Cell::new(0) };
}

/// Milliseconds since this worker last accepted a connection. A drain waits
/// until this passes a grace period, so that a connection accepted as the
/// drain began has sent its first request (and counts as busy) before the
/// worker exits: it is answered, not dropped. Kept per worker rather than per
/// connection, where it would cost every idle connection a byte of state.
pub fn since_last_accept(now_ms: u64) -> u64 {
    now_ms.saturating_sub(LAST_ACCEPT_MS.with(|l| l.get()))
}

impl std::ops::Deref for ConnSlot {
    type Target = ClientIp;
    fn deref(&self) -> &ClientIp {
        &self.ip
    }
}

/// Takes a slot for a connection from `ip`, or says which cap refuses it.
/// Without `install` (tests of the request path alone), every connection is
/// admitted.
pub fn admit(ip: ClientIp) -> Result<ConnSlot, Shed> {
    LIMITS.with(|l| {
        let l = l.borrow();
        let Some(l) = l.as_ref() else {
            return Ok(());
        };
        if l.open.get() >= l.cap {
            return Err(Shed::ConnLimit);
        }
        if let Some(per_ip) = &l.per_ip {
            let mut map = per_ip.open.borrow_mut();
            let n = map.entry(ip.bytes).or_insert(0);
            if *n >= per_ip.max {
                return Err(Shed::IpLimit);
            }
            *n += 1;
        }
        l.open.set(l.open.get() + 1);
        Ok(())
    })?;
    LAST_ACCEPT_MS.with(|l| l.set(crate::deadline::now_ms()));
    Ok(ConnSlot { ip })
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let _ = LIMITS.try_with(|l| {
            let l = l.borrow();
            let Some(l) = l.as_ref() else {
                return;
            };
            l.open.set(l.open.get().saturating_sub(1));
            if let Some(per_ip) = &l.per_ip {
                let mut map = per_ip.open.borrow_mut();
                if let Some(n) = map.get_mut(&self.ip.bytes) {
                    *n -= 1;
                    if *n == 0 {
                        map.remove(&self.ip.bytes);
                    }
                }
            }
        });
    }
}

/// Refusals a worker answers per `REFUSAL_WINDOW_MS` (500 a second): a
/// client that reconnects at once after its 503 would otherwise turn every
/// refusal into another accept, answer and close, and the storm would take
/// the worker from the connections it serves (measured: 10x fewer answers
/// for them, `bench-results/*conn-cap*`). Past the budget the worker stops
/// accepting until the window ends or a connection closes.
const REFUSALS_PER_WINDOW: u32 = 50;
const REFUSAL_WINDOW_MS: u64 = 100;

/// Whether this worker should stop accepting for now: it holds its share
/// and either pauses at its cap (`at_connection_cap = "pause"`) or has
/// answered its budget of refusals in this window.
pub fn paused(now_ms: u64) -> bool {
    LIMITS.with(|l| {
        l.borrow().as_ref().is_some_and(|l| {
            let (start, n) = l.refused.get();
            let spent = now_ms < start + REFUSAL_WINDOW_MS && n >= REFUSALS_PER_WINDOW;
            l.open.get() >= l.cap && (l.pause || spent)
        })
    })
}

/// Takes one refusal from this window's budget; false when it is spent
/// (the connection is then closed unanswered).
pub fn take_refusal(now_ms: u64) -> bool {
    LIMITS.with(|l| {
        let l = l.borrow();
        let Some(l) = l.as_ref() else {
            return true;
        };
        let (start, n) = l.refused.get();
        let (start, n) = if now_ms >= start + REFUSAL_WINDOW_MS {
            (now_ms, 0)
        } else {
            (start, n)
        };
        l.refused.set((start, n.saturating_add(1)));
        n < REFUSALS_PER_WINDOW
    })
}

/// Client connections this worker holds now.
pub fn open() -> u32 {
    LIMITS.with(|l| l.borrow().as_ref().map_or(0, |l| l.open.get()))
}

/// Most connections refused at once (lingering); more are closed at once.
const MAX_REFUSING: u32 = 256;

/// A refusal in progress; None when too many are already lingering (the
/// connection is then closed without an answer).
pub struct Refusing(());

pub fn start_refusal() -> Option<Refusing> {
    LIMITS.with(|l| {
        let l = l.borrow();
        let l = l.as_ref()?;
        if l.refusing.get() >= MAX_REFUSING {
            return None;
        }
        l.refusing.set(l.refusing.get() + 1);
        Some(Refusing(()))
    })
}

impl Drop for Refusing {
    fn drop(&mut self) {
        let _ = LIMITS.try_with(|l| {
            if let Some(l) = l.borrow().as_ref() {
                l.refusing.set(l.refusing.get().saturating_sub(1));
            }
        });
    }
}

/// Answers a connection over a cap with its `503` and closes it after a
/// bounded linger (see the module doc).
pub async fn refuse(stream: monoio::net::TcpStream, why: Shed, write_timeout: std::time::Duration) {
    let Some(_refusing) = start_refusal() else {
        return; // too many lingering already: close at once
    };
    let mut conn = crate::io::Conn::new(stream);
    conn.answer_and_linger(
        Some(crate::http::canned::for_shed(why).close),
        write_timeout,
        (std::time::Duration::from_secs(1), 64 * 1024),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn ip(s: &str) -> ClientIp {
        ClientIp::new(s.parse::<IpAddr>().unwrap())
    }

    #[test]
    fn caps_per_worker_and_per_address_and_slots_come_back() {
        install(3, Some(2), false);
        let a1 = admit(ip("127.0.0.1")).unwrap();
        let a2 = admit(ip("127.0.0.1")).unwrap();
        assert_eq!(admit(ip("127.0.0.1")).err(), Some(Shed::IpLimit));
        let b1 = admit(ip("127.0.0.2")).unwrap();
        assert_eq!(open(), 3);
        assert_eq!(admit(ip("127.0.0.3")).err(), Some(Shed::ConnLimit));
        drop(a1);
        let a3 = admit(ip("::ffff:127.0.0.1"))
            .expect("the mapped form is the same address, and it has room again");
        drop((a2, b1));
        assert_eq!(open(), 1);
        drop(a3);
        assert_eq!(open(), 0);
        LIMITS.with(|l| {
            let l = l.borrow();
            let per_ip = l.as_ref().unwrap().per_ip.as_ref().unwrap();
            assert!(
                per_ip.open.borrow().is_empty(),
                "addresses without connections leave the map"
            );
        });
    }
}
