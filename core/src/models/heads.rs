//! Heads on ViT features `[batch, 1 + N, D]` (class token in row 0, patch tokens in
//! row-major grid order): the CIM enhancer's per-token pre-training heads and timm's
//! classification head. Each is a [`Layer`] whose input is the feature tensor and
//! whose backward pass returns the feature gradient.
//!
//! - [`RevdetHead`]: replaced visual token detection, one logit per patch token
//!   (`D → 1`), `[batch, N]`; the class token is dropped.
//! - [`RespixHead`]: pixel residual learning, `D → C·p·p` pixels per patch token,
//!   rearranged to an image `[batch, C, H, W]` ("unpatchify", as MAE). Layout: the
//!   `C·p·p` outputs of token `(i, j)` are ordered `(c, ki, kj)` — channel first, the
//!   layout of the patch-embedding weight `[D, C, p, p]` — and land on pixel
//!   `(c, i·p + ki, j·p + kj)`. (MAE orders them `(ki, kj, c)`; the head is trained from
//!   scratch, so only consistency matters, and channel-first keeps runs of `p`
//!   contiguous pixels, which [`unpatchify`] moves as rows of `p` with `gather_rows`.)
//! - [`ClassifierHead`]: timm's `head` (`[classes, D]`, bias) on the class token
//!   ([`Pool::Cls`]) or on the mean of the patch tokens ([`Pool::Mean`]), optionally
//!   through timm's `fc_norm` after pooling (timm's and BEiT's `global_pool='avg'`
//!   default, used with a backbone whose final norm is off: `VitConfig::final_norm`).
//!
//! The per-token heads take their own name prefix (e.g. `revdet_head`, `respix_head`);
//! the classifier registers `{prefix}.head.*` and `{prefix}.fc_norm.*` under the
//! model's prefix, as timm.

use super::vit::{join, patch_tokens, patch_tokens_backward, patchify, unpatchify, VitConfig};
use crate::backend::{Backend, Gemm};
use crate::error::{invalid, shape_err, Result};
use crate::layers::{check_nonempty, check_same, produce, Layer, LayerNorm, LayerNormCache, Linear, LinearCache};
use crate::params::{Init, ParamTable};
use crate::tensor::{IndexTensor, Tensor};
use alloc::format;
use alloc::vec::Vec;

/// `[batch, tokens, dim]` features with at least `min_tokens` tokens.
fn check_features(op: &'static str, s: &[usize], dim: usize, min_tokens: usize) -> Result<(usize, usize)> {
    check_nonempty(op, s, 3)?;
    if s.len() != 3 || s[2] != dim || s[1] < min_tokens {
        return shape_err(op, format!("features {s:?} are not [batch, ≥{min_tokens} tokens, {dim}]"));
    }
    Ok((s[0], s[1]))
}

// ---- REVDET -------------------------------------------------------------------------------

/// One logit per patch token: `{prefix}.weight: [1, D]`, `{prefix}.bias: [1]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RevdetHead {
    pub fc: Linear,
}

/// Holds the patch tokens `[batch, N, D]`.
pub struct RevdetCache<B: Backend> {
    pub fc: LinearCache<B>,
}

impl RevdetHead {
    pub fn new(table: &mut ParamTable, prefix: &str, dim: usize) -> Result<Self> {
        Ok(RevdetHead { fc: Linear::new_with_init(table, prefix, dim, 1, true, Init::TIMM)? })
    }
}

impl<B: Backend> Layer<B> for RevdetHead {
    type Cache = RevdetCache<B>;

    fn forward_owned(&self, b: &B, params: &B::Buf, x: Tensor<B>) -> Result<(Tensor<B>, RevdetCache<B>)> {
        let (nb, t) = check_features("RevdetHead", x.shape(), self.fc.d_in, 2)?;
        let (y, fc) = self.fc.forward_owned(b, params, patch_tokens(b, &x)?)?;
        Ok((y.reshape(&[nb, t - 1])?, RevdetCache { fc }))
    }

    fn forward(&self, b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<(Tensor<B>, RevdetCache<B>)> {
        let (nb, t) = check_features("RevdetHead", x.shape(), self.fc.d_in, 2)?;
        let (y, fc) = self.fc.forward_owned(b, params, patch_tokens(b, x)?)?;
        Ok((y.reshape(&[nb, t - 1])?, RevdetCache { fc }))
    }

    fn infer(&self, b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<Tensor<B>> {
        let (nb, t) = check_features("RevdetHead", x.shape(), self.fc.d_in, 2)?;
        self.fc.infer(b, params, &patch_tokens(b, x)?)?.reshape(&[nb, t - 1])
    }

    /// `dy: [batch, N]` → the feature gradient `[batch, 1 + N, D]` (zero class row).
    fn backward(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &RevdetCache<B>,
        dy: &Tensor<B>,
    ) -> Result<Tensor<B>> {
        let xs = cache.fc.x.shape();
        check_same("RevdetHead", "dy", dy.shape(), &xs[..2])?;
        let dy3 = dy.duplicate(b)?.reshape(&[xs[0], xs[1], 1])?;
        let dtokens = self.fc.backward(b, params, grads, &cache.fc, &dy3)?;
        patch_tokens_backward(b, &dtokens)
    }
}

// ---- RESPIX -------------------------------------------------------------------------------

/// Pixels per patch token, rearranged to an image: `{prefix}.weight: [C·p·p, D]`,
/// `{prefix}.bias: [C·p·p]`. See the module docs for the layout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RespixHead {
    pub fc: Linear,
    pub patch_size: usize,
    pub in_chans: usize,
    /// Patches per side.
    pub grid: usize,
}

/// Holds the patch tokens `[batch, N, D]`.
pub struct RespixCache<B: Backend> {
    pub fc: LinearCache<B>,
}

impl RespixHead {
    /// A head for the ViT of `cfg` (its width, patch size, channels and grid).
    pub fn new(table: &mut ParamTable, prefix: &str, cfg: &VitConfig) -> Result<Self> {
        cfg.validate()?;
        let fc = Linear::new_with_init(table, prefix, cfg.embed_dim, cfg.patch_dim(), true, Init::TIMM)?;
        Ok(RespixHead { fc, patch_size: cfg.patch_size, in_chans: cfg.in_chans, grid: cfg.grid() })
    }

    fn check(&self, s: &[usize]) -> Result<usize> {
        let (nb, t) = check_features("RespixHead", s, self.fc.d_in, 2)?;
        if t != 1 + self.grid * self.grid {
            return shape_err("RespixHead", format!("features {s:?} do not hold 1 + {}² tokens", self.grid));
        }
        Ok(nb)
    }

    /// The output image side, `grid · p`.
    pub fn image_size(&self) -> usize {
        self.grid * self.patch_size
    }

    fn image_of<B: Backend>(&self, b: &B, pixels: &Tensor<B>) -> Result<Tensor<B>> {
        unpatchify(b, pixels, self.in_chans, self.grid, self.grid, self.patch_size)
    }
}

impl<B: Backend> Layer<B> for RespixHead {
    type Cache = RespixCache<B>;

    fn forward_owned(&self, b: &B, params: &B::Buf, x: Tensor<B>) -> Result<(Tensor<B>, RespixCache<B>)> {
        self.forward(b, params, &x)
    }

    fn forward(&self, b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<(Tensor<B>, RespixCache<B>)> {
        self.check(x.shape())?;
        let (y, fc) = self.fc.forward_owned(b, params, patch_tokens(b, x)?)?;
        Ok((self.image_of(b, &y)?, RespixCache { fc }))
    }

    fn infer(&self, b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<Tensor<B>> {
        self.check(x.shape())?;
        let y = self.fc.infer(b, params, &patch_tokens(b, x)?)?;
        self.image_of(b, &y)
    }

    /// `dy: [batch, C, H, W]` → the feature gradient `[batch, 1 + N, D]` (zero class row).
    fn backward(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &RespixCache<B>,
        dy: &Tensor<B>,
    ) -> Result<Tensor<B>> {
        let nb = cache.fc.x.shape()[0];
        let side = self.image_size();
        check_same("RespixHead", "dy", dy.shape(), &[nb, self.in_chans, side, side])?;
        let dpixels = patchify(b, dy, self.patch_size)?;
        let dtokens = self.fc.backward(b, params, grads, &cache.fc, &dpixels)?;
        patch_tokens_backward(b, &dtokens)
    }
}

// ---- classification -----------------------------------------------------------------------

/// How the classifier pools the tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    /// The class token (timm's `global_pool='token'`).
    Cls,
    /// The mean of the patch tokens, class token excluded (timm's `'avg'`).
    Mean,
}

/// timm's classification head: pool, optional `fc_norm`, `head` (`[classes, D]`, bias).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClassifierHead {
    pub pool: Pool,
    pub fc_norm: Option<LayerNorm>,
    pub fc: Linear,
}

/// What [`ClassifierHead`]'s backward pass needs.
pub struct ClassifierCache<B: Backend> {
    /// `[batch, tokens, D]` of the input features.
    pub features_shape: [usize; 3],
    pub fc_norm: Option<LayerNormCache<B>>,
    /// Holds the (normalized) pooled features `[batch, D]`.
    pub fc: LinearCache<B>,
}

impl ClassifierHead {
    /// Register `{prefix}.head.weight: [classes, D]` (truncated normal, std 0.02),
    /// `{prefix}.head.bias` (zeros) and, with `fc_norm`, `{prefix}.fc_norm.*` (LayerNorm
    /// with `ln_eps`). `prefix` is the model's prefix (empty for timm's bare names).
    pub fn new(
        table: &mut ParamTable,
        prefix: &str,
        dim: usize,
        classes: usize,
        pool: Pool,
        fc_norm: bool,
        ln_eps: f64,
    ) -> Result<Self> {
        if dim == 0 || classes == 0 {
            return invalid("ClassifierHead", format!("dim {dim} and classes {classes} must be positive"));
        }
        let fc_norm = if fc_norm { Some(LayerNorm::new(table, &join(prefix, "fc_norm"), dim, ln_eps)?) } else { None };
        let fc = Linear::new_with_init(table, &join(prefix, "head"), dim, classes, true, Init::TIMM)?;
        Ok(ClassifierHead { pool, fc_norm, fc })
    }

    /// timm's default for a ViT: the class token, no `fc_norm`.
    pub fn timm(table: &mut ParamTable, prefix: &str, cfg: &VitConfig, classes: usize) -> Result<Self> {
        Self::new(table, prefix, cfg.embed_dim, classes, Pool::Cls, false, cfg.ln_eps)
    }

    fn check(&self, s: &[usize]) -> Result<(usize, usize)> {
        let min = match self.pool {
            Pool::Cls => 1,
            Pool::Mean => 2,
        };
        check_features("ClassifierHead", s, self.fc.d_in, min)
    }

    /// `[batch, tokens, D]` → `[batch, D]`.
    fn pool<B: Backend>(&self, b: &B, x: &Tensor<B>, nb: usize, t: usize) -> Result<Tensor<B>> {
        let d = self.fc.d_in;
        match self.pool {
            Pool::Cls => {
                let idx = cls_index(b, nb, t)?;
                produce(b, &[nb, d], |y| b.gather_rows(d, x.view(), idx.view(), y))
            }
            Pool::Mean => {
                // pooled[b] = w · x[b] with w = [0, 1/N, …, 1/N]: one batched GEMM.
                let w = mean_weights(b, t)?;
                let g = Gemm { batch: nb, stride_a: 0, stride_b: t * d, stride_c: d, ..Gemm::new(1, d, t) };
                produce(b, &[nb, d], |y| b.gemm(&g, w.view(), x.view(), y))
            }
        }
    }

    /// The adjoint of [`ClassifierHead::pool`]: `[batch, D]` → `[batch, tokens, D]`.
    fn unpool<B: Backend>(&self, b: &B, dp: &Tensor<B>, nb: usize, t: usize) -> Result<Tensor<B>> {
        let d = self.fc.d_in;
        match self.pool {
            Pool::Cls => {
                let idx = cls_index(b, nb, t)?;
                produce(b, &[nb, t, d], |y| b.scatter_add_rows(d, idx.view(), dp.view(), y))
            }
            Pool::Mean => {
                // dx[b] = wᵀ · dpooled[b]: [t × 1] · [1 × d].
                let w = mean_weights(b, t)?;
                let g = Gemm { batch: nb, stride_a: 0, stride_b: d, stride_c: t * d, ..Gemm::new(t, d, 1) };
                produce(b, &[nb, t, d], |y| b.gemm(&g, w.view(), dp.view(), y))
            }
        }
    }
}

/// Rows `b · t` (each image's class token).
fn cls_index<B: Backend>(b: &B, nb: usize, t: usize) -> Result<IndexTensor<B>> {
    let idx: Vec<u32> = (0..nb).map(|i| (i * t) as u32).collect();
    IndexTensor::from_slice(b, &[nb], &idx)
}

/// `[0, 1/N, …, 1/N]` over `t = 1 + N` tokens.
fn mean_weights<B: Backend>(b: &B, t: usize) -> Result<Tensor<B>> {
    let w: Vec<f64> = (0..t).map(|i| if i == 0 { 0.0 } else { 1.0 / (t - 1) as f64 }).collect();
    Tensor::from_f64(b, &[t], &w)
}

impl<B: Backend> Layer<B> for ClassifierHead {
    type Cache = ClassifierCache<B>;

    fn forward_owned(&self, b: &B, params: &B::Buf, x: Tensor<B>) -> Result<(Tensor<B>, ClassifierCache<B>)> {
        self.forward(b, params, &x)
    }

    fn forward(&self, b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<(Tensor<B>, ClassifierCache<B>)> {
        let (nb, t) = self.check(x.shape())?;
        let mut h = self.pool(b, x, nb, t)?;
        let fc_norm = match &self.fc_norm {
            Some(ln) => {
                let (y, c) = ln.forward_owned(b, params, h)?;
                h = y;
                Some(c)
            }
            None => None,
        };
        let (y, fc) = self.fc.forward_owned(b, params, h)?;
        Ok((y, ClassifierCache { features_shape: [nb, t, self.fc.d_in], fc_norm, fc }))
    }

    fn infer(&self, b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<Tensor<B>> {
        let (nb, t) = self.check(x.shape())?;
        let mut h = self.pool(b, x, nb, t)?;
        if let Some(ln) = &self.fc_norm {
            h = ln.infer(b, params, &h)?;
        }
        self.fc.infer(b, params, &h)
    }

    /// `dy: [batch, classes]` → the feature gradient `[batch, tokens, D]`.
    fn backward(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &ClassifierCache<B>,
        dy: &Tensor<B>,
    ) -> Result<Tensor<B>> {
        let [nb, t, _] = cache.features_shape;
        let mut dh = self.fc.backward(b, params, grads, &cache.fc, dy)?;
        match (&self.fc_norm, &cache.fc_norm) {
            (Some(ln), Some(c)) => dh = ln.backward(b, params, grads, c, &dh)?,
            (None, None) => {}
            _ => return invalid("ClassifierHead", "the cache does not match the head's fc_norm"),
        }
        self.unpool(b, &dh, nb, t)
    }
}
