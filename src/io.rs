//! The thin seam between ringlb and monoio: a connection split into a reader and
//! a writer that can be used at the same time, reads that time out without ever
//! losing bytes (cancel, then await the same op), and bounded writes.

use crate::buf::Buffer;
use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{
    AsyncWriteRentExt, CancelableAsyncReadRent, Canceller, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

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
    canceller: Canceller,
}

pub struct Writer {
    half: OwnedWriteHalf<TcpStream>,
}

/// A TCP connection as a (reader, writer) pair.
pub struct Conn {
    pub reader: Reader,
    pub writer: Writer,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Conn {
        let (r, w) = stream.into_split();
        Conn {
            reader: Reader {
                half: r,
                canceller: Canceller::new(),
            },
            writer: Writer { half: w },
        }
    }

    /// Non-blocking check that the peer has not closed an idle connection
    /// (`recv(MSG_PEEK | MSG_DONTWAIT)`): true if it may still be used.
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

    fn fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.stream().as_raw_fd()
    }

    /// Waits until the peer sends something (or closes) without lending a buffer
    /// to the kernel. Returns false on timeout or error.
    pub async fn wait_readable(&self, timeout: Duration) -> bool {
        matches!(
            monoio::time::timeout(timeout, self.stream().readable(true)).await,
            Ok(Ok(()))
        )
    }

    /// Appends to `buf` (which must have spare room). On timeout the read is
    /// cancelled and awaited, so bytes that raced the timer are kept, not lost.
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
        let mut owned = std::mem::replace(buf, Buffer::placeholder());
        let start = owned.bytes_init();
        let end = owned.bytes_total() - tail;
        debug_assert!(end > start, "read into a full buffer");
        let op = self
            .half
            .cancelable_read(owned.slice_mut(start..end), self.canceller.handle());
        let mut op = pin!(op);
        let mut timer = pin!(monoio::time::sleep(timeout));
        let raced = poll_fn(|cx| {
            if let Poll::Ready(r) = op.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        let (timed_out, (res, slice)) = match raced {
            Some(r) => (false, r),
            None => {
                self.canceller = std::mem::take(&mut self.canceller).cancel();
                (true, op.await)
            }
        };
        owned = slice.into_inner();
        *buf = owned;
        match res {
            Ok(0) => ReadOutcome::Eof,
            Ok(n) => ReadOutcome::Data(n),
            Err(_) if timed_out => ReadOutcome::TimedOut,
            Err(e) => ReadOutcome::Failed(e),
        }
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
        match monoio::time::timeout(timeout, write).await {
            Ok((res, slice)) => {
                *buf = slice.into_inner();
                res.map(|_| ())
            }
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
        }
    }

    /// Writes static bytes (canned responses).
    pub async fn write_static(
        &mut self,
        bytes: &'static [u8],
        timeout: Duration,
    ) -> io::Result<()> {
        match monoio::time::timeout(timeout, self.half.write_all(bytes)).await {
            Ok((res, _)) => res.map(|_| ()),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
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
    .map_err(ConnectError::Failed)?;
    let _ = socket.set_nodelay(true);
    let mut pending = match socket.connect(&addr.into()) {
        Ok(()) => false,
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => true,
        Err(e) => return Err(ConnectError::Failed(e)),
    };
    if pending && poll_writable_now(&socket) {
        // Loopback handshakes (and refusals) usually complete within the
        // connect call's softirq: settle it here without touching the runtime.
        match socket.take_error() {
            Ok(None) => pending = false,
            Ok(Some(e)) | Err(e) => return Err(ConnectError::Failed(e)),
        }
    }
    let stream = TcpStream::from_std(socket.into()).map_err(ConnectError::Failed)?;
    if pending {
        match monoio::time::timeout(timeout, stream.writable(false)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ConnectError::Failed(e)),
            Err(_) => return Err(ConnectError::TimedOut),
        }
        use std::os::fd::{AsRawFd, BorrowedFd};
        // SAFETY: the fd belongs to `stream`, which outlives this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
        match socket2::SockRef::from(&fd).take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => return Err(ConnectError::Failed(e)),
        }
    }
    Ok(Conn::new(stream))
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

#[derive(Debug)]
pub enum ConnectError {
    Failed(io::Error),
    TimedOut,
}
