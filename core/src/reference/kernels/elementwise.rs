//! Broadcast binary ops, unary ops, affine maps, axpy, reductions and rounding casts.

use crate::backend::{BinaryOp, ReduceOp, UnaryOp};
use crate::element::{DType, Element};
use alloc::vec;
use alloc::vec::Vec;

/// Row-major strides of `shape` as seen from an output of the same rank: axes of size
/// 1 get stride 0 (broadcast).
fn broadcast_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0usize; shape.len()];
    let mut s = 1usize;
    for ax in (0..shape.len()).rev() {
        strides[ax] = if shape[ax] == 1 { 0 } else { s };
        s *= shape[ax];
    }
    strides
}

/// `out = a op b` with NumPy broadcasting (same rank; each axis of `a`, `b` is the
/// output's size or 1). `Max`/`Min` propagate NaN.
pub fn binary<T: Element>(
    op: BinaryOp,
    a: &[T],
    a_shape: &[usize],
    b: &[T],
    b_shape: &[usize],
    out: &mut [T],
    out_shape: &[usize],
) {
    let rank = out_shape.len();
    let total: usize = out_shape.iter().product();
    if total == 0 {
        return;
    }
    let sa = broadcast_strides(a_shape);
    let sb = broadcast_strides(b_shape);
    // Odometer over the output multi-index, tracking the offsets into `a` and `b`.
    let mut index = vec![0usize; rank];
    let (mut ia, mut ib) = (0usize, 0usize);
    for o in out.iter_mut().take(total) {
        let (x, y) = (a[ia].f64(), b[ib].f64());
        let v = match op {
            BinaryOp::Add => x + y,
            BinaryOp::Sub => x - y,
            BinaryOp::Mul => x * y,
            BinaryOp::Div => x / y,
            BinaryOp::Max => super::max_nan(x, y),
            BinaryOp::Min => super::min_nan(x, y),
        };
        *o = T::of(v);
        // Advance the odometer (the last axis fastest).
        for ax in (0..rank).rev() {
            index[ax] += 1;
            ia += sa[ax];
            ib += sb[ax];
            if index[ax] < out_shape[ax] {
                break;
            }
            ia -= sa[ax] * index[ax];
            ib -= sb[ax] * index[ax];
            index[ax] = 0;
        }
    }
}

/// Elementwise unary op.
pub fn unary<T: Element>(op: UnaryOp, x: &[T], y: &mut [T]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        let v = xi.f64();
        let r = match op {
            UnaryOp::Neg => -v,
            UnaryOp::Exp => libm::exp(v),
            UnaryOp::Ln => libm::log(v),
            UnaryOp::Sqrt => libm::sqrt(v),
            UnaryOp::Abs => libm::fabs(v),
            UnaryOp::Square => v * v,
            UnaryOp::Recip => 1.0 / v,
            UnaryOp::Sigmoid => super::sigmoid(v),
            UnaryOp::Tanh => libm::tanh(v),
            UnaryOp::Sign => {
                if v > 0.0 {
                    1.0
                } else if v < 0.0 {
                    -1.0
                } else if v == 0.0 {
                    0.0 // both zeros give +0
                } else {
                    v // NaN stays NaN
                }
            }
        };
        *yi = T::of(r);
    }
}

/// `y = alpha · x + beta`.
pub fn affine<T: Element>(alpha: f64, beta: f64, x: &[T], y: &mut [T]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = T::of(alpha * xi.f64() + beta);
    }
}

/// `y += alpha · x`.
pub fn axpy<T: Element>(alpha: f64, x: &[T], y: &mut [T]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = T::of(yi.f64() + alpha * xi.f64());
    }
}

/// Reduce the middle axis of `x: [outer, axis, inner]` into `y: [outer, inner]`.
/// An empty axis gives 0 for `Sum` and `Mean` and `-inf` for `Max`; `Max` propagates NaN.
pub fn reduce<T: Element>(op: ReduceOp, outer: usize, axis: usize, inner: usize, x: &[T], y: &mut [T]) {
    for o in 0..outer {
        for i in 0..inner {
            let vals = (0..axis).map(|a| x[(o * axis + a) * inner + i].f64());
            let r = match op {
                ReduceOp::Sum => super::sum_f64(vals),
                ReduceOp::Mean => {
                    if axis == 0 {
                        0.0
                    } else {
                        super::sum_f64(vals) / axis as f64
                    }
                }
                ReduceOp::Max => vals.fold(f64::NEG_INFINITY, super::max_nan),
            };
            y[o * inner + i] = T::of(r);
        }
    }
}

/// `y = round_to(dtype, x)`: nearest representable value, ties to even.
pub fn cast<T: Element>(dtype: DType, x: &[T], y: &mut [T]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = T::of(dtype.round(xi.f64()));
    }
}
