//! The checked, tensor-level API over any [`Backend`].
//!
//! Every function validates shapes and arguments and returns a typed [`Error`] on bad
//! input, then allocates its outputs and calls the backend kernel. This is the public
//! face of the op set; layers and models may call kernels directly where shapes are
//! known by construction.
//!
//! Parameter-gradient outputs of the backward functions here are freshly zeroed
//! tensors (the kernels accumulate, so the result is the gradient itself).

use crate::backend::*;
use crate::element::{DType, Element};
use crate::error::{invalid, shape_err, Error, Result};
use crate::tensor::{IndexTensor, Tensor};
use alloc::format;
use alloc::vec::Vec;

// ---- validation helpers -----------------------------------------------------------------

fn rank<B: Backend>(op: &'static str, t: &Tensor<B>, r: usize) -> Result<()> {
    if t.rank() != r {
        return shape_err(op, format!("expected rank {r}, got shape {:?}", t.shape()));
    }
    Ok(())
}

fn same<B: Backend>(op: &'static str, a: &Tensor<B>, b: &Tensor<B>) -> Result<()> {
    if a.shape() != b.shape() {
        return shape_err(op, format!("shapes differ: {:?} vs {:?}", a.shape(), b.shape()));
    }
    Ok(())
}

fn dims_exact(op: &'static str, what: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got != want {
        return shape_err(op, format!("{what}: expected {want:?}, got {got:?}"));
    }
    Ok(())
}

fn positive(op: &'static str, what: &str, v: usize) -> Result<()> {
    if v == 0 {
        return invalid(op, format!("{what} must be positive"));
    }
    Ok(())
}

/// Split a tensor into `[rows, d]` over its last axis (rank ≥ 1, `d > 0`).
fn rows_last<B: Backend>(op: &'static str, x: &Tensor<B>) -> Result<(usize, usize)> {
    let d = match x.shape().last() {
        Some(&d) => d,
        None => return shape_err(op, "needs rank ≥ 1"),
    };
    positive(op, "the last axis", d)?;
    Ok((x.numel() / d, d))
}

fn alloc<B: Backend>(b: &B, shape: &[usize]) -> Result<Tensor<B>> {
    Tensor::zeros(b, shape)
}

fn check_ids<B: Backend>(op: &'static str, b: &B, ids: &IndexTensor<B>, bound: usize) -> Result<()> {
    if let Some(bad) = ids.to_vec(b)?.into_iter().find(|&i| i as usize >= bound) {
        return invalid(op, format!("index {bad} out of range 0..{bound}"));
    }
    Ok(())
}

/// Apply an elementwise kernel `f(x, y)` into a new tensor shaped like `x`.
fn map1<B: Backend>(
    b: &B,
    x: &Tensor<B>,
    f: impl FnOnce(&B, &Tensor<B>, &mut Tensor<B>) -> Result<()>,
) -> Result<Tensor<B>> {
    let mut y = alloc(b, x.shape())?;
    f(b, x, &mut y)?;
    Ok(y)
}

/// Apply `f(x, dy, dx)` after checking that `x` and `dy` agree.
fn map2<B: Backend>(
    op: &'static str,
    b: &B,
    x: &Tensor<B>,
    dy: &Tensor<B>,
    f: impl FnOnce(&B, &mut Tensor<B>) -> Result<()>,
) -> Result<Tensor<B>> {
    same(op, x, dy)?;
    let mut dx = alloc(b, x.shape())?;
    f(b, &mut dx)?;
    Ok(dx)
}

// ---- layout -----------------------------------------------------------------------------

/// `x.permute(perm)` (as PyTorch), materialized: output axis `a` is input axis `perm[a]`.
pub fn permute<B: Backend>(b: &B, x: &Tensor<B>, perm: &[usize]) -> Result<Tensor<B>> {
    let r = x.rank();
    let mut seen = alloc::vec![false; r];
    if perm.len() != r || perm.iter().any(|&p| p >= r || core::mem::replace(&mut seen[p], true)) {
        return invalid("permute", format!("{perm:?} is not a permutation of the {r} axes of {:?}", x.shape()));
    }
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let mut y = alloc(b, &shape)?;
    b.permute(x.shape(), perm, x.view(), y.view_mut())?;
    Ok(y)
}

// ---- linear algebra ---------------------------------------------------------------------

/// `op(a) · op(b)` for rank-2 or rank-3 operands (`[batch, rows, cols]`); a rank-2
/// operand is broadcast over the other's batch.
pub fn matmul<B: Backend>(b: &B, a: &Tensor<B>, bm: &Tensor<B>, trans_a: bool, trans_b: bool) -> Result<Tensor<B>> {
    const OP: &str = "matmul";
    let split = |t: &Tensor<B>| -> Result<(usize, usize, usize, bool)> {
        match *t.shape() {
            [r, c] => Ok((1, r, c, false)),
            [n, r, c] => Ok((n, r, c, true)),
            _ => shape_err(OP, format!("operands must have rank 2 or 3, got {:?}", t.shape())),
        }
    };
    let (na, ra, ca, ba) = split(a)?;
    let (nb, rb, cb, bb) = split(bm)?;
    let (m, ka) = if trans_a { (ca, ra) } else { (ra, ca) };
    let (kb, n) = if trans_b { (cb, rb) } else { (rb, cb) };
    if ka != kb {
        return shape_err(
            OP,
            format!("inner dimensions differ: {ka} vs {kb} (shapes {:?}, {:?})", a.shape(), bm.shape()),
        );
    }
    if ba && bb && na != nb {
        return shape_err(OP, format!("batch sizes differ: {na} vs {nb}"));
    }
    let batch = if ba { na } else { nb };
    let p = Gemm {
        batch,
        m,
        n,
        k: ka,
        trans_a,
        trans_b,
        stride_a: if ba { m * ka } else { 0 },
        stride_b: if bb { ka * n } else { 0 },
        stride_c: m * n,
        alpha: 1.0,
        beta: 0.0,
    };
    let shape: Vec<usize> = if ba || bb { alloc::vec![batch, m, n] } else { alloc::vec![m, n] };
    let mut c = alloc(b, &shape)?;
    b.gemm(&p, a.view(), bm.view(), c.view_mut())?;
    Ok(c)
}

/// The raw strided GEMM on tensors, `c = alpha·op(a)·op(b) + beta·c`, with the spans
/// of every operand checked against the buffers.
pub fn gemm<B: Backend>(b: &B, p: &Gemm, a: &Tensor<B>, bm: &Tensor<B>, c: &mut Tensor<B>) -> Result<()> {
    const OP: &str = "gemm";
    for (name, span, len) in [("A", p.span_a(), a.numel()), ("B", p.span_b(), bm.numel()), ("C", p.span_c(), c.numel())]
    {
        if span > len {
            return shape_err(OP, format!("operand {name} spans {span} elements, tensor holds {len}"));
        }
    }
    if p.batch > 1 && p.stride_c < p.m * p.n {
        return invalid(OP, "output matrices overlap (stride_c < m·n)");
    }
    b.gemm(p, a.view(), bm.view(), c.view_mut())
}

// ---- convolution ------------------------------------------------------------------------

/// Validate and describe a convolution of `x: [n, c, h, w]` with `w: [o, c, kh, kw]`.
pub fn conv2d_spec<B: Backend>(
    x: &Tensor<B>,
    w: &Tensor<B>,
    stride: (usize, usize),
    pad: (usize, usize),
) -> Result<Conv2d> {
    const OP: &str = "conv2d";
    rank(OP, x, 4)?;
    rank(OP, w, 4)?;
    let (xs, ws) = (x.shape(), w.shape());
    if xs[1] != ws[1] {
        return shape_err(OP, format!("input has {} channels, weight expects {}", xs[1], ws[1]));
    }
    positive(OP, "stride", stride.0.min(stride.1))?;
    for (d, v) in ws.iter().enumerate() {
        positive(OP, if d < 2 { "weight channels" } else { "kernel size" }, *v)?;
    }
    positive(OP, "batch", xs[0])?;
    if xs[2] + 2 * pad.0 < ws[2] || xs[3] + 2 * pad.1 < ws[3] {
        return shape_err(OP, format!("kernel {}×{} larger than padded input {:?} (pad {:?})", ws[2], ws[3], xs, pad));
    }
    Ok(Conv2d { n: xs[0], c_in: xs[1], h: xs[2], w: xs[3], c_out: ws[0], kh: ws[2], kw: ws[3], stride, pad })
}

pub fn conv2d<B: Backend>(
    b: &B,
    x: &Tensor<B>,
    w: &Tensor<B>,
    bias: Option<&Tensor<B>>,
    stride: (usize, usize),
    pad: (usize, usize),
) -> Result<Tensor<B>> {
    let p = conv2d_spec(x, w, stride, pad)?;
    if let Some(bt) = bias {
        dims_exact("conv2d", "bias", bt.shape(), &[p.c_out])?;
    }
    let mut y = alloc(b, &[p.n, p.c_out, p.out_h(), p.out_w()])?;
    b.conv2d(&p, x.view(), w.view(), bias.map(|t| t.view()), y.view_mut())?;
    Ok(y)
}

/// Gradients of [`conv2d`]: `(dx, dw, db)`.
pub fn conv2d_backward<B: Backend>(
    b: &B,
    x: &Tensor<B>,
    w: &Tensor<B>,
    dy: &Tensor<B>,
    stride: (usize, usize),
    pad: (usize, usize),
) -> Result<(Tensor<B>, Tensor<B>, Tensor<B>)> {
    let p = conv2d_spec(x, w, stride, pad)?;
    dims_exact("conv2d_backward", "dy", dy.shape(), &[p.n, p.c_out, p.out_h(), p.out_w()])?;
    let mut dx = alloc(b, x.shape())?;
    let mut dw = alloc(b, w.shape())?;
    let mut db = alloc(b, &[p.c_out])?;
    b.conv2d_grad_input(&p, dy.view(), w.view(), dx.view_mut())?;
    b.conv2d_grad_weight(&p, x.view(), dy.view(), dw.view_mut())?;
    b.conv2d_grad_bias(&p, dy.view(), db.view_mut())?;
    Ok((dx, dw, db))
}

// ---- normalization ----------------------------------------------------------------------

fn bn_spec<B: Backend>(
    op: &'static str,
    x: &Tensor<B>,
    per_channel: &[&Tensor<B>],
    eps: f64,
    momentum: f64,
) -> Result<BatchNorm> {
    if x.rank() < 2 {
        return shape_err(op, format!("expected [n, c, ...], got {:?}", x.shape()));
    }
    let (n, c) = (x.shape()[0], x.shape()[1]);
    positive(op, "batch", n)?;
    positive(op, "channels", c)?;
    for t in per_channel {
        dims_exact(op, "per-channel tensor", t.shape(), &[c])?;
    }
    if eps.is_nan() || eps <= 0.0 {
        return invalid(op, "eps must be positive");
    }
    Ok(BatchNorm { n, c, hw: x.numel() / (n * c), eps, momentum })
}

/// Training-mode batch norm: `(y, batch_mean, batch_invstd)`; updates the running statistics.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train<B: Backend>(
    b: &B,
    x: &Tensor<B>,
    gamma: &Tensor<B>,
    beta: &Tensor<B>,
    running_mean: &mut Tensor<B>,
    running_var: &mut Tensor<B>,
    eps: f64,
    momentum: f64,
) -> Result<(Tensor<B>, Tensor<B>, Tensor<B>)> {
    let p = bn_spec("batch_norm_train", x, &[gamma, beta, running_mean, running_var], eps, momentum)?;
    let mut y = alloc(b, x.shape())?;
    let mut mean = alloc(b, &[p.c])?;
    let mut invstd = alloc(b, &[p.c])?;
    b.batch_norm_train(
        &p,
        x.view(),
        gamma.view(),
        beta.view(),
        running_mean.view_mut(),
        running_var.view_mut(),
        y.view_mut(),
        mean.view_mut(),
        invstd.view_mut(),
    )?;
    Ok((y, mean, invstd))
}

pub fn batch_norm_eval<B: Backend>(
    b: &B,
    x: &Tensor<B>,
    gamma: &Tensor<B>,
    beta: &Tensor<B>,
    running_mean: &Tensor<B>,
    running_var: &Tensor<B>,
    eps: f64,
) -> Result<Tensor<B>> {
    let p = bn_spec("batch_norm_eval", x, &[gamma, beta, running_mean, running_var], eps, 0.0)?;
    let mut y = alloc(b, x.shape())?;
    b.batch_norm_eval(&p, x.view(), gamma.view(), beta.view(), running_mean.view(), running_var.view(), y.view_mut())?;
    Ok(y)
}

/// Gradients of [`batch_norm_train`]: `(dx, dgamma, dbeta)`.
pub fn batch_norm_backward<B: Backend>(
    b: &B,
    x: &Tensor<B>,
    dy: &Tensor<B>,
    gamma: &Tensor<B>,
    mean: &Tensor<B>,
    invstd: &Tensor<B>,
    eps: f64,
) -> Result<(Tensor<B>, Tensor<B>, Tensor<B>)> {
    let p = bn_spec("batch_norm_backward", x, &[gamma, mean, invstd], eps, 0.0)?;
    same("batch_norm_backward", x, dy)?;
    let mut dx = alloc(b, x.shape())?;
    let mut dg = alloc(b, &[p.c])?;
    let mut db = alloc(b, &[p.c])?;
    b.batch_norm_backward(
        &p,
        x.view(),
        dy.view(),
        gamma.view(),
        mean.view(),
        invstd.view(),
        dx.view_mut(),
        dg.view_mut(),
        db.view_mut(),
    )?;
    Ok((dx, dg, db))
}

/// Layer norm over the last axis: `(y, mean, rstd)` with one statistic per row.
pub fn layer_norm<B: Backend>(
    b: &B,
    x: &Tensor<B>,
    gamma: &Tensor<B>,
    beta: &Tensor<B>,
    eps: f64,
) -> Result<(Tensor<B>, Tensor<B>, Tensor<B>)> {
    const OP: &str = "layer_norm";
    let (rows, d) = rows_last(OP, x)?;
    dims_exact(OP, "gamma", gamma.shape(), &[d])?;
    dims_exact(OP, "beta", beta.shape(), &[d])?;
    if eps.is_nan() || eps <= 0.0 {
        return invalid(OP, "eps must be positive");
    }
    let mut y = alloc(b, x.shape())?;
    let mut mean = alloc(b, &[rows])?;
    let mut rstd = alloc(b, &[rows])?;
    b.layer_norm(rows, d, eps, x.view(), gamma.view(), beta.view(), y.view_mut(), mean.view_mut(), rstd.view_mut())?;
    Ok((y, mean, rstd))
}

/// Gradients of [`layer_norm`]: `(dx, dgamma, dbeta)`.
pub fn layer_norm_backward<B: Backend>(
    b: &B,
    x: &Tensor<B>,
    dy: &Tensor<B>,
    gamma: &Tensor<B>,
    mean: &Tensor<B>,
    rstd: &Tensor<B>,
) -> Result<(Tensor<B>, Tensor<B>, Tensor<B>)> {
    const OP: &str = "layer_norm_backward";
    let (rows, d) = rows_last(OP, x)?;
    same(OP, x, dy)?;
    dims_exact(OP, "gamma", gamma.shape(), &[d])?;
    dims_exact(OP, "mean", mean.shape(), &[rows])?;
    dims_exact(OP, "rstd", rstd.shape(), &[rows])?;
    let mut dx = alloc(b, x.shape())?;
    let mut dg = alloc(b, &[d])?;
    let mut db = alloc(b, &[d])?;
    b.layer_norm_backward(
        rows,
        d,
        x.view(),
        dy.view(),
        gamma.view(),
        mean.view(),
        rstd.view(),
        dx.view_mut(),
        dg.view_mut(),
        db.view_mut(),
    )?;
    Ok((dx, dg, db))
}

// ---- softmax and activations ------------------------------------------------------------

pub fn softmax<B: Backend>(b: &B, x: &Tensor<B>) -> Result<Tensor<B>> {
    let (rows, d) = rows_last("softmax", x)?;
    map1(b, x, |b, x, y| b.softmax(rows, d, x.view(), y.view_mut()))
}

/// Backward of [`softmax`] from its output `y`.
pub fn softmax_backward<B: Backend>(b: &B, y: &Tensor<B>, dy: &Tensor<B>) -> Result<Tensor<B>> {
    let (rows, d) = rows_last("softmax_backward", y)?;
    map2("softmax_backward", b, y, dy, |b, dx| b.softmax_backward(rows, d, y.view(), dy.view(), dx.view_mut()))
}

pub fn log_softmax<B: Backend>(b: &B, x: &Tensor<B>) -> Result<Tensor<B>> {
    let (rows, d) = rows_last("log_softmax", x)?;
    map1(b, x, |b, x, y| b.log_softmax(rows, d, x.view(), y.view_mut()))
}

/// Backward of [`log_softmax`] from its output `y`.
pub fn log_softmax_backward<B: Backend>(b: &B, y: &Tensor<B>, dy: &Tensor<B>) -> Result<Tensor<B>> {
    let (rows, d) = rows_last("log_softmax_backward", y)?;
    map2("log_softmax_backward", b, y, dy, |b, dx| b.log_softmax_backward(rows, d, y.view(), dy.view(), dx.view_mut()))
}

pub fn gelu<B: Backend>(b: &B, x: &Tensor<B>) -> Result<Tensor<B>> {
    map1(b, x, |b, x, y| b.gelu(x.view(), y.view_mut()))
}

pub fn gelu_backward<B: Backend>(b: &B, x: &Tensor<B>, dy: &Tensor<B>) -> Result<Tensor<B>> {
    map2("gelu_backward", b, x, dy, |b, dx| b.gelu_backward(x.view(), dy.view(), dx.view_mut()))
}

pub fn relu<B: Backend>(b: &B, x: &Tensor<B>) -> Result<Tensor<B>> {
    map1(b, x, |b, x, y| b.relu(x.view(), y.view_mut()))
}

pub fn relu_backward<B: Backend>(b: &B, x: &Tensor<B>, dy: &Tensor<B>) -> Result<Tensor<B>> {
    map2("relu_backward", b, x, dy, |b, dx| b.relu_backward(x.view(), dy.view(), dx.view_mut()))
}

// ---- pooling and resampling -------------------------------------------------------------

/// Validate and describe pooling of `x: [n, c, h, w]` with a `k` window.
pub fn pool2d_spec(
    op: &'static str,
    x_shape: &[usize],
    k: (usize, usize),
    stride: (usize, usize),
    pad: (usize, usize),
    count_include_pad: bool,
) -> Result<Pool2d> {
    if x_shape.len() != 4 {
        return shape_err(op, format!("expected [n, c, h, w], got {x_shape:?}"));
    }
    positive(op, "kernel size", k.0.min(k.1))?;
    positive(op, "stride", stride.0.min(stride.1))?;
    if pad.0 > k.0 / 2 || pad.1 > k.1 / 2 {
        return invalid(op, format!("padding {pad:?} exceeds half the kernel {k:?}"));
    }
    let (h, w) = (x_shape[2], x_shape[3]);
    if h + 2 * pad.0 < k.0 || w + 2 * pad.1 < k.1 {
        return shape_err(op, format!("window {k:?} larger than padded input {x_shape:?}"));
    }
    Ok(Pool2d { n: x_shape[0], c: x_shape[1], h, w, kh: k.0, kw: k.1, stride, pad, count_include_pad })
}

/// Max pooling: `(y, argmax indices)`.
pub fn max_pool2d<B: Backend>(
    b: &B,
    x: &Tensor<B>,
    k: (usize, usize),
    stride: (usize, usize),
    pad: (usize, usize),
) -> Result<(Tensor<B>, IndexTensor<B>)> {
    let p = pool2d_spec("max_pool2d", x.shape(), k, stride, pad, false)?;
    let shape = [p.n, p.c, p.out_h(), p.out_w()];
    let mut y = alloc(b, &shape)?;
    let mut idx = IndexTensor::zeros(b, &shape)?;
    b.max_pool2d(&p, x.view(), y.view_mut(), idx.view_mut())?;
    Ok((y, idx))
}

pub fn max_pool2d_backward<B: Backend>(
    b: &B,
    x_shape: &[usize],
    dy: &Tensor<B>,
    idx: &IndexTensor<B>,
    k: (usize, usize),
    stride: (usize, usize),
    pad: (usize, usize),
) -> Result<Tensor<B>> {
    const OP: &str = "max_pool2d_backward";
    let p = pool2d_spec(OP, x_shape, k, stride, pad, false)?;
    let shape = [p.n, p.c, p.out_h(), p.out_w()];
    dims_exact(OP, "dy", dy.shape(), &shape)?;
    dims_exact(OP, "indices", idx.shape(), &shape)?;
    check_ids(OP, b, idx, p.h * p.w)?;
    let mut dx = alloc(b, x_shape)?;
    b.max_pool2d_backward(&p, dy.view(), idx.view(), dx.view_mut())?;
    Ok(dx)
}

pub fn avg_pool2d<B: Backend>(
    b: &B,
    x: &Tensor<B>,
    k: (usize, usize),
    stride: (usize, usize),
    pad: (usize, usize),
    count_include_pad: bool,
) -> Result<Tensor<B>> {
    let p = pool2d_spec("avg_pool2d", x.shape(), k, stride, pad, count_include_pad)?;
    let mut y = alloc(b, &[p.n, p.c, p.out_h(), p.out_w()])?;
    b.avg_pool2d(&p, x.view(), y.view_mut())?;
    Ok(y)
}

pub fn avg_pool2d_backward<B: Backend>(
    b: &B,
    x_shape: &[usize],
    dy: &Tensor<B>,
    k: (usize, usize),
    stride: (usize, usize),
    pad: (usize, usize),
    count_include_pad: bool,
) -> Result<Tensor<B>> {
    let p = pool2d_spec("avg_pool2d_backward", x_shape, k, stride, pad, count_include_pad)?;
    dims_exact("avg_pool2d_backward", "dy", dy.shape(), &[p.n, p.c, p.out_h(), p.out_w()])?;
    let mut dx = alloc(b, x_shape)?;
    b.avg_pool2d_backward(&p, dy.view(), dx.view_mut())?;
    Ok(dx)
}

fn nchw(op: &'static str, s: &[usize]) -> Result<(usize, usize, usize)> {
    if s.len() != 4 {
        return shape_err(op, format!("expected [n, c, h, w], got {s:?}"));
    }
    Ok((s[0] * s[1], s[2], s[3]))
}

/// Mean over the spatial axes: `[n, c, h, w]` → `[n, c]`.
pub fn global_avg_pool<B: Backend>(b: &B, x: &Tensor<B>) -> Result<Tensor<B>> {
    let (nc, h, w) = nchw("global_avg_pool", x.shape())?;
    positive("global_avg_pool", "spatial size", h * w)?;
    let mut y = alloc(b, &x.shape()[..2])?;
    b.global_avg_pool(nc, h * w, x.view(), y.view_mut())?;
    Ok(y)
}

pub fn global_avg_pool_backward<B: Backend>(b: &B, x_shape: &[usize], dy: &Tensor<B>) -> Result<Tensor<B>> {
    let (nc, h, w) = nchw("global_avg_pool_backward", x_shape)?;
    dims_exact("global_avg_pool_backward", "dy", dy.shape(), &x_shape[..2])?;
    let mut dx = alloc(b, x_shape)?;
    b.global_avg_pool_backward(nc, h * w, dy.view(), dx.view_mut())?;
    Ok(dx)
}

pub fn upsample_nearest<B: Backend>(b: &B, x: &Tensor<B>, scale: usize) -> Result<Tensor<B>> {
    let (nc, h, w) = nchw("upsample_nearest", x.shape())?;
    positive("upsample_nearest", "scale", scale)?;
    let s = x.shape();
    let mut y = alloc(b, &[s[0], s[1], h * scale, w * scale])?;
    b.upsample_nearest(nc, h, w, scale, x.view(), y.view_mut())?;
    Ok(y)
}

pub fn upsample_nearest_backward<B: Backend>(
    b: &B,
    x_shape: &[usize],
    dy: &Tensor<B>,
    scale: usize,
) -> Result<Tensor<B>> {
    const OP: &str = "upsample_nearest_backward";
    let (nc, h, w) = nchw(OP, x_shape)?;
    positive(OP, "scale", scale)?;
    dims_exact(OP, "dy", dy.shape(), &[x_shape[0], x_shape[1], h * scale, w * scale])?;
    let mut dx = alloc(b, x_shape)?;
    b.upsample_nearest_backward(nc, h, w, scale, dy.view(), dx.view_mut())?;
    Ok(dx)
}

// ---- embedding --------------------------------------------------------------------------

/// `out[..., :] = table[ids[...], :]` for `table: [vocab, d]`; out-of-range ids are an error.
pub fn gather_rows<B: Backend>(b: &B, table: &Tensor<B>, ids: &IndexTensor<B>) -> Result<Tensor<B>> {
    rank("gather_rows", table, 2)?;
    let (vocab, d) = (table.shape()[0], table.shape()[1]);
    check_ids("gather_rows", b, ids, vocab)?;
    let mut shape = ids.shape().to_vec();
    shape.push(d);
    let mut out = alloc(b, &shape)?;
    b.gather_rows(d, table.view(), ids.view(), out.view_mut())?;
    Ok(out)
}

/// The adjoint of [`gather_rows`]: a `[vocab, d]` gradient with `src` rows summed per id.
pub fn scatter_add_rows<B: Backend>(b: &B, ids: &IndexTensor<B>, src: &Tensor<B>, vocab: usize) -> Result<Tensor<B>> {
    const OP: &str = "scatter_add_rows";
    let d = *src.shape().last().unwrap_or(&0);
    let mut want = ids.shape().to_vec();
    want.push(d);
    dims_exact(OP, "src", src.shape(), &want)?;
    check_ids(OP, b, ids, vocab)?;
    let mut table = alloc(b, &[vocab, d])?;
    b.scatter_add_rows(d, ids.view(), src.view(), table.view_mut())?;
    Ok(table)
}

// ---- elementwise, broadcast and reductions ----------------------------------------------

/// The NumPy broadcast of two shapes.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let r = a.len().max(b.len());
    let pad = |s: &[usize], i: usize| if i + s.len() >= r { s[i + s.len() - r] } else { 1 };
    (0..r)
        .map(|i| match (pad(a, i), pad(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            (x, y) => shape_err("broadcast", format!("{a:?} and {b:?} differ on axis {i} ({x} vs {y})")),
        })
        .collect()
}

fn left_pad(s: &[usize], r: usize) -> Vec<usize> {
    let mut v = alloc::vec![1; r - s.len()];
    v.extend_from_slice(s);
    v
}

/// `a op b` with NumPy broadcasting.
pub fn binary<B: Backend>(b: &B, op: BinaryOp, a: &Tensor<B>, bt: &Tensor<B>) -> Result<Tensor<B>> {
    let out_shape = broadcast_shape(a.shape(), bt.shape())?;
    let r = out_shape.len();
    let mut out = alloc(b, &out_shape)?;
    b.binary(op, a.view(), &left_pad(a.shape(), r), bt.view(), &left_pad(bt.shape(), r), out.view_mut(), &out_shape)?;
    Ok(out)
}

pub fn add<B: Backend>(b: &B, x: &Tensor<B>, y: &Tensor<B>) -> Result<Tensor<B>> {
    binary(b, BinaryOp::Add, x, y)
}
pub fn sub<B: Backend>(b: &B, x: &Tensor<B>, y: &Tensor<B>) -> Result<Tensor<B>> {
    binary(b, BinaryOp::Sub, x, y)
}
pub fn mul<B: Backend>(b: &B, x: &Tensor<B>, y: &Tensor<B>) -> Result<Tensor<B>> {
    binary(b, BinaryOp::Mul, x, y)
}
pub fn div<B: Backend>(b: &B, x: &Tensor<B>, y: &Tensor<B>) -> Result<Tensor<B>> {
    binary(b, BinaryOp::Div, x, y)
}

pub fn unary<B: Backend>(b: &B, op: UnaryOp, x: &Tensor<B>) -> Result<Tensor<B>> {
    map1(b, x, |b, x, y| b.unary(op, x.view(), y.view_mut()))
}

/// `alpha · x + beta`.
pub fn affine<B: Backend>(b: &B, x: &Tensor<B>, alpha: f64, beta: f64) -> Result<Tensor<B>> {
    map1(b, x, |b, x, y| b.affine(alpha, beta, x.view(), y.view_mut()))
}

/// `y += alpha · x` in place.
pub fn axpy<B: Backend>(b: &B, alpha: f64, x: &Tensor<B>, y: &mut Tensor<B>) -> Result<()> {
    same("axpy", x, y)?;
    b.axpy(alpha, x.view(), y.view_mut())
}

/// Reduce one axis; the result drops it (`keep_dim = false`) or keeps it as size 1.
pub fn reduce<B: Backend>(b: &B, op: ReduceOp, x: &Tensor<B>, axis: usize, keep_dim: bool) -> Result<Tensor<B>> {
    const OP: &str = "reduce";
    let s = x.shape();
    if axis >= s.len() {
        return shape_err(OP, format!("axis {axis} out of range for shape {s:?}"));
    }
    if s[axis] == 0 && op != ReduceOp::Sum {
        return invalid(OP, format!("{op:?} over an empty axis"));
    }
    let outer: usize = s[..axis].iter().product();
    let inner: usize = s[axis + 1..].iter().product();
    let mut shape = s.to_vec();
    if keep_dim {
        shape[axis] = 1;
    } else {
        shape.remove(axis);
    }
    let mut y = alloc(b, &shape)?;
    b.reduce(op, outer, s[axis], inner, x.view(), y.view_mut())?;
    Ok(y)
}

/// Sum or mean over all elements: a tensor of shape `[]`.
pub fn reduce_all<B: Backend>(b: &B, op: ReduceOp, x: &Tensor<B>) -> Result<Tensor<B>> {
    let flat = x.duplicate(b)?.reshape(&[x.numel()])?;
    reduce(b, op, &flat, 0, false)
}

/// Sum `x` down to `shape` (the adjoint of broadcasting `shape` to `x.shape()`).
pub fn sum_to_shape<B: Backend>(b: &B, x: &Tensor<B>, shape: &[usize]) -> Result<Tensor<B>> {
    let target = left_pad(shape, x.rank().max(shape.len()));
    if broadcast_shape(shape, x.shape())? != x.shape() {
        return shape_err("sum_to_shape", format!("{shape:?} does not broadcast to {:?}", x.shape()));
    }
    let mut cur = x.duplicate(b)?;
    for (axis, &t) in target.iter().enumerate() {
        if t == 1 && cur.shape()[axis] != 1 {
            cur = reduce(b, ReduceOp::Sum, &cur, axis, true)?;
        }
    }
    cur.reshape(shape)
}

// ---- RESPIX window statistics -----------------------------------------------------------

/// Sliding-window mean and variance over `k×k` windows of `x: [n, c, h, w]`.
pub fn window_stats<B: Backend>(b: &B, x: &Tensor<B>, k: usize) -> Result<(Tensor<B>, Tensor<B>)> {
    let (nc, h, w) = nchw("window_stats", x.shape())?;
    positive("window_stats", "window", k)?;
    let mut mean = alloc(b, x.shape())?;
    let mut var = alloc(b, x.shape())?;
    b.window_stats(nc, h, w, k, x.view(), mean.view_mut(), var.view_mut())?;
    Ok((mean, var))
}

pub fn window_stats_backward<B: Backend>(
    b: &B,
    x: &Tensor<B>,
    k: usize,
    mean: &Tensor<B>,
    dmean: &Tensor<B>,
    dvar: &Tensor<B>,
) -> Result<Tensor<B>> {
    const OP: &str = "window_stats_backward";
    let (nc, h, w) = nchw(OP, x.shape())?;
    positive(OP, "window", k)?;
    same(OP, x, mean)?;
    same(OP, x, dmean)?;
    same(OP, x, dvar)?;
    let mut dx = alloc(b, x.shape())?;
    b.window_stats_backward(nc, h, w, k, x.view(), mean.view(), dmean.view(), dvar.view(), dx.view_mut())?;
    Ok(dx)
}

// ---- losses -----------------------------------------------------------------------------

fn ce_spec<B: Backend>(
    op: &'static str,
    b: &B,
    logits: &Tensor<B>,
    targets: &IndexTensor<B>,
) -> Result<(usize, usize)> {
    let (rows, classes) = rows_last(op, logits)?;
    dims_exact(op, "targets", targets.shape(), &logits.shape()[..logits.rank() - 1])?;
    check_ids(op, b, targets, classes)?;
    Ok((rows, classes))
}

/// Cross-entropy per row of `logits: [..., classes]`, shaped like `targets`.
pub fn cross_entropy<B: Backend>(b: &B, logits: &Tensor<B>, targets: &IndexTensor<B>) -> Result<Tensor<B>> {
    let (rows, classes) = ce_spec("cross_entropy", b, logits, targets)?;
    let mut loss = alloc(b, targets.shape())?;
    b.cross_entropy(rows, classes, logits.view(), targets.view(), loss.view_mut())?;
    Ok(loss)
}

pub fn cross_entropy_backward<B: Backend>(
    b: &B,
    logits: &Tensor<B>,
    targets: &IndexTensor<B>,
    dloss: &Tensor<B>,
) -> Result<Tensor<B>> {
    const OP: &str = "cross_entropy_backward";
    let (rows, classes) = ce_spec(OP, b, logits, targets)?;
    dims_exact(OP, "dloss", dloss.shape(), targets.shape())?;
    let mut d = alloc(b, logits.shape())?;
    b.cross_entropy_backward(rows, classes, logits.view(), targets.view(), dloss.view(), d.view_mut())?;
    Ok(d)
}

/// Which elementwise loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Binary cross-entropy on logits (targets in `[0, 1]`).
    BceWithLogits,
    /// `|p - t|`.
    L1,
    /// `(p - t)²`.
    L2,
}

/// Elementwise loss between a prediction (or logits) and a target of the same shape.
pub fn loss<B: Backend>(b: &B, kind: Loss, pred: &Tensor<B>, target: &Tensor<B>) -> Result<Tensor<B>> {
    same("loss", pred, target)?;
    map1(b, pred, |b, p, l| match kind {
        Loss::BceWithLogits => b.bce_with_logits(p.view(), target.view(), l.view_mut()),
        Loss::L1 => b.l1_loss(p.view(), target.view(), l.view_mut()),
        Loss::L2 => b.l2_loss(p.view(), target.view(), l.view_mut()),
    })
}

/// Gradient of [`loss`] with respect to the prediction, given the upstream `dloss`.
pub fn loss_backward<B: Backend>(
    b: &B,
    kind: Loss,
    pred: &Tensor<B>,
    target: &Tensor<B>,
    dloss: &Tensor<B>,
) -> Result<Tensor<B>> {
    same("loss_backward", pred, target)?;
    map2("loss_backward", b, pred, dloss, |b, d| match kind {
        Loss::BceWithLogits => b.bce_with_logits_backward(pred.view(), target.view(), dloss.view(), d.view_mut()),
        Loss::L1 => b.l1_loss_backward(pred.view(), target.view(), dloss.view(), d.view_mut()),
        Loss::L2 => b.l2_loss_backward(pred.view(), target.view(), dloss.view(), d.view_mut()),
    })
}

// ---- randomness and selection -----------------------------------------------------------

/// One sample per row from `softmax(logits / temperature)`; shape `logits.shape()[..-1]`.
pub fn sample_categorical<B: Backend>(
    b: &B,
    logits: &Tensor<B>,
    temperature: f64,
    seed: u64,
    offset: u64,
) -> Result<IndexTensor<B>> {
    let (rows, classes) = rows_last("sample_categorical", logits)?;
    if !temperature.is_finite() || temperature <= 0.0 {
        return invalid("sample_categorical", format!("temperature must be positive and finite, got {temperature}"));
    }
    let mut out = IndexTensor::zeros(b, &logits.shape()[..logits.rank() - 1])?;
    b.sample_categorical(rows, classes, temperature, seed, offset, logits.view(), out.view_mut())?;
    Ok(out)
}

/// Uniform `[0, 1)` values at counters `offset ..` under `seed`.
pub fn rand_uniform<B: Backend>(b: &B, shape: &[usize], seed: u64, offset: u64) -> Result<Tensor<B>> {
    let mut t = alloc(b, shape)?;
    b.rand_uniform(seed, offset, t.view_mut())?;
    Ok(t)
}

/// Index of the first maximum over the last axis.
pub fn argmax<B: Backend>(b: &B, x: &Tensor<B>) -> Result<IndexTensor<B>> {
    let (rows, d) = rows_last("argmax", x)?;
    let mut out = IndexTensor::zeros(b, &x.shape()[..x.rank() - 1])?;
    b.argmax(rows, d, x.view(), out.view_mut())?;
    Ok(out)
}

// ---- precision and optimizer ------------------------------------------------------------

/// Round every value to the nearest one representable in `dtype`.
pub fn cast<B: Backend>(b: &B, x: &Tensor<B>, dtype: DType) -> Result<Tensor<B>> {
    map1(b, x, |b, x, y| b.cast(dtype, x.view(), y.view_mut()))
}

/// `Σ x²` as a `[1]` tensor (stays on the device).
pub fn sum_squares<B: Backend>(b: &B, x: &Tensor<B>) -> Result<Tensor<B>> {
    let mut out = alloc(b, &[1])?;
    b.sum_squares(x.view(), out.view_mut())?;
    Ok(out)
}

/// The global L2 norm of several gradient tensors (one host read).
pub fn global_norm<B: Backend>(b: &B, xs: &[&Tensor<B>]) -> Result<f64> {
    let mut total = 0.0;
    for x in xs {
        total += sum_squares(b, x)?.to_vec(b)?[0].f64();
    }
    Ok(libm::sqrt(total))
}

/// One fused AdamW step over `groups` of the flat buffers (all of one length).
#[allow(clippy::too_many_arguments)]
pub fn adamw<B: Backend>(
    b: &B,
    hp: &AdamW,
    groups: &[ParamGroup],
    params: &mut Tensor<B>,
    grads: &Tensor<B>,
    m: &mut Tensor<B>,
    v: &mut Tensor<B>,
    grad_scale: Option<&Tensor<B>>,
) -> Result<()> {
    const OP: &str = "adamw";
    same(OP, params, grads)?;
    same(OP, params, m)?;
    same(OP, params, v)?;
    if hp.step == 0 {
        return invalid(OP, "step counts from 1");
    }
    if !(0.0..1.0).contains(&hp.beta1) || !(0.0..1.0).contains(&hp.beta2) || hp.eps.is_nan() || hp.eps <= 0.0 {
        return invalid(OP, format!("bad hyper-parameters {hp:?}"));
    }
    let len = params.numel();
    // Empty groups touch nothing; they cannot overlap anything.
    let mut sorted: Vec<&ParamGroup> = groups.iter().filter(|g| g.len > 0).collect();
    sorted.sort_by_key(|g| g.offset);
    let mut end = 0;
    for g in sorted {
        if g.offset < end || g.offset + g.len > len {
            return invalid(OP, format!("group {g:?} overlaps another or leaves the buffer of {len}"));
        }
        end = g.offset + g.len;
    }
    if let Some(s) = grad_scale {
        dims_exact(OP, "grad_scale", s.shape(), &[1])?;
    }
    b.adamw(hp, groups, params.view_mut(), grads.view(), m.view_mut(), v.view_mut(), grad_scale.map(|s| s.view()))
}

/// Fill with a constant in place.
pub fn fill<B: Backend>(b: &B, x: &mut Tensor<B>, v: f64) -> Result<()> {
    b.fill(x.view_mut(), B::E::of(v))
}

/// Check every value is finite (downloads the tensor): NaN/inf become an error naming `what`.
pub fn check_finite<B: Backend>(b: &B, x: &Tensor<B>, what: &str) -> Result<()> {
    if x.to_vec(b)?.iter().all(|v| num_traits::Float::is_finite(*v)) {
        Ok(())
    } else {
        Err(Error::NonFinite { what: what.into() })
    }
}
