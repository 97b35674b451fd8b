//! One CIM training step (§A.3): forward passes, losses, and both backward passes into
//! the one gradient buffer of the trainable store.
//!
//! # Losses
//! - MIM (generator): `Σ_masked CE(logits_i, g_i) / #masked` over the batch (the mean
//!   cross-entropy at masked positions; 0, with no gradient, when nothing is masked).
//!   `mim_acc` is the fraction of masked positions where the argmax equals `g`.
//! - RESPIX (enhancer): `mean |ŷ − t| + mean (ŷ − t)²` over every pixel and channel of
//!   the batch, with `t` the target of [`super::target`].
//! - REVDET (enhancer): `mean BCE-with-logits(z_i, [c_i ≠ g_i])` over every token of the
//!   batch (`c` the corrupted map). `revdet_acc`: fraction with `(z > 0) = target`.
//! - total: `MIM + w · enhancer loss`, `w` = [`super::CimConfig::enhancer_loss_weight`].
//!
//! # Gradients
//! The gradient buffer is zeroed, then the enhancer's backward pass (head, enhancer:
//! for a ViT also the shared patch embedding and blocks 0–1) and the generator's
//! accumulate into it. The corrupted image is an input: nothing flows from the enhancer
//! loss into the generator's own tensors (§2.3), only into the shared ones through the
//! enhancer's use of them. The frozen tokenizer runs in inference only.
//!
//! # Host reads
//! Per step: the per-token cross-entropy, argmax, golden and sampled tokens (`N·L`
//! values each), the enhancer loss terms (two scalars for RESPIX; `N·L` logits for
//! REVDET), and one upload of the corrupted token map.
//!
//! A NaN or infinite loss is [`Error::NonFinite`] naming the loss; the gradients are then
//! left zeroed.

use super::model::CimModel;
use super::target::{normalize_image, respix_target};
use super::{select_tokens, Objective, OP};
use crate::backend::{Backend, ReduceOp};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::models::masking::mask_values;
use crate::ops::{self, Loss};
use crate::params::ParamStore;
use crate::tensor::Tensor;
use alloc::string::ToString;
use alloc::vec::Vec;

/// One batch.
pub struct StepInput<'a, B: Backend> {
    /// `[N, 3, H, W]`, pixels in `[0, 1]` (`H` = `CimConfig::image_size`).
    pub enhancer_view: &'a Tensor<B>,
    /// `[N, 3, h, w]`, pixels in `[0, 1]`, the same crop (`h` = `tokenizer_image_size`).
    pub tokenizer_view: &'a Tensor<B>,
    /// `N·L` bytes, 1 = masked, in row-major patch order (`models::masking`).
    pub masks: &'a [u8],
    /// The run seed; with `step` it keys the token sampling.
    pub seed: u64,
    pub step: u64,
}

/// What one step measured.
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutput {
    /// `mim_loss + w · enh_loss`.
    pub loss: f64,
    pub mim_loss: f64,
    /// Accuracy of the generator's argmax at masked positions.
    pub mim_acc: f64,
    /// The enhancer's loss (RESPIX: L1 + L2; REVDET: BCE), before the weight.
    pub enh_loss: f64,
    /// RESPIX: the L1 and L2 terms of `enh_loss`.
    pub respix_l1: Option<f64>,
    pub respix_l2: Option<f64>,
    /// REVDET: accuracy of `logit > 0` against the replaced flags.
    pub revdet_acc: Option<f64>,
    /// Masked positions over all `N·L` positions.
    pub masked_frac: f64,
    /// Positions whose corrupted token differs from the golden one, over `N·L`
    /// (at most `masked_frac`).
    pub replaced_frac: f64,
    /// The golden tokens, `[N·L]`.
    pub golden: Vec<u32>,
    /// The decoder's input, `[N·L]`.
    pub corrupted: Vec<u32>,
}

fn finite(v: f64, what: &str) -> Result<f64> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(Error::NonFinite { what: what.to_string() })
    }
}

/// The mean of a tensor, on the host.
fn mean_of<B: Backend>(b: &B, x: &Tensor<B>) -> Result<f64> {
    Ok(ops::reduce_all(b, ReduceOp::Mean, x)?.to_vec(b)?[0].f64())
}

impl CimModel {
    /// One training step. See the module docs. Writes the gradients of `MIM + w ·
    /// enhancer loss` into `store.grads` (zeroed first); a ResNet enhancer also updates
    /// its batch-norm running statistics in `store.state`. `tokenizer` is only read.
    pub fn step<B: Backend>(
        &self,
        b: &B,
        store: &mut ParamStore<B>,
        tokenizer: &ParamStore<B>,
        input: &StepInput<'_, B>,
    ) -> Result<StepOutput> {
        let (n, l) = self.check_views(input.enhancer_view, input.tokenizer_view, input.masks)?;
        let total = (n * l) as f64;
        let w = self.cfg.enhancer_loss_weight;
        store.zero_grads(b)?;
        let ParamStore { params, grads, state, .. } = store;
        let params: &B::Buf = params;

        // 1. Golden tokens (frozen encoder, inference).
        let golden_t = self.golden_tokens(b, tokenizer, input.tokenizer_view)?;
        let golden = golden_t.to_vec(b)?;
        let golden_t = golden_t.reshape(&[n, l])?;

        // 2. The generator on the masked, normalized enhancer view; MIM loss.
        let x = normalize_image(b, input.enhancer_view, &self.cfg.mean, &self.cfg.std)?;
        let mask_t = Tensor::from_slice(b, &[n, l], &mask_values::<B::E>(input.masks))?;
        let (logits, gen_cache) = self.generator.forward(b, params, &x, &mask_t)?;
        drop(mask_t);
        let ce = ops::cross_entropy(b, &logits, &golden_t)?.to_f64(b)?;
        let pred = ops::argmax(b, &logits)?.to_vec(b)?;
        let masked = input.masks.iter().filter(|&&m| m != 0).count();
        let (mut ce_sum, mut hits) = (0.0, 0usize);
        for (i, &m) in input.masks.iter().enumerate() {
            if m != 0 {
                ce_sum += ce[i];
                hits += usize::from(pred[i] == golden[i]);
            }
        }
        let (mim_loss, mim_acc) =
            if masked > 0 { (ce_sum / masked as f64, hits as f64 / masked as f64) } else { (0.0, 0.0) };
        let mim_loss = finite(mim_loss, "MIM loss (generator cross-entropy)")?;

        // 3. Replacement tokens at the masked positions (host-side select).
        let sampled = self.sample_with(b, &logits, input.seed, input.step, Some(&pred))?;
        let (corrupted, replaced) = select_tokens(&golden, &sampled, input.masks)?;
        drop(sampled);

        // 4. The corrupted image (frozen decoder), normalized like the enhancer input.
        let image = self.decode_image(b, tokenizer, &corrupted)?;
        let xc = normalize_image(b, &image, &self.cfg.mean, &self.cfg.std)?;
        drop(image);

        // 5. The enhancer on the corrupted image (a plain input).
        let (out, enh_cache) = self.enhancer_forward(b, params, state, xc)?;

        // 6. The enhancer loss and the gradient of `w · loss` w.r.t. the head output.
        let (enh_loss, dout, respix_l1, respix_l2, revdet_acc) = match self.cfg.objective {
            Objective::Respix { norm } => {
                let target = respix_target(b, &x, norm, self.cfg.target_eps)?;
                let l1 = mean_of(b, &ops::loss(b, Loss::L1, &out, &target)?)?;
                let l2 = mean_of(b, &ops::loss(b, Loss::L2, &out, &target)?)?;
                let loss = finite(l1 + l2, "RESPIX loss (enhancer L1 + L2)")?;
                let scale = Tensor::full(b, out.shape(), B::E::of(w / out.numel() as f64))?;
                let mut d = ops::loss_backward(b, Loss::L1, &out, &target, &scale)?;
                let d2 = ops::loss_backward(b, Loss::L2, &out, &target, &scale)?;
                ops::axpy(b, 1.0, &d2, &mut d)?;
                (loss, d, Some(l1), Some(l2), None)
            }
            Objective::Revdet => {
                let flags: Vec<f64> =
                    corrupted.iter().zip(&golden).map(|(c, g)| if c != g { 1.0 } else { 0.0 }).collect();
                let target = Tensor::from_f64(b, &[n, l], &flags)?;
                let loss = mean_of(b, &ops::loss(b, Loss::BceWithLogits, &out, &target)?)?;
                let loss = finite(loss, "REVDET loss (enhancer binary cross-entropy)")?;
                let z = out.to_f64(b)?;
                let right = z.iter().zip(&flags).filter(|&(z, t)| (*z > 0.0) == (*t > 0.5)).count();
                let scale = Tensor::full(b, out.shape(), B::E::of(w / total))?;
                let d = ops::loss_backward(b, Loss::BceWithLogits, &out, &target, &scale)?;
                (loss, d, None, None, Some(right as f64 / total))
            }
        };
        let loss = finite(mim_loss + w * enh_loss, "total CIM loss")?;
        drop(out);

        // 7. Both backward passes into the one gradient buffer.
        self.enhancer_backward(b, params, grads, &enh_cache, &dout)?;
        drop((enh_cache, dout));
        if masked > 0 {
            let inv = 1.0 / masked as f64;
            let dce: Vec<f64> = input.masks.iter().map(|&m| if m != 0 { inv } else { 0.0 }).collect();
            let dce = Tensor::from_f64(b, &[n, l], &dce)?;
            let dlogits = ops::cross_entropy_backward(b, &logits, &golden_t, &dce)?;
            drop(logits);
            self.generator.backward(b, params, grads, &gen_cache, &dlogits)?;
        }
        debug_assert!(replaced <= masked, "{OP}: replaced tokens outside the mask");
        Ok(StepOutput {
            loss,
            mim_loss,
            mim_acc,
            enh_loss,
            respix_l1,
            respix_l2,
            revdet_acc,
            masked_frac: masked as f64 / total,
            replaced_frac: replaced as f64 / total,
            golden,
            corrupted,
        })
    }
}
