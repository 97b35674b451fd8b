//! `LayerNorm` over the last axis, PyTorch names (`weight`, `bias`).

use super::{accumulate, check_nonempty, check_same, produce, pview, Layer, Scope};
use crate::backend::Backend;
use crate::error::{shape_err, Result};
use crate::params::{Init, Param, ParamTable};
use crate::tensor::Tensor;
use alloc::format;

const OP: &str = "LayerNorm";

/// Layer normalization over the last axis of `[..., dim]`: `weight` (ones), `bias` (zeros).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerNorm {
    pub weight: Param,
    pub bias: Param,
    pub dim: usize,
    /// PyTorch's default is `1e-5`; timm's ViT uses `1e-6`.
    pub eps: f64,
}

/// The input and its per-row mean and `1/sqrt(var + eps)`.
pub struct LayerNormCache<B: Backend> {
    pub x: Tensor<B>,
    pub mean: Tensor<B>,
    pub rstd: Tensor<B>,
}

impl LayerNorm {
    /// Register `{prefix}.weight` (ones) and `{prefix}.bias` (zeros).
    pub fn new(table: &mut ParamTable, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        Self::build(&mut Scope::new(table, prefix), dim, eps)
    }

    /// Share the tensors registered under `existing`.
    pub fn shared(table: &mut ParamTable, prefix: &str, existing: &str, dim: usize, eps: f64) -> Result<Self> {
        Self::build(&mut Scope::shared(table, prefix, existing), dim, eps)
    }

    /// Register in a scope (fresh or shared).
    pub fn build(s: &mut Scope<'_>, dim: usize, eps: f64) -> Result<Self> {
        let weight = s.param("weight", &[dim], Init::Ones)?;
        let bias = s.param("bias", &[dim], Init::Zeros)?;
        Ok(LayerNorm { weight, bias, dim, eps })
    }

    /// Rows of `x`, after validation.
    fn rows(&self, x: &[usize]) -> Result<usize> {
        check_nonempty(OP, x, 1)?;
        if x[x.len() - 1] != self.dim {
            return shape_err(OP, format!("input {x:?} does not end in {}", self.dim));
        }
        Ok(x.iter().product::<usize>() / self.dim)
    }

    /// Output, mean and rstd.
    fn run<B: Backend>(&self, b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<[Tensor<B>; 3]> {
        let rows = self.rows(x.shape())?;
        let (gamma, beta) = (pview(b, &self.weight, params)?, pview(b, &self.bias, params)?);
        let mut y = Tensor::zeros(b, x.shape())?;
        let mut mean = Tensor::zeros(b, &[rows])?;
        let mut rstd = Tensor::zeros(b, &[rows])?;
        b.layer_norm(rows, self.dim, self.eps, x.view(), gamma, beta, y.view_mut(), mean.view_mut(), rstd.view_mut())?;
        Ok([y, mean, rstd])
    }
}

impl<B: Backend> Layer<B> for LayerNorm {
    type Cache = LayerNormCache<B>;

    fn forward_owned(&self, b: &B, params: &B::Buf, x: Tensor<B>) -> Result<(Tensor<B>, LayerNormCache<B>)> {
        let [y, mean, rstd] = self.run(b, params, &x)?;
        Ok((y, LayerNormCache { x, mean, rstd }))
    }

    fn infer(&self, b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<Tensor<B>> {
        let [y, _, _] = self.run(b, params, x)?;
        Ok(y)
    }

    fn backward(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &LayerNormCache<B>,
        dy: &Tensor<B>,
    ) -> Result<Tensor<B>> {
        let x = &cache.x;
        let rows = self.rows(x.shape())?;
        check_same(OP, "dy", dy.shape(), x.shape())?;
        let gamma = pview(b, &self.weight, params)?;
        // `dgamma` and `dbeta` are two ranges of one buffer, which cannot be borrowed
        // mutably twice: the kernel writes temporaries that are then added to `grads`.
        let mut dgamma = Tensor::zeros(b, &[self.dim])?;
        let mut dbeta = Tensor::zeros(b, &[self.dim])?;
        let dx = produce(b, x.shape(), |dx| {
            b.layer_norm_backward(
                rows,
                self.dim,
                x.view(),
                dy.view(),
                gamma,
                cache.mean.view(),
                cache.rstd.view(),
                dx,
                dgamma.view_mut(),
                dbeta.view_mut(),
            )
        })?;
        accumulate(b, &dgamma, &self.weight, grads)?;
        accumulate(b, &dbeta, &self.bias, grads)?;
        Ok(dx)
    }
}
