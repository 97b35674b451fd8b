//! Parallel plumbing: fallible allocation, shared raw pointers, chunked loops and
//! worker pools with per-worker scratch.

use super::Cpu;
use cim_core::{Error, Result};
use rayon::prelude::*;
use std::alloc::{alloc_zeroed, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Elements per parallel chunk of an elementwise loop (64 KiB of `f32`).
pub(crate) const CHUNK: usize = 1 << 14;

/// Types for which the all-zero bit pattern is a valid value.
///
/// # Safety
/// Implement only for plain numeric types.
pub(crate) unsafe trait ZeroBits: Copy + Send + Sync + 'static {}
unsafe impl ZeroBits for f32 {}
unsafe impl ZeroBits for f64 {}
unsafe impl ZeroBits for u32 {}

pub(crate) fn oom(bytes: usize) -> Error {
    Error::OutOfMemory { backend: "cpu".into(), bytes }
}

/// A zero-filled vector that reports allocation failure instead of aborting. Large
/// buffers come from `calloc`-style zeroed pages, so untouched memory costs nothing.
pub(crate) fn try_zeroed<T: ZeroBits>(len: usize) -> Result<Vec<T>> {
    let bytes = len.saturating_mul(std::mem::size_of::<T>());
    if len == 0 {
        return Ok(Vec::new());
    }
    let layout = Layout::array::<T>(len).map_err(|_| oom(bytes))?;
    // SAFETY: `layout` has a non-zero size.
    let ptr = unsafe { alloc_zeroed(layout) } as *mut T;
    if ptr.is_null() {
        return Err(oom(bytes));
    }
    // SAFETY: `ptr` was allocated by the global allocator with the layout of `[T; len]`,
    // and all-zero bits are a valid `T` (`ZeroBits`).
    Ok(unsafe { Vec::from_raw_parts(ptr, len, len) })
}

/// A raw pointer that may be shared between the workers of one parallel loop, each
/// touching a disjoint part of the buffer.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr<T>(*mut T);
// SAFETY: users guarantee that concurrent accesses through the pointer are disjoint.
unsafe impl<T: Send> Send for SyncPtr<T> {}
unsafe impl<T: Send> Sync for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    pub(crate) fn new(s: &mut [T]) -> Self {
        SyncPtr(s.as_mut_ptr())
    }
    pub(crate) fn ptr(self) -> *mut T {
        self.0
    }
    /// `len` elements from `off`.
    ///
    /// # Safety
    /// The range must lie in the buffer and no other live reference may overlap it.
    pub(crate) unsafe fn slice<'a>(self, off: usize, len: usize) -> &'a mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(off), len)
    }
}

pub(crate) fn ceil_div(a: usize, b: usize) -> usize {
    a.div_ceil(b.max(1))
}

impl Cpu {
    /// Run `f` inside this backend's thread pool.
    pub(crate) fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }

    /// `y = f(x)` over matching chunks.
    pub(crate) fn zip1(&self, x: &[f32], y: &mut [f32], f: impl Fn(&[f32], &mut [f32]) + Sync) {
        if y.len() <= CHUNK {
            f(x, y);
        } else {
            self.install(|| x.par_chunks(CHUNK).zip(y.par_chunks_mut(CHUNK)).for_each(|(x, y)| f(x, y)));
        }
    }

    /// `y = f(a, b)` over matching chunks.
    pub(crate) fn zip2(&self, a: &[f32], b: &[f32], y: &mut [f32], f: impl Fn(&[f32], &[f32], &mut [f32]) + Sync) {
        if y.len() <= CHUNK {
            f(a, b, y);
        } else {
            self.install(|| {
                a.par_chunks(CHUNK)
                    .zip(b.par_chunks(CHUNK))
                    .zip(y.par_chunks_mut(CHUNK))
                    .for_each(|((a, b), y)| f(a, b, y))
            });
        }
    }

    /// `y = f(a, b, c)` over matching chunks.
    pub(crate) fn zip3(
        &self,
        a: &[f32],
        b: &[f32],
        c: &[f32],
        y: &mut [f32],
        f: impl Fn(&[f32], &[f32], &[f32], &mut [f32]) + Sync,
    ) {
        if y.len() <= CHUNK {
            f(a, b, c, y);
        } else {
            self.install(|| {
                a.par_chunks(CHUNK)
                    .zip(b.par_chunks(CHUNK))
                    .zip(c.par_chunks(CHUNK))
                    .zip(y.par_chunks_mut(CHUNK))
                    .for_each(|(((a, b), c), y)| f(a, b, c, y))
            });
        }
    }

    /// `f(start, chunk)` over chunks of `y` of `chunk` elements (`start` is the offset).
    pub(crate) fn chunks_mut<T: Send>(&self, y: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
        let chunk = chunk.max(1);
        if y.len() <= chunk {
            f(0, y);
        } else {
            self.install(|| y.par_chunks_mut(chunk).enumerate().for_each(|(i, y)| f(i * chunk, y)));
        }
    }

    /// Rows of `d` elements, `rows_per_chunk` of them at a time: `f(first_row, x, y)`.
    pub(crate) fn rows1(&self, d: usize, x: &[f32], y: &mut [f32], f: impl Fn(usize, &[f32], &mut [f32]) + Sync) {
        if d == 0 {
            return;
        }
        let rpc = (CHUNK / d).max(1);
        let ch = rpc * d;
        if y.len() <= ch {
            f(0, x, y);
        } else {
            self.install(|| {
                x.par_chunks(ch).zip(y.par_chunks_mut(ch)).enumerate().for_each(|(i, (x, y))| f(i * rpc, x, y))
            });
        }
    }

    /// Like [`Cpu::rows1`] with two inputs.
    pub(crate) fn rows2(
        &self,
        d: usize,
        a: &[f32],
        b: &[f32],
        y: &mut [f32],
        f: impl Fn(usize, &[f32], &[f32], &mut [f32]) + Sync,
    ) {
        if d == 0 {
            return;
        }
        let rpc = (CHUNK / d).max(1);
        let ch = rpc * d;
        if y.len() <= ch {
            f(0, a, b, y);
        } else {
            self.install(|| {
                a.par_chunks(ch)
                    .zip(b.par_chunks(ch))
                    .zip(y.par_chunks_mut(ch))
                    .enumerate()
                    .for_each(|(i, ((a, b), y))| f(i * rpc, a, b, y))
            });
        }
    }

    /// Run `ntasks` tasks on up to `max_workers` workers, scheduled dynamically; each
    /// worker allocates one zeroed scratch buffer of `scratch_len` elements once and
    /// reuses it for all its tasks: `f(task, scratch)`.
    pub(crate) fn tasks<S: ZeroBits>(
        &self,
        max_workers: usize,
        ntasks: usize,
        scratch_len: usize,
        f: impl Fn(usize, &mut [S]) + Sync,
    ) -> Result<()> {
        if ntasks == 0 {
            return Ok(());
        }
        let workers = max_workers.min(ntasks);
        if workers <= 1 {
            let mut s = try_zeroed::<S>(scratch_len)?;
            for t in 0..ntasks {
                f(t, &mut s);
            }
            return Ok(());
        }
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        let err: Mutex<Option<Error>> = Mutex::new(None);
        self.install(|| {
            (0..workers).into_par_iter().for_each(|_| {
                let mut s = match try_zeroed::<S>(scratch_len) {
                    Ok(s) => s,
                    Err(e) => {
                        *err.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        return;
                    }
                };
                loop {
                    let t = next.fetch_add(1, Ordering::Relaxed);
                    if t >= ntasks {
                        break;
                    }
                    f(t, &mut s);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        });
        if done.load(Ordering::Relaxed) < ntasks {
            // Every worker that could not allocate gave up; if all did, tasks remain.
            if let Some(e) = err.into_inner().unwrap_or_else(|p| p.into_inner()) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Run `f(w)` for each worker `w < workers` in parallel, collecting the results in
    /// worker order.
    pub(crate) fn workers<R: Send>(&self, workers: usize, f: impl Fn(usize) -> Result<R> + Sync) -> Result<Vec<R>> {
        if workers <= 1 {
            return (0..workers).map(f).collect();
        }
        self.install(|| (0..workers).into_par_iter().map(&f).collect())
    }
}
