//! End-to-end fine-tuning (the paper's Tables 14–15, scaled down), generic over the
//! backend.
//!
//! # The model
//! - ViT, as BEiT fine-tunes it: the pre-trained final norm is dropped, the patch tokens
//!   (class token excluded) are averaged, a fresh LayerNorm (`fc_norm`) and a fresh linear
//!   `head` follow (timm's `global_pool='avg'` with `fc_norm`);
//! - ResNet: torchvision's global average pool and a fresh `fc`; batch norms use the
//!   batch statistics while training and the running ones for the test.
//!
//! Every other tensor comes from the pre-trained encoder, or, with `from_scratch`, is
//! initialized as the architecture initializes it (the baseline at the same budget).
//!
//! # The recipe
//! AdamW (β 0.9 / 0.999, decoupled weight decay 0.05, none on biases, norms, the class
//! token and the position embedding), linear warm-up then cosine decay
//! ([`LrSchedule`]), layer-wise learning-rate decay for a ViT (BEiT's: the head at the
//! peak, block `i` of `L` at `decay^(L − i)`, the embeddings at `decay^(L + 1)`; 0.8 as
//! the paper; off for a ResNet, as Table 15), label smoothing 0.1, optional mixup /
//! CutMix ([`super::loss::mix_batch`]), random resized crop and horizontal flip. No
//! gradient clipping by default (Table 14). Top-1 on the test split at the end (and every
//! `eval_every` steps).
//!
//! # The run directory
//! As a pre-training run ([`RunDir`]): `RUN/config.toml` (the resolved
//! [`FinetuneConfig`]), `RUN/metrics.jsonl` (one [`FinetuneRecord`] per logged step),
//! `RUN/checkpoints/step-N.safetensors` + `latest` (parameters, batch-norm statistics,
//! AdamW's moments; `resume` continues exactly, the loader and the mixing being keyed by
//! the seed and the step), and at the end `RUN/model.safetensors` (the fine-tuned network
//! under timm / torchvision names) and `RUN/result.json` ([`FinetuneResult`]).

use super::eval_err;
use super::features::{batch_labels, eval_loader, normalized_input, ExtractOptions};
use super::loss::{mix_batch, smooth_targets, soft_cross_entropy, top1_correct, MixConfig};
use super::pretrained::{copy_tensors, image_size, is_classifier, load_encoder, random_encoder, Encoder};
use crate::arch::{ArchKind, ArchSpec};
use crate::backend::{Backend, ParamGroup};
use crate::checkpoint;
use crate::cim::optim::NO_DECAY_NAMES;
use crate::cim::{apply_optimizer, AdamWConfig, LrSchedule, OptState};
use crate::data::{
    open_labeled, Augment, Filter, Geometry, Loader, LoaderConfig, RandomResizedCrop, Source, Subset, ViewSpec,
};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::layers::Layer;
use crate::models::heads::{ClassifierHead, Pool};
use crate::models::resnet::{ResNet, ResNetConfig};
use crate::models::vit::{Vit, VitConfig};
use crate::params::{Kind, ParamStore, ParamTable};
use crate::rng::Stream;
use crate::tensor::Tensor;
use crate::train::run_dir::decode;
use crate::train::RunDir;
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// `cim.kind` of a fine-tuning checkpoint.
pub const KIND_FINETUNE: &str = "cim-finetune-state";
/// `cim.kind` of `RUN/model.safetensors`.
pub const KIND_FINETUNED: &str = "cim-finetuned";
/// Key of the mixing streams (xored into the seed).
const MIX_TAG: u64 = 0x6d69_7875_7021_2121;

/// Everything a fine-tuning run needs; written to `RUN/config.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FinetuneConfig {
    /// The labelled data set (both splits; see `data::open_labeled`).
    pub data: PathBuf,
    /// The pre-trained weights: a `cim pretrain` run directory or a checkpoint file;
    /// empty: a random initialization of `arch`.
    pub checkpoint: PathBuf,
    /// The architecture without a checkpoint, or of a file without `cim.arch`.
    pub arch: String,
    /// Initialize randomly (the checkpoint's architecture and normalization, not its
    /// weights): the from-scratch baseline.
    pub from_scratch: bool,
    /// Epochs of the training split; `steps > 0` overrides them.
    pub epochs: u64,
    pub steps: u64,
    pub batch: usize,
    /// Peak and final learning rate.
    pub lr: f64,
    pub min_lr: f64,
    /// Warm-up steps; 0: `warmup_fraction` of the steps.
    pub warmup_steps: u64,
    pub warmup_fraction: f64,
    /// Layer-wise learning-rate decay of a ViT (1: off); ignored for a ResNet.
    pub layer_decay: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm bound (0: none).
    pub clip: f64,
    pub label_smoothing: f64,
    /// Mixup and CutMix `α` (0: off), the probability of mixing a batch, and of CutMix
    /// when both are on.
    pub mixup: f64,
    pub cutmix: f64,
    pub mix_prob: f64,
    pub mix_switch_prob: f64,
    /// Smallest crop area of the random resized crop (1: whole images). Light by default:
    /// short runs on small centered images lose more to heavy crops than they gain.
    pub crop_min_scale: f64,
    /// Random horizontal flips.
    pub flip: bool,
    /// Use at most this many training / test images, a seeded sample (0: all).
    pub train_limit: usize,
    pub test_limit: usize,
    pub seed: u64,
    /// Loader threads (0: one per core).
    pub workers: usize,
    pub log_every: u64,
    pub checkpoint_every: u64,
    /// Test top-1 every this many steps (0: at the end only).
    pub eval_every: u64,
    pub eval_batch: usize,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            data: PathBuf::from(crate::data::FASHION_MNIST_DIR),
            checkpoint: PathBuf::new(),
            arch: String::new(),
            from_scratch: false,
            epochs: 3,
            steps: 0,
            batch: 64,
            lr: 1e-3,
            min_lr: 1e-6,
            warmup_steps: 0,
            warmup_fraction: 0.05,
            layer_decay: 0.8,
            weight_decay: 0.05,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            clip: 0.0,
            label_smoothing: 0.1,
            mixup: 0.0,
            cutmix: 0.0,
            mix_prob: 1.0,
            mix_switch_prob: 0.5,
            crop_min_scale: 0.8,
            flip: true,
            train_limit: 0,
            test_limit: 0,
            seed: 0,
            workers: 0,
            log_every: 50,
            checkpoint_every: 500,
            eval_every: 0,
            eval_batch: 256,
        }
    }
}

impl FinetuneConfig {
    /// Parse TOML (unknown keys are an error naming them).
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| eval_err(format!("fine-tuning config: {}", e.to_string().replace('\n', " "))))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot serialize: {e}\n"))
    }

    pub fn mix(&self) -> MixConfig {
        MixConfig {
            mixup_alpha: self.mixup,
            cutmix_alpha: self.cutmix,
            prob: self.mix_prob,
            switch_prob: self.mix_switch_prob,
        }
    }

    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            clip: (self.clip > 0.0).then_some(self.clip),
        }
    }

    /// The training transform for `size`-px inputs.
    pub fn augment(&self, size: usize) -> Augment {
        Augment {
            geometry: Geometry::RandomResizedCrop {
                crop: RandomResizedCrop { scale: (self.crop_min_scale, 1.0), ..RandomResizedCrop::default() },
                flip_p: if self.flip { 0.5 } else { 0.0 },
            },
            enhancer: ViewSpec { size: size as u32, filter: Filter::Bicubic },
            tokenizer: None,
        }
    }

    /// Checks the scalar settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |d: String| Err(eval_err(format!("fine-tuning config: {d}")));
        if self.checkpoint.as_os_str().is_empty() && self.arch.is_empty() {
            return bad("name the pre-trained weights (checkpoint) or an architecture to train from scratch".into());
        }
        if self.batch < 2 {
            return bad(format!("batch {} must be at least 2", self.batch));
        }
        if self.epochs == 0 && self.steps == 0 {
            return bad("epochs (or steps) must be positive".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad(format!("learning rates need 0 ≤ min_lr ({}) ≤ lr ({}), lr > 0", self.min_lr, self.lr));
        }
        if !(self.layer_decay > 0.0 && self.layer_decay <= 1.0) {
            return bad(format!("layer_decay {} is not in (0, 1]", self.layer_decay));
        }
        if !(0.0..1.0).contains(&self.warmup_fraction) {
            return bad(format!("warmup_fraction {} is not in [0, 1)", self.warmup_fraction));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) || self.clip < 0.0 {
            return bad("weight_decay and clip must be ≥ 0".into());
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(format!("label_smoothing {} is not in [0, 1)", self.label_smoothing));
        }
        if !(self.crop_min_scale > 0.0 && self.crop_min_scale <= 1.0) {
            return bad(format!("crop_min_scale {} is not in (0, 1]", self.crop_min_scale));
        }
        if self.log_every == 0 || self.checkpoint_every == 0 || self.eval_batch == 0 {
            return bad("log_every, checkpoint_every and eval_batch must be positive".into());
        }
        self.mix().validate()
    }
}

// ---- the model ----------------------------------------------------------------------------

/// The network being fine-tuned.
#[derive(Clone, Debug, PartialEq)]
pub enum Classifier {
    Vit { vit: Vit, head: ClassifierHead },
    ResNet(ResNet),
}

/// A classifier built on a pre-trained backbone's architecture.
#[derive(Clone, Debug, PartialEq)]
pub struct FtModel {
    pub net: Classifier,
    /// The backbone (headless, as pre-trained).
    pub backbone: ArchSpec,
    pub classes: usize,
}

impl FtModel {
    /// Register the fine-tuning network for `backbone` with `classes` outputs (see the
    /// module docs) under timm / torchvision names.
    pub fn new(backbone: &ArchSpec, classes: usize, table: &mut ParamTable) -> Result<FtModel> {
        let net = match backbone.kind {
            ArchKind::Vit { cfg, .. } => {
                let cfg = VitConfig { final_norm: false, ..cfg };
                let vit = Vit::new(table, "", cfg)?;
                let head = ClassifierHead::new(table, "", cfg.embed_dim, classes, Pool::Mean, true, cfg.ln_eps)?;
                Classifier::Vit { vit, head }
            }
            ArchKind::ResNet { cfg, .. } => {
                Classifier::ResNet(ResNet::new(table, "", ResNetConfig { num_classes: Some(classes), ..cfg })?)
            }
            _ => return Err(eval_err(format!("cannot fine-tune a {}", backbone.family()))),
        };
        Ok(FtModel { net, backbone: backbone.with_classes(None), classes })
    }

    /// The ViT's depth (0 for a ResNet).
    pub fn depth(&self) -> usize {
        match &self.net {
            Classifier::Vit { vit, .. } => vit.cfg.depth,
            Classifier::ResNet(_) => 0,
        }
    }

    /// BEiT's layer id of a ViT tensor: 0 for the embeddings, `i + 1` for block `i`,
    /// `depth + 1` for the rest (`fc_norm`, `head`).
    pub fn layer_id(name: &str, depth: usize) -> usize {
        if name == "cls_token" || name == "pos_embed" || name == "mask_token" || name.starts_with("patch_embed.") {
            return 0;
        }
        if let Some(rest) = name.strip_prefix("blocks.") {
            if let Some(i) = rest.split('.').next().and_then(|i| i.parse::<usize>().ok()) {
                return i + 1;
            }
        }
        depth + 1
    }

    /// The learning-rate multiplier of tensor `name` under layer-wise decay `decay`.
    pub fn lr_scale(&self, name: &str, decay: f64) -> f64 {
        match &self.net {
            Classifier::Vit { .. } => {
                let d = self.depth();
                decay.powi((d + 1 - Self::layer_id(name, d)) as i32)
            }
            Classifier::ResNet(_) => 1.0,
        }
    }

    /// Training step: forward with the batch statistics, the soft-target loss, backward
    /// into the (zeroed) gradients. Returns the loss and the logits.
    pub fn train_step<B: Backend>(
        &self,
        b: &B,
        store: &mut ParamStore<B>,
        x: &Tensor<B>,
        targets: &[f64],
    ) -> Result<(f64, Vec<f32>)> {
        store.zero_grads(b)?;
        let n = x.shape()[0];
        let k = self.classes;
        let loss_grad = |logits: &Tensor<B>| -> Result<(f64, Vec<f32>, Tensor<B>)> {
            let z = logits.to_f64(b)?;
            let (loss, dz) = soft_cross_entropy(&z, targets, n, k)?;
            if !loss.is_finite() {
                return Err(Error::NonFinite { what: "fine-tuning loss".into() });
            }
            let zf = z.iter().map(|&v| v as f32).collect();
            Ok((loss, zf, Tensor::from_f64(b, &[n, k], &dz)?))
        };
        match &self.net {
            Classifier::Vit { vit, head } => {
                let (feat, vc) = vit.forward_features(b, &store.params, x)?;
                let (logits, hc) = head.forward_owned(b, &store.params, feat)?;
                let (loss, z, dlogits) = loss_grad(&logits)?;
                let dfeat = head.backward(b, &store.params, &mut store.grads, &hc, &dlogits)?;
                vit.backward_params(b, &store.params, &mut store.grads, &vc, &dfeat)?;
                Ok((loss, z))
            }
            Classifier::ResNet(r) => {
                let (feat, rc) = r.forward_features(b, &store.params, &mut store.state, x, true)?;
                let (logits, cc) = r.classify(b, &store.params, &feat)?;
                let (loss, z, dlogits) = loss_grad(&logits)?;
                let dfeat = r.classify_backward(b, &store.params, &mut store.grads, &cc, &dlogits)?;
                r.backward_features(b, &store.params, &mut store.grads, &rc, &dfeat)?;
                Ok((loss, z))
            }
        }
    }

    /// Evaluation logits `[n, classes]` (running batch-norm statistics).
    pub fn logits<B: Backend>(&self, b: &B, store: &ParamStore<B>, x: &Tensor<B>) -> Result<Vec<f32>> {
        let y = match &self.net {
            Classifier::Vit { vit, head } => head.infer(b, &store.params, &vit.infer_features(b, &store.params, x)?)?,
            Classifier::ResNet(r) => {
                r.infer_classify(b, &store.params, &r.infer_features(b, &store.params, &store.state, x)?)?
            }
        };
        Ok(y.to_vec(b)?.iter().map(|v| v.f64() as f32).collect())
    }

    /// The metadata of `RUN/model.safetensors`.
    pub fn metadata(&self, mean: &[f64; 3], std: &[f64; 3]) -> BTreeMap<String, String> {
        let join = |v: &[f64; 3]| v.iter().map(|x| format!("{x}")).collect::<Vec<_>>().join(",");
        let mut m = BTreeMap::new();
        m.insert("cim.kind".to_string(), KIND_FINETUNED.to_string());
        m.insert("cim.backbone".to_string(), self.backbone.arch_string());
        m.insert("cim.classes".to_string(), self.classes.to_string());
        let head = match self.net {
            Classifier::Vit { .. } => {
                "mean of the patch tokens (no final norm), fc_norm, head (timm global_pool='avg')"
            }
            Classifier::ResNet(_) => "global average pool, fc",
        };
        m.insert("cim.head".to_string(), head.to_string());
        m.insert("cim.mean".to_string(), join(mean));
        m.insert("cim.std".to_string(), join(std));
        m
    }
}

/// AdamW groups covering every trainable tensor once: the decay rule of
/// `cim::param_groups` (rank ≥ 2, never the class token, position embedding or mask
/// token) and the learning-rate multiplier `scale(name)`; contiguous runs that agree are
/// merged.
pub fn finetune_groups(table: &ParamTable, weight_decay: f64, scale: impl Fn(&str) -> f64) -> Vec<ParamGroup> {
    let mut owned: Vec<_> =
        table.entries().iter().filter(|e| e.alias_of.is_none() && e.param.kind == Kind::Trainable).collect();
    owned.sort_by_key(|e| e.param.offset);
    let mut groups: Vec<ParamGroup> = Vec::new();
    for e in owned {
        let leaf = e.name.rsplit('.').next().unwrap_or(&e.name);
        let wd = if e.decay && !NO_DECAY_NAMES.contains(&leaf) { weight_decay } else { 0.0 };
        let g = ParamGroup { offset: e.param.offset, len: e.param.len, lr: scale(&e.name), weight_decay: wd };
        match groups.last_mut() {
            Some(l) if l.offset + l.len == g.offset && l.lr == g.lr && l.weight_decay == g.weight_decay => {
                l.len += g.len
            }
            _ => groups.push(g),
        }
    }
    groups
}

// ---- metrics and results ------------------------------------------------------------------

/// One line of `RUN/metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneRecord {
    /// Updates done.
    pub step: u64,
    pub epoch: u64,
    /// The (smoothed, mixed) training loss of this step's batch.
    pub loss: f64,
    /// Top-1 of this step's batch against its own labels (before mixing).
    pub batch_top1: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Throughput since the previous logged line (wall clock).
    pub images_per_s: f64,
    /// Test top-1 where measured at this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_top1: Option<f64>,
}

impl FinetuneRecord {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
    pub fn from_json(line: &str) -> Option<Self> {
        serde_json::from_str(line).ok()
    }
    /// Everything but the wall-clock throughput.
    pub fn deterministic_part(&self) -> FinetuneRecord {
        FinetuneRecord { images_per_s: 0.0, ..self.clone() }
    }
    pub fn summary(&self) -> String {
        let test = self.test_top1.map(|t| format!(" | test top-1 {:.2}%", 100.0 * t)).unwrap_or_default();
        format!(
            "step {} | loss {:.4} | batch top-1 {:.3} | lr {:.2e} | |g| {:.3} | {:.1} img/s{test}",
            self.step, self.loss, self.batch_top1, self.lr, self.grad_norm, self.images_per_s
        )
    }
}

/// `RUN/result.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneResult {
    pub test_top1: f64,
    pub test_correct: usize,
    pub test_len: usize,
    pub train_len: usize,
    pub classes: usize,
    pub steps: u64,
    pub epochs: f64,
    pub batch: usize,
    /// The backbone architecture and where its weights came from.
    pub arch: String,
    pub init: String,
    pub from_scratch: bool,
    pub train_seconds: f64,
    pub eval_seconds: f64,
}

impl FinetuneResult {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
    pub fn from_json(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}

/// How a run is driven.
#[derive(Clone, Debug, Default)]
pub struct FinetuneOptions {
    /// Continue from `RUN/checkpoints/latest` (a fresh start where there is none).
    pub resume: bool,
    /// Set (e.g. by a Ctrl-C handler) to save a checkpoint and stop after this step.
    pub stop: Option<Arc<AtomicBool>>,
}

/// What the run reports as it goes.
#[derive(Clone, Debug)]
pub enum FtEvent {
    Started {
        start_step: u64,
        total_steps: u64,
        steps_per_epoch: u64,
        params: usize,
        train_len: usize,
        test_len: usize,
        classes: usize,
        init: String,
        resumed_from: Option<PathBuf>,
    },
    Step {
        step: u64,
        loss: f64,
        images_per_s: f64,
    },
    Logged(FinetuneRecord),
    Checkpoint {
        step: u64,
        path: PathBuf,
    },
    /// Test images classified so far.
    Evaluating {
        done: usize,
        total: usize,
    },
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct FinetuneSummary {
    pub start_step: u64,
    pub steps: u64,
    pub total_steps: u64,
    pub interrupted: bool,
    /// `None` when interrupted before the end.
    pub result: Option<FinetuneResult>,
    pub last: Option<FinetuneRecord>,
    pub last_checkpoint: Option<PathBuf>,
}

// ---- checkpoints --------------------------------------------------------------------------

fn ck_err(path: &Path, detail: impl std::fmt::Display) -> Error {
    Error::Checkpoint { path: path.display().to_string(), detail: detail.to_string() }
}

/// Save the training state after `step` updates and point `latest` at it (both atomic).
fn save_state<B: Backend>(
    run: &RunDir,
    b: &B,
    step: u64,
    store: &ParamStore<B>,
    opt: &OptState<B>,
    cfg: &FinetuneConfig,
) -> Result<PathBuf> {
    let meta = vec![
        ("cim.kind", KIND_FINETUNE.to_string()),
        ("cim.step", step.to_string()),
        ("cim.optimizer_step", opt.step.to_string()),
        ("cim.config", cfg.to_toml()),
    ];
    run.save_buffers(b, step, store, opt, meta)
}

/// Restore a state saved by [`save_state`]; returns its step. Nothing changes unless the
/// whole file fits.
fn load_state<B: Backend>(path: &Path, b: &B, store: &mut ParamStore<B>, opt: &mut OptState<B>) -> Result<u64> {
    let bytes = fs::read(path).map_err(|e| ck_err(path, format!("cannot read: {e}")))?;
    let bad = |e: safetensors::SafeTensorError| ck_err(path, format!("not a valid checkpoint: {e}"));
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(bad)?;
    let meta: BTreeMap<String, String> = header.metadata().clone().unwrap_or_default().into_iter().collect();
    if meta.get("cim.kind").map(String::as_str) != Some(KIND_FINETUNE) {
        return Err(ck_err(path, format!("not a cim fine-tuning checkpoint (cim.kind is not {KIND_FINETUNE})")));
    }
    let num = |k: &str| -> Result<u64> {
        meta.get(k).and_then(|v| v.parse().ok()).ok_or_else(|| ck_err(path, format!("{k} missing or not a number")))
    };
    let (step, opt_step) = (num("cim.step")?, num("cim.optimizer_step")?);
    let st = SafeTensors::deserialize(&bytes).map_err(bad)?;
    let (n, s) = (store.table.params_len(), store.table.state_len());
    let params = decode::<B::E>(path, &st, "train.params", n)?;
    let state = if s > 0 { Some(decode::<B::E>(path, &st, "train.state", s)?) } else { None };
    let m = decode::<B::E>(path, &st, "optim.m", n)?;
    let v = decode::<B::E>(path, &st, "optim.v", n)?;
    store.params = b.upload(&params)?;
    if let Some(state) = state {
        store.state = b.upload(&state)?;
    }
    opt.m = b.upload(&m)?;
    opt.v = b.upload(&v)?;
    opt.step = opt_step;
    Ok(step)
}

fn io_err(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Checkpoint { path: path.display().to_string(), detail: format!("{what}: {e}") }
}

/// Keep the metrics lines up to `keep_through` (0: none).
fn reset_metrics(run: &RunDir, keep_through: u64) -> Result<()> {
    let path = run.metrics_path();
    let kept: String = fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter(|l| FinetuneRecord::from_json(l).is_some_and(|r| r.step <= keep_through))
        .map(|l| format!("{l}\n"))
        .collect();
    checkpoint::write_atomic(&path, kept.as_bytes())
}

fn append_metrics(run: &RunDir, r: &FinetuneRecord) -> Result<()> {
    let path = run.metrics_path();
    let mut f =
        fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| io_err(&path, "cannot open", e))?;
    writeln!(f, "{}", r.to_json()).map_err(|e| io_err(&path, "cannot append", e))
}

/// The lines of a fine-tuning run's `metrics.jsonl`.
pub fn read_metrics(run: &RunDir) -> Result<Vec<FinetuneRecord>> {
    let path = run.metrics_path();
    let text = fs::read_to_string(&path).map_err(|e| io_err(&path, "cannot read", e))?;
    Ok(text.lines().filter_map(FinetuneRecord::from_json).collect())
}

/// `RUN/result.json`.
pub fn result_path(run: &RunDir) -> PathBuf {
    run.root.join("result.json")
}

/// `RUN/model.safetensors`.
pub fn model_path(run: &RunDir) -> PathBuf {
    run.root.join("model.safetensors")
}

// ---- evaluation ---------------------------------------------------------------------------

/// Top-1 of `model` on every image of `source` (resized whole to `size`): correct, total.
#[allow(clippy::too_many_arguments)]
pub fn evaluate<B: Backend>(
    b: &B,
    model: &FtModel,
    store: &ParamStore<B>,
    source: Arc<dyn Source>,
    size: usize,
    (mean, std): (&[f64; 3], &[f64; 3]),
    opts: &ExtractOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(usize, usize)> {
    let total = source.len();
    let mut loader = eval_loader(source.clone(), size, opts)?;
    let (mut correct, mut done) = (0, 0);
    for _ in 0..loader.steps_per_epoch() {
        let batch = loader.next_batch()?;
        let labels = batch_labels(&batch, source.as_ref())?;
        let x = normalized_input(b, &batch.enhancer, batch.len(), size, mean, std)?;
        correct += top1_correct(&model.logits(b, store, &x)?, &labels, model.classes);
        done += batch.len();
        progress(done, total);
    }
    Ok((correct, total))
}

// ---- the run ------------------------------------------------------------------------------

/// The encoder whose architecture (and, unless from scratch, weights) the run starts
/// from.
pub fn starting_point<B: Backend>(b: &B, cfg: &FinetuneConfig) -> Result<Encoder<B>> {
    if cfg.checkpoint.as_os_str().is_empty() {
        random_encoder(b, &cfg.arch, cfg.seed)
    } else {
        let arch = (!cfg.arch.is_empty()).then_some(cfg.arch.as_str());
        load_encoder(b, &cfg.checkpoint, arch)
    }
}

/// Run (or resume) fine-tuning of `cfg` into `run`. See the module docs.
pub fn finetune<B: Backend>(
    b: &B,
    cfg: &FinetuneConfig,
    run: &RunDir,
    opts: &FinetuneOptions,
    on_event: &mut dyn FnMut(&FtEvent),
) -> Result<FinetuneSummary> {
    cfg.validate()?;
    let data = open_labeled(&cfg.data)?;
    let classes = data.classes;
    let train: Arc<dyn Source> = Subset::limit(Arc::new(data.train), cfg.train_limit, cfg.seed);
    let test: Arc<dyn Source> = Subset::limit(Arc::new(data.test), cfg.test_limit, cfg.seed ^ 1);
    let enc = starting_point(b, cfg)?;
    let size = image_size(&enc.spec);
    let mut table = ParamTable::new();
    let model = FtModel::new(&enc.spec, classes, &mut table)?;
    let mut store = table.build(b, cfg.seed)?;
    let init = if cfg.from_scratch || enc.path.is_none() {
        format!("random init (seed {})", cfg.seed)
    } else {
        // The ViT's final norm is dropped (fc_norm replaces it); the classifier is new.
        copy_tensors(b, &enc.store, "", &mut store, is_classifier)?;
        enc.origin.clone()
    };
    let (mean, std) = (enc.mean, enc.std);
    let backbone = enc.spec.arch_string();
    drop(enc);

    let hp = cfg.adamw();
    let mut opt = OptState::new(b, &store.table, &hp)?;
    opt.groups = finetune_groups(&store.table, cfg.weight_decay, |n| model.lr_scale(n, cfg.layer_decay));
    let mut lc = LoaderConfig::train(cfg.batch, cfg.seed, cfg.augment(size));
    if cfg.workers > 0 {
        lc.workers = cfg.workers;
    }
    let train_len = train.len();
    let mut loader = Loader::from_shared(train.clone(), lc).map_err(|e| match e {
        Error::Data { detail } => eval_err(format!("training split: {detail}")),
        e => e,
    })?;
    let spe = loader.steps_per_epoch();
    let total = if cfg.steps > 0 { cfg.steps } else { cfg.epochs.saturating_mul(spe) };
    let warmup =
        if cfg.warmup_steps > 0 { cfg.warmup_steps } else { (total as f64 * cfg.warmup_fraction).round() as u64 };
    let sched = LrSchedule::new(cfg.lr, cfg.min_lr, warmup.min(total), total)?;
    let mix = cfg.mix();
    let eval_opts = ExtractOptions { batch: cfg.eval_batch, workers: cfg.workers };

    run.create()?;
    let mut start = 0;
    let mut resumed_from = None;
    let mut last_ckpt = None;
    if opts.resume {
        if let Some(p) = run.latest() {
            start = load_state(&p, b, &mut store, &mut opt)?;
            resumed_from = Some(p.clone());
            last_ckpt = Some(p);
        }
    }
    checkpoint::write_atomic(&run.config_path(), cfg.to_toml().as_bytes())?;
    reset_metrics(run, start)?;
    loader.skip_to(start);
    on_event(&FtEvent::Started {
        start_step: start,
        total_steps: total,
        steps_per_epoch: spe,
        params: store.table.params_len(),
        train_len,
        test_len: test.len(),
        classes,
        init: init.clone(),
        resumed_from,
    });

    let t0 = Instant::now();
    // Periodic test evaluations are not training time.
    let mut eval_in_loop = 0.0;
    let mut since = Instant::now();
    let mut images_since = 0usize;
    let mut last = None;
    let mut step = start;
    let mut interrupted = false;
    let non_finite = |what: &str, step: u64, last: &Option<PathBuf>| {
        let good = match last {
            Some(p) => format!("last good checkpoint: {}", p.display()),
            None => "no checkpoint was written yet".to_string(),
        };
        Error::NonFinite { what: format!("{what} at step {step} ({good}); lower the learning rate") }
    };
    while step < total {
        let batch = loader.next_batch()?;
        let n = batch.len();
        let labels = batch_labels(&batch, train.as_ref())?;
        let mut pixels = batch.enhancer;
        let mut targets = smooth_targets(&labels, classes, cfg.label_smoothing)?;
        if mix.enabled() {
            let mut rng = Stream::new(cfg.seed ^ MIX_TAG ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            mix_batch(&mut pixels, [n, 3, size, size], &mut targets, classes, &mix, &mut rng)?;
        }
        let x = normalized_input(b, &pixels, n, size, &mean, &std)?;
        let (loss, logits) = match model.train_step(b, &mut store, &x, &targets) {
            Ok(o) => o,
            Err(Error::NonFinite { what }) => return Err(non_finite(&what, step + 1, &last_ckpt)),
            Err(e) => return Err(e),
        };
        let lr = sched.lr(step);
        let stats = match apply_optimizer(b, &mut store, &mut opt, &hp, lr) {
            Ok(s) => s,
            Err(Error::NonFinite { what }) => return Err(non_finite(&what, step + 1, &last_ckpt)),
            Err(e) => return Err(e),
        };
        step += 1;
        images_since += n;
        let ips = images_since as f64 / since.elapsed().as_secs_f64().max(1e-9);
        on_event(&FtEvent::Step { step, loss, images_per_s: ips });
        let eval_now = cfg.eval_every > 0 && step % cfg.eval_every == 0 && step < total;
        if step % cfg.log_every == 0 || step == total || eval_now {
            let test_top1 = if eval_now {
                let te = Instant::now();
                let (c, t) =
                    evaluate(b, &model, &store, test.clone(), size, (&mean, &std), &eval_opts, &mut |d, t| {
                        on_event(&FtEvent::Evaluating { done: d, total: t })
                    })?;
                eval_in_loop += te.elapsed().as_secs_f64();
                Some(c as f64 / t as f64)
            } else {
                None
            };
            let r = FinetuneRecord {
                step,
                epoch: batch.epoch,
                loss,
                batch_top1: top1_correct(&logits, &labels, classes) as f64 / n as f64,
                lr,
                grad_norm: stats.grad_norm,
                images_per_s: ips,
                test_top1,
            };
            append_metrics(run, &r)?;
            on_event(&FtEvent::Logged(r.clone()));
            last = Some(r);
            since = Instant::now();
            images_since = 0;
        }
        let stop = opts.stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed));
        if step % cfg.checkpoint_every == 0 || step == total || stop {
            let p = save_state(run, b, step, &store, &opt, cfg)?;
            on_event(&FtEvent::Checkpoint { step, path: p.clone() });
            last_ckpt = Some(p);
        }
        if stop && step < total {
            interrupted = true;
            break;
        }
    }
    let train_seconds = t0.elapsed().as_secs_f64() - eval_in_loop;
    let mut summary = FinetuneSummary {
        start_step: start,
        steps: step,
        total_steps: total,
        interrupted,
        result: None,
        last,
        last_checkpoint: last_ckpt,
    };
    if interrupted {
        return Ok(summary);
    }
    let te = Instant::now();
    let (correct, test_len) = evaluate(b, &model, &store, test, size, (&mean, &std), &eval_opts, &mut |d, t| {
        on_event(&FtEvent::Evaluating { done: d, total: t })
    })?;
    let eval_seconds = te.elapsed().as_secs_f64();
    let mut meta = model.metadata(&mean, &std);
    let top1 = correct as f64 / test_len as f64;
    meta.insert("cim.test_top1".to_string(), format!("{top1}"));
    checkpoint::save(model_path(run), &store, b, "", &meta)?;
    let result = FinetuneResult {
        test_top1: top1,
        test_correct: correct,
        test_len,
        train_len,
        classes,
        steps: step,
        epochs: step as f64 / spe as f64,
        batch: cfg.batch,
        arch: backbone,
        init,
        from_scratch: cfg.from_scratch || cfg.checkpoint.as_os_str().is_empty(),
        train_seconds,
        eval_seconds,
    };
    checkpoint::write_atomic(&result_path(run), format!("{}\n", result.to_json()).as_bytes())?;
    summary.result = Some(result);
    Ok(summary)
}
