//! A trained run loaded for pictures: its configuration, the weights of one training
//! checkpoint (no optimizer state) and its frozen tokenizer.
//!
//! `path` is a run directory (its newest checkpoint: `checkpoints/latest`, else the
//! highest `step-N.safetensors`) or a checkpoint file (its run directory is the folder
//! above `checkpoints/`). The configuration is the one the checkpoint records
//! (`cim.config`), else `RUN/config.toml`. The tokenizer is the one given, else the
//! one `cim pretrain` used ([`tokenizer_path`]), else `RUN/../tokenizer.safetensors`
//! (a relative path in the configuration is relative to where training ran).

use super::err;
use crate::backend::Backend;
use crate::checkpoint;
use crate::cim::CimModel;
use crate::error::{Error, Result};
use crate::params::ParamStore;
use crate::train::run_dir::{KIND_PRETRAIN, META_CONFIG, META_KIND};
use crate::train::{load_tokenizer, tokenizer_path, PretrainConfig, RunDir};
use std::path::{Path, PathBuf};

/// A run ready for inference.
pub struct LoadedRun<B: Backend> {
    pub cfg: PretrainConfig,
    pub run: RunDir,
    pub model: CimModel,
    /// Enhancer, head and generator.
    pub store: ParamStore<B>,
    /// The frozen dVAE.
    pub tokenizer: ParamStore<B>,
    /// Updates done when the checkpoint was written.
    pub step: u64,
    pub checkpoint: PathBuf,
    pub tokenizer_path: PathBuf,
}

/// The newest checkpoint of a run directory.
pub fn newest_checkpoint(run: &RunDir) -> Option<PathBuf> {
    if let Some(p) = run.latest() {
        return Some(p);
    }
    let dir = std::fs::read_dir(run.checkpoints()).ok()?;
    dir.filter_map(|e| {
        let p = e.ok()?.path();
        let n = p.file_name()?.to_str()?.strip_prefix("step-")?.strip_suffix(".safetensors")?.parse::<u64>().ok()?;
        Some((n, p))
    })
    .max()
    .map(|(_, p)| p)
}

/// Load the run or checkpoint at `path` (see the module docs) on `b`, with `tokenizer`
/// replacing the run's tokenizer where given.
pub fn load_run<B: Backend>(b: &B, path: &Path, tokenizer: Option<&Path>) -> Result<LoadedRun<B>> {
    if !path.exists() {
        return Err(err(format!("{} does not exist (expected a run directory or a checkpoint file)", path.display())));
    }
    let (run, ckpt) = if path.is_dir() {
        let run = RunDir::new(path);
        if !run.config_path().is_file() && !run.checkpoints().is_dir() {
            return Err(err(format!(
                "{} is not a run directory (no config.toml, no checkpoints/); name one that cim pretrain wrote",
                path.display()
            )));
        }
        let ckpt = newest_checkpoint(&run).ok_or_else(|| {
            err(format!(
                "run directory {} has no checkpoints yet (nothing in {}); train it first: cim pretrain --run {}",
                path.display(),
                run.checkpoints().display(),
                path.display()
            ))
        })?;
        (run, ckpt)
    } else {
        (run_of_checkpoint(path), path.to_path_buf())
    };
    let meta = checkpoint::read_metadata(&ckpt)?;
    if meta.get(META_KIND).map(String::as_str) != Some(KIND_PRETRAIN) {
        return Err(err(format!(
            "{} is not a cim pre-training checkpoint (an enhancer-only or other file?); name a run directory or \
             one of its checkpoints/step-N.safetensors",
            ckpt.display()
        )));
    }
    let cfg = match meta.get(META_CONFIG) {
        Some(text) => PretrainConfig::from_toml(text)?,
        None => {
            let text = std::fs::read_to_string(run.config_path())
                .map_err(|e| err(format!("cannot read {}: {e}", run.config_path().display())))?;
            PretrainConfig::from_toml(&text)?
        }
    };
    let (model, mut store, mut tok) = CimModel::build(cfg.cim()?, b, cfg.seed)?;
    let restored = crate::train::RunDir::load_weights(&ckpt, b, &mut store)?;
    let tok_path = match tokenizer {
        Some(t) => t.to_path_buf(),
        None => find_tokenizer(&cfg, &run)?,
    };
    if !tok_path.is_file() {
        return Err(err(format!("tokenizer {} does not exist", tok_path.display())));
    }
    load_tokenizer(&tok_path, b, &mut tok).map_err(|e| {
        let d = cfg.tokenizer_model;
        let detail = match e {
            Error::Checkpoint { detail, .. } => detail,
            e => e.to_string(),
        };
        let detail = super::brief(&detail, 300);
        err(format!(
            "tokenizer {} does not fit the run's model (a dVAE of {} groups, {} wide, {} codes): {detail}",
            tok_path.display(),
            d.group_count,
            d.n_hid,
            d.vocab_size
        ))
    })?;
    Ok(LoadedRun {
        cfg,
        run,
        model,
        store,
        tokenizer: tok,
        step: restored.step,
        checkpoint: ckpt,
        tokenizer_path: tok_path,
    })
}

/// The configuration of the run directory or checkpoint at `path` (the checkpoint's
/// own, else `RUN/config.toml`) and the run directory.
pub fn read_run_config(path: &Path) -> Result<(PretrainConfig, RunDir)> {
    if path.is_dir() {
        let run = RunDir::new(path);
        let text = std::fs::read_to_string(run.config_path()).map_err(|e| {
            err(format!("{} is not a run directory: cannot read {}: {e}", path.display(), run.config_path().display()))
        })?;
        return Ok((PretrainConfig::from_toml(&text)?, run));
    }
    if !path.exists() {
        return Err(err(format!("{} does not exist (expected a run directory or a checkpoint file)", path.display())));
    }
    let meta = checkpoint::read_metadata(path)?;
    let text = meta.get(META_CONFIG).ok_or_else(|| {
        err(format!("{} records no run configuration (not a cim pre-training checkpoint)", path.display()))
    })?;
    Ok((PretrainConfig::from_toml(text)?, run_of_checkpoint(path)))
}

/// The run directory a checkpoint file belongs to: the folder above `checkpoints/`, else
/// its own folder.
fn run_of_checkpoint(path: &Path) -> RunDir {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if parent.file_name().is_some_and(|n| n == "checkpoints") {
        RunDir::new(parent.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))
    } else {
        RunDir::new(parent)
    }
}

/// The run's tokenizer: as `cim pretrain` found it, else beside the run directory.
pub fn find_tokenizer(cfg: &PretrainConfig, run: &RunDir) -> Result<PathBuf> {
    let configured = tokenizer_path(cfg, run);
    if configured.is_file() {
        return Ok(configured);
    }
    let beside = tokenizer_path(&PretrainConfig { tokenizer: PathBuf::new(), ..cfg.clone() }, run);
    if beside.is_file() {
        return Ok(beside);
    }
    Err(err(format!(
        "the run's tokenizer is not at {} nor at {}; name it with --tokenizer FILE",
        configured.display(),
        beside.display()
    )))
}
