//! Layer norm and batch norm, parallel over rows and channels.

use super::math;
use super::par::{ceil_div, try_zeroed, SyncPtr, CHUNK};
use super::Cpu;
use cim_core::backend::BatchNorm;
use cim_core::Result;
use rayon::prelude::*;

/// Normalize rows of `x` into `y`, saving each row's mean and `1/sqrt(var + eps)`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn layer_norm_rows_base(
    d: usize,
    eps: f64,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
) {
    let inv_d = 1.0 / d as f32;
    for (((x, y), m), r) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)).zip(mean.iter_mut()).zip(rstd.iter_mut()) {
        let mu = math::sum(x) * inv_d;
        let var = math::sum_sq_dev(x, mu) * inv_d;
        let rs = (1.0 / (var as f64 + eps).sqrt()) as f32;
        *m = mu;
        *r = rs;
        for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
            *y = (x - mu) * rs * g + b;
        }
    }
}

dispatch!(
    layer_norm_rows,
    layer_norm_rows_base,
    (
        d: usize,
        eps: f64,
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        y: &mut [f32],
        mean: &mut [f32],
        rstd: &mut [f32]
    )
);

/// Backward over the rows of one block: `dx = rstd · (g - mean(g) - x̂ · mean(g · x̂))`
/// with `g = dy · gamma` (in `gbuf`), accumulating `[dgamma | dbeta]` into `acc`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn layer_norm_backward_rows_base(
    d: usize,
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dx: &mut [f32],
    gbuf: &mut [f32],
    acc: &mut [f64],
) {
    let inv_d = 1.0 / d as f32;
    let (ag, ab) = acc.split_at_mut(d);
    let (gamma, g) = (&gamma[..d], &mut gbuf[..d]);
    for ((((x, dy), dx), &mu), &rs) in
        x.chunks_exact(d).zip(dy.chunks_exact(d)).zip(dx.chunks_exact_mut(d)).zip(mean).zip(rstd)
    {
        for ((g, &a), &b) in g.iter_mut().zip(dy).zip(gamma) {
            *g = a * b;
        }
        let mg = math::sum(g) * inv_d;
        let mgx = math::dot_dev(g, x, mu) * rs * inv_d;
        for j in 0..d {
            let xh = (x[j] - mu) * rs;
            dx[j] = rs * (g[j] - mg - xh * mgx);
            ag[j] += (dy[j] * xh) as f64;
            ab[j] += dy[j] as f64;
        }
    }
}

dispatch!(
    layer_norm_backward_rows,
    layer_norm_backward_rows_base,
    (
        d: usize,
        x: &[f32],
        dy: &[f32],
        gamma: &[f32],
        mean: &[f32],
        rstd: &[f32],
        dx: &mut [f32],
        gbuf: &mut [f32],
        acc: &mut [f64]
    )
);

impl Cpu {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn layer_norm_impl(
        &self,
        rows: usize,
        d: usize,
        eps: f64,
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        y: &mut [f32],
        mean: &mut [f32],
        rstd: &mut [f32],
    ) {
        if rows == 0 || d == 0 {
            return;
        }
        let (gamma, beta) = (&gamma[..d], &beta[..d]);
        let rpc = (CHUNK / d).max(1);
        if rows <= rpc {
            layer_norm_rows(d, eps, x, gamma, beta, y, mean, rstd);
            return;
        }
        self.install(|| {
            x.par_chunks(rpc * d)
                .zip(y.par_chunks_mut(rpc * d))
                .zip(mean.par_chunks_mut(rpc))
                .zip(rstd.par_chunks_mut(rpc))
                .for_each(|(((x, y), m), r)| layer_norm_rows(d, eps, x, gamma, beta, y, m, r))
        });
    }

    /// `dx = rstd · (g - mean(g) - x̂ · mean(g · x̂))` with `g = dy · gamma`; per-worker
    /// `dgamma`/`dbeta` partial sums (in `f64`) are added in worker order at the end.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn layer_norm_backward_impl(
        &self,
        rows: usize,
        d: usize,
        x: &[f32],
        dy: &[f32],
        gamma: &[f32],
        mean: &[f32],
        rstd: &[f32],
        dx: &mut [f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32],
    ) -> Result<()> {
        if rows == 0 || d == 0 {
            return Ok(());
        }
        assert!(
            x.len() >= rows * d && dy.len() >= rows * d && dx.len() >= rows * d,
            "layer_norm_backward: short buffer"
        );
        let gamma = &gamma[..d];
        let workers = self.threads().min(ceil_div(rows * d, 4 * CHUNK)).max(1);
        let dxp = SyncPtr::new(dx);
        let parts = self.workers(workers, |wi| -> Result<Vec<f64>> {
            let (r0, r1) = (wi * rows / workers, (wi + 1) * rows / workers);
            // [dgamma | dbeta] partial sums, then one row of g = dy · gamma.
            let mut acc = try_zeroed::<f64>(2 * d)?;
            let mut gbuf = try_zeroed::<f32>(d)?;
            // SAFETY: rows r0..r1 belong to this worker alone.
            let dx = unsafe { dxp.slice(r0 * d, (r1 - r0) * d) };
            let rows = r0 * d..r1 * d;
            layer_norm_backward_rows(
                d,
                &x[rows.clone()],
                &dy[rows],
                gamma,
                &mean[r0..r1],
                &rstd[r0..r1],
                dx,
                &mut gbuf,
                &mut acc,
            );
            Ok(acc)
        })?;
        for (j, (dg, db)) in dgamma[..d].iter_mut().zip(&mut dbeta[..d]).enumerate() {
            let (mut sg, mut sb) = (0f64, 0f64);
            for p in &parts {
                sg += p[j];
                sb += p[d + j];
            }
            *dg += sg as f32;
            *db += sb as f32;
        }
        Ok(())
    }

    /// Per-channel `f(channel) -> R` in parallel over channels, in channel order.
    fn per_channel<R: Send>(&self, c: usize, work: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
        if work <= 4 * CHUNK {
            (0..c).map(f).collect()
        } else {
            self.install(|| (0..c).into_par_iter().map(&f).collect())
        }
    }

    /// `f(plane, x_plane, y_plane)` over the `[n, c]` planes of `hw` elements.
    fn planes(&self, hw: usize, x: &[f32], y: &mut [f32], f: impl Fn(usize, &[f32], &mut [f32]) + Sync) {
        if hw == 0 {
            return;
        }
        if y.len() <= 4 * CHUNK {
            for (i, (x, y)) in x.chunks_exact(hw).zip(y.chunks_exact_mut(hw)).enumerate() {
                f(i, x, y);
            }
        } else {
            let min = ceil_div(CHUNK, hw);
            self.install(|| {
                x.par_chunks_exact(hw)
                    .zip(y.par_chunks_exact_mut(hw))
                    .with_min_len(min)
                    .enumerate()
                    .for_each(|(i, (x, y))| f(i, x, y))
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn batch_norm_train_impl(
        &self,
        p: &BatchNorm,
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        running_mean: &mut [f32],
        running_var: &mut [f32],
        y: &mut [f32],
        save_mean: &mut [f32],
        save_invstd: &mut [f32],
    ) {
        let (n, c, hw) = (p.n, p.c, p.hw);
        let len = n * c * hw;
        if c == 0 {
            return;
        }
        let (x, y) = (&x[..len], &mut y[..len]);
        let cnt = (n * hw) as f64;
        // Two passes per channel: the mean, then the squared deviations, each plane
        // summed in f32 and the planes in f64.
        let stats = self.per_channel(c, len, |ci| {
            let plane = |i: usize| &x[(i * c + ci) * hw..(i * c + ci + 1) * hw];
            let s: f64 = (0..n).map(|i| math::sum(plane(i)) as f64).sum();
            let mean = if cnt > 0.0 { s / cnt } else { 0.0 };
            let m32 = mean as f32;
            let ss: f64 = (0..n).map(|i| math::sum_sq_dev(plane(i), m32) as f64).sum();
            let var = if cnt > 0.0 { ss / cnt } else { 0.0 };
            (mean, var)
        });
        let mom = p.momentum;
        let unbias = if cnt > 1.0 { cnt / (cnt - 1.0) } else { 1.0 };
        let mut coef = Vec::with_capacity(c);
        for (ci, &(mean, var)) in stats.iter().enumerate() {
            let invstd = 1.0 / (var + p.eps).sqrt();
            save_mean[ci] = mean as f32;
            save_invstd[ci] = invstd as f32;
            running_mean[ci] = ((1.0 - mom) * running_mean[ci] as f64 + mom * mean) as f32;
            running_var[ci] = ((1.0 - mom) * running_var[ci] as f64 + mom * var * unbias) as f32;
            coef.push((mean as f32, (invstd * gamma[ci] as f64) as f32, beta[ci]));
        }
        self.normalize_planes(hw, x, y, &coef);
    }

    /// `y = (x - mean) · scale + shift` per `(n, c)` plane, with `coef[c] = (mean, scale, shift)`
    /// (batch norm's affine map, shared by the train and eval passes).
    fn normalize_planes(&self, hw: usize, x: &[f32], y: &mut [f32], coef: &[(f32, f32, f32)]) {
        let c = coef.len();
        self.planes(hw, x, y, |i, x, y| {
            let (m, s, b) = coef[i % c];
            for (y, &x) in y.iter_mut().zip(x) {
                *y = (x - m) * s + b;
            }
        });
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn batch_norm_eval_impl(
        &self,
        p: &BatchNorm,
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        running_mean: &[f32],
        running_var: &[f32],
        y: &mut [f32],
    ) {
        let (n, c, hw) = (p.n, p.c, p.hw);
        let len = n * c * hw;
        let coef: Vec<(f32, f32, f32)> = (0..c)
            .map(|ci| {
                let invstd = 1.0 / (running_var[ci] as f64 + p.eps).sqrt();
                (running_mean[ci], (invstd * gamma[ci] as f64) as f32, beta[ci])
            })
            .collect();
        self.normalize_planes(hw, &x[..len], &mut y[..len], &coef);
    }

    /// `dx = gamma · invstd · (dy - Σdy/N - x̂ · Σ(dy · x̂)/N)`; `dbeta += Σdy`,
    /// `dgamma += Σ dy · x̂`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn batch_norm_backward_impl(
        &self,
        p: &BatchNorm,
        x: &[f32],
        dy: &[f32],
        gamma: &[f32],
        save_mean: &[f32],
        save_invstd: &[f32],
        dx: &mut [f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32],
    ) {
        let (n, c, hw) = (p.n, p.c, p.hw);
        let len = n * c * hw;
        if c == 0 {
            return;
        }
        let (x, dy, dx) = (&x[..len], &dy[..len], &mut dx[..len]);
        let sums = self.per_channel(c, len, |ci| {
            let mut s_dy = 0f64;
            let mut s_dyx = 0f64;
            for i in 0..n {
                let r = (i * c + ci) * hw..(i * c + ci + 1) * hw;
                s_dy += math::sum(&dy[r.clone()]) as f64;
                s_dyx += math::dot_dev(&dy[r.clone()], &x[r], save_mean[ci]) as f64;
            }
            (s_dy, s_dyx)
        });
        let cnt = (n * hw).max(1) as f64;
        let mut coef = Vec::with_capacity(c);
        for (ci, &(s_dy, s_dyx)) in sums.iter().enumerate() {
            let invstd = save_invstd[ci] as f64;
            dbeta[ci] += s_dy as f32;
            dgamma[ci] += (s_dyx * invstd) as f32;
            // dx = k · (dy - a - (x - mean) · b)
            let k = gamma[ci] as f64 * invstd;
            let a = s_dy / cnt;
            let b = s_dyx * invstd * invstd / cnt;
            coef.push((save_mean[ci], k as f32, a as f32, b as f32));
        }
        self.planes(hw, x, dx, |i, xs, dxs| {
            let (m, k, a, b) = coef[i % c];
            let dys = &dy[i * hw..(i + 1) * hw];
            for ((d, &xv), &g) in dxs.iter_mut().zip(xs).zip(dys) {
                *d = k * (g - a - (xv - m) * b);
            }
        });
    }
}
