//! Binary upgrade without a refused connection: the running ringlb hands its
//! listening sockets to its successor over a Unix socket (`SCM_RIGHTS`, as
//! HAProxy and pingora do), so the sockets, and the connections waiting in
//! their accept queues, never close.
//!
//! With `upgrade_socket = PATH` in the config, a running ringlb offers its
//! sockets there. `ringlb --config FILE --upgrade` (the new binary) connects,
//! sends `TAKEOVER <pid>`, and receives one message: a line per socket
//! (`listener ADDR` or `admin ADDR`) with the descriptors attached. It starts
//! its workers on them (binding more SO_REUSEPORT sockets only if it has more
//! workers), then sends `READY`. Only then does the old process stop
//! accepting, without shutting the shared sockets down, drain its in-flight
//! requests and exit; until then both accept. If the successor fails before
//! `READY`, the old process keeps serving as if nothing happened.
//!
//! Why not an overlap on SO_REUSEPORT (start the new process on the same
//! port, then stop the old): each socket of a reuseport group has its own
//! accept queue, and the connections queued on the old process's sockets
//! are reset when it closes them. `benches/load/upgrade.py` measures both
//! (and a plain restart) under connection-per-request load.

use super::{reload, Shutdown};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Most descriptors one message carries (the kernel's SCM_MAX_FD).
pub const MAX_FDS: usize = 253;
/// How long either side waits for the other's next step (a successor's
/// READY comes once its workers run).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a connection to the upgrade socket may take to say what it
/// wants (both kinds of client send their line at once): a silent one must
/// not hold up the reloads and upgrades queued behind it.
const FIRST_LINE_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest request line read from the upgrade socket.
const MAX_LINE: u64 = 4096;

/// What a handed-over socket is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Listener,
    Admin,
}

/// A listening socket handed over (or offered): its role, address and descriptor.
#[derive(Debug)]
pub struct Handed {
    pub role: Role,
    pub addr: SocketAddr,
    pub fd: OwnedFd,
}

/// The successor's side after `take_over`: the sockets, and the connection
/// on which it confirms.
pub struct Takeover {
    pub sockets: Vec<Handed>,
    pub from_pid: u32,
    stream: UnixStream,
}

impl Takeover {
    /// Tells the old process that every worker accepts: it stops accepting,
    /// drains and exits.
    pub fn confirm(mut self) -> io::Result<()> {
        self.stream.write_all(b"READY\n")?;
        let mut bye = String::new();
        BufReader::new(&self.stream).read_line(&mut bye)?;
        if bye.trim() != "BYE" {
            return Err(io::Error::other(format!(
                "the old process answered READY with {bye:?}"
            )));
        }
        Ok(())
    }
}

/// Takes the inherited sockets for `role` on `addr` out of `inherited`.
pub fn claim(inherited: &mut Vec<Handed>, role: Role, addr: SocketAddr) -> Vec<OwnedFd> {
    let mut mine = Vec::new();
    let mut i = 0;
    while i < inherited.len() {
        if inherited[i].role == role && inherited[i].addr == addr {
            mine.push(inherited.swap_remove(i).fd);
        } else {
            i += 1;
        }
    }
    mine
}

/// Takes the inherited listening sockets for a listener configured on
/// `addr`, and the address they are bound to. A port-0 listener takes the
/// first inherited one on its IP whose port no listener of the new config
/// names (`named`): its port stays what it was.
pub fn claim_listener(
    inherited: &mut Vec<Handed>,
    addr: SocketAddr,
    named: &[SocketAddr],
) -> (Vec<OwnedFd>, SocketAddr) {
    if addr.port() != 0 {
        return (claim(inherited, Role::Listener, addr), addr);
    }
    let found = inherited.iter().find(|h| {
        h.role == Role::Listener
            && h.addr.ip() == addr.ip()
            && !named.iter().any(|n| n.port() == h.addr.port())
    });
    match found.map(|h| h.addr) {
        Some(bound) => (claim(inherited, Role::Listener, bound), bound),
        None => (Vec::new(), addr),
    }
}

/// Asks the ringlb offering its sockets on `path` for them.
pub fn take_over(path: &Path) -> io::Result<Takeover> {
    let mut stream = UnixStream::connect(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("no ringlb offers its sockets on {}: {e}", path.display()),
        )
    })?;
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    stream.write_all(format!("TAKEOVER {}\n", std::process::id()).as_bytes())?;
    let (text, fds) = recv_with_fds(&stream)?;
    let mut lines = text.lines();
    let from_pid = lines
        .next()
        .and_then(|l| l.strip_prefix("RINGLB "))
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| io::Error::other("not a ringlb handover answer"))?;
    let mut fds = fds.into_iter();
    let mut sockets = Vec::new();
    for line in lines {
        let (role, addr) = match line.split_once(' ') {
            Some(("listener", a)) => (Role::Listener, a),
            Some(("admin", a)) => (Role::Admin, a),
            _ => return Err(io::Error::other(format!("bad handover line {line:?}"))),
        };
        let addr = addr
            .parse()
            .map_err(|_| io::Error::other(format!("bad address in {line:?}")))?;
        let fd = fds
            .next()
            .ok_or_else(|| io::Error::other("fewer descriptors than sockets"))?;
        sockets.push(Handed { role, addr, fd });
    }
    Ok(Takeover {
        sockets,
        from_pid,
        stream,
    })
}

/// An offer bound under a temporary name, published at its path once this
/// process serves (`publish`): a successor that fails to start never takes
/// the path from the process it was to replace.
pub struct Offer {
    bound: PathBuf,
    path: PathBuf,
}

impl Drop for Offer {
    fn drop(&mut self) {
        // Unpublished (this process failed to start): leave nothing behind.
        let _ = std::fs::remove_file(&self.bound);
    }
}

impl Offer {
    /// Moves the offer to its path (atomically replacing a predecessor's).
    pub fn publish(self) -> io::Result<()> {
        check_offer_path(&self.path)?;
        std::fs::rename(&self.bound, &self.path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("upgrade_socket {}: {e}", self.path.display()),
            )
        })
    }
}

/// The pid this process handed its sockets to (0: none yet).
static HANDED_TO: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Whether this process handed its sockets to `pid`.
pub fn handed_to(pid: u32) -> bool {
    HANDED_TO.load(std::sync::atomic::Ordering::Acquire) == pid
}

/// The pid this process handed its sockets to, if it did.
pub fn handed_over() -> Option<u32> {
    match HANDED_TO.load(std::sync::atomic::Ordering::Acquire) {
        0 => None,
        pid => Some(pid),
    }
}

/// The sockets on offer: our own copies of every listening socket (and the
/// admin socket), kept in step with the listeners an in-place reload opens
/// and closes.
pub type Offered = Arc<std::sync::Mutex<Vec<Handed>>>;

/// Offers `sockets` on `path` to a successor, from a thread of its own.
/// `replace`: a predecessor may still hold the path (this process took its
/// sockets over); otherwise a path that answers means another ringlb offers
/// there, which is an error. Bound under a temporary name until `publish`.
pub fn offer(
    path: &Path,
    sockets: Offered,
    shutdown: Arc<Shutdown>,
    replace: bool,
) -> io::Result<Offer> {
    let count = sockets.lock().map_or(0, |s| s.len());
    if count > MAX_FDS {
        return Err(io::Error::other(format!(
            "{count} listening sockets: a handover carries at most {MAX_FDS}"
        )));
    }
    if !replace && UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "another ringlb offers its sockets on {} (upgrade it with --upgrade)",
                path.display()
            ),
        ));
    }
    // Refuse a path that is not a socket now, before anything runs.
    check_offer_path(path)?;
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}", std::process::id()));
    let bound = PathBuf::from(name);
    let _ = std::fs::remove_file(&bound);
    let listener = UnixListener::bind(&bound)
        .map_err(|e| io::Error::new(e.kind(), format!("upgrade_socket {}: {e}", path.display())))?;
    // Whoever can connect can take the sockets and stop this process: the
    // owner only (ringlb's user; root can anyway).
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bound, std::fs::Permissions::from_mode(0o600))?;
    }
    std::thread::Builder::new()
        .name("ringlb-upgrade".into())
        .spawn(move || {
            // The `ringlb reload` waiting for its outcome, if any (one at a time).
            let mut pending: Option<reload::Reporter> = None;
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                if shutdown.is_requested() {
                    crate::warn!("upgrade refused: this ringlb is already draining");
                    continue;
                }
                let _ = stream.set_read_timeout(Some(FIRST_LINE_TIMEOUT));
                let mut line = String::new();
                let read = BufReader::new((&stream).take(MAX_LINE)).read_line(&mut line);
                if read.is_err() || !line.ends_with('\n') {
                    continue; // silent, cut short or too long
                }
                let _ = stream.set_read_timeout(Some(STEP_TIMEOUT));
                if let Some(path) = line.strip_prefix("RELOAD ") {
                    let busy = pending
                        .as_ref()
                        .and_then(|r| r.lock().ok().map(|g| g.is_some()))
                        .unwrap_or(false);
                    if busy {
                        let _ = writeln!(stream, "ERROR a reload is already in progress");
                        continue;
                    }
                    pending = start_reload(Path::new(path.trim()), stream);
                    continue;
                }
                let handed = {
                    let sockets = sockets.lock().unwrap_or_else(|p| p.into_inner());
                    hand_over(&line, stream, &sockets)
                };
                match handed {
                    Ok(pid) => {
                        HANDED_TO.store(pid, std::sync::atomic::Ordering::Release);
                        crate::info!(
                            "handed the listening sockets to pid {pid}: no longer accepting, \
                             draining in-flight requests"
                        );
                        let waiting = pending.as_ref().and_then(|r| r.lock().ok()?.take());
                        if let Some(mut s) = waiting {
                            let _ = writeln!(s, "DONE {pid}");
                        }
                        // No STOPPING=1: the service goes on in the
                        // successor, which announced READY=1 with its pid.
                        shutdown.hand_over();
                        return;
                    }
                    Err(e) => crate::warn!("upgrade: {e}; still serving"),
                }
            }
        })?;
    Ok(Offer {
        bound,
        path: path.to_path_buf(),
    })
}

/// `RELOAD path` from `ringlb reload`: validate and start the successor,
/// answer `STARTED pid` (then `DONE pid` once it took over) or `ERROR why`.
/// Returns where the outcome goes (this command's connection, which the
/// successor's reaper answers instead if it exits before taking over).
fn start_reload(path: &Path, mut stream: UnixStream) -> Option<reload::Reporter> {
    let reporter: reload::Reporter = Arc::default();
    match reload::reload(path, Some(reporter.clone())) {
        Ok(reload::Reloaded::InPlace(summary)) => {
            let _ = writeln!(stream, "DONE {} {summary}", std::process::id());
            None
        }
        Ok(reload::Reloaded::Successor(pid)) => {
            let _ = writeln!(stream, "STARTED {pid}");
            if let Ok(mut r) = reporter.lock() {
                *r = Some(stream);
            }
            Some(reporter)
        }
        Err(e) => {
            crate::warn!("reload refused: {e}; still serving with the current configuration");
            let _ = writeln!(stream, "ERROR {e}");
            None
        }
    }
}

/// Checks that `path` may take an offer: absent, or a socket (a
/// predecessor's or a stale one, which the rename replaces). Anything else
/// (a regular file, a directory) is an error, never deleted.
fn check_offer_path(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => Ok(()),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "upgrade_socket {} exists and is not a socket; not replacing it",
                path.display()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// One successor's request (`line`, already read): the sockets out, then its
/// READY. Returns its pid.
fn hand_over(line: &str, stream: UnixStream, sockets: &[Handed]) -> io::Result<u32> {
    let mut reader = BufReader::new(&stream);
    let pid: u32 = line
        .strip_prefix("TAKEOVER ")
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("unexpected request {line:?}")))?;
    let mut line = String::new();
    let mut text = format!("RINGLB {}\n", std::process::id());
    for s in sockets {
        let role = match s.role {
            Role::Listener => "listener",
            Role::Admin => "admin",
        };
        text.push_str(&format!("{role} {}\n", s.addr));
    }
    let fds: Vec<RawFd> = sockets.iter().map(|s| s.fd.as_raw_fd()).collect();
    send_with_fds(&stream, text.as_bytes(), &fds)?;
    crate::info!("upgrade: pid {pid} took the listening sockets; waiting for it to accept");
    line.clear();
    reader.read_line(&mut line)?;
    if line.trim() != "READY" {
        return Err(io::Error::other(format!(
            "pid {pid} did not start (it said {line:?})"
        )));
    }
    (&stream).write_all(b"BYE\n")?;
    Ok(pid)
}

/// Sends `data` with `fds` attached (one `sendmsg`), then a blank line.
fn send_with_fds(stream: &UnixStream, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut body = data.to_vec();
    body.push(b'\n');
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: body.as_mut_ptr().cast(),
        iov_len: body.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the
    // sendmsg call, and the control buffer is CMSG_SPACE bytes for exactly
    // `fds.len()` descriptors, which CMSG_FIRSTHDR/CMSG_DATA address within.
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                fd_bytes,
            );
        }
        libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // The rest, if the first call took only part of the text.
    (&*stream).write_all(&body[sent as usize..])
}

/// Receives the text up to a blank line, and the descriptors attached to it.
fn recv_with_fds(stream: &UnixStream) -> io::Result<(String, Vec<OwnedFd>)> {
    let mut data = vec![0u8; 64 * 1024];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) };
    let mut control = vec![0u8; space as usize];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let mut fds = Vec::new();
    // SAFETY: the buffers outlive the call; the kernel writes at most their
    // lengths. Each SCM_RIGHTS header it returns carries descriptors now
    // open in this process, which are wrapped in OwnedFd at once (so closed
    // on any error below).
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len() as _;
        let n = libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n >= 0 {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let p = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    for i in 0..bytes / std::mem::size_of::<RawFd>() {
                        fds.push(OwnedFd::from_raw_fd(p.add(i).read_unaligned()));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
            if msg.msg_flags & libc::MSG_CTRUNC != 0 {
                return Err(io::Error::other("handover descriptors truncated"));
            }
        }
        n
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    data.truncate(n as usize);
    // The text ends with a blank line; read on if the first call cut it short.
    let mut reader = BufReader::new(stream);
    while !data.ends_with(b"\n\n") {
        let mut more = [0u8; 4096];
        let k = reader.read(&mut more)?;
        if k == 0 {
            return Err(io::Error::other("handover message cut short"));
        }
        data.extend_from_slice(&more[..k]);
    }
    let text = String::from_utf8(data).map_err(|_| io::Error::other("handover text"))?;
    Ok((text.trim_end().to_string(), fds))
}
