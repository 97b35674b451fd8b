//! The architecture registry: names for the models `cim` builds, so that a checkpoint
//! can say what it holds and a file from timm, torchvision or OpenAI's `dall_e` can be
//! loaded by naming its architecture.
//!
//! # Names
//! | name | model | image | input |
//! | --- | --- | --- | --- |
//! | `vit_tiny_patch16_224`, `vit_small_patch16_224`, `vit_base_patch16_224`, `vit_large_patch16_224` | timm `VisionTransformer` with a 1000-class `head` | 224 | ImageNet mean/std |
//! | `vit_tiny_patch4_32` | ViT-Ti at 32 px, patch 4, no head | 32 | ImageNet mean/std |
//! | `resnet18`, `resnet50` | torchvision, with a 1000-class `fc` | 224 | ImageNet mean/std |
//! | `resnet50x2`, `resnet50x4` | SimCLR's wide ResNet-50 (torchvision names), 1000-class `fc` | 224 | ImageNet mean/std |
//! | `resnet18_small` | ResNet-18 with the 3×3 stride-1 stem, no max-pool, no `fc` | 32 | ImageNet mean/std |
//! | `dalle_encoder`, `dalle_decoder` | OpenAI's DALL-E dVAE halves | 112 | `map_pixels` / codes |
//! | `dvae_small_encoder`, `dvae_small_decoder` | [`DvaeConfig::small`] | 16 | `map_pixels` / codes |
//!
//! The image size of a ResNet or a dVAE is only the size `cim infer` resizes images
//! to (the networks take any size): 112 px for DALL-E is CIM's (and BEiT's) tokenizer
//! view of a 224-px image, a 14×14 token grid; DALL-E itself used 256 px.
//!
//! # Serialized configurations
//! Any size round-trips through a one-line configuration, `base(key=value,...)`, where
//! `base` is a family (`vit`, `resnet`, `dvae_encoder`, `dvae_decoder`) or a registry
//! name whose settings the keys override (`vit_tiny_patch16_224(depth=4,classes=none)`):
//! ```text
//! vit(img=32,patch=4,chans=3,dim=192,depth=12,heads=3,mlp_ratio=4,qkv_bias=true,ln_eps=0.000001,final_norm=true,classes=none)
//! resnet(block=basic,layers=2-2-2-2,width=64,chans=3,stem=small,classes=none,img=32)
//! dvae_encoder(groups=2,n_hid=64,blocks=2,chans=3,vocab=512,n_init=64,img=16)
//! ```
//! A family base needs its size keys (`vit`: img, patch, dim, depth, heads; `resnet`:
//! block, layers; `dvae_*`: groups, n_hid, vocab); the rest default to timm's,
//! torchvision's or DALL-E's values. [`ArchSpec::arch_string`] gives the registry name
//! when the configuration is a registry preset, and the full serialized form otherwise.
//!
//! # Outputs of [`Model::infer`]
//! - ViT: the final normalized hidden states `[B, 1 + N, D]` (timm's `forward_features`);
//! - ResNet: the last feature map `[B, C, H/s, W/s]` before pooling, BN in eval mode;
//! - dVAE encoder: logits `[B, vocab, h, w]`;
//! - dVAE decoder: codes `[B, vocab, h, w]` (one-hot or probabilities) to `[B, 2·C, H, W]`
//!   (logit-Laplace means, then log-scales).
//!
//! Classification heads (`head.*`, `fc.*`) are registered so that whole timm and
//! torchvision files load, but `infer` stops before them.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::layers::Layer;
use crate::models::dvae::{DvaeConfig, DvaeDecoder, DvaeEncoder};
use crate::models::heads::ClassifierHead;
use crate::models::resnet::{BlockKind, ResNet, ResNetConfig, Stem};
use crate::models::vit::{Vit, VitConfig};
use crate::params::{ParamStore, ParamTable};
use crate::tensor::Tensor;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

const OP: &str = "arch";

/// ImageNet channel means (RGB), as timm's `IMAGENET_DEFAULT_MEAN` and torchvision.
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB).
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// Every registry name, in the order of the module docs.
pub const NAMES: &[&str] = &[
    "vit_tiny_patch16_224",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "vit_large_patch16_224",
    "vit_tiny_patch4_32",
    "resnet18",
    "resnet50",
    "resnet50x2",
    "resnet50x4",
    "resnet18_small",
    "dalle_encoder",
    "dalle_decoder",
    "dvae_small_encoder",
    "dvae_small_decoder",
];

/// The families a serialized configuration can start from.
pub const FAMILIES: &[&str] = &["vit", "resnet", "dvae_encoder", "dvae_decoder"];

/// What a model is, with every size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ArchKind {
    /// A timm ViT; `classes` adds timm's `head` (class token, no `fc_norm`).
    Vit { cfg: VitConfig, classes: Option<usize> },
    /// A torchvision ResNet (`cfg.num_classes` adds `fc`); `img_size` is the side images
    /// are resized to.
    ResNet { cfg: ResNetConfig, img_size: usize },
    /// The DALL-E encoder; `img_size` is the side images are resized to.
    DvaeEncoder { cfg: DvaeConfig, img_size: usize },
    /// The DALL-E decoder; `img_size` is the side of its output (codes are
    /// `img_size / 2^(groups-1)` per side).
    DvaeDecoder { cfg: DvaeConfig, img_size: usize },
}

/// What a model takes.
#[derive(Clone, Debug, PartialEq)]
pub enum InputKind {
    /// An image `[B, channels, size, size]`, pixels in `[0, 1]` mapped by
    /// `(x - mean[c]) / std[c]`.
    Image,
    /// Codes `[B, vocab, grid, grid]` (one-hot or probabilities).
    Codes { vocab: usize, grid: usize },
}

/// How a model's input is made from an image: its kind, side, channels and
/// normalization.
#[derive(Clone, Debug, PartialEq)]
pub struct InputSpec {
    pub kind: InputKind,
    /// Side images are resized to (for codes: the output side).
    pub image_size: usize,
    pub channels: usize,
    /// `"imagenet"`, `"map_pixels"` (DALL-E's `0.8·x + 0.1`) or `"none"`.
    pub normalize: &'static str,
    /// Per channel: the model sees `(x - mean) / std` for pixels `x` in `[0, 1]`.
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// A named, fully sized architecture.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchSpec {
    pub kind: ArchKind,
}

/// A built model: the layers of one [`ArchSpec`], with handles into a [`ParamStore`].
#[derive(Clone, Debug, PartialEq)]
pub enum Model {
    Vit { vit: Vit, head: Option<ClassifierHead> },
    ResNet(ResNet),
    DvaeEncoder(DvaeEncoder),
    DvaeDecoder(DvaeDecoder),
}

fn err<T>(detail: impl Into<String>) -> Result<T> {
    Err(Error::Invalid { op: OP, detail: detail.into() })
}

/// The registry entry `name`, or a serialized configuration (anything with a `(`).
/// An unknown name is an error that lists the valid ones.
pub fn by_name(name: &str) -> Result<ArchSpec> {
    ArchSpec::parse(name)
}

fn preset(name: &str) -> Option<ArchSpec> {
    let vit = |cfg: VitConfig, classes| ArchKind::Vit { cfg, classes };
    let kind = match name {
        "vit_tiny_patch16_224" => vit(VitConfig::tiny(), Some(1000)),
        "vit_small_patch16_224" => vit(VitConfig::small(), Some(1000)),
        "vit_base_patch16_224" => vit(VitConfig::base(), Some(1000)),
        "vit_large_patch16_224" => vit(VitConfig::large(), Some(1000)),
        "vit_tiny_patch4_32" => vit(VitConfig::tiny().with_img(32, 4), None),
        "resnet18" => ArchKind::ResNet { cfg: ResNetConfig::resnet18(Some(1000)), img_size: 224 },
        "resnet50" => ArchKind::ResNet { cfg: ResNetConfig::resnet50(Some(1000)), img_size: 224 },
        "resnet50x2" => ArchKind::ResNet { cfg: ResNetConfig::resnet50_wide(2, Some(1000)), img_size: 224 },
        "resnet50x4" => ArchKind::ResNet { cfg: ResNetConfig::resnet50_wide(4, Some(1000)), img_size: 224 },
        "resnet18_small" => ArchKind::ResNet { cfg: ResNetConfig::resnet18(None).stem(Stem::Small), img_size: 32 },
        "dalle_encoder" => ArchKind::DvaeEncoder { cfg: DvaeConfig::dalle(), img_size: 112 },
        "dalle_decoder" => ArchKind::DvaeDecoder { cfg: DvaeConfig::dalle(), img_size: 112 },
        "dvae_small_encoder" => ArchKind::DvaeEncoder { cfg: DvaeConfig::small(), img_size: 16 },
        "dvae_small_decoder" => ArchKind::DvaeDecoder { cfg: DvaeConfig::small(), img_size: 16 },
        _ => return None,
    };
    Some(ArchSpec { kind })
}

/// The family defaults a serialized configuration starts from, and its required keys.
fn family(name: &str) -> Option<(ArchKind, &'static [&'static str])> {
    Some(match name {
        "vit" => {
            (ArchKind::Vit { cfg: VitConfig::tiny(), classes: None }, &["img", "patch", "dim", "depth", "heads"][..])
        }
        "resnet" => (ArchKind::ResNet { cfg: ResNetConfig::resnet18(None), img_size: 224 }, &["block", "layers"][..]),
        "dvae_encoder" => {
            (ArchKind::DvaeEncoder { cfg: DvaeConfig::dalle(), img_size: 112 }, &["groups", "n_hid", "vocab"][..])
        }
        "dvae_decoder" => {
            (ArchKind::DvaeDecoder { cfg: DvaeConfig::dalle(), img_size: 112 }, &["groups", "n_hid", "vocab"][..])
        }
        _ => return None,
    })
}

fn keys_of(kind: &ArchKind) -> &'static [&'static str] {
    match kind {
        ArchKind::Vit { .. } => &[
            "img",
            "patch",
            "chans",
            "dim",
            "depth",
            "heads",
            "mlp_ratio",
            "qkv_bias",
            "ln_eps",
            "final_norm",
            "classes",
        ],
        ArchKind::ResNet { .. } => &["block", "layers", "width", "chans", "stem", "classes", "img"],
        ArchKind::DvaeEncoder { .. } | ArchKind::DvaeDecoder { .. } => {
            &["groups", "n_hid", "blocks", "chans", "vocab", "n_init", "img"]
        }
    }
}

fn family_name(kind: &ArchKind) -> &'static str {
    match kind {
        ArchKind::Vit { .. } => "vit",
        ArchKind::ResNet { .. } => "resnet",
        ArchKind::DvaeEncoder { .. } => "dvae_encoder",
        ArchKind::DvaeDecoder { .. } => "dvae_decoder",
    }
}

fn unknown_name(name: &str) -> Error {
    Error::Invalid {
        op: OP,
        detail: format!(
            "unknown architecture {name:?}; known names: {}; or a serialized configuration such as \
             vit(img=32,patch=4,dim=192,depth=12,heads=3) (families: {})",
            NAMES.join(", "),
            FAMILIES.join(", ")
        ),
    }
}

fn parse_usize(key: &str, v: &str) -> Result<usize> {
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => err(format!("{key}={v}: expected a positive integer")),
    }
}

fn parse_f64(key: &str, v: &str) -> Result<f64> {
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => err(format!("{key}={v}: expected a positive number")),
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => err(format!("{key}={v}: expected true or false")),
    }
}

fn parse_classes(key: &str, v: &str) -> Result<Option<usize>> {
    match v {
        "none" | "0" => Ok(None),
        _ => parse_usize(key, v).map(Some),
    }
}

fn classes_str(c: Option<usize>) -> String {
    match c {
        Some(n) => n.to_string(),
        None => "none".to_string(),
    }
}

impl ArchSpec {
    /// A registry name or a serialized configuration (see the module docs).
    pub fn parse(s: &str) -> Result<ArchSpec> {
        let s = s.trim();
        let Some(open) = s.find('(') else {
            return preset(s).ok_or_else(|| unknown_name(s));
        };
        let Some(body) = s[open + 1..].strip_suffix(')') else {
            return err(format!("serialized configuration {s:?} does not end with ')'"));
        };
        let base = s[..open].trim();
        let (start, required) = match (preset(base), family(base)) {
            (Some(p), _) => (p.kind, &[][..]),
            (None, Some((k, req))) => (k, req),
            (None, None) => return Err(unknown_name(base)),
        };
        let mut kv: BTreeMap<&str, &str> = BTreeMap::new();
        for item in body.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let Some((k, v)) = item.split_once('=') else {
                return err(format!("{item:?} in {s:?} is not key=value"));
            };
            let (k, v) = (k.trim(), v.trim());
            let valid = keys_of(&start);
            if !valid.contains(&k) {
                return err(format!("unknown key {k:?} for {}; valid keys: {}", family_name(&start), valid.join(", ")));
            }
            if kv.insert(k, v).is_some() {
                return err(format!("key {k:?} given twice in {s:?}"));
            }
        }
        let missing: Vec<&str> = required.iter().copied().filter(|k| !kv.contains_key(k)).collect();
        if !missing.is_empty() {
            return err(format!("{base}(...) needs the keys {}", missing.join(", ")));
        }
        let kind = apply(start, &kv)?;
        let spec = ArchSpec { kind };
        spec.validate()?;
        Ok(spec)
    }

    /// Check that the sizes fit together (builds the model into a scratch table).
    pub fn validate(&self) -> Result<()> {
        let mut t = ParamTable::new();
        self.build(&mut t, "").map(|_| ())
    }

    /// The full one-line configuration (always parses back to `self`).
    pub fn serialize(&self) -> String {
        match &self.kind {
            ArchKind::Vit { cfg: c, classes } => format!(
                "vit(img={},patch={},chans={},dim={},depth={},heads={},mlp_ratio={},qkv_bias={},ln_eps={},final_norm={},classes={})",
                c.img_size,
                c.patch_size,
                c.in_chans,
                c.embed_dim,
                c.depth,
                c.heads,
                c.mlp_ratio,
                c.qkv_bias,
                c.ln_eps,
                c.final_norm,
                classes_str(*classes)
            ),
            ArchKind::ResNet { cfg: c, img_size } => format!(
                "resnet(block={},layers={}-{}-{}-{},width={},chans={},stem={},classes={},img={})",
                match c.block {
                    BlockKind::Basic => "basic",
                    BlockKind::Bottleneck => "bottleneck",
                },
                c.layers[0],
                c.layers[1],
                c.layers[2],
                c.layers[3],
                c.base_width,
                c.in_channels,
                match c.stem {
                    Stem::ImageNet => "imagenet",
                    Stem::Small => "small",
                },
                classes_str(c.num_classes),
                img_size
            ),
            ArchKind::DvaeEncoder { cfg: c, img_size } | ArchKind::DvaeDecoder { cfg: c, img_size } => format!(
                "{}(groups={},n_hid={},blocks={},chans={},vocab={},n_init={},img={})",
                family_name(&self.kind),
                c.group_count,
                c.n_hid,
                c.n_blk_per_group,
                c.input_channels,
                c.vocab_size,
                c.n_init,
                img_size
            ),
        }
    }

    /// The registry name when `self` is a registry preset.
    pub fn registry_name(&self) -> Option<&'static str> {
        NAMES.iter().copied().find(|n| preset(n).as_ref() == Some(self))
    }

    /// What a checkpoint records as `cim.arch`: the registry name, else [`Self::serialize`].
    pub fn arch_string(&self) -> String {
        match self.registry_name() {
            Some(n) => n.to_string(),
            None => self.serialize(),
        }
    }

    /// `vit`, `resnet`, `dvae_encoder` or `dvae_decoder`.
    pub fn family(&self) -> &'static str {
        family_name(&self.kind)
    }

    /// Register the model's tensors under `prefix` (empty: the timm / torchvision /
    /// `dall_e` names) and return its layers.
    pub fn build(&self, table: &mut ParamTable, prefix: &str) -> Result<Model> {
        let prefix = prefix.strip_suffix('.').unwrap_or(prefix);
        Ok(match &self.kind {
            ArchKind::Vit { cfg, classes } => {
                let vit = Vit::new(table, prefix, *cfg)?;
                let head = match classes {
                    Some(k) => Some(ClassifierHead::timm(table, prefix, cfg, *k)?),
                    None => None,
                };
                Model::Vit { vit, head }
            }
            ArchKind::ResNet { cfg, .. } => Model::ResNet(ResNet::new(table, prefix, *cfg)?),
            ArchKind::DvaeEncoder { cfg, .. } => Model::DvaeEncoder(DvaeEncoder::new(table, prefix, *cfg)?),
            ArchKind::DvaeDecoder { cfg, .. } => Model::DvaeDecoder(DvaeDecoder::new(table, prefix, *cfg)?),
        })
    }

    /// The classifier's class count (`None`: no head, or a dVAE).
    pub fn classes(&self) -> Option<usize> {
        match &self.kind {
            ArchKind::Vit { classes, .. } => *classes,
            ArchKind::ResNet { cfg, .. } => cfg.num_classes,
            _ => None,
        }
    }

    /// The names (without prefix) of the classifier's weight and bias, for the models
    /// that can carry one (`head.*` for a ViT, `fc.*` for a ResNet).
    pub fn head_names(&self) -> Option<(&'static str, &'static str)> {
        match &self.kind {
            ArchKind::Vit { .. } => Some(("head.weight", "head.bias")),
            ArchKind::ResNet { .. } => Some(("fc.weight", "fc.bias")),
            _ => None,
        }
    }

    /// The same model with another classifier (`None`: none). No-op for a dVAE.
    pub fn with_classes(&self, classes: Option<usize>) -> ArchSpec {
        let kind = match self.kind {
            ArchKind::Vit { cfg, .. } => ArchKind::Vit { cfg, classes },
            ArchKind::ResNet { cfg, img_size } => {
                ArchKind::ResNet { cfg: ResNetConfig { num_classes: classes, ..cfg }, img_size }
            }
            k => k,
        };
        ArchSpec { kind }
    }

    /// What the model takes and how an image becomes its input.
    pub fn input(&self) -> InputSpec {
        let imagenet = |chans: usize, size: usize| {
            let (mean, std) = if chans == 3 {
                (IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec())
            } else {
                // Grey or other channel counts: the average of the RGB statistics.
                (vec![0.449; chans], vec![0.226; chans])
            };
            InputSpec { kind: InputKind::Image, image_size: size, channels: chans, normalize: "imagenet", mean, std }
        };
        // map_pixels: 0.8·x + 0.1 = (x - m) / s with s = 1.25, m = -0.125.
        let map_pixels = |chans: usize| (vec![-0.125; chans], vec![1.25; chans]);
        match &self.kind {
            ArchKind::Vit { cfg, .. } => imagenet(cfg.in_chans, cfg.img_size),
            ArchKind::ResNet { cfg, img_size } => imagenet(cfg.in_channels, *img_size),
            ArchKind::DvaeEncoder { cfg, img_size } => {
                let (mean, std) = map_pixels(cfg.input_channels);
                InputSpec {
                    kind: InputKind::Image,
                    image_size: *img_size,
                    channels: cfg.input_channels,
                    normalize: "map_pixels",
                    mean,
                    std,
                }
            }
            ArchKind::DvaeDecoder { cfg, img_size } => InputSpec {
                kind: InputKind::Codes { vocab: cfg.vocab_size, grid: cfg.grid(*img_size).max(1) },
                image_size: *img_size,
                channels: cfg.vocab_size,
                normalize: "none",
                mean: Vec::new(),
                std: Vec::new(),
            },
        }
    }

    /// A one-line description of [`Model::infer`]'s output.
    pub fn output_doc(&self) -> &'static str {
        match &self.kind {
            ArchKind::Vit { .. } => "final normalized hidden states [B, 1+N, D] (timm forward_features)",
            ArchKind::ResNet { .. } => "last feature map [B, C, H, W] before pooling (eval-mode BN)",
            ArchKind::DvaeEncoder { .. } => "logits [B, vocab, h, w]",
            ArchKind::DvaeDecoder { .. } => "[B, 2C, H, W]: logit-Laplace means, then log-scales",
        }
    }

    /// The `cim.*` metadata a checkpoint of this model records: `cim.arch`,
    /// `cim.family`, `cim.image_size`, `cim.in_chans`, `cim.patch_size` (ViT),
    /// `cim.input` (`image` / `codes`), `cim.normalize`, `cim.mean`, `cim.std`
    /// (comma-separated, per channel), `cim.output`.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        let input = self.input();
        let join = |v: &[f64]| v.iter().map(|x| format!("{x}")).collect::<Vec<_>>().join(",");
        let mut m = BTreeMap::new();
        m.insert("cim.arch".to_string(), self.arch_string());
        m.insert("cim.family".to_string(), self.family().to_string());
        m.insert("cim.image_size".to_string(), input.image_size.to_string());
        let chans = match &self.kind {
            ArchKind::Vit { cfg, .. } => cfg.in_chans,
            ArchKind::ResNet { cfg, .. } => cfg.in_channels,
            ArchKind::DvaeEncoder { cfg, .. } | ArchKind::DvaeDecoder { cfg, .. } => cfg.input_channels,
        };
        m.insert("cim.in_chans".to_string(), chans.to_string());
        if let ArchKind::Vit { cfg, .. } = &self.kind {
            m.insert("cim.patch_size".to_string(), cfg.patch_size.to_string());
        }
        let kind = match input.kind {
            InputKind::Image => "image".to_string(),
            InputKind::Codes { vocab, grid } => format!("codes [B, {vocab}, {grid}, {grid}]"),
        };
        m.insert("cim.input".to_string(), kind);
        m.insert("cim.normalize".to_string(), input.normalize.to_string());
        if !input.mean.is_empty() {
            m.insert("cim.mean".to_string(), join(&input.mean));
            m.insert("cim.std".to_string(), join(&input.std));
        }
        m.insert("cim.output".to_string(), self.output_doc().to_string());
        m
    }
}

/// Apply `key=value` overrides to a starting configuration.
fn apply(start: ArchKind, kv: &BTreeMap<&str, &str>) -> Result<ArchKind> {
    Ok(match start {
        ArchKind::Vit { mut cfg, mut classes } => {
            for (&k, &v) in kv {
                match k {
                    "img" => cfg.img_size = parse_usize(k, v)?,
                    "patch" => cfg.patch_size = parse_usize(k, v)?,
                    "chans" => cfg.in_chans = parse_usize(k, v)?,
                    "dim" => cfg.embed_dim = parse_usize(k, v)?,
                    "depth" => {
                        cfg.depth = v.parse::<usize>().or_else(|_| err(format!("{k}={v}: expected an integer")))?
                    }
                    "heads" => cfg.heads = parse_usize(k, v)?,
                    "mlp_ratio" => cfg.mlp_ratio = parse_f64(k, v)?,
                    "qkv_bias" => cfg.qkv_bias = parse_bool(k, v)?,
                    "ln_eps" => cfg.ln_eps = parse_f64(k, v)?,
                    "final_norm" => cfg.final_norm = parse_bool(k, v)?,
                    "classes" => classes = parse_classes(k, v)?,
                    _ => return err(format!("unknown key {k:?}")),
                }
            }
            ArchKind::Vit { cfg, classes }
        }
        ArchKind::ResNet { mut cfg, mut img_size } => {
            for (&k, &v) in kv {
                match k {
                    "block" => {
                        cfg.block = match v {
                            "basic" => BlockKind::Basic,
                            "bottleneck" => BlockKind::Bottleneck,
                            _ => return err(format!("block={v}: expected basic or bottleneck")),
                        }
                    }
                    "layers" => {
                        let parts: Vec<&str> = v.split(['-', ':', '/']).collect();
                        if parts.len() != 4 {
                            return err(format!("layers={v}: expected four block counts, e.g. 2-2-2-2"));
                        }
                        for (i, p) in parts.iter().enumerate() {
                            cfg.layers[i] = parse_usize(k, p)?;
                        }
                    }
                    "width" => cfg.base_width = parse_usize(k, v)?,
                    "chans" => cfg.in_channels = parse_usize(k, v)?,
                    "stem" => {
                        cfg.stem = match v {
                            "imagenet" => Stem::ImageNet,
                            "small" => Stem::Small,
                            _ => return err(format!("stem={v}: expected imagenet or small")),
                        }
                    }
                    "classes" => cfg.num_classes = parse_classes(k, v)?,
                    "img" => img_size = parse_usize(k, v)?,
                    _ => return err(format!("unknown key {k:?}")),
                }
            }
            ArchKind::ResNet { cfg, img_size }
        }
        ArchKind::DvaeEncoder { cfg, img_size } | ArchKind::DvaeDecoder { cfg, img_size } => {
            let (mut cfg, mut img) = (cfg, img_size);
            for (&k, &v) in kv {
                match k {
                    "groups" => cfg.group_count = parse_usize(k, v)?,
                    "n_hid" => cfg.n_hid = parse_usize(k, v)?,
                    "blocks" => cfg.n_blk_per_group = parse_usize(k, v)?,
                    "chans" => cfg.input_channels = parse_usize(k, v)?,
                    "vocab" => cfg.vocab_size = parse_usize(k, v)?,
                    "n_init" => cfg.n_init = parse_usize(k, v)?,
                    "img" => img = parse_usize(k, v)?,
                    _ => return err(format!("unknown key {k:?}")),
                }
            }
            match start {
                ArchKind::DvaeEncoder { .. } => ArchKind::DvaeEncoder { cfg, img_size: img },
                _ => ArchKind::DvaeDecoder { cfg, img_size: img },
            }
        }
    })
}

impl Model {
    /// Evaluation-mode forward pass (see the module docs for each output).
    pub fn infer<B: Backend>(&self, b: &B, store: &ParamStore<B>, x: &Tensor<B>) -> Result<Tensor<B>> {
        match self {
            Model::Vit { vit, .. } => vit.infer_features(b, &store.params, x),
            Model::ResNet(r) => r.infer_features(b, &store.params, &store.state, x),
            Model::DvaeEncoder(e) => e.infer(b, &store.params, x),
            Model::DvaeDecoder(d) => d.infer(b, &store.params, x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_and_roundtrips() {
        for &n in NAMES {
            let s = by_name(n).unwrap();
            assert_eq!(s.registry_name(), Some(n));
            assert_eq!(s.arch_string(), n);
            let back = ArchSpec::parse(&s.serialize()).unwrap();
            assert_eq!(back, s, "{n}: {}", s.serialize());
        }
    }

    #[test]
    fn unknown_name_lists_the_valid_ones() {
        let e = by_name("vit_huge").unwrap_err().to_string();
        assert!(e.contains("vit_huge") && e.contains("resnet50x4") && e.contains("dalle_decoder"), "{e}");
    }

    #[test]
    fn serialized_configs_roundtrip_any_size() {
        let s = ArchSpec::parse("vit(img=16,patch=4,dim=24,depth=2,heads=2,ln_eps=1e-5)").unwrap();
        let ArchKind::Vit { cfg, classes } = s.kind else { panic!() };
        assert_eq!((cfg.img_size, cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.heads), (16, 4, 24, 2, 2));
        assert_eq!((cfg.ln_eps, classes), (1e-5, None));
        assert!(s.registry_name().is_none());
        assert_eq!(ArchSpec::parse(&s.arch_string()).unwrap(), s);
        let r = ArchSpec::parse("resnet(block=bottleneck,layers=1-1-1-1,width=8,stem=small,img=16)").unwrap();
        assert_eq!(ArchSpec::parse(&r.serialize()).unwrap(), r);
        let d = ArchSpec::parse("dvae_decoder(groups=2,n_hid=8,vocab=16,n_init=8,blocks=1,img=8)").unwrap();
        assert_eq!(ArchSpec::parse(&d.serialize()).unwrap(), d);
        assert_eq!(d.input().kind, InputKind::Codes { vocab: 16, grid: 4 });
        // A registry base with overrides.
        let t = ArchSpec::parse("vit_tiny_patch16_224(depth=2,classes=none)").unwrap();
        assert_eq!(t.classes(), None);
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        for (s, want) in [
            ("vit(img=32)", "needs the keys"),
            ("vit(img=32,patch=5,dim=8,depth=1,heads=2)", "multiple of the patch"),
            ("resnet(block=basic,layers=2-2)", "four block counts"),
            ("resnet(block=basic,layers=2-2-2-2,colour=red)", "valid keys"),
            ("vit(img=32", "does not end"),
            ("mlp(dim=3)", "unknown architecture"),
            ("vit(img=x,patch=4,dim=8,depth=1,heads=2)", "positive integer"),
        ] {
            let e = ArchSpec::parse(s).unwrap_err().to_string();
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn metadata_names_the_normalization() {
        let m = by_name("resnet18").unwrap().metadata();
        assert_eq!(m["cim.arch"], "resnet18");
        assert_eq!(m["cim.mean"], "0.485,0.456,0.406");
        let d = by_name("dvae_small_encoder").unwrap().metadata();
        assert_eq!(d["cim.normalize"], "map_pixels");
        assert_eq!(d["cim.mean"], "-0.125,-0.125,-0.125");
    }
}
