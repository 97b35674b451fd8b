//! Restoring an image from a RESPIX head's output.
//!
//! The head predicts each pixel normalized by statistics of the original image around
//! it (the sliding `k×k` window of the paper, a patch, or none: `cim.respix_norm`), so
//! its output alone is not an image. As the paper does for its pictures (§A.2), the
//! statistics are taken from the input itself: `restored = ŷ · √(σ² + ε) + μ` with `μ`,
//! `σ²` of the normalized input, then the input normalization is undone,
//! `pixel = restored · std[c] + mean[c]`, clamped to `[0, 1]`.

use cim_core::backend::{BinaryOp, ReduceOp, UnaryOp};
use cim_core::cim::RespixNorm;
use cim_core::models::vit::{patchify, unpatchify};
use cim_core::{ops, Backend, Error, Result, Tensor};

/// The head output `pixels` `[N, C, H, W]` back in the space of `input` (the normalized
/// image the model saw, same shape). See the module docs.
pub fn restore<B: Backend>(
    b: &B,
    input: &Tensor<B>,
    pixels: &Tensor<B>,
    norm: RespixNorm,
    eps: f64,
) -> Result<Tensor<B>> {
    if input.shape() != pixels.shape() || input.shape().len() != 4 {
        return Err(Error::Shape {
            op: "restore",
            detail: format!("RESPIX output {:?} does not match the input {:?}", pixels.shape(), input.shape()),
        });
    }
    match norm {
        RespixNorm::SlidingWindow { k } => {
            let (mean, var) = ops::window_stats(b, input, k)?;
            let std = ops::unary(b, UnaryOp::Sqrt, &ops::affine(b, &var, 1.0, eps)?)?;
            ops::add(b, &ops::mul(b, pixels, &std)?, &mean)
        }
        RespixNorm::Patch { p } => {
            let s = input.shape();
            if p == 0 || !s[2].is_multiple_of(p) || !s[3].is_multiple_of(p) || s[1] * p * p < 2 {
                return Err(Error::Shape {
                    op: "restore",
                    detail: format!("{s:?} cannot be cut into {p}×{p} patches"),
                });
            }
            let m = s[1] * p * p;
            let patches = patchify(b, input, p)?;
            let mean = ops::reduce(b, ReduceOp::Mean, &patches, 2, true)?;
            let centered = ops::binary(b, BinaryOp::Sub, &patches, &mean)?;
            let ss = ops::reduce(b, ReduceOp::Sum, &ops::unary(b, UnaryOp::Square, &centered)?, 2, true)?;
            let std = ops::unary(b, UnaryOp::Sqrt, &ops::affine(b, &ss, 1.0 / (m - 1) as f64, eps)?)?;
            let y = ops::binary(b, BinaryOp::Mul, &patchify(b, pixels, p)?, &std)?;
            let y = ops::binary(b, BinaryOp::Add, &y, &mean)?;
            unpatchify(b, &y, s[1], s[2] / p, s[3] / p, p)
        }
        RespixNorm::None => pixels.duplicate(b),
    }
}

/// Normalized values `[C, H, W]` (one image) to pixels in `[0, 1]`:
/// `v · std[c] + mean[c]`, clamped.
pub fn to_unit_range(values: &[f32], mean: &[f64], std: &[f64]) -> Vec<f32> {
    let c = mean.len().max(1);
    let plane = values.len() / c;
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / plane.max(1)).min(c - 1);
            (v as f64 * std.get(ch).copied().unwrap_or(1.0) + mean.get(ch).copied().unwrap_or(0.0)).clamp(0.0, 1.0)
                as f32
        })
        .collect()
}
