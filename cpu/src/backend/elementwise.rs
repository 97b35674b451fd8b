//! Elementwise kernels: GELU, affine maps and broadcasting binary ops.

use super::math;
use super::par::CHUNK;
use super::Cpu;
use cim_core::backend::BinaryOp;
use cim_core::reference::kernels;
use rayon::prelude::*;

/// `1 / sqrt(2π)`.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `gelu(x) = x · Φ(x)`, with `Φ` from `erfc` so that the negative tail keeps its
/// relative accuracy (`1 + erf` would cancel).
#[inline(always)]
fn gelu_slice(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = x * math::normal_cdf(x);
    }
}

/// `gelu'(x) = Φ(x) + x · φ(x)`.
#[inline(always)]
fn gelu_backward_slice(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
        let cdf = math::normal_cdf(x);
        let pdf = FRAC_1_SQRT_2PI * math::exp(-0.5 * x * x);
        *dx = g * (cdf + x * pdf);
    }
}

dispatch!(gelu_fast, gelu_slice, (x: &[f32], y: &mut [f32]));
dispatch!(gelu_backward_fast, gelu_backward_slice, (x: &[f32], dy: &[f32], dx: &mut [f32]));

/// Apply `f` elementwise: `y[i] = f(a[i], b[i])`.
#[inline(always)]
fn vv(f: impl Fn(f32, f32) -> f32, a: &[f32], b: &[f32], y: &mut [f32]) {
    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
        *y = f(a, b);
    }
}

/// `y[i] = f(a[i], b)`.
#[inline(always)]
fn vs(f: impl Fn(f32, f32) -> f32, a: &[f32], b: f32, y: &mut [f32]) {
    for (y, &a) in y.iter_mut().zip(a) {
        *y = f(a, b);
    }
}

/// Run `$body` with `$f` bound to the closure of an arithmetic op.
macro_rules! with_op {
    ($op:expr, $f:ident => $body:expr) => {
        match $op {
            BinaryOp::Add => {
                let $f = |a: f32, b: f32| a + b;
                $body
            }
            BinaryOp::Sub => {
                let $f = |a: f32, b: f32| a - b;
                $body
            }
            BinaryOp::Mul => {
                let $f = |a: f32, b: f32| a * b;
                $body
            }
            BinaryOp::Div => {
                let $f = |a: f32, b: f32| a / b;
                $body
            }
            BinaryOp::Max | BinaryOp::Min => unreachable!("handled by the reference kernel"),
        }
    };
}

/// How a broadcast operand spreads over the output, viewed as `[outer, mid, inner]`:
/// the operand holds `mid` values that vary along the middle axes only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Spread {
    outer: usize,
    mid: usize,
    inner: usize,
}

/// The spread of `small` over `out`, when its non-broadcast axes form one run.
fn spread(small: &[usize], out: &[usize]) -> Option<Spread> {
    let mut first = None;
    let mut last = 0;
    for (i, (&s, &o)) in small.iter().zip(out).enumerate() {
        if o == 1 {
            continue;
        }
        if s == o {
            if first.is_none() {
                first = Some(i);
            }
            last = i;
        } else if s != 1 {
            return None;
        }
    }
    let Some(first) = first else {
        return Some(Spread { outer: out.iter().product(), mid: 1, inner: 1 });
    };
    // Inside the run every non-trivial axis must vary.
    for i in first..=last {
        if out[i] != 1 && small[i] != out[i] {
            return None;
        }
    }
    Some(Spread {
        outer: out[..first].iter().product(),
        mid: out[first..=last].iter().product(),
        inner: out[last + 1..].iter().product(),
    })
}

impl Cpu {
    pub(crate) fn gelu_impl(&self, x: &[f32], y: &mut [f32]) {
        self.zip1(x, y, gelu_fast);
    }

    pub(crate) fn gelu_backward_impl(&self, x: &[f32], dy: &[f32], dx: &mut [f32]) {
        self.zip2(x, dy, dx, gelu_backward_fast);
    }

    pub(crate) fn affine_impl(&self, alpha: f64, beta: f64, x: &[f32], y: &mut [f32]) {
        let (a, b) = (alpha as f32, beta as f32);
        self.zip1(x, y, |x, y| {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = a * x + b;
            }
        });
    }

    pub(crate) fn axpy_impl(&self, alpha: f64, x: &[f32], y: &mut [f32]) {
        let a = alpha as f32;
        let n = y.len();
        self.chunks_mut(y, CHUNK, |off, y| {
            let x = &x[off..off + y.len()];
            for (y, &x) in y.iter_mut().zip(x) {
                *y += a * x;
            }
        });
        debug_assert!(x.len() >= n);
    }

    /// Broadcasting binary op. Fast paths for the arithmetic ops when one operand has
    /// the output's shape and the other is equal, a scalar, or varies along one run of
    /// axes (`[rows, d] + [1, d]`, `[n, c, h, w] · [1, c, 1, 1]`); everything else runs
    /// the reference kernel over blocks of the leading axis.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn binary_impl(
        &self,
        op: BinaryOp,
        a: &[f32],
        a_shape: &[usize],
        b: &[f32],
        b_shape: &[usize],
        out: &mut [f32],
        out_shape: &[usize],
    ) {
        let n: usize = out_shape.iter().product();
        if n == 0 {
            return;
        }
        let arith = !matches!(op, BinaryOp::Max | BinaryOp::Min);
        let a_full = a_shape == out_shape;
        let b_full = b_shape == out_shape;
        if arith && a_full && b_full {
            with_op!(op, f => self.zip2(a, b, out, |a, b, y| vv(f, a, b, y)));
            return;
        }
        if arith && a_full {
            if let Some(s) = spread(b_shape, out_shape) {
                with_op!(op, f => self.spread_rows(s, a, b, out, f));
                return;
            }
        }
        if arith && b_full {
            if let Some(s) = spread(a_shape, out_shape) {
                with_op!(op, f => self.spread_rows(s, b, a, out, move |x, y| f(y, x)));
                return;
            }
        }
        self.binary_blocks(op, a, a_shape, b, b_shape, out, out_shape);
    }

    /// `out = f(full, small)` with `small` spread as `s` over the output.
    fn spread_rows(
        &self,
        s: Spread,
        full: &[f32],
        small: &[f32],
        out: &mut [f32],
        f: impl Fn(f32, f32) -> f32 + Copy + Sync,
    ) {
        if s.mid == 1 {
            let v = small[0];
            self.zip1(full, out, |x, y| vs(f, x, v, y));
        } else if s.inner == 1 {
            // Rows of `mid` against the vector `small`.
            self.rows1(s.mid, full, out, |_, x, y| {
                for (x, y) in x.chunks_exact(s.mid).zip(y.chunks_exact_mut(s.mid)) {
                    vv(f, x, small, y);
                }
            });
        } else {
            // Rows of `inner` against the scalar small[row % mid].
            self.rows1(s.inner, full, out, |r0, x, y| {
                for (j, (x, y)) in x.chunks_exact(s.inner).zip(y.chunks_exact_mut(s.inner)).enumerate() {
                    vs(f, x, small[(r0 + j) % s.mid], y);
                }
            });
        }
    }

    /// The reference kernel over blocks of the leading non-trivial output axis.
    #[allow(clippy::too_many_arguments)]
    fn binary_blocks(
        &self,
        op: BinaryOp,
        a: &[f32],
        a_shape: &[usize],
        b: &[f32],
        b_shape: &[usize],
        out: &mut [f32],
        out_shape: &[usize],
    ) {
        let n = out.len();
        let lead = out_shape.iter().position(|&d| d > 1);
        let Some(k) = lead.filter(|_| n > CHUNK && out_shape.len() <= 8) else {
            kernels::binary(op, a, a_shape, b, b_shape, out, out_shape);
            return;
        };
        let (a_shape, b_shape, out_shape) = (&a_shape[k..], &b_shape[k..], &out_shape[k..]);
        let rank = out_shape.len();
        let rest: usize = out_shape[1..].iter().product();
        let a_rest: usize = a_shape[1..].iter().product();
        let b_rest: usize = b_shape[1..].iter().product();
        let rpc = (CHUNK / rest).max(1);
        // Rows r0.. of the leading axis: a sub-problem of the same rank.
        let run = |r0: usize, out: &mut [f32]| {
            let rows = out.len() / rest;
            let (mut os, mut sa, mut sb) = ([0usize; 8], [0usize; 8], [0usize; 8]);
            os[..rank].copy_from_slice(out_shape);
            sa[..rank].copy_from_slice(a_shape);
            sb[..rank].copy_from_slice(b_shape);
            os[0] = rows;
            let aa = if a_shape[0] == 1 {
                a
            } else {
                sa[0] = rows;
                &a[r0 * a_rest..(r0 + rows) * a_rest]
            };
            let bb = if b_shape[0] == 1 {
                b
            } else {
                sb[0] = rows;
                &b[r0 * b_rest..(r0 + rows) * b_rest]
            };
            kernels::binary(op, aa, &sa[..rank], bb, &sb[..rank], out, &os[..rank]);
        };
        self.install(|| out.par_chunks_mut(rpc * rest).enumerate().for_each(|(i, o)| run(i * rpc, o)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads() {
        let s = |m, i, o| Some(Spread { outer: o, mid: m, inner: i });
        assert_eq!(spread(&[1, 5], &[3, 5]), s(5, 1, 3));
        assert_eq!(spread(&[1, 1], &[3, 5]), s(1, 1, 15));
        assert_eq!(spread(&[1, 4, 1, 1], &[2, 4, 3, 3]), s(4, 9, 2));
        assert_eq!(spread(&[2, 1, 3], &[2, 4, 3]), None);
        assert_eq!(spread(&[1, 4, 1, 3], &[2, 4, 1, 3]), s(12, 1, 2));
    }
}
