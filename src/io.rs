//! The thin seam between ringlb and monoio: a connection split into a reader and
//! a writer that can be used at the same time, each with its own reusable
//! deadline (`deadline::Timer`) bounding every operation. An operation that times
//! out is dropped, which cancels it in the ring; the connection is then finished
//! with (every caller closes it), so bytes the cancel raced with do not matter.

use crate::buf::Buffer;
use crate::deadline::{Race, Timer};
use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use std::future::Future;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::time::Duration;

/// How `Reader::until_closed_within` ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Watched<T> {
    Done(T),
    Closed,
    TimedOut,
}

/// When `Reader::until_closed_within` looks for a close, in milliseconds
/// after the previous look; then every `CLOSE_CHECK_MAX`.
const CLOSE_CHECKS: [u64; 4] = [10, 20, 40, 80];
const CLOSE_CHECK_MAX: u64 = 100;

/// What a socket holds (see `Reader::peek`).
enum Peek {
    Nothing,
    Data,
    Closed,
}

/// Result of one read.
#[derive(Debug)]
pub enum ReadOutcome {
    /// This many bytes were appended.
    Data(usize),
    /// The peer closed its sending side.
    Eof,
    TimedOut,
    Failed(io::Error),
}

pub struct Reader {
    half: OwnedReadHalf<TcpStream>,
    timer: Timer,
}

pub struct Writer {
    half: OwnedWriteHalf<TcpStream>,
    timer: Timer,
}

/// A TCP connection as a (reader, writer) pair.
pub struct Conn {
    pub reader: Reader,
    pub writer: Writer,
}

impl Conn {
    /// Sends a last answer (when there is one), half-closes, then reads and
    /// drops what the peer still sends, at most `limit` bytes for `linger`:
    /// a lingering close, so the peer reads the answer instead of meeting a
    /// reset. Holds no buffer while it lingers.
    pub async fn answer_and_linger(
        &mut self,
        answer: Option<&'static [u8]>,
        write_timeout: Duration,
        (linger, limit): (Duration, usize),
    ) {
        if let Some(bytes) = answer {
            if self
                .writer
                .write_static(bytes, write_timeout)
                .await
                .is_err()
            {
                return;
            }
        }
        self.writer.shutdown_write();
        self.reader.discard_within(linger, limit).await;
    }

    pub fn new(stream: TcpStream) -> Conn {
        let (r, w) = stream.into_split();
        Conn {
            reader: Reader {
                half: r,
                timer: Timer::new(),
            },
            writer: Writer {
                half: w,
                timer: Timer::transient(),
            },
        }
    }

    /// The connection's descriptor (a key for the idle watcher; never closed through it).
    pub fn fd(&self) -> RawFd {
        self.reader.fd()
    }

    /// Non-blocking check that an idle connection holds nothing and its peer
    /// has not closed it (`recv(MSG_PEEK | MSG_DONTWAIT)`): true if it may be used.
    pub fn probably_alive(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: recv on a valid fd with a 1-byte stack buffer; MSG_PEEK leaves
        // the data in the socket and MSG_DONTWAIT never blocks the worker.
        let n = unsafe {
            libc::recv(
                self.reader.fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        // Any byte on an idle upstream connection is not a response we asked
        // for: treat it as unusable, like EOF and errors other than EAGAIN.
        n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }
}

impl Reader {
    fn stream(&self) -> &TcpStream {
        // SAFETY: the halves share the stream through an UnsafeCell; this shared
        // reference is only used for `&self` methods (readiness, fd) while no
        // operation holds a `&mut` to the stream on this half.
        unsafe { &*self.half.0.get() }
    }

    fn fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.stream().as_raw_fd()
    }

    /// Waits until the peer sends something (or closes) without lending a buffer
    /// to the kernel: `Some(Ok(()))` when readable, `None` past `timeout`.
    /// A plain function returning the raced future (not an `async fn`), which
    /// keeps the idle connection's task small.
    ///
    /// Not "relaxed": the bytes are then taken by `read_now`, behind the
    /// runtime's back, so under the epoll driver its cached readiness would
    /// stay set and a relaxed wait would return at once forever (a busy loop
    /// that starved the worker). On io_uring the flag changes nothing.
    pub fn readable_within(
        &self,
        timeout: Duration,
    ) -> Race<'_, impl Future<Output = io::Result<()>> + '_> {
        self.timer.within(timeout, self.stream().readable(false))
    }

    /// Waits until the peer sends something (or closes) without lending a
    /// buffer, racing `timer` (armed and re-armed by the caller): `None`
    /// once it fires. Not "relaxed", as `readable_within`.
    pub fn readable_racing<'a>(
        &'a self,
        timer: &'a Timer,
    ) -> Race<'a, impl Future<Output = io::Result<()>> + 'a> {
        timer.race(self.stream().readable(false))
    }

    /// Runs `f` until it completes, the peer closes the connection, or
    /// `timeout` passes, whichever comes first (`f` is dropped in the other
    /// two cases). Bytes from the peer (a pipelined request, the rest of a
    /// body) are left in the socket and end the watch for a close: only `f`
    /// and the timeout count after that.
    ///
    /// The close is found by peeking at the socket when the watch starts and
    /// then at growing intervals (`CLOSE_CHECKS`), not by a readiness poll:
    /// monoio boxes the state of a poll dropped in flight, which would cost
    /// an allocation every time `f` wins, and `f` usually wins.
    pub async fn until_closed_within<F: Future>(
        &self,
        timeout: Duration,
        f: F,
    ) -> Watched<F::Output> {
        let mut f = std::pin::pin!(f);
        let deadline = crate::deadline::now_ms().saturating_add(timeout.as_millis() as u64);
        let mut checks = CLOSE_CHECKS
            .iter()
            .chain(std::iter::repeat(&CLOSE_CHECK_MAX));
        let mut watching = true;
        loop {
            if watching {
                match self.peek() {
                    Peek::Closed => return Watched::Closed,
                    Peek::Data => watching = false,
                    Peek::Nothing => {}
                }
            }
            let left = deadline.saturating_sub(crate::deadline::now_ms());
            if left == 0 {
                return Watched::TimedOut;
            }
            let next = checks.next().copied().unwrap_or(CLOSE_CHECK_MAX);
            let slice = if watching { left.min(next) } else { left };
            if let Some(v) = self
                .timer
                .within(Duration::from_millis(slice), f.as_mut())
                .await
            {
                return Watched::Done(v);
            }
        }
    }

    /// Reads and throws away what the peer sends until it closes, `limit`
    /// bytes have come, or `timeout` passes (a lingering close: the peer
    /// reads an answer sent before it instead of meeting a reset). Uses one
    /// scratch area per thread, shared by every lingering connection, and
    /// lends no buffer to the kernel.
    pub async fn discard_within(&self, timeout: Duration, limit: usize) {
        thread_local! {
            static SINK: std::cell::RefCell<[u8; 4096]> = const { std::cell::RefCell::new([0; 4096]) };
        }
        let mut left = limit;
        self.timer.arm(timeout);
        while left > 0 {
            let ready = self.timer.race(self.stream().readable(false)).await;
            if !matches!(ready, Some(Ok(()))) {
                break;
            }
            let n = SINK.with(|b| {
                let mut b = b.borrow_mut();
                let room = b.len().min(left);
                // SAFETY: recv writes at most `room` bytes into the thread's
                // scratch array, borrowed mutably for the call alone.
                unsafe { libc::recv(self.fd(), b.as_mut_ptr().cast(), room, libc::MSG_DONTWAIT) }
            });
            match n {
                1.. => left = left.saturating_sub(n as usize),
                0 => break,
                _ if io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock => {}
                _ => break,
            }
        }
        self.timer.disarm();
    }

    /// What the socket holds, without taking it (`recv(MSG_PEEK | MSG_DONTWAIT)`).
    fn peek(&self) -> Peek {
        let mut byte = 0u8;
        // SAFETY: recv on this reader's open fd into a 1-byte stack buffer;
        // MSG_PEEK leaves the data in the socket, MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::recv(
                self.fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            1.. => Peek::Data,
            0 => Peek::Closed,
            _ => match io::Error::last_os_error().kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Peek::Nothing,
                _ => Peek::Closed,
            },
        }
    }

    /// Appends to `buf` (which must have spare room). On timeout the read is
    /// cancelled and `buf` is left empty without capacity: close the connection.
    pub async fn read(&mut self, buf: &mut Buffer, timeout: Duration) -> ReadOutcome {
        self.read_leaving(buf, timeout, 0).await
    }

    /// Like `read`, but leaves `tail` bytes of the buffer free (for a trailing CRLF).
    pub async fn read_leaving(
        &mut self,
        buf: &mut Buffer,
        timeout: Duration,
        tail: usize,
    ) -> ReadOutcome {
        self.timer.arm(timeout);
        let outcome = read_racing(&mut self.half, buf, tail, &self.timer).await;
        self.timer.disarm();
        outcome
    }

    /// Sets this reader's deadline for the `read_armed` calls that follow.
    pub fn arm(&self, timeout: Duration) {
        self.timer.arm(timeout);
    }

    /// Clears the deadline set by `arm`.
    pub fn disarm(&self) {
        self.timer.disarm();
    }

    /// Reads until the deadline set by `arm` passes (one deadline for several reads).
    pub async fn read_armed(&mut self, buf: &mut Buffer) -> ReadOutcome {
        read_racing(&mut self.half, buf, 0, &self.timer).await
    }

    /// Reads until `timer` (armed and re-armed by the caller) fires: for a
    /// deadline shared by several operations, such as a tunnel's idle timeout.
    pub async fn read_within(&mut self, buf: &mut Buffer, timer: &Timer) -> ReadOutcome {
        read_racing(&mut self.half, buf, 0, timer).await
    }

    /// Reads what the socket holds right now with a plain non-blocking
    /// `recv(2)`, without a round trip through the ring (for use right after
    /// readiness). `None`: nothing to read yet.
    pub fn read_now(&mut self, buf: &mut Buffer) -> Option<ReadOutcome> {
        let start = buf.bytes_init();
        let room = buf.bytes_total() - start;
        debug_assert!(room > 0, "read into a full buffer");
        // SAFETY: recv writes at most `room` bytes into the buffer's spare
        // capacity, which `buf` owns and nothing else references meanwhile;
        // set_init then covers exactly the bytes the kernel wrote.
        let n = unsafe {
            libc::recv(
                self.fd(),
                buf.write_ptr().add(start).cast(),
                room,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => None,
                _ => Some(ReadOutcome::Failed(e)),
            };
        }
        // SAFETY: the kernel initialised `n` bytes after `start`.
        unsafe { buf.set_init(start + n as usize) };
        Some(outcome(Ok(n as usize)))
    }
}

/// One read into the spare room of `buf` (less `tail` bytes), raced against `timer`.
async fn read_racing(
    half: &mut OwnedReadHalf<TcpStream>,
    buf: &mut Buffer,
    tail: usize,
    timer: &Timer,
) -> ReadOutcome {
    let start = buf.bytes_init();
    let end = buf.bytes_total().saturating_sub(tail);
    if end <= start {
        // Never a zero-length read: its 0 would look like the peer's EOF.
        debug_assert!(false, "read into a full buffer");
        return ReadOutcome::Failed(io::Error::other("read into a full buffer"));
    }
    let owned = std::mem::replace(buf, Buffer::placeholder());
    let Some((res, slice)) = timer.race(half.read(owned.slice_mut(start..end))).await else {
        return ReadOutcome::TimedOut;
    };
    *buf = slice.into_inner();
    outcome(res)
}

fn outcome(res: io::Result<usize>) -> ReadOutcome {
    match res {
        Ok(0) => ReadOutcome::Eof,
        Ok(n) => ReadOutcome::Data(n),
        Err(e) => ReadOutcome::Failed(e),
    }
}

impl Writer {
    /// Writes the first `n` data bytes of `buf` entirely and consumes them, or
    /// fails after `timeout` (a peer that stops reading must not pin us forever).
    pub async fn write_front(
        &mut self,
        buf: &mut Buffer,
        n: usize,
        timeout: Duration,
    ) -> io::Result<()> {
        self.write_front_keep(buf, n, timeout).await?;
        buf.consume(n);
        Ok(())
    }

    /// Like `write_front` but leaves the bytes in `buf` (so they can be re-sent
    /// on a fresh connection if a reused one turns out dead).
    pub async fn write_front_keep(
        &mut self,
        buf: &mut Buffer,
        n: usize,
        timeout: Duration,
    ) -> io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        let owned = std::mem::replace(buf, Buffer::placeholder());
        let start = owned.pos();
        let write = self
            .half
            .write_all(monoio::buf::IoBuf::slice(owned, start..start + n));
        match self.timer.within(timeout, write).await {
            Some((res, slice)) => {
                *buf = slice.into_inner();
                res.map(|_| ())
            }
            None => Err(timed_out()),
        }
    }

    /// Writes the first `len` bytes of an allocation shared with its owner
    /// (a rendered direct response), without copying them: the write holds
    /// an `Rc` of them until the kernel is done, even if its future is
    /// dropped first.
    pub async fn write_shared(
        &mut self,
        bytes: std::rc::Rc<Box<[u8]>>,
        len: usize,
        timeout: Duration,
    ) -> io::Result<()> {
        use monoio::buf::IoBuf;
        let part = bytes.slice(..len);
        match self.timer.within(timeout, self.half.write_all(part)).await {
            Some((res, _)) => res.map(|_| ()),
            None => Err(timed_out()),
        }
    }

    /// Writes static bytes (canned responses).
    pub async fn write_static(
        &mut self,
        bytes: &'static [u8],
        timeout: Duration,
    ) -> io::Result<()> {
        match self.timer.within(timeout, self.half.write_all(bytes)).await {
            Some((res, _)) => res.map(|_| ()),
            None => Err(timed_out()),
        }
    }

    /// Half-closes the sending side (lets the peer read what was sent before the
    /// close instead of seeing a reset).
    pub fn shutdown_write(&self) {
        // SAFETY: shutdown(2) on the connection's own fd; no buffer is involved.
        unsafe {
            libc::shutdown(self.fd(), libc::SHUT_WR);
        }
    }

    fn fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        // SAFETY: see Reader::stream; only the fd number is read.
        unsafe { &*self.half.0.get() }.as_raw_fd()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "write timed out")
}

/// Connects with a timeout; the socket gets TCP_NODELAY.
///
/// The non-blocking `connect(2)` is issued directly: a refusal that the kernel
/// reports synchronously (the common case on loopback and for dead local
/// servers) costs no allocation and no io_uring round trip, which keeps the
/// 502 path allocation-free. Otherwise the socket waits for writability.
pub async fn connect(addr: std::net::SocketAddr, timeout: Duration) -> Result<Conn, ConnectError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(ConnectError::classify)?;
    let _ = socket.set_nodelay(true);
    let mut pending = match socket.connect(&addr.into()) {
        Ok(()) => false,
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => true,
        Err(e) => return Err(ConnectError::classify(e)),
    };
    if pending && poll_writable_now(&socket) {
        // Loopback handshakes (and refusals) usually complete within the
        // connect call's softirq: settle it here without touching the runtime.
        match socket.take_error() {
            Ok(None) => pending = false,
            Ok(Some(e)) | Err(e) => return Err(ConnectError::classify(e)),
        }
    }
    let stream = TcpStream::from_std(socket.into()).map_err(ConnectError::classify)?;
    let conn = Conn::new(stream);
    if pending {
        let writer = &conn.writer;
        // SAFETY: see Reader::stream; `writable` only needs a shared reference.
        let stream = unsafe { &*writer.half.0.get() };
        match writer.timer.within(timeout, stream.writable(false)).await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(ConnectError::classify(e)),
            None => return Err(ConnectError::TimedOut),
        }
        use std::os::fd::BorrowedFd;
        // SAFETY: the fd belongs to `conn`, which outlives this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(writer.fd()) };
        match socket2::SockRef::from(&fd).take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => return Err(ConnectError::classify(e)),
        }
    }
    Ok(conn)
}

/// Zero-timeout poll(2) for writability (or error) of a connecting socket.
fn poll_writable_now(socket: &socket2::Socket) -> bool {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack, zero timeout: never blocks.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n == 1 && pfd.revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0
}

/// Why a connect failed, by whose fault: the answer decides between trying
/// another server, holding this one back, and blaming nobody but ringlb.
#[derive(Debug)]
pub enum ConnectError {
    /// The server's host answered that nothing listens there (ECONNREFUSED):
    /// a certain, immediate verdict on the server.
    Refused(io::Error),
    /// ringlb itself ran out of something (descriptors, ephemeral ports, socket
    /// buffers, memory): not the server's failure.
    Local(io::Error),
    /// Anything else (unreachable network or host, reset during the handshake).
    Failed(io::Error),
    TimedOut,
}

impl ConnectError {
    pub fn classify(e: io::Error) -> ConnectError {
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => ConnectError::Refused(e),
            Some(
                libc::EMFILE | libc::ENFILE | libc::EADDRNOTAVAIL | libc::ENOBUFS | libc::ENOMEM,
            ) => ConnectError::Local(e),
            _ => ConnectError::Failed(e),
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused(e) | ConnectError::Local(e) | ConnectError::Failed(e) => {
                write!(
                    f,
                    "{:?} (os error {})",
                    e.kind(),
                    e.raw_os_error().unwrap_or(0)
                )
            }
            ConnectError::TimedOut => f.write_str("timed out"),
        }
    }
}

/// Readiness of a descriptor that is not a connection (the idle watcher's
/// epoll set), awaited through the runtime like a socket's: a PollAdd on
/// io_uring, a registration in the runtime's own epoll otherwise.
pub struct ReadyFd {
    // monoio offers readiness waits on its stream types only; the descriptor is
    // never read from or written to through this wrapper, only polled and closed.
    stream: TcpStream,
}

impl ReadyFd {
    /// Takes ownership of `fd` (closed on drop). Call inside the runtime.
    pub fn new(fd: OwnedFd) -> io::Result<ReadyFd> {
        let stream = TcpStream::from_std(std::net::TcpStream::from(fd))?;
        Ok(ReadyFd { stream })
    }

    pub fn raw(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.stream.as_raw_fd()
    }

    /// Waits until the descriptor is readable.
    pub async fn readable(&self) -> io::Result<()> {
        self.stream.readable(false).await
    }
}
