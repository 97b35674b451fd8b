//! Per-row and per-element losses.

use crate::element::Element;

/// `ln Σ exp(row)` (stable), in `f64`.
fn logsumexp<T: Element>(row: &[T]) -> f64 {
    let mut mx = f64::NEG_INFINITY;
    for v in row {
        mx = super::max_nan(mx, v.f64());
    }
    if mx == f64::NEG_INFINITY {
        return f64::NEG_INFINITY; // empty row or all -inf
    }
    mx + libm::log(super::sum_f64(row.iter().map(|v| libm::exp(v.f64() - mx))))
}

/// `loss[r] = logsumexp(logits[r]) - logits[r, target[r]]`.
pub fn cross_entropy<T: Element>(rows: usize, classes: usize, logits: &[T], targets: &[u32], loss: &mut [T]) {
    for r in 0..rows {
        let row = &logits[r * classes..(r + 1) * classes];
        let t = targets[r] as usize;
        loss[r] = T::of(logsumexp(row) - row[t].f64());
    }
}

/// `dlogits[r] = dloss[r] · (softmax(logits[r]) - onehot(target[r]))` (overwrites).
pub fn cross_entropy_backward<T: Element>(
    rows: usize,
    classes: usize,
    logits: &[T],
    targets: &[u32],
    dloss: &[T],
    dlogits: &mut [T],
) {
    for r in 0..rows {
        let row = &logits[r * classes..(r + 1) * classes];
        let lse = logsumexp(row);
        let t = targets[r] as usize;
        let g = dloss[r].f64();
        for c in 0..classes {
            let p = libm::exp(row[c].f64() - lse);
            let onehot = if c == t { 1.0 } else { 0.0 };
            dlogits[r * classes + c] = T::of(g * (p - onehot));
        }
    }
}

/// `loss = max(z, 0) - z·t + ln(1 + exp(-|z|))` (stable BCE with logits).
pub fn bce_with_logits<T: Element>(logits: &[T], targets: &[T], loss: &mut [T]) {
    for i in 0..logits.len() {
        let z = logits[i].f64();
        let t = targets[i].f64();
        let l = super::max_nan(z, 0.0) - z * t + libm::log1p(libm::exp(-libm::fabs(z)));
        loss[i] = T::of(l);
    }
}

/// `dlogits = dloss · (sigmoid(z) - t)` (overwrites).
pub fn bce_with_logits_backward<T: Element>(logits: &[T], targets: &[T], dloss: &[T], dlogits: &mut [T]) {
    for i in 0..logits.len() {
        let s = super::sigmoid(logits[i].f64());
        dlogits[i] = T::of(dloss[i].f64() * (s - targets[i].f64()));
    }
}

/// `loss = |p - t|`.
pub fn l1_loss<T: Element>(pred: &[T], target: &[T], loss: &mut [T]) {
    for i in 0..pred.len() {
        loss[i] = T::of(libm::fabs(pred[i].f64() - target[i].f64()));
    }
}

/// `dpred = dloss · sign(p - t)`, 0 where equal (overwrites).
pub fn l1_loss_backward<T: Element>(pred: &[T], target: &[T], dloss: &[T], dpred: &mut [T]) {
    for i in 0..pred.len() {
        let d = pred[i].f64() - target[i].f64();
        let s = if d > 0.0 {
            1.0
        } else if d < 0.0 {
            -1.0
        } else if d == 0.0 {
            0.0
        } else {
            f64::NAN
        };
        dpred[i] = T::of(dloss[i].f64() * s);
    }
}

/// `loss = (p - t)²`.
pub fn l2_loss<T: Element>(pred: &[T], target: &[T], loss: &mut [T]) {
    for i in 0..pred.len() {
        let d = pred[i].f64() - target[i].f64();
        loss[i] = T::of(d * d);
    }
}

/// `dpred = 2 · dloss · (p - t)` (overwrites).
pub fn l2_loss_backward<T: Element>(pred: &[T], target: &[T], dloss: &[T], dpred: &mut [T]) {
    for i in 0..pred.len() {
        let d = pred[i].f64() - target[i].f64();
        dpred[i] = T::of(2.0 * dloss[i].f64() * d);
    }
}
