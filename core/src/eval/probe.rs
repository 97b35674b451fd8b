//! The linear probe: a softmax classifier on frozen, cached features (host code: the
//! features of a small data set fit in memory and an epoch is a few hundred million
//! multiply-adds).
//!
//! Recipe:
//! 1. standardize every feature with the training set's mean and standard deviation
//!    (a constant feature becomes 0);
//! 2. carve a validation split (`val_fraction`, seeded) out of the training set;
//! 3. for every learning rate × weight decay of the grid, train on the rest: weights and
//!    bias from zero, mini-batch SGD with momentum 0.9 (L2 weight decay on the weights, as
//!    PyTorch's `SGD(weight_decay=…)`), a cosine learning rate from the peak to 0 over
//!    `epochs`, a new seeded order each epoch; keep the setting with the best validation
//!    top-1 (the first on ties; a run whose loss stops being finite scores 0);
//! 4. train again with it on the whole training set (where that diverges, with the next
//!    best setting) and report top-1 on the test split.
//!
//! Grid points run in parallel threads; each is deterministic on its own, so the result
//! does not depend on the thread count.

use super::eval_err;
use super::features::Features;
use crate::data::epoch_permutation;
use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::thread;

/// The probe's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeConfig {
    pub epochs: usize,
    pub batch: usize,
    /// Peak learning rates to try.
    pub lrs: Vec<f64>,
    /// Weight decays to try.
    pub weight_decays: Vec<f64>,
    pub momentum: f64,
    /// Share of the training set held out to choose the grid point.
    pub val_fraction: f64,
    pub seed: u64,
    /// Parallel grid points (0: one per core).
    pub threads: usize,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            epochs: 100,
            batch: 256,
            lrs: vec![1.0, 0.3, 0.1, 0.03],
            weight_decays: vec![0.0, 5e-4],
            momentum: 0.9,
            val_fraction: 0.1,
            seed: 0,
            threads: 0,
        }
    }
}

impl ProbeConfig {
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch == 0 {
            return Err(eval_err("probe: epochs and batch must be positive"));
        }
        if self.lrs.is_empty() || self.weight_decays.is_empty() {
            return Err(eval_err("probe: the grid needs at least one learning rate and one weight decay"));
        }
        if self.lrs.iter().any(|&x| !(x.is_finite() && x > 0.0)) {
            return Err(eval_err(format!("probe: learning rates {:?} must be positive", self.lrs)));
        }
        if self.weight_decays.iter().any(|&x| !(x.is_finite() && x >= 0.0)) {
            return Err(eval_err(format!("probe: weight decays {:?} must be ≥ 0", self.weight_decays)));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(eval_err(format!("probe: momentum {} is not in [0, 1)", self.momentum)));
        }
        if !(0.0..0.9).contains(&self.val_fraction) {
            return Err(eval_err(format!("probe: validation fraction {} is not in [0, 0.9)", self.val_fraction)));
        }
        Ok(())
    }
}

/// One setting of the grid and how it did on the validation split.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GridPoint {
    pub lr: f64,
    pub weight_decay: f64,
    pub val_top1: f64,
    /// Mean cross-entropy on the validation split (0 where diverged).
    pub val_loss: f64,
    /// The loss stopped being finite.
    pub diverged: bool,
}

/// What the probe measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub grid: Vec<GridPoint>,
    /// The chosen setting.
    pub lr: f64,
    pub weight_decay: f64,
    pub val_top1: f64,
    /// Top-1 of the final classifier on the whole training set and on the test split.
    pub train_top1: f64,
    pub test_top1: f64,
    pub test_correct: usize,
    pub test_len: usize,
    pub train_len: usize,
    pub val_len: usize,
    pub dim: usize,
    pub classes: usize,
}

/// A linear classifier `z = W x + b`, `W: [classes, dim]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearClassifier {
    pub w: Vec<f32>,
    pub b: Vec<f32>,
    pub dim: usize,
    pub classes: usize,
}

/// `Σ a·b` with 8 independent accumulators (vectorizable without reassociating a single
/// chain).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

impl LinearClassifier {
    fn zeros(dim: usize, classes: usize) -> Self {
        LinearClassifier { w: vec![0.0; dim * classes], b: vec![0.0; classes], dim, classes }
    }

    /// The logits of one standardized feature vector.
    pub fn logits(&self, x: &[f32], out: &mut [f32]) {
        for (k, o) in out.iter_mut().enumerate() {
            *o = self.b[k] + dot(&self.w[k * self.dim..(k + 1) * self.dim], x);
        }
    }

    /// Correct predictions and the summed cross-entropy over `rows` of `x`.
    fn score(&self, x: &[f32], labels: &[u32], rows: impl Iterator<Item = usize>) -> (usize, f64) {
        let mut z = vec![0f32; self.classes];
        let (mut correct, mut loss) = (0, 0.0);
        for i in rows {
            self.logits(&x[i * self.dim..(i + 1) * self.dim], &mut z);
            let best = (0..self.classes).fold(0, |b, k| if z[k] > z[b] { k } else { b });
            correct += (best == labels[i] as usize) as usize;
            let m = z[best] as f64;
            let lse = m + z.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            loss += lse - z[labels[i] as usize] as f64;
        }
        (correct, loss)
    }
}

/// Training features standardized in place by their own statistics; the same map applied
/// to `others`.
pub fn standardize(train: &mut [f32], others: &mut [&mut [f32]], dim: usize) {
    let n = train.len() / dim.max(1);
    if n == 0 {
        return;
    }
    let mut mean = vec![0f64; dim];
    let mut sq = vec![0f64; dim];
    for row in train.chunks_exact(dim) {
        for j in 0..dim {
            mean[j] += row[j] as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    for row in train.chunks_exact(dim) {
        for j in 0..dim {
            let d = row[j] as f64 - mean[j];
            sq[j] += d * d;
        }
    }
    let scale: Vec<f64> = sq
        .iter()
        .map(|&s| {
            let sd = (s / n as f64).sqrt();
            if sd > 1e-8 {
                1.0 / sd
            } else {
                0.0
            }
        })
        .collect();
    let apply = |x: &mut [f32]| {
        for row in x.chunks_exact_mut(dim) {
            for j in 0..dim {
                row[j] = ((row[j] as f64 - mean[j]) * scale[j]) as f32;
            }
        }
    };
    apply(train);
    for o in others.iter_mut() {
        apply(o);
    }
}

/// Train a softmax classifier on `rows` of the standardized `x` (see the module docs);
/// `None` when the loss stops being finite.
#[allow(clippy::too_many_arguments)]
pub fn train_classifier(
    x: &[f32],
    labels: &[u32],
    rows: &[usize],
    dim: usize,
    classes: usize,
    lr: f64,
    weight_decay: f64,
    cfg: &ProbeConfig,
) -> Option<LinearClassifier> {
    let mut m = LinearClassifier::zeros(dim, classes);
    let mut vw = vec![0f32; dim * classes];
    let mut vb = vec![0f32; classes];
    let mut gw = vec![0f32; dim * classes];
    let mut gb = vec![0f32; classes];
    let mut z = vec![0f32; classes];
    let steps_per_epoch = rows.len().div_ceil(cfg.batch);
    let total = (steps_per_epoch * cfg.epochs).max(1) as f64;
    let (mu, wd) = (cfg.momentum as f32, weight_decay as f32);
    let mut step = 0usize;
    for epoch in 0..cfg.epochs {
        let order = epoch_permutation(cfg.seed, epoch as u64, rows.len(), true);
        let mut epoch_loss = 0f64;
        for chunk in order.chunks(cfg.batch) {
            gw.fill(0.0);
            gb.fill(0.0);
            let inv = 1.0 / chunk.len() as f32;
            for &o in chunk {
                let i = rows[o as usize];
                let xi = &x[i * dim..(i + 1) * dim];
                m.logits(xi, &mut z);
                let mx = z.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                let mut s = 0f32;
                for v in z.iter_mut() {
                    *v = (*v - mx).exp();
                    s += *v;
                }
                let y = labels[i] as usize;
                epoch_loss -= ((z[y] / s) as f64).ln();
                for (k, v) in z.iter_mut().enumerate() {
                    let g = (*v / s - (k == y) as u8 as f32) * inv;
                    gb[k] += g;
                    for (a, &b) in gw[k * dim..(k + 1) * dim].iter_mut().zip(xi) {
                        *a += g * b;
                    }
                }
            }
            let lr_t = (0.5 * lr * (1.0 + (std::f64::consts::PI * step as f64 / total).cos())) as f32;
            for ((w, v), g) in m.w.iter_mut().zip(vw.iter_mut()).zip(&gw) {
                *v = mu * *v + g + wd * *w;
                *w -= lr_t * *v;
            }
            for ((w, v), g) in m.b.iter_mut().zip(vb.iter_mut()).zip(&gb) {
                *v = mu * *v + g;
                *w -= lr_t * *v;
            }
            step += 1;
        }
        if !epoch_loss.is_finite() || m.w.iter().any(|v| !v.is_finite()) {
            return None;
        }
    }
    Some(m)
}

/// Run `jobs` on up to `threads` threads, results in job order.
fn parallel<T: Send, J: Sync>(jobs: &[J], threads: usize, f: impl Fn(&J) -> T + Sync) -> Vec<T> {
    let threads = threads.clamp(1, jobs.len().max(1));
    if threads == 1 {
        return jobs.iter().map(&f).collect();
    }
    let mut out: Vec<Option<T>> = (0..jobs.len()).map(|_| None).collect();
    thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || (t..jobs.len()).step_by(threads).map(|j| (j, f(&jobs[j]))).collect::<Vec<(usize, T)>>())
            })
            .collect();
        for h in handles {
            // A panicking job is a bug; re-raise it on this thread.
            for (j, v) in h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)) {
                out[j] = Some(v);
            }
        }
    });
    out.into_iter().map(|v| v.expect("every job ran")).collect()
}

/// The linear probe of the module docs: `train` and `test` features (raw: they are
/// standardized here), `classes` classes.
pub fn linear_probe(train: &Features, test: &Features, classes: usize, cfg: &ProbeConfig) -> Result<ProbeResult> {
    cfg.validate()?;
    let dim = train.dim;
    if train.len() < 2 || test.is_empty() || dim == 0 || test.dim != dim {
        return Err(eval_err(format!(
            "probe: {} training and {} test feature vectors of width {} / {}",
            train.len(),
            test.len(),
            train.dim,
            test.dim
        )));
    }
    if let Some(&l) = train.labels.iter().chain(&test.labels).find(|&&l| l as usize >= classes) {
        return Err(eval_err(format!("probe: label {l} is not below the {classes} classes")));
    }
    let mut xtr = train.data.clone();
    let mut xte = test.data.clone();
    standardize(&mut xtr, &mut [&mut xte], dim);
    let n = train.len();
    let n_val = ((n as f64 * cfg.val_fraction).round() as usize).min(n - 1);
    let order = epoch_permutation(cfg.seed ^ 0x7661_6c21, 0, n, true);
    let val: Vec<usize> = order[..n_val].iter().map(|&i| i as usize).collect();
    let fit: Vec<usize> = order[n_val..].iter().map(|&i| i as usize).collect();
    let grid: Vec<(f64, f64)> =
        cfg.lrs.iter().flat_map(|&lr| cfg.weight_decays.iter().map(move |&wd| (lr, wd))).collect();
    let threads = match cfg.threads {
        0 => thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        t => t,
    };
    let points: Vec<GridPoint> = if val.is_empty() {
        let point = |&(lr, weight_decay): &(f64, f64)| GridPoint {
            lr,
            weight_decay,
            val_top1: 0.0,
            val_loss: 0.0,
            diverged: false,
        };
        grid.iter().map(point).collect()
    } else {
        parallel(&grid, threads, |&(lr, wd)| {
            match train_classifier(&xtr, &train.labels, &fit, dim, classes, lr, wd, cfg) {
                Some(m) => {
                    let (c, loss) = m.score(&xtr, &train.labels, val.iter().copied());
                    let v = val.len() as f64;
                    GridPoint { lr, weight_decay: wd, val_top1: c as f64 / v, val_loss: loss / v, diverged: false }
                }
                None => GridPoint { lr, weight_decay: wd, val_top1: 0.0, val_loss: 0.0, diverged: true },
            }
        })
    };
    // Best validation top-1 first (grid order on ties). The whole training set can tip a
    // learning rate at the edge of stability over: then the next setting is used.
    let mut ranked: Vec<GridPoint> = points.iter().filter(|p| !p.diverged).copied().collect();
    ranked.sort_by(|a, b| b.val_top1.total_cmp(&a.val_top1));
    let all: Vec<usize> = (0..n).collect();
    let Some((best, model)) = ranked.iter().find_map(|p| {
        train_classifier(&xtr, &train.labels, &all, dim, classes, p.lr, p.weight_decay, cfg).map(|m| (*p, m))
    }) else {
        return Err(eval_err(format!(
            "probe: training diverged at every learning rate of {:?}; try smaller ones",
            cfg.lrs
        )));
    };
    let (train_c, _) = model.score(&xtr, &train.labels, 0..n);
    let (test_c, _) = model.score(&xte, &test.labels, 0..test.len());
    Ok(ProbeResult {
        grid: points,
        lr: best.lr,
        weight_decay: best.weight_decay,
        val_top1: best.val_top1,
        train_top1: train_c as f64 / n as f64,
        test_top1: test_c as f64 / test.len() as f64,
        test_correct: test_c,
        test_len: test.len(),
        train_len: n,
        val_len: val.len(),
        dim,
        classes,
    })
}

/// A probe's result with where its features came from and its times: what
/// `cim eval linear-probe --json` writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The encoder (architecture, pooling, weights) or `raw pixels`.
    pub features: String,
    pub pool: String,
    pub extract_seconds: f64,
    pub probe_seconds: f64,
    #[serde(flatten)]
    pub result: ProbeResult,
}

impl ProbeReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
    pub fn from_json(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}
