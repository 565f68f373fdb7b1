//! Per-worker pool of idle upstream connections, one LIFO stack per server.
//!
//! A pooled connection is only ever handed out clean: every checkout probes it
//! (`Conn::probably_alive`, one non-blocking peek), and one that holds any byte
//! (a backend answering twice, a `408` sent on an idle connection) or whose
//! server closed it is dropped, never parsed as the next request's response.
//! Connections whose server closes them while they sit idle are dropped at once
//! (`peer_closed`, fed by `idle_watch`) instead of lingering half-open.
//! Connections older than the idle timeout are dropped on checkout and by a
//! periodic sweep, so ringlb closes them before typical backends do.

use super::idle_watch::Closed;
use super::roster::Member;
use crate::deadline::now_ms;
use crate::io::Conn;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

/// A connection to an upstream server, counted in the worker's metrics as open
/// (`ringlb_upstream_connections_open`) until it is dropped.
pub struct UpstreamConn {
    conn: Conn,
    slot: usize,
}

impl UpstreamConn {
    /// `slot`: the server's pool slot.
    pub fn new(conn: Conn, slot: usize) -> UpstreamConn {
        if let Some(m) = crate::metrics::current() {
            m.servers[slot].connections_open.add(1);
        }
        UpstreamConn { conn, slot }
    }
}

impl Drop for UpstreamConn {
    fn drop(&mut self) {
        if let Some(m) = crate::metrics::current() {
            m.servers[self.slot].connections_open.add(-1);
        }
    }
}

impl Deref for UpstreamConn {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl DerefMut for UpstreamConn {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }
}

struct Idle {
    conn: UpstreamConn,
    /// Coarse clock (`deadline::now_ms`) at check-in.
    since_ms: u64,
}

struct Slot {
    idle: Vec<Idle>,
    /// The member that holds the slot (0: none).
    tag: u64,
    max_idle: usize,
    idle_timeout_ms: u64,
}

/// Most closes of busy connections remembered between sweeps.
const MAX_CLOSED_WHILE_BUSY: usize = 256;

pub struct ConnPool {
    slots: Vec<Slot>,
    /// Connections whose server closed them while a request used them: not
    /// taken back (the close raised its one event while they were busy).
    closed_while_busy: Vec<Closed>,
}

impl ConnPool {
    /// A pool with `capacity` slots (one per member id), none assigned yet.
    pub fn new(capacity: usize) -> ConnPool {
        ConnPool {
            slots: (0..capacity)
                .map(|_| Slot {
                    idle: Vec::new(),
                    max_idle: 0,
                    idle_timeout_ms: 0,
                    tag: 0,
                })
                .collect(),
            closed_while_busy: Vec::new(),
        }
    }

    /// Gives `member`'s slot to it: its idle connections stay if it already
    /// held the slot (a server that stays across a reload), else the slot's
    /// connections (to a server that left) are dropped.
    pub fn assign(&mut self, member: Member, max_idle: usize, idle_timeout: Duration) {
        let s = &mut self.slots[member.id];
        if s.tag != member.tag {
            s.idle.clear();
            s.tag = member.tag;
        }
        s.max_idle = max_idle;
        s.idle_timeout_ms = idle_timeout.as_millis() as u64;
        s.idle.truncate(max_idle);
        let want = max_idle.min(1024);
        if s.idle.capacity() < want {
            s.idle.reserve_exact(want - s.idle.len());
        }
        self.publish_idle_count(member.id);
    }

    /// The server `member` left its pool: its idle connections close, and
    /// connections still busy with it are not taken back.
    pub fn release(&mut self, member: Member) {
        let s = &mut self.slots[member.id];
        if s.tag == member.tag {
            s.idle = Vec::new();
            s.max_idle = 0;
            s.tag = 0;
        }
        self.publish_idle_count(member.id);
    }

    /// Adds a slot for one server, with a member of its own.
    #[cfg(test)]
    pub fn add_slot(&mut self, max_idle: usize, idle_timeout: Duration) -> Member {
        let member = Member {
            id: self.slots.len(),
            tag: self.slots.len() as u64 + 1,
        };
        self.slots.push(Slot {
            idle: Vec::new(),
            max_idle: 0,
            idle_timeout_ms: 0,
            tag: 0,
        });
        self.assign(member, max_idle, idle_timeout);
        member
    }

    /// The most recently used idle connection that is still fresh and clean.
    pub fn checkout(&mut self, member: Member) -> Option<UpstreamConn> {
        let slot = member.id;
        let s = &mut self.slots[slot];
        if s.tag != member.tag {
            return None;
        }
        let now = now_ms();
        let mut found = None;
        while let Some(idle) = s.idle.pop() {
            if now.saturating_sub(idle.since_ms) < s.idle_timeout_ms && idle.conn.probably_alive() {
                found = Some(idle.conn);
                break;
            }
        }
        self.publish_idle_count(slot);
        found
    }

    /// Returns a reusable connection (dropped if the slot is full, or if its
    /// server closed it while it was busy, or if the server left the pool).
    pub fn checkin(&mut self, member: Member, conn: UpstreamConn) {
        let slot = member.id;
        if !self.closed_while_busy.is_empty() {
            let key = Closed {
                slot,
                fd: conn.fd(),
            };
            if let Some(i) = self.closed_while_busy.iter().position(|c| *c == key) {
                self.closed_while_busy.swap_remove(i);
                // The event may belong to an earlier connection on the same
                // descriptor: the probe decides.
                if !conn.probably_alive() {
                    return;
                }
            }
        }
        let s = &mut self.slots[slot];
        if s.tag == member.tag && s.idle.len() < s.max_idle {
            s.idle.push(Idle {
                conn,
                since_ms: now_ms(),
            });
            self.publish_idle_count(slot);
        }
    }

    /// The server closed the connection `closed` names: drops it if it is idle,
    /// else remembers it so that it is not taken back after its request.
    pub fn peer_closed(&mut self, closed: Closed) {
        let Some(s) = self.slots.get_mut(closed.slot) else {
            return;
        };
        if let Some(i) = s.idle.iter().position(|i| i.conn.fd() == closed.fd) {
            s.idle.remove(i);
            self.publish_idle_count(closed.slot);
        } else if self.closed_while_busy.len() < MAX_CLOSED_WHILE_BUSY {
            self.closed_while_busy.push(closed);
        }
    }

    /// Drops connections idle for longer than their timeout.
    pub fn sweep(&mut self) {
        let now = now_ms();
        for s in &mut self.slots {
            // LIFO: the oldest are at the front.
            let stale = s
                .idle
                .iter()
                .take_while(|i| now.saturating_sub(i.since_ms) >= s.idle_timeout_ms)
                .count();
            if stale > 0 {
                s.idle.drain(..stale);
            }
        }
        self.publish_idle_counts(0..self.slots.len());
        // Busy connections that were closed have come back or gone by now.
        self.closed_while_busy.clear();
    }

    /// Drops every idle connection (shutdown).
    pub fn clear(&mut self) {
        for s in &mut self.slots {
            s.idle.clear();
        }
        self.publish_idle_counts(0..self.slots.len());
    }

    /// Publishes the idle counts of `slots` to the worker's metrics.
    fn publish_idle_counts(&self, slots: std::ops::Range<usize>) {
        if let Some(m) = crate::metrics::current() {
            for i in slots {
                m.servers[i]
                    .connections_idle
                    .set(self.slots[i].idle.len() as i64);
            }
        }
    }

    fn publish_idle_count(&self, slot: usize) {
        self.publish_idle_counts(slot..slot + 1);
    }

    pub fn idle_count(&self, member: Member) -> usize {
        self.slots[member.id].idle.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    const LONG: Duration = Duration::from_secs(30);
    /// An idle timeout short enough to pass in a test; waits are twice as long
    /// (the coarse clock ticks every few milliseconds).
    const SHORT: Duration = Duration::from_millis(50);
    const PAST_SHORT: Duration = Duration::from_millis(100);

    /// Runs `f` in a monoio runtime (pooled connections are monoio streams),
    /// with a loopback listener to connect to.
    fn run<F: std::future::Future<Output = ()>>(f: impl FnOnce(TcpListener) -> F) {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        rt.block_on(f(listener));
    }

    /// A connection as the pool holds it, and the server's end of it.
    async fn pair(listener: &TcpListener) -> (UpstreamConn, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let conn = crate::io::connect(addr, Duration::from_secs(5))
            .await
            .expect("connect on loopback");
        let (peer, _) = listener.accept().unwrap();
        (UpstreamConn::new(conn, 0), peer)
    }

    async fn pairs(listener: &TcpListener, n: usize) -> (Vec<UpstreamConn>, Vec<TcpStream>) {
        let mut conns = Vec::new();
        let mut peers = Vec::new();
        for _ in 0..n {
            let (c, p) = pair(listener).await;
            conns.push(c);
            peers.push(p);
        }
        (conns, peers)
    }

    /// Whether the pool closed this connection (its server reads EOF).
    fn closed(peer: &mut TcpStream) -> bool {
        peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 1];
        matches!(peer.read(&mut b), Ok(0))
    }

    /// Whether the connection is still open (nothing to read, no EOF).
    fn open(peer: &mut TcpStream) -> bool {
        peer.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let r = peer.read(&mut b);
        peer.set_nonblocking(false).unwrap();
        matches!(r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    #[test]
    fn checkout_is_last_in_first_out_per_server() {
        run(|l| async move {
            let mut pool = ConnPool::new(0);
            let a = pool.add_slot(8, LONG);
            let b = pool.add_slot(8, LONG);
            let (conns, _peers) = pairs(&l, 4).await;
            let fds: Vec<_> = conns.iter().map(|c| c.fd()).collect();
            let mut conns = conns.into_iter();
            let other = conns.next().unwrap();
            for c in conns {
                pool.checkin(a, c);
            }
            pool.checkin(b, other);
            assert_eq!((pool.idle_count(a), pool.idle_count(b)), (3, 1));
            let order: Vec<_> = std::iter::from_fn(|| pool.checkout(a))
                .map(|c| c.fd())
                .collect();
            assert_eq!(order, vec![fds[3], fds[2], fds[1]], "most recent first");
            assert_eq!(
                pool.checkout(b).map(|c| c.fd()),
                Some(fds[0]),
                "slots are separate"
            );
            assert!(pool.checkout(a).is_none() && pool.checkout(b).is_none());
        });
    }

    #[test]
    fn checkout_drops_connections_idle_past_the_timeout() {
        run(|l| async move {
            let mut pool = ConnPool::new(0);
            let s = pool.add_slot(8, SHORT);
            let (old, mut old_peer) = pair(&l).await;
            let old_fd = old.fd();
            // Fresh: handed out again.
            pool.checkin(s, old);
            let old = pool.checkout(s).expect("a fresh connection is reused");
            assert_eq!(old.fd(), old_fd);
            pool.checkin(s, old);
            std::thread::sleep(PAST_SHORT);
            let (fresh, fresh_peer) = pair(&l).await;
            let fresh_fd = fresh.fd();
            pool.checkin(s, fresh);
            assert_eq!(pool.checkout(s).map(|c| c.fd()), Some(fresh_fd));
            assert!(pool.checkout(s).is_none(), "stale connection handed out");
            assert_eq!(pool.idle_count(s), 0);
            assert!(closed(&mut old_peer), "stale connection not closed");
            drop(fresh_peer);
        });
    }

    #[test]
    fn sweep_drops_only_connections_idle_past_the_timeout() {
        run(|l| async move {
            let mut pool = ConnPool::new(0);
            let short = pool.add_slot(8, SHORT);
            let long = pool.add_slot(8, LONG);
            let (conns, mut peers) = pairs(&l, 4).await;
            let fds: Vec<_> = conns.iter().map(|c| c.fd()).collect();
            let mut conns = conns.into_iter();
            pool.checkin(short, conns.next().unwrap());
            pool.checkin(short, conns.next().unwrap());
            pool.checkin(long, conns.next().unwrap());
            std::thread::sleep(PAST_SHORT);
            pool.checkin(short, conns.next().unwrap());
            pool.sweep();
            assert_eq!(
                (pool.idle_count(short), pool.idle_count(long)),
                (1, 1),
                "sweep keeps exactly the fresh ones"
            );
            assert!(closed(&mut peers[0]) && closed(&mut peers[1]));
            assert!(open(&mut peers[2]) && open(&mut peers[3]));
            assert_eq!(
                pool.checkout(short).map(|c| c.fd()),
                Some(fds[3]),
                "fresh one kept"
            );
            assert_eq!(
                pool.checkout(long).map(|c| c.fd()),
                Some(fds[2]),
                "other slot kept"
            );
        });
    }

    #[test]
    fn checkin_keeps_at_most_max_idle() {
        run(|l| async move {
            let mut pool = ConnPool::new(0);
            let two = pool.add_slot(2, LONG);
            let none = pool.add_slot(0, LONG);
            let (conns, mut peers) = pairs(&l, 4).await;
            let fds: Vec<_> = conns.iter().map(|c| c.fd()).collect();
            let mut conns = conns.into_iter();
            for _ in 0..3 {
                pool.checkin(two, conns.next().unwrap());
            }
            pool.checkin(none, conns.next().unwrap());
            assert_eq!(
                (pool.idle_count(two), pool.idle_count(none)),
                (2, 0),
                "idle counts with max_idle 2 and 0"
            );
            assert!(closed(&mut peers[2]), "the one beyond max_idle is closed");
            assert!(closed(&mut peers[3]), "max_idle = 0 keeps none");
            assert!(open(&mut peers[0]) && open(&mut peers[1]));
            let order: Vec<_> = std::iter::from_fn(|| pool.checkout(two))
                .map(|c| c.fd())
                .collect();
            assert_eq!(order, vec![fds[1], fds[0]], "the first two kept, LIFO");
        });
    }

    #[test]
    fn peer_closed_removes_an_idle_connection() {
        run(|l| async move {
            let mut pool = ConnPool::new(0);
            let s = pool.add_slot(8, LONG);
            let (conns, mut peers) = pairs(&l, 3).await;
            let fds: Vec<_> = conns.iter().map(|c| c.fd()).collect();
            for c in conns {
                pool.checkin(s, c);
            }
            pool.peer_closed(Closed {
                slot: s.id,
                fd: fds[1],
            });
            assert_eq!(pool.idle_count(s), 2, "closed idle connection still pooled");
            assert!(closed(&mut peers[1]), "dropped at once, not left half-open");
            // Unknown slots and descriptors are ignored.
            pool.peer_closed(Closed {
                slot: 99,
                fd: fds[0],
            });
            assert_eq!(pool.idle_count(s), 2, "an unknown slot touched this one");
            let order: Vec<_> = std::iter::from_fn(|| pool.checkout(s))
                .map(|c| c.fd())
                .collect();
            assert_eq!(order, vec![fds[2], fds[0]], "the others kept, LIFO");
        });
    }

    #[test]
    fn a_busy_connection_its_server_closed_is_not_taken_back() {
        run(|l| async move {
            let mut pool = ConnPool::new(0);
            let s = pool.add_slot(8, LONG);
            let (gone, gone_peer) = pair(&l).await;
            let (kept, _kept_peer) = pair(&l).await;
            // The server closes `gone` while a request uses it.
            drop(gone_peer);
            std::thread::sleep(Duration::from_millis(20));
            pool.peer_closed(Closed {
                slot: s.id,
                fd: gone.fd(),
            });
            pool.checkin(s, gone);
            assert_eq!(pool.idle_count(s), 0, "a closed connection was pooled");
            // An event for an earlier connection on the same descriptor: the
            // probe finds this one alive and it is pooled.
            pool.peer_closed(Closed {
                slot: s.id,
                fd: kept.fd(),
            });
            let fd = kept.fd();
            pool.checkin(s, kept);
            assert_eq!(
                pool.checkout(s).map(|c| c.fd()),
                Some(fd),
                "a live connection refused on a stale close event"
            );
        });
    }

    /// A server that stays across a roster change keeps its connections; a
    /// slot given to another server never hands out the old server's.
    #[test]
    fn a_slot_serves_only_the_member_that_holds_it() {
        run(|l| async move {
            let mut pool = ConnPool::new(2);
            let a = Member { id: 0, tag: 7 };
            pool.assign(a, 8, LONG);
            let (conns, _peers) = pairs(&l, 3).await;
            let mut conns = conns.into_iter();
            pool.checkin(a, conns.next().unwrap());
            pool.checkin(a, conns.next().unwrap());
            pool.assign(a, 8, LONG);
            assert_eq!(
                pool.idle_count(a),
                2,
                "re-assigned to the same member: kept"
            );
            let b = Member { id: 0, tag: 8 };
            assert!(pool.checkout(b).is_none(), "another member's connection");
            pool.checkin(b, conns.next().unwrap());
            assert_eq!(pool.idle_count(a), 2, "taken in for the wrong member");
            pool.assign(b, 8, LONG);
            assert_eq!(pool.idle_count(b), 0, "the old server's connections stayed");
            assert!(pool.checkout(a).is_none());
            let (late, _peer) = pair(&l).await;
            pool.release(b);
            pool.checkin(b, late);
            assert_eq!(pool.idle_count(b), 0, "taken back after the server left");
        });
    }

    #[test]
    fn checkout_probes_and_drops_a_closed_or_dirty_connection() {
        run(|l| async move {
            let mut pool = ConnPool::new(0);
            let s = pool.add_slot(8, LONG);
            let (clean, _clean_peer) = pair(&l).await;
            let (closed_conn, closed_peer) = pair(&l).await;
            let (dirty, mut dirty_peer) = pair(&l).await;
            let clean_fd = clean.fd();
            pool.checkin(s, clean);
            pool.checkin(s, closed_conn);
            pool.checkin(s, dirty);
            drop(closed_peer);
            dirty_peer
                .write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
                .unwrap();
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(
                pool.checkout(s).map(|c| c.fd()),
                Some(clean_fd),
                "a closed or dirty connection handed out"
            );
            assert_eq!(pool.idle_count(s), 0);
        });
    }
}
