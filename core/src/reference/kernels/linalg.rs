//! Batched, strided GEMM.

use crate::backend::Gemm;
use crate::element::Element;

/// `C[b] = alpha · op(A[b]) · op(B[b]) + beta · C[b]`; when `beta == 0` the old `C` is
/// never read (a NaN there does not propagate), as BLAS does.
pub fn gemm<T: Element>(p: &Gemm, a: &[T], b: &[T], c: &mut [T]) {
    let (m, n, k) = (p.m, p.n, p.k);
    for bi in 0..p.batch {
        let a0 = bi * p.stride_a;
        let b0 = bi * p.stride_b;
        let c0 = bi * p.stride_c;
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f64;
                for l in 0..k {
                    // op(A)[i, l] and op(B)[l, j].
                    let av = if p.trans_a { a[a0 + l * m + i] } else { a[a0 + i * k + l] };
                    let bv = if p.trans_b { b[b0 + j * k + l] } else { b[b0 + l * n + j] };
                    acc += av.f64() * bv.f64();
                }
                let ci = c0 + i * n + j;
                let mut out = p.alpha * acc;
                if p.beta != 0.0 {
                    out += p.beta * c[ci].f64();
                }
                c[ci] = T::of(out);
            }
        }
    }
}
