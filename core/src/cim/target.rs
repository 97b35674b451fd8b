//! Input normalization and the RESPIX targets (§2.2, Table 6).
//!
//! The target is computed from the *original* enhancer view after the input
//! normalization `(x − mean) / std` (the pixels the enhancer's input space uses), then:
//! - [`window_normalize`] (the paper's choice, `k = 8`): per channel, each pixel
//!   minus the mean of the `k×k` window around it, divided by `sqrt(var + eps)` with the
//!   biased variance of that window; windows are clipped to the image and count only
//!   pixels inside it (the backend's `window_stats`: rows `i − k/2 ..= i + (k−1)/2`, so
//!   an even window has one more pixel before the centre than after);
//! - [`patch_normalize`] (MAE's `norm_pix_loss`): each non-overlapping `p×p` patch,
//!   all channels together, minus its mean, divided by `sqrt(var + eps)` with the
//!   unbiased variance (PyTorch's `var()` default, as MAE);
//! - no normalization: the normalized input itself.
//!
//! Both normalizations are invariant to a per-channel affine map of the input up to
//! `eps` (the window one exactly per channel; the patch one only to a common one), so
//! the choice of input space matters only for the unnormalized target. `eps` is
//! [`super::TARGET_EPS`] = 1e-6 by default, as MAE.
//!
//! [`respix_inverse`] maps a prediction in target space back to the input space with the
//! *original's* statistics, and [`denormalize_image`] back to pixels: the paper's way of
//! showing a RESPIX output (§A.2), which injects the original's window statistics.

use super::{RespixNorm, OP};
use crate::backend::{Backend, BinaryOp, ReduceOp, UnaryOp};
use crate::error::{invalid, shape_err, Result};
use crate::models::vit::{patchify, unpatchify};
use crate::ops;
use crate::tensor::Tensor;
use alloc::format;

/// `[n, 3, h, w]` images.
fn check_image(what: &str, s: &[usize]) -> Result<()> {
    if s.len() != 4 || s[1] != 3 || s.contains(&0) {
        return shape_err(OP, format!("{what} {s:?} is not [n, 3, h, w]"));
    }
    Ok(())
}

/// `(x − mean[c]) / std[c]` per channel of `x: [n, 3, h, w]`.
pub fn normalize_image<B: Backend>(b: &B, x: &Tensor<B>, mean: &[f64; 3], std: &[f64; 3]) -> Result<Tensor<B>> {
    check_image("image", x.shape())?;
    let scale: [f64; 3] = core::array::from_fn(|c| 1.0 / std[c]);
    let shift: [f64; 3] = core::array::from_fn(|c| -mean[c] / std[c]);
    let scale = Tensor::from_f64(b, &[1, 3, 1, 1], &scale)?;
    let shift = Tensor::from_f64(b, &[1, 3, 1, 1], &shift)?;
    ops::add(b, &ops::mul(b, x, &scale)?, &shift)
}

/// The sliding-window normalization of `x: [n, c, h, w]` with a `k×k` window. See the
/// module docs.
pub fn window_normalize<B: Backend>(b: &B, x: &Tensor<B>, k: usize, eps: f64) -> Result<Tensor<B>> {
    if k == 0 || eps.is_nan() || eps <= 0.0 {
        return invalid(OP, format!("window normalization needs k ≥ 1 and eps > 0 (k {k}, eps {eps})"));
    }
    let (mean, var) = ops::window_stats(b, x, k)?;
    let std = ops::unary(b, UnaryOp::Sqrt, &ops::affine(b, &var, 1.0, eps)?)?;
    ops::div(b, &ops::sub(b, x, &mean)?, &std)
}

/// The per-patch normalization of `x: [n, c, h, w]` over non-overlapping `p×p` patches,
/// all channels together, unbiased variance. See the module docs.
pub fn patch_normalize<B: Backend>(b: &B, x: &Tensor<B>, p: usize, eps: f64) -> Result<Tensor<B>> {
    let s = x.shape();
    if s.len() != 4 || p == 0 || !s[2].is_multiple_of(p) || !s[3].is_multiple_of(p) {
        return shape_err(OP, format!("image {s:?} cannot be cut into {p}×{p} patches"));
    }
    let m = s[1] * p * p;
    if m < 2 || eps.is_nan() || eps <= 0.0 {
        return invalid(OP, format!("patch normalization needs ≥ 2 values per patch and eps > 0 (got {m}, {eps})"));
    }
    let patches = patchify(b, x, p)?; // [n, L, c·p·p]
    let mean = ops::reduce(b, ReduceOp::Mean, &patches, 2, true)?;
    let centered = ops::binary(b, BinaryOp::Sub, &patches, &mean)?;
    drop(patches);
    let ss = ops::reduce(b, ReduceOp::Sum, &ops::unary(b, UnaryOp::Square, &centered)?, 2, true)?;
    let std = ops::unary(b, UnaryOp::Sqrt, &ops::affine(b, &ss, 1.0 / (m - 1) as f64, eps)?)?;
    let normed = ops::binary(b, BinaryOp::Div, &centered, &std)?;
    unpatchify(b, &normed, s[1], s[2] / p, s[3] / p, p)
}

/// The RESPIX target of the normalized original view `x: [n, 3, h, w]`.
pub fn respix_target<B: Backend>(b: &B, x: &Tensor<B>, norm: RespixNorm, eps: f64) -> Result<Tensor<B>> {
    check_image("RESPIX input", x.shape())?;
    match norm {
        RespixNorm::SlidingWindow { k } => window_normalize(b, x, k, eps),
        RespixNorm::Patch { p } => patch_normalize(b, x, p, eps),
        RespixNorm::None => x.duplicate(b),
    }
}

/// `x · std[c] + mean[c]` per channel of `x: [n, 3, h, w]`: the inverse of
/// [`normalize_image`].
pub fn denormalize_image<B: Backend>(b: &B, x: &Tensor<B>, mean: &[f64; 3], std: &[f64; 3]) -> Result<Tensor<B>> {
    check_image("image", x.shape())?;
    let scale = Tensor::from_f64(b, &[1, 3, 1, 1], std)?;
    let shift = Tensor::from_f64(b, &[1, 3, 1, 1], mean)?;
    ops::add(b, &ops::mul(b, x, &scale)?, &shift)
}

/// A prediction `pred` in the target space of `norm` mapped back to the input space of
/// the normalized original `x` (both `[n, 3, h, w]`), with `x`'s own statistics: the
/// window's (or patch's) mean plus `pred` times its `sqrt(var + eps)`. The inverse of
/// [`respix_target`] for `pred = respix_target(x)`.
pub fn respix_inverse<B: Backend>(
    b: &B,
    pred: &Tensor<B>,
    x: &Tensor<B>,
    norm: RespixNorm,
    eps: f64,
) -> Result<Tensor<B>> {
    check_image("RESPIX input", x.shape())?;
    if pred.shape() != x.shape() {
        return shape_err(OP, format!("prediction {:?} does not match the image {:?}", pred.shape(), x.shape()));
    }
    if eps.is_nan() || eps <= 0.0 {
        return invalid(OP, format!("eps must be positive (got {eps})"));
    }
    match norm {
        RespixNorm::SlidingWindow { k } => {
            if k == 0 {
                return invalid(OP, "window normalization needs k ≥ 1");
            }
            let (mean, var) = ops::window_stats(b, x, k)?;
            let std = ops::unary(b, UnaryOp::Sqrt, &ops::affine(b, &var, 1.0, eps)?)?;
            ops::add(b, &ops::mul(b, pred, &std)?, &mean)
        }
        RespixNorm::Patch { p } => {
            let s = x.shape();
            if p == 0 || !s[2].is_multiple_of(p) || !s[3].is_multiple_of(p) || s[1] * p * p < 2 {
                return shape_err(OP, format!("image {s:?} cannot be cut into {p}×{p} patches"));
            }
            let m = s[1] * p * p;
            let patches = patchify(b, x, p)?;
            let mean = ops::reduce(b, ReduceOp::Mean, &patches, 2, true)?;
            let centered = ops::binary(b, BinaryOp::Sub, &patches, &mean)?;
            drop(patches);
            let ss = ops::reduce(b, ReduceOp::Sum, &ops::unary(b, UnaryOp::Square, &centered)?, 2, true)?;
            let std = ops::unary(b, UnaryOp::Sqrt, &ops::affine(b, &ss, 1.0 / (m - 1) as f64, eps)?)?;
            let y = ops::binary(b, BinaryOp::Mul, &patchify(b, pred, p)?, &std)?;
            let y = ops::binary(b, BinaryOp::Add, &y, &mean)?;
            unpatchify(b, &y, s[1], s[2] / p, s[3] / p, p)
        }
        RespixNorm::None => pred.duplicate(b),
    }
}
