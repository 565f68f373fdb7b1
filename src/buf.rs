//! Per-worker buffer pools. Every buffer ringlb hands to the kernel comes from here
//! and returns here when dropped, so steady-state traffic allocates nothing.
//!
//! Two sizes: heads and small messages live in one-page buffers, and a buffer
//! is enlarged to 64 KiB (its bytes copied into a large one) only where a
//! body streams or a head outgrows a page. A busy connection with small
//! requests and responses so costs two pages, not two 64 KiB blocks whose
//! pages the allocator's own bookkeeping ends up touching.
//!
//! A `Buffer` is a fixed-capacity `BytesMut` plus a read cursor: bytes in
//! `[pos, len)` are unconsumed data, `[len, capacity)` is free space for the next read.

use bytes::BytesMut;
use monoio::buf::{IoBuf, IoBufMut};
use std::cell::{Cell, RefCell};

/// Size of a small buffer: one page, for heads and small messages.
pub const SMALL_SIZE: usize = 4 * 1024;

/// Size of a large buffer: a productive body read, and the most a response
/// head may take. A request head up to `max_head_bytes` may grow one further.
pub const LARGE_SIZE: usize = 64 * 1024;

/// Free buffers of each size kept per worker beyond which returned ones are freed.
const MAX_FREE_SMALL: usize = 1024;
const MAX_FREE_LARGE: usize = 256;

thread_local! {
    static FREE_SMALL: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static FREE_LARGE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    /// Bytes of this thread's buffers out of its pools now (plus what running
    /// requests reserved), and the most a worker may have out before it stops
    /// starting requests (`[limits] max_memory_mb`).
    static OUT: Cell<usize> = const { Cell::new(0) };
    static CAP: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Small buffers one request may take without asking (its head, the
/// response, a streamed body's, a tunnel's second direction): the room a new
/// request needs under the cap. Enlarging any of them asks for room first.
pub const PER_REQUEST: usize = 4;

/// Caps the bytes of this thread's buffers out at once (a worker's share of
/// `max_memory_mb`).
pub fn set_cap(bytes: usize) {
    CAP.with(|c| c.set(bytes));
}

/// Whether this thread may start a request: its buffers counted (those out,
/// plus what running requests reserved) and a whole request's stay under
/// the cap. Running requests are never refused a small buffer; the
/// reservation keeps them within the cap (a request's buffers beyond its
/// head are counted twice while out, which errs on the safe side).
#[inline]
pub fn has_room_for_request() -> bool {
    OUT.with(|o| o.get()) + PER_REQUEST * SMALL_SIZE <= CAP.with(|c| c.get())
}

/// Whether `extra` more bytes of buffers fit under this thread's cap.
#[inline]
fn has_room_for(extra: usize) -> bool {
    OUT.with(|o| o.get()) + extra <= CAP.with(|c| c.get())
}

#[inline]
fn count_out(bytes: usize) {
    OUT.with(|o| o.set(o.get() + bytes));
}

/// Debug builds (the test suite's) count the buffers out of the pools, and
/// the most ever out at once, for tests that bound them directly. Release
/// builds keep no such shared counter on the request path.
#[cfg(debug_assertions)]
pub mod outstanding {
    use std::sync::atomic::{AtomicUsize, Ordering};

    static OUT: AtomicUsize = AtomicUsize::new(0);
    static HIGH_WATER: AtomicUsize = AtomicUsize::new(0);

    pub(super) fn taken() {
        let now = OUT.fetch_add(1, Ordering::Relaxed) + 1;
        HIGH_WATER.fetch_max(now, Ordering::Relaxed);
    }

    pub(super) fn returned() {
        OUT.fetch_sub(1, Ordering::Relaxed);
    }

    /// Buffers out of the pools now (every thread).
    pub fn now() -> usize {
        OUT.load(Ordering::Relaxed)
    }

    /// The most out at once since `reset_high_water`.
    pub fn high_water() -> usize {
        HIGH_WATER.load(Ordering::Relaxed)
    }

    pub fn reset_high_water() {
        HIGH_WATER.store(now(), Ordering::Relaxed);
    }
}

/// The two buffer sizes, each with its own free list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Size {
    Small,
    Large,
}

impl Size {
    #[inline]
    fn bytes(self) -> usize {
        match self {
            Size::Small => SMALL_SIZE,
            Size::Large => LARGE_SIZE,
        }
    }

    fn pop(self) -> BytesMut {
        let free = |f: &RefCell<Vec<BytesMut>>| f.borrow_mut().pop();
        match self {
            Size::Small => FREE_SMALL.with(free),
            Size::Large => FREE_LARGE.with(free),
        }
        .unwrap_or_else(|| BytesMut::with_capacity(self.bytes()))
    }

    /// Keeps `bytes` (emptied) for reuse if its free list has room and it
    /// still has this size (one grown past it is freed).
    fn push(self, mut bytes: BytesMut) {
        if bytes.capacity() != self.bytes() {
            return;
        }
        bytes.clear();
        let keep = |max: usize| {
            move |f: &RefCell<Vec<BytesMut>>| {
                if let Ok(mut f) = f.try_borrow_mut() {
                    if f.len() < max {
                        f.push(bytes);
                    }
                }
            }
        };
        // try_with: the pool may already be gone while a thread shuts down.
        let _ = match self {
            Size::Small => FREE_SMALL.try_with(keep(MAX_FREE_SMALL)),
            Size::Large => FREE_LARGE.try_with(keep(MAX_FREE_LARGE)),
        };
    }
}

/// A pooled buffer. Dropping it returns the memory to this thread's pool.
pub struct Buffer {
    bytes: BytesMut,
    /// The read cursor (u32 keeps `Buffer` at 40 bytes with `reserved` and
    /// `size`: it sits in every connection's task).
    pos: u32,
    /// Small buffers counted for this one beyond itself (a request's head
    /// buffer reserves the rest of its request's share, see `take_for_request`).
    reserved: u8,
    /// The size counted against the cap (and the free list it returns to).
    size: Size,
    /// KiB counted for growth past `LARGE_SIZE` (`make_room`), given back on drop.
    grown_kib: u16,
}

impl Buffer {
    fn take_sized(size: Size) -> Buffer {
        let bytes = size.pop();
        #[cfg(debug_assertions)]
        outstanding::taken();
        count_out(size.bytes());
        Buffer {
            bytes,
            pos: 0,
            reserved: 0,
            size,
            grown_kib: 0,
        }
    }

    /// Takes a small buffer from this thread's pool (allocating only when it
    /// is empty). It grows into a large one where needed (`enlarge`, `reserve`).
    pub fn take() -> Buffer {
        Buffer::take_sized(Size::Small)
    }

    /// Takes a large buffer (for output whose size is known to be large).
    pub fn take_large() -> Buffer {
        Buffer::take_sized(Size::Large)
    }

    /// Takes the buffer a new request's head is read into, counting a whole
    /// request's `PER_REQUEST` small buffers against the cap until it is
    /// dropped: requests that later take their other small buffers unchecked
    /// then stay within it (check `has_room_for_request` first).
    pub fn take_for_request() -> Buffer {
        let mut b = Buffer::take();
        b.reserved = (PER_REQUEST - 1) as u8;
        count_out((PER_REQUEST - 1) * SMALL_SIZE);
        b
    }

    /// Pre-fills this thread's pools so the first requests do not allocate:
    /// `n` small buffers and `n` large ones.
    pub fn prefill(n: usize) {
        let fill = |f: &RefCell<Vec<BytesMut>>, max: usize, size: usize| {
            let mut f = f.borrow_mut();
            while f.len() < n.min(max) {
                f.push(BytesMut::with_capacity(size));
            }
        };
        FREE_SMALL.with(|f| fill(f, MAX_FREE_SMALL, SMALL_SIZE));
        FREE_LARGE.with(|f| fill(f, MAX_FREE_LARGE, LARGE_SIZE));
    }

    /// Whether this is a small buffer (`enlarge` would make it large).
    #[inline]
    pub fn is_small(&self) -> bool {
        self.size == Size::Small && self.bytes.capacity() > 0
    }

    /// Moves the data of a small buffer into a large one, if the worker's
    /// memory cap has room for it (false otherwise, and for a buffer that is
    /// not small). The bytes before the cursor (headroom) move too, so the
    /// cursor keeps its offset.
    pub fn enlarge(&mut self) -> bool {
        if !self.is_small() || !has_room_for(LARGE_SIZE - SMALL_SIZE) {
            return false;
        }
        self.enlarge_unchecked();
        true
    }

    /// `enlarge` without asking the cap (for a request already forwarded,
    /// which must be able to finish).
    fn enlarge_unchecked(&mut self) {
        let mut large = Size::Large.pop();
        large.extend_from_slice(&self.bytes);
        let small = std::mem::replace(&mut self.bytes, large);
        Size::Small.push(small);
        count_out(LARGE_SIZE - SMALL_SIZE);
        self.size = Size::Large;
    }

    /// The read cursor as an index.
    #[inline]
    fn at(&self) -> usize {
        self.pos as usize
    }

    /// Unconsumed bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.bytes[self.at()..]
    }

    /// Mutable unconsumed bytes.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        let at = self.at();
        &mut self.bytes[at..]
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.at() == self.bytes.len()
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.bytes.len() - self.at()
    }

    /// Marks `n` unconsumed bytes as consumed.
    #[inline]
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.pos += n as u32;
        if self.at() == self.bytes.len() {
            self.clear();
        }
    }

    #[inline]
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.pos = 0;
    }

    /// Free space after the data.
    #[inline]
    pub fn spare(&self) -> usize {
        self.bytes.capacity() - self.bytes.len()
    }

    /// Moves unconsumed data to the front so that reads can append after it.
    pub fn compact(&mut self) {
        if self.at() == 0 {
            return;
        }
        let len = self.len();
        let at = self.at();
        self.bytes.copy_within(at.., 0);
        self.bytes.truncate(len);
        self.pos = 0;
    }

    /// Makes sure at least `n` bytes of spare room follow the data: compacting,
    /// then enlarging a small buffer, then growing past `LARGE_SIZE` (only
    /// for an oversize head up to the configured limit), all counted against
    /// the worker's memory cap. False, with the buffer unchanged but
    /// compacted, when the cap has no room for the growth: for a request not
    /// yet forwarded, which can still be shed.
    #[must_use]
    pub fn reserve(&mut self, n: usize) -> bool {
        self.make_room(n, true)
    }

    /// `reserve` for a request already forwarded (a response head, a framing
    /// line cut by the buffer's end): it must be able to finish, so growth
    /// is counted but never refused. Bounded by what the parsers allow (a
    /// response head, a chunk line or trailer section).
    pub fn reserve_running(&mut self, n: usize) {
        self.make_room(n, false);
    }

    fn make_room(&mut self, n: usize, checked: bool) -> bool {
        if self.spare() >= n {
            return true;
        }
        self.compact();
        if self.spare() >= n {
            return true;
        }
        if self.is_small() {
            if checked && !has_room_for(LARGE_SIZE - SMALL_SIZE) {
                return false;
            }
            self.enlarge_unchecked();
        }
        if self.spare() < n {
            let before = self.bytes.capacity();
            let wanted = self.bytes.len() + n;
            if checked && !has_room_for(wanted.saturating_sub(before)) {
                return false;
            }
            self.bytes.reserve(n);
            let kib = (self.bytes.capacity() - before).div_ceil(1024);
            let kib = u16::try_from(kib).unwrap_or(u16::MAX);
            self.grown_kib = self.grown_kib.saturating_add(kib);
            count_out(usize::from(kib) * 1024);
        }
        true
    }

    /// Appends bytes (used to write rewritten heads).
    #[inline]
    pub fn extend(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// Total capacity.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Shortens the data to `pos + n` bytes.
    #[inline]
    pub fn truncate_data(&mut self, n: usize) {
        self.bytes.truncate(self.at() + n);
    }

    /// A zero-capacity placeholder (no allocation), left behind while the real
    /// buffer is lent to the kernel.
    pub fn placeholder() -> Buffer {
        Buffer {
            bytes: BytesMut::new(),
            pos: 0,
            reserved: 0,
            size: Size::Small,
            grown_kib: 0,
        }
    }

    /// Empties the buffer and leaves `headroom` free bytes before the data, so a
    /// rewritten head can later be placed in front of the body bytes that follow it.
    pub fn reset_with_headroom(&mut self, headroom: usize) {
        self.bytes.clear();
        let headroom = headroom.min(self.bytes.capacity());
        // Zeroed (a few hundred bytes) rather than left uninitialised: the
        // headroom is later written through ordinary slices.
        self.bytes.resize(headroom, 0);
        self.pos = headroom as u32;
    }

    /// Replaces the first `old_len` bytes of data with `new`, writing into the
    /// headroom in front when there is enough, shifting the rest otherwise.
    pub fn replace_prefix(&mut self, old_len: usize, new: &[u8]) {
        let end = self.at() + old_len;
        if new.len() <= end {
            let start = end - new.len();
            self.bytes[start..end].copy_from_slice(new);
            self.pos = start as u32;
            return;
        }
        let tail = self.bytes.len() - end;
        let new_len = new.len() + tail;
        if self.bytes.len() < new_len {
            self.bytes.resize(new_len, 0);
        }
        self.bytes.copy_within(end..end + tail, new.len());
        self.bytes[..new.len()].copy_from_slice(new);
        self.bytes.truncate(new_len);
        self.pos = 0;
    }

    /// Grants raw access for in-place framing rewrites (chunk headers).
    #[inline]
    pub fn raw_mut(&mut self) -> &mut BytesMut {
        &mut self.bytes
    }

    /// Read cursor.
    #[inline]
    pub fn pos(&self) -> usize {
        self.pos as usize
    }

    /// Moves the read cursor to an absolute offset.
    #[inline]
    pub fn set_pos(&mut self, pos: usize) {
        debug_assert!(pos <= self.bytes.len());
        self.pos = pos as u32;
    }
}

/// Frees pooled buffers of each size beyond `keep` (after a burst, see `memory::trim`).
pub fn trim(keep: usize) {
    let split = |f: &RefCell<Vec<BytesMut>>| {
        let mut f = f.borrow_mut();
        let keep = keep.min(f.len());
        f.split_off(keep)
    };
    drop(FREE_SMALL.with(split));
    drop(FREE_LARGE.with(split));
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let bytes = std::mem::take(&mut self.bytes);
        if bytes.capacity() == 0 {
            return; // a placeholder
        }
        #[cfg(debug_assertions)]
        outstanding::returned();
        let counted = self.size.bytes()
            + usize::from(self.grown_kib) * 1024
            + usize::from(self.reserved) * SMALL_SIZE;
        let _ = OUT.try_with(|o| o.set(o.get().saturating_sub(counted)));
        self.size.push(bytes); // or frees it, if it grew for an oversize head
    }
}

// SAFETY: the pointer and length come from the inner BytesMut, which the runtime
// keeps alive and unmoved (the Buffer is owned by the in-flight operation); the
// heap allocation behind BytesMut never moves while it is not resized.
unsafe impl IoBuf for Buffer {
    #[inline]
    fn read_ptr(&self) -> *const u8 {
        self.bytes.as_ptr()
    }

    #[inline]
    fn bytes_init(&self) -> usize {
        self.bytes.len()
    }
}

// SAFETY: as above; `set_init` only grows the length to bytes the kernel wrote,
// and never past capacity (the runtime bounds writes by `bytes_total`).
unsafe impl IoBufMut for Buffer {
    #[inline]
    fn write_ptr(&mut self) -> *mut u8 {
        self.bytes.as_mut_ptr()
    }

    #[inline]
    fn bytes_total(&mut self) -> usize {
        self.bytes.capacity()
    }

    #[inline]
    unsafe fn set_init(&mut self, init_len: usize) {
        if self.bytes.len() < init_len {
            self.bytes.set_len(init_len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_reservations_keep_a_worker_within_its_cap() {
        set_cap(16 * SMALL_SIZE);
        // Each request: its head buffer (reserving four), then a response
        // buffer taken unchecked.
        let mut held = Vec::new();
        while has_room_for_request() {
            held.push((Buffer::take_for_request(), Buffer::take()));
        }
        let real = held.len() * 2;
        assert_eq!(
            held.len(),
            3,
            "16 counted buffers admit 3 requests of 4 (+1)"
        );
        // Even if every request took all four, the real buffers stay under the cap.
        assert!(held.len() * PER_REQUEST <= 16 && real <= 16);
        drop(held);
        assert!(
            has_room_for_request(),
            "a dropped request gives its reservation back"
        );
        OUT.with(|o| assert_eq!(o.get(), 0));
        set_cap(usize::MAX);
    }

    #[test]
    fn enlarging_keeps_the_bytes_and_asks_the_cap() {
        let mut b = Buffer::take_for_request();
        b.reset_with_headroom(8);
        b.extend(b"HEAD");
        assert!(b.is_small() && b.capacity() == SMALL_SIZE);
        assert!(b.enlarge());
        assert_eq!(
            (b.pos(), b.data()),
            (8, &b"HEAD"[..]),
            "cursor and data kept"
        );
        assert_eq!(b.capacity(), LARGE_SIZE);
        assert!(!b.enlarge(), "already large");
        let counted = LARGE_SIZE + (PER_REQUEST - 1) * SMALL_SIZE;
        OUT.with(|o| assert_eq!(o.get(), counted));
        drop(b);
        OUT.with(|o| assert_eq!(o.get(), 0));

        // Under a cap with no room for a large buffer, a small one stays small:
        // `enlarge` says no and `reserve` reports it, with the data intact.
        set_cap(PER_REQUEST * SMALL_SIZE);
        let mut b = Buffer::take_for_request();
        b.extend(&[b'x'; 3000]);
        b.consume(1000);
        assert!(!b.enlarge());
        assert!(!b.reserve(4096), "no room to grow past a page");
        assert_eq!((b.pos(), b.len()), (0, 2000), "compacted, data kept");
        assert!(b.reserve(2000), "a page still has room after compacting");
        set_cap(usize::MAX);
        assert!(b.reserve(8192) && b.spare() >= 8192 && !b.is_small());
        drop(b);
        OUT.with(|o| assert_eq!(o.get(), 0));
    }

    #[test]
    fn growth_past_a_large_buffer_is_counted_and_asks_the_cap() {
        set_cap(PER_REQUEST * SMALL_SIZE + LARGE_SIZE);
        let mut b = Buffer::take_for_request();
        b.extend(&[b'h'; 4000]);
        assert!(!b.reserve(200_000), "an oversize head does not fit the cap");
        b.reserve_running(200_000); // a forwarded request's head grows anyway
        assert!(b.spare() >= 200_000);
        let out = OUT.with(|o| o.get());
        assert!(
            out >= b.capacity() + (PER_REQUEST - 1) * SMALL_SIZE,
            "{out}"
        );
        drop(b);
        OUT.with(|o| assert_eq!(o.get(), 0, "all of it given back"));
        set_cap(usize::MAX);
    }

    #[test]
    fn consume_compact_and_recycle() {
        let mut b = Buffer::take();
        b.extend(b"hello world");
        b.consume(6);
        assert_eq!(b.data(), b"world");
        b.compact();
        assert_eq!((b.pos(), b.data()), (0, &b"world"[..]));
        b.consume(5);
        assert!(b.is_empty());
        let ptr = b.read_ptr();
        drop(b);
        let again = Buffer::take();
        assert_eq!(again.capacity(), SMALL_SIZE);
        assert_eq!(again.read_ptr(), ptr, "buffer came back from the pool");
        assert!(again.is_empty());
    }

    #[test]
    fn replace_prefix_uses_headroom_or_shifts() {
        let mut b = Buffer::take();
        b.reset_with_headroom(8);
        b.extend(b"HEADbody");
        b.replace_prefix(4, b"LONGERHEAD");
        assert_eq!(b.data(), b"LONGERHEADbody");
        assert_eq!(b.pos(), 2);
        let mut b = Buffer::take();
        b.extend(b"Hbody");
        b.replace_prefix(1, b"HEAD:");
        assert_eq!(b.data(), b"HEAD:body");
        b.replace_prefix(5, b"X");
        assert_eq!(b.data(), b"Xbody");
    }
}
