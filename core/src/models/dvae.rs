//! The OpenAI DALL-E discrete VAE (`dall_e/encoder.py`, `dall_e/decoder.py`,
//! `dall_e/utils.py`), layer for layer and name for name.
//!
//! # Encoder
//! ```text
//! blocks.input            conv 7×7, input_channels → n_hid
//! blocks.group_{g}        g = 1..=group_count, width n_hid · 2^(g-1)
//!     .block_{i}          i = 1..=n_blk_per_group, EncoderBlock(n_in, n_out)
//!     .pool               2×2 max-pool, after every group but the last
//! blocks.output           relu → conv 1×1 (`blocks.output.conv`), → vocab_size
//! ```
//! EncoderBlock: `id_path` = 1×1 conv when `n_in != n_out`, else identity; `res_path` =
//! relu → `conv_1` 3×3 (n_in → n_out/4) → relu → `conv_2` 3×3 → relu → `conv_3` 3×3 →
//! relu → `conv_4` 1×1 (→ n_out); `out = id_path(x) + post_gain · res_path(x)` with
//! `post_gain = 1 / n_layers²`, `n_layers = group_count · n_blk_per_group`.
//!
//! # Decoder
//! ```text
//! blocks.input            conv 1×1, vocab_size → n_init
//! blocks.group_{g}        width n_hid · 2^(group_count-g) (8, 4, 2, 1 × n_hid for 4 groups)
//!     .block_{i}          DecoderBlock(n_in, n_out)
//!     .upsample           nearest ×2, after every group but the last
//! blocks.output           relu → conv 1×1 → 2 · input_channels (logit-Laplace
//!                         means, then log-scales)
//! ```
//! DecoderBlock: as the EncoderBlock with kernels 1, 3, 3, 3 for `conv_1..conv_4`.
//!
//! Convolutions are DALL-E's `Conv2d`: tensors `{name}.w` `[n_out, n_in, k, k]` and
//! `{name}.b` `[n_out]` (e.g. `blocks.group_1.block_1.res_path.conv_1.w`,
//! `blocks.group_2.block_1.id_path.w`, `blocks.output.conv.b`), padding `(k-1)/2`,
//! weights normal with std `1/sqrt(n_in · k²)`, biases zero.
//!
//! The token grid of an image of side `s` is `s / 2^(group_count-1)` (8 for DALL-E).
//!
//! Both halves implement [`Layer`] (forward with cache, backward, inference) — the
//! tokenizer is trained with them; CIM itself only runs them in inference.
//! [`DvaeEncoder::encode_tokens`] and [`DvaeDecoder::decode_tokens`] are the
//! inference paths of the CIM generator.

use crate::backend::{Backend, BinaryOp, Gemm, UnaryOp};
use crate::error::{invalid, shape_err, Result};
use crate::layers::{pview, Conv2d, Conv2dCache, Conv2dConfig, Layer, MaxPool2d, MaxPoolCache, Scope};
use crate::models::conv_head::permute_items;
use crate::models::resnet::{relu, relu_backward_from_output};
use crate::ops;
use crate::params::{Init, ParamTable};
use crate::tensor::{IndexTensor, Tensor};
use alloc::format;
use alloc::vec::Vec;

const OP: &str = "dVAE";

/// `logit_laplace_eps` of DALL-E.
pub const LOGIT_LAPLACE_EPS: f64 = 0.1;

/// Hyper-parameters shared by the encoder and the decoder (DALL-E's attributes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DvaeConfig {
    pub group_count: usize,
    pub n_hid: usize,
    pub n_blk_per_group: usize,
    /// Image channels: encoder input, and half the decoder output.
    pub input_channels: usize,
    pub vocab_size: usize,
    /// Width of the decoder's input convolution.
    pub n_init: usize,
}

impl DvaeConfig {
    /// The released DALL-E dVAE: 4 groups, `n_hid` 256, 2 blocks per group, 8192 codes,
    /// `n_init` 128 (encoder 53,786,240 parameters, decoder 43,829,766). Grid: image / 8.
    pub fn dalle() -> Self {
        DvaeConfig { group_count: 4, n_hid: 256, n_blk_per_group: 2, input_channels: 3, vocab_size: 8192, n_init: 128 }
    }

    /// A CPU-sized tokenizer for 32-px CIM runs: 2 groups (grid = image / 2), `n_hid` 64,
    /// 2 blocks per group, 512 codes, `n_init` 64. A 16-px tokenizer view of a 32-px
    /// image gives the 8×8 grid of patch-4 enhancer tokens. (For a 32-px tokenizer view,
    /// take `group_count: 3`, grid = image / 4.)
    pub fn small() -> Self {
        DvaeConfig { group_count: 2, n_hid: 64, n_blk_per_group: 2, input_channels: 3, vocab_size: 512, n_init: 64 }
    }

    /// `group_count · n_blk_per_group`.
    pub fn n_layers(&self) -> usize {
        self.group_count * self.n_blk_per_group
    }

    /// Image side per token: `2^(group_count - 1)`.
    pub fn downsample(&self) -> usize {
        1 << (self.group_count.max(1) - 1)
    }

    /// The token grid side of an image of side `img` (floor, as the max-pools).
    pub fn grid(&self, img: usize) -> usize {
        img / self.downsample()
    }

    /// The residual scale `1 / n_layers²`.
    pub fn post_gain(&self) -> f64 {
        1.0 / (self.n_layers() * self.n_layers()) as f64
    }

    fn validate(&self) -> Result<()> {
        let c = self;
        if c.group_count == 0
            || c.group_count > 16
            || c.n_blk_per_group == 0
            || c.input_channels == 0
            || c.vocab_size == 0
            || c.n_init == 0
            || c.n_hid == 0
            || !c.n_hid.is_multiple_of(4)
        {
            return invalid(OP, format!("bad configuration {c:?} (sizes must be positive, n_hid a multiple of 4)"));
        }
        Ok(())
    }
}

/// DALL-E's `Conv2d`: `{scope}.w`, `{scope}.b`, padding `(k-1)/2`, normal init with std
/// `1/sqrt(n_in · k²)`, zero bias.
fn dconv(s: &mut Scope<'_>, n_in: usize, n_out: usize, k: usize) -> Result<Conv2d> {
    let init = Init::Normal { std: 1.0 / libm::sqrt((n_in * k * k) as f64) };
    let weight = s.param("w", &[n_out, n_in, k, k], init)?;
    let bias = s.param("b", &[n_out], Init::Zeros)?;
    let pad = (k - 1) / 2;
    let cfg = Conv2dConfig { padding: (pad, pad), init, bias_init: Init::Zeros, ..Conv2dConfig::new(n_in, n_out, k) };
    Ok(Conv2d { weight, bias: Some(bias), cfg })
}

/// The bias handle of a DALL-E convolution (always registered by [`dconv`]).
fn bias_of(conv: &Conv2d) -> Result<&crate::params::Param> {
    conv.bias
        .as_ref()
        .ok_or_else(|| crate::Error::Invalid { op: OP, detail: "a dVAE convolution lacks its bias".into() })
}

/// Which of DALL-E's two residual blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DvaeBlockKind {
    /// `conv_1..conv_4` kernels 3, 3, 3, 1.
    Encoder,
    /// `conv_1..conv_4` kernels 1, 3, 3, 3.
    Decoder,
}

/// An `EncoderBlock` or `DecoderBlock`: `id_path(x) + post_gain · res_path(x)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DvaeBlock {
    pub id_path: Option<Conv2d>,
    /// `conv_1..conv_4`, each preceded by a ReLU.
    pub res_path: [Conv2d; 4],
    pub post_gain: f64,
    pub n_in: usize,
    pub n_out: usize,
}

/// What a block's backward pass needs.
pub struct DvaeBlockCache<B: Backend> {
    /// The block input, kept only when `id_path` is a convolution.
    pub id_path: Option<Conv2dCache<B>>,
    /// The inputs of `conv_1..conv_4` (ReLU outputs).
    pub res_path: Vec<Conv2dCache<B>>,
}

impl DvaeBlock {
    /// Register `{scope}.id_path.*` (when `n_in != n_out`) and `{scope}.res_path.conv_{1..4}.*`.
    pub fn build(s: &mut Scope<'_>, kind: DvaeBlockKind, n_in: usize, n_out: usize, n_layers: usize) -> Result<Self> {
        if n_in == 0 || n_out == 0 || !n_out.is_multiple_of(4) || n_layers == 0 {
            return invalid(
                OP,
                format!("block {n_in} → {n_out} (n_layers {n_layers}): n_out must be a positive multiple of 4"),
            );
        }
        let hid = n_out / 4;
        let id_path = if n_in != n_out { Some(dconv(&mut s.child("id_path"), n_in, n_out, 1)?) } else { None };
        let ks = match kind {
            DvaeBlockKind::Encoder => [3, 3, 3, 1],
            DvaeBlockKind::Decoder => [1, 3, 3, 3],
        };
        let io = [(n_in, hid), (hid, hid), (hid, hid), (hid, n_out)];
        let mut rp = s.child("res_path");
        let mut mk = |i: usize| dconv(&mut rp.child(&format!("conv_{}", i + 1)), io[i].0, io[i].1, ks[i]);
        let res_path = [mk(0)?, mk(1)?, mk(2)?, mk(3)?];
        Ok(DvaeBlock { id_path, res_path, post_gain: 1.0 / (n_layers * n_layers) as f64, n_in, n_out })
    }

    fn check(&self, x: &[usize]) -> Result<()> {
        if x.len() != 4 || x[1] != self.n_in || x.contains(&0) {
            return shape_err(OP, format!("block input {x:?} is not [n, {}, h, w]", self.n_in));
        }
        Ok(())
    }
}

impl<B: Backend> Layer<B> for DvaeBlock {
    type Cache = DvaeBlockCache<B>;

    fn forward_owned(&self, b: &B, params: &B::Buf, x: Tensor<B>) -> Result<(Tensor<B>, DvaeBlockCache<B>)> {
        self.check(x.shape())?;
        let mut res_path = Vec::with_capacity(4);
        let mut h = relu(b, &x)?;
        for conv in &self.res_path {
            let y = conv.infer(b, params, &h)?;
            res_path.push(Conv2dCache { x: h });
            h = y;
            if res_path.len() < 4 {
                h = relu(b, &h)?;
            }
        }
        let (mut out, id_path) = match &self.id_path {
            Some(conv) => (conv.infer(b, params, &x)?, Some(Conv2dCache { x })),
            None => (x, None),
        };
        b.axpy(self.post_gain, h.view(), out.view_mut())?;
        Ok((out, DvaeBlockCache { id_path, res_path }))
    }

    fn forward(&self, b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<(Tensor<B>, DvaeBlockCache<B>)> {
        self.check(x.shape())?;
        self.forward_owned(b, params, x.duplicate(b)?)
    }

    fn infer(&self, b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<Tensor<B>> {
        self.check(x.shape())?;
        let mut h = relu(b, x)?;
        for (i, conv) in self.res_path.iter().enumerate() {
            h = conv.infer(b, params, &h)?;
            if i < 3 {
                h = relu(b, &h)?;
            }
        }
        let mut out = match &self.id_path {
            Some(conv) => conv.infer(b, params, x)?,
            None => x.duplicate(b)?,
        };
        b.axpy(self.post_gain, h.view(), out.view_mut())?;
        Ok(out)
    }

    fn backward(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &DvaeBlockCache<B>,
        dy: &Tensor<B>,
    ) -> Result<Tensor<B>> {
        if cache.res_path.len() != 4 || cache.id_path.is_some() != self.id_path.is_some() {
            return invalid(OP, "block cache does not match the block");
        }
        let mut d = ops::affine(b, dy, self.post_gain, 0.0)?;
        for i in (0..4).rev() {
            let c = &cache.res_path[i];
            let dr = self.res_path[i].backward(b, params, grads, c, &d)?;
            d = relu_backward_from_output(b, &c.x, &dr)?;
        }
        match (&self.id_path, &cache.id_path) {
            (Some(conv), Some(c)) => {
                let did = conv.backward(b, params, grads, c, dy)?;
                b.axpy(1.0, did.view(), d.view_mut())?;
            }
            _ => {
                if dy.shape() != d.shape() {
                    return shape_err(OP, format!("dy {:?} vs block input {:?}", dy.shape(), d.shape()));
                }
                b.axpy(1.0, dy.view(), d.view_mut())?;
            }
        }
        Ok(d)
    }
}

/// Register the groups of blocks: `blocks.group_{g}.block_{i}`.
fn build_groups(
    s: &mut Scope<'_>,
    cfg: &DvaeConfig,
    kind: DvaeBlockKind,
    first_in: usize,
    widths: &[usize],
) -> Result<Vec<Vec<DvaeBlock>>> {
    let mut n_in = first_in;
    let mut groups = Vec::with_capacity(widths.len());
    for (g, &w) in widths.iter().enumerate() {
        let mut gs = s.child(&format!("group_{}", g + 1));
        let mut blocks = Vec::with_capacity(cfg.n_blk_per_group);
        for i in 0..cfg.n_blk_per_group {
            blocks.push(DvaeBlock::build(&mut gs.child(&format!("block_{}", i + 1)), kind, n_in, w, cfg.n_layers())?);
            n_in = w;
        }
        groups.push(blocks);
    }
    Ok(groups)
}

/// The DALL-E encoder: image (already [`map_pixels`]-ed) `[n, c, H, W]` to logits
/// `[n, vocab, H/d, W/d]`, `d = 2^(group_count-1)`.
#[derive(Clone, Debug, PartialEq)]
pub struct DvaeEncoder {
    pub cfg: DvaeConfig,
    pub input: Conv2d,
    pub groups: Vec<Vec<DvaeBlock>>,
    pub pool: MaxPool2d,
    pub output: Conv2d,
}

/// What [`DvaeEncoder`]'s backward pass needs.
pub struct DvaeEncoderCache<B: Backend> {
    /// The image.
    pub input: Conv2dCache<B>,
    /// Every block in order.
    pub blocks: Vec<DvaeBlockCache<B>>,
    /// One per group but the last.
    pub pools: Vec<MaxPoolCache<B>>,
    /// The output ReLU's output (input of `blocks.output.conv`).
    pub output: Conv2dCache<B>,
}

impl DvaeEncoder {
    /// Register under `prefix` (`""` gives DALL-E's `blocks.…` names).
    pub fn new(table: &mut ParamTable, prefix: &str, cfg: DvaeConfig) -> Result<Self> {
        Self::build(&mut Scope::new(table, prefix), cfg)
    }

    /// Register in a scope (fresh or shared).
    pub fn build(s: &mut Scope<'_>, cfg: DvaeConfig) -> Result<Self> {
        cfg.validate()?;
        let mut bs = s.child("blocks");
        let input = dconv(&mut bs.child("input"), cfg.input_channels, cfg.n_hid, 7)?;
        let widths: Vec<usize> = (0..cfg.group_count).map(|g| cfg.n_hid << g).collect();
        let groups = build_groups(&mut bs, &cfg, DvaeBlockKind::Encoder, cfg.n_hid, &widths)?;
        let last = widths[widths.len() - 1];
        let output = dconv(&mut bs.child("output").child("conv"), last, cfg.vocab_size, 1)?;
        Ok(DvaeEncoder { cfg, input, groups, pool: MaxPool2d::new(2, 2, 0)?, output })
    }

    fn check(&self, x: &[usize]) -> Result<()> {
        let d = self.cfg.downsample();
        if x.len() != 4 || x[1] != self.cfg.input_channels || x.contains(&0) || x[2] < d || x[3] < d {
            return shape_err(
                OP,
                format!("encoder input {x:?} is not [n, {}, h, w] with h, w ≥ {d}", self.cfg.input_channels),
            );
        }
        Ok(())
    }

    /// Inference up to the last group (before the output ReLU).
    fn infer_hidden<B: Backend>(&self, b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<Tensor<B>> {
        self.check(x.shape())?;
        let mut h = self.input.infer(b, params, x)?;
        for (g, blocks) in self.groups.iter().enumerate() {
            for blk in blocks {
                h = blk.infer(b, params, &h)?;
            }
            if g + 1 < self.groups.len() {
                h = self.pool.infer(b, params, &h)?;
            }
        }
        Ok(h)
    }

    /// Logits with the vocabulary last, `[n, h, w, vocab]`, without a cache. The output
    /// 1×1 convolution is computed directly in this layout (one batched GEMM), so no
    /// transpose is needed.
    pub fn infer_logits_last<B: Backend>(&self, b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<Tensor<B>> {
        let h = relu(b, &self.infer_hidden(b, params, x)?)?;
        let s = h.shape().to_vec();
        let (n, c, hw, v) = (s[0], s[1], s[2] * s[3], self.cfg.vocab_size);
        let w = pview(b, &self.output.weight, params)?;
        // out[t] = h[t]ᵀ · Wᵀ: [hw, c] · [c, vocab], h[t] stored [c, hw], W stored [vocab, c].
        let g = Gemm {
            batch: n,
            m: hw,
            n: v,
            k: c,
            trans_a: true,
            trans_b: true,
            stride_a: c * hw,
            stride_b: 0,
            stride_c: hw * v,
            alpha: 1.0,
            beta: 0.0,
        };
        let mut out = Tensor::zeros(b, &[n * hw, v])?;
        b.gemm(&g, h.view(), w, out.view_mut())?;
        let bias = pview(b, bias_of(&self.output)?, params)?;
        let mut y = Tensor::zeros(b, &[n, s[2], s[3], v])?;
        b.binary(BinaryOp::Add, out.view(), &[n * hw, v], bias, &[1, v], y.view_mut(), &[n * hw, v])?;
        Ok(y)
    }

    /// The golden tokens: argmax over the vocabulary, `[n, h, w]`.
    pub fn encode_tokens<B: Backend>(&self, b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<IndexTensor<B>> {
        ops::argmax(b, &self.infer_logits_last(b, params, x)?)
    }
}

impl<B: Backend> Layer<B> for DvaeEncoder {
    type Cache = DvaeEncoderCache<B>;

    fn forward_owned(&self, b: &B, params: &B::Buf, x: Tensor<B>) -> Result<(Tensor<B>, DvaeEncoderCache<B>)> {
        self.check(x.shape())?;
        let mut h = self.input.infer(b, params, &x)?;
        let mut blocks = Vec::new();
        let mut pools = Vec::new();
        for (g, group) in self.groups.iter().enumerate() {
            for blk in group {
                let (y, c) = blk.forward_owned(b, params, h)?;
                blocks.push(c);
                h = y;
            }
            if g + 1 < self.groups.len() {
                let (y, c) = self.pool.forward(b, params, &h)?;
                pools.push(c);
                h = y;
            }
        }
        let r = relu(b, &h)?;
        let logits = self.output.infer(b, params, &r)?;
        Ok((logits, DvaeEncoderCache { input: Conv2dCache { x }, blocks, pools, output: Conv2dCache { x: r } }))
    }

    fn forward(&self, b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<(Tensor<B>, DvaeEncoderCache<B>)> {
        self.check(x.shape())?;
        self.forward_owned(b, params, x.duplicate(b)?)
    }

    fn infer(&self, b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<Tensor<B>> {
        let h = relu(b, &self.infer_hidden(b, params, x)?)?;
        self.output.infer(b, params, &h)
    }

    fn backward(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &DvaeEncoderCache<B>,
        dy: &Tensor<B>,
    ) -> Result<Tensor<B>> {
        let n_blocks: usize = self.groups.iter().map(Vec::len).sum();
        if cache.blocks.len() != n_blocks || cache.pools.len() + 1 != self.groups.len() {
            return invalid(OP, "encoder cache does not match the encoder");
        }
        let dr = self.output.backward(b, params, grads, &cache.output, dy)?;
        let mut d = relu_backward_from_output(b, &cache.output.x, &dr)?;
        let mut k = n_blocks;
        for (g, group) in self.groups.iter().enumerate().rev() {
            if g + 1 < self.groups.len() {
                d = self.pool.backward(b, params, grads, &cache.pools[g], &d)?;
            }
            for blk in group.iter().rev() {
                k -= 1;
                d = blk.backward(b, params, grads, &cache.blocks[k], &d)?;
            }
        }
        self.input.backward(b, params, grads, &cache.input, &d)
    }
}

/// The DALL-E decoder: codes `[n, vocab, h, w]` (one-hot or probabilities) to
/// `[n, 2·c, h·d, w·d]` (logit-Laplace means in channels `0..c`, log-scales after).
#[derive(Clone, Debug, PartialEq)]
pub struct DvaeDecoder {
    pub cfg: DvaeConfig,
    pub input: Conv2d,
    pub groups: Vec<Vec<DvaeBlock>>,
    pub output: Conv2d,
}

/// What [`DvaeDecoder`]'s backward pass needs.
pub struct DvaeDecoderCache<B: Backend> {
    /// The decoder input (codes).
    pub input: Conv2dCache<B>,
    pub blocks: Vec<DvaeBlockCache<B>>,
    /// The output ReLU's output.
    pub output: Conv2dCache<B>,
}

impl DvaeDecoder {
    /// Register under `prefix` (`""` gives DALL-E's `blocks.…` names).
    pub fn new(table: &mut ParamTable, prefix: &str, cfg: DvaeConfig) -> Result<Self> {
        Self::build(&mut Scope::new(table, prefix), cfg)
    }

    /// Register in a scope (fresh or shared).
    pub fn build(s: &mut Scope<'_>, cfg: DvaeConfig) -> Result<Self> {
        cfg.validate()?;
        let mut bs = s.child("blocks");
        let input = dconv(&mut bs.child("input"), cfg.vocab_size, cfg.n_init, 1)?;
        let widths: Vec<usize> = (0..cfg.group_count).map(|g| cfg.n_hid << (cfg.group_count - 1 - g)).collect();
        let groups = build_groups(&mut bs, &cfg, DvaeBlockKind::Decoder, cfg.n_init, &widths)?;
        let output = dconv(&mut bs.child("output").child("conv"), cfg.n_hid, 2 * cfg.input_channels, 1)?;
        Ok(DvaeDecoder { cfg, input, groups, output })
    }

    fn check(&self, z: &[usize]) -> Result<()> {
        if z.len() != 4 || z[1] != self.cfg.vocab_size || z.contains(&0) {
            return shape_err(OP, format!("decoder input {z:?} is not [n, {}, h, w]", self.cfg.vocab_size));
        }
        Ok(())
    }

    /// Inference from the output of `blocks.input` on.
    fn infer_from_hidden<B: Backend>(&self, b: &B, params: &B::Buf, mut h: Tensor<B>) -> Result<Tensor<B>> {
        for (g, blocks) in self.groups.iter().enumerate() {
            for blk in blocks {
                h = blk.infer(b, params, &h)?;
            }
            if g + 1 < self.groups.len() {
                h = ops::upsample_nearest(b, &h, 2)?;
            }
        }
        let r = relu(b, &h)?;
        self.output.infer(b, params, &r)
    }

    /// Decode token ids `[n, h, w]` (ids below `vocab_size`) to `[n, 2·c, H, W]`, without a
    /// cache. Equal to `infer(one_hot(tokens))`, but the one-hot input (`vocab` channels)
    /// is never built: the 1×1 input convolution of a one-hot vector is a column of its
    /// weight, so the rows of `Wᵀ` are gathered per token (`Wᵀ` by a permutation of the
    /// `n_init · vocab` weights, the result back to NCHW by a permutation per image).
    pub fn decode_tokens<B: Backend>(&self, b: &B, params: &B::Buf, tokens: &IndexTensor<B>) -> Result<Tensor<B>> {
        let s = tokens.shape();
        if s.len() != 3 || s.contains(&0) {
            return shape_err(OP, format!("tokens {s:?} are not [n, h, w]"));
        }
        let (v, c) = (self.cfg.vocab_size, self.cfg.n_init);
        if self.input.weight.len != c * v {
            return invalid(OP, "decoder input convolution does not match the configuration");
        }
        let mut w = Tensor::zeros(b, &[c, v])?;
        b.copy(pview(b, &self.input.weight, params)?, w.view_mut())?;
        let wt = transpose_items(b, &w, 1, c, v)?; // [vocab, n_init]
        let rows = ops::gather_rows(b, &wt, tokens)?; // [n, h, w, n_init]
        let nchw = nhwc_to_nchw(b, &rows)?;
        let bias = pview(b, bias_of(&self.input)?, params)?;
        let shape = [s[0], c, s[1], s[2]];
        let mut h = Tensor::zeros(b, &shape)?;
        b.binary(BinaryOp::Add, nchw.view(), &shape, bias, &[1, c, 1, 1], h.view_mut(), &shape)?;
        self.infer_from_hidden(b, params, h)
    }
}

impl<B: Backend> Layer<B> for DvaeDecoder {
    type Cache = DvaeDecoderCache<B>;

    fn forward_owned(&self, b: &B, params: &B::Buf, z: Tensor<B>) -> Result<(Tensor<B>, DvaeDecoderCache<B>)> {
        self.check(z.shape())?;
        let mut h = self.input.infer(b, params, &z)?;
        let mut blocks = Vec::new();
        for (g, group) in self.groups.iter().enumerate() {
            for blk in group {
                let (y, c) = blk.forward_owned(b, params, h)?;
                blocks.push(c);
                h = y;
            }
            if g + 1 < self.groups.len() {
                h = ops::upsample_nearest(b, &h, 2)?;
            }
        }
        let r = relu(b, &h)?;
        let out = self.output.infer(b, params, &r)?;
        Ok((out, DvaeDecoderCache { input: Conv2dCache { x: z }, blocks, output: Conv2dCache { x: r } }))
    }

    fn forward(&self, b: &B, params: &B::Buf, z: &Tensor<B>) -> Result<(Tensor<B>, DvaeDecoderCache<B>)> {
        self.check(z.shape())?;
        self.forward_owned(b, params, z.duplicate(b)?)
    }

    fn infer(&self, b: &B, params: &B::Buf, z: &Tensor<B>) -> Result<Tensor<B>> {
        self.check(z.shape())?;
        let h = self.input.infer(b, params, z)?;
        self.infer_from_hidden(b, params, h)
    }

    fn backward(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &DvaeDecoderCache<B>,
        dy: &Tensor<B>,
    ) -> Result<Tensor<B>> {
        let n_blocks: usize = self.groups.iter().map(Vec::len).sum();
        if cache.blocks.len() != n_blocks {
            return invalid(OP, "decoder cache does not match the decoder");
        }
        let dr = self.output.backward(b, params, grads, &cache.output, dy)?;
        let mut d = relu_backward_from_output(b, &cache.output.x, &dr)?;
        let mut k = n_blocks;
        for (g, group) in self.groups.iter().enumerate().rev() {
            if g + 1 < self.groups.len() {
                let s = d.shape().to_vec();
                if s.len() != 4 || s[2] % 2 != 0 || s[3] % 2 != 0 {
                    return shape_err(OP, format!("gradient {s:?} does not come from a ×2 upsample"));
                }
                d = ops::upsample_nearest_backward(b, &[s[0], s[1], s[2] / 2, s[3] / 2], &d, 2)?;
            }
            for blk in group.iter().rev() {
                k -= 1;
                d = blk.backward(b, params, grads, &cache.blocks[k], &d)?;
            }
        }
        self.input.backward(b, params, grads, &cache.input, &d)
    }
}

// ---- layout helpers -------------------------------------------------------------------------

/// Transpose each of `items` `[r, c]` matrices of `x` to `[c, r]` (a permutation gather).
fn transpose_items<B: Backend>(b: &B, x: &Tensor<B>, items: usize, r: usize, c: usize) -> Result<Tensor<B>> {
    if (r * c) > u32::MAX as usize {
        return invalid(OP, format!("{r}×{c} matrices exceed the u32 index range"));
    }
    let mut perm = Vec::with_capacity(r * c);
    for j in 0..c {
        for i in 0..r {
            perm.push((i * c + j) as u32);
        }
    }
    permute_items(b, x, items, &perm, &[items * c, r])
}

/// `[n, c, h, w] → [n, h, w, c]` (channels last), by a permutation gather per image.
pub fn nchw_to_nhwc<B: Backend>(b: &B, x: &Tensor<B>) -> Result<Tensor<B>> {
    let s = x.shape();
    if s.len() != 4 || s.contains(&0) {
        return shape_err("nchw_to_nhwc", format!("input {s:?} is not [n, c, h, w]"));
    }
    transpose_items(b, x, s[0], s[1], s[2] * s[3])?.reshape(&[s[0], s[2], s[3], s[1]])
}

/// `[n, h, w, c] → [n, c, h, w]` (the inverse and the adjoint of [`nchw_to_nhwc`]).
pub fn nhwc_to_nchw<B: Backend>(b: &B, x: &Tensor<B>) -> Result<Tensor<B>> {
    let s = x.shape();
    if s.len() != 4 || s.contains(&0) {
        return shape_err("nhwc_to_nchw", format!("input {s:?} is not [n, h, w, c]"));
    }
    transpose_items(b, x, s[0], s[1] * s[2], s[3])?.reshape(&[s[0], s[3], s[1], s[2]])
}

/// One-hot codes `[n, vocab, h, w]` from token ids `[n, h, w]`, built on the host (one
/// download of the ids, one upload of `n · vocab · h · w` values: meant for small
/// vocabularies and tests; [`DvaeDecoder::decode_tokens`] avoids it).
pub fn one_hot<B: Backend>(b: &B, tokens: &IndexTensor<B>, vocab: usize) -> Result<Tensor<B>> {
    let s = tokens.shape();
    if s.len() != 3 || s.contains(&0) || vocab == 0 {
        return shape_err("one_hot", format!("tokens {s:?} are not [n, h, w] (vocab {vocab})"));
    }
    let ids = tokens.to_vec(b)?;
    let hw = s[1] * s[2];
    let mut host = alloc::vec![B::E::zero(); s[0] * vocab * hw];
    for (i, &t) in ids.iter().enumerate() {
        let t = t as usize;
        if t >= vocab {
            return invalid("one_hot", format!("token {t} out of range 0..{vocab}"));
        }
        let (n, p) = (i / hw, i % hw);
        host[(n * vocab + t) * hw + p] = B::E::one();
    }
    Tensor::from_slice(b, &[s[0], vocab, s[1], s[2]], &host)
}

use num_traits::{One, Zero};

// ---- pixel mapping ------------------------------------------------------------------------

/// DALL-E's `map_pixels`: `(1 - 2ε) · x + ε = 0.8 x + 0.1` (pixels in `[0, 1]`).
pub fn map_pixels<B: Backend>(b: &B, x: &Tensor<B>) -> Result<Tensor<B>> {
    ops::affine(b, x, 1.0 - 2.0 * LOGIT_LAPLACE_EPS, LOGIT_LAPLACE_EPS)
}

/// DALL-E's `unmap_pixels`: `clamp((x - ε) / (1 - 2ε), 0, 1)`.
pub fn unmap_pixels<B: Backend>(b: &B, x: &Tensor<B>) -> Result<Tensor<B>> {
    let scale = 1.0 / (1.0 - 2.0 * LOGIT_LAPLACE_EPS);
    let y = ops::affine(b, x, scale, -LOGIT_LAPLACE_EPS * scale)?;
    let ones = alloc::vec![1usize; x.rank()];
    let lo = Tensor::full(b, &ones, B::E::zero())?;
    let hi = Tensor::full(b, &ones, B::E::one())?;
    ops::binary(b, BinaryOp::Min, &ops::binary(b, BinaryOp::Max, &y, &lo)?, &hi)
}

/// The reconstruction of a decoder output `[n, 2c, H, W]`: `unmap_pixels(sigmoid(out[:, :c]))`.
pub fn reconstruct<B: Backend>(b: &B, out: &Tensor<B>) -> Result<Tensor<B>> {
    let s = out.shape();
    if s.len() != 4 || s.contains(&0) || !s[1].is_multiple_of(2) {
        return shape_err("reconstruct", format!("decoder output {s:?} is not [n, 2c, h, w]"));
    }
    let (n, c, hw) = (s[0], s[1] / 2, s[2] * s[3]);
    let mut means = Tensor::zeros(b, &[n, c, s[2], s[3]])?;
    for i in 0..n {
        let src = crate::tensor::View { buf: out.buf(), offset: i * 2 * c * hw, len: c * hw };
        let mut dst = means.view_mut();
        dst.offset = i * c * hw;
        dst.len = c * hw;
        b.copy(src, dst)?;
    }
    unmap_pixels(b, &ops::unary(b, UnaryOp::Sigmoid, &means)?)
}
