//! Where the exported weights come from.
//!
//! - A run directory `RUN` (written by `cim pretrain`): its newest training checkpoint.
//! - A training checkpoint, `RUN/checkpoints/step-N.safetensors` (`cim.kind =
//!   cim-pretrain-state`): the whole trainable buffer and the run's configuration, so it
//!   holds the enhancer *and* its pre-training head (RESPIX or REVDET, whichever the run
//!   trained), the input normalization and the RESPIX target.
//! - Any other safetensors file: a backbone under timm / torchvision names, as
//!   `cim infer --weights` loads it (`RUN/enhancer.safetensors`, which records its
//!   architecture, or a timm / torchvision file with `--arch`). It carries no CIM head;
//!   the classifier comes with a file that has one (`head.*`, `fc.*`).

use crate::enhancer::{invalid, Enhancer, Head, HeadKind};
use cim_core::arch::{ArchSpec, InputKind, InputSpec, Model};
use cim_core::checkpoint::{self, Loaded as LoadedFile};
use cim_core::cim::{self, CimModel, EnhancerHead, Objective, RespixNorm};
use cim_core::embedded::SafetensorsBytes;
use cim_core::params::ParamStore;
use cim_core::train::run_dir::{KIND_PRETRAIN, META_CONFIG, META_KIND};
use cim_core::train::{PretrainConfig, RunDir};
use cim_core::{Backend, Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// An enhancer with its weights.
pub struct Loaded<B: Backend> {
    pub enhancer: Enhancer,
    pub store: ParamStore<B>,
    /// The file the weights came from.
    pub path: PathBuf,
    /// Whether it was a training checkpoint (with the pre-training head).
    pub training_checkpoint: bool,
}

fn ck(path: &Path, detail: impl Into<String>) -> Error {
    Error::Checkpoint { path: path.display().to_string(), detail: detail.into() }
}

/// Load the enhancer at `path` (a run directory, a training checkpoint or a weights
/// file; see the module docs) with the head `head`. `arch` names the architecture of a
/// weights file without `cim.arch` metadata.
pub fn load<B: Backend>(b: &B, path: &Path, arch: Option<&str>, head: HeadKind) -> Result<Loaded<B>> {
    if path.is_dir() {
        let Some(latest) = RunDir::new(path).latest() else {
            return Err(ck(path, "is a directory without a training checkpoint (checkpoints/latest); pass a file"));
        };
        return load(b, &latest, arch, head);
    }
    let meta = checkpoint::read_metadata(path)?;
    if meta.get(META_KIND).map(String::as_str) == Some(KIND_PRETRAIN) {
        if arch.is_some() {
            return Err(ck(path, "is a training checkpoint, which records its configuration: drop --arch"));
        }
        return from_training(b, path, &meta, head);
    }
    from_weights(b, path, arch, head)
}

/// `cim.mean` / `cim.std` from `meta` over the architecture's normalization.
pub fn input_with_metadata(spec: &ArchSpec, meta: &BTreeMap<String, String>) -> Result<InputSpec> {
    let mut s = spec.input();
    let parse = |key: &str| -> Result<Option<Vec<f64>>> {
        let Some(v) = meta.get(key) else { return Ok(None) };
        let vals: std::result::Result<Vec<f64>, _> = v.split(',').map(|x| x.trim().parse::<f64>()).collect();
        match vals {
            Ok(vals) if vals.len() == s.channels && vals.iter().all(|x| x.is_finite()) => Ok(Some(vals)),
            _ => invalid(format!("metadata {key} = {v:?} is not {} comma-separated numbers", s.channels)),
        }
    };
    if s.kind == InputKind::Image {
        if let (Some(mean), Some(std)) = (parse("cim.mean")?, parse("cim.std")?) {
            if std.iter().any(|&x| x <= 0.0) {
                return invalid(format!("metadata cim.std {std:?} is not positive"));
            }
            s.mean = mean;
            s.std = std;
        }
    }
    Ok(s)
}

fn from_weights<B: Backend>(b: &B, path: &Path, arch: Option<&str>, head: HeadKind) -> Result<Loaded<B>> {
    if matches!(head, HeadKind::Respix | HeadKind::Revdet) {
        return Err(ck(
            path,
            format!(
                "holds a backbone only (timm / torchvision names); the {head} head is in the run's training \
                 checkpoints: export RUN/checkpoints/step-N.safetensors, or the run directory RUN"
            ),
        ));
    }
    let LoadedFile { spec, model, store, report } = checkpoint::load_model(path, arch, b)?;
    if !matches!(model, Model::Vit { .. } | Model::ResNet(_)) {
        return invalid(format!("{} is a {}; cim exports ViT and ResNet enhancers", spec.arch_string(), spec.family()));
    }
    if head == HeadKind::Classifier && spec.classes().is_none() {
        let names = spec.head_names().map(|(w, _)| w).unwrap_or("head.weight");
        return Err(ck(path, format!("has no classifier ({names}): export it with --head none")));
    }
    let input = input_with_metadata(&spec, &report.metadata)?;
    let patch_size = match &model {
        Model::Vit { vit, .. } => Some(vit.cfg.patch_size),
        _ => report.metadata.get("cim.patch_size").and_then(|p| p.parse().ok()),
    };
    let head = if head == HeadKind::Classifier { Head::Classifier } else { Head::None };
    let enhancer =
        Enhancer { spec, model, head, input, patch_size, respix_norm: RespixNorm::PAPER, target_eps: cim::TARGET_EPS };
    Ok(Loaded { enhancer, store, path: path.to_path_buf(), training_checkpoint: false })
}

fn from_training<B: Backend>(b: &B, path: &Path, meta: &BTreeMap<String, String>, head: HeadKind) -> Result<Loaded<B>> {
    let text = meta.get(META_CONFIG).ok_or_else(|| ck(path, format!("has no {META_CONFIG} metadata")))?;
    let cfg =
        PretrainConfig::from_toml(text).map_err(|e| ck(path, format!("its configuration does not parse: {e}")))?;
    let cim = cfg.cim().map_err(|e| ck(path, format!("its configuration is not valid: {e}")))?;
    let (model, table, _) = CimModel::new(cim)?;
    let bytes = std::fs::read(path).map_err(|e| ck(path, format!("cannot read: {e}")))?;
    let st = SafetensorsBytes::parse(&bytes).map_err(|e| ck(path, e.to_string()))?;
    let flat = |name: &str, len: usize| -> Result<Vec<B::E>> {
        let t = st.tensor(name).ok_or_else(|| ck(path, format!("has no {name} tensor")))?;
        let v = t.decode::<B::E>().ok_or_else(|| ck(path, format!("{name} has an unsupported dtype")))?;
        if v.len() != len {
            return Err(ck(path, format!("{name} holds {} values, the configured model {len}", v.len())));
        }
        Ok(v)
    };
    let params = flat("train.params", table.params_len())?;
    let state = if table.state_len() > 0 { flat("train.state", table.state_len())? } else { Vec::new() };
    let store = ParamStore { params: b.upload(&params)?, grads: b.alloc(0)?, state: b.upload(&state)?, table };
    drop((params, state, bytes));

    let trained = match cim.objective {
        Objective::Respix { .. } => HeadKind::Respix,
        Objective::Revdet => HeadKind::Revdet,
    };
    let head = match (head, model.head) {
        (HeadKind::None, _) => Head::None,
        (HeadKind::Classifier, _) => {
            return Err(ck(
                path,
                "is a pre-training checkpoint, without a classifier: export it with --head none or its CIM head",
            ))
        }
        (h, _) if h != trained => {
            return Err(ck(path, format!("the run pre-trained with {trained}, so its head is {trained}, not {h}")))
        }
        (_, EnhancerHead::Respix(h)) => Head::VitRespix(h),
        (_, EnhancerHead::Revdet(h)) => Head::VitRevdet(h),
        (_, EnhancerHead::Conv(h)) => Head::Conv(h),
    };
    let spec = cim.enhancer_arch();
    let model = match model.enhancer {
        cim::Enhancer::Vit(vit) => Model::Vit { vit, head: None },
        cim::Enhancer::ResNet(r) => Model::ResNet(r),
    };
    let mut input = spec.input();
    input.mean = cim.mean.to_vec();
    input.std = cim.std.to_vec();
    let respix_norm = match cim.objective {
        Objective::Respix { norm } => norm,
        Objective::Revdet => RespixNorm::PAPER,
    };
    let enhancer = Enhancer {
        spec,
        model,
        head,
        input,
        patch_size: Some(cim.enhancer.patch_size()),
        respix_norm,
        target_eps: cim.target_eps,
    };
    Ok(Loaded { enhancer, store, path: path.to_path_buf(), training_checkpoint: true })
}
