//! Per-worker buffer pool. Every buffer ringlb hands to the kernel comes from here
//! and returns here when dropped, so steady-state traffic allocates nothing.
//!
//! A `Buffer` is a fixed-capacity `BytesMut` plus a read cursor: bytes in
//! `[pos, len)` are unconsumed data, `[len, capacity)` is free space for the next read.

use bytes::BytesMut;
use monoio::buf::{IoBuf, IoBufMut};
use std::cell::{Cell, RefCell};

/// Size of every pooled buffer. Large enough for typical request heads and a
/// productive body read; the head limit (`max_head_bytes`) may grow one buffer.
pub const BUF_SIZE: usize = 64 * 1024;

/// Free buffers kept per worker beyond which returned buffers are freed.
const MAX_FREE: usize = 256;

thread_local! {
    static FREE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    /// Buffers of this thread out of its pool now, and the most a worker may
    /// have out before it stops starting requests (`[limits] max_memory_mb`).
    static OUT: Cell<usize> = const { Cell::new(0) };
    static CAP: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Buffers one request may take (its head, the response, a streamed body, a
/// tunnel's second direction): the headroom a new request needs under the cap.
pub const PER_REQUEST: usize = 4;

/// Caps this thread's buffers out at once (a worker's share of
/// `max_memory_mb`, in buffers).
pub fn set_cap(buffers: usize) {
    CAP.with(|c| c.set(buffers));
}

/// Whether this thread may start a request: its buffers counted (those out,
/// plus what running requests reserved) and a whole request's stay under
/// the cap. Running requests are never refused a buffer; the reservation
/// keeps them within the cap (a request's buffers beyond its head are
/// counted twice while out, which errs on the safe side).
#[inline]
pub fn has_room_for_request() -> bool {
    OUT.with(|o| o.get()) + PER_REQUEST <= CAP.with(|c| c.get())
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

/// A pooled buffer. Dropping it returns the memory to this thread's pool.
pub struct Buffer {
    bytes: BytesMut,
    /// The read cursor (u32 keeps `Buffer` at 40 bytes with `reserved`: it
    /// sits in every connection's task).
    pos: u32,
    /// Buffers counted for this one beyond itself (a request's head buffer
    /// reserves the rest of its request's share, see `take_for_request`).
    reserved: u8,
}

impl Buffer {
    /// Takes a buffer from this thread's pool (allocating only when it is empty).
    pub fn take() -> Buffer {
        let bytes = FREE
            .with(|f| f.borrow_mut().pop())
            .unwrap_or_else(|| BytesMut::with_capacity(BUF_SIZE));
        #[cfg(debug_assertions)]
        outstanding::taken();
        OUT.with(|o| o.set(o.get() + 1));
        Buffer {
            bytes,
            pos: 0,
            reserved: 0,
        }
    }

    /// Takes the buffer a new request's head is read into, counting a whole
    /// request's `PER_REQUEST` buffers against the cap until it is dropped:
    /// requests that later take their other buffers unchecked then stay
    /// within it (check `has_room_for_request` first).
    pub fn take_for_request() -> Buffer {
        let mut b = Buffer::take();
        b.reserved = (PER_REQUEST - 1) as u8;
        OUT.with(|o| o.set(o.get() + PER_REQUEST - 1));
        b
    }

    /// Pre-fills this thread's pool so the first requests do not allocate.
    pub fn prefill(n: usize) {
        FREE.with(|f| {
            let mut f = f.borrow_mut();
            while f.len() < n.min(MAX_FREE) {
                f.push(BytesMut::with_capacity(BUF_SIZE));
            }
        });
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

    /// Makes sure at least `n` bytes of spare room follow the data (compacting, and
    /// growing past `BUF_SIZE` only for an oversize head up to the configured limit).
    pub fn reserve(&mut self, n: usize) {
        if self.spare() >= n {
            return;
        }
        self.compact();
        if self.spare() < n {
            self.bytes.reserve(n);
        }
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

/// Frees pooled buffers beyond `keep` (after a burst, see `memory::trim`).
pub fn trim(keep: usize) {
    let surplus: Vec<BytesMut> = FREE.with(|f| {
        let mut f = f.borrow_mut();
        let keep = keep.min(f.len());
        f.split_off(keep)
    });
    drop(surplus);
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.bytes);
        if bytes.capacity() == 0 {
            return; // a placeholder
        }
        #[cfg(debug_assertions)]
        outstanding::returned();
        let counted = 1 + usize::from(self.reserved);
        let _ = OUT.try_with(|o| o.set(o.get().saturating_sub(counted)));
        if bytes.capacity() != BUF_SIZE {
            return; // grown for an oversize head: let it go
        }
        bytes.clear();
        // try_with: the pool may already be gone while a thread shuts down.
        let _ = FREE.try_with(|f| {
            if let Ok(mut f) = f.try_borrow_mut() {
                if f.len() < MAX_FREE {
                    f.push(bytes);
                }
            }
        });
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
        set_cap(16);
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
        assert_eq!(again.capacity(), BUF_SIZE);
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
