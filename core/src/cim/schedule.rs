//! The learning-rate schedule: linear warm-up, then cosine decay to a floor (BEiT's
//! `cosine_scheduler`, per step), with the paper's peak scaled linearly with the batch.
//!
//! ```text
//! step < warmup:           lr = peak · (step + 1) / warmup
//! warmup ≤ step < total:   lr = min + ½ (peak − min) (1 + cos(π · (step − warmup) / (total − warmup)))
//! step ≥ total:            lr = min
//! ```
//! The warm-up reaches the peak on its last step and never uses a zero learning rate
//! (BEiT's `linspace(0, peak, warmup)` spends its first step at 0).
//!
//! Batch scaling: the paper's peak is 1.5e-3 at batch 2048 (Table 13), so a batch `n`
//! uses `1.5e-3 · n / 2048`; the floor (BEiT's `min_lr`, 1e-5 at that batch) is scaled
//! the same way, which keeps the schedule's shape.

use super::OP;
use crate::error::{invalid, Result};
use alloc::format;

/// The paper's peak learning rate, at [`PAPER_BATCH`].
pub const PAPER_PEAK_LR: f64 = 1.5e-3;
/// The batch size the paper's learning rates are given for.
pub const PAPER_BATCH: usize = 2048;
/// BEiT's final learning rate, at [`PAPER_BATCH`].
pub const PAPER_MIN_LR: f64 = 1e-5;
/// The paper's pre-training and warm-up epochs.
pub const PAPER_EPOCHS: u64 = 300;
pub const PAPER_WARMUP_EPOCHS: u64 = 10;

/// `lr` given for [`PAPER_BATCH`] scaled linearly to `batch`.
pub fn scale_lr(lr: f64, batch: usize) -> f64 {
    lr * batch as f64 / PAPER_BATCH as f64
}

/// Linear warm-up plus cosine decay. See the module docs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    pub peak: f64,
    pub min: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl LrSchedule {
    /// Checks `0 ≤ min ≤ peak`, both finite, and `warmup ≤ total`.
    pub fn new(peak: f64, min: f64, warmup_steps: u64, total_steps: u64) -> Result<Self> {
        if !peak.is_finite() || !min.is_finite() || min < 0.0 || min > peak {
            return invalid(OP, format!("learning rates need 0 ≤ min ({min}) ≤ peak ({peak})"));
        }
        if warmup_steps > total_steps {
            return invalid(OP, format!("{warmup_steps} warm-up steps exceed the {total_steps} steps"));
        }
        Ok(LrSchedule { peak, min, warmup_steps, total_steps })
    }

    /// The paper's schedule for `batch` images per step: peak and floor scaled from
    /// batch 2048 ([`scale_lr`]), `warmup_epochs` and `epochs` of `steps_per_epoch`.
    pub fn paper(batch: usize, steps_per_epoch: u64, epochs: u64, warmup_epochs: u64) -> Result<Self> {
        Self::new(
            scale_lr(PAPER_PEAK_LR, batch),
            scale_lr(PAPER_MIN_LR, batch),
            warmup_epochs.saturating_mul(steps_per_epoch),
            epochs.saturating_mul(steps_per_epoch),
        )
    }

    /// The learning rate of (0-based) step `step`.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        if step >= self.total_steps {
            return self.min;
        }
        let span = (self.total_steps - self.warmup_steps) as f64;
        let progress = (step - self.warmup_steps) as f64 / span;
        self.min + 0.5 * (self.peak - self.min) * (1.0 + libm::cos(core::f64::consts::PI * progress))
    }
}
