//! Throughput of the pre-training step: what `cim bench pretrain` (and its GPU twin)
//! measures.
//!
//! A *full step* is what the trainer's loop does per batch once the loader has handed
//! it the pixels: upload both views, [`CimModel::step`] (frozen encoder, generator,
//! sampling, frozen decoder, enhancer, both backward passes) and AdamW with clipping.
//! Data loading is left out on purpose: it runs on worker threads ahead of the step and
//! is not what this measures. The inputs are fixed pseudo-random pixels and masks drawn
//! as the trainer draws them; the tokenizer has random weights, which cost the same as
//! trained ones.
//!
//! The first `warmup` steps (allocator, caches, lazily compiled kernels) are not timed;
//! each of the next `steps` is timed on its own and the median and mean reported.

use super::{PretrainConfig, MASK_TAG};
use crate::backend::Backend;
use crate::cim::{apply_optimizer, CimModel, LrSchedule, OptState, StepInput};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::rng;
use crate::tensor::Tensor;
use std::time::Instant;

/// The outcome of [`bench_pretrain`].
#[derive(Clone, Debug, PartialEq)]
pub struct PretrainBench {
    pub batch: usize,
    /// Timed steps (after the warm-up).
    pub steps: usize,
    /// Milliseconds per full step.
    pub median_ms: f64,
    pub mean_ms: f64,
    /// Images per second at the median step time.
    pub images_per_s: f64,
    /// Trainable parameters (shared tensors counted once).
    pub params: usize,
    /// The total loss of the last step (a sanity value: finite, not a result).
    pub last_loss: f64,
}

/// Time `steps` full steps of `cfg` after `warmup` untimed ones.
///
/// `on_step(i, ms)` is called after each step (`i` counts warm-up steps too; `ms` is
/// `None` for them), for progress output.
pub fn bench_pretrain<B: Backend>(
    b: &B,
    cfg: &PretrainConfig,
    warmup: usize,
    steps: usize,
    on_step: &mut dyn FnMut(usize, Option<f64>),
) -> Result<PretrainBench> {
    if steps == 0 {
        return Err(Error::Invalid { op: "bench", detail: "at least one timed step is needed".into() });
    }
    cfg.validate()?;
    let cim = cfg.cim()?;
    let (model, mut store, tok) = CimModel::build(cim, b, cfg.seed)?;
    let hp = cfg.adamw();
    let mut opt = OptState::new(b, &store.table, &hp)?;
    let total = (warmup + steps) as u64;
    let sched = LrSchedule::new(cfg.peak_lr(), cfg.final_lr(), cfg.warmup_steps.min(total), total)?;
    let masking = cim.masking()?;

    let (n, e, t) = (cfg.batch, cfg.image_size, cfg.tokenizer_image_size);
    let pixels = |len: usize, key: u64| -> Vec<B::E> {
        (0..len as u64).map(|i| B::E::of(rng::uniform(cfg.seed ^ key, i) as f64)).collect()
    };
    let ev = pixels(n * 3 * e * e, 0x6265_6e63_6831);
    let tv = pixels(n * 3 * t * t, 0x6265_6e63_6832);

    let mut times = Vec::with_capacity(steps);
    let mut last_loss = f64::NAN;
    for i in 0..warmup + steps {
        let step = i as u64;
        let start = Instant::now();
        let enh = Tensor::from_slice(b, &[n, 3, e, e], &ev)?;
        let tkv = Tensor::from_slice(b, &[n, 3, t, t], &tv)?;
        let masks: Vec<u8> =
            (0..n).flat_map(|j| masking.sample_for(cfg.seed ^ MASK_TAG, step * n as u64 + j as u64)).collect();
        let input = StepInput { enhancer_view: &enh, tokenizer_view: &tkv, masks: &masks, seed: cfg.seed, step };
        let out = model.step(b, &mut store, &tok, &input)?;
        apply_optimizer(b, &mut store, &mut opt, &hp, sched.lr(step))?;
        b.synchronize()?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        last_loss = out.loss;
        if i >= warmup {
            times.push(ms);
            on_step(i, Some(ms));
        } else {
            on_step(i, None);
        }
    }
    let mean_ms = times.iter().sum::<f64>() / times.len() as f64;
    times.sort_by(f64::total_cmp);
    let median_ms = times[times.len() / 2];
    Ok(PretrainBench {
        batch: n,
        steps,
        median_ms,
        mean_ms,
        images_per_s: n as f64 * 1e3 / median_ms,
        params: store.table.params_len(),
        last_loss,
    })
}
