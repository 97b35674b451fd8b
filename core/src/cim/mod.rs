//! Corrupted Image Modeling (Fang et al., ICLR 2023, §2 and §A.3): the configuration,
//! the joint model (enhancer, its head, the generator's small BEiT, the frozen dVAE),
//! one training step with both models' gradients, and the optimizer (AdamW with global
//! gradient clipping, warm-up plus cosine schedule).
//!
//! # One step ([`CimModel::step`])
//! ```text
//! tokenizer view ─ map_pixels ─ dVAE encoder (frozen, inference) ─ argmax ─ golden g  [N, L]
//! enhancer view ─ (x − mean)/std ─ BEiT(mask) ─ logits [N, L, V] ─ CE at masked ─ MIM loss
//!                                          └─ sample (Gumbel-max, T) at masked positions
//! g with the samples at masked positions ─ dVAE decoder (frozen) ─ reconstruct ─ [0, 1]
//!   ─ nearest ×(H/h) ─ (x − mean)/std ─ enhancer ─ head ─ RESPIX or REVDET loss
//! total = MIM + w · enhancer loss; both backward passes into one gradient buffer
//! ```
//! The corrupted image is a plain input: no gradient reaches the generator from the
//! enhancer (§2.3). The generator's BEiT sees the same normalized enhancer view as the
//! enhancer's input normalization (`CimConfig::mean` / `std`).
//!
//! # Stores
//! [`CimModel::new`] registers two tables:
//! - the trainable one: the enhancer under [`ENHANCER`] (timm / torchvision names below
//!   it, so `checkpoint::save(path, &store, b, "enhancer.", &meta)` writes a plain timm
//!   or torchvision file), its head under [`ENHANCER_HEAD`], the generator under
//!   [`GENERATOR`]. For a
//!   ViT enhancer the generator shares the patch embedding and blocks 0–1 (aliases,
//!   [`crate::models::beit::Beit::new_shared`]); for a ResNet enhancer it is its own
//!   ViT (width 384 by default, the paper's Table 13).
//! - the frozen tokenizer: the dVAE encoder under [`ENCODER`] and the decoder under
//!   [`DECODER`] (DALL-E names below them). It is never in the optimizer; the caller
//!   loads it from tokenizer checkpoints (`checkpoint::load_into(path, &mut tok, b,
//!   "encoder.")`, likewise `"decoder."`).
//!
//! # Modules
//! - [`target`]: input normalization and the RESPIX targets (sliding window, patch, none);
//! - [`corrupt`]: golden tokens, sampling, token replacement, the corrupted image;
//! - [`step`]: [`StepInput`], [`StepOutput`], the losses and the backward passes;
//! - [`optim`]: parameter groups (no decay on biases, norms, tokens, position
//!   embeddings), clipping and AdamW;
//! - [`schedule`]: linear warm-up plus cosine decay, the paper's batch scaling.

pub mod corrupt;
pub mod model;
pub mod optim;
pub mod schedule;
pub mod step;
pub mod target;
#[cfg(test)]
mod tests;

pub use corrupt::{sampling_seed, select_tokens, Corruption};
pub use model::{CimModel, Enhancer, EnhancerHead};
pub use optim::{apply_optimizer, param_groups, AdamWConfig, OptState, OptStats};
pub use schedule::LrSchedule;
pub use step::{StepInput, StepOutput};

use crate::arch::{ArchKind, ArchSpec, IMAGENET_MEAN, IMAGENET_STD};
use crate::error::{invalid, Result};
use crate::models::beit::{Beit, BeitConfig};
use crate::models::dvae::DvaeConfig;
use crate::models::masking::{scaled_range, BlockMasking, Masking, RandomMasking};
use crate::models::resnet::ResNetConfig;
use crate::models::vit::VitConfig;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};

pub(crate) const OP: &str = "CIM";

/// Name prefix of the enhancer in the trainable store.
pub const ENHANCER: &str = "enhancer";
/// Name prefix of the enhancer's pre-training head in the trainable store.
pub const ENHANCER_HEAD: &str = "enhancer_head";
/// Name prefix of the generator's BEiT in the trainable store.
pub const GENERATOR: &str = "generator";
/// Name prefix of the dVAE encoder in the tokenizer store.
pub const ENCODER: &str = "encoder";
/// Name prefix of the dVAE decoder in the tokenizer store.
pub const DECODER: &str = "decoder";

/// The `eps` of the RESPIX target normalizations: `(x − μ) / sqrt(σ² + eps)`, as MAE's
/// `norm_pix_loss` (1e-6).
pub const TARGET_EPS: f64 = 1e-6;

/// The model being pre-trained.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EnhancerKind {
    /// A vanilla ViT (`img_size` must equal [`CimConfig::image_size`]); the generator has
    /// its width, heads and MLP ratio and shares its patch embedding and blocks 0–1.
    Vit(VitConfig),
    /// A torchvision ResNet (`num_classes` is ignored: no `fc` is registered) with the
    /// conv head of `models::conv_head`. `patch_size` is the token grid's patch (the
    /// generator's and the REVDET head's); the generator is a ViT of
    /// `generator_width` / `generator_heads` (the paper: 384 / 6).
    ResNet { cfg: ResNetConfig, patch_size: usize, generator_width: usize, generator_heads: usize },
}

impl EnhancerKind {
    /// A ResNet enhancer with the paper's generator width (384, 6 heads).
    pub fn resnet(cfg: ResNetConfig, patch_size: usize) -> Self {
        EnhancerKind::ResNet { cfg, patch_size, generator_width: 384, generator_heads: 6 }
    }

    /// The patch size of the token grid.
    pub fn patch_size(&self) -> usize {
        match self {
            EnhancerKind::Vit(v) => v.patch_size,
            EnhancerKind::ResNet { patch_size, .. } => *patch_size,
        }
    }
}

/// How the RESPIX target is normalized (Table 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RespixNorm {
    /// Each pixel by the mean and (biased) variance of its own channel over the `k×k`
    /// window around it, clipped to the image (the backend's `window_stats`: rows
    /// `i − k/2 ..= i + (k−1)/2`). The paper's choice, `k = 8`.
    SlidingWindow { k: usize },
    /// Each pixel by the mean and unbiased variance of the non-overlapping `p×p` patch it
    /// lies in, over all channels together (MAE's `norm_pix_loss`).
    Patch { p: usize },
    /// No normalization: the enhancer's input pixels (normalized by `mean` / `std`, as
    /// MAE's target without `norm_pix_loss`).
    None,
}

impl RespixNorm {
    /// The paper's target: an 8×8 sliding window.
    pub const PAPER: RespixNorm = RespixNorm::SlidingWindow { k: 8 };
}

/// The enhancer's pretext task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Objective {
    /// Pixel residual learning: regress the normalized original pixels, L1 + L2.
    Respix { norm: RespixNorm },
    /// Replaced visual token detection: one logit per token, BCE with logits.
    Revdet,
}

impl Objective {
    /// The paper's enhancer loss weight: 10 for RESPIX, 1 for REVDET (Table 13).
    pub fn paper_weight(&self) -> f64 {
        match self {
            Objective::Respix { .. } => 10.0,
            Objective::Revdet => 1.0,
        }
    }
}

/// Which mask generator [`CimConfig::masking`] builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MaskStrategy {
    /// Uniformly random patches, `k ~ U{k_min..=k_max}` per image (the paper's default).
    #[default]
    Random,
    /// BEiT's block-wise masking with target count `(k_min + k_max) / 2`.
    Block,
}

/// How replacement tokens are drawn at masked positions (Table 7).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// From `softmax(logits / temperature)` (Gumbel-max); the paper uses temperature 1.
    Softmax { temperature: f64 },
    /// The generator's most likely token.
    Argmax,
    /// Uniformly from the vocabulary, ignoring the generator.
    Uniform,
}

/// Everything a CIM run's model needs. See [`CimConfig::new`] for the defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CimConfig {
    pub enhancer: EnhancerKind,
    pub objective: Objective,
    /// Blocks of the generator's BEiT (the paper: 4 to 6).
    pub generator_depth: usize,
    /// Masked patches per image, `k_min ..= k_max` (the paper: 100 to 120 of 196).
    pub mask_range: (usize, usize),
    pub mask_strategy: MaskStrategy,
    pub sampling: Sampling,
    /// `w` in `MIM + w · enhancer loss`.
    pub enhancer_loss_weight: f64,
    pub tokenizer: DvaeConfig,
    /// Side of the enhancer (and generator) view.
    pub image_size: usize,
    /// Side of the tokenizer view; its token grid must equal the enhancer's patch grid,
    /// and it must divide `image_size` (the corrupted image is upsampled by the ratio).
    pub tokenizer_image_size: usize,
    /// Per-channel normalization of the enhancer and generator inputs (pixels in [0, 1]).
    pub mean: [f64; 3],
    pub std: [f64; 3],
    /// `eps` of the RESPIX target normalization ([`TARGET_EPS`]).
    pub target_eps: f64,
}

impl CimConfig {
    /// The paper's settings for an enhancer, objective and tokenizer: generator depth 4,
    /// random masking of [`scaled_range`] patches (100–120 of 196), softmax sampling at
    /// temperature 1, the objective's paper weight, ImageNet mean/std.
    pub fn new(
        enhancer: EnhancerKind,
        image_size: usize,
        objective: Objective,
        tokenizer: DvaeConfig,
        tokenizer_image_size: usize,
    ) -> Self {
        let p = enhancer.patch_size().max(1);
        let grid = image_size / p;
        CimConfig {
            enhancer,
            objective,
            generator_depth: 4,
            mask_range: scaled_range(grid * grid),
            mask_strategy: MaskStrategy::Random,
            sampling: Sampling::Softmax { temperature: 1.0 },
            enhancer_loss_weight: objective.paper_weight(),
            tokenizer,
            image_size,
            tokenizer_image_size,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            target_eps: TARGET_EPS,
        }
    }

    /// Patches per side of the enhancer view (= tokens per side of the tokenizer view).
    pub fn grid(&self) -> usize {
        self.image_size.checked_div(self.enhancer.patch_size()).unwrap_or(0)
    }

    /// Tokens per image, `L = grid²`.
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// The nearest-upsampling factor from the tokenizer view to the enhancer view.
    pub fn upsample_factor(&self) -> usize {
        self.image_size.checked_div(self.tokenizer_image_size).unwrap_or(0)
    }

    /// The generator's BEiT configuration.
    pub fn generator_config(&self) -> BeitConfig {
        let vocab = self.tokenizer.vocab_size;
        match self.enhancer {
            EnhancerKind::Vit(v) => BeitConfig::for_vit_enhancer(&v, self.generator_depth, vocab),
            EnhancerKind::ResNet { patch_size, generator_width, generator_heads, .. } => BeitConfig::new(
                VitConfig::new(self.image_size, patch_size, generator_width, self.generator_depth, generator_heads),
                vocab,
            ),
        }
    }

    /// The mask generator of [`CimConfig::mask_strategy`] over the patch grid.
    pub fn masking(&self) -> Result<Masking> {
        let (lo, hi) = self.mask_range;
        let g = self.grid();
        Ok(match self.mask_strategy {
            MaskStrategy::Random => Masking::Random(RandomMasking::new(g * g, lo, hi)?),
            MaskStrategy::Block => Masking::Block(BlockMasking::new(g, g, (lo + hi) / 2)?),
        })
    }

    /// The enhancer as a registry architecture (no classifier): what
    /// `RUN/enhancer.safetensors` holds under timm / torchvision names.
    pub fn enhancer_arch(&self) -> ArchSpec {
        let kind = match self.enhancer {
            EnhancerKind::Vit(cfg) => ArchKind::Vit { cfg, classes: None },
            EnhancerKind::ResNet { cfg, .. } => {
                ArchKind::ResNet { cfg: ResNetConfig { num_classes: None, ..cfg }, img_size: self.image_size }
            }
        };
        ArchSpec { kind }
    }

    /// The metadata of the saved enhancer: [`ArchSpec::metadata`] of
    /// [`CimConfig::enhancer_arch`] with this run's input normalization, plus
    /// `cim.objective` (`respix` / `revdet`, the pre-training head) and `cim.patch_size`
    /// (the token grid's patch).
    pub fn enhancer_metadata(&self) -> BTreeMap<String, String> {
        let mut m = self.enhancer_arch().metadata();
        let join = |v: &[f64; 3]| v.iter().map(|x| format!("{x}")).collect::<alloc::vec::Vec<_>>().join(",");
        m.insert("cim.mean".to_string(), join(&self.mean));
        m.insert("cim.std".to_string(), join(&self.std));
        let objective = match self.objective {
            Objective::Respix { .. } => "respix",
            Objective::Revdet => "revdet",
        };
        m.insert("cim.objective".to_string(), objective.to_string());
        m.insert("cim.patch_size".to_string(), self.enhancer.patch_size().to_string());
        m
    }

    /// Check that every size and setting fits; the error says what does not.
    pub fn validate(&self) -> Result<()> {
        let (h, t) = (self.image_size, self.tokenizer_image_size);
        if h == 0 || t == 0 {
            return invalid(OP, format!("image sizes must be positive (enhancer {h}, tokenizer {t})"));
        }
        let p = self.enhancer.patch_size();
        if p == 0 || !h.is_multiple_of(p) {
            return invalid(OP, format!("enhancer image size {h} is not a multiple of the patch size {p}"));
        }
        match &self.enhancer {
            EnhancerKind::Vit(v) => {
                v.validate()?;
                if v.img_size != h {
                    return invalid(
                        OP,
                        format!("the ViT enhancer takes {} px, the enhancer view is {h} px", v.img_size),
                    );
                }
                if v.in_chans != 3 {
                    return invalid(OP, format!("the enhancer must take 3 channels, not {}", v.in_chans));
                }
                let shared = Beit::SHARED_BLOCKS.min(self.generator_depth);
                if v.depth < shared {
                    return invalid(
                        OP,
                        format!("the ViT enhancer has {} blocks; the generator shares {shared}", v.depth),
                    );
                }
            }
            EnhancerKind::ResNet { cfg, generator_width, generator_heads, .. } => {
                if cfg.in_channels != 3 {
                    return invalid(OP, format!("the enhancer must take 3 channels, not {}", cfg.in_channels));
                }
                let s = cfg.stride();
                if !s.is_multiple_of(p) {
                    return invalid(OP, format!("the ResNet stride {s} is not a multiple of the patch size {p}"));
                }
                if !h.is_multiple_of(s) {
                    return invalid(OP, format!("enhancer image size {h} is not a multiple of the ResNet stride {s}"));
                }
                if *generator_width == 0 || *generator_heads == 0 || !generator_width.is_multiple_of(*generator_heads) {
                    return invalid(
                        OP,
                        format!("generator width {generator_width} must be a positive multiple of its {generator_heads} heads"),
                    );
                }
            }
        }
        if self.generator_depth == 0 {
            return invalid(OP, "the generator needs at least one block");
        }
        let tok = &self.tokenizer;
        if tok.input_channels != 3 {
            return invalid(OP, format!("the tokenizer must take 3 channels, not {}", tok.input_channels));
        }
        if tok.vocab_size == 0 || tok.group_count == 0 || tok.group_count > 16 {
            return invalid(OP, format!("bad tokenizer configuration {tok:?}"));
        }
        let d = tok.downsample();
        if !t.is_multiple_of(d) {
            return invalid(
                OP,
                format!("tokenizer image size {t} is not a multiple of the tokenizer's downsampling {d}"),
            );
        }
        if t / d != self.grid() {
            return invalid(
                OP,
                format!(
                    "the tokenizer grid ({t} px / {d} = {}×{}) must equal the enhancer patch grid ({h} px / patch {p} = {g}×{g})",
                    t / d,
                    t / d,
                    g = self.grid()
                ),
            );
        }
        if t > h || !h.is_multiple_of(t) {
            return invalid(
                OP,
                format!(
                    "the enhancer view ({h} px) must be an integer multiple of the tokenizer view ({t} px): \
                     the corrupted image is upsampled by nearest neighbour"
                ),
            );
        }
        let (lo, hi) = self.mask_range;
        let n = self.num_patches();
        if lo > hi || hi > n {
            return invalid(OP, format!("mask range {lo}..={hi} does not fit the {n} patches"));
        }
        if let Sampling::Softmax { temperature } = self.sampling {
            if !temperature.is_finite() || temperature <= 0.0 {
                return invalid(OP, format!("sampling temperature must be positive and finite, got {temperature}"));
            }
        }
        let w = self.enhancer_loss_weight;
        if !w.is_finite() || w < 0.0 {
            return invalid(OP, format!("enhancer loss weight must be finite and ≥ 0, got {w}"));
        }
        match self.objective {
            Objective::Respix { norm: RespixNorm::SlidingWindow { k: 0 } } => {
                return invalid(OP, "the RESPIX sliding window must be at least 1 pixel");
            }
            Objective::Respix { norm: RespixNorm::Patch { p: q } } if q == 0 || !h.is_multiple_of(q) => {
                return invalid(OP, format!("RESPIX patch normalization: {q} does not divide the image size {h}"));
            }
            _ => {}
        }
        for c in 0..3 {
            if !self.mean[c].is_finite() || !self.std[c].is_finite() || self.std[c] <= 0.0 {
                return invalid(
                    OP,
                    format!("channel {c}: mean {} / std {} (std must be > 0)", self.mean[c], self.std[c]),
                );
            }
        }
        if !self.target_eps.is_finite() || self.target_eps <= 0.0 {
            return invalid(OP, format!("target eps must be positive, got {}", self.target_eps));
        }
        Ok(())
    }
}
