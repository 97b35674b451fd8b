//! CIM pre-training (feature `std`): the loop around [`CimModel::step`], generic over
//! the backend.
//!
//! ```text
//! loader batch s ─ masks (seed, s) ─ CimModel::step(seed, s) ─ AdamW at schedule.lr(s)
//!   ─ metrics (every log_every) ─ checkpoint (every checkpoint_every, at the end, on stop)
//! ```
//! - [`config`]: [`PretrainConfig`], TOML in and out, its CIM / AdamW / schedule values;
//! - [`presets`]: the paper's ImageNet runs and the small CPU runs (`tiny-respix`, the
//!   default, and `tiny-revdet`);
//! - [`run_dir`]: `RUN/config.toml`, `RUN/metrics.jsonl`, `RUN/checkpoints/`,
//!   `RUN/samples/`;
//! - [`metrics`]: one logged line;
//! - [`bench`]: the throughput of full steps (`cim bench pretrain`).
//!
//! # Determinism and resuming
//! Everything random is keyed by the seed and the step: the loader's order and
//! augmentation (`data::Loader`), the masks (image `i` of step `s` draws from
//! `Masking::sample_for(seed ^ MASK_TAG, s · batch + i)`), the token sampling
//! (`StepInput { seed, step }`). A checkpoint holds the parameters, batch-norm state,
//! AdamW's moments and step; resuming loads them and moves the loader to the step, so on
//! a deterministic backend the resumed run's metrics equal the uninterrupted run's bit
//! for bit. The sample pictures (`sample_every`) use fixed images, masks and sampling
//! keys and run inference only, so they change nothing that training reads.
//!
//! # Failures
//! A NaN or infinite loss or gradient norm stops the run with [`Error::NonFinite`]
//! naming the step and the last good checkpoint. A stop request (Ctrl-C) saves a
//! checkpoint and returns normally with [`TrainSummary::interrupted`] set. A sample
//! picture that cannot be made or written is a warning ([`TrainSummary::warnings`]),
//! never a stop.

pub mod bench;
pub mod config;
pub mod metrics;
pub mod presets;
pub mod run_dir;
#[cfg(test)]
mod tests;

pub use config::{EnhancerSpec, PretrainConfig, TokenizerSpec};
pub use metrics::MetricsRecord;
pub use presets::{preset, DEFAULT_PRESET, PRESETS};
pub use run_dir::RunDir;

use crate::backend::Backend;
use crate::checkpoint;
use crate::cim::{apply_optimizer, CimModel, LrSchedule, OptState, StepInput, ENHANCER};
use crate::data::{Augment, Dataset, Loader, LoaderConfig, Source, Split};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::params::ParamStore;
use crate::tensor::Tensor;
use crate::visual::{self, ImageBatch};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Key of the mask streams (xored into the seed).
pub const MASK_TAG: u64 = 0x6d61_736b_7321_2121;

/// Images in a sample picture (the first ones of the data set) and corrupted samples
/// of each.
pub const SAMPLE_IMAGES: usize = 4;
pub const SAMPLE_DRAWS: usize = 3;

/// How a run is driven.
#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// Continue from `RUN/checkpoints/latest` (a fresh start where there is none).
    pub resume: bool,
    /// Set (e.g. by a Ctrl-C handler) to save a checkpoint and stop after this step.
    pub stop: Option<Arc<AtomicBool>>,
}

/// What the loop reports as it goes.
#[derive(Clone, Debug)]
pub enum Event {
    /// The run starts at `start_step` (0, or where it resumed) of `total_steps`.
    Started { start_step: u64, total_steps: u64, steps_per_epoch: u64, params: usize, resumed_from: Option<PathBuf> },
    /// One update finished (`step` updates done), with its loss.
    Step { step: u64, loss: f64, images_per_s: f64 },
    /// A logged line (also appended to `metrics.jsonl`).
    Logged(MetricsRecord),
    /// A checkpoint was written.
    Checkpoint { step: u64, path: PathBuf },
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainSummary {
    pub start_step: u64,
    /// Updates done in total (the last checkpoint's step).
    pub steps: u64,
    pub total_steps: u64,
    pub last: Option<MetricsRecord>,
    pub last_checkpoint: Option<PathBuf>,
    /// Stopped early by [`TrainOptions::stop`].
    pub interrupted: bool,
    pub seconds: f64,
    /// What went wrong without stopping the run (a sample picture not written).
    pub warnings: Vec<String>,
}

/// Open the configuration's training data, with a hint for the default data set.
pub fn open_data(cfg: &PretrainConfig) -> Result<Dataset> {
    Dataset::open(&cfg.data, Split::Train)
}

/// Where the tokenizer is: the configured file, else `RUN/../tokenizer.safetensors`.
pub fn tokenizer_path(cfg: &PretrainConfig, run: &RunDir) -> PathBuf {
    if !cfg.tokenizer.as_os_str().is_empty() {
        return cfg.tokenizer.clone();
    }
    let parent = match run.root.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    parent.join("tokenizer.safetensors")
}

/// Load a tokenizer file into the frozen store: a file with `encoder.*` and
/// `decoder.*` tensors (as `checkpoint::save(.., "", ..)` of a tokenizer store writes).
pub fn load_tokenizer<B: Backend>(path: &Path, b: &B, tok: &mut ParamStore<B>) -> Result<()> {
    checkpoint::load_into(path, tok, b, "").map(|_| ())
}

fn non_finite(what: &str, step: u64, last: &Option<PathBuf>) -> Error {
    let good = match last {
        Some(p) => format!("last good checkpoint: {}", p.display()),
        None => "no checkpoint was written yet".to_string(),
    };
    Error::NonFinite { what: format!("{what} at step {step} ({good}); lower the learning rate or resume from it") }
}

/// Run (or resume) pre-training of `cfg` on `source` into `run`. See the module docs.
pub fn pretrain<B: Backend>(
    b: &B,
    cfg: &PretrainConfig,
    source: Arc<dyn Source>,
    run: &RunDir,
    opts: &TrainOptions,
    on_event: &mut dyn FnMut(&Event),
) -> Result<TrainSummary> {
    cfg.validate()?;
    let cim = cfg.cim()?;
    let (model, mut store, mut tok) = CimModel::build(cim, b, cfg.seed)?;
    let tok_path = tokenizer_path(cfg, run);
    load_tokenizer(&tok_path, b, &mut tok)?;
    let hp = cfg.adamw();
    let mut opt = OptState::new(b, &store.table, &hp)?;

    let mut lc = LoaderConfig::train(
        cfg.batch,
        cfg.seed,
        Augment::pretrain(cfg.image_size as u32, cfg.tokenizer_image_size as u32),
    );
    if cfg.workers > 0 {
        lc.workers = cfg.workers;
    }
    let sample_source = source.clone();
    let mut loader = Loader::from_shared(source, lc)?;
    let spe = loader.steps_per_epoch();
    let total = cfg.total_steps(spe);
    let sched = LrSchedule::new(cfg.peak_lr(), cfg.final_lr(), cfg.warmup_steps.min(total), total)?;
    let masking = cim.masking()?;

    run.create()?;
    let mut start = 0;
    let mut resumed_from = None;
    let mut last_ckpt = None;
    if opts.resume {
        if let Some(p) = run.latest() {
            let r = RunDir::load_state(&p, b, &mut store, &mut opt)?;
            start = r.step;
            resumed_from = Some(p.clone());
            last_ckpt = Some(p);
        }
    }
    run.write_config(cfg)?;
    run.reset_metrics(start)?;
    loader.skip_to(start);
    on_event(&Event::Started {
        start_step: start,
        total_steps: total,
        steps_per_epoch: spe,
        params: store.table.params_len(),
        resumed_from,
    });

    let t0 = Instant::now();
    let mut since = Instant::now();
    let mut images_since = 0usize;
    let mut last = None;
    let mut step = start;
    let mut interrupted = false;
    let mut warnings = Vec::new();
    let mut sample_inputs = None;
    let (e, t) = (cfg.image_size, cfg.tokenizer_image_size);
    while step < total {
        let batch = loader.next_batch()?;
        let n = batch.len();
        let ev: Vec<B::E> = batch.enhancer.iter().map(|&v| B::E::of(v as f64)).collect();
        let tv: Vec<B::E> = batch.tokenizer.iter().map(|&v| B::E::of(v as f64)).collect();
        let enh = Tensor::from_slice(b, &[n, 3, e, e], &ev)?;
        let tkv = Tensor::from_slice(b, &[n, 3, t, t], &tv)?;
        let masks: Vec<u8> =
            (0..n).flat_map(|i| masking.sample_for(cfg.seed ^ MASK_TAG, step * cfg.batch as u64 + i as u64)).collect();
        let input = StepInput { enhancer_view: &enh, tokenizer_view: &tkv, masks: &masks, seed: cfg.seed, step };
        let out = match model.step(b, &mut store, &tok, &input) {
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
        let secs = since.elapsed().as_secs_f64().max(1e-9);
        let ips = images_since as f64 / secs;
        on_event(&Event::Step { step, loss: out.loss, images_per_s: ips });
        if step % cfg.log_every == 0 || step == total {
            let r = MetricsRecord {
                step,
                epoch: batch.epoch,
                loss: out.loss,
                mim_loss: out.mim_loss,
                mim_acc: out.mim_acc,
                enh_loss: out.enh_loss,
                replaced_frac: out.replaced_frac,
                lr,
                grad_norm: stats.grad_norm,
                images_per_s: ips,
            };
            run.append_metrics(&r)?;
            on_event(&Event::Logged(r.clone()));
            last = Some(r);
            since = Instant::now();
            images_since = 0;
        }
        if cfg.sample_every > 0 && step % cfg.sample_every == 0 {
            let inputs = &mut sample_inputs;
            if let Err(e) = write_sample(b, &model, &store, &tok, cfg, sample_source.as_ref(), run, step, inputs) {
                warnings.push(format!("step {step}: no sample picture: {e}"));
            }
        }
        let stop = opts.stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed));
        if step % cfg.checkpoint_every == 0 || step == total || stop {
            let p = run.save_state(b, step, &store, &opt, cfg)?;
            on_event(&Event::Checkpoint { step, path: p.clone() });
            last_ckpt = Some(p);
            if let Err(e) = run.prune_checkpoints(cfg.keep_checkpoints) {
                warnings.push(format!("step {step}: old checkpoints not deleted: {e}"));
            }
        }
        if stop {
            interrupted = true;
            break;
        }
    }
    if !interrupted && step >= total {
        checkpoint::save(run.enhancer_path(), &store, b, ENHANCER, &cim.enhancer_metadata())?;
    }
    Ok(TrainSummary {
        start_step: start,
        steps: step,
        total_steps: total,
        last,
        last_checkpoint: last_ckpt,
        interrupted,
        seconds: t0.elapsed().as_secs_f64(),
        warnings,
    })
}

/// Write `RUN/samples/step-N.png`: corrupted samples of the first [`SAMPLE_IMAGES`]
/// images of the data set (whole images, fixed masks and sampling keys; loaded once
/// into `inputs`).
#[allow(clippy::too_many_arguments)]
fn write_sample<B: Backend>(
    b: &B,
    model: &CimModel,
    store: &ParamStore<B>,
    tok: &ParamStore<B>,
    cfg: &PretrainConfig,
    source: &dyn Source,
    run: &RunDir,
    step: u64,
    inputs: &mut Option<(ImageBatch<B>, Vec<u8>)>,
) -> Result<PathBuf> {
    let (batch, masks) = match inputs {
        Some(x) => x,
        None => {
            let batch = visual::load_images(b, source, 0, SAMPLE_IMAGES, cfg.image_size, cfg.tokenizer_image_size)?;
            let masks = visual::fixed_masks(&model.cfg, cfg.seed, batch.len)?;
            inputs.insert((batch, masks))
        }
    };
    let (grid, stats) = visual::corrupt_grid(b, model, store, tok, &batch.input(masks, cfg.seed, 0), SAMPLE_DRAWS)?;
    let title = format!("step {step}: corrupted samples ({:.0}% of tokens replaced)", 100.0 * stats.replaced_frac);
    let path = run.sample_path(step);
    visual::save_png(&path, &grid.with_title(title).render()?)?;
    Ok(path)
}
