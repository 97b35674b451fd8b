//! The row-major [`Gemm`] of the backend trait as a column-major cuBLAS call, as a pure
//! function tested on the host (against the reference GEMM, through a plain
//! column-major GEMM with cuBLAS's semantics).
//!
//! A row-major `r×c` matrix is, read column-major, its `c×r` transpose. So row-major
//! `C = op(A)·op(B)` is column-major `Cᵀ = op(B)ᵀ·op(A)ᵀ`: cuBLAS gets `B` as its first
//! operand and `A` as its second, with `m' = n`, `n' = m`, the same transposition flags,
//! and leading dimensions equal to the stored row lengths.

use cim_core::backend::Gemm;

/// A column-major `cublasSgemmStridedBatched` call: `C = alpha·op(A)·op(B) + beta·C`
/// with `op(A)` `m×k`, `op(B)` `k×n`, `C` `m×n`, all column-major; operand pointers are
/// the caller's (`a` here is the trait's `B`, `b` the trait's `A`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ColMajorGemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub lda: i32,
    pub ldb: i32,
    pub ldc: i32,
    pub stride_a: i64,
    pub stride_b: i64,
    pub stride_c: i64,
    pub batch: i32,
    pub alpha: f32,
    pub beta: f32,
}

fn int(v: usize, what: &str) -> Result<i32, String> {
    i32::try_from(v).map_err(|_| format!("GEMM {what} = {v} exceeds cuBLAS's 32-bit range"))
}

fn long(v: usize, what: &str) -> Result<i64, String> {
    i64::try_from(v).map_err(|_| format!("GEMM {what} = {v} exceeds 64-bit range"))
}

/// Map the trait's GEMM to cuBLAS (swap the operands; see the module docs). Callers
/// handle the degenerate shapes first (`batch`, `m` or `n` zero: nothing to do; `k`
/// zero: `C = beta·C`), so all dimensions here are positive.
pub fn to_col_major(p: &Gemm) -> Result<ColMajorGemm, String> {
    Ok(ColMajorGemm {
        trans_a: p.trans_b,
        trans_b: p.trans_a,
        m: int(p.n, "n")?,
        n: int(p.m, "m")?,
        k: int(p.k, "k")?,
        // Trait B is stored k×n (row length n), or n×k when transposed (row length k).
        lda: int(if p.trans_b { p.k } else { p.n }, "ldb")?,
        // Trait A is stored m×k (row length k), or k×m when transposed (row length m).
        ldb: int(if p.trans_a { p.m } else { p.k }, "lda")?,
        ldc: int(p.n, "ldc")?,
        stride_a: long(p.stride_b, "stride_b")?,
        stride_b: long(p.stride_a, "stride_a")?,
        stride_c: long(p.stride_c, "stride_c")?,
        batch: int(p.batch, "batch")?,
        alpha: p.alpha as f32,
        beta: p.beta as f32,
    })
}

/// `cublasSgemmStridedBatched`'s semantics on host slices (accumulating in `f64`):
/// the emulator's GEMM, and the check of [`to_col_major`]. `C` is not read when
/// `beta == 0`, as in BLAS.
///
/// # Safety
/// The pointers must be valid for every element the call addresses.
pub unsafe fn host_sgemm(g: &ColMajorGemm, a: *const f32, b: *const f32, c: *mut f32) {
    let (m, n, k) = (g.m as usize, g.n as usize, g.k as usize);
    for bi in 0..g.batch as usize {
        let a0 = a.add(bi * g.stride_a as usize);
        let b0 = b.add(bi * g.stride_b as usize);
        let c0 = c.add(bi * g.stride_c as usize);
        for j in 0..n {
            for i in 0..m {
                let mut acc = 0.0f64;
                for l in 0..k {
                    let av = if g.trans_a { *a0.add(l + i * g.lda as usize) } else { *a0.add(i + l * g.lda as usize) };
                    let bv = if g.trans_b { *b0.add(j + l * g.ldb as usize) } else { *b0.add(l + j * g.ldb as usize) };
                    acc += av as f64 * bv as f64;
                }
                let ci = c0.add(i + j * g.ldc as usize);
                let mut out = g.alpha as f64 * acc;
                if g.beta != 0.0 {
                    out += g.beta as f64 * *ci as f64;
                }
                *ci = out as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cim_core::reference::kernels;

    fn run(p: &Gemm) {
        let fill = |len: usize, s: f32| (0..len).map(|i| ((i * 7 + 3) % 11) as f32 * s - 2.0).collect::<Vec<f32>>();
        let a = fill(p.span_a(), 0.5);
        let b = fill(p.span_b(), 0.25);
        let c0 = fill(p.span_c(), 1.0);
        let mut want = c0.clone();
        kernels::gemm(p, &a, &b, &mut want);
        let g = to_col_major(p).unwrap();
        let mut got = c0.clone();
        // Operands swapped: cuBLAS's A is the trait's B.
        unsafe { host_sgemm(&g, b.as_ptr(), a.as_ptr(), got.as_mut_ptr()) };
        assert_eq!(got, want, "{p:?}");
    }

    #[test]
    fn mapping_matches_the_reference_for_every_transposition() {
        for (m, n, k) in [(1, 1, 1), (2, 3, 4), (5, 1, 3), (1, 6, 2), (4, 4, 4), (3, 7, 1)] {
            for trans_a in [false, true] {
                for trans_b in [false, true] {
                    for (batch, beta) in [(1, 0.0), (3, 0.0), (2, 1.0), (2, 0.5)] {
                        let mut p = Gemm::new(m, n, k);
                        p.batch = batch;
                        p.trans_a = trans_a;
                        p.trans_b = trans_b;
                        p.beta = beta;
                        p.alpha = 1.5;
                        // Padded strides, as views into larger buffers.
                        p.stride_a = m * k + 2;
                        p.stride_b = k * n + 1;
                        p.stride_c = m * n + 3;
                        run(&p);
                        // A broadcast operand (stride 0).
                        p.stride_a = 0;
                        run(&p);
                    }
                }
            }
        }
    }

    #[test]
    fn oversized_dimensions_are_errors() {
        let p = Gemm::new(1 << 31, 1, 1);
        assert!(to_col_major(&p).is_err());
    }
}
