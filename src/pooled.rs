//! Recycled, pinned storage for the large per-request future of a connection.
//!
//! A monoio task's memory is its whole future, so a connection task that ran
//! the request path inline would cost every idle keep-alive connection the size
//! of its largest state (several KB). Instead the connection task stays small
//! and runs each request's future in a `Pooled` block taken from a per-thread
//! free list: no allocation per request in steady state, and the block goes
//! back to the list as soon as the request is done.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Size of one block: the largest future run here (a streamed upload, ~2 KB)
/// plus room to grow. One that does not fit is boxed instead, with a warning
/// (and the size tests and the counting-allocator test fail).
pub const BLOCK_SIZE: usize = 2560;
const BLOCK_ALIGN: usize = 64;
/// Free blocks kept per thread; more are returned to the allocator.
const MAX_FREE: usize = 256;

thread_local! {
    static FREE: RefCell<Vec<NonNull<u8>>> = const { RefCell::new(Vec::new()) };
}

fn layout() -> Layout {
    // Constant, valid size and power-of-two alignment.
    Layout::from_size_align(BLOCK_SIZE, BLOCK_ALIGN).expect("block layout")
}

fn take_block() -> NonNull<u8> {
    if let Some(b) = FREE.with(|f| f.borrow_mut().pop()) {
        return b;
    }
    // SAFETY: the layout has a non-zero size.
    let p = unsafe { alloc(layout()) };
    NonNull::new(p).unwrap_or_else(|| handle_alloc_error(layout()))
}

fn give_block(b: NonNull<u8>) {
    let kept = FREE
        .try_with(|f| match f.try_borrow_mut() {
            Ok(mut f) if f.len() < MAX_FREE => {
                f.push(b);
                true
            }
            _ => false,
        })
        .unwrap_or(false);
    if !kept {
        // SAFETY: `b` came from `alloc(layout())` and nothing refers to it any more.
        unsafe { dealloc(b.as_ptr(), layout()) };
    }
}

/// Frees blocks beyond `keep` (after a burst, see `memory::trim`).
pub fn trim(keep: usize) {
    let surplus: Vec<NonNull<u8>> = FREE.with(|f| {
        let mut f = f.borrow_mut();
        let keep = keep.min(f.len());
        f.split_off(keep)
    });
    for b in surplus {
        // SAFETY: free-list blocks came from `alloc(layout())` and are unused.
        unsafe { dealloc(b.as_ptr(), layout()) };
    }
}

/// Pre-fills this thread's free list so that the first requests do not allocate.
pub fn prefill(n: usize) {
    let blocks: Vec<NonNull<u8>> = (0..n.min(MAX_FREE)).map(|_| take_block()).collect();
    blocks.into_iter().for_each(give_block);
}

/// A future stored in a pooled block (or, if too large, in a box).
pub struct Pooled<F: Future> {
    ptr: NonNull<F>,
    in_block: bool,
    _owns: PhantomData<F>,
}

impl<F: Future> Pooled<F> {
    pub fn new(f: F) -> Pooled<F> {
        let fits =
            std::mem::size_of::<F>() <= BLOCK_SIZE && std::mem::align_of::<F>() <= BLOCK_ALIGN;
        let ptr = if fits {
            let block = take_block().cast::<F>();
            // SAFETY: the block is large and aligned enough for F (checked above)
            // and unused; writing moves `f` into it.
            unsafe { block.as_ptr().write(f) };
            block
        } else {
            crate::log::rate_limited(format_args!(
                "a {}-byte future does not fit a {BLOCK_SIZE}-byte pooled block: boxed",
                std::mem::size_of::<F>()
            ));
            NonNull::from(Box::leak(Box::new(f)))
        };
        Pooled {
            ptr,
            in_block: fits,
            _owns: PhantomData,
        }
    }

    /// Whether the future lives in a pooled block (false: it had to be boxed).
    pub fn is_pooled(&self) -> bool {
        self.in_block
    }
}

// The future sits at a heap address of its own; moving the handle never moves it.
impl<F: Future> Unpin for Pooled<F> {}

impl<F: Future> Future for Pooled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the future lives at a fixed heap address until `drop` and is
        // only reached through this handle, so pinning it there is sound even
        // though the handle itself moves.
        unsafe { Pin::new_unchecked(&mut *self.ptr.as_ptr()) }.poll(cx)
    }
}

impl<F: Future> Drop for Pooled<F> {
    fn drop(&mut self) {
        if self.in_block {
            // SAFETY: the block holds a live F written in `new`; it is dropped in
            // place exactly once, then the memory goes back to the free list.
            unsafe { std::ptr::drop_in_place(self.ptr.as_ptr()) };
            give_block(self.ptr.cast());
        } else {
            // SAFETY: the pointer came from Box::leak in `new`.
            drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
        }
    }
}

/// Sizes of the futures `async fn`s return, taken from the functions themselves
/// (for tests that keep request futures within a block and tasks small).
#[cfg(test)]
pub(crate) mod future_size {
    pub fn of5<A, B, C, D, E, F>(_: fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    pub fn of6<A, B, C, D, E, G, F>(_: fn(A, B, C, D, E, G) -> F) -> usize {
        std::mem::size_of::<F>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::task::Waker;

    #[test]
    fn runs_the_future_and_recycles_its_block() {
        let dropped = Rc::new(());
        let witness = dropped.clone();
        let mut p = Pooled::new(async move {
            let _keep = witness;
            41 + 1
        });
        assert!(p.is_pooled());
        let first = p.ptr.cast::<u8>();
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(Pin::new(&mut p).poll(&mut cx), Poll::Ready(42));
        drop(p);
        assert_eq!(Rc::strong_count(&dropped), 1, "captured state dropped");
        let again = Pooled::new(async { 0u8 });
        assert_eq!(
            again.ptr.cast::<u8>(),
            first,
            "block came back from the free list"
        );
    }

    #[test]
    fn an_unfinished_future_is_dropped_in_place() {
        let dropped = Rc::new(());
        let witness = dropped.clone();
        let p = Pooled::new(async move {
            let _keep = witness;
            std::future::pending::<()>().await;
        });
        drop(p);
        assert_eq!(Rc::strong_count(&dropped), 1);
    }

    #[test]
    fn an_oversize_future_is_boxed() {
        let big = [7u8; BLOCK_SIZE + 1];
        let mut p = Pooled::new(async move { big[BLOCK_SIZE] });
        assert!(!p.is_pooled());
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(Pin::new(&mut p).poll(&mut cx), Poll::Ready(7));
    }
}
