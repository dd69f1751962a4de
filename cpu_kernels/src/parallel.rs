//! The one thread pool every operation of a step runs on.
//!
//! It is candle's spinning barrier pool (`candle_core::utils::barrier_pool`): persistent workers
//! that spin briefly and then park, with the calling thread taking part as the last worker. A
//! step issues a few hundred short parallel operations, so a pool that wakes in well under a
//! microsecond matters; one pool for everything also means no two pools fight over two cores (a
//! rayon pool next to candle's cost 30 % of decode speed in the first engine).

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Threads that take part in a parallel operation (the pool's workers plus the caller).
pub fn threads() -> usize {
    candle_core::utils::barrier_pool().n_workers() + 1
}

/// Runs `f(thread, items)` over `0..n_items` in chunks of about `grain` items taken from a
/// shared cursor, so a thread that finishes early takes more. `thread` is below [`threads`]:
/// per-thread scratch is indexed by it. Runs inline when there is only one chunk.
pub fn for_each_chunk(n_items: usize, grain: usize, f: impl Fn(usize, Range<usize>) + Sync) {
    if n_items == 0 {
        return;
    }
    let grain = grain.max(1);
    let pool = candle_core::utils::barrier_pool();
    if n_items <= grain || pool.n_workers() == 0 {
        f(pool.n_workers(), 0..n_items);
        return;
    }
    let cursor = AtomicUsize::new(0);
    pool.execute(|thread| loop {
        let start = cursor.fetch_add(grain, Ordering::Relaxed);
        if start >= n_items {
            break;
        }
        f(thread, start..n_items.min(start + grain));
    });
}

/// A grain that gives each thread about `per_thread` chunks of `n_items`.
pub fn grain_for(n_items: usize, per_thread: usize) -> usize {
    n_items.div_ceil(threads() * per_thread).max(1)
}

/// A mutable slice that several workers write at once, each to parts no other touches.
///
/// The parallel operations split their outputs by rows or columns; expressing every split with
/// `chunks_mut` is not possible for column tiles of a row-major matrix, so the disjointness is
/// the caller's promise instead.
#[derive(Clone, Copy)]
pub struct SharedMut<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: workers only write disjoint elements (see `slice`), and the slice outlives the
// parallel operation, which returns only when every worker is done.
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// Wraps `slice` for one parallel operation.
    pub fn new(slice: &mut [T]) -> Self {
        Self {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
        }
    }

    /// Elements `range`.
    ///
    /// # Safety
    /// No other thread may access any element of `range` while the returned slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, range: Range<usize>) -> &mut [T] {
        assert!(range.start <= range.end && range.end <= self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.end - range.start)
    }

    /// The base pointer, for kernels that write strided.
    pub fn ptr(&self) -> *mut T {
        self.ptr
    }
}
