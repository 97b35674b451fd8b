//! One line of `RUN/metrics.jsonl`.

use serde::{Deserialize, Serialize};

/// What a logged step measured. `step` counts the updates done (1 after the first).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsRecord {
    pub step: u64,
    pub epoch: u64,
    /// `mim_loss + w · enh_loss`.
    pub loss: f64,
    pub mim_loss: f64,
    pub mim_acc: f64,
    pub enh_loss: f64,
    pub replaced_frac: f64,
    pub lr: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// Throughput over the steps since the previous logged line (wall clock).
    pub images_per_s: f64,
}

impl MetricsRecord {
    /// The JSON line (no newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Parse one line.
    pub fn from_json(line: &str) -> Option<Self> {
        serde_json::from_str(line).ok()
    }

    /// Everything but the wall-clock throughput, for comparing runs.
    pub fn deterministic_part(&self) -> MetricsRecord {
        MetricsRecord { images_per_s: 0.0, ..self.clone() }
    }

    /// A one-line human summary.
    pub fn summary(&self) -> String {
        format!(
            "step {} | loss {:.4} | mim {:.4} (acc {:.3}) | enh {:.4} | replaced {:.3} | lr {:.2e} | |g| {:.3} | {:.1} img/s",
            self.step,
            self.loss,
            self.mim_loss,
            self.mim_acc,
            self.enh_loss,
            self.replaced_frac,
            self.lr,
            self.grad_norm,
            self.images_per_s
        )
    }
}
