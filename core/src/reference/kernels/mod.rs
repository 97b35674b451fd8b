//! Reference kernels over host slices. Each function has the semantics of the
//! [`crate::backend::Backend`] method of the same name; arguments are trusted
//! (validated by the caller), and slices have exactly the lengths the op implies.
//!
//! These loops are the oracle every other backend is tested against, so they favour
//! clarity and exactness over speed:
//! - every kernel computes in `f64` internally and rounds to `T` once per output
//!   element (for `T = f64` this is plain double arithmetic; for `T = f32` it is at
//!   least as accurate as any `f32` kernel can be);
//! - sums that produce one output are accumulated in a single `f64` accumulator;
//!   outputs that receive contributions from many places (pooling backward, conv
//!   grad-input, window-statistics backward) are written in "gather" form, or through
//!   an `f64` scratch buffer, so that each output is rounded exactly once;
//! - parameter gradients are accumulated as `g = T::of(g.f64() + contribution)`;
//! - transcendental functions come from `libm` directly, so `std` and `no_std`
//!   builds give bit-identical results.
//!
//! Choices that the trait documentation leaves open:
//! - NaN propagates through `Max`/`Min` (binary and reduce), ReLU and max pooling, as
//!   in PyTorch; `argmax`, `max_pool2d` and `sample_categorical` treat NaN as greater
//!   than every number, so the first NaN of a row/window is selected.
//! - Empty reductions: `reduce` over an empty axis gives 0 for `Sum`, 0 for `Mean`
//!   (not NaN) and `-inf` for `Max`; `argmax` of an empty row gives index 0;
//!   `global_avg_pool` of an empty plane gives 0.
//! - Batch norm with zero elements per channel leaves the running statistics
//!   unchanged and saves mean 0 and `invstd = 1/sqrt(eps)`; layer norm with `d = 0`
//!   saves mean 0 and `rstd = 1/sqrt(eps)`.
//! - A max-pool window lying entirely in padding outputs `-inf` with index 0 and
//!   routes no gradient; an avg-pool window with no in-image pixel and
//!   `count_include_pad = false` outputs 0.
//! - `window_stats` with `k = 0` has empty windows: mean and variance 0, gradient 0.
//! - Random counters (`offset + i`, `offset + r·classes + c`) wrap modulo 2^64.
// Explicit index loops mirror the formulas in the docs; keep them.
#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]

mod activation;
mod conv;
mod elementwise;
mod embedding;
mod layout;
mod linalg;
mod loss;
mod norm;
mod optim;
mod pool;
mod random;
mod softmax;
mod window;

#[cfg(test)]
mod tests;

pub use activation::*;
pub use conv::*;
pub use elementwise::*;
pub use embedding::*;
pub use layout::*;
pub use linalg::*;
pub use loss::*;
pub use norm::*;
pub use optim::*;
pub use pool::*;
pub use random::*;
pub use softmax::*;
pub use window::*;

/// Logistic sigmoid, stable for large `|x|` (never evaluates `exp` of a large positive).
fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + libm::exp(-x))
    } else {
        let e = libm::exp(x);
        e / (1.0 + e)
    }
}

/// `max(a, b)` that propagates NaN (like `torch.maximum`).
fn max_nan(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if b > a {
        b
    } else {
        a
    }
}

/// `min(a, b)` that propagates NaN (like `torch.minimum`).
fn min_nan(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if b < a {
        b
    } else {
        a
    }
}

/// Whether `v` should replace the running maximum `best` in a first-maximum scan
/// where NaN counts as greater than every number (so the first NaN wins).
fn beats(v: f64, best: f64) -> bool {
    !best.is_nan() && (v.is_nan() || v > best)
}

/// `Σ x` of `f64` terms in one accumulator.
fn sum_f64<I: Iterator<Item = f64>>(it: I) -> f64 {
    let mut s = 0.0;
    for v in it {
        s += v;
    }
    s
}
