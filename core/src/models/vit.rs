//! The vanilla Vision Transformer (Dosovitskiy et al. 2020; DeiT sizes, Touvron et al.
//! 2021), as timm's `VisionTransformer` with a class token, 1-D absolute position
//! embeddings, pre-norm blocks and a final LayerNorm. No LayerScale, no relative
//! position bias, no dropout or drop-path (CIM uses none of them in pre-training).
//!
//! # Names (timm)
//! ```text
//! cls_token             [1, 1, D]        trunc normal, std 0.02   (no weight decay)
//! pos_embed             [1, 1 + N, D]    trunc normal, std 0.02   (no weight decay)
//! patch_embed.proj.weight [D, C, p, p]   trunc normal, std 0.02
//! patch_embed.proj.bias [D]              zeros
//! blocks.{i}.*          see `layers::Block`
//! norm.weight / .bias   [D]              ones / zeros   (absent when `final_norm` is off)
//! ```
//! Initialization: timm's `init_weights` draws `pos_embed` from a truncated normal with
//! std 0.02 and, in recent versions, `cls_token` with std 1e-6; DeiT and BEiT draw both
//! with std 0.02. We follow DeiT/BEiT (std 0.02 for both). timm initializes the patch
//! projection like a linear layer; we use [`Init::TIMM`] (truncated normal, std 0.02).
//!
//! # Passes
//! The model is factored into three stages that callers can run separately (the CIM
//! generator shares the patch embedding and the first blocks of the enhancer):
//! - [`Embed`]: patch embedding, optional replacement of masked patch embeddings by a
//!   learned mask token, the class token, the position embedding;
//! - blocks: any range of [`Block`]s ([`Vit::forward_blocks`], [`blocks_forward`]);
//! - the final LayerNorm.
//!
//! # Patch embedding without a transpose
//! timm runs a `p×p`, stride-`p` convolution, giving `[B, D, h, w]`, then flattens and
//! transposes it to tokens `[B, N, D]`. The backend trait has no transpose, and a
//! transpose through `gather_rows` over rows of one element would need an index of
//! `B·N·D` entries. The same product is computed here in token-major order directly:
//! the image is cut into patches `[B, N, C·p·p]` by one `gather_rows` over rows of `p`
//! pixels ([`patchify`], an index of `B·C·H·W/p` entries), then one batched GEMM with
//! the weight `[D, C·p·p]` writes the tokens straight into rows `1..=N` of each image's
//! `[1 + N, D]` output (row 0 is the class token's). The result equals the convolution
//! (checked in the tests against `layers::Conv2d`), and the conv weight layout
//! `[D, C, p, p]` is unchanged, so timm checkpoints load as they are.
//!
//! Cost: the index tables (patchify, patch-token rows) are built on the host and
//! uploaded on every call, like the head permutations of `layers::Attention`; at
//! 224 px, patch 16, the patchify index has 9,408 entries per image.

use crate::backend::{Backend, BinaryOp, Gemm};
use crate::element::Element;
use crate::error::{invalid, shape_err, Error, Result};
use crate::layers::{
    accumulate, check_nonempty, check_same, produce, pview, pview_mut, sub, sub_mut, sum_axis, Block, BlockCache,
    Layer, LayerNorm, LayerNormCache, Scope,
};
use crate::params::{Init, Param, ParamTable};
use crate::tensor::{IndexTensor, Tensor};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::ops::Range;

const OP: &str = "ViT";

/// Hyper-parameters of a [`Vit`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VitConfig {
    /// Square input side in pixels.
    pub img_size: usize,
    pub patch_size: usize,
    pub in_chans: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub heads: usize,
    /// MLP hidden width = `floor(mlp_ratio · embed_dim)`.
    pub mlp_ratio: f64,
    pub qkv_bias: bool,
    /// Epsilon of every LayerNorm (timm: 1e-6).
    pub ln_eps: f64,
    /// Apply the final `norm` (timm's default). BEiT-style fine-tuning with mean pooling
    /// turns it off and normalizes after pooling instead (`fc_norm`, see
    /// `heads::ClassifierHead`).
    pub final_norm: bool,
}

impl VitConfig {
    /// A ViT with timm's defaults (3 channels, MLP ratio 4, qkv bias, LN eps 1e-6).
    pub fn new(img_size: usize, patch_size: usize, embed_dim: usize, depth: usize, heads: usize) -> Self {
        VitConfig {
            img_size,
            patch_size,
            in_chans: 3,
            embed_dim,
            depth,
            heads,
            mlp_ratio: 4.0,
            qkv_bias: true,
            ln_eps: 1e-6,
            final_norm: true,
        }
    }
    /// ViT-Ti/16 (DeiT-Tiny): 192 wide, 12 blocks, 3 heads, 224 px.
    pub fn tiny() -> Self {
        Self::new(224, 16, 192, 12, 3)
    }
    /// ViT-S/16 (DeiT-Small): 384 wide, 12 blocks, 6 heads, 224 px.
    pub fn small() -> Self {
        Self::new(224, 16, 384, 12, 6)
    }
    /// ViT-B/16: 768 wide, 12 blocks, 12 heads, 224 px.
    pub fn base() -> Self {
        Self::new(224, 16, 768, 12, 12)
    }
    /// ViT-L/16: 1024 wide, 24 blocks, 16 heads, 224 px.
    pub fn large() -> Self {
        Self::new(224, 16, 1024, 24, 16)
    }
    /// The same model at another resolution and patch size (e.g. 32 px, patch 4).
    pub fn with_img(self, img_size: usize, patch_size: usize) -> Self {
        VitConfig { img_size, patch_size, ..self }
    }
    /// Another depth (e.g. a 4–6 block generator).
    pub fn with_depth(self, depth: usize) -> Self {
        VitConfig { depth, ..self }
    }
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.img_size.checked_div(self.patch_size).unwrap_or(0)
    }
    /// Patch tokens `N`.
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }
    /// Tokens including the class token, `1 + N`.
    pub fn tokens(&self) -> usize {
        1 + self.num_patches()
    }
    /// Elements of one patch, `C · p · p`.
    pub fn patch_dim(&self) -> usize {
        self.in_chans * self.patch_size * self.patch_size
    }
    /// Check that the sizes fit together.
    pub fn validate(&self) -> Result<()> {
        let c = self;
        if c.img_size == 0 || c.patch_size == 0 || c.in_chans == 0 || c.embed_dim == 0 || c.heads == 0 {
            return invalid(OP, format!("sizes must be positive: {c:?}"));
        }
        if !c.img_size.is_multiple_of(c.patch_size) {
            return invalid(
                OP,
                format!("image size {} is not a multiple of the patch size {}", c.img_size, c.patch_size),
            );
        }
        if !c.embed_dim.is_multiple_of(c.heads) {
            return invalid(OP, format!("width {} is not a multiple of the {} heads", c.embed_dim, c.heads));
        }
        if c.mlp_ratio.is_nan() || c.mlp_ratio <= 0.0 || (c.embed_dim as f64 * c.mlp_ratio) < 1.0 {
            return invalid(OP, format!("mlp_ratio {} gives no hidden units", c.mlp_ratio));
        }
        if c.ln_eps.is_nan() || c.ln_eps <= 0.0 {
            return invalid(OP, "ln_eps must be positive");
        }
        Ok(())
    }
}

/// `prefix.leaf`, or `leaf` alone under an empty prefix.
pub(crate) fn join(prefix: &str, leaf: &str) -> String {
    if prefix.is_empty() {
        leaf.to_string()
    } else {
        format!("{prefix}.{leaf}")
    }
}

// ---- host-side index tables ---------------------------------------------------------------

fn to_u32(op: &'static str, rows: usize) -> Result<()> {
    if u32::try_from(rows).is_err() {
        return invalid(op, format!("{rows} rows exceed the u32 index range"));
    }
    Ok(())
}

/// The patchify permutation over rows of `p` elements: entry `r` of the result is the
/// row of the image `[batch, chans, gh·p, gw·p]` that lands in row `r` of the patches
/// `[batch, gh·gw, chans·p·p]`, where a patch holds its pixels in `(c, ki, kj)` order
/// (the layout of a conv weight `[D, C, p, p]`), patches in row-major grid order.
pub fn patchify_index(batch: usize, chans: usize, gh: usize, gw: usize, p: usize) -> Vec<u32> {
    let mut idx = Vec::with_capacity(batch * chans * gh * p * gw);
    for b in 0..batch {
        for i in 0..gh {
            for j in 0..gw {
                for c in 0..chans {
                    for ki in 0..p {
                        // Image row of `p` pixels: ((b·C + c)·H + i·p + ki)·gw + j.
                        idx.push((((b * chans + c) * gh * p + i * p + ki) * gw + j) as u32);
                    }
                }
            }
        }
    }
    idx
}

/// The inverse of [`patchify_index`]: entry `s` is the patch row that holds image row `s`.
pub fn unpatchify_index(batch: usize, chans: usize, gh: usize, gw: usize, p: usize) -> Vec<u32> {
    let fwd = patchify_index(batch, chans, gh, gw, p);
    let mut inv = alloc::vec![0u32; fwd.len()];
    for (r, &s) in fwd.iter().enumerate() {
        inv[s as usize] = r as u32;
    }
    inv
}

/// Rows `b·(1 + n) + 1 + j` of a `[batch, 1 + n, d]` token tensor: its patch tokens.
pub fn patch_token_index(batch: usize, n: usize) -> Vec<u32> {
    (0..batch).flat_map(|b| (0..n).map(move |j| (b * (n + 1) + 1 + j) as u32)).collect()
}

fn upload_idx<B: Backend>(b: &B, idx: &[u32]) -> Result<IndexTensor<B>> {
    IndexTensor::from_slice(b, &[idx.len()], idx)
}

/// `image: [batch, chans, gh·p, gw·p]` → patches `[batch, gh·gw, chans·p·p]`, each patch
/// in `(c, ki, kj)` order (the conv-weight layout). One `gather_rows` over rows of `p`.
pub fn patchify<B: Backend>(b: &B, image: &Tensor<B>, p: usize) -> Result<Tensor<B>> {
    const OP: &str = "patchify";
    check_nonempty(OP, image.shape(), 4)?;
    let s = image.shape();
    if s.len() != 4 || p == 0 || !s[2].is_multiple_of(p) || !s[3].is_multiple_of(p) {
        return shape_err(OP, format!("image {s:?} is not [n, c, h, w] with h and w multiples of {p}"));
    }
    let (nb, c, gh, gw) = (s[0], s[1], s[2] / p, s[3] / p);
    to_u32(OP, image.numel() / p)?;
    let idx = upload_idx(b, &patchify_index(nb, c, gh, gw, p))?;
    produce(b, &[nb, gh * gw, c * p * p], |out| b.gather_rows(p, image.view(), idx.view(), out))
}

/// The inverse of [`patchify`]: `[batch, gh·gw, chans·p·p]` → `[batch, chans, gh·p, gw·p]`.
pub fn unpatchify<B: Backend>(
    b: &B,
    patches: &Tensor<B>,
    chans: usize,
    gh: usize,
    gw: usize,
    p: usize,
) -> Result<Tensor<B>> {
    const OP: &str = "unpatchify";
    check_nonempty(OP, patches.shape(), 3)?;
    let s = patches.shape();
    if s.len() != 3 || s[1] != gh * gw || s[2] != chans * p * p {
        return shape_err(OP, format!("patches {s:?} are not [n, {}, {}]", gh * gw, chans * p * p));
    }
    let nb = s[0];
    to_u32(OP, patches.numel() / p)?;
    let idx = upload_idx(b, &unpatchify_index(nb, chans, gh, gw, p))?;
    produce(b, &[nb, chans, gh * p, gw * p], |out| b.gather_rows(p, patches.view(), idx.view(), out))
}

/// The patch tokens of `x: [batch, 1 + n, d]` (all but the class token): `[batch, n, d]`.
pub fn patch_tokens<B: Backend>(b: &B, x: &Tensor<B>) -> Result<Tensor<B>> {
    const OP: &str = "patch_tokens";
    check_nonempty(OP, x.shape(), 3)?;
    let s = x.shape();
    if s.len() != 3 || s[1] < 2 {
        return shape_err(OP, format!("tokens {s:?} are not [n, 1 + patches, d]"));
    }
    let (nb, n, d) = (s[0], s[1] - 1, s[2]);
    to_u32(OP, nb * (n + 1))?;
    let idx = upload_idx(b, &patch_token_index(nb, n))?;
    produce(b, &[nb, n, d], |out| b.gather_rows(d, x.view(), idx.view(), out))
}

/// The adjoint of [`patch_tokens`]: `[batch, n, d]` → `[batch, 1 + n, d]` with zero
/// class-token rows.
pub fn patch_tokens_backward<B: Backend>(b: &B, dy: &Tensor<B>) -> Result<Tensor<B>> {
    const OP: &str = "patch_tokens_backward";
    check_nonempty(OP, dy.shape(), 3)?;
    let s = dy.shape();
    if s.len() != 3 {
        return shape_err(OP, format!("gradient {s:?} is not [n, patches, d]"));
    }
    let (nb, n, d) = (s[0], s[1], s[2]);
    to_u32(OP, nb * (n + 1))?;
    let idx = upload_idx(b, &patch_token_index(nb, n))?;
    produce(b, &[nb, n + 1, d], |out| b.scatter_add_rows(d, idx.view(), dy.view(), out))
}

/// A vector of `len` ones.
fn ones<B: Backend>(b: &B, len: usize) -> Result<Tensor<B>> {
    Tensor::full(b, &[len], B::E::of(1.0))
}

// ---- patch embedding ----------------------------------------------------------------------

/// timm's `PatchEmbed`: a `p×p` stride-`p` projection of `C` channels to `D`
/// (`{prefix}.weight: [D, C, p, p]`, `{prefix}.bias: [D]`), computed as patchify + GEMM.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PatchEmbed {
    pub weight: Param,
    pub bias: Param,
    pub img_size: usize,
    pub patch_size: usize,
    pub in_chans: usize,
    pub dim: usize,
}

impl PatchEmbed {
    /// Register `weight` ([`Init::TIMM`]) and `bias` (zeros) in a scope (fresh or shared).
    pub fn build(s: &mut Scope<'_>, cfg: &VitConfig) -> Result<Self> {
        cfg.validate()?;
        let p = cfg.patch_size;
        let weight = s.param("weight", &[cfg.embed_dim, cfg.in_chans, p, p], Init::TIMM)?;
        let bias = s.param("bias", &[cfg.embed_dim], Init::Zeros)?;
        Ok(PatchEmbed {
            weight,
            bias,
            img_size: cfg.img_size,
            patch_size: p,
            in_chans: cfg.in_chans,
            dim: cfg.embed_dim,
        })
    }
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }
    pub fn patch_dim(&self) -> usize {
        self.in_chans * self.patch_size * self.patch_size
    }
    /// The batch size of a valid input `[batch, C, img, img]`.
    pub fn check_image(&self, shape: &[usize]) -> Result<usize> {
        check_nonempty(OP, shape, 4)?;
        let want = [shape[0], self.in_chans, self.img_size, self.img_size];
        if shape != want {
            return shape_err(
                OP,
                format!("image {shape:?} is not [batch, {c}, {s}, {s}]", c = self.in_chans, s = self.img_size),
            );
        }
        Ok(shape[0])
    }
}

/// The embedding stage: patch embedding, optional mask-token replacement, class token,
/// position embedding. Output `[batch, 1 + N, D]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Embed {
    pub patch: PatchEmbed,
    pub cls_token: Param,
    pub pos_embed: Param,
    /// BEiT's learned `[MASK]` embedding, when this embedding takes masks.
    pub mask_token: Option<Param>,
}

/// What [`Embed::backward`] needs.
pub struct EmbedCache<B: Backend> {
    /// The input cut into patches, `[batch, N, C·p·p]` (for the weight gradient).
    pub patches: Tensor<B>,
    /// The mask extended by a zero for the class token, `[batch, 1 + N]`, and `1 - it`.
    pub mask: Option<(Tensor<B>, Tensor<B>)>,
    pub batch: usize,
}

impl Embed {
    pub fn dim(&self) -> usize {
        self.patch.dim
    }
    pub fn num_patches(&self) -> usize {
        self.patch.num_patches()
    }
    pub fn tokens(&self) -> usize {
        1 + self.num_patches()
    }

    /// Check a mask `[batch, N]` against the batch and the mask token.
    fn check_mask<B: Backend>(&self, nb: usize, mask: Option<&Tensor<B>>) -> Result<()> {
        if let Some(m) = mask {
            check_same(OP, "mask", m.shape(), &[nb, self.num_patches()])?;
            if self.mask_token.is_none() {
                return invalid(OP, "a mask was given to an embedding without a mask token");
            }
        }
        Ok(())
    }

    /// `x = patches · Wᵀ + b` in the patch rows, masked where `mask` is 1
    /// (`x·(1 - m) + mask_token·m`), then the class token in row 0, then `+ pos_embed`.
    fn run<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        image: &Tensor<B>,
        mask: Option<&Tensor<B>>,
    ) -> Result<(Tensor<B>, EmbedCache<B>)> {
        let nb = self.patch.check_image(image.shape())?;
        self.check_mask(nb, mask)?;
        let (n, d, k, t) = (self.num_patches(), self.dim(), self.patch.patch_dim(), self.tokens());
        let w = pview(b, &self.patch.weight, params)?;
        let bias = pview(b, &self.patch.bias, params)?;
        let cls = pview(b, &self.cls_token, params)?;
        let pos = pview(b, &self.pos_embed, params)?;
        let patches = patchify(b, image, self.patch.patch_size)?;
        // x[b, 1.., :] = patches[b] · Wᵀ, written straight into the token rows (row 0 of
        // each image stays zero): one GEMM batched over images, weight broadcast.
        let mut x = Tensor::zeros(b, &[nb, t, d])?;
        let g = Gemm { batch: nb, trans_b: true, stride_a: n * k, stride_b: 0, stride_c: t * d, ..Gemm::new(n, d, k) };
        b.gemm(&g, patches.view(), w, sub_mut(x.view_mut().buf, d, g.span_c()))?;
        // The additive terms over one image's `[t, d]`: `pos + [cls; 0]`, and `[0; bias]`.
        let ones_n = ones(b, n)?;
        let mut add = Tensor::zeros(b, &[t, d])?;
        b.copy(cls, sub_mut(add.view_mut().buf, 0, d))?;
        b.axpy(1.0, pos, add.view_mut())?;
        let bias_rows = Gemm { beta: 1.0, ..Gemm::new(n, d, 1) };
        let ones_b = ones(b, nb)?;
        let broadcast = Gemm { beta: 1.0, ..Gemm::new(nb, t * d, 1) };
        let mask = match mask {
            None => {
                b.gemm(&bias_rows, ones_n.view(), bias, sub_mut(add.view_mut().buf, d, n * d))?;
                None
            }
            Some(m) => {
                // The bias belongs to the patch embedding, so it is masked with it.
                let mut rows = Tensor::zeros(b, &[t, d])?;
                b.gemm(&bias_rows, ones_n.view(), bias, sub_mut(rows.view_mut().buf, d, n * d))?;
                b.gemm(&broadcast, ones_b.view(), rows.view(), x.view_mut())?;
                let m_ext = extend_mask(b, m, nb, n)?;
                let keep = produce(b, &[nb, t], |y| b.affine(-1.0, 1.0, m_ext.view(), y))?;
                let (s3, s1) = ([nb, t, d], [nb, t, 1]);
                x = produce(b, &s3, |y| b.binary(BinaryOp::Mul, x.view(), &s3, keep.view(), &s1, y, &s3))?;
                // x += m' ⊗ mask_token (a rank-1 product).
                let token = pview(b, self.mask_token.as_ref().expect("checked"), params)?;
                b.gemm(&Gemm { beta: 1.0, ..Gemm::new(nb * t, d, 1) }, m_ext.view(), token, x.view_mut())?;
                Some((m_ext, keep))
            }
        };
        b.gemm(&broadcast, ones_b.view(), add.view(), x.view_mut())?;
        Ok((x, EmbedCache { patches, mask, batch: nb }))
    }

    /// Forward pass; `mask: [batch, N]` of 0/1 (1 = replace by the mask token) needs a
    /// mask token.
    pub fn forward<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        image: &Tensor<B>,
        mask: Option<&Tensor<B>>,
    ) -> Result<(Tensor<B>, EmbedCache<B>)> {
        self.run(b, params, image, mask)
    }

    /// Inference: the output only.
    pub fn infer<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        image: &Tensor<B>,
        mask: Option<&Tensor<B>>,
    ) -> Result<Tensor<B>> {
        Ok(self.run(b, params, image, mask)?.0)
    }

    /// Backward pass: accumulates the gradients of the patch projection, `cls_token`,
    /// `pos_embed` and (with a mask) `mask_token`; returns the image gradient when
    /// `input_grad`.
    pub fn backward<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &EmbedCache<B>,
        dy: &Tensor<B>,
        input_grad: bool,
    ) -> Result<Option<Tensor<B>>> {
        let (nb, n, d, k, t) = (cache.batch, self.num_patches(), self.dim(), self.patch.patch_dim(), self.tokens());
        check_same(OP, "dy", dy.shape(), &[nb, t, d])?;
        check_same(OP, "cached patches", cache.patches.shape(), &[nb, n, k])?;
        // Σ over the batch, [t, d]: the gradient of pos_embed, row 0 that of cls_token.
        let ones_b = ones(b, nb)?;
        let s = produce(b, &[t, d], |y| b.gemm(&Gemm::new(1, t * d, nb), ones_b.view(), dy.view(), y))?;
        b.axpy(1.0, s.view(), pview_mut(b, &self.pos_embed, grads)?)?;
        b.axpy(1.0, sub(s.buf(), 0, d), pview_mut(b, &self.cls_token, grads)?)?;
        let masked;
        let dx: &Tensor<B> = match &cache.mask {
            None => dy,
            Some((m_ext, keep)) => {
                let token = self
                    .mask_token
                    .as_ref()
                    .ok_or_else(|| Error::Invalid { op: OP, detail: "masked cache without a mask token".into() })?;
                // dmask_token += m'ᵀ · dy: [1 × nb·t] · [nb·t × d].
                let g = Gemm { trans_a: true, beta: 1.0, ..Gemm::new(1, d, nb * t) };
                b.gemm(&g, m_ext.view(), dy.view(), pview_mut(b, token, grads)?)?;
                let (s3, s1) = ([nb, t, d], [nb, t, 1]);
                masked = produce(b, &s3, |y| b.binary(BinaryOp::Mul, dy.view(), &s3, keep.view(), &s1, y, &s3))?;
                &masked
            }
        };
        // The patch-embedding output gradient, packed [nb·n, d].
        let de = patch_tokens(b, dx)?;
        accumulate(b, &sum_axis(b, 1, nb * n, d, de.view())?, &self.patch.bias, grads)?;
        // dW += deᵀ · patches: [d × nb·n] · [nb·n × k].
        let gw = Gemm { trans_a: true, beta: 1.0, ..Gemm::new(d, k, nb * n) };
        b.gemm(&gw, de.view(), cache.patches.view(), pview_mut(b, &self.patch.weight, grads)?)?;
        if !input_grad {
            return Ok(None);
        }
        let w = pview(b, &self.patch.weight, params)?;
        let dp = produce(b, &[nb, n, k], |y| b.gemm(&Gemm::new(nb * n, k, d), de.view(), w, y))?;
        let g = self.patch.grid();
        Ok(Some(unpatchify(b, &dp, self.patch.in_chans, g, g, self.patch.patch_size)?))
    }
}

/// `[batch, n]` → `[batch, 1 + n]` with a zero in front of each row (the class token is
/// never masked).
fn extend_mask<B: Backend>(b: &B, m: &Tensor<B>, nb: usize, n: usize) -> Result<Tensor<B>> {
    to_u32(OP, nb * n + 1)?;
    let mut padded = Tensor::zeros(b, &[nb * n + 1])?;
    b.copy(m.view(), sub_mut(padded.view_mut().buf, 0, nb * n))?;
    let zero = (nb * n) as u32;
    let idx: Vec<u32> =
        (0..nb).flat_map(|bi| core::iter::once(zero).chain((0..n).map(move |j| (bi * n + j) as u32))).collect();
    let idx = upload_idx(b, &idx)?;
    produce(b, &[nb, n + 1], |y| b.gather_rows(1, padded.view(), idx.view(), y))
}

// ---- blocks -------------------------------------------------------------------------------

/// Run `blocks` in order on `x: [batch, tokens, D]`, keeping their caches.
pub fn blocks_forward<B: Backend>(
    blocks: &[Block],
    b: &B,
    params: &B::Buf,
    mut x: Tensor<B>,
) -> Result<(Tensor<B>, Vec<BlockCache<B>>)> {
    let mut caches = Vec::with_capacity(blocks.len());
    for blk in blocks {
        let (y, c) = blk.forward_owned(b, params, x)?;
        caches.push(c);
        x = y;
    }
    Ok((x, caches))
}

/// Inference through `blocks`.
pub fn blocks_infer<B: Backend>(blocks: &[Block], b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<Tensor<B>> {
    let Some((first, rest)) = blocks.split_first() else {
        return x.duplicate(b);
    };
    let mut y = first.infer(b, params, x)?;
    for blk in rest {
        y = blk.infer(b, params, &y)?;
    }
    Ok(y)
}

/// Backward through `blocks` (in reverse) from the caches of [`blocks_forward`].
pub fn blocks_backward<B: Backend>(
    blocks: &[Block],
    b: &B,
    params: &B::Buf,
    grads: &mut B::Buf,
    caches: &[BlockCache<B>],
    dy: &Tensor<B>,
) -> Result<Tensor<B>> {
    if caches.len() != blocks.len() {
        return invalid(OP, format!("{} block caches for {} blocks", caches.len(), blocks.len()));
    }
    let Some(((last, rest), (c_last, c_rest))) = blocks.split_last().zip(caches.split_last()) else {
        return dy.duplicate(b);
    };
    let mut d = last.backward(b, params, grads, c_last, dy)?;
    for (blk, c) in rest.iter().zip(c_rest).rev() {
        d = blk.backward(b, params, grads, c, &d)?;
    }
    Ok(d)
}

/// Register `depth` blocks `{prefix}.blocks.{i}`; those with `i < shared` alias
/// `{existing}.blocks.{i}` instead.
pub(crate) fn build_blocks(
    table: &mut ParamTable,
    prefix: &str,
    cfg: &VitConfig,
    share: Option<(&str, usize)>,
) -> Result<Vec<Block>> {
    let (d, h, r, qb) = (cfg.embed_dim, cfg.heads, cfg.mlp_ratio, cfg.qkv_bias);
    (0..cfg.depth)
        .map(|i| {
            let name = join(prefix, &format!("blocks.{i}"));
            let mut blk = match share {
                Some((existing, count)) if i < count => {
                    Block::shared(table, &name, &join(existing, &format!("blocks.{i}")), d, h, r, qb)?
                }
                _ => Block::new(table, &name, d, h, r, qb)?,
            };
            blk.norm1.eps = cfg.ln_eps;
            blk.norm2.eps = cfg.ln_eps;
            Ok(blk)
        })
        .collect()
}

/// Register `{prefix}.cls_token`, (optionally `{prefix}.mask_token`), `{prefix}.pos_embed`
/// and `{prefix}.patch_embed.proj.*` (aliasing `{existing}.patch_embed.proj.*` when given).
pub(crate) fn build_embed(
    table: &mut ParamTable,
    prefix: &str,
    cfg: &VitConfig,
    mask_token: bool,
    share_patch: Option<&str>,
) -> Result<Embed> {
    cfg.validate()?;
    let d = cfg.embed_dim;
    let mut s = Scope::new(table, prefix);
    let cls_token = s.param_no_decay("cls_token", &[1, 1, d], Init::TIMM)?;
    // BEiT decays mask_token (its no_weight_decay list names only pos_embed, cls_token).
    let mask_token = if mask_token { Some(s.param("mask_token", &[1, 1, d], Init::TIMM)?) } else { None };
    let pos_embed = s.param_no_decay("pos_embed", &[1, cfg.tokens(), d], Init::TIMM)?;
    let proj = join(prefix, "patch_embed.proj");
    let patch = match share_patch {
        Some(existing) => {
            PatchEmbed::build(&mut Scope::shared(table, &proj, &join(existing, "patch_embed.proj")), cfg)?
        }
        None => PatchEmbed::build(&mut Scope::new(table, &proj), cfg)?,
    };
    Ok(Embed { patch, cls_token, pos_embed, mask_token })
}

// ---- the model ----------------------------------------------------------------------------

/// A vanilla ViT without a head: image `[batch, C, img, img]` → features
/// `[batch, 1 + N, D]` (after the final norm; the class token in row 0).
#[derive(Clone, Debug, PartialEq)]
pub struct Vit {
    pub cfg: VitConfig,
    pub embed: Embed,
    pub blocks: Vec<Block>,
    /// The final LayerNorm (`norm.*`), unless `cfg.final_norm` is off.
    pub norm: Option<LayerNorm>,
}

/// What [`Vit::backward`] needs.
pub struct VitCache<B: Backend> {
    pub embed: EmbedCache<B>,
    pub blocks: Vec<BlockCache<B>>,
    pub norm: Option<LayerNormCache<B>>,
}

impl Vit {
    /// Register the model's tensors under `prefix` (empty for timm's bare names).
    pub fn new(table: &mut ParamTable, prefix: &str, cfg: VitConfig) -> Result<Self> {
        let embed = build_embed(table, prefix, &cfg, false, None)?;
        let blocks = build_blocks(table, prefix, &cfg, None)?;
        let norm = if cfg.final_norm {
            Some(LayerNorm::new(table, &join(prefix, "norm"), cfg.embed_dim, cfg.ln_eps)?)
        } else {
            None
        };
        Ok(Vit { cfg, embed, blocks, norm })
    }

    fn range<'a>(&'a self, range: &Range<usize>) -> Result<&'a [Block]> {
        self.blocks.get(range.clone()).ok_or_else(|| Error::Invalid {
            op: OP,
            detail: format!("block range {range:?} outside 0..{}", self.blocks.len()),
        })
    }

    /// Run blocks `range` on tokens `x: [batch, 1 + N, D]`.
    pub fn forward_blocks<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        x: Tensor<B>,
        range: Range<usize>,
    ) -> Result<(Tensor<B>, Vec<BlockCache<B>>)> {
        blocks_forward(self.range(&range)?, b, params, x)
    }

    /// Backward through blocks `range` from their caches.
    pub fn backward_blocks<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        caches: &[BlockCache<B>],
        range: Range<usize>,
        dy: &Tensor<B>,
    ) -> Result<Tensor<B>> {
        blocks_backward(self.range(&range)?, b, params, grads, caches, dy)
    }

    /// Inference through blocks `range`.
    pub fn infer_blocks<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        x: &Tensor<B>,
        range: Range<usize>,
    ) -> Result<Tensor<B>> {
        blocks_infer(self.range(&range)?, b, params, x)
    }

    /// Training forward pass: features `[batch, 1 + N, D]` and the cache.
    pub fn forward_features<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        image: &Tensor<B>,
    ) -> Result<(Tensor<B>, VitCache<B>)> {
        let (x, embed) = self.embed.forward(b, params, image, None)?;
        let (x, blocks) = blocks_forward(&self.blocks, b, params, x)?;
        let (y, norm) = match &self.norm {
            Some(ln) => {
                let (y, c) = ln.forward_owned(b, params, x)?;
                (y, Some(c))
            }
            None => (x, None),
        };
        Ok((y, VitCache { embed, blocks, norm }))
    }

    /// Inference: the features only.
    pub fn infer_features<B: Backend>(&self, b: &B, params: &B::Buf, image: &Tensor<B>) -> Result<Tensor<B>> {
        let x = self.embed.infer(b, params, image, None)?;
        let x = blocks_infer(&self.blocks, b, params, &x)?;
        match &self.norm {
            Some(ln) => ln.infer(b, params, &x),
            None => Ok(x),
        }
    }

    fn backward_impl<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &VitCache<B>,
        dy: &Tensor<B>,
        input_grad: bool,
    ) -> Result<Option<Tensor<B>>> {
        let normed;
        let dx = match (&self.norm, &cache.norm) {
            (Some(ln), Some(c)) => {
                normed = ln.backward(b, params, grads, c, dy)?;
                &normed
            }
            (None, None) => dy,
            _ => return invalid(OP, "the cache does not match the model's final norm"),
        };
        let dx = blocks_backward(&self.blocks, b, params, grads, &cache.blocks, dx)?;
        self.embed.backward(b, params, grads, &cache.embed, &dx, input_grad)
    }

    /// Backward pass from the feature gradient `dy: [batch, 1 + N, D]`: accumulates every
    /// parameter gradient and returns the image gradient.
    pub fn backward<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &VitCache<B>,
        dy: &Tensor<B>,
    ) -> Result<Tensor<B>> {
        self.backward_impl(b, params, grads, cache, dy, true)?
            .ok_or_else(|| Error::Invalid { op: OP, detail: "no input gradient".into() })
    }

    /// Backward pass for the parameters only (skips the image gradient).
    pub fn backward_params<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &VitCache<B>,
        dy: &Tensor<B>,
    ) -> Result<()> {
        self.backward_impl(b, params, grads, cache, dy, false).map(|_| ())
    }
}

impl<B: Backend> Layer<B> for Vit {
    type Cache = VitCache<B>;

    /// The image is not kept (the cache holds its patches).
    fn forward_owned(&self, b: &B, params: &B::Buf, x: Tensor<B>) -> Result<(Tensor<B>, VitCache<B>)> {
        self.forward_features(b, params, &x)
    }

    fn forward(&self, b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<(Tensor<B>, VitCache<B>)> {
        self.forward_features(b, params, x)
    }

    fn infer(&self, b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<Tensor<B>> {
        self.infer_features(b, params, x)
    }

    fn backward(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &VitCache<B>,
        dy: &Tensor<B>,
    ) -> Result<Tensor<B>> {
        Vit::backward(self, b, params, grads, cache, dy)
    }
}
