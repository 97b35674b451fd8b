//! `Linear`: `y = x · Wᵀ + b` over the last axis, PyTorch layout (`weight: [out, in]`).

use super::{accumulate, check_nonempty, check_same, opt_pview, produce, pview, pview_mut, sum_axis, Layer, Scope};
use crate::backend::{Backend, Gemm};
use crate::element::Element;
use crate::error::{shape_err, Result};
use crate::params::{Init, Param, ParamTable};
use crate::tensor::Tensor;
use alloc::format;
use alloc::vec::Vec;

const OP: &str = "Linear";

/// A fully connected layer: `weight: [out, in]` (`Init::TIMM` by default), optional
/// `bias: [out]` (zeros). Inputs `[..., in]` give outputs `[..., out]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Linear {
    pub weight: Param,
    pub bias: Option<Param>,
    pub d_in: usize,
    pub d_out: usize,
}

/// The input, for the weight gradient.
pub struct LinearCache<B: Backend> {
    pub x: Tensor<B>,
}

impl Linear {
    /// Register `{prefix}.weight` (truncated normal, std 0.02) and `{prefix}.bias` (zeros).
    pub fn new(table: &mut ParamTable, prefix: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Self> {
        Self::build(&mut Scope::new(table, prefix), d_in, d_out, bias, Init::TIMM)
    }

    /// As [`Linear::new`] with another weight initialization.
    pub fn new_with_init(
        table: &mut ParamTable,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        init: Init,
    ) -> Result<Self> {
        Self::build(&mut Scope::new(table, prefix), d_in, d_out, bias, init)
    }

    /// Share the tensors registered under `existing`.
    pub fn shared(
        table: &mut ParamTable,
        prefix: &str,
        existing: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Self> {
        Self::build(&mut Scope::shared(table, prefix, existing), d_in, d_out, bias, Init::TIMM)
    }

    /// Register in a scope (fresh or shared).
    pub fn build(s: &mut Scope<'_>, d_in: usize, d_out: usize, bias: bool, init: Init) -> Result<Self> {
        let weight = s.param("weight", &[d_out, d_in], init)?;
        let bias = if bias { Some(s.param("bias", &[d_out], Init::Zeros)?) } else { None };
        Ok(Linear { weight, bias, d_in, d_out })
    }

    /// Rows of `x` and the output shape, after validation.
    fn out_shape(&self, x: &[usize]) -> Result<(usize, Vec<usize>)> {
        check_nonempty(OP, x, 1)?;
        let last = x[x.len() - 1];
        if last != self.d_in {
            return shape_err(OP, format!("input {x:?} has {last} features, the layer takes {}", self.d_in));
        }
        let mut out = x.to_vec();
        *out.last_mut().expect("rank checked") = self.d_out;
        Ok((x.iter().product::<usize>() / self.d_in, out))
    }
}

impl<B: Backend> Layer<B> for Linear {
    type Cache = LinearCache<B>;

    fn forward_owned(&self, b: &B, params: &B::Buf, x: Tensor<B>) -> Result<(Tensor<B>, LinearCache<B>)> {
        let y = self.infer(b, params, &x)?;
        Ok((y, LinearCache { x }))
    }

    fn infer(&self, b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<Tensor<B>> {
        let (rows, shape) = self.out_shape(x.shape())?;
        let w = pview(b, &self.weight, params)?;
        let bias = opt_pview(b, &self.bias, params)?;
        produce(b, &shape, |mut y| {
            let mut g = Gemm { trans_b: true, ..Gemm::new(rows, self.d_out, self.d_in) };
            if let Some(bias) = bias {
                // y = 1 · biasᵀ (a rank-1 product writes the broadcast), then y += x · Wᵀ.
                let ones = Tensor::<B>::full(b, &[rows], B::E::of(1.0))?;
                b.gemm(&Gemm::new(rows, self.d_out, 1), ones.view(), bias, y.reborrow())?;
                g.beta = 1.0;
            }
            b.gemm(&g, x.view(), w, y)
        })
    }

    fn backward(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &LinearCache<B>,
        dy: &Tensor<B>,
    ) -> Result<Tensor<B>> {
        let x = &cache.x;
        let (rows, y_shape) = self.out_shape(x.shape())?;
        check_same(OP, "dy", dy.shape(), &y_shape)?;
        let (d_in, d_out) = (self.d_in, self.d_out);
        // dW += dyᵀ · x: [out, rows] · [rows, in].
        let gw = Gemm { trans_a: true, beta: 1.0, ..Gemm::new(d_out, d_in, rows) };
        b.gemm(&gw, dy.view(), x.view(), pview_mut(b, &self.weight, grads)?)?;
        if let Some(bias) = &self.bias {
            // db += Σ_rows dy.
            let col_sums = sum_axis(b, 1, rows, d_out, dy.view())?;
            accumulate(b, &col_sums, bias, grads)?;
        }
        // dx = dy · W: [rows, out] · [out, in].
        let w = pview(b, &self.weight, params)?;
        produce(b, x.shape(), |dx| b.gemm(&Gemm::new(rows, d_in, d_out), dy.view(), w, dx))
    }
}
