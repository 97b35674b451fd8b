//! Named starting points of a [`PretrainConfig`]: the paper's ImageNet settings (Table
//! 13: 224 px, tokenizer view 112 px through the DALL-E dVAE, generator depth 4, 100–120
//! of 196 patches masked, softmax sampling, AdamW β (0.9, 0.98), wd 0.05, clip 3.0, lr
//! 1.5e-3 at batch 2048, 300 epochs with 10 of warm-up) and small CPU runs on 32-px
//! Fashion-MNIST.

use super::config::{EnhancerSpec, PretrainConfig, TokenizerSpec};
use crate::data::FASHION_MNIST_DIR;
use crate::models::dvae::DvaeConfig;
use std::path::PathBuf;

/// Every preset name, the default first.
pub const PRESETS: &[&str] = &[
    "tiny-respix",
    "tiny-revdet",
    "vit-s16-respix",
    "vit-b16-respix",
    "vit-b16-revdet",
    "resnet50-respix",
    "resnet50-revdet",
];

/// The default preset.
pub const DEFAULT_PRESET: &str = "tiny-respix";

/// Default steps of the tiny presets: sized so that `cim pretrain` (tokenizer training
/// included) finishes in about 12 minutes on 2 cores.
pub const TINY_STEPS: u64 = 500;

/// ImageNet-1k training images / 2048 (rounded up): steps per paper epoch.
const IMAGENET_STEPS_PER_EPOCH: u64 = 626;

/// The preset called `name`.
pub fn preset(name: &str) -> Option<PretrainConfig> {
    Some(match name {
        "tiny-respix" => tiny_respix(),
        "tiny-revdet" => {
            PretrainConfig { preset: name.into(), objective: "revdet".into(), loss_weight: 1.0, ..tiny_respix() }
        }
        "vit-s16-respix" => paper(name, vit(384, 6), "respix"),
        "vit-b16-respix" => paper(name, vit(768, 12), "respix"),
        "vit-b16-revdet" => paper(name, vit(768, 12), "revdet"),
        "resnet50-respix" => paper(name, resnet50(), "respix"),
        "resnet50-revdet" => paper(name, resnet50(), "revdet"),
        _ => return None,
    })
}

fn vit(width: usize, heads: usize) -> EnhancerSpec {
    EnhancerSpec { arch: "vit".into(), patch_size: 16, width, depth: 12, heads, ..EnhancerSpec::default() }
}

fn resnet50() -> EnhancerSpec {
    EnhancerSpec { arch: "resnet50".into(), patch_size: 16, stem: "imagenet".into(), ..EnhancerSpec::default() }
}

fn paper(name: &str, enhancer: EnhancerSpec, objective: &str) -> PretrainConfig {
    PretrainConfig {
        preset: name.into(),
        data: PathBuf::from("/usr/share/datasets/imagenet"),
        image_size: 224,
        tokenizer_image_size: 112,
        enhancer,
        tokenizer_model: TokenizerSpec::from_dvae(&DvaeConfig::dalle()),
        objective: objective.into(),
        loss_weight: if objective == "respix" { 10.0 } else { 1.0 },
        mask_min: 100,
        mask_max: 120,
        batch: 2048,
        steps: 300 * IMAGENET_STEPS_PER_EPOCH,
        warmup_steps: 10 * IMAGENET_STEPS_PER_EPOCH,
        lr: 0.0,
        min_lr: -1.0,
        checkpoint_every: 1000,
        log_every: 50,
        sample_every: 1000,
        ..tiny_respix()
    }
}

/// The default: a ViT-Tiny-width enhancer (192 wide, 3 heads, patch 4, 4 blocks) on
/// 32-px Fashion-MNIST, tokenizer view 16 px through `DvaeConfig::small` (8×8 tokens),
/// generator depth 2 sharing the patch embedding and both blocks it shares with the
/// enhancer, batch 32, RESPIX with an 8×8 sliding-window target. The paper's scaled
/// learning rate (2.3e-5 at batch 32) barely moves a short run, so the peak is 5e-4.
pub fn tiny_respix() -> PretrainConfig {
    PretrainConfig {
        preset: DEFAULT_PRESET.into(),
        data: PathBuf::from(FASHION_MNIST_DIR),
        image_size: 32,
        tokenizer_image_size: 16,
        enhancer: EnhancerSpec {
            arch: "vit".into(),
            patch_size: 4,
            width: 192,
            depth: 4,
            heads: 3,
            ..EnhancerSpec::default()
        },
        tokenizer_model: TokenizerSpec::from_dvae(&DvaeConfig::small()),
        objective: "respix".into(),
        respix_norm: "window".into(),
        respix_k: 8,
        generator_depth: 2,
        mask_min: 0,
        mask_max: 0,
        mask_strategy: "random".into(),
        sampling: "softmax".into(),
        temperature: 1.0,
        loss_weight: 10.0,
        batch: 32,
        steps: TINY_STEPS,
        epochs: 0,
        warmup_steps: 25,
        lr: 5e-4,
        min_lr: 1e-5,
        weight_decay: 0.05,
        beta1: 0.9,
        beta2: 0.98,
        eps: 1e-8,
        clip: 3.0,
        seed: 0,
        checkpoint_every: 100,
        keep_checkpoints: 3,
        log_every: 10,
        sample_every: 100,
        tokenizer: PathBuf::new(),
        workers: 0,
    }
}
