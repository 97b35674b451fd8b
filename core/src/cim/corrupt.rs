//! The generator's corruption (§2.1, A.3 eq. 2): golden tokens from the frozen encoder,
//! replacement tokens drawn from the BEiT output, the corrupted token map, and the
//! corrupted image from the frozen decoder.
//!
//! # Randomness
//! Sampling is counter-based and deterministic: the key is [`sampling_seed`]`(seed,
//! step)` (a Philox hash of both, domain-separated from the mask generator's
//! streams), and row `r` of the `[N·L, V]` logits uses counters `r·V .. r·V + V`
//! (`Backend::sample_categorical`, Gumbel-max) or counter `r` (uniform sampling). Every
//! backend draws the same tokens for the same logits, and the draws are made at every
//! position (no data-dependent shapes); only the masked ones are used.
//!
//! # Host synchronization
//! The token selection `corrupted = mask ? sampled : golden` happens on the host: the
//! golden and sampled tokens (`N·L` indices each) are downloaded and the corrupted map
//! is uploaded once. The counts reported by the step (replaced tokens) come from the same
//! host copies.

use super::model::CimModel;
use super::step::StepInput;
use super::target::normalize_image;
use super::{Sampling, OP};
use crate::backend::Backend;
use crate::error::{shape_err, Result};
use crate::models::dvae::{map_pixels, reconstruct};
use crate::models::masking::mask_values;
use crate::ops;
use crate::params::ParamStore;
use crate::rng;
use crate::tensor::{IndexTensor, Tensor};
use alloc::format;
use alloc::vec::Vec;

/// Domain separation of the sampling key from other uses of the run seed.
const SAMPLING_DOMAIN: u64 = 0xC1A5_5A3D_0C0F_FEE5;

/// The sampling key of step `step` under the run seed `seed`.
pub fn sampling_seed(seed: u64, step: u64) -> u64 {
    let k = seed ^ SAMPLING_DOMAIN;
    ((rng::bits(k, 2 * step) as u64) << 32) | rng::bits(k, 2 * step + 1) as u64
}

/// `corrupted[i] = sampled[i]` where `mask[i] != 0`, else `golden[i]`; also returns how
/// many positions differ from `golden` (the replaced tokens).
pub fn select_tokens(golden: &[u32], sampled: &[u32], mask: &[u8]) -> Result<(Vec<u32>, usize)> {
    if golden.len() != sampled.len() || golden.len() != mask.len() {
        return shape_err(
            OP,
            format!("{} golden, {} sampled tokens and {} mask entries", golden.len(), sampled.len(), mask.len()),
        );
    }
    let mut replaced = 0;
    let out = golden
        .iter()
        .zip(sampled)
        .zip(mask)
        .map(|((&g, &s), &m)| {
            let t = if m != 0 { s } else { g };
            replaced += usize::from(t != g);
            t
        })
        .collect();
    Ok((out, replaced))
}

/// A corrupted batch (for visualization: [`CimModel::corrupt`]).
pub struct Corruption<B: Backend> {
    /// The encoder's tokens, `[N·L]` in row-major grid order.
    pub golden: Vec<u32>,
    /// The decoder's input, `[N·L]`.
    pub corrupted: Vec<u32>,
    /// The corrupted image in `[0, 1]` at the enhancer resolution, `[N, 3, H, W]`.
    pub image: Tensor<B>,
    /// Tokens that differ from the golden ones.
    pub replaced: usize,
}

impl CimModel {
    /// The golden tokens `[N, g, g]`: the argmax of the frozen encoder on
    /// `map_pixels(tokenizer_view)` (inference, nothing kept).
    pub fn golden_tokens<B: Backend>(
        &self,
        b: &B,
        tokenizer: &ParamStore<B>,
        tokenizer_view: &Tensor<B>,
    ) -> Result<IndexTensor<B>> {
        let t = self.cfg.tokenizer_image_size;
        let s = tokenizer_view.shape();
        if s.len() != 4 || s[0] == 0 || s[1] != 3 || s[2] != t || s[3] != t {
            return shape_err(OP, format!("tokenizer view {s:?} is not [n, 3, {t}, {t}]"));
        }
        let tokens = self.encoder.encode_tokens(b, &tokenizer.params, &map_pixels(b, tokenizer_view)?)?;
        let g = self.cfg.grid();
        if tokens.shape() != [s[0], g, g] {
            return shape_err(
                OP,
                format!("the encoder gave tokens {:?}, expected [{}, {g}, {g}]", tokens.shape(), s[0]),
            );
        }
        Ok(tokens)
    }

    /// One replacement token per row of `logits: [N, L, V]`, drawn as
    /// [`super::CimConfig::sampling`] says (see the module docs for the randomness).
    pub fn sample_replacements<B: Backend>(&self, b: &B, logits: &Tensor<B>, seed: u64, step: u64) -> Result<Vec<u32>> {
        self.sample_with(b, logits, seed, step, None)
    }

    /// As [`CimModel::sample_replacements`], reusing the argmax when it is known.
    pub(crate) fn sample_with<B: Backend>(
        &self,
        b: &B,
        logits: &Tensor<B>,
        seed: u64,
        step: u64,
        argmax: Option<&[u32]>,
    ) -> Result<Vec<u32>> {
        let v = self.cfg.tokenizer.vocab_size;
        let s = logits.shape();
        if s.last() != Some(&v) {
            return shape_err(OP, format!("logits {s:?} do not end in the vocabulary {v}"));
        }
        let key = sampling_seed(seed, step);
        match self.cfg.sampling {
            Sampling::Softmax { temperature } => ops::sample_categorical(b, logits, temperature, key, 0)?.to_vec(b),
            Sampling::Argmax => match argmax {
                Some(a) => Ok(a.to_vec()),
                None => ops::argmax(b, logits)?.to_vec(b),
            },
            Sampling::Uniform => {
                let rows = logits.numel() / v;
                let u = ops::rand_uniform(b, &[rows], key, 0)?.to_f64(b)?;
                Ok(u.into_iter().map(|u| (libm::floor(u * v as f64) as u32).min(v as u32 - 1)).collect())
            }
        }
    }

    /// Decode a token map `[N·L]` (ids below the vocabulary) with the frozen decoder:
    /// `reconstruct` (pixels in `[0, 1]` at the tokenizer resolution), then nearest
    /// upsampling by the integer ratio to the enhancer resolution, `[N, 3, H, W]`.
    pub fn decode_image<B: Backend>(&self, b: &B, tokenizer: &ParamStore<B>, tokens: &[u32]) -> Result<Tensor<B>> {
        let g = self.cfg.grid();
        let l = g * g;
        if l == 0 || tokens.is_empty() || !tokens.len().is_multiple_of(l) {
            return shape_err(OP, format!("{} tokens are not a whole number of {g}×{g} maps", tokens.len()));
        }
        let v = self.cfg.tokenizer.vocab_size as u32;
        if let Some(bad) = tokens.iter().find(|&&t| t >= v) {
            return shape_err(OP, format!("token {bad} is outside the vocabulary of {v}"));
        }
        let ids = IndexTensor::from_slice(b, &[tokens.len() / l, g, g], tokens)?;
        let out = self.decoder.decode_tokens(b, &tokenizer.params, &ids)?;
        drop(ids);
        let img = reconstruct(b, &out)?;
        drop(out);
        let want = self.cfg.tokenizer_image_size;
        if img.shape()[2] != want || img.shape()[3] != want {
            return shape_err(OP, format!("the decoder gave {:?}, expected {want} px", img.shape()));
        }
        match self.cfg.upsample_factor() {
            1 => Ok(img),
            s => ops::upsample_nearest(b, &img, s),
        }
    }

    /// The whole corruption of a batch without any training: golden tokens, the
    /// generator's inference on the masked enhancer view, sampling, decoding.
    pub fn corrupt<B: Backend>(
        &self,
        b: &B,
        store: &ParamStore<B>,
        tokenizer: &ParamStore<B>,
        input: &StepInput<'_, B>,
    ) -> Result<Corruption<B>> {
        let (n, l) = self.check_views(input.enhancer_view, input.tokenizer_view, input.masks)?;
        let golden = self.golden_tokens(b, tokenizer, input.tokenizer_view)?.to_vec(b)?;
        let x = normalize_image(b, input.enhancer_view, &self.cfg.mean, &self.cfg.std)?;
        let mask = Tensor::from_slice(b, &[n, l], &mask_values::<B::E>(input.masks))?;
        let logits = self.generator.infer(b, &store.params, &x, &mask)?;
        let sampled = self.sample_replacements(b, &logits, input.seed, input.step)?;
        let (corrupted, replaced) = select_tokens(&golden, &sampled, input.masks)?;
        let image = self.decode_image(b, tokenizer, &corrupted)?;
        Ok(Corruption { golden, corrupted, image, replaced })
    }

    /// Check the views and masks of a batch; returns `(N, L)`.
    pub(crate) fn check_views<B: Backend>(
        &self,
        enhancer_view: &Tensor<B>,
        tokenizer_view: &Tensor<B>,
        masks: &[u8],
    ) -> Result<(usize, usize)> {
        let (h, t) = (self.cfg.image_size, self.cfg.tokenizer_image_size);
        let e = enhancer_view.shape();
        if e.len() != 4 || e[0] == 0 || e[1] != 3 || e[2] != h || e[3] != h {
            return shape_err(OP, format!("enhancer view {e:?} is not [n, 3, {h}, {h}] with n > 0"));
        }
        let n = e[0];
        let s = tokenizer_view.shape();
        if s != [n, 3, t, t] {
            return shape_err(OP, format!("tokenizer view {s:?} is not [{n}, 3, {t}, {t}]"));
        }
        let l = self.cfg.num_patches();
        if masks.len() != n * l {
            return shape_err(OP, format!("{} mask entries for {n} images of {l} patches", masks.len()));
        }
        Ok((n, l))
    }
}
