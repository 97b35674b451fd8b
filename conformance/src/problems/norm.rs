//! Batch norm (train with running statistics, eval, backward) and layer norm (forward,
//! backward).
//!
//! Each normalization group (a channel for batch norm, a row for layer norm) holds
//! `−1.5` and `1.5` besides its uniform values, so its variance is bounded below and
//! `1/σ` is well-conditioned; the tolerances also carry the group's condition number
//! `κ = mean(x²) / (var + eps)`, the error amplification of a one-pass variance.

use super::{host, host_vec, ref32};
use crate::gen::{anchor_groups, dim, dim_to, max_abs, nchw_channel_index, shape, with_data, Gen};
use crate::harness::{Cx, Problem};
use crate::tolerance::Tolerance;
use cim_core::{ops, Backend, Result, Tensor};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormOp {
    Train,
    Eval,
    Forward,
    Backward,
}

/// Statistics of the normalization groups of the (exact) input, for the tolerances.
#[derive(Clone, Copy, Debug, Default)]
pub struct GroupStats {
    /// Largest `mean(x²) / (var + eps)` (≥ 1).
    pub kappa: f64,
    /// Largest `1 / sqrt(var + eps)` (≥ 1).
    pub invstd: f64,
    /// Largest `|x − mean| / sqrt(var + eps)` (≥ 1).
    pub xhat: f64,
}

fn group_stats(x: &[f64], groups: usize, size: usize, eps: f64, index: impl Fn(usize, usize) -> usize) -> GroupStats {
    let mut s = GroupStats { kappa: 1.0, invstd: 1.0, xhat: 1.0 };
    for g in 0..groups {
        let vals: Vec<f64> = (0..size).map(|j| x[index(g, j)]).collect();
        let n = size as f64;
        let mean = vals.iter().sum::<f64>() / n;
        let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let inv = 1.0 / (var + eps).sqrt();
        if size > 1 {
            s.kappa = s.kappa.max(vals.iter().map(|v| v * v).sum::<f64>() / n / (var + eps));
        }
        s.invstd = s.invstd.max(inv);
        s.xhat = s.xhat.max(vals.iter().fold(0.0f64, |m, v| m.max((v - mean).abs() * inv)));
    }
    s
}

/// Batch norm over `x: [n, c, ...]` (rank 2 to 4), at least two elements per channel.
#[derive(Clone, Debug)]
pub struct BatchNormProblem {
    pub op: NormOp,
    pub shape: Vec<usize>,
    pub x: Vec<f64>,
    pub gamma: Vec<f64>,
    pub beta: Vec<f64>,
    pub running_mean: Vec<f64>,
    pub running_var: Vec<f64>,
    pub momentum: f64,
    pub eps: f64,
    /// Backward: upstream gradient, saved statistics, prior `dgamma`/`dbeta` contents.
    pub dy: Vec<f64>,
    pub mean: Vec<f64>,
    pub invstd: Vec<f64>,
    pub dg0: Vec<f64>,
    pub db0: Vec<f64>,
    pub stats: GroupStats,
    pub pad: usize,
}

impl BatchNormProblem {
    fn count(&self) -> usize {
        self.x.len() / self.shape[1]
    }
    /// Terms of the normalized output: `|γ| · |x − μ| · invstd`, plus `β`.
    fn y_scale(&self) -> f64 {
        2.0 * max_abs(&self.gamma).max(1.0) * self.stats.invstd
    }
}

impl Problem for BatchNormProblem {
    fn run<B: Backend>(&self, cx: &mut Cx<'_, B>) -> Result<()> {
        let c = self.shape[1];
        let n = self.count();
        let x = cx.t(&self.shape, &self.x)?;
        let gamma = cx.t(&[c], &self.gamma)?;
        let beta = cx.t(&[c], &self.beta)?;
        let pad = self.pad;
        match self.op {
            NormOp::Train | NormOp::Forward => {
                let kappa = self.stats.kappa;
                let tol_y = Tolerance::f32_for(n).times(kappa).scale_abs(self.y_scale());
                let tol_rv = Tolerance::f32_for(n).times(kappa).scale_abs(4.0);
                let (mut rm, mut rv) = (cx.t(&[c], &self.running_mean)?, cx.t(&[c], &self.running_var)?);
                let (y, mean, invstd) =
                    ops::batch_norm_train(cx.b, &x, &gamma, &beta, &mut rm, &mut rv, self.eps, self.momentum)?;
                cx.out("y", &y, tol_y)?;
                cx.out("save_mean", &mean, Tolerance::f32_for(n).scale_abs(2.0))?;
                cx.out("save_invstd", &invstd, Tolerance::f32_for(n).times(kappa))?;
                cx.out("running_mean", &rm, Tolerance::f32_for(n).scale_abs(2.0))?;
                cx.out("running_var", &rv, tol_rv)?;
                // The kernel with the parameters and running statistics at offsets.
                let p = cim_core::backend::BatchNorm {
                    n: self.shape[0],
                    c,
                    hw: n / self.shape[0],
                    eps: self.eps,
                    momentum: self.momentum,
                };
                let (sg, sb) = (cx.slot(&self.gamma, pad)?, cx.slot(&self.beta, pad + 1)?);
                let (mut srm, mut srv) = (cx.slot(&self.running_mean, pad + 2)?, cx.slot(&self.running_var, pad + 3)?);
                let mut y2 = Tensor::zeros(cx.b, &self.shape)?;
                let (mut m2, mut i2) = (Tensor::zeros(cx.b, &[c])?, Tensor::zeros(cx.b, &[c])?);
                cx.b.batch_norm_train(
                    &p,
                    x.view(),
                    sg.view(),
                    sb.view(),
                    srm.view_mut(),
                    srv.view_mut(),
                    y2.view_mut(),
                    m2.view_mut(),
                    i2.view_mut(),
                )?;
                cx.out("y (kernel, parameters on offset views)", &y2, tol_y)?;
                cx.out_slot("running_mean (kernel on offset views)", &srm, Tolerance::f32_for(n).scale_abs(2.0))?;
                cx.out_slot("running_var (kernel on offset views)", &srv, tol_rv)
            }
            NormOp::Eval => {
                let (rm, rv) = (cx.t(&[c], &self.running_mean)?, cx.t(&[c], &self.running_var)?);
                let y = ops::batch_norm_eval(cx.b, &x, &gamma, &beta, &rm, &rv, self.eps)?;
                // y = (x − rm) · (rv + eps)^(−1/2) · γ + β: a few roundings; rv ≥ 0.25.
                let scale = 2.0 * (2.0 + max_abs(&self.running_mean)) * max_abs(&self.gamma) + 2.0;
                cx.out("y", &y, Tolerance::f32_for(4).scale_abs(scale))
            }
            NormOp::Backward => {
                let dy = cx.t(&self.shape, &self.dy)?;
                let (mean, invstd) = (cx.t(&[c], &self.mean)?, cx.t(&[c], &self.invstd)?);
                let (dx, dg, db) = ops::batch_norm_backward(cx.b, &x, &dy, &gamma, &mean, &invstd, self.eps)?;
                let tol_dx = Tolerance::f32_for(n).scale_abs(2.0 * self.y_scale());
                let tol_dg = Tolerance::f32_for(n + 1).scale_abs(2.0 * self.stats.xhat);
                let tol_db = Tolerance::f32_for(n + 1).scale_abs(2.0);
                cx.out("dx", &dx, tol_dx)?;
                cx.out("dgamma", &dg, tol_dg)?;
                cx.out("dbeta", &db, tol_db)?;
                let p = cim_core::backend::BatchNorm {
                    n: self.shape[0],
                    c,
                    hw: n / self.shape[0],
                    eps: self.eps,
                    momentum: 0.0,
                };
                let sg = cx.slot(&self.gamma, pad)?;
                let (mut sdg, mut sdb) = (cx.slot(&self.dg0, pad + 1)?, cx.slot(&self.db0, pad + 2)?);
                let mut dx2 = Tensor::zeros(cx.b, &self.shape)?;
                cx.b.batch_norm_backward(
                    &p,
                    x.view(),
                    dy.view(),
                    sg.view(),
                    mean.view(),
                    invstd.view(),
                    dx2.view_mut(),
                    sdg.view_mut(),
                    sdb.view_mut(),
                )?;
                cx.out("dx (kernel, gamma on an offset view)", &dx2, tol_dx)?;
                cx.out_slot("dgamma accumulated (kernel on offset views)", &sdg, tol_dg)?;
                cx.out_slot("dbeta accumulated (kernel on offset views)", &sdb, tol_db)
            }
        }
    }
}

fn batch_norm(op: NormOp) -> impl Strategy<Value = BatchNormProblem> {
    // Small; one time in eight more than 65 536 elements (a backend's parallel paths).
    let sizes = prop_oneof![
        7 => (dim_to(3), dim_to(4), proptest::collection::vec(dim(), 0..=2)),
        1 => (2usize..=3, 16usize..=24, proptest::collection::vec(48usize..=64, 2)),
    ];
    with_data((Just(op), sizes), |(op, (n, c, spatial)), g: &mut Gen| {
        let mut shape = vec![n, c];
        shape.extend(spatial);
        let hw: usize = shape[2..].iter().product();
        if n * hw == 1 {
            shape[0] = 2; // training statistics need two elements per channel
        }
        let n = shape[0];
        let mut x = g.std(shape.iter().product());
        anchor_groups(&mut x, c, n * hw, 1.5, nchw_channel_index(c, hw));
        let eps = g.pick(&[1e-5, 1e-3, 0.1]);
        let stats = group_stats(&x, c, n * hw, eps, nchw_channel_index(c, hw));
        let (gamma, beta) = (g.std(c), g.std(c));
        let (running_mean, running_var) = (g.std(c), g.vec(c, 0.25, 2.0));
        let momentum = g.pick(&[0.1, 0.01, 0.5, 1.0]);
        let dy = g.std(x.len());
        let (mean, invstd) = if op == NormOp::Backward {
            let r = ref32();
            let t = |s: &[usize], v: &[f64]| host(Tensor::from_f64(&r, s, v));
            let (mut rm, mut rv) = (t(&[c], &running_mean), t(&[c], &running_var));
            let (_, m, i) = host(ops::batch_norm_train(
                &r,
                &t(&shape, &x),
                &t(&[c], &gamma),
                &t(&[c], &beta),
                &mut rm,
                &mut rv,
                eps,
                0.1,
            ));
            (host_vec(&m), host_vec(&i))
        } else {
            (vec![], vec![])
        };
        let (dg0, db0) = (g.std(c), g.std(c));
        let pad = g.range(1, 4);
        BatchNormProblem {
            op,
            shape,
            x,
            gamma,
            beta,
            running_mean,
            running_var,
            momentum,
            eps,
            dy,
            mean,
            invstd,
            dg0,
            db0,
            stats,
            pad,
        }
    })
}

pub fn batch_norm_train() -> impl Strategy<Value = BatchNormProblem> {
    batch_norm(NormOp::Train)
}
pub fn batch_norm_eval() -> impl Strategy<Value = BatchNormProblem> {
    batch_norm(NormOp::Eval)
}
pub fn batch_norm_backward() -> impl Strategy<Value = BatchNormProblem> {
    batch_norm(NormOp::Backward)
}

/// Layer norm over the last axis of `x: [..., d]` (rank 1 to 3).
#[derive(Clone, Debug)]
pub struct LayerNormProblem {
    pub op: NormOp,
    pub shape: Vec<usize>,
    pub x: Vec<f64>,
    pub gamma: Vec<f64>,
    pub beta: Vec<f64>,
    pub eps: f64,
    /// Backward: upstream gradient, saved statistics, prior `dgamma`/`dbeta` contents.
    pub dy: Vec<f64>,
    pub mean: Vec<f64>,
    pub rstd: Vec<f64>,
    pub dg0: Vec<f64>,
    pub db0: Vec<f64>,
    pub stats: GroupStats,
    pub pad: usize,
}

impl Problem for LayerNormProblem {
    fn run<B: Backend>(&self, cx: &mut Cx<'_, B>) -> Result<()> {
        let d = *self.shape.last().unwrap_or(&1);
        let rows = self.x.len() / d;
        let x = cx.t(&self.shape, &self.x)?;
        let gamma = cx.t(&[d], &self.gamma)?;
        let beta = cx.t(&[d], &self.beta)?;
        let y_scale = 2.0 * max_abs(&self.gamma).max(1.0) * self.stats.invstd;
        let (sg, sb) = (cx.slot(&self.gamma, self.pad)?, cx.slot(&self.beta, self.pad + 1)?);
        let (mut t1, mut t2, mut t3) =
            (Tensor::zeros(cx.b, &self.shape)?, Tensor::zeros(cx.b, &[rows])?, Tensor::zeros(cx.b, &[rows])?);
        if self.op == NormOp::Forward {
            let tol_y = Tolerance::f32_for(d).times(self.stats.kappa).scale_abs(y_scale);
            let (y, mean, rstd) = ops::layer_norm(cx.b, &x, &gamma, &beta, self.eps)?;
            cx.out("y", &y, tol_y)?;
            cx.out("mean", &mean, Tolerance::f32_for(d).scale_abs(2.0))?;
            cx.out("rstd", &rstd, Tolerance::f32_for(d).times(self.stats.kappa))?;
            let (y2, m2, r2) = (t1.view_mut(), t2.view_mut(), t3.view_mut());
            cx.b.layer_norm(rows, d, self.eps, x.view(), sg.view(), sb.view(), y2, m2, r2)?;
            return cx.out("y (kernel, gamma and beta on offset views)", &t1, tol_y);
        }
        let dy = cx.t(&self.shape, &self.dy)?;
        let (mean, rstd) = (cx.t(&[rows], &self.mean)?, cx.t(&[rows], &self.rstd)?);
        let (dx, dg, db) = ops::layer_norm_backward(cx.b, &x, &dy, &gamma, &mean, &rstd)?;
        let tol_dx = Tolerance::f32_for(d).scale_abs(2.0 * y_scale);
        let tol_dg = Tolerance::f32_for(rows + 1).scale_abs(2.0 * self.stats.xhat);
        let tol_db = Tolerance::f32_for(rows + 1).scale_abs(2.0);
        cx.out("dx", &dx, tol_dx)?;
        cx.out("dgamma", &dg, tol_dg)?;
        cx.out("dbeta", &db, tol_db)?;
        let (mut sdg, mut sdb) = (cx.slot(&self.dg0, self.pad + 2)?, cx.slot(&self.db0, self.pad + 3)?);
        let (dv, mv, rv) = (dy.view(), mean.view(), rstd.view());
        cx.b.layer_norm_backward(
            rows,
            d,
            x.view(),
            dv,
            sg.view(),
            mv,
            rv,
            t1.view_mut(),
            sdg.view_mut(),
            sdb.view_mut(),
        )?;
        cx.out("dx (kernel, gamma on an offset view)", &t1, tol_dx)?;
        cx.out_slot("dgamma accumulated (kernel on offset views)", &sdg, tol_dg)?;
        cx.out_slot("dbeta accumulated (kernel on offset views)", &sdb, tol_db)
    }
}

fn layer_norm_problem(op: NormOp) -> impl Strategy<Value = LayerNormProblem> {
    with_data((Just(op), shape(3)), |(op, shape), g: &mut Gen| {
        let d = *shape.last().unwrap_or(&1);
        let rows = shape.iter().product::<usize>() / d;
        let mut x = g.std(rows * d);
        anchor_groups(&mut x, rows, d, 1.5, |r, j| r * d + j);
        let eps = g.pick(&[1e-5, 1e-6, 1e-2]);
        let stats = group_stats(&x, rows, d, eps, |r, j| r * d + j);
        let (gamma, beta, dy) = (g.std(d), g.std(d), g.std(rows * d));
        let (mean, rstd) = if op == NormOp::Backward {
            let r = ref32();
            let t = |s: &[usize], v: &[f64]| host(Tensor::from_f64(&r, s, v));
            let (_, m, s) = host(ops::layer_norm(&r, &t(&shape, &x), &t(&[d], &gamma), &t(&[d], &beta), eps));
            (host_vec(&m), host_vec(&s))
        } else {
            (vec![], vec![])
        };
        let (dg0, db0, pad) = (g.std(d), g.std(d), g.range(1, 4));
        LayerNormProblem { op, shape, x, gamma, beta, eps, dy, mean, rstd, dg0, db0, stats, pad }
    })
}

pub fn layer_norm() -> impl Strategy<Value = LayerNormProblem> {
    layer_norm_problem(NormOp::Forward)
}
pub fn layer_norm_backward() -> impl Strategy<Value = LayerNormProblem> {
    layer_norm_problem(NormOp::Backward)
}
