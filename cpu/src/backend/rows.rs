//! Row kernels: softmax, log-softmax and cross-entropy, parallel over blocks of rows.

use super::math;
use super::Cpu;

#[inline(always)]
fn softmax_rows_base(d: usize, x: &[f32], y: &mut [f32]) {
    for (x, y) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        let m = math::max(x);
        for (y, &x) in y.iter_mut().zip(x) {
            *y = math::exp(x - m);
        }
        let inv = 1.0 / math::sum(y);
        for y in y.iter_mut() {
            *y *= inv;
        }
    }
}

#[inline(always)]
fn log_softmax_rows_base(d: usize, x: &[f32], y: &mut [f32]) {
    for (x, y) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        let m = math::max(x);
        for (y, &x) in y.iter_mut().zip(x) {
            *y = math::exp(x - m);
        }
        let lse = math::sum(y).ln();
        for (y, &x) in y.iter_mut().zip(x) {
            *y = (x - m) - lse;
        }
    }
}

#[inline(always)]
fn softmax_backward_rows_base(d: usize, y: &[f32], dy: &[f32], dx: &mut [f32]) {
    for ((y, dy), dx) in y.chunks_exact(d).zip(dy.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
        let s = math::dot(dy, y);
        for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(dy) {
            *dx = y * (g - s);
        }
    }
}

#[inline(always)]
fn log_softmax_backward_rows_base(d: usize, y: &[f32], dy: &[f32], dx: &mut [f32]) {
    for ((y, dy), dx) in y.chunks_exact(d).zip(dy.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
        let s = math::sum(dy);
        for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(dy) {
            *dx = g - math::exp(y) * s;
        }
    }
}

/// `loss[r] = ln Σ exp(x - max) - (x[t] - max)` for the rows of one block.
#[inline(always)]
fn cross_entropy_rows_base(classes: usize, logits: &[f32], targets: &[u32], loss: &mut [f32]) {
    for ((x, &t), l) in logits.chunks_exact(classes).zip(targets).zip(loss.iter_mut()) {
        let m = math::max(x);
        let mut acc = [0f32; 8];
        let mut it = x.chunks_exact(8);
        for c in &mut it {
            for k in 0..8 {
                acc[k] += math::exp(c[k] - m);
            }
        }
        let mut s: f32 = acc.iter().sum();
        for &v in it.remainder() {
            s += math::exp(v - m);
        }
        *l = s.ln() - (x[t as usize] - m);
    }
}

/// `dx = dloss · (softmax(x) - onehot(t))` for the rows of one block.
#[inline(always)]
fn cross_entropy_backward_rows_base(
    classes: usize,
    logits: &[f32],
    targets: &[u32],
    dloss: &[f32],
    dlogits: &mut [f32],
) {
    for (((x, &t), &dl), dx) in
        logits.chunks_exact(classes).zip(targets).zip(dloss).zip(dlogits.chunks_exact_mut(classes))
    {
        let m = math::max(x);
        for (d, &x) in dx.iter_mut().zip(x) {
            *d = math::exp(x - m);
        }
        let k = dl / math::sum(dx);
        for d in dx.iter_mut() {
            *d *= k;
        }
        dx[t as usize] -= dl;
    }
}

dispatch!(softmax_rows, softmax_rows_base, (d: usize, x: &[f32], y: &mut [f32]));
dispatch!(log_softmax_rows, log_softmax_rows_base, (d: usize, x: &[f32], y: &mut [f32]));
dispatch!(softmax_backward_rows, softmax_backward_rows_base, (d: usize, y: &[f32], dy: &[f32], dx: &mut [f32]));
dispatch!(
    log_softmax_backward_rows,
    log_softmax_backward_rows_base,
    (d: usize, y: &[f32], dy: &[f32], dx: &mut [f32])
);
dispatch!(
    cross_entropy_rows,
    cross_entropy_rows_base,
    (classes: usize, logits: &[f32], targets: &[u32], loss: &mut [f32])
);
dispatch!(
    cross_entropy_backward_rows,
    cross_entropy_backward_rows_base,
    (classes: usize, logits: &[f32], targets: &[u32], dloss: &[f32], dlogits: &mut [f32])
);

impl Cpu {
    pub(crate) fn softmax_impl(&self, d: usize, x: &[f32], y: &mut [f32]) {
        self.rows1(d, x, y, |_, x, y| softmax_rows(d, x, y));
    }

    pub(crate) fn log_softmax_impl(&self, d: usize, x: &[f32], y: &mut [f32]) {
        self.rows1(d, x, y, |_, x, y| log_softmax_rows(d, x, y));
    }

    pub(crate) fn softmax_backward_impl(&self, d: usize, y: &[f32], dy: &[f32], dx: &mut [f32]) {
        self.rows2(d, y, dy, dx, |_, y, dy, dx| softmax_backward_rows(d, y, dy, dx));
    }

    pub(crate) fn log_softmax_backward_impl(&self, d: usize, y: &[f32], dy: &[f32], dx: &mut [f32]) {
        self.rows2(d, y, dy, dx, |_, y, dy, dx| log_softmax_backward_rows(d, y, dy, dx));
    }

    pub(crate) fn cross_entropy_impl(&self, classes: usize, logits: &[f32], targets: &[u32], loss: &mut [f32]) {
        if classes == 0 {
            return;
        }
        self.chunks_mut(loss, super::units(classes), |r0, loss| {
            let r1 = r0 + loss.len();
            cross_entropy_rows(classes, &logits[r0 * classes..r1 * classes], &targets[r0..r1], loss);
        });
    }

    pub(crate) fn cross_entropy_backward_impl(
        &self,
        classes: usize,
        logits: &[f32],
        targets: &[u32],
        dloss: &[f32],
        dlogits: &mut [f32],
    ) {
        self.rows1(classes, logits, dlogits, |r0, x, dx| {
            let r1 = r0 + dx.len() / classes;
            cross_entropy_backward_rows(classes, x, &targets[r0..r1], &dloss[r0..r1], dx);
        });
    }
}
