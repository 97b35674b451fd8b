//! GEMM on `matrixmultiply`'s packed micro-kernels, parallelized by rayon over the
//! batch and over row or column blocks of `C`.
//!
//! `matrixmultiply` is called single-threaded (see [`super::Cpu::new`]): its own pool
//! holds at most four threads and serializes concurrent callers, so the backend owns
//! all the parallelism instead.

use super::par::ceil_div;
use super::Cpu;
use cim_core::backend::Gemm;
use rayon::prelude::*;

/// Below this many flops a GEMM runs on the calling thread.
const SEQ_FLOPS: f64 = 4.0e6;
/// A parallel piece keeps at least this many rows (or columns) of `C`...
const MIN_PIECE: usize = 32;
/// ...and at least this many flops.
const MIN_PIECE_FLOPS: f64 = 1.0e6;

/// One strided `C = alpha · A · B + beta · C` on raw pointers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub beta: f32,
    pub a: *const f32,
    pub rsa: usize,
    pub csa: usize,
    pub b: *const f32,
    pub rsb: usize,
    pub csb: usize,
    pub c: *mut f32,
    pub rsc: usize,
    pub csc: usize,
}

// SAFETY: an `Mm` is a description of disjoint work; whoever shares one across threads
// guarantees that the `C` regions written concurrently do not overlap.
unsafe impl Send for Mm {}
unsafe impl Sync for Mm {}

impl Mm {
    /// Run it on the calling thread.
    ///
    /// # Safety
    /// `A`, `B` and `C` must be valid for the strided extents `m×k`, `k×n`, `m×n`, and
    /// nothing else may access the `C` region meanwhile.
    pub(crate) unsafe fn run(&self) {
        if self.m == 0 || self.n == 0 {
            return;
        }
        matrixmultiply::sgemm(
            self.m,
            self.k,
            self.n,
            self.alpha,
            self.a,
            self.rsa as isize,
            self.csa as isize,
            self.b,
            self.rsb as isize,
            self.csb as isize,
            self.beta,
            self.c,
            self.rsc as isize,
            self.csc as isize,
        );
    }

    fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }

    /// How many pieces (at most `want`) to cut this product into.
    fn pieces(&self, want: usize) -> usize {
        let dim = self.m.max(self.n);
        let by_dim = dim / MIN_PIECE;
        let by_flops = (self.flops() / MIN_PIECE_FLOPS) as usize;
        want.min(by_dim).min(by_flops).max(1)
    }

    /// Piece `i` of `parts`, cutting the longer of the `m` and `n` dimensions.
    fn piece(&self, parts: usize, i: usize) -> Mm {
        let mut p = *self;
        if parts <= 1 {
            return p;
        }
        if self.m >= self.n {
            let step = round_up(ceil_div(self.m, parts), 8);
            let i0 = (i * step).min(self.m);
            let i1 = (i0 + step).min(self.m);
            p.m = i1 - i0;
            p.a = self.a.wrapping_add(i0 * self.rsa);
            p.c = self.c.wrapping_add(i0 * self.rsc);
        } else {
            let step = round_up(ceil_div(self.n, parts), 16);
            let j0 = (i * step).min(self.n);
            let j1 = (j0 + step).min(self.n);
            p.n = j1 - j0;
            p.b = self.b.wrapping_add(j0 * self.csb);
            p.c = self.c.wrapping_add(j0 * self.csc);
        }
        p
    }
}

fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

impl Cpu {
    /// Run one product, split across the pool when it is large.
    ///
    /// # Safety
    /// As [`Mm::run`].
    pub(crate) unsafe fn mm(&self, g: &Mm) {
        let threads = self.threads();
        if threads <= 1 || g.flops() < SEQ_FLOPS {
            g.run();
            return;
        }
        let parts = g.pieces(2 * threads);
        if parts <= 1 {
            g.run();
            return;
        }
        let g = *g;
        // SAFETY: the pieces write disjoint blocks of rows or columns of `C`.
        self.install(|| (0..parts).into_par_iter().for_each(|i| unsafe { g.piece(parts, i).run() }));
    }

    /// The batched GEMM of the backend trait.
    pub(crate) fn gemm_impl(&self, p: &Gemm, a: &[f32], b: &[f32], c: &mut [f32]) {
        if p.batch == 0 || p.m == 0 || p.n == 0 {
            return;
        }
        assert!(
            a.len() >= p.span_a() && b.len() >= p.span_b() && c.len() >= p.span_c(),
            "gemm: operand shorter than its span"
        );
        let (rsa, csa) = if p.trans_a { (1, p.m) } else { (p.k, 1) };
        let (rsb, csb) = if p.trans_b { (1, p.k) } else { (p.n, 1) };
        let base = Mm {
            m: p.m,
            n: p.n,
            k: p.k,
            alpha: p.alpha as f32,
            beta: p.beta as f32,
            a: a.as_ptr(),
            rsa,
            csa,
            b: b.as_ptr(),
            rsb,
            csb,
            c: c.as_mut_ptr(),
            rsc: p.n,
            csc: 1,
        };
        let (sa, sb, sc) = (p.stride_a, p.stride_b, p.stride_c);
        let at = move |bi: usize| {
            let g = base;
            Mm { a: g.a.wrapping_add(bi * sa), b: g.b.wrapping_add(bi * sb), c: g.c.wrapping_add(bi * sc), ..g }
        };
        let threads = self.threads();
        let overlap = p.batch > 1 && p.stride_c < p.m * p.n;
        if overlap || threads <= 1 || p.flops() < SEQ_FLOPS {
            // Matrices of C overlap (a broadcast C sums over the batch): in order.
            for bi in 0..p.batch {
                // SAFETY: spans checked above; one product at a time.
                unsafe { self.mm(&at(bi)) };
            }
            return;
        }
        let per = if p.batch >= 2 * threads { 1 } else { base.pieces(ceil_div(2 * threads, p.batch)) };
        let tasks = p.batch * per;
        // SAFETY: spans checked above; distinct batch entries write disjoint matrices
        // of C (no overlap), and pieces of one matrix write disjoint blocks.
        self.install(|| (0..tasks).into_par_iter().for_each(|t| unsafe { at(t / per).piece(per, t % per).run() }));
    }
}
