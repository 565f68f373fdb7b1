//! The systemd notification protocol (`sd_notify`), for `Type=notify` units:
//! `READY=1` once every worker is accepting, `STOPPING=1` when a drain
//! starts. A datagram to `$NOTIFY_SOCKET` (a path, or `@name` for the
//! abstract namespace); without the variable every call does nothing.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (newline-separated `KEY=value` lines) to the service
/// manager. Failures are logged once per call and otherwise ignored: a
/// missing manager must never stop ringlb.
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&target.to_string_lossy(), state) {
        crate::warn!("sd_notify to {}: {e}", target.to_string_lossy());
    }
}

fn send(target: &str, state: &str) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    if let Some(name) = target.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        socket.send_to(state.as_bytes(), target)?;
    }
    Ok(())
}

/// `READY=1` with the main pid and a status line.
pub fn ready(status: &str) {
    notify(&format!(
        "READY=1\nMAINPID={}\nSTATUS={status}",
        std::process::id()
    ));
}

/// `STOPPING=1`: a drain has begun.
pub fn stopping() {
    notify("STOPPING=1\nSTATUS=draining in-flight requests");
}
