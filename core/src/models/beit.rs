//! The small BEiT of the CIM generator (Bao et al. 2021; Fang et al. 2023, §2.1, A.3):
//! a ViT of 4–6 blocks that sees the patch embeddings with a set of positions replaced
//! by a learned `[MASK]` embedding and predicts the tokenizer's visual token at every
//! patch position.
//!
//! ```text
//! image ─ patch_embed ─ x·(1 − m) + mask_token·m ─ [cls; ·] + pos_embed ─ blocks ─ norm
//!       ─ patch tokens (class token dropped) ─ lm_head ─ logits [B, N, vocab]
//! ```
//! Logits are returned for all `N` patch positions; the MIM loss is the cross-entropy
//! at the masked positions (weight the per-token loss by the mask), and the corrupted
//! tokens are sampled from the logits at those positions.
//!
//! # Names
//! As BEiT's `VisionTransformerForMaskedImageModeling`: `cls_token`, `mask_token`
//! `[1, 1, D]`, `pos_embed`, `patch_embed.proj.*`, `blocks.{i}.*`, `norm.*`,
//! `lm_head.weight [vocab, D]`, `lm_head.bias`. `mask_token` and `lm_head.weight` are
//! truncated normal with std 0.02, like the other weights (see `vit`). BEiT also
//! rescales each block's `attn.proj.weight` and `mlp.fc2.weight` by `1/sqrt(2·(i+1))`
//! at initialization; that is not done here (the blocks are timm's ViT blocks).
//!
//! # Weight sharing (CIM, Table 5)
//! [`Beit::new_shared`] registers the patch projection (`patch_embed.proj.*`) and the
//! first two blocks (`blocks.0.*`, `blocks.1.*`) as aliases of the enhancer's tensors:
//! both models read the same values, and both backward passes accumulate into the same
//! gradient range. Everything else (class token, mask token, position embedding, the
//! other blocks, the norm, the head) is the generator's own.

use super::vit::{
    blocks_backward, blocks_forward, blocks_infer, build_blocks, build_embed, join, patch_tokens,
    patch_tokens_backward, Embed, EmbedCache, VitConfig,
};
use crate::backend::Backend;
use crate::error::{invalid, Error, Result};
use crate::layers::{Block, BlockCache, Layer, LayerNorm, LayerNormCache, Linear, LinearCache};
use crate::params::{Init, ParamTable};
use crate::tensor::Tensor;
use alloc::vec::Vec;

const OP: &str = "BEiT";

/// Hyper-parameters of the generator's BEiT: a ViT configuration and the tokenizer
/// vocabulary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BeitConfig {
    pub vit: VitConfig,
    pub vocab: usize,
}

impl BeitConfig {
    pub fn new(vit: VitConfig, vocab: usize) -> Self {
        BeitConfig { vit: VitConfig { final_norm: true, ..vit }, vocab }
    }
    /// The generator for a ViT enhancer: the enhancer's resolution, patch size, width,
    /// heads and MLP ratio, with `depth` blocks (the paper: 4 to 6).
    pub fn for_vit_enhancer(enhancer: &VitConfig, depth: usize, vocab: usize) -> Self {
        Self::new(enhancer.with_depth(depth), vocab)
    }
    /// The generator for a ResNet enhancer: ViT-S width (384, 6 heads), `depth` blocks.
    pub fn for_resnet_enhancer(img_size: usize, patch_size: usize, depth: usize, vocab: usize) -> Self {
        Self::new(VitConfig::small().with_img(img_size, patch_size).with_depth(depth), vocab)
    }
    pub fn validate(&self) -> Result<()> {
        self.vit.validate()?;
        if self.vocab == 0 {
            return invalid(OP, "the vocabulary is empty");
        }
        Ok(())
    }
}

/// The generator's BEiT. See the module docs.
#[derive(Clone, Debug, PartialEq)]
pub struct Beit {
    pub cfg: BeitConfig,
    /// The embedding, with its mask token.
    pub embed: Embed,
    pub blocks: Vec<Block>,
    pub norm: LayerNorm,
    pub lm_head: Linear,
    /// How many of the first blocks alias the enhancer's (0 without sharing).
    pub shared_blocks: usize,
}

/// What [`Beit::backward`] needs.
pub struct BeitCache<B: Backend> {
    pub embed: EmbedCache<B>,
    pub blocks: Vec<BlockCache<B>>,
    pub norm: LayerNormCache<B>,
    /// Holds the normalized patch tokens `[batch, N, D]`.
    pub head: LinearCache<B>,
}

impl Beit {
    /// Blocks shared with the enhancer by [`Beit::new_shared`] (the paper's choice).
    pub const SHARED_BLOCKS: usize = 2;

    /// A generator with its own tensors under `prefix`.
    pub fn new(table: &mut ParamTable, prefix: &str, cfg: BeitConfig) -> Result<Self> {
        Self::build(table, prefix, cfg, None)
    }

    /// A generator that shares the patch projection and the first two blocks with the
    /// ViT enhancer registered under `enhancer_prefix` (which must have the same patch
    /// size, channels, width and MLP width, and at least two blocks; its heads should
    /// match too, which the shapes cannot check).
    pub fn new_shared(table: &mut ParamTable, prefix: &str, cfg: BeitConfig, enhancer_prefix: &str) -> Result<Self> {
        Self::build(table, prefix, cfg, Some(enhancer_prefix))
    }

    fn build(table: &mut ParamTable, prefix: &str, cfg: BeitConfig, share: Option<&str>) -> Result<Self> {
        cfg.validate()?;
        let v = &cfg.vit;
        let embed = build_embed(table, prefix, v, true, share)?;
        let shared_blocks = if share.is_some() { Self::SHARED_BLOCKS.min(v.depth) } else { 0 };
        let blocks = build_blocks(table, prefix, v, share.map(|e| (e, shared_blocks)))?;
        let norm = LayerNorm::new(table, &join(prefix, "norm"), v.embed_dim, v.ln_eps)?;
        let lm_head = Linear::new_with_init(table, &join(prefix, "lm_head"), v.embed_dim, cfg.vocab, true, Init::TIMM)?;
        Ok(Beit { cfg, embed, blocks, norm, lm_head, shared_blocks })
    }

    /// Patch tokens `N`.
    pub fn num_patches(&self) -> usize {
        self.embed.num_patches()
    }

    /// Training forward pass: logits `[batch, N, vocab]` for image `[batch, C, img, img]`
    /// with `mask: [batch, N]` (1 = replaced by the mask token, 0 = visible).
    pub fn forward<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        image: &Tensor<B>,
        mask: &Tensor<B>,
    ) -> Result<(Tensor<B>, BeitCache<B>)> {
        let (x, embed) = self.embed.forward(b, params, image, Some(mask))?;
        let (x, blocks) = blocks_forward(&self.blocks, b, params, x)?;
        let (x, norm) = self.norm.forward_owned(b, params, x)?;
        let tokens = patch_tokens(b, &x)?;
        drop(x);
        let (logits, head) = self.lm_head.forward_owned(b, params, tokens)?;
        Ok((logits, BeitCache { embed, blocks, norm, head }))
    }

    /// Inference: the logits only.
    pub fn infer<B: Backend>(&self, b: &B, params: &B::Buf, image: &Tensor<B>, mask: &Tensor<B>) -> Result<Tensor<B>> {
        let x = self.embed.infer(b, params, image, Some(mask))?;
        let x = blocks_infer(&self.blocks, b, params, &x)?;
        let x = self.norm.infer(b, params, &x)?;
        self.lm_head.infer(b, params, &patch_tokens(b, &x)?)
    }

    fn backward_impl<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &BeitCache<B>,
        dlogits: &Tensor<B>,
        input_grad: bool,
    ) -> Result<Option<Tensor<B>>> {
        let dtokens = self.lm_head.backward(b, params, grads, &cache.head, dlogits)?;
        let dx = patch_tokens_backward(b, &dtokens)?;
        drop(dtokens);
        let dx = self.norm.backward(b, params, grads, &cache.norm, &dx)?;
        let dx = blocks_backward(&self.blocks, b, params, grads, &cache.blocks, &dx)?;
        self.embed.backward(b, params, grads, &cache.embed, &dx, input_grad)
    }

    /// Backward pass from `dlogits: [batch, N, vocab]`: accumulates the parameter
    /// gradients (shared tensors receive the generator's share).
    pub fn backward<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &BeitCache<B>,
        dlogits: &Tensor<B>,
    ) -> Result<()> {
        self.backward_impl(b, params, grads, cache, dlogits, false).map(|_| ())
    }

    /// As [`Beit::backward`], also returning the image gradient.
    pub fn backward_input<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &BeitCache<B>,
        dlogits: &Tensor<B>,
    ) -> Result<Tensor<B>> {
        self.backward_impl(b, params, grads, cache, dlogits, true)?
            .ok_or_else(|| Error::Invalid { op: OP, detail: "no input gradient".into() })
    }
}
