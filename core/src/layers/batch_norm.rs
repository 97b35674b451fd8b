//! `BatchNorm2d` on NCHW, PyTorch names (`weight`, `bias`, state `running_mean`,
//! `running_var`; `num_batches_tracked` is not kept).

use super::{accumulate, check_nonempty, check_same, produce, pview, pview_mut, sum_axis, Scope};
use crate::backend::{self, Backend, BinaryOp, UnaryOp};
use crate::error::{shape_err, Result};
use crate::params::{Init, Param, ParamTable};
use crate::tensor::{Tensor, View};
use alloc::format;

const OP: &str = "BatchNorm2d";

/// Batch normalization of `[n, c, h, w]` per channel: `weight` (ones), `bias` (zeros),
/// running statistics in the state buffer (mean zeros, variance ones).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNorm2d {
    pub weight: Param,
    pub bias: Param,
    pub running_mean: Param,
    pub running_var: Param,
    pub channels: usize,
    /// `1e-5`, as PyTorch.
    pub eps: f64,
    /// `0.1`, as PyTorch: `running = (1 - momentum) · running + momentum · batch`.
    pub momentum: f64,
}

/// The input and the statistics it was normalized with: the batch mean and
/// `1/sqrt(var + eps)` in training mode, the running ones in evaluation mode.
pub struct BatchNormCache<B: Backend> {
    pub x: Tensor<B>,
    pub mean: Tensor<B>,
    pub invstd: Tensor<B>,
    pub train: bool,
}

impl BatchNorm2d {
    /// Register `{prefix}.weight`, `{prefix}.bias` and the state `{prefix}.running_mean`,
    /// `{prefix}.running_var`.
    pub fn new(table: &mut ParamTable, prefix: &str, channels: usize) -> Result<Self> {
        Self::build(&mut Scope::new(table, prefix), channels)
    }

    /// Share the tensors (running statistics included) registered under `existing`.
    pub fn shared(table: &mut ParamTable, prefix: &str, existing: &str, channels: usize) -> Result<Self> {
        Self::build(&mut Scope::shared(table, prefix, existing), channels)
    }

    /// Register in a scope (fresh or shared).
    pub fn build(s: &mut Scope<'_>, channels: usize) -> Result<Self> {
        Ok(BatchNorm2d {
            weight: s.param("weight", &[channels], Init::Ones)?,
            bias: s.param("bias", &[channels], Init::Zeros)?,
            running_mean: s.state("running_mean", &[channels], Init::Zeros)?,
            running_var: s.state("running_var", &[channels], Init::Ones)?,
            channels,
            eps: 1e-5,
            momentum: 0.1,
        })
    }

    /// The backend problem for input shape `x`, after validation.
    fn problem(&self, x: &[usize], train: bool) -> Result<backend::BatchNorm> {
        check_nonempty(OP, x, 4)?;
        if x.len() != 4 || x[1] != self.channels {
            return shape_err(OP, format!("input {x:?} is not [n, {}, h, w]", self.channels));
        }
        let p = backend::BatchNorm { n: x[0], c: x[1], hw: x[2] * x[3], eps: self.eps, momentum: self.momentum };
        if train && p.n * p.hw < 2 {
            return shape_err(OP, format!("input {x:?} has one value per channel; training needs more"));
        }
        Ok(p)
    }

    /// Forward pass, keeping a copy of `x` for the backward pass. In training mode it
    /// normalizes with the batch statistics and updates the running ones in `state`; in
    /// evaluation mode it normalizes with the running statistics.
    pub fn forward<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        state: &mut B::Buf,
        x: &Tensor<B>,
        train: bool,
    ) -> Result<(Tensor<B>, BatchNormCache<B>)> {
        self.forward_owned(b, params, state, x.duplicate(b)?, train)
    }

    /// As [`BatchNorm2d::forward`], moving `x` into the cache.
    pub fn forward_owned<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        state: &mut B::Buf,
        x: Tensor<B>,
        train: bool,
    ) -> Result<(Tensor<B>, BatchNormCache<B>)> {
        if !train {
            let y = self.infer(b, params, state, &x)?;
            let (mean, invstd) = self.running_stats(b, state)?;
            return Ok((y, BatchNormCache { x, mean, invstd, train }));
        }
        let p = self.problem(x.shape(), true)?;
        let (gamma, beta) = (pview(b, &self.weight, params)?, pview(b, &self.bias, params)?);
        // The running statistics are two ranges of one buffer, which cannot be borrowed
        // mutably twice: the kernel updates copies that are written back.
        let mut rm = copy_of(b, &self.running_mean, state)?;
        let mut rv = copy_of(b, &self.running_var, state)?;
        let mut y = Tensor::zeros(b, x.shape())?;
        let mut mean = Tensor::zeros(b, &[p.c])?;
        let mut invstd = Tensor::zeros(b, &[p.c])?;
        b.batch_norm_train(
            &p,
            x.view(),
            gamma,
            beta,
            rm.view_mut(),
            rv.view_mut(),
            y.view_mut(),
            mean.view_mut(),
            invstd.view_mut(),
        )?;
        b.copy(rm.view(), pview_mut(b, &self.running_mean, state)?)?;
        b.copy(rv.view(), pview_mut(b, &self.running_var, state)?)?;
        Ok((y, BatchNormCache { x, mean, invstd, train }))
    }

    /// Evaluation-mode output (running statistics), no cache.
    pub fn infer<B: Backend>(&self, b: &B, params: &B::Buf, state: &B::Buf, x: &Tensor<B>) -> Result<Tensor<B>> {
        let p = self.problem(x.shape(), false)?;
        let (gamma, beta) = (pview(b, &self.weight, params)?, pview(b, &self.bias, params)?);
        let rm = pview(b, &self.running_mean, state)?;
        let rv = pview(b, &self.running_var, state)?;
        produce(b, x.shape(), |y| b.batch_norm_eval(&p, x.view(), gamma, beta, rm, rv, y))
    }

    /// The running mean and `1/sqrt(running_var + eps)`.
    fn running_stats<B: Backend>(&self, b: &B, state: &B::Buf) -> Result<(Tensor<B>, Tensor<B>)> {
        let c = [self.channels];
        let rv = pview(b, &self.running_var, state)?;
        let var_eps = produce(b, &c, |t| b.affine(1.0, self.eps, rv, t))?;
        let std = produce(b, &c, |t| b.unary(UnaryOp::Sqrt, var_eps.view(), t))?;
        let invstd = produce(b, &c, |t| b.unary(UnaryOp::Recip, std.view(), t))?;
        Ok((copy_of(b, &self.running_mean, state)?, invstd))
    }

    /// Backward pass of either mode: returns `dx`, accumulates into the gradients of
    /// `weight` and `bias`.
    pub fn backward<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &BatchNormCache<B>,
        dy: &Tensor<B>,
    ) -> Result<Tensor<B>> {
        let x = &cache.x;
        let p = self.problem(x.shape(), cache.train)?;
        check_same(OP, "dy", dy.shape(), x.shape())?;
        check_same(OP, "cached statistics", cache.invstd.shape(), &[p.c])?;
        let gamma = pview(b, &self.weight, params)?;
        let (dx, dgamma, dbeta) = if cache.train {
            // `dgamma` and `dbeta` are two ranges of one buffer: the kernel accumulates
            // into zeroed temporaries that are then added to `grads`.
            let mut dgamma = Tensor::zeros(b, &[p.c])?;
            let mut dbeta = Tensor::zeros(b, &[p.c])?;
            let dx = produce(b, x.shape(), |dx| {
                b.batch_norm_backward(
                    &p,
                    x.view(),
                    dy.view(),
                    gamma,
                    cache.mean.view(),
                    cache.invstd.view(),
                    dx,
                    dgamma.view_mut(),
                    dbeta.view_mut(),
                )
            })?;
            (dx, dgamma, dbeta)
        } else {
            eval_backward(b, &p, gamma, cache, dy)?
        };
        accumulate(b, &dgamma, &self.weight, grads)?;
        accumulate(b, &dbeta, &self.bias, grads)?;
        Ok(dx)
    }
}

/// A copy of the range `p` of `buf`.
fn copy_of<B: Backend>(b: &B, p: &Param, buf: &B::Buf) -> Result<Tensor<B>> {
    let src = pview(b, p, buf)?;
    produce(b, &[p.len], |t| b.copy(src, t))
}

/// Gradients of the affine map `y = gamma · (x - mean) · invstd + beta` with fixed
/// statistics: `dx = dy · gamma · invstd`, `dgamma = Σ dy · x̂`, `dbeta = Σ dy`, the sums
/// over `n` and the spatial positions.
fn eval_backward<B: Backend>(
    b: &B,
    p: &backend::BatchNorm,
    gamma: View<'_, B::Buf>,
    cache: &BatchNormCache<B>,
    dy: &Tensor<B>,
) -> Result<(Tensor<B>, Tensor<B>, Tensor<B>)> {
    let full = [p.n, p.c, p.hw];
    let chan = [1, p.c, 1];
    let per_channel_sum = |t: &Tensor<B>| -> Result<Tensor<B>> {
        let over_hw = sum_axis(b, p.n * p.c, p.hw, 1, t.view())?;
        sum_axis(b, 1, p.n, p.c, over_hw.view())?.reshape(&[p.c])
    };
    let x = &cache.x;
    let scale = binary(b, BinaryOp::Mul, (gamma, &[p.c]), (cache.invstd.view(), &[p.c]))?;
    let dx = binary(b, BinaryOp::Mul, (dy.view(), &full), (scale.view(), &chan))?;
    let centered = binary(b, BinaryOp::Sub, (x.view(), &full), (cache.mean.view(), &chan))?;
    let xhat = binary(b, BinaryOp::Mul, (centered.view(), &full), (cache.invstd.view(), &chan))?;
    let dy_xhat = binary(b, BinaryOp::Mul, (dy.view(), &full), (xhat.view(), &full))?;
    Ok((dx.reshape(x.shape())?, per_channel_sum(&dy_xhat)?, per_channel_sum(dy)?))
}

/// `a op c` where `c` broadcasts to `a`'s shape.
fn binary<B: Backend>(
    b: &B,
    op: BinaryOp,
    (a, a_shape): (View<'_, B::Buf>, &[usize]),
    (c, c_shape): (View<'_, B::Buf>, &[usize]),
) -> Result<Tensor<B>> {
    produce(b, a_shape, |o| b.binary(op, a, a_shape, c, c_shape, o, a_shape))
}
