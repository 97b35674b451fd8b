//! Row kernels: softmax, log-softmax and cross-entropy, parallel over blocks of rows.

use super::math;
use super::par::CHUNK;
use super::Cpu;
use rayon::prelude::*;

fn softmax_row(x: &[f32], y: &mut [f32]) {
    let m = math::max(x);
    for (y, &x) in y.iter_mut().zip(x) {
        *y = math::exp(x - m);
    }
    let inv = 1.0 / math::sum(y);
    for y in y.iter_mut() {
        *y *= inv;
    }
}

fn log_softmax_row(x: &[f32], y: &mut [f32]) {
    let m = math::max(x);
    for (y, &x) in y.iter_mut().zip(x) {
        *y = math::exp(x - m);
    }
    let lse = math::sum(y).ln();
    for (y, &x) in y.iter_mut().zip(x) {
        *y = (x - m) - lse;
    }
}

/// `(max, Σ exp(x - max))` of a row, exponentials written to `tmp`.
fn exp_sum(x: &[f32], tmp: &mut [f32]) -> (f32, f32) {
    let m = math::max(x);
    for (t, &x) in tmp.iter_mut().zip(x) {
        *t = math::exp(x - m);
    }
    (m, math::sum(&tmp[..x.len()]))
}

impl Cpu {
    pub(crate) fn softmax_impl(&self, d: usize, x: &[f32], y: &mut [f32]) {
        self.rows1(d, x, y, |_, x, y| {
            for (x, y) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
                softmax_row(x, y);
            }
        });
    }

    pub(crate) fn log_softmax_impl(&self, d: usize, x: &[f32], y: &mut [f32]) {
        self.rows1(d, x, y, |_, x, y| {
            for (x, y) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
                log_softmax_row(x, y);
            }
        });
    }

    pub(crate) fn softmax_backward_impl(&self, d: usize, y: &[f32], dy: &[f32], dx: &mut [f32]) {
        self.rows2(d, y, dy, dx, |_, y, dy, dx| {
            for ((y, dy), dx) in y
                .chunks_exact(d)
                .zip(dy.chunks_exact(d))
                .zip(dx.chunks_exact_mut(d))
            {
                let s = math::dot(dy, y);
                for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(dy) {
                    *dx = y * (g - s);
                }
            }
        });
    }

    pub(crate) fn log_softmax_backward_impl(
        &self,
        d: usize,
        y: &[f32],
        dy: &[f32],
        dx: &mut [f32],
    ) {
        self.rows2(d, y, dy, dx, |_, y, dy, dx| {
            for ((y, dy), dx) in y
                .chunks_exact(d)
                .zip(dy.chunks_exact(d))
                .zip(dx.chunks_exact_mut(d))
            {
                let s = math::sum(dy);
                for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(dy) {
                    *dx = g - math::exp(y) * s;
                }
            }
        });
    }

    /// `loss[r] = logsumexp(logits[r]) - logits[r, t]`.
    pub(crate) fn cross_entropy_impl(
        &self,
        classes: usize,
        logits: &[f32],
        targets: &[u32],
        loss: &mut [f32],
    ) {
        let rows = loss.len();
        if classes == 0 || rows == 0 {
            return;
        }
        let rpc = (CHUNK / classes).max(1);
        let run = |r0: usize, loss: &mut [f32]| {
            // One row of exponentials on the stack-sized scratch (rows are short) or
            // computed twice when the row is long.
            for (j, l) in loss.iter_mut().enumerate() {
                let r = r0 + j;
                let x = &logits[r * classes..(r + 1) * classes];
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
                let t = targets[r] as usize;
                *l = s.ln() - (x[t] - m);
            }
        };
        if rows <= rpc {
            run(0, loss);
        } else {
            self.install(|| {
                loss.par_chunks_mut(rpc)
                    .enumerate()
                    .for_each(|(i, l)| run(i * rpc, l))
            });
        }
    }

    /// `dlogits[r] = dloss[r] · (softmax(logits[r]) - onehot(t[r]))`.
    pub(crate) fn cross_entropy_backward_impl(
        &self,
        classes: usize,
        logits: &[f32],
        targets: &[u32],
        dloss: &[f32],
        dlogits: &mut [f32],
    ) {
        self.rows1(classes, logits, dlogits, |r0, x, dx| {
            for (j, (x, dx)) in x
                .chunks_exact(classes)
                .zip(dx.chunks_exact_mut(classes))
                .enumerate()
            {
                let r = r0 + j;
                let (_, s) = exp_sum(x, dx);
                let k = dloss[r] / s;
                for v in dx.iter_mut() {
                    *v *= k;
                }
                dx[targets[r] as usize] -= dloss[r];
            }
        });
    }
}
