//! The run directory:
//!
//! ```text
//! RUN/config.toml                      the resolved configuration
//! RUN/metrics.jsonl                    one MetricsRecord per logged step
//! RUN/checkpoints/step-N.safetensors   training state after N updates (the newest
//!                                      `keep_checkpoints` of them)
//! RUN/checkpoints/latest               the name of the newest complete checkpoint
//! RUN/enhancer.safetensors             the enhancer alone (timm / torchvision names), at the end
//! RUN/samples/step-N.png               corrupted samples every `sample_every` steps
//! ```
//! A training checkpoint holds the whole trainable buffer (`train.params`), the state
//! buffer (`train.state`, batch-norm statistics, where there is one) and AdamW's moments
//! (`optim.m`, `optim.v`) as flat tensors in the backend's precision (`F32`, or `F64`
//! for an `f64` backend: bit-exact either way), with the step, the optimizer's step,
//! the seed, the loader position and the configuration in its metadata. Every file is
//! written through [`checkpoint::write_atomic`]: a failed save leaves the previous
//! checkpoint and `latest` untouched.

use super::config::PretrainConfig;
use super::metrics::MetricsRecord;
use crate::backend::Backend;
use crate::checkpoint;
use crate::cim::OptState;
use crate::element::{DType, Element};
use crate::error::{Error, Result};
use crate::params::ParamStore;
use crate::tensor::View;
use safetensors::{Dtype, SafeTensors};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Metadata keys of a training checkpoint.
pub const META_KIND: &str = "cim.kind";
pub const KIND_PRETRAIN: &str = "cim-pretrain-state";
pub const META_STEP: &str = "cim.step";
pub const META_OPT_STEP: &str = "cim.optimizer_step";
pub const META_SEED: &str = "cim.seed";
pub const META_LOADER_STEP: &str = "cim.loader_step";
pub const META_CONFIG: &str = "cim.config";

fn io_err(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Checkpoint { path: path.display().to_string(), detail: format!("{what}: {e}") }
}

/// A run directory (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir {
    pub root: PathBuf,
}

/// What a training checkpoint restores besides the buffers.
#[derive(Clone, Debug, PartialEq)]
pub struct Restored {
    pub step: u64,
    pub path: PathBuf,
    pub metadata: BTreeMap<String, String>,
}

/// A flat tensor ready to be written.
struct Flat {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &Flat {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn encode<E: Element>(values: &[E]) -> Flat {
    let (dtype, data) = if E::DTYPE == DType::F64 {
        (Dtype::F64, values.iter().flat_map(|v| v.f64().to_le_bytes()).collect())
    } else {
        (Dtype::F32, values.iter().flat_map(|v| (v.f64() as f32).to_le_bytes()).collect())
    };
    Flat { dtype, shape: vec![values.len()], data }
}

pub(crate) fn decode<E: Element>(path: &Path, st: &SafeTensors<'_>, name: &str, len: usize) -> Result<Vec<E>> {
    let v = st.tensor(name).map_err(|e| io_err(path, &format!("tensor {name}"), e))?;
    let d = v.data();
    let out: Vec<E> = match v.dtype() {
        Dtype::F32 => d.chunks_exact(4).map(|c| E::of(f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)).collect(),
        Dtype::F64 => d
            .chunks_exact(8)
            .map(|c| E::of(f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])))
            .collect(),
        other => return Err(io_err(path, &format!("tensor {name}"), format!("unsupported dtype {other:?}"))),
    };
    if out.len() != len {
        return Err(io_err(
            path,
            &format!("tensor {name}"),
            format!("{} values, the model has {len} (another configuration?)", out.len()),
        ));
    }
    Ok(out)
}

impl RunDir {
    /// The run at `root` (nothing is created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }
    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub fn checkpoint_path(&self, step: u64) -> PathBuf {
        self.checkpoints().join(format!("step-{step}.safetensors"))
    }
    pub fn latest_path(&self) -> PathBuf {
        self.checkpoints().join("latest")
    }
    pub fn enhancer_path(&self) -> PathBuf {
        self.root.join("enhancer.safetensors")
    }
    pub fn samples(&self) -> PathBuf {
        self.root.join("samples")
    }
    pub fn sample_path(&self, step: u64) -> PathBuf {
        self.samples().join(format!("step-{step}.png"))
    }

    /// Create the directories.
    pub fn create(&self) -> Result<()> {
        fs::create_dir_all(self.checkpoints()).map_err(|e| io_err(&self.root, "cannot create the run directory", e))
    }

    /// Write the resolved configuration (atomically).
    pub fn write_config(&self, cfg: &PretrainConfig) -> Result<()> {
        checkpoint::write_atomic(&self.config_path(), cfg.to_toml().as_bytes())
    }

    /// The newest complete checkpoint, where `latest` names one that exists.
    pub fn latest(&self) -> Option<PathBuf> {
        let name = fs::read_to_string(self.latest_path()).ok()?;
        let p = self.checkpoints().join(name.trim());
        p.is_file().then_some(p)
    }

    /// The step checkpoints present, oldest first.
    pub fn step_checkpoints(&self) -> Vec<(u64, PathBuf)> {
        let mut v: Vec<(u64, PathBuf)> = fs::read_dir(self.checkpoints())
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let step = name.strip_prefix("step-")?.strip_suffix(".safetensors")?.parse().ok()?;
                Some((step, e.path()))
            })
            .collect();
        v.sort();
        v
    }

    /// Delete all but the newest `keep` step checkpoints (none with `keep` 0), never the
    /// one `latest` names. Returns the deleted files.
    pub fn prune_checkpoints(&self, keep: usize) -> Result<Vec<PathBuf>> {
        let all = self.step_checkpoints();
        if keep == 0 || all.len() <= keep {
            return Ok(Vec::new());
        }
        let latest = self.latest();
        let mut deleted = Vec::new();
        for (_, p) in &all[..all.len() - keep] {
            if Some(p) == latest.as_ref() {
                continue;
            }
            fs::remove_file(p).map_err(|e| io_err(p, "cannot delete", e))?;
            deleted.push(p.clone());
        }
        Ok(deleted)
    }

    /// Start `metrics.jsonl` afresh, or (resuming at `step`) keep only the lines before it.
    pub fn reset_metrics(&self, keep_before: u64) -> Result<()> {
        let path = self.metrics_path();
        let kept: String = fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter(|l| MetricsRecord::from_json(l).is_some_and(|r| r.step <= keep_before))
            .map(|l| format!("{l}\n"))
            .collect();
        checkpoint::write_atomic(&path, kept.as_bytes())
    }

    /// Append one line to `metrics.jsonl`.
    pub fn append_metrics(&self, r: &MetricsRecord) -> Result<()> {
        let path = self.metrics_path();
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, "cannot open", e))?;
        writeln!(f, "{}", r.to_json()).map_err(|e| io_err(&path, "cannot append", e))
    }

    /// The lines of `metrics.jsonl`.
    pub fn read_metrics(&self) -> Result<Vec<MetricsRecord>> {
        let path = self.metrics_path();
        let text = fs::read_to_string(&path).map_err(|e| io_err(&path, "cannot read", e))?;
        Ok(text.lines().filter_map(MetricsRecord::from_json).collect())
    }

    /// Save the training state after `step` updates, then point `latest` at it. Both
    /// writes are atomic; on error the previous checkpoint stays the latest.
    pub fn save_state<B: Backend>(
        &self,
        b: &B,
        step: u64,
        store: &ParamStore<B>,
        opt: &OptState<B>,
        cfg: &PretrainConfig,
    ) -> Result<PathBuf> {
        let meta = vec![
            (META_KIND, KIND_PRETRAIN.to_string()),
            (META_STEP, step.to_string()),
            (META_OPT_STEP, opt.step.to_string()),
            (META_SEED, cfg.seed.to_string()),
            (META_LOADER_STEP, step.to_string()),
            (META_CONFIG, cfg.to_toml()),
        ];
        self.save_buffers(b, step, store, opt, meta)
    }

    /// Write `checkpoint_path(step)` with the parameters, state and AdamW moments as flat
    /// tensors plus `meta` (and `cim.version`), then point `latest` at it; both writes are
    /// atomic. Shared by pre-training and fine-tuning runs.
    pub(crate) fn save_buffers<B: Backend>(
        &self,
        b: &B,
        step: u64,
        store: &ParamStore<B>,
        opt: &OptState<B>,
        meta: Vec<(&str, String)>,
    ) -> Result<PathBuf> {
        let path = self.checkpoint_path(step);
        let n = store.table.params_len();
        let s = store.table.state_len();
        let mut tensors: BTreeMap<String, Flat> = BTreeMap::new();
        tensors.insert("train.params".into(), encode(&b.download(View { buf: &store.params, offset: 0, len: n })?));
        if s > 0 {
            tensors.insert("train.state".into(), encode(&b.download(View { buf: &store.state, offset: 0, len: s })?));
        }
        tensors.insert("optim.m".into(), encode(&b.download(View { buf: &opt.m, offset: 0, len: n })?));
        tensors.insert("optim.v".into(), encode(&b.download(View { buf: &opt.v, offset: 0, len: n })?));
        let meta: HashMap<String, String> = meta
            .into_iter()
            .chain([("cim.version", env!("CARGO_PKG_VERSION").to_string())])
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let views: Vec<(String, &Flat)> = tensors.iter().map(|(k, v)| (k.clone(), v)).collect();
        let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| io_err(&path, "cannot serialize", e))?;
        checkpoint::write_atomic(&path, &bytes)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        checkpoint::write_atomic(&self.latest_path(), name.as_bytes())?;
        Ok(path)
    }

    /// Restore the training state from `path` into `store` and `opt` (same
    /// configuration). Nothing is changed unless the whole file fits.
    pub fn load_state<B: Backend>(
        path: &Path,
        b: &B,
        store: &mut ParamStore<B>,
        opt: &mut OptState<B>,
    ) -> Result<Restored> {
        let ck = read_state(path)?;
        let st = SafeTensors::deserialize(&ck.bytes).map_err(|e| bad_file(path, e))?;
        let n = store.table.params_len();
        let (params, state) = decode_weights::<B>(path, &st, store)?;
        let m = decode::<B::E>(path, &st, "optim.m", n)?;
        let v = decode::<B::E>(path, &st, "optim.v", n)?;
        upload_weights(b, store, &params, state.as_deref())?;
        opt.m = b.upload(&m)?;
        opt.v = b.upload(&v)?;
        opt.step = ck.opt_step;
        Ok(Restored { step: ck.step, path: path.to_path_buf(), metadata: ck.metadata })
    }

    /// Restore only the parameters and batch-norm state from the training checkpoint
    /// at `path` (for inference: no optimizer moments are read). Nothing is changed
    /// unless they fit.
    pub fn load_weights<B: Backend>(path: &Path, b: &B, store: &mut ParamStore<B>) -> Result<Restored> {
        let ck = read_state(path)?;
        let st = SafeTensors::deserialize(&ck.bytes).map_err(|e| bad_file(path, e))?;
        let (params, state) = decode_weights::<B>(path, &st, store)?;
        upload_weights(b, store, &params, state.as_deref())?;
        Ok(Restored { step: ck.step, path: path.to_path_buf(), metadata: ck.metadata })
    }
}

/// A training checkpoint's bytes and the metadata every restore checks.
struct StateFile {
    bytes: Vec<u8>,
    metadata: BTreeMap<String, String>,
    step: u64,
    opt_step: u64,
}

fn bad_file(path: &Path, e: safetensors::SafeTensorError) -> Error {
    io_err(path, "not a valid checkpoint (truncated or corrupt?)", e)
}

fn read_state(path: &Path) -> Result<StateFile> {
    let bytes = fs::read(path).map_err(|e| io_err(path, "cannot read", e))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad_file(path, e))?;
    let metadata: BTreeMap<String, String> = header.metadata().clone().unwrap_or_default().into_iter().collect();
    if metadata.get(META_KIND).map(String::as_str) != Some(KIND_PRETRAIN) {
        return Err(io_err(path, "not a cim pre-training checkpoint", format!("{META_KIND} is not {KIND_PRETRAIN}")));
    }
    let num = |k: &str| -> Result<u64> {
        metadata
            .get(k)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io_err(path, "bad metadata", format!("{k} missing or not a number")))
    };
    let (step, opt_step) = (num(META_STEP)?, num(META_OPT_STEP)?);
    Ok(StateFile { bytes, metadata, step, opt_step })
}

type Weights<E> = (Vec<E>, Option<Vec<E>>);

fn decode_weights<B: Backend>(path: &Path, st: &SafeTensors<'_>, store: &ParamStore<B>) -> Result<Weights<B::E>> {
    let s = store.table.state_len();
    let params = decode::<B::E>(path, st, "train.params", store.table.params_len())?;
    let state = if s > 0 { Some(decode::<B::E>(path, st, "train.state", s)?) } else { None };
    Ok((params, state))
}

fn upload_weights<B: Backend>(b: &B, store: &mut ParamStore<B>, params: &[B::E], state: Option<&[B::E]>) -> Result<()> {
    store.params = b.upload(params)?;
    if let Some(state) = state {
        store.state = b.upload(state)?;
    }
    Ok(())
}
