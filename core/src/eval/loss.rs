//! The classification loss of fine-tuning and its batch mixing, on the host: the logits
//! of a batch are a few hundred numbers, so they are downloaded, the loss and its
//! gradient computed here, and the gradient uploaded.
//!
//! - [`smooth_targets`]: label smoothing as timm's `LabelSmoothingCrossEntropy` /
//!   `mixup_target`: `1 − ε + ε/K` on the true class, `ε/K` elsewhere.
//! - [`soft_cross_entropy`]: `mean_i Σ_k −t_ik · log softmax(z_i)_k` and its gradient
//!   `(softmax(z_i) − t_i) / n`, for any soft targets (smoothed, mixed).
//! - [`mix_batch`]: timm's batch-mode `Mixup` — mixup (`λ ~ Beta(α, α)`, images and
//!   targets blended with the batch reversed) or CutMix (a box of area `1 − λ` pasted from
//!   the reversed batch, `λ` corrected to the box actually pasted), one of them per batch
//!   with probability `switch_prob` for CutMix when both are on, applied with probability
//!   `prob`. The mixing is an input transform: nothing flows back through it.

use crate::error::{invalid, Result};
use crate::rng::Stream;
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

const OP: &str = "fine-tuning loss";

/// Soft targets `[labels.len(), classes]` with label smoothing `eps` (0: one-hot).
pub fn smooth_targets(labels: &[u32], classes: usize, eps: f64) -> Result<Vec<f64>> {
    if !(0.0..1.0).contains(&eps) {
        return invalid(OP, format!("label smoothing {eps} is not in [0, 1)"));
    }
    let off = eps / classes as f64;
    let mut t = vec![off; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        if l as usize >= classes {
            return invalid(OP, format!("label {l} of sample {i} is not below the {classes} classes"));
        }
        t[i * classes + l as usize] += 1.0 - eps;
    }
    Ok(t)
}

/// The mean soft-target cross-entropy of `logits` `[rows, classes]` and its gradient with
/// respect to the logits (see the module docs).
pub fn soft_cross_entropy(logits: &[f64], targets: &[f64], rows: usize, classes: usize) -> Result<(f64, Vec<f64>)> {
    if rows == 0 || classes == 0 || logits.len() != rows * classes || targets.len() != logits.len() {
        return invalid(
            OP,
            format!("{} logits and {} targets for {rows} rows of {classes} classes", logits.len(), targets.len()),
        );
    }
    let mut loss = 0.0;
    let mut grad = vec![0.0; logits.len()];
    let inv = 1.0 / rows as f64;
    for ((z, t), g) in
        logits.chunks_exact(classes).zip(targets.chunks_exact(classes)).zip(grad.chunks_exact_mut(classes))
    {
        let m = z.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v));
        let sum: f64 = z.iter().map(|&v| libm::exp(v - m)).sum();
        let lse = m + libm::log(sum);
        let tsum: f64 = t.iter().sum();
        // Σ_k −t_k (z_k − lse) = lse · Σ t − Σ t_k z_k.
        loss += lse * tsum - t.iter().zip(z).map(|(a, b)| a * b).sum::<f64>();
        for k in 0..classes {
            g[k] = (tsum * libm::exp(z[k] - lse) - t[k]) * inv;
        }
    }
    Ok((loss * inv, grad))
}

/// How many rows of `logits` `[labels.len(), classes]` have their maximum (the first, on
/// ties) at the label.
pub fn top1_correct(logits: &[f32], labels: &[u32], classes: usize) -> usize {
    logits
        .chunks_exact(classes)
        .zip(labels)
        .filter(|(z, &l)| {
            let mut best = 0;
            for k in 1..classes {
                if z[k] > z[best] {
                    best = k;
                }
            }
            best == l as usize
        })
        .count()
}

/// Mixup / CutMix settings (timm's `Mixup` in batch mode).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MixConfig {
    /// Mixup's `α` (0: off). The paper's ViT recipe: 0.8.
    pub mixup_alpha: f64,
    /// CutMix's `α` (0: off). The paper: 1.0.
    pub cutmix_alpha: f64,
    /// Probability that a batch is mixed at all.
    pub prob: f64,
    /// With both on, the probability of CutMix rather than mixup.
    pub switch_prob: f64,
}

impl MixConfig {
    /// No mixing.
    pub const OFF: MixConfig = MixConfig { mixup_alpha: 0.0, cutmix_alpha: 0.0, prob: 1.0, switch_prob: 0.5 };

    pub fn enabled(&self) -> bool {
        self.mixup_alpha > 0.0 || self.cutmix_alpha > 0.0
    }

    pub fn validate(&self) -> Result<()> {
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        if !ok(self.mixup_alpha) || !ok(self.cutmix_alpha) {
            return invalid(OP, format!("mixup α {} and cutmix α {} must be ≥ 0", self.mixup_alpha, self.cutmix_alpha));
        }
        if !(0.0..=1.0).contains(&self.prob) || !(0.0..=1.0).contains(&self.switch_prob) {
            return invalid(OP, format!("mix probabilities {} and {} must lie in [0, 1]", self.prob, self.switch_prob));
        }
        Ok(())
    }
}

/// What [`mix_batch`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mixed {
    None,
    /// Blended with weight `lam` on the batch itself.
    Mixup {
        lam: f64,
    },
    /// Rows `y0..y1`, columns `x0..x1` pasted; `lam` is the area kept.
    CutMix {
        lam: f64,
        y0: usize,
        y1: usize,
        x0: usize,
        x1: usize,
    },
}

/// A uniform `f64` in `(0, 1)`.
fn unit_open(rng: &mut Stream) -> f64 {
    (rng.next_u32() as f64 + 0.5) * (1.0 / 4_294_967_296.0)
}

/// A standard normal (Box–Muller).
fn normal(rng: &mut Stream) -> f64 {
    let (u, v) = (unit_open(rng), unit_open(rng));
    libm::sqrt(-2.0 * libm::log(u)) * libm::cos(core::f64::consts::TAU * v)
}

/// A `Gamma(shape, 1)` sample (Marsaglia & Tsang; `shape < 1` through `Gamma(shape + 1) ·
/// U^(1/shape)`).
pub fn gamma(rng: &mut Stream, shape: f64) -> f64 {
    if shape < 1.0 {
        let u = unit_open(rng);
        return gamma(rng, shape + 1.0) * libm::pow(u, 1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / libm::sqrt(9.0 * d);
    loop {
        let x = normal(rng);
        let v = 1.0 + c * x;
        if v <= 0.0 {
            continue;
        }
        let v = v * v * v;
        let u = unit_open(rng);
        if libm::log(u) < 0.5 * x * x + d - d * v + d * libm::log(v) {
            return d * v;
        }
    }
}

/// A `Beta(a, a)` sample.
pub fn beta_sym(rng: &mut Stream, a: f64) -> f64 {
    let x = gamma(rng, a);
    let y = gamma(rng, a);
    x / (x + y)
}

/// Mix a batch in place: `images` `[n, c, h, w]`, `targets` `[n, classes]` (soft, already
/// smoothed). See the module docs; `rng` decides everything.
pub fn mix_batch(
    images: &mut [f32],
    shape: [usize; 4],
    targets: &mut [f64],
    classes: usize,
    cfg: &MixConfig,
    rng: &mut Stream,
) -> Result<Mixed> {
    cfg.validate()?;
    let [n, c, h, w] = shape;
    if images.len() != n * c * h * w || targets.len() != n * classes {
        return invalid(
            OP,
            format!("mix: {} pixels and {} targets for a batch {shape:?}", images.len(), targets.len()),
        );
    }
    if !cfg.enabled() || n < 2 || unit_open(rng) >= cfg.prob {
        return Ok(Mixed::None);
    }
    let cutmix = match (cfg.mixup_alpha > 0.0, cfg.cutmix_alpha > 0.0) {
        (true, true) => unit_open(rng) < cfg.switch_prob,
        (false, true) => true,
        _ => false,
    };
    let per = c * h * w;
    let orig = images.to_vec();
    let orig_t = targets.to_vec();
    let mixed = if cutmix {
        let lam = beta_sym(rng, cfg.cutmix_alpha);
        // timm's rand_bbox: a box of side √(1 − λ) times the image's, centered uniformly,
        // clipped to the image.
        let r = libm::sqrt(1.0 - lam);
        let (ch, cw) = ((h as f64 * r) as usize, (w as f64 * r) as usize);
        let cy = rng.below(h as u32) as usize;
        let cx = rng.below(w as u32) as usize;
        let (y0, y1) = (cy.saturating_sub(ch / 2), (cy + ch / 2).min(h));
        let (x0, x1) = (cx.saturating_sub(cw / 2), (cx + cw / 2).min(w));
        for i in 0..n {
            let j = n - 1 - i;
            for ch_i in 0..c {
                for y in y0..y1 {
                    let row = ch_i * h * w + y * w;
                    images[i * per + row + x0..i * per + row + x1]
                        .copy_from_slice(&orig[j * per + row + x0..j * per + row + x1]);
                }
            }
        }
        let lam = 1.0 - ((y1 - y0) * (x1 - x0)) as f64 / (h * w) as f64;
        Mixed::CutMix { lam, y0, y1, x0, x1 }
    } else {
        let lam = beta_sym(rng, cfg.mixup_alpha);
        let (a, b) = (lam as f32, (1.0 - lam) as f32);
        for i in 0..n {
            let j = n - 1 - i;
            for (o, &v) in images[i * per..(i + 1) * per].iter_mut().zip(&orig[j * per..(j + 1) * per]) {
                *o = a * *o + b * v;
            }
        }
        Mixed::Mixup { lam }
    };
    let lam = match mixed {
        Mixed::Mixup { lam } | Mixed::CutMix { lam, .. } => lam,
        Mixed::None => 1.0,
    };
    for i in 0..n {
        let j = n - 1 - i;
        for k in 0..classes {
            targets[i * classes + k] = lam * orig_t[i * classes + k] + (1.0 - lam) * orig_t[j * classes + k];
        }
    }
    Ok(mixed)
}
