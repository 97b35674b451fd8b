//! The ResNet enhancer head: a 1×1 convolution on the last feature map that predicts,
//! at each position, everything the `S × S` pixel cell under it covers, rearranged to
//! image layout by a pixel shuffle (PyTorch's `nn.PixelShuffle`).
//!
//! With network stride `S` ([`crate::models::resnet::ResNetConfig::stride`]: 32, or 8
//! for the small stem) and patch size `P` (`S % P == 0`), each feature position covers
//! `(S/P)²` patches of the tokenizer grid:
//! - RESPIX predicts `(S/P)² · P² · 3 = 3 · S²` values per position; a pixel shuffle
//!   with factor `S` gives `[n, 3, h·S, w·S]`, the image;
//! - REVDET predicts `(S/P)²` logits per position; a pixel shuffle with factor `S/P`
//!   gives `[n, 1, h·S/P, w·S/P]`, one logit per token of the tokenizer grid.
//!
//! # Layout
//! Pixel shuffle with factor `r`: `[n, c·r², h, w] → [n, c, h·r, w·r]`,
//! `out[n, c, h·r + i, w·r + j] = in[n, c·r² + i·r + j, h, w]`. So output channel
//! `k·S² + i·S + j` of the RESPIX convolution is colour `k` of pixel `(i, j)` of the cell,
//! and channel `i·(S/P) + j` of the REVDET one is patch `(i, j)` of the cell. Pixel
//! unshuffle is the inverse (and, as a permutation, the adjoint): the backward pass.
//!
//! # Implementation
//! Backend-generic: a gather of rows of width 1 with a permutation built on the host,
//! for one image and reused over the batch (one `gather_rows` call per image; the
//! permutation, `c·r²·h·w` indices, is uploaded once per call). Correct first; a
//! backend may add a dedicated kernel later.
//!
//! The convolution is named `{prefix}.weight`, `{prefix}.bias` and initialized as
//! PyTorch's `nn.Conv2d` default (uniform `±1/sqrt(fan_in)`).

use crate::backend::Backend;
use crate::error::{invalid, shape_err, Result};
use crate::layers::{Conv2d, Conv2dCache, Conv2dConfig, Layer, Scope};
use crate::params::{Init, ParamTable};
use crate::tensor::{IndexTensor, Tensor, View};
use alloc::format;
use alloc::vec::Vec;

const OP: &str = "ConvHead";

/// Apply a per-item permutation: with `x` holding `items` consecutive items of
/// `perm.len()` elements each, `out[t·m + k] = x[t·m + perm[k]]`; `out` gets `out_shape`.
pub(crate) fn permute_items<B: Backend>(
    b: &B,
    x: &Tensor<B>,
    items: usize,
    perm: &[u32],
    out_shape: &[usize],
) -> Result<Tensor<B>> {
    let m = perm.len();
    if items * m != x.numel() || crate::tensor::numel(out_shape) != x.numel() {
        return shape_err(
            "permute",
            format!("{items} items of {m} elements do not fit {:?} → {out_shape:?}", x.shape()),
        );
    }
    let ids = IndexTensor::from_slice(b, &[m], perm)?;
    let mut out = Tensor::zeros(b, out_shape)?;
    for t in 0..items {
        let src = View { buf: x.buf(), offset: t * m, len: m };
        let mut dst = out.view_mut();
        dst.offset = t * m;
        dst.len = m;
        b.gather_rows(1, src, ids.view(), dst)?;
    }
    Ok(out)
}

/// Indices must fit in `u32`.
fn check_u32(op: &'static str, m: usize) -> Result<()> {
    if m > u32::MAX as usize {
        return invalid(op, format!("{m} elements per image exceed the u32 index range"));
    }
    Ok(())
}

/// `[c·r², h, w] → [c, h·r, w·r]` for one image: `perm[out] = in`.
fn shuffle_perm(c: usize, r: usize, h: usize, w: usize) -> Vec<u32> {
    let (ho, wo) = (h * r, w * r);
    let mut perm = Vec::with_capacity(c * ho * wo);
    for ch in 0..c {
        for oh in 0..ho {
            let (hh, i) = (oh / r, oh % r);
            for ow in 0..wo {
                let (ww, j) = (ow / r, ow % r);
                perm.push((((ch * r * r + i * r + j) * h + hh) * w + ww) as u32);
            }
        }
    }
    perm
}

/// `[c, h·r, w·r] → [c·r², h, w]` for one image (the inverse of [`shuffle_perm`]).
fn unshuffle_perm(c: usize, r: usize, h: usize, w: usize) -> Vec<u32> {
    let (ho, wo) = (h * r, w * r);
    let mut perm = Vec::with_capacity(c * ho * wo);
    for ch in 0..c {
        for i in 0..r {
            for j in 0..r {
                for hh in 0..h {
                    for ww in 0..w {
                        perm.push(((ch * ho + hh * r + i) * wo + ww * r + j) as u32);
                    }
                }
            }
        }
    }
    perm
}

/// PyTorch's `pixel_shuffle`: `[n, c·r², h, w] → [n, c, h·r, w·r]`.
pub fn pixel_shuffle<B: Backend>(b: &B, x: &Tensor<B>, r: usize) -> Result<Tensor<B>> {
    const OP: &str = "pixel_shuffle";
    let s = x.shape();
    if r == 0 {
        return invalid(OP, "the factor must be positive");
    }
    if s.len() != 4 || s.contains(&0) || !s[1].is_multiple_of(r * r) {
        return shape_err(OP, format!("input {s:?} is not [n, c·{r}², h, w]"));
    }
    let c = s[1] / (r * r);
    check_u32(OP, s[1] * s[2] * s[3])?;
    permute_items(b, x, s[0], &shuffle_perm(c, r, s[2], s[3]), &[s[0], c, s[2] * r, s[3] * r])
}

/// PyTorch's `pixel_unshuffle`: `[n, c, h·r, w·r] → [n, c·r², h, w]`; the inverse and
/// the adjoint (backward pass) of [`pixel_shuffle`].
pub fn pixel_unshuffle<B: Backend>(b: &B, x: &Tensor<B>, r: usize) -> Result<Tensor<B>> {
    const OP: &str = "pixel_unshuffle";
    let s = x.shape();
    if r == 0 {
        return invalid(OP, "the factor must be positive");
    }
    if s.len() != 4 || s.contains(&0) || !s[2].is_multiple_of(r) || !s[3].is_multiple_of(r) {
        return shape_err(OP, format!("input {s:?} is not [n, c, h·{r}, w·{r}]"));
    }
    let (c, h, w) = (s[1], s[2] / r, s[3] / r);
    check_u32(OP, s[1] * s[2] * s[3])?;
    permute_items(b, x, s[0], &unshuffle_perm(c, r, h, w), &[s[0], c * r * r, h, w])
}

/// What the enhancer head predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvHeadTask {
    /// Normalized pixels: `[n, 3, H, W]`.
    Respix,
    /// Replaced-token logits: `[n, 1, H/P, W/P]`.
    Revdet,
}

/// The enhancer head of a ResNet. See the module docs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvHead {
    pub conv: Conv2d,
    pub task: ConvHeadTask,
    /// Network stride `S`.
    pub stride: usize,
    /// Patch size `P` of the tokenizer grid.
    pub patch: usize,
    /// Output channels after the shuffle (3 for RESPIX, 1 for REVDET).
    pub channels: usize,
}

/// The convolution's input, for its backward pass.
pub struct ConvHeadCache<B: Backend> {
    pub conv: Conv2dCache<B>,
}

impl ConvHead {
    /// Register `{prefix}.weight` `[c_out, c_in, 1, 1]` and `{prefix}.bias`, with
    /// `c_out = 3·S²` (RESPIX) or `(S/P)²` (REVDET). `S % P == 0` is required.
    pub fn new(
        table: &mut ParamTable,
        prefix: &str,
        task: ConvHeadTask,
        c_in: usize,
        stride: usize,
        patch: usize,
    ) -> Result<Self> {
        Self::build(&mut Scope::new(table, prefix), task, c_in, stride, patch)
    }

    /// For the feature map of a ResNet with configuration `cfg`.
    pub fn for_resnet(
        table: &mut ParamTable,
        prefix: &str,
        task: ConvHeadTask,
        cfg: &crate::models::resnet::ResNetConfig,
        patch: usize,
    ) -> Result<Self> {
        Self::new(table, prefix, task, cfg.out_channels(), cfg.stride(), patch)
    }

    /// Register in a scope (fresh or shared).
    pub fn build(s: &mut Scope<'_>, task: ConvHeadTask, c_in: usize, stride: usize, patch: usize) -> Result<Self> {
        if c_in == 0 || stride == 0 || patch == 0 || !stride.is_multiple_of(patch) {
            return invalid(
                OP,
                format!("need c_in > 0 and a stride ({stride}) that is a multiple of the patch ({patch})"),
            );
        }
        let channels = match task {
            ConvHeadTask::Respix => 3,
            ConvHeadTask::Revdet => 1,
        };
        let r = match task {
            ConvHeadTask::Respix => stride,
            ConvHeadTask::Revdet => stride / patch,
        };
        let init = Init::DefaultFanIn { fan_in: c_in };
        let cfg = Conv2dConfig::new(c_in, channels * r * r, 1).init(init).bias_init(init);
        Ok(ConvHead { conv: Conv2d::build(s, cfg)?, task, stride, patch, channels })
    }

    /// The pixel-shuffle factor: `S` (RESPIX) or `S/P` (REVDET).
    pub fn scale(&self) -> usize {
        match self.task {
            ConvHeadTask::Respix => self.stride,
            ConvHeadTask::Revdet => self.stride / self.patch,
        }
    }

    /// The output shape for features of shape `f`.
    pub fn out_shape(&self, f: &[usize]) -> Result<[usize; 4]> {
        if f.len() != 4 || f[1] != self.conv.cfg.c_in || f.contains(&0) {
            return shape_err(OP, format!("features {f:?} are not [n, {}, h, w]", self.conv.cfg.c_in));
        }
        let r = self.scale();
        Ok([f[0], self.channels, f[2] * r, f[3] * r])
    }
}

impl<B: Backend> Layer<B> for ConvHead {
    type Cache = ConvHeadCache<B>;

    fn forward_owned(&self, b: &B, params: &B::Buf, x: Tensor<B>) -> Result<(Tensor<B>, ConvHeadCache<B>)> {
        let y = self.infer(b, params, &x)?;
        Ok((y, ConvHeadCache { conv: Conv2dCache { x } }))
    }

    fn infer(&self, b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<Tensor<B>> {
        self.out_shape(x.shape())?;
        let h = self.conv.infer(b, params, x)?;
        pixel_shuffle(b, &h, self.scale())
    }

    fn backward(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &ConvHeadCache<B>,
        dy: &Tensor<B>,
    ) -> Result<Tensor<B>> {
        let want = self.out_shape(cache.conv.x.shape())?;
        if dy.shape() != want {
            return shape_err(OP, format!("dy {:?}, expected {want:?}", dy.shape()));
        }
        let dh = pixel_unshuffle(b, dy, self.scale())?;
        self.conv.backward(b, params, grads, &cache.conv, &dh)
    }
}
