//! The resolved configuration of a pre-training run ([`PretrainConfig`]), read from and
//! written to TOML, and its translation into the CIM model, optimizer and schedule.

use crate::cim::schedule::{scale_lr, PAPER_MIN_LR, PAPER_PEAK_LR};
use crate::cim::{AdamWConfig, CimConfig, EnhancerKind, MaskStrategy, Objective, RespixNorm, Sampling};
use crate::error::{Error, Result};
use crate::models::dvae::DvaeConfig;
use crate::models::masking::scaled_range;
use crate::models::resnet::{ResNetConfig, Stem};
use crate::models::vit::VitConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub(crate) fn cfg_err(detail: impl Into<String>) -> Error {
    Error::Invalid { op: "pretrain config", detail: detail.into() }
}

/// The enhancer's architecture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnhancerSpec {
    /// `"vit"`, `"resnet18"`, `"resnet50"`, or a serialized ResNet configuration such as
    /// `"resnet(block=basic,layers=2-2-2-2,width=16,stem=small)"` (its stem overrides `stem`).
    pub arch: String,
    /// Token-grid patch size (the ViT's patch; a ResNet's token grid).
    pub patch_size: usize,
    /// ViT width, depth, heads and MLP ratio.
    pub width: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_ratio: f64,
    /// ResNet stem: `"imagenet"` (stride 32) or `"small"` (stride 8, for 32-px images).
    pub stem: String,
    /// ResNet generator (its own ViT): width and heads (the paper: 384 / 6).
    pub generator_width: usize,
    pub generator_heads: usize,
}

impl Default for EnhancerSpec {
    fn default() -> Self {
        EnhancerSpec {
            arch: "vit".into(),
            patch_size: 4,
            width: 192,
            depth: 12,
            heads: 3,
            mlp_ratio: 4.0,
            stem: "small".into(),
            generator_width: 384,
            generator_heads: 6,
        }
    }
}

/// The dVAE tokenizer's hyper-parameters (`models::dvae::DvaeConfig`, 3 channels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenizerSpec {
    pub group_count: usize,
    pub n_hid: usize,
    pub n_blk_per_group: usize,
    pub vocab_size: usize,
    pub n_init: usize,
}

impl Default for TokenizerSpec {
    fn default() -> Self {
        Self::from_dvae(&DvaeConfig::small())
    }
}

impl TokenizerSpec {
    pub fn from_dvae(d: &DvaeConfig) -> Self {
        TokenizerSpec {
            group_count: d.group_count,
            n_hid: d.n_hid,
            n_blk_per_group: d.n_blk_per_group,
            vocab_size: d.vocab_size,
            n_init: d.n_init,
        }
    }
    pub fn dvae(&self) -> DvaeConfig {
        DvaeConfig {
            group_count: self.group_count,
            n_hid: self.n_hid,
            n_blk_per_group: self.n_blk_per_group,
            input_channels: 3,
            vocab_size: self.vocab_size,
            n_init: self.n_init,
        }
    }
}

/// Everything a pre-training run needs. Precedence when resolving: preset < config
/// file < command-line flags; the resolved value is written to `RUN/config.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainConfig {
    /// The preset this configuration started from.
    pub preset: String,
    /// The training data (IDX, CIFAR or an image folder; see `data::Dataset::open`).
    pub data: PathBuf,
    /// Enhancer view side and tokenizer view side (px).
    pub image_size: usize,
    pub tokenizer_image_size: usize,
    pub enhancer: EnhancerSpec,
    pub tokenizer_model: TokenizerSpec,
    /// `"respix"` or `"revdet"`.
    pub objective: String,
    /// RESPIX target normalization: `"window"` (k×k sliding window), `"patch"`, `"none"`.
    pub respix_norm: String,
    /// Window side (`"window"`) or patch side (`"patch"`).
    pub respix_k: usize,
    pub generator_depth: usize,
    /// Masked patches per image, `mask_min ..= mask_max` (0 / 0: the paper's 100–120 of
    /// 196 scaled to the grid).
    pub mask_min: usize,
    pub mask_max: usize,
    /// `"random"` or `"block"`.
    pub mask_strategy: String,
    /// `"softmax"`, `"argmax"` or `"uniform"`.
    pub sampling: String,
    pub temperature: f64,
    /// `w` in `MIM + w · enhancer loss` (negative: the paper's, 10 RESPIX / 1 REVDET).
    pub loss_weight: f64,
    pub batch: usize,
    /// Optimizer steps; `epochs > 0` overrides it with `epochs · steps per epoch`.
    pub steps: u64,
    pub epochs: u64,
    pub warmup_steps: u64,
    /// Peak learning rate; 0: the paper's 1.5e-3 at batch 2048 scaled linearly.
    pub lr: f64,
    /// Final learning rate; negative: the paper's 1e-5 at batch 2048 scaled linearly.
    pub min_lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm bound (0: no clipping).
    pub clip: f64,
    pub seed: u64,
    pub checkpoint_every: u64,
    /// Keep the newest this many step checkpoints, deleting older ones after each save
    /// (0: keep all). The one `latest` names is never deleted.
    pub keep_checkpoints: usize,
    pub log_every: u64,
    /// Write `RUN/samples/step-N.png` (corrupted samples of a few fixed images) every
    /// this many steps; 0: never.
    pub sample_every: u64,
    /// The trained tokenizer (a safetensors file with `encoder.*` and `decoder.*`);
    /// empty: `RUN/../tokenizer.safetensors`.
    pub tokenizer: PathBuf,
    /// Loader threads (0: one per core).
    pub workers: usize,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        super::presets::tiny_respix()
    }
}

impl PretrainConfig {
    /// Parse TOML (unknown keys are an error naming them).
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| cfg_err(e.to_string().replace('\n', " ")))
    }

    /// Overlay the keys present in a TOML text on `self` (preset < file).
    pub fn overlay_toml(&self, text: &str) -> Result<Self> {
        let base = toml::Value::try_from(self).map_err(|e| cfg_err(e.to_string()))?;
        let over: toml::Value = toml::from_str(text).map_err(|e| cfg_err(e.to_string().replace('\n', " ")))?;
        fn merge(a: &mut toml::Value, b: toml::Value) {
            match (a, b) {
                (toml::Value::Table(a), toml::Value::Table(b)) => {
                    for (k, v) in b {
                        match a.get_mut(&k) {
                            Some(x) => merge(x, v),
                            None => {
                                a.insert(k, v);
                            }
                        }
                    }
                }
                (a, b) => *a = b,
            }
        }
        let mut merged = base;
        merge(&mut merged, over);
        merged.try_into().map_err(|e: toml::de::Error| cfg_err(e.to_string().replace('\n', " ")))
    }

    /// Read a TOML file and overlay it on `self`.
    pub fn overlay_file(&self, path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| cfg_err(format!("cannot read config file {}: {e}", path.display())))?;
        self.overlay_toml(&text).map_err(|e| cfg_err(format!("config file {}: {e}", path.display())))
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot serialize: {e}\n"))
    }

    /// The CIM model configuration.
    pub fn cim(&self) -> Result<CimConfig> {
        let e = &self.enhancer;
        let kind = match e.arch.as_str() {
            "vit" => EnhancerKind::Vit(VitConfig {
                mlp_ratio: e.mlp_ratio,
                ..VitConfig::new(self.image_size, e.patch_size, e.width, e.depth, e.heads)
            }),
            "resnet18" | "resnet50" => {
                let stem = match e.stem.as_str() {
                    "small" => Stem::Small,
                    "imagenet" => Stem::ImageNet,
                    s => return Err(cfg_err(format!("unknown ResNet stem {s:?} (small, imagenet)"))),
                };
                let rc = if e.arch == "resnet18" { ResNetConfig::resnet18(None) } else { ResNetConfig::resnet50(None) };
                EnhancerKind::ResNet {
                    cfg: rc.stem(stem),
                    patch_size: e.patch_size,
                    generator_width: e.generator_width,
                    generator_heads: e.generator_heads,
                }
            }
            a if a.starts_with("resnet(") => {
                // Any ResNet of the registry's serialized form (e.g. a narrow one for CPU
                // runs); its stem comes from the string.
                let spec = crate::arch::ArchSpec::parse(a).map_err(|err| cfg_err(format!("enhancer {a:?}: {err}")))?;
                let crate::arch::ArchKind::ResNet { cfg: rc, .. } = spec.kind else {
                    return Err(cfg_err(format!("enhancer {a:?} is not a ResNet")));
                };
                EnhancerKind::ResNet {
                    cfg: ResNetConfig { num_classes: None, ..rc },
                    patch_size: e.patch_size,
                    generator_width: e.generator_width,
                    generator_heads: e.generator_heads,
                }
            }
            a => {
                return Err(cfg_err(format!(
                    "unknown enhancer {a:?} (vit, resnet18, resnet50, or a ResNet configuration such as \
                     resnet(block=basic,layers=2-2-2-2,width=16,stem=small))"
                )))
            }
        };
        let norm = match self.respix_norm.as_str() {
            "window" => RespixNorm::SlidingWindow { k: self.respix_k },
            "patch" => RespixNorm::Patch { p: self.respix_k },
            "none" => RespixNorm::None,
            n => return Err(cfg_err(format!("unknown RESPIX normalization {n:?} (window, patch, none)"))),
        };
        let objective = match self.objective.as_str() {
            "respix" => Objective::Respix { norm },
            "revdet" => Objective::Revdet,
            o => return Err(cfg_err(format!("unknown objective {o:?} (respix, revdet)"))),
        };
        let mut c =
            CimConfig::new(kind, self.image_size, objective, self.tokenizer_model.dvae(), self.tokenizer_image_size);
        c.generator_depth = self.generator_depth;
        if self.mask_min > 0 || self.mask_max > 0 {
            c.mask_range = (self.mask_min, self.mask_max);
        } else {
            c.mask_range = scaled_range(c.num_patches());
        }
        c.mask_strategy = match self.mask_strategy.as_str() {
            "random" => MaskStrategy::Random,
            "block" => MaskStrategy::Block,
            m => return Err(cfg_err(format!("unknown mask strategy {m:?} (random, block)"))),
        };
        c.sampling = match self.sampling.as_str() {
            "softmax" => Sampling::Softmax { temperature: self.temperature },
            "argmax" => Sampling::Argmax,
            "uniform" => Sampling::Uniform,
            s => return Err(cfg_err(format!("unknown sampling {s:?} (softmax, argmax, uniform)"))),
        };
        if self.loss_weight >= 0.0 {
            c.enhancer_loss_weight = self.loss_weight;
        }
        c.validate()?;
        Ok(c)
    }

    /// AdamW hyper-parameters.
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            clip: (self.clip > 0.0).then_some(self.clip),
        }
    }

    /// The peak learning rate (explicit, or the paper's scaled to the batch).
    pub fn peak_lr(&self) -> f64 {
        if self.lr > 0.0 {
            self.lr
        } else {
            scale_lr(PAPER_PEAK_LR, self.batch)
        }
    }

    /// The final learning rate (explicit, or the paper's scaled, never above the peak).
    pub fn final_lr(&self) -> f64 {
        let m = if self.min_lr >= 0.0 { self.min_lr } else { scale_lr(PAPER_MIN_LR, self.batch) };
        m.min(self.peak_lr())
    }

    /// Total optimizer steps given the loader's steps per epoch.
    pub fn total_steps(&self, steps_per_epoch: u64) -> u64 {
        if self.epochs > 0 {
            self.epochs.saturating_mul(steps_per_epoch)
        } else {
            self.steps
        }
    }

    /// Checks the scalar settings (the model's are checked by [`CimConfig::validate`]).
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 {
            return Err(cfg_err("batch must be positive"));
        }
        if self.steps == 0 && self.epochs == 0 {
            return Err(cfg_err("steps (or epochs) must be positive"));
        }
        if self.log_every == 0 || self.checkpoint_every == 0 {
            return Err(cfg_err("log_every and checkpoint_every must be positive"));
        }
        self.cim()?;
        Ok(())
    }
}
