//! The tokenizer's training step, its evaluation and the training loop (generic over
//! the backend); with `std`, the loop over a data set and the checkpoint. See the
//! module docs of [`crate::tokenizer`] for the loss.

use super::{Recon, OP};
use crate::backend::{Backend, ReduceOp, UnaryOp};
use crate::cim::{apply_optimizer, param_groups, AdamWConfig, LrSchedule, OptState, DECODER, ENCODER};
use crate::error::{invalid, shape_err, Error, Result};
use crate::layers::Layer;
use crate::models::dvae::{map_pixels, reconstruct, DvaeConfig, DvaeDecoder, DvaeEncoder};
use crate::ops;
use crate::params::{ParamStore, ParamTable};
use crate::tensor::{Tensor, View};
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

/// Hyper-parameters of a tokenizer run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenizerTrainConfig {
    pub dvae: DvaeConfig,
    /// Side of the (square) training images; the token grid is `image_size / 2^(groups-1)`.
    pub image_size: usize,
    pub steps: u64,
    pub batch: usize,
    /// Peak learning rate (linear warm-up, cosine decay to `lr · min_lr_ratio`).
    pub lr: f64,
    pub min_lr_ratio: f64,
    pub warmup_steps: u64,
    pub adamw: AdamWConfig,
    /// Weight initialization, data order and Gumbel noise.
    pub seed: u64,
    /// Gumbel-softmax temperature, annealed exponentially from `tau_start` (step 0) to
    /// `tau_end` (last step).
    pub tau_start: f64,
    pub tau_end: f64,
    pub recon: Recon,
    /// `KL(q ‖ uniform)` per token (DALL-E's prior term).
    pub kl_weight: f64,
    /// `KL(q̄ ‖ uniform)` of the batch-mean code distribution (codebook usage).
    pub usage_weight: f64,
    /// Per-token entropy `H(q)` (sharpness).
    pub entropy_weight: f64,
    /// Report every this many steps (0: only the last step).
    pub log_every: u64,
}

impl TokenizerTrainConfig {
    /// The defaults for `dvae`: batch 64, AdamW lr 2e-3 (β 0.9 / 0.99, weight decay
    /// 1e-4, clipping at 5), 5 % warm-up, τ 1 → 1/16, L2 reconstruction, weights KL
    /// 1e-3, usage 0.4, entropy 0.1. Tuned on Fashion-MNIST at 16 px (`dvae_small`,
    /// 250 steps, held-out codes used / perplexity / sharpness / pixel MSE): usage 0.1 +
    /// entropy 0.05 gave 116 / 112 / 0.98 / 0.038 (collapse); 0.3 + 0.05 gave 473 / 458 /
    /// 0.88 / 0.029 (soft codes); 0.4 + 0.1 gave 317 / 305 / 0.97 / 0.032; 0.5 + 0.02
    /// stayed at uniform codes (entropy ln 512).
    pub fn new(dvae: DvaeConfig, image_size: usize, steps: u64) -> Self {
        TokenizerTrainConfig {
            dvae,
            image_size,
            steps,
            batch: 64,
            lr: 2e-3,
            min_lr_ratio: 0.05,
            warmup_steps: steps / 20,
            adamw: AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 1e-4, clip: Some(5.0) },
            seed: 0,
            tau_start: 1.0,
            tau_end: 0.0625,
            recon: Recon::L2,
            kl_weight: 1e-3,
            usage_weight: 0.4,
            entropy_weight: 0.1,
            log_every: 50,
        }
    }

    /// The temperature of (0-based) `step`.
    pub fn tau(&self, step: u64) -> f64 {
        if self.steps <= 1 {
            return self.tau_start;
        }
        let t = (step.min(self.steps - 1)) as f64 / (self.steps - 1) as f64;
        self.tau_start * libm::pow(self.tau_end / self.tau_start, t)
    }

    /// The learning-rate schedule.
    pub fn schedule(&self) -> Result<LrSchedule> {
        LrSchedule::new(self.lr, self.lr * self.min_lr_ratio, self.warmup_steps.min(self.steps), self.steps)
    }

    /// The loss weights.
    pub fn weights(&self) -> LossWeights {
        LossWeights { recon: self.recon, kl: self.kl_weight, usage: self.usage_weight, entropy: self.entropy_weight }
    }

    pub fn validate(&self) -> Result<()> {
        let d = self.dvae.downsample();
        if self.image_size == 0 || !self.image_size.is_multiple_of(d) {
            return invalid(OP, format!("image size {} is not a positive multiple of {d}", self.image_size));
        }
        if self.dvae.input_channels != 3 {
            return invalid(OP, "the tokenizer trains on 3-channel images");
        }
        if self.steps == 0 || self.batch == 0 {
            return invalid(OP, "steps and batch must be positive");
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && (0.0..=1.0).contains(&self.min_lr_ratio)) {
            return invalid(OP, format!("bad learning rate {} (floor ratio {})", self.lr, self.min_lr_ratio));
        }
        let ok = |t: f64| t.is_finite() && t > 0.0;
        if !ok(self.tau_start) || !ok(self.tau_end) {
            return invalid(OP, format!("temperatures must be positive ({} → {})", self.tau_start, self.tau_end));
        }
        let w = [self.kl_weight, self.usage_weight, self.entropy_weight];
        if w.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return invalid(OP, format!("loss weights must be finite and ≥ 0, got {w:?}"));
        }
        Ok(())
    }
}

/// The loss terms and their weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossWeights {
    pub recon: Recon,
    pub kl: f64,
    pub usage: f64,
    pub entropy: f64,
}

/// The terms of one evaluation of the loss (unweighted, batch means).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossParts {
    /// The weighted sum that is minimized.
    pub total: f64,
    pub recon: f64,
    /// Mean per-token `KL(q ‖ uniform) = ln V − H(q)`.
    pub kl: f64,
    /// `KL(q̄ ‖ uniform)`.
    pub usage: f64,
    /// Mean per-token entropy `H(q)` (nats).
    pub entropy: f64,
}

/// A dVAE tokenizer: both halves and one store, under `encoder.` / `decoder.`.
pub struct Tokenizer<B: Backend> {
    pub cfg: DvaeConfig,
    pub image_size: usize,
    pub encoder: DvaeEncoder,
    pub decoder: DvaeDecoder,
    pub store: ParamStore<B>,
}

/// Register the encoder under [`ENCODER`] and the decoder under [`DECODER`] (the names
/// of CIM's tokenizer table).
pub fn tokenizer_table(cfg: DvaeConfig) -> Result<(DvaeEncoder, DvaeDecoder, ParamTable)> {
    let mut t = ParamTable::new();
    let encoder = DvaeEncoder::new(&mut t, ENCODER, cfg)?;
    let decoder = DvaeDecoder::new(&mut t, DECODER, cfg)?;
    Ok((encoder, decoder, t))
}

impl<B: Backend> Tokenizer<B> {
    /// A freshly initialized tokenizer (DALL-E's initialization under `seed`).
    pub fn new(b: &B, cfg: DvaeConfig, image_size: usize, seed: u64) -> Result<Self> {
        let (encoder, decoder, t) = tokenizer_table(cfg)?;
        Ok(Tokenizer { cfg, image_size, encoder, decoder, store: t.build(b, seed)? })
    }

    /// The token grid side.
    pub fn grid(&self) -> usize {
        self.cfg.grid(self.image_size)
    }

    pub(crate) fn check_images(&self, x: &Tensor<B>) -> Result<()> {
        let s = self.image_size;
        let sh = x.shape();
        if sh.len() != 4 || sh[0] == 0 || sh[1] != self.cfg.input_channels || sh[2] != s || sh[3] != s {
            return shape_err(OP, format!("images {sh:?} are not [n, {}, {s}, {s}]", self.cfg.input_channels));
        }
        Ok(())
    }

    /// Gumbel noise `[n, g, g, vocab]` for a batch of `n` (counter range from `offset`).
    pub fn gumbel_noise(&self, b: &B, n: usize, seed: u64, offset: u64) -> Result<Tensor<B>> {
        let g = self.grid();
        let u = ops::rand_uniform(b, &[n, g, g, self.cfg.vocab_size], seed, offset)?;
        // u ∈ [1e-6, 1 − 1e-6] keeps both logarithms finite.
        let u = ops::affine(b, &u, 1.0 - 2e-6, 1e-6)?;
        let l = ops::unary(b, UnaryOp::Ln, &u)?;
        let l = ops::unary(b, UnaryOp::Ln, &ops::unary(b, UnaryOp::Neg, &l)?)?;
        ops::unary(b, UnaryOp::Neg, &l)
    }

    /// The training loss on images `x` `[n, 3, S, S]` in `[0, 1]` with Gumbel noise
    /// `gumbel` `[n, g, g, vocab]` and temperature `tau`; with `backward`, its gradients
    /// (straight-through for the hard codes) are accumulated into `store.grads`.
    pub fn loss(
        &mut self,
        b: &B,
        x: &Tensor<B>,
        gumbel: &Tensor<B>,
        tau: f64,
        w: &LossWeights,
        backward: bool,
    ) -> Result<LossParts> {
        self.check_images(x)?;
        if !(tau.is_finite() && tau > 0.0) {
            return invalid(OP, format!("temperature must be positive, got {tau}"));
        }
        let (n, c, v, g) = (x.shape()[0], self.cfg.input_channels, self.cfg.vocab_size, self.grid());
        if gumbel.shape() != [n, g, g, v] {
            return shape_err(OP, format!("noise {:?} is not [{n}, {g}, {g}, {v}]", gumbel.shape()));
        }
        let ParamStore { params, grads, .. } = &mut self.store;
        let xm = map_pixels(b, x)?;
        let (logits, ecache) = self.encoder.forward(b, params, &xm)?;
        let z = ops::permute(b, &logits, &[0, 2, 3, 1])?; // [n, g, g, V]
        drop(logits);
        let rows = (n * g * g) as f64;

        // Hard codes: one-hot of argmax(z + gumbel), computed on the device as
        // 1 + sign(p − max p) (ties have probability zero under continuous noise).
        let p = ops::add(b, &z, gumbel)?;
        let pmax = ops::reduce(b, ReduceOp::Max, &p, 3, true)?;
        let hard = ops::affine(b, &ops::unary(b, UnaryOp::Sign, &ops::sub(b, &p, &pmax)?)?, 1.0, 1.0)?;
        let codes = ops::permute(b, &hard, &[0, 3, 1, 2])?;
        drop(hard);
        let (out, dcache) = self.decoder.forward(b, params, &codes)?;
        drop(codes);

        // Reconstruction.
        let (means, scales) = split_channels(b, &out, c)?;
        let numel = means.numel() as f64;
        let (recon, dmeans, dscales) = match w.recon {
            Recon::L2 => {
                let s = ops::unary(b, UnaryOp::Sigmoid, &means)?;
                let diff = ops::sub(b, &s, &xm)?;
                let l = scalar(b, &ops::reduce_all(b, ReduceOp::Mean, &ops::unary(b, UnaryOp::Square, &diff)?)?)?;
                // d/dμ = 2 (σ − t) σ (1 − σ) / N.
                let ds = ops::mul(b, &s, &ops::affine(b, &s, -1.0, 1.0)?)?;
                let dm = ops::mul(b, &ops::affine(b, &diff, 2.0 / numel, 0.0)?, &ds)?;
                let zero = Tensor::zeros(b, means.shape())?;
                (l, dm, zero)
            }
            Recon::LogitLaplace => {
                // nll = ln 2 + ls + ln(t (1 − t)) + |logit t − μ| / e^ls.
                let lt = ops::sub(
                    b,
                    &ops::unary(b, UnaryOp::Ln, &xm)?,
                    &ops::unary(b, UnaryOp::Ln, &ops::affine(b, &xm, -1.0, 1.0)?)?,
                )?;
                let diff = ops::sub(b, &lt, &means)?;
                let inv = ops::unary(b, UnaryOp::Exp, &ops::unary(b, UnaryOp::Neg, &scales)?)?;
                let a = ops::mul(b, &ops::unary(b, UnaryOp::Abs, &diff)?, &inv)?;
                let lx = ops::add(
                    b,
                    &ops::unary(b, UnaryOp::Ln, &xm)?,
                    &ops::unary(b, UnaryOp::Ln, &ops::affine(b, &xm, -1.0, 1.0)?)?,
                )?;
                let nll = ops::add(b, &ops::add(b, &scales, &lx)?, &a)?;
                let l = scalar(b, &ops::reduce_all(b, ReduceOp::Mean, &nll)?)? + libm::log(2.0);
                let dm = ops::mul(b, &ops::unary(b, UnaryOp::Sign, &diff)?, &inv)?;
                let dm = ops::affine(b, &dm, -1.0 / numel, 0.0)?;
                let dl = ops::affine(b, &a, -1.0 / numel, 1.0 / numel)?;
                (l, dm, dl)
            }
        };

        // Regularizers on q = softmax(z).
        let lq = ops::log_softmax(b, &z)?;
        let q = ops::unary(b, UnaryOp::Exp, &lq)?;
        let qlq = ops::mul(b, &q, &lq)?;
        let entropy = -scalar(b, &ops::reduce_all(b, ReduceOp::Sum, &qlq)?)? / rows;
        drop(qlq);
        let ln_v = libm::log(v as f64);
        let kl = ln_v - entropy;
        let q2 = q.duplicate(b)?.reshape(&[n * g * g, v])?;
        let qbar = ops::reduce(b, ReduceOp::Mean, &q2, 0, false)?; // [V]
        drop(q2);
        let lqbar = ops::unary(b, UnaryOp::Ln, &ops::affine(b, &qbar, 1.0, 1e-12)?)?;
        let usage = scalar(b, &ops::reduce_all(b, ReduceOp::Sum, &ops::mul(b, &qbar, &lqbar)?)?)? + ln_v;
        let total = recon + w.kl * kl + w.usage * usage + w.entropy * entropy;
        let parts = LossParts { total, recon, kl, usage, entropy };
        if !total.is_finite() {
            return Err(Error::NonFinite { what: format!("tokenizer loss {parts:?}") });
        }
        if !backward {
            return Ok(parts);
        }

        // Decoder, then the straight-through estimator: ∂codes flows through soft.
        let dout = join_channels(b, &dmeans, &dscales)?;
        let dcodes = self.decoder.backward(b, params, grads, &dcache, &dout)?;
        drop(dcache);
        let dhard = ops::permute(b, &dcodes, &[0, 2, 3, 1])?;
        let soft = ops::softmax(b, &ops::affine(b, &p, 1.0 / tau, 0.0)?)?;
        let mut dz = ops::affine(b, &ops::softmax_backward(b, &soft, &dhard)?, 1.0 / tau, 0.0)?;

        // KL and entropy: ∂/∂q of mean (Σ q ln q) is (ln q + 1) / R; the usage term adds
        // (ln q̄ + 1) / R to every row.
        let ch = (w.kl - w.entropy) / rows;
        let dq_tok = ops::affine(b, &lq, ch, ch)?;
        let dq_use = ops::affine(b, &lqbar, w.usage / rows, w.usage / rows)?;
        let dq = ops::add(b, &dq_tok, &dq_use)?;
        let dreg = ops::softmax_backward(b, &q, &dq)?;
        ops::axpy(b, 1.0, &dreg, &mut dz)?;
        let dlogits = ops::permute(b, &dz, &[0, 3, 1, 2])?;
        self.encoder.backward(b, params, grads, &ecache, &dlogits)?;
        Ok(parts)
    }

    /// Codebook statistics and reconstruction error of the argmax codes on images `x`
    /// `[n, 3, S, S]` in `[0, 1]` (inference only).
    pub fn evaluate(&self, b: &B, x: &Tensor<B>) -> Result<CodebookStats> {
        self.check_images(x)?;
        let v = self.cfg.vocab_size;
        let params = &self.store.params;
        let z = self.encoder.infer_logits_last(b, params, &map_pixels(b, x)?)?;
        let tokens = ops::argmax(b, &z)?;
        let q = ops::softmax(b, &z)?;
        let qmax = ops::reduce(b, ReduceOp::Max, &q, 3, false)?;
        let sharpness = scalar(b, &ops::reduce_all(b, ReduceOp::Mean, &qmax)?)?;
        let lq = ops::log_softmax(b, &z)?;
        let ent = -scalar(b, &ops::reduce_all(b, ReduceOp::Sum, &ops::mul(b, &q, &lq)?)?)? / tokens.numel() as f64;
        let ids = tokens.to_vec(b)?;
        let mut hist = vec![0usize; v];
        for &t in &ids {
            hist[t as usize] += 1;
        }
        let total = ids.len() as f64;
        let h: f64 = hist
            .iter()
            .filter(|&&k| k > 0)
            .map(|&k| {
                let p = k as f64 / total;
                -p * libm::log(p)
            })
            .sum();
        let rec = reconstruct(b, &self.decoder.decode_tokens(b, params, &tokens)?)?;
        let mse =
            scalar(b, &ops::reduce_all(b, ReduceOp::Mean, &ops::unary(b, UnaryOp::Square, &ops::sub(b, &rec, x)?)?)?)?;
        Ok(CodebookStats {
            images: x.shape()[0],
            tokens: ids.len(),
            codes_used: hist.iter().filter(|&&k| k > 0).count(),
            vocab: v,
            perplexity: libm::exp(h),
            sharpness,
            token_entropy: ent,
            recon_mse: mse,
        })
    }
}

/// What [`Tokenizer::evaluate`] measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CodebookStats {
    pub images: usize,
    pub tokens: usize,
    /// Distinct argmax codes.
    pub codes_used: usize,
    pub vocab: usize,
    /// `exp` of the entropy of the argmax-code histogram.
    pub perplexity: f64,
    /// Mean over tokens of the largest code probability.
    pub sharpness: f64,
    /// Mean per-token entropy of `softmax(logits)` (nats).
    pub token_entropy: f64,
    /// Pixel-space MSE (`[0, 1]` pixels) of the reconstruction from the argmax codes.
    pub recon_mse: f64,
}

/// One progress report of [`train_tokenizer`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// 1-based.
    pub step: u64,
    pub steps: u64,
    pub loss: LossParts,
    pub tau: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Distinct argmax codes of the hard samples of this batch.
    pub batch_codes: usize,
}

/// Train a fresh tokenizer for `cfg.steps` steps. `next_batch(step)` gives the images of
/// 0-based step `step`, `[cfg.batch, 3, S, S]` row-major `f32` in `[0, 1]`; `report` is
/// called every `cfg.log_every` steps and after the last one.
pub fn train_tokenizer<B: Backend>(
    b: &B,
    cfg: &TokenizerTrainConfig,
    mut next_batch: impl FnMut(u64) -> Result<Vec<f32>>,
    mut report: impl FnMut(&StepReport) -> Result<()>,
) -> Result<Tokenizer<B>> {
    cfg.validate()?;
    let mut tok = Tokenizer::new(b, cfg.dvae, cfg.image_size, cfg.seed)?;
    let mut opt = OptState {
        m: b.alloc(tok.store.table.params_len())?,
        v: b.alloc(tok.store.table.params_len())?,
        step: 0,
        groups: param_groups(&tok.store.table, cfg.adamw.weight_decay),
    };
    let sched = cfg.schedule()?;
    let w = cfg.weights();
    let s = cfg.image_size;
    let shape = [cfg.batch, 3, s, s];
    let noise_seed = cfg.seed ^ 0x9e37_79b9_7f4a_7c15;
    let per_step = (cfg.batch * tok.grid() * tok.grid() * cfg.dvae.vocab_size) as u64;
    for step in 0..cfg.steps {
        let data = next_batch(step)?;
        if data.len() != shape.iter().product::<usize>() {
            return shape_err(OP, format!("batch of {} values, expected {shape:?}", data.len()));
        }
        let data: Vec<f64> = data.iter().map(|&v| v as f64).collect();
        let x = Tensor::from_f64(b, &shape, &data)?;
        let tau = cfg.tau(step);
        let noise = tok.gumbel_noise(b, cfg.batch, noise_seed, step.wrapping_mul(per_step))?;
        tok.store.zero_grads(b)?;
        let parts = tok.loss(b, &x, &noise, tau, &w, true)?;
        let lr = sched.lr(step);
        let st = apply_optimizer(b, &mut tok.store, &mut opt, &cfg.adamw, lr)?;
        let last = step + 1 == cfg.steps;
        if last || (cfg.log_every > 0 && (step + 1) % cfg.log_every == 0) {
            let p = ops::add(
                b,
                &noise,
                &ops::permute(b, &tok.encoder.infer(b, &tok.store.params, &map_pixels(b, &x)?)?, &[0, 2, 3, 1])?,
            )?;
            let ids = ops::argmax(b, &p)?.to_vec(b)?;
            let mut seen = vec![false; cfg.dvae.vocab_size];
            ids.iter().for_each(|&i| seen[i as usize] = true);
            let batch_codes = seen.iter().filter(|&&s| s).count();
            report(&StepReport {
                step: step + 1,
                steps: cfg.steps,
                loss: parts,
                tau,
                lr,
                grad_norm: st.grad_norm,
                batch_codes,
            })?;
        }
    }
    Ok(tok)
}

// ---- helpers ------------------------------------------------------------------------------

/// The one value of a reduced tensor, on the host.
fn scalar<B: Backend>(b: &B, t: &Tensor<B>) -> Result<f64> {
    Ok(t.to_f64(b)?.first().copied().unwrap_or(0.0))
}

/// `[n, 2c, H, W] → ([n, c, H, W], [n, c, H, W])`.
pub(crate) fn split_channels<B: Backend>(b: &B, x: &Tensor<B>, c: usize) -> Result<(Tensor<B>, Tensor<B>)> {
    let s = x.shape();
    if s.len() != 4 || s[1] != 2 * c {
        return shape_err(OP, format!("decoder output {s:?} does not have {} channels", 2 * c));
    }
    let (n, chw) = (s[0], c * s[2] * s[3]);
    let half = [n, c, s[2], s[3]];
    let mut a = Tensor::zeros(b, &half)?;
    let mut d = Tensor::zeros(b, &half)?;
    for i in 0..n {
        for (k, t) in [&mut a, &mut d].into_iter().enumerate() {
            let src = View { buf: x.buf(), offset: (2 * i + k) * chw, len: chw };
            let mut dst = t.view_mut();
            dst.offset = i * chw;
            dst.len = chw;
            b.copy(src, dst)?;
        }
    }
    Ok((a, d))
}

/// The inverse of [`split_channels`].
pub(crate) fn join_channels<B: Backend>(b: &B, a: &Tensor<B>, d: &Tensor<B>) -> Result<Tensor<B>> {
    let s = a.shape();
    if s.len() != 4 || d.shape() != s {
        return shape_err(OP, format!("halves {s:?} and {:?} differ", d.shape()));
    }
    let (n, chw) = (s[0], s[1] * s[2] * s[3]);
    let mut out = Tensor::zeros(b, &[n, 2 * s[1], s[2], s[3]])?;
    for i in 0..n {
        for (k, t) in [a, d].into_iter().enumerate() {
            let src = View { buf: t.buf(), offset: i * chw, len: chw };
            let mut dst = out.view_mut();
            dst.offset = (2 * i + k) * chw;
            dst.len = chw;
            b.copy(src, dst)?;
        }
    }
    Ok(out)
}

// ---- std: data sets and checkpoints -------------------------------------------------------

#[cfg(feature = "std")]
pub use self::std_impl::*;

#[cfg(feature = "std")]
mod std_impl {
    use super::*;
    use crate::arch::{ArchKind, ArchSpec};
    use crate::checkpoint::{self, LoadReport};
    use crate::data::{Augment, Dataset, Loader, LoaderConfig, Split};
    use crate::tokenizer::tokenizer_arch_name;
    use alloc::collections::BTreeMap;
    use alloc::string::{String, ToString};
    use std::path::Path;
    use std::time::Instant;

    /// Held-out images evaluated at the end of [`train_on_dataset`].
    pub const EVAL_IMAGES: usize = 512;

    /// What a run did.
    #[derive(Clone, Debug, PartialEq)]
    pub struct TrainSummary {
        pub arch: String,
        pub steps: u64,
        pub batch: usize,
        pub image_size: usize,
        /// Wall time of the training loop (data included), seconds.
        pub seconds: f64,
        pub images_per_second: f64,
        /// The loss terms of the last step.
        pub last: LossParts,
        /// On held-out images (the test split where there is one).
        pub eval: CodebookStats,
        /// Where the evaluation images came from.
        pub eval_split: &'static str,
    }

    impl TrainSummary {
        /// A one-line summary.
        pub fn line(&self) -> String {
            let e = &self.eval;
            format!(
                "{} steps in {:.1} s ({:.1} img/s); held-out {} images: recon MSE {:.5}, codes used {}/{}, \
                 perplexity {:.1}, sharpness (mean max prob) {:.3}, token entropy {:.3} nats",
                self.steps,
                self.seconds,
                self.images_per_second,
                e.images,
                e.recon_mse,
                e.codes_used,
                e.vocab,
                e.perplexity,
                e.sharpness,
                e.token_entropy
            )
        }
    }

    /// One progress line.
    pub fn progress_line(r: &StepReport, images_per_second: f64) -> String {
        format!(
            "step {}/{}  loss {:.4}  recon {:.5}  H {:.3}  usage-KL {:.3}  codes {}  tau {:.3}  lr {:.2e}  |g| {:.2}  {:.1} img/s",
            r.step,
            r.steps,
            r.loss.total,
            r.loss.recon,
            r.loss.entropy,
            r.loss.usage,
            r.batch_codes,
            r.tau,
            r.lr,
            r.grad_norm,
            images_per_second
        )
    }

    /// Train on the data set at `data` (any [`Dataset::open`] source), views resized
    /// to `cfg.image_size`, and evaluate on up to [`EVAL_IMAGES`] held-out images.
    /// Progress lines go to `log` (every `cfg.log_every` steps).
    pub fn train_on_dataset<B: Backend>(
        b: &B,
        cfg: &TokenizerTrainConfig,
        data: &Path,
        mut log: impl FnMut(&str),
    ) -> Result<(Tokenizer<B>, TrainSummary)> {
        cfg.validate()?;
        let s = cfg.image_size as u32;
        let train = Dataset::open(data, Split::Train)?;
        log(&format!("data: {}", train.describe()));
        let mut loader = Loader::new(train, LoaderConfig::train(cfg.batch, cfg.seed, Augment::resize(s)))?;
        let (eval_ds, eval_split) = match Dataset::open(data, Split::Test) {
            Ok(d) => (d, "test"),
            Err(_) => (Dataset::open(data, Split::Train)?, "train"),
        };
        let eval_batch = Loader::new(eval_ds, LoaderConfig::eval(EVAL_IMAGES, Augment::resize(s)))?.next_batch()?;
        let t0 = Instant::now();
        let mut last = LossParts::default();
        let tok = train_tokenizer(
            b,
            cfg,
            |_| Ok(loader.next_batch()?.enhancer),
            |r| {
                last = r.loss;
                let ips = (r.step as usize * cfg.batch) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
                log(&progress_line(r, ips));
                Ok(())
            },
        )?;
        b.synchronize()?;
        let seconds = t0.elapsed().as_secs_f64();
        let x = Tensor::from_f64(
            b,
            &[eval_batch.len(), 3, cfg.image_size, cfg.image_size],
            &eval_batch.enhancer.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        )?;
        let eval = tok.evaluate(b, &x)?;
        let summary = TrainSummary {
            arch: tokenizer_arch_name(&cfg.dvae, cfg.image_size),
            steps: cfg.steps,
            batch: cfg.batch,
            image_size: cfg.image_size,
            seconds,
            images_per_second: (cfg.steps as usize * cfg.batch) as f64 / seconds.max(1e-9),
            last,
            eval,
            eval_split,
        };
        Ok((tok, summary))
    }

    /// The metadata of a tokenizer checkpoint: `cim.arch` (the tokenizer name,
    /// [`tokenizer_arch_name`]), `cim.family = dvae_tokenizer`, `cim.encoder` /
    /// `cim.decoder` (their [`crate::arch`] names, loadable alone after stripping the
    /// prefix), `cim.prefixes`, `cim.image_size`, `cim.grid`, `cim.vocab`,
    /// `cim.normalize = map_pixels` (with `cim.mean` / `cim.std`), plus `extra`.
    pub fn tokenizer_metadata<B: Backend>(
        tok: &Tokenizer<B>,
        extra: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let enc = ArchSpec { kind: ArchKind::DvaeEncoder { cfg: tok.cfg, img_size: tok.image_size } };
        let dec = ArchSpec { kind: ArchKind::DvaeDecoder { cfg: tok.cfg, img_size: tok.image_size } };
        let mut m = enc.metadata();
        m.insert("cim.arch".to_string(), tokenizer_arch_name(&tok.cfg, tok.image_size));
        m.insert("cim.family".to_string(), "dvae_tokenizer".to_string());
        m.insert("cim.encoder".to_string(), enc.arch_string());
        m.insert("cim.decoder".to_string(), dec.arch_string());
        m.insert("cim.prefixes".to_string(), format!("{ENCODER}.,{DECODER}."));
        m.insert("cim.grid".to_string(), tok.grid().to_string());
        m.insert("cim.vocab".to_string(), tok.cfg.vocab_size.to_string());
        m.insert(
            "cim.output".to_string(),
            "encoder.*: logits [B, vocab, h, w]; decoder.*: [B, 2C, H, W] logit-Laplace means, then log-scales"
                .to_string(),
        );
        for (k, v) in extra {
            m.insert(k.clone(), v.clone());
        }
        m
    }

    /// The metadata entries of a run's statistics (`cim.tokenizer.*`).
    pub fn summary_metadata(s: &TrainSummary) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let e = &s.eval;
        for (k, v) in [
            ("steps", s.steps.to_string()),
            ("batch", s.batch.to_string()),
            ("codes_used", e.codes_used.to_string()),
            ("perplexity", format!("{:.2}", e.perplexity)),
            ("sharpness", format!("{:.4}", e.sharpness)),
            ("recon_mse", format!("{:.6}", e.recon_mse)),
        ] {
            m.insert(format!("cim.tokenizer.{k}"), v);
        }
        m
    }

    /// Write both halves to one safetensors file, atomically, under `encoder.` /
    /// `decoder.` (see the module docs of [`crate::tokenizer`]).
    pub fn save_tokenizer<B: Backend>(
        path: impl AsRef<Path>,
        tok: &Tokenizer<B>,
        b: &B,
        extra: &BTreeMap<String, String>,
    ) -> Result<()> {
        checkpoint::save(path, &tok.store, b, "", &tokenizer_metadata(tok, extra))
    }

    /// Fill a tokenizer store (a [`crate::cim::CimModel`]'s, or a [`Tokenizer`]'s) from a
    /// file written by [`save_tokenizer`]; every tensor must fit.
    pub fn load_tokenizer<B: Backend>(path: impl AsRef<Path>, store: &mut ParamStore<B>, b: &B) -> Result<LoadReport> {
        checkpoint::load_into(path, store, b, "")
    }
}
