//! Multi-head self-attention in timm's layout (`Attention`: `qkv`, `proj`).
//!
//! `x: [batch, tokens, dim]`; `qkv = x · Wqkvᵀ + b` has rows laid out `[3, heads,
//! head_dim]` (timm's `reshape(B, N, 3, H, Dh).permute(2, 0, 3, 1, 4)`); per head,
//! `attn = softmax(q · kᵀ · head_dim^-½ + bias)`, `out = attn · v`; heads are merged
//! back to `[batch, tokens, dim]` and projected by `proj`.
//!
//! The trait has no permute, so the head split and merge move rows of `head_dim`
//! elements with `gather_rows` and index tables computed on the host; the backward
//! pass gathers with the inverse permutations. Exact, and the same on every backend.

use super::{check_nonempty, check_same, produce, sub, sub_mut, sum_axis, Layer, Linear, LinearCache, Scope};
use crate::backend::{Backend, BinaryOp, Gemm};
use crate::error::{invalid, shape_err, Result};
use crate::params::{Init, ParamTable};
use crate::tensor::{IndexTensor, Tensor, View};
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

const OP: &str = "Attention";

/// Multi-head self-attention: `{prefix}.qkv.weight: [3·dim, dim]`, `{prefix}.qkv.bias`
/// (optional, as timm's `qkv_bias`), `{prefix}.proj.weight: [dim, dim]`,
/// `{prefix}.proj.bias`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    pub dim: usize,
    pub heads: usize,
}

/// What the backward pass needs.
pub struct AttentionCache<B: Backend> {
    /// Holds the input `x`.
    pub qkv: LinearCache<B>,
    /// `q`, `k`, `v` split into heads: `[3, batch, heads, tokens, head_dim]`.
    pub qkv_heads: Tensor<B>,
    /// Attention probabilities `[batch, heads, tokens, tokens]`.
    pub probs: Tensor<B>,
    /// Holds the merged attention output `[batch, tokens, dim]`.
    pub proj: LinearCache<B>,
    /// The shape of the additive bias given to the forward pass, if any.
    pub bias_shape: Option<Vec<usize>>,
    perm: HeadPerm<B>,
}

/// Sizes of one attention call.
#[derive(Clone, Copy)]
struct Geom {
    batch: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
}

impl Geom {
    /// Elements of each of `q`, `k`, `v`.
    fn qkv_len(&self) -> usize {
        self.batch * self.heads * self.tokens * self.head_dim
    }
    /// `[batch, heads, tokens, tokens]`.
    fn scores(&self) -> [usize; 4] {
        [self.batch, self.heads, self.tokens, self.tokens]
    }
    /// `[batch, heads, tokens, head_dim]`.
    fn per_head(&self) -> [usize; 4] {
        [self.batch, self.heads, self.tokens, self.head_dim]
    }
    /// `[batch, tokens, dim]`.
    fn merged(&self) -> [usize; 3] {
        [self.batch, self.tokens, self.heads * self.head_dim]
    }
    /// Whether a (validated) bias of this shape is shared by the whole batch.
    fn bias_broadcasts(&self, bias: &[usize]) -> bool {
        bias.len() == 3 || bias[0] == 1
    }
    fn scale(&self) -> f64 {
        1.0 / libm::sqrt(self.head_dim as f64)
    }
    /// A batched GEMM over all `(batch, head)` pairs with packed operands.
    fn gemm(&self, m: usize, n: usize, k: usize) -> Gemm {
        let batch = self.batch * self.heads;
        Gemm { batch, stride_a: m * k, stride_b: k * n, stride_c: m * n, ..Gemm::new(m, n, k) }
    }
}

/// Row permutations (rows of `head_dim`) between the token-major and head-major layouts.
struct HeadPerm<B: Backend> {
    /// `qkv [batch, tokens, 3, heads]` → `[3, batch, heads, tokens]`.
    split: IndexTensor<B>,
    /// The inverse of `split`.
    unsplit: IndexTensor<B>,
    /// `[batch, heads, tokens]` → `[batch, tokens, heads]`.
    merge: IndexTensor<B>,
    /// The inverse of `merge`.
    unmerge: IndexTensor<B>,
}

impl<B: Backend> HeadPerm<B> {
    fn new(b: &B, g: &Geom) -> Result<Self> {
        let (nb, nt, nh) = (g.batch, g.tokens, g.heads);
        let rows = nb * nt * 3 * nh;
        if u32::try_from(rows).is_err() {
            return invalid(OP, format!("{rows} head rows exceed the u32 index range"));
        }
        let (mut split, mut unsplit) = (vec![0u32; rows], vec![0u32; rows]);
        let (mut merge, mut unmerge) = (vec![0u32; rows / 3], vec![0u32; rows / 3]);
        for bi in 0..nb {
            for t in 0..nt {
                for h in 0..nh {
                    for s in 0..3 {
                        let token_major = ((bi * nt + t) * 3 + s) * nh + h;
                        let head_major = ((s * nb + bi) * nh + h) * nt + t;
                        split[head_major] = token_major as u32;
                        unsplit[token_major] = head_major as u32;
                    }
                    let token_major = (bi * nt + t) * nh + h;
                    let head_major = (bi * nh + h) * nt + t;
                    merge[token_major] = head_major as u32;
                    unmerge[head_major] = token_major as u32;
                }
            }
        }
        let up = |v: &[u32]| IndexTensor::from_slice(b, &[v.len()], v);
        Ok(HeadPerm { split: up(&split)?, unsplit: up(&unsplit)?, merge: up(&merge)?, unmerge: up(&unmerge)? })
    }
}

/// What [`Attention::attend`] produces.
struct Attended<B: Backend> {
    /// The merged attention output `[batch, tokens, dim]`, before `proj`.
    merged: Tensor<B>,
    qkv_heads: Tensor<B>,
    probs: Tensor<B>,
    perm: HeadPerm<B>,
}

/// `out[i] = src[ids[i]]` over rows of `d` elements, shaped `shape`.
fn permute_rows<B: Backend>(
    b: &B,
    d: usize,
    src: View<'_, B::Buf>,
    ids: &IndexTensor<B>,
    shape: &[usize],
) -> Result<Tensor<B>> {
    produce(b, shape, |out| b.gather_rows(d, src, ids.view(), out))
}

impl Attention {
    /// Register `{prefix}.qkv.*` and `{prefix}.proj.*` (weights truncated normal with
    /// std 0.02, biases zeros). `dim` must be a multiple of `heads`.
    pub fn new(table: &mut ParamTable, prefix: &str, dim: usize, heads: usize, qkv_bias: bool) -> Result<Self> {
        Self::build(&mut Scope::new(table, prefix), dim, heads, qkv_bias)
    }

    /// Share the tensors registered under `existing`.
    pub fn shared(
        table: &mut ParamTable,
        prefix: &str,
        existing: &str,
        dim: usize,
        heads: usize,
        qkv_bias: bool,
    ) -> Result<Self> {
        Self::build(&mut Scope::shared(table, prefix, existing), dim, heads, qkv_bias)
    }

    /// Register in a scope (fresh or shared).
    pub fn build(s: &mut Scope<'_>, dim: usize, heads: usize, qkv_bias: bool) -> Result<Self> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            return invalid(OP, format!("dim {dim} is not a positive multiple of heads {heads}"));
        }
        Ok(Attention {
            qkv: Linear::build(&mut s.child("qkv"), dim, 3 * dim, qkv_bias, Init::TIMM)?,
            proj: Linear::build(&mut s.child("proj"), dim, dim, true, Init::TIMM)?,
            dim,
            heads,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.dim / self.heads
    }

    /// Validate `x` (and the bias) and return the sizes.
    fn geom(&self, x: &[usize], bias: Option<&[usize]>) -> Result<Geom> {
        check_nonempty(OP, x, 3)?;
        if x.len() != 3 || x[2] != self.dim {
            return shape_err(OP, format!("input {x:?} is not [batch, tokens, {}]", self.dim));
        }
        let g = Geom { batch: x[0], tokens: x[1], heads: self.heads, head_dim: self.head_dim() };
        if let Some(bias) = bias {
            let s = g.scores();
            let one = [1, s[1], s[2], s[3]];
            if bias != &s[1..] && bias != one && bias != s {
                return shape_err(OP, format!("attention bias {bias:?} is none of {:?}, {one:?}, {s:?}", &s[1..]));
            }
        }
        Ok(g)
    }

    /// From the `qkv` output to the merged attention output; also returns the split
    /// heads, the probabilities and the permutations.
    fn attend<B: Backend>(&self, b: &B, g: &Geom, qkv: &Tensor<B>, bias: Option<&Tensor<B>>) -> Result<Attended<B>> {
        let perm = HeadPerm::new(b, g)?;
        let (l, n, hd) = (g.qkv_len(), g.tokens, g.head_dim);
        let heads = permute_rows(b, hd, qkv.view(), &perm.split, &[3, g.batch, g.heads, n, hd])?;
        let (q, k, v) = (sub(heads.buf(), 0, l), sub(heads.buf(), l, l), sub(heads.buf(), 2 * l, l));
        let shape = g.scores();
        // scores = q · kᵀ · scale (+ bias).
        let qk = Gemm { trans_b: true, alpha: g.scale(), ..g.gemm(n, n, hd) };
        let mut scores = produce(b, &shape, |s| b.gemm(&qk, q, k, s))?;
        if let Some(bias) = bias {
            let bias_shape = [if g.bias_broadcasts(bias.shape()) { 1 } else { g.batch }, g.heads, n, n];
            scores = produce(b, &shape, |out| {
                b.binary(BinaryOp::Add, scores.view(), &shape, bias.view(), &bias_shape, out, &shape)
            })?;
        }
        let probs = produce(b, &shape, |p| b.softmax(g.batch * g.heads * n, n, scores.view(), p))?;
        drop(scores);
        let out = produce(b, &g.per_head(), |o| b.gemm(&g.gemm(n, hd, n), probs.view(), v, o))?;
        let merged = permute_rows(b, hd, out.view(), &perm.merge, &g.merged())?;
        Ok(Attended { merged, qkv_heads: heads, probs, perm })
    }

    /// Forward pass with an optional additive attention bias, `[heads, tokens, tokens]`
    /// or `[1, heads, tokens, tokens]` (broadcast over the batch) or `[batch, heads,
    /// tokens, tokens]`, added to the scaled scores before the softmax. Moves `x` into
    /// the cache.
    pub fn forward_biased<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        x: Tensor<B>,
        bias: Option<&Tensor<B>>,
    ) -> Result<(Tensor<B>, AttentionCache<B>)> {
        let g = self.geom(x.shape(), bias.map(|t| t.shape()))?;
        let (qkv_out, qkv) = self.qkv.forward_owned(b, params, x)?;
        let Attended { merged, qkv_heads, probs, perm } = self.attend(b, &g, &qkv_out, bias)?;
        drop(qkv_out);
        let (y, proj) = self.proj.forward_owned(b, params, merged)?;
        let bias_shape = bias.map(|t| t.shape().to_vec());
        Ok((y, AttentionCache { qkv, qkv_heads, probs, proj, bias_shape, perm }))
    }

    /// Inference with an optional additive attention bias; no cache.
    pub fn infer_biased<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        x: &Tensor<B>,
        bias: Option<&Tensor<B>>,
    ) -> Result<Tensor<B>> {
        let g = self.geom(x.shape(), bias.map(|t| t.shape()))?;
        let qkv_out = self.qkv.infer(b, params, x)?;
        let merged = self.attend(b, &g, &qkv_out, bias)?.merged;
        self.proj.infer(b, params, &merged)
    }

    /// Backward pass: returns `dx` and, when the forward pass had a bias, its gradient
    /// (same shape as the bias); accumulates the parameter gradients into `grads`.
    pub fn backward_biased<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &AttentionCache<B>,
        dy: &Tensor<B>,
    ) -> Result<(Tensor<B>, Option<Tensor<B>>)> {
        let x_shape = cache.qkv.x.shape();
        let g = self.geom(x_shape, cache.bias_shape.as_deref())?;
        check_same(OP, "dy", dy.shape(), x_shape)?;
        let (l, n, hd) = (g.qkv_len(), g.tokens, g.head_dim);
        let shape = g.scores();
        let perm = &cache.perm;
        let dmerged = self.proj.backward(b, params, grads, &cache.proj, dy)?;
        let dout = permute_rows(b, hd, dmerged.view(), &perm.unmerge, &g.per_head())?;
        drop(dmerged);
        let heads = cache.qkv_heads.buf();
        let (q, k, v) = (sub(heads, 0, l), sub(heads, l, l), sub(heads, 2 * l, l));
        let probs = cache.probs.view();
        // dprobs = dout · vᵀ; dscores = softmax'(dprobs).
        let dprobs = produce(b, &shape, |d| b.gemm(&Gemm { trans_b: true, ..g.gemm(n, n, hd) }, dout.view(), v, d))?;
        let dscores = produce(b, &shape, |d| b.softmax_backward(g.batch * g.heads * n, n, probs, dprobs.view(), d))?;
        drop(dprobs);
        let ds = dscores.view();
        let mut dheads = Tensor::zeros(b, &[3, g.batch, g.heads, n, hd])?;
        let dbuf = dheads.view_mut().buf;
        // dq = scale · ds · k; dk = scale · dsᵀ · q; dv = probsᵀ · dout.
        let alpha = g.scale();
        b.gemm(&Gemm { alpha, ..g.gemm(n, hd, n) }, ds, k, sub_mut(dbuf, 0, l))?;
        b.gemm(&Gemm { alpha, trans_a: true, ..g.gemm(n, hd, n) }, ds, q, sub_mut(dbuf, l, l))?;
        b.gemm(&Gemm { trans_a: true, ..g.gemm(n, hd, n) }, probs, dout.view(), sub_mut(dbuf, 2 * l, l))?;
        drop(dout);
        let dqkv = permute_rows(b, hd, dheads.view(), &perm.unsplit, &[g.batch, n, 3 * self.dim])?;
        drop(dheads);
        let dx = self.qkv.backward(b, params, grads, &cache.qkv, &dqkv)?;
        let dbias = match cache.bias_shape.as_deref() {
            None => None,
            Some(s) if g.bias_broadcasts(s) => Some(sum_axis(b, 1, g.batch, g.heads * n * n, ds)?.reshape(s)?),
            Some(_) => Some(dscores),
        };
        Ok((dx, dbias))
    }
}

impl<B: Backend> Layer<B> for Attention {
    type Cache = AttentionCache<B>;

    fn forward_owned(&self, b: &B, params: &B::Buf, x: Tensor<B>) -> Result<(Tensor<B>, AttentionCache<B>)> {
        self.forward_biased(b, params, x, None)
    }

    fn infer(&self, b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<Tensor<B>> {
        self.infer_biased(b, params, x, None)
    }

    /// Drops the bias gradient; use [`Attention::backward_biased`] to get it.
    fn backward(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &AttentionCache<B>,
        dy: &Tensor<B>,
    ) -> Result<Tensor<B>> {
        Ok(self.backward_biased(b, params, grads, cache, dy)?.0)
    }
}
