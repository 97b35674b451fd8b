//! The joint CIM model: layer handles into the trainable store (enhancer, head,
//! generator) and into the frozen tokenizer store (dVAE encoder and decoder).

use super::{CimConfig, EnhancerKind, Objective, DECODER, ENCODER, ENHANCER, ENHANCER_HEAD, GENERATOR, OP};
use crate::backend::Backend;
use crate::error::{invalid, Result};
use crate::layers::Layer;
use crate::models::beit::Beit;
use crate::models::conv_head::{ConvHead, ConvHeadCache, ConvHeadTask};
use crate::models::dvae::{DvaeDecoder, DvaeEncoder};
use crate::models::heads::{RespixCache, RespixHead, RevdetCache, RevdetHead};
use crate::models::resnet::{ResNet, ResNetCache, ResNetConfig};
use crate::models::vit::{Vit, VitCache};
use crate::params::{ParamStore, ParamTable};
use crate::tensor::Tensor;

/// The model being pre-trained. (Built once per run, so the size difference of the
/// variants does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Enhancer {
    Vit(Vit),
    ResNet(ResNet),
}

/// The enhancer's pre-training head ("a simple linear layer", §2.2).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EnhancerHead {
    /// ViT, RESPIX: `D → 3·p²` per patch token, unpatchified to `[N, 3, H, W]`.
    Respix(RespixHead),
    /// ViT, REVDET: one logit per patch token, `[N, L]`.
    Revdet(RevdetHead),
    /// ResNet: a 1×1 convolution plus pixel shuffle (`[N, 3, H, W]` or `[N, 1, g, g]`).
    Conv(ConvHead),
}

/// The CIM model. See the module docs of [`crate::cim`].
#[derive(Clone, Debug, PartialEq)]
pub struct CimModel {
    pub cfg: CimConfig,
    pub enhancer: Enhancer,
    pub head: EnhancerHead,
    pub generator: Beit,
    /// Frozen, in the tokenizer store.
    pub encoder: DvaeEncoder,
    /// Frozen, in the tokenizer store.
    pub decoder: DvaeDecoder,
}

/// What the enhancer's backward pass needs.
pub(crate) enum EnhancerCache<B: Backend> {
    VitRespix(VitCache<B>, RespixCache<B>),
    VitRevdet(VitCache<B>, RevdetCache<B>),
    ResNet(ResNetCache<B>, ConvHeadCache<B>),
}

impl CimModel {
    /// Validate `cfg` and register the model: returns the layers, the trainable table
    /// (enhancer, head, generator) and the frozen tokenizer table (encoder, decoder).
    pub fn new(cfg: CimConfig) -> Result<(CimModel, ParamTable, ParamTable)> {
        cfg.validate()?;
        let mut t = ParamTable::new();
        let (enhancer, head, generator) = match cfg.enhancer {
            EnhancerKind::Vit(v) => {
                let vit = Vit::new(&mut t, ENHANCER, v)?;
                let head = match cfg.objective {
                    Objective::Respix { .. } => EnhancerHead::Respix(RespixHead::new(&mut t, ENHANCER_HEAD, &v)?),
                    Objective::Revdet => EnhancerHead::Revdet(RevdetHead::new(&mut t, ENHANCER_HEAD, v.embed_dim)?),
                };
                let generator = Beit::new_shared(&mut t, GENERATOR, cfg.generator_config(), ENHANCER)?;
                (Enhancer::Vit(vit), head, generator)
            }
            EnhancerKind::ResNet { cfg: rc, patch_size, .. } => {
                let rc = ResNetConfig { num_classes: None, ..rc };
                let resnet = ResNet::new(&mut t, ENHANCER, rc)?;
                let task = match cfg.objective {
                    Objective::Respix { .. } => ConvHeadTask::Respix,
                    Objective::Revdet => ConvHeadTask::Revdet,
                };
                let head = ConvHead::for_resnet(&mut t, ENHANCER_HEAD, task, &rc, patch_size)?;
                let generator = Beit::new(&mut t, GENERATOR, cfg.generator_config())?;
                (Enhancer::ResNet(resnet), EnhancerHead::Conv(head), generator)
            }
        };
        let mut tok = ParamTable::new();
        let encoder = DvaeEncoder::new(&mut tok, ENCODER, cfg.tokenizer)?;
        let decoder = DvaeDecoder::new(&mut tok, DECODER, cfg.tokenizer)?;
        Ok((CimModel { cfg, enhancer, head, generator, encoder, decoder }, t, tok))
    }

    /// [`CimModel::new`] and both stores allocated on `b` (trainable tensors initialized
    /// under `seed`; the tokenizer under `seed + 1`, to be overwritten by a checkpoint).
    pub fn build<B: Backend>(cfg: CimConfig, b: &B, seed: u64) -> Result<(CimModel, ParamStore<B>, ParamStore<B>)> {
        let (model, t, tok) = Self::new(cfg)?;
        Ok((model, t.build(b, seed)?, tok.build(b, seed.wrapping_add(1))?))
    }

    /// Training forward pass of the enhancer and its head on a normalized image
    /// `[N, 3, H, W]`: the head output (RESPIX `[N, 3, H, W]`; REVDET `[N, L]`) and the
    /// cache. A ResNet runs its batch norms in training mode (updating `state`).
    pub(crate) fn enhancer_forward<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        state: &mut B::Buf,
        x: Tensor<B>,
    ) -> Result<(Tensor<B>, EnhancerCache<B>)> {
        match (&self.enhancer, &self.head) {
            (Enhancer::Vit(vit), EnhancerHead::Respix(h)) => {
                let (f, vc) = vit.forward_features(b, params, &x)?;
                drop(x);
                let (y, hc) = h.forward_owned(b, params, f)?;
                Ok((y, EnhancerCache::VitRespix(vc, hc)))
            }
            (Enhancer::Vit(vit), EnhancerHead::Revdet(h)) => {
                let (f, vc) = vit.forward_features(b, params, &x)?;
                drop(x);
                let (y, hc) = h.forward_owned(b, params, f)?;
                Ok((y, EnhancerCache::VitRevdet(vc, hc)))
            }
            (Enhancer::ResNet(r), EnhancerHead::Conv(h)) => {
                let (f, rc) = r.forward_features_owned(b, params, state, x, true)?;
                let (y, hc) = h.forward_owned(b, params, f)?;
                let y = match h.task {
                    ConvHeadTask::Respix => y,
                    ConvHeadTask::Revdet => {
                        let s = y.shape().to_vec();
                        y.reshape(&[s[0], s[2] * s[3]])?
                    }
                };
                Ok((y, EnhancerCache::ResNet(rc, hc)))
            }
            _ => invalid(OP, "the enhancer head does not fit the enhancer"),
        }
    }

    /// Backward pass of the enhancer and its head from the gradient of the head output;
    /// accumulates into `grads` (shared tensors included).
    pub(crate) fn enhancer_backward<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &EnhancerCache<B>,
        dy: &Tensor<B>,
    ) -> Result<()> {
        match (&self.enhancer, &self.head, cache) {
            (Enhancer::Vit(vit), EnhancerHead::Respix(h), EnhancerCache::VitRespix(vc, hc)) => {
                let df = h.backward(b, params, grads, hc, dy)?;
                vit.backward_params(b, params, grads, vc, &df)
            }
            (Enhancer::Vit(vit), EnhancerHead::Revdet(h), EnhancerCache::VitRevdet(vc, hc)) => {
                let df = h.backward(b, params, grads, hc, dy)?;
                vit.backward_params(b, params, grads, vc, &df)
            }
            (Enhancer::ResNet(r), EnhancerHead::Conv(h), EnhancerCache::ResNet(rc, hc)) => {
                let dy = match h.task {
                    ConvHeadTask::Respix => dy.duplicate(b)?,
                    ConvHeadTask::Revdet => {
                        let f = hc.conv.x.shape();
                        let shape = h.out_shape(f)?;
                        dy.duplicate(b)?.reshape(&shape)?
                    }
                };
                let df = h.backward(b, params, grads, hc, &dy)?;
                // The image gradient that ResNet computes is discarded (no params-only path).
                r.backward_features(b, params, grads, rc, &df).map(|_| ())
            }
            _ => invalid(OP, "the enhancer cache does not fit the enhancer"),
        }
    }

    /// Evaluation-mode enhancer and head on a normalized image (batch norms with their
    /// running statistics), for visualization.
    pub fn enhancer_infer<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        state: &B::Buf,
        x: &Tensor<B>,
    ) -> Result<Tensor<B>> {
        match (&self.enhancer, &self.head) {
            (Enhancer::Vit(vit), EnhancerHead::Respix(h)) => h.infer(b, params, &vit.infer_features(b, params, x)?),
            (Enhancer::Vit(vit), EnhancerHead::Revdet(h)) => h.infer(b, params, &vit.infer_features(b, params, x)?),
            (Enhancer::ResNet(r), EnhancerHead::Conv(h)) => h.infer(b, params, &r.infer_features(b, params, state, x)?),
            _ => invalid(OP, "the enhancer head does not fit the enhancer"),
        }
    }
}
