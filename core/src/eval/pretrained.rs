//! The encoder under evaluation: pre-trained weights from a `cim pretrain` run or a
//! checkpoint file, or a randomly initialized architecture (the baseline).
//!
//! `--checkpoint RUN_OR_FILE` resolves as follows:
//! - a run directory of `cim pretrain`: `RUN/enhancer.safetensors` where the run finished,
//!   else the enhancer part of its newest training checkpoint (`RUN/checkpoints/latest`);
//! - a training checkpoint (`cim.kind = cim-pretrain-state`): its enhancer part, the model
//!   rebuilt from the configuration in its metadata;
//! - any other safetensors file: the model it holds ([`checkpoint::load_model`]: its
//!   `cim.arch`, or `--arch` for a timm / torchvision file). A classifier in the file
//!   (`head.*`, `fc.*`) is dropped: evaluation trains its own.
//!
//! The input normalization is the file's `cim.mean` / `cim.std` (a `cim pretrain` run
//! records the one it trained with), else the architecture's default (ImageNet).

use crate::arch::{self, ArchKind, ArchSpec, Model};
use crate::backend::Backend;
use crate::checkpoint;
use crate::cim::{CimModel, ENHANCER};
use crate::error::Result;
use crate::params::{ParamStore, ParamTable};
use crate::train::run_dir::{KIND_PRETRAIN, META_CONFIG, META_KIND};
use crate::train::{PretrainConfig, RunDir};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::eval_err;

/// A headless ViT or ResNet with its weights and input normalization.
pub struct Encoder<B: Backend> {
    /// The architecture, without a classifier.
    pub spec: ArchSpec,
    pub model: Model,
    pub store: ParamStore<B>,
    /// Per channel: the model sees `(x − mean) / std` for pixels `x` in `[0, 1]`.
    pub mean: [f64; 3],
    pub std: [f64; 3],
    /// Where the weights came from, for reports (a file, or `random init (seed N)`).
    pub origin: String,
    /// The resolved weights file, `None` for a random initialization.
    pub path: Option<PathBuf>,
    /// The file's `cim.*` metadata (`cim.objective` for a `cim pretrain` enhancer).
    pub metadata: BTreeMap<String, String>,
}

/// The names of a classifier that evaluation replaces (timm's `head`, `fc_norm`;
/// torchvision's `fc`).
pub fn is_classifier(name: &str) -> bool {
    ["head.", "fc.", "fc_norm."].iter().any(|p| name.starts_with(p))
}

/// The architecture without a classifier; only ViTs and ResNets are encoders.
pub fn headless(spec: &ArchSpec) -> Result<ArchSpec> {
    match spec.kind {
        ArchKind::Vit { .. } | ArchKind::ResNet { .. } => Ok(spec.with_classes(None)),
        _ => Err(eval_err(format!(
            "{} is a {}: evaluation needs a ViT or a ResNet encoder",
            spec.arch_string(),
            spec.family()
        ))),
    }
}

/// The side images are resized to for `spec`.
pub fn image_size(spec: &ArchSpec) -> usize {
    spec.input().image_size
}

/// Parse `cim.mean` / `cim.std` (three comma-separated numbers), else `spec`'s default.
fn normalization(spec: &ArchSpec, meta: &BTreeMap<String, String>) -> ([f64; 3], [f64; 3]) {
    let input = spec.input();
    let three = |v: &[f64]| -> Option<[f64; 3]> { v.try_into().ok() };
    let parse = |k: &str| -> Option<[f64; 3]> {
        let v: Vec<f64> = meta.get(k)?.split(',').map(|x| x.trim().parse::<f64>()).collect::<Result<_, _>>().ok()?;
        three(&v)
    };
    let dm = three(&input.mean).unwrap_or([0.449; 3]);
    let ds = three(&input.std).unwrap_or([0.226; 3]);
    match (parse("cim.mean"), parse("cim.std")) {
        (Some(m), Some(s)) if s.iter().all(|&x| x > 0.0 && x.is_finite()) => (m, s),
        _ => (dm, ds),
    }
}

/// A fresh store for `spec` (no classifier) with zero buffers, to be filled by a copy.
fn empty_store<B: Backend>(b: &B, spec: &ArchSpec) -> Result<(Model, ParamStore<B>)> {
    let mut table = ParamTable::new();
    let model = spec.build(&mut table, "")?;
    let (n, s) = (table.params_len(), table.state_len());
    Ok((model, ParamStore { params: b.alloc(n)?, grads: b.alloc(n)?, state: b.alloc(s)?, table }))
}

/// Copy every (non-alias) tensor of `dst` from `src`'s tensor `{src_prefix}{name}`;
/// `skip(name)` leaves a tensor as it is. A tensor missing from `src` or shaped otherwise
/// is an error naming it.
pub fn copy_tensors<B: Backend>(
    b: &B,
    src: &ParamStore<B>,
    src_prefix: &str,
    dst: &mut ParamStore<B>,
    skip: impl Fn(&str) -> bool,
) -> Result<usize> {
    let entries: Vec<_> = dst.table.entries().iter().filter(|e| e.alias_of.is_none()).cloned().collect();
    let mut copied = 0;
    for e in entries {
        if skip(&e.name) {
            continue;
        }
        let from = format!("{src_prefix}{}", e.name);
        let Some(se) = src.table.entry(&from) else {
            return Err(eval_err(format!("the pre-trained weights have no tensor {from} (another architecture?)")));
        };
        if se.shape != e.shape || se.param.kind != e.param.kind {
            return Err(eval_err(format!(
                "pre-trained tensor {from} has shape {:?}, the model needs {:?} for {}",
                se.shape, e.shape, e.name
            )));
        }
        let v = src.get(b, &from)?;
        dst.set(b, &e.name, &e.shape, &v)?;
        copied += 1;
    }
    Ok(copied)
}

/// A randomly initialized encoder of architecture `arch` (a registry name or a serialized
/// configuration), under `seed`.
pub fn random_encoder<B: Backend>(b: &B, arch: &str, seed: u64) -> Result<Encoder<B>> {
    let spec = headless(&arch::by_name(arch)?)?;
    let mut table = ParamTable::new();
    let model = spec.build(&mut table, "")?;
    let store = table.build(b, seed)?;
    let (mean, std) = normalization(&spec, &BTreeMap::new());
    Ok(Encoder {
        spec,
        model,
        store,
        mean,
        std,
        origin: format!("random init (seed {seed})"),
        path: None,
        metadata: BTreeMap::new(),
    })
}

/// The file a `--checkpoint` names (see the module docs): a run directory resolves to its
/// enhancer or its newest training checkpoint.
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        let run = RunDir::new(path);
        if run.enhancer_path().is_file() {
            return Ok(run.enhancer_path());
        }
        if let Some(p) = run.latest() {
            return Ok(p);
        }
        return Err(eval_err(format!(
            "{} is a folder but not a run directory of cim pretrain: it has no enhancer.safetensors and no \
             checkpoints/latest",
            path.display()
        )));
    }
    if !path.exists() {
        return Err(eval_err(format!(
            "checkpoint {} does not exist (pass a run directory of cim pretrain or a .safetensors file)",
            path.display()
        )));
    }
    Ok(path.to_path_buf())
}

/// The enhancer of a `cim pretrain` training checkpoint.
fn from_training_checkpoint<B: Backend>(b: &B, path: &Path, meta: &BTreeMap<String, String>) -> Result<Encoder<B>> {
    let text = meta
        .get(META_CONFIG)
        .ok_or_else(|| eval_err(format!("{}: a training checkpoint without {META_CONFIG} metadata", path.display())))?;
    let cfg = PretrainConfig::from_toml(text)
        .map_err(|e| eval_err(format!("{}: its configuration cannot be read: {e}", path.display())))?;
    let cim = cfg.cim()?;
    let (_, table, _) = CimModel::new(cim)?;
    let (n, s) = (table.params_len(), table.state_len());
    let mut full = ParamStore { params: b.alloc(n)?, grads: b.alloc(n)?, state: b.alloc(s)?, table };
    RunDir::load_weights(path, b, &mut full)?;
    let spec = headless(&cim.enhancer_arch())?;
    let (model, mut store) = empty_store(b, &spec)?;
    copy_tensors(b, &full, &format!("{ENHANCER}."), &mut store, |_| false)?;
    let mut metadata = cim.enhancer_metadata();
    if let Some(step) = meta.get(crate::train::run_dir::META_STEP) {
        metadata.insert("cim.step".into(), step.clone());
    }
    let (mean, std) = normalization(&spec, &metadata);
    let step = metadata.get("cim.step").cloned().unwrap_or_default();
    Ok(Encoder {
        spec,
        model,
        store,
        mean,
        std,
        origin: format!("{} (enhancer at step {step})", path.display()),
        path: Some(path.to_path_buf()),
        metadata,
    })
}

/// Load the encoder `checkpoint` names (see the module docs); `arch` names the
/// architecture of a file without `cim.arch`.
pub fn load_encoder<B: Backend>(b: &B, checkpoint: &Path, arch: Option<&str>) -> Result<Encoder<B>> {
    let path = resolve_checkpoint(checkpoint)?;
    let meta = checkpoint::read_metadata(&path)?;
    if meta.get(META_KIND).map(String::as_str) == Some(KIND_PRETRAIN) {
        return from_training_checkpoint(b, &path, &meta);
    }
    let loaded = checkpoint::load_model(&path, arch, b)?;
    let spec = headless(&loaded.spec)?;
    let (model, store) = if loaded.spec.classes().is_some() {
        let (model, mut store) = empty_store(b, &spec)?;
        copy_tensors(b, &loaded.store, "", &mut store, |_| false)?;
        (model, store)
    } else {
        (loaded.model, loaded.store)
    };
    let (mean, std) = normalization(&spec, &loaded.report.metadata);
    Ok(Encoder {
        spec,
        model,
        store,
        mean,
        std,
        origin: path.display().to_string(),
        path: Some(path),
        metadata: loaded.report.metadata,
    })
}
