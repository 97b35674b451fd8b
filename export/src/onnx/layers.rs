//! The layers the graphs share: linear maps, LayerNorm, GELU, convolutions with a folded
//! batch norm.

use super::graph::{Attr, Graph};
use crate::enhancer::{invalid, Enhancer};
use cim_core::layers::{BatchNorm2d, Conv2d, LayerNorm, Linear};
use cim_core::params::{Param, ParamStore};
use cim_core::{Backend, Result};

/// Where weights are read from.
pub(crate) struct Weights<'a, B: Backend> {
    pub b: &'a B,
    pub store: &'a ParamStore<B>,
}

impl<B: Backend> Weights<'_, B> {
    pub fn get(&self, p: &Param) -> Result<Vec<f32>> {
        Enhancer::values(self.b, self.store, p)
    }
}

/// `[rows, cols]` row-major → `[cols, rows]`.
pub(crate) fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = v[r * cols + c];
        }
    }
    t
}

/// `x · Wᵀ + b` over the last axis as MatMul (+ Add), from PyTorch's `[out, in]` weight
/// rows `rows` (all when `None`) and the matching bias entries. The initializer holds
/// the transposed weight `[in, out]`, as PyTorch's exporter writes it.
pub(crate) fn linear_rows<B: Backend>(
    g: &mut Graph,
    w: &Weights<'_, B>,
    lin: &Linear,
    rows: Option<std::ops::Range<usize>>,
    x: &str,
    name: &str,
) -> Result<String> {
    let rows = rows.unwrap_or(0..lin.d_out);
    let (d_in, n) = (lin.d_in, rows.len());
    let full = w.get(&lin.weight)?;
    let part = full.get(rows.start * d_in..rows.end * d_in).ok_or_else(|| cim_core::Error::Invalid {
        op: "export",
        detail: format!("{name}: rows {rows:?} outside the weight"),
    })?;
    let wt = g.weight(&format!("{name}.weight"), &[d_in, n], &transpose(part, n, d_in))?;
    let Some(bias) = &lin.bias else {
        return g.node("MatMul", &[x, &wt], name, &[]);
    };
    let y = g.node("MatMul", &[x, &wt], &format!("{name}.matmul"), &[])?;
    let b = w.get(bias)?;
    let bt = g.weight(&format!("{name}.bias"), &[n], &b[rows])?;
    g.node("Add", &[&y, &bt], name, &[])
}

/// A whole linear layer.
pub(crate) fn linear<B: Backend>(
    g: &mut Graph,
    w: &Weights<'_, B>,
    lin: &Linear,
    x: &str,
    name: &str,
) -> Result<String> {
    linear_rows(g, w, lin, None, x, name)
}

/// `Gemm(x, W, b, transB=1)` on `[N, in]`: a classifier, with PyTorch's `[out, in]` weight.
pub(crate) fn gemm<B: Backend>(
    g: &mut Graph,
    w: &Weights<'_, B>,
    lin: &Linear,
    x: &str,
    name: &str,
    out: &str,
) -> Result<String> {
    let wt = g.weight(&format!("{name}.weight"), &[lin.d_out, lin.d_in], &w.get(&lin.weight)?)?;
    let mut inputs = vec![x.to_string(), wt];
    if let Some(b) = &lin.bias {
        inputs.push(g.weight(&format!("{name}.bias"), &[lin.d_out], &w.get(b)?)?);
    }
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    g.node("Gemm", &refs, out, &[Attr::Int("transB", 1)])
}

/// ONNX's native `LayerNormalization` over the last axis.
pub(crate) fn layer_norm<B: Backend>(
    g: &mut Graph,
    w: &Weights<'_, B>,
    ln: &LayerNorm,
    x: &str,
    name: &str,
) -> Result<String> {
    let s = g.weight(&format!("{name}.weight"), &[ln.dim], &w.get(&ln.weight)?)?;
    let b = g.weight(&format!("{name}.bias"), &[ln.dim], &w.get(&ln.bias)?)?;
    g.node("LayerNormalization", &[x, &s, &b], name, &[Attr::Int("axis", -1), Attr::Float("epsilon", ln.eps as f32)])
}

/// The exact GELU, `0.5 · x · (1 + erf(x / √2))`.
pub(crate) fn gelu(g: &mut Graph, x: &str, name: &str) -> Result<String> {
    let sqrt2 = g.scalar(std::f32::consts::SQRT_2)?;
    let one = g.scalar(1.0)?;
    let half = g.scalar(0.5)?;
    let d = g.node("Div", &[x, &sqrt2], &format!("{name}.div"), &[])?;
    let e = g.node("Erf", &[&d], &format!("{name}.erf"), &[])?;
    let p = g.node("Add", &[&e, &one], &format!("{name}.add"), &[])?;
    let m = g.node("Mul", &[x, &p], &format!("{name}.mul"), &[])?;
    g.node("Mul", &[&m, &half], name, &[])
}

/// A convolution followed by an evaluation-mode batch norm, folded into one `Conv`:
/// `W' = W · s`, `b' = β + (b − μ) · s` with `s = γ / √(σ² + ε)` per output channel.
pub(crate) fn conv_bn<B: Backend>(
    g: &mut Graph,
    w: &Weights<'_, B>,
    conv: &Conv2d,
    bn: Option<&BatchNorm2d>,
    x: &str,
    name: &str,
) -> Result<String> {
    let c = &conv.cfg;
    let (co, ci, (kh, kw)) = (c.c_out, c.c_in, c.kernel);
    let mut weight = w.get(&conv.weight)?;
    let mut bias = match &conv.bias {
        Some(b) => w.get(b)?,
        None => vec![0.0; co],
    };
    if weight.len() != co * ci * kh * kw || bias.len() != co {
        return invalid(format!("{name}: the weights do not fit the convolution {c:?}"));
    }
    let has_bias = conv.bias.is_some() || bn.is_some();
    if let Some(bn) = bn {
        let (gamma, beta) = (w.get(&bn.weight)?, w.get(&bn.bias)?);
        let (mean, var) = (w.get(&bn.running_mean)?, w.get(&bn.running_var)?);
        if [gamma.len(), beta.len(), mean.len(), var.len()] != [co; 4] {
            return invalid(format!("{name}: the batch norm has {} channels, the convolution {co}", gamma.len()));
        }
        let per = ci * kh * kw;
        for o in 0..co {
            let s = gamma[o] as f64 / (var[o] as f64 + bn.eps).sqrt();
            for v in &mut weight[o * per..(o + 1) * per] {
                *v = (*v as f64 * s) as f32;
            }
            bias[o] = (beta[o] as f64 + (bias[o] as f64 - mean[o] as f64) * s) as f32;
        }
    }
    let wt = g.weight(&format!("{name}.weight"), &[co, ci, kh, kw], &weight)?;
    let mut inputs = vec![x.to_string(), wt];
    if has_bias {
        inputs.push(g.weight(&format!("{name}.bias"), &[co], &bias)?);
    }
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let (ph, pw) = c.padding;
    let attrs = [
        Attr::Ints("kernel_shape", &[kh as i64, kw as i64]),
        Attr::Ints("strides", &[c.stride.0 as i64, c.stride.1 as i64]),
        Attr::Ints("pads", &[ph as i64, pw as i64, ph as i64, pw as i64]),
    ];
    g.node("Conv", &refs, name, &attrs)
}
