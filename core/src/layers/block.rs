//! timm's pre-norm ViT `Block`: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.

use super::{
    add_into, residual_add, Attention, AttentionCache, Layer, LayerNorm, LayerNormCache, Mlp, MlpCache, Scope,
};
use crate::backend::Backend;
use crate::error::Result;
use crate::params::ParamTable;
use crate::tensor::Tensor;

/// LayerNorm epsilon of timm's ViT blocks.
const EPS: f64 = 1e-6;

/// A transformer block: `{prefix}.norm1.*`, `{prefix}.attn.*`, `{prefix}.norm2.*`,
/// `{prefix}.mlp.*`, on `[batch, tokens, dim]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
}

/// The caches of the four sub-layers (`norm1` holds the block input, `norm2` the
/// input of the second residual branch).
pub struct BlockCache<B: Backend> {
    pub norm1: LayerNormCache<B>,
    pub attn: AttentionCache<B>,
    pub norm2: LayerNormCache<B>,
    pub mlp: MlpCache<B>,
}

impl Block {
    /// Register a block of width `dim` with `heads` heads and an MLP of
    /// `floor(mlp_ratio · dim)` hidden units (timm: 4.0), LayerNorm eps `1e-6`.
    pub fn new(
        table: &mut ParamTable,
        prefix: &str,
        dim: usize,
        heads: usize,
        mlp_ratio: f64,
        qkv_bias: bool,
    ) -> Result<Self> {
        Self::build(&mut Scope::new(table, prefix), dim, heads, mlp_ratio, qkv_bias)
    }

    /// Share the tensors registered under `existing`.
    pub fn shared(
        table: &mut ParamTable,
        prefix: &str,
        existing: &str,
        dim: usize,
        heads: usize,
        mlp_ratio: f64,
        qkv_bias: bool,
    ) -> Result<Self> {
        Self::build(&mut Scope::shared(table, prefix, existing), dim, heads, mlp_ratio, qkv_bias)
    }

    /// Register in a scope (fresh or shared).
    pub fn build(s: &mut Scope<'_>, dim: usize, heads: usize, mlp_ratio: f64, qkv_bias: bool) -> Result<Self> {
        let hidden = (dim as f64 * mlp_ratio) as usize;
        Ok(Block {
            norm1: LayerNorm::build(&mut s.child("norm1"), dim, EPS)?,
            attn: Attention::build(&mut s.child("attn"), dim, heads, qkv_bias)?,
            norm2: LayerNorm::build(&mut s.child("norm2"), dim, EPS)?,
            mlp: Mlp::build(&mut s.child("mlp"), dim, hidden)?,
        })
    }

    /// Forward pass with an optional additive attention bias (see
    /// [`Attention::forward_biased`]). Moves `x` into the cache.
    pub fn forward_biased<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        x: Tensor<B>,
        bias: Option<&Tensor<B>>,
    ) -> Result<(Tensor<B>, BlockCache<B>)> {
        let (h, norm1) = self.norm1.forward_owned(b, params, x)?;
        let (mut x2, attn) = self.attn.forward_biased(b, params, h, bias)?;
        add_into(b, &mut x2, &norm1.x)?;
        let (h2, norm2) = self.norm2.forward_owned(b, params, x2)?;
        let (mut y, mlp) = self.mlp.forward_owned(b, params, h2)?;
        add_into(b, &mut y, &norm2.x)?;
        Ok((y, BlockCache { norm1, attn, norm2, mlp }))
    }

    /// Inference with an optional additive attention bias; no cache.
    pub fn infer_biased<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        x: &Tensor<B>,
        bias: Option<&Tensor<B>>,
    ) -> Result<Tensor<B>> {
        let h = self.norm1.infer(b, params, x)?;
        let x2 = residual_add(b, x, &self.attn.infer_biased(b, params, &h, bias)?)?;
        let h2 = self.norm2.infer(b, params, &x2)?;
        let mut y = self.mlp.infer(b, params, &h2)?;
        add_into(b, &mut y, &x2)?;
        Ok(y)
    }

    /// Backward pass: returns `dx` and the gradient of the attention bias when one was
    /// given; accumulates the parameter gradients into `grads`.
    pub fn backward_biased<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &BlockCache<B>,
        dy: &Tensor<B>,
    ) -> Result<(Tensor<B>, Option<Tensor<B>>)> {
        let dh2 = self.mlp.backward(b, params, grads, &cache.mlp, dy)?;
        let mut dx2 = self.norm2.backward(b, params, grads, &cache.norm2, &dh2)?;
        add_into(b, &mut dx2, dy)?;
        let (dh, dbias) = self.attn.backward_biased(b, params, grads, &cache.attn, &dx2)?;
        let mut dx = self.norm1.backward(b, params, grads, &cache.norm1, &dh)?;
        add_into(b, &mut dx, &dx2)?;
        Ok((dx, dbias))
    }
}

impl<B: Backend> Layer<B> for Block {
    type Cache = BlockCache<B>;

    fn forward_owned(&self, b: &B, params: &B::Buf, x: Tensor<B>) -> Result<(Tensor<B>, BlockCache<B>)> {
        self.forward_biased(b, params, x, None)
    }

    fn infer(&self, b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<Tensor<B>> {
        self.infer_biased(b, params, x, None)
    }

    /// Drops the bias gradient; use [`Block::backward_biased`] to get it.
    fn backward(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &BlockCache<B>,
        dy: &Tensor<B>,
    ) -> Result<Tensor<B>> {
        Ok(self.backward_biased(b, params, grads, cache, dy)?.0)
    }
}
