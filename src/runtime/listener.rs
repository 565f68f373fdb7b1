//! Listening sockets: one SO_REUSEPORT socket per worker and listener, built with
//! socket2. Before binding, a probe without SO_REUSEPORT makes sure no other
//! process already owns the port (which SO_REUSEPORT would otherwise let us
//! silently share).

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;

pub const BACKLOG: i32 = 4096;

fn socket_for(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    Ok(s)
}

/// One non-blocking SO_REUSEPORT socket listening on `addr`.
fn reuseport_listener(addr: SocketAddr) -> io::Result<Socket> {
    let s = socket_for(addr)?;
    s.set_reuse_port(true)?;
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    s.listen(BACKLOG)?;
    Ok(s)
}

/// Fails with "address in use" when anything else listens on `addr`.
fn probe_exclusive(addr: SocketAddr) -> io::Result<()> {
    let s = socket_for(addr)?;
    s.bind(&addr.into())?;
    Ok(())
}

/// Binds `count` SO_REUSEPORT listeners on `addr` (port 0: one kernel-chosen
/// port shared by all). Returns them and the bound address.
pub fn bind_all(
    addr: SocketAddr,
    count: usize,
) -> io::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    // RINGLB_BENCH_SHARE_PORT skips the probe: only for measuring the
    // SO_REUSEPORT overlap that `handover` is chosen over
    // (benches/load/upgrade.py); never set it in production.
    if addr.port() != 0 && std::env::var_os("RINGLB_BENCH_SHARE_PORT").is_none() {
        probe_exclusive(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    }
    let mut bound = addr;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let s = reuseport_listener(bound)?;
        if bound.port() == 0 {
            bound = s.local_addr()?.as_socket().unwrap_or(bound);
        }
        out.push(s.into());
    }
    Ok((out, bound))
}

/// Listening sockets a predecessor handed over for `addr`, plus as many new
/// ones joining their SO_REUSEPORT group as it takes for one per worker (no
/// exclusivity probe: the port is ours already). Never fewer than handed
/// over: closing one would reset the connections in its accept queue.
pub fn adopt(
    fds: Vec<std::os::fd::OwnedFd>,
    addr: SocketAddr,
    count: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    let mut out: Vec<std::net::TcpListener> = fds.into_iter().map(Into::into).collect();
    for s in &out {
        s.set_nonblocking(true)?;
    }
    while out.len() < count {
        out.push(reuseport_listener(addr)?.into());
    }
    Ok(out)
}

/// Takes a listening socket out of the kernel's listening tables at once
/// (`shutdown(2)` on a listener closes it for new connections, and its port is
/// free again), whoever still holds a reference to it: with io_uring, a
/// cancelled accept keeps the socket alive until the ring lets go of it.
pub fn stop_listening(fd: std::os::fd::RawFd) {
    // SAFETY: shutdown(2) on a descriptor this worker owns; no memory involved.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_shares_one_port_and_second_owner_is_refused() {
        let (ls, addr) = bind_all("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        assert_ne!(addr.port(), 0);
        for l in &ls {
            assert_eq!(l.local_addr().unwrap(), addr);
        }
        let err = bind_all(addr, 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    }
}
