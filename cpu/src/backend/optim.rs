//! Optimizer kernels: the squared norm and the fused AdamW step.

use super::par::CHUNK;
use super::Cpu;
use cim_core::backend::{AdamW, ParamGroup};
use rayon::prelude::*;

/// Elements per partial sum of [`Cpu::sum_squares_impl`].
const SUM_CHUNK: usize = 1 << 16;

/// `Σ x²` of a chunk: `f32` over blocks of 1024, the blocks in `f64`.
fn sum_sq(x: &[f32]) -> f64 {
    let mut total = 0f64;
    for blk in x.chunks(1024) {
        let mut acc = [0f32; 8];
        let mut it = blk.chunks_exact(8);
        for c in &mut it {
            for j in 0..8 {
                acc[j] += c[j] * c[j];
            }
        }
        let mut s: f32 = it.remainder().iter().map(|v| v * v).sum();
        s += acc.iter().sum::<f32>();
        total += s as f64;
    }
    total
}

impl Cpu {
    /// `out[0] = Σ x²`, deterministic: fixed chunks, partial sums added in order.
    pub(crate) fn sum_squares_impl(&self, x: &[f32], out: &mut [f32]) {
        let total = if x.len() <= SUM_CHUNK {
            sum_sq(x)
        } else {
            let parts: Vec<f64> = self.install(|| x.par_chunks(SUM_CHUNK).map(sum_sq).collect());
            parts.iter().sum()
        };
        out[0] = total as f32;
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn adamw_impl(
        &self,
        hp: &AdamW,
        groups: &[ParamGroup],
        params: &mut [f32],
        grads: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        grad_scale: f32,
    ) {
        let step = hp.step.max(1) as f64;
        let bc1 = 1.0 - hp.beta1.powf(step);
        let bc2 = 1.0 - hp.beta2.powf(step);
        let (b1, b2) = (hp.beta1 as f32, hp.beta2 as f32);
        let (c1, c2) = ((1.0 - hp.beta1) as f32, (1.0 - hp.beta2) as f32);
        let (ib1, ib2) = ((1.0 / bc1) as f32, (1.0 / bc2) as f32);
        let eps = hp.eps as f32;
        for g in groups {
            let r = g.offset..g.offset + g.len;
            let (lr, wd) = (g.lr as f32, g.weight_decay as f32);
            let step = |p: &mut [f32], gr: &[f32], m: &mut [f32], v: &mut [f32]| {
                for (((p, &gr), m), v) in p.iter_mut().zip(gr).zip(m).zip(v) {
                    let gr = gr * grad_scale;
                    *m = b1 * *m + c1 * gr;
                    *v = b2 * *v + c2 * gr * gr;
                    let mh = *m * ib1;
                    let vh = *v * ib2;
                    *p -= lr * (mh / (vh.sqrt() + eps) + wd * *p);
                }
            };
            let (p, gr, m, v) = (&mut params[r.clone()], &grads[r.clone()], &mut m[r.clone()], &mut v[r]);
            if p.len() <= CHUNK {
                step(p, gr, m, v);
            } else {
                self.install(|| {
                    p.par_chunks_mut(CHUNK)
                        .zip(gr.par_chunks(CHUNK))
                        .zip(m.par_chunks_mut(CHUNK))
                        .zip(v.par_chunks_mut(CHUNK))
                        .for_each(|(((p, gr), m), v)| step(p, gr, m, v))
                });
            }
        }
    }
}
