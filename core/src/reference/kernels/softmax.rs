//! Softmax and log-softmax over the last axis.

use crate::element::Element;

/// Row maximum (NaN-propagating) and `Σ exp(x - max)` of one row, in `f64`.
fn max_and_sumexp<T: Element>(row: &[T]) -> (f64, f64) {
    let mut mx = f64::NEG_INFINITY;
    for v in row {
        mx = super::max_nan(mx, v.f64());
    }
    let s = super::sum_f64(row.iter().map(|v| libm::exp(v.f64() - mx)));
    (mx, s)
}

/// `y = exp(x - max) / Σ exp(x - max)` per row (numerically stable).
pub fn softmax<T: Element>(rows: usize, d: usize, x: &[T], y: &mut [T]) {
    for r in 0..rows {
        let row = &x[r * d..(r + 1) * d];
        let (mx, s) = max_and_sumexp(row);
        for j in 0..d {
            y[r * d + j] = T::of(libm::exp(row[j].f64() - mx) / s);
        }
    }
}

/// `dx = y ⊙ (dy - Σ dy ⊙ y)` from the softmax output `y` (overwrites).
pub fn softmax_backward<T: Element>(rows: usize, d: usize, y: &[T], dy: &[T], dx: &mut [T]) {
    for r in 0..rows {
        let o = r * d;
        let dot = super::sum_f64((0..d).map(|j| dy[o + j].f64() * y[o + j].f64()));
        for j in 0..d {
            dx[o + j] = T::of(y[o + j].f64() * (dy[o + j].f64() - dot));
        }
    }
}

/// `y = x - max - ln Σ exp(x - max)` per row.
pub fn log_softmax<T: Element>(rows: usize, d: usize, x: &[T], y: &mut [T]) {
    for r in 0..rows {
        let row = &x[r * d..(r + 1) * d];
        let (mx, s) = max_and_sumexp(row);
        let ls = libm::log(s);
        for j in 0..d {
            y[r * d + j] = T::of(row[j].f64() - mx - ls);
        }
    }
}

/// `dx = dy - exp(y) · Σ dy` from the log-softmax output `y` (overwrites).
pub fn log_softmax_backward<T: Element>(rows: usize, d: usize, y: &[T], dy: &[T], dx: &mut [T]) {
    for r in 0..rows {
        let o = r * d;
        let s = super::sum_f64((0..d).map(|j| dy[o + j].f64()));
        for j in 0..d {
            dx[o + j] = T::of(dy[o + j].f64() - libm::exp(y[o + j].f64()) * s);
        }
    }
}
