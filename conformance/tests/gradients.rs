//! Finite-difference proofs of every backward op, in `f64` on the reference backend.
//!
//! For each op `y = f(x)` with a backward, we draw a random input and a random upstream
//! gradient `dy`, compute the analytic gradient with the backward op (or, for ops whose
//! gradient is a composition of forward ops — unary ops, broadcasting binary ops,
//! reductions, matmul — with that composition), and compare it with central
//! differences of `L(x) = ⟨dy, f(x)⟩` (see `cim_conformance::fd` for `ε = 1e-6` and
//! the tolerance `1e-6·(1 + |g|)`). Inputs keep away from kinks (ReLU, |·| and sign at
//! 0, ties of max pooling, `p = t` of the L1 loss) by more than `ε`.

use cim_conformance::fd::fd_check;
use cim_conformance::gen::{
    anchor_groups, conv_geom, dim, dim_to, f32r, nchw_channel_index, pool_geom, small_shape, Gen,
};
use cim_conformance::harness::{run_cases, suite_cases};
use cim_conformance::problems::elementwise::{broadcast_operand, BINARY_OPS, UNARY_OPS};
use cim_core::backend::{BinaryOp, ReduceOp, UnaryOp};
use cim_core::ops::{self, Loss};
use cim_core::{IndexTensor, Reference, Tensor};
use proptest::prelude::*;
use proptest::strategy::Strategy;

type R = Reference<f64>;
type Res = Result<(), String>;

/// The `f64` reference backend.
fn r() -> R {
    Reference::new()
}

fn t(shape: &[usize], data: &[f64]) -> Tensor<R> {
    Tensor::from_f64(&r(), shape, data).expect("upload")
}

fn v(x: &Tensor<R>) -> Vec<f64> {
    x.to_f64(&r()).expect("download")
}

fn ids(shape: &[usize], data: &[u32]) -> IndexTensor<R> {
    IndexTensor::from_slice(&r(), shape, data).expect("upload")
}

/// Run a gradient test over a third of the suite's case count (16 by default), each
/// case a geometry and a seed for the values.
fn grad_test<S: Strategy>(name: &str, params: S, test: impl Fn(S::Value, &mut Gen) -> Res)
where
    S::Value: std::fmt::Debug,
{
    let cases = suite_cases().div_ceil(3);
    run_cases(name, cases, (params, any::<u64>()), |(p, seed)| test(p, &mut Gen::new(seed)));
}

/// Check the analytic gradient (a tensor) of `L = ⟨dy, f(x)⟩` with respect to `x`.
fn check(what: &str, f: impl Fn(&[f64]) -> Vec<f64>, x: &[f64], dy: &[f64], analytic: &Tensor<R>) -> Res {
    fd_check(f, x, dy, &v(analytic)).map_err(|e| format!("gradient w.r.t. {what}: {e}"))
}

fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

#[test]
fn matmul() {
    let params = (dim_to(3), dim(), dim(), dim(), any::<bool>(), any::<bool>(), 0usize..4);
    grad_test("matmul", params, |(batch, m, n, k, ta, tb, ranks), g| {
        let op = |bt: Option<usize>, r: usize, c: usize, tr: bool| {
            let (r, c) = if tr { (c, r) } else { (r, c) };
            bt.map_or(vec![r, c], |n| vec![n, r, c])
        };
        let a_shape = op((ranks & 1 == 1).then_some(batch), m, k, ta);
        let b_shape = op((ranks & 2 == 2).then_some(batch), k, n, tb);
        let (a, b) = (g.std(numel(&a_shape)), g.std(numel(&b_shape)));
        let (at, bt) = (t(&a_shape, &a), t(&b_shape, &b));
        let c = ops::matmul(&r(), &at, &bt, ta, tb).unwrap();
        let dc = g.std(c.numel());
        let dct = t(c.shape(), &dc);
        // C = op(A)·op(B): dop(A) = dC·op(B)ᵀ, dop(B) = op(A)ᵀ·dC, transposed back when
        // the operand is stored transposed; a broadcast operand sums over the batch.
        let da = if ta { ops::matmul(&r(), &bt, &dct, tb, true) } else { ops::matmul(&r(), &dct, &bt, false, !tb) };
        let db = if tb { ops::matmul(&r(), &dct, &at, true, ta) } else { ops::matmul(&r(), &at, &dct, !ta, false) };
        let da = ops::sum_to_shape(&r(), &da.unwrap(), &a_shape).unwrap();
        let db = ops::sum_to_shape(&r(), &db.unwrap(), &b_shape).unwrap();
        check("A", |x| v(&ops::matmul(&r(), &t(&a_shape, x), &bt, ta, tb).unwrap()), &a, &dc, &da)?;
        check("B", |x| v(&ops::matmul(&r(), &at, &t(&b_shape, x), ta, tb).unwrap()), &b, &dc, &db)
    });
}

#[test]
fn conv2d() {
    grad_test("conv2d", conv_geom(2, 3, 6), |cg, g| {
        let (xs, ws) = (cg.x_shape(), cg.w_shape());
        let (x, w, bias) = (g.std(numel(&xs)), g.std(numel(&ws)), g.std(cg.c_out));
        let dy = g.std(numel(&cg.y_shape()));
        let (s, p) = (cg.stride, cg.pad);
        let (xt, wt, bt) = (t(&xs, &x), t(&ws, &w), t(&[cg.c_out], &bias));
        let (dx, dw, db) = ops::conv2d_backward(&r(), &xt, &wt, &t(&cg.y_shape(), &dy), s, p).unwrap();
        let conv = |x: &Tensor<R>, w: &Tensor<R>, b: &Tensor<R>| v(&ops::conv2d(&r(), x, w, Some(b), s, p).unwrap());
        check("x", |e| conv(&t(&xs, e), &wt, &bt), &x, &dy, &dx)?;
        check("w", |e| conv(&xt, &t(&ws, e), &bt), &w, &dy, &dw)?;
        check("bias", |e| conv(&xt, &wt, &t(&[cg.c_out], e)), &bias, &dy, &db)
    });
}

#[test]
fn batch_norm_train() {
    let params = (dim_to(2), dim_to(3), dim_to(4), dim_to(4));
    grad_test("batch_norm_train", params, |(n, c, h, w), g| {
        let (n, shape) = if n * h * w == 1 { (2, [2, c, h, w]) } else { (n, [n, c, h, w]) };
        let mut x = g.std(numel(&shape));
        anchor_groups(&mut x, c, n * h * w, 1.5, nchw_channel_index(c, h * w));
        let (gamma, beta, dy) = (g.std(c), g.std(c), g.std(x.len()));
        let eps = 1e-5;
        let bn = |x: &[f64], gm: &[f64], bt: &[f64]| {
            let (mut rm, mut rv) = (t(&[c], &vec![0.0; c]), t(&[c], &vec![1.0; c]));
            ops::batch_norm_train(&r(), &t(&shape, x), &t(&[c], gm), &t(&[c], bt), &mut rm, &mut rv, eps, 0.1).unwrap()
        };
        let (_, mean, invstd) = bn(&x, &gamma, &beta);
        let (dx, dg, db) =
            ops::batch_norm_backward(&r(), &t(&shape, &x), &t(&shape, &dy), &t(&[c], &gamma), &mean, &invstd, eps)
                .unwrap();
        check("x", |e| v(&bn(e, &gamma, &beta).0), &x, &dy, &dx)?;
        check("gamma", |e| v(&bn(&x, e, &beta).0), &gamma, &dy, &dg)?;
        check("beta", |e| v(&bn(&x, &gamma, e).0), &beta, &dy, &db)
    });
}

#[test]
fn layer_norm() {
    grad_test("layer_norm", (dim_to(4), 1usize..=12), |(rows, d), g| {
        let shape = [rows, d];
        let mut x = g.std(rows * d);
        anchor_groups(&mut x, rows, d, 1.5, |r, j| r * d + j);
        let (gamma, beta, dy) = (g.std(d), g.std(d), g.std(rows * d));
        let ln = |x: &[f64], gm: &[f64], bt: &[f64]| {
            ops::layer_norm(&r(), &t(&shape, x), &t(&[d], gm), &t(&[d], bt), 1e-5).unwrap()
        };
        let (_, mean, rstd) = ln(&x, &gamma, &beta);
        let (dx, dg, db) =
            ops::layer_norm_backward(&r(), &t(&shape, &x), &t(&shape, &dy), &t(&[d], &gamma), &mean, &rstd).unwrap();
        check("x", |e| v(&ln(e, &gamma, &beta).0), &x, &dy, &dx)?;
        check("gamma", |e| v(&ln(&x, e, &beta).0), &gamma, &dy, &dg)?;
        check("beta", |e| v(&ln(&x, &gamma, e).0), &beta, &dy, &db)
    });
}

/// Softmax and log-softmax over rows of logits in `[-8, 8]`, backward from the output.
fn softmax_family(name: &str, log: bool) {
    grad_test(name, (dim_to(4), dim()), |(rows, d), g| {
        let shape = [rows, d];
        let (x, dy) = (g.vec(rows * d, -8.0, 8.0), g.std(rows * d));
        let f = |x: &Tensor<R>| if log { ops::log_softmax(&r(), x) } else { ops::softmax(&r(), x) }.unwrap();
        let y = f(&t(&shape, &x));
        let dyt = t(&shape, &dy);
        let dx = if log { ops::log_softmax_backward(&r(), &y, &dyt) } else { ops::softmax_backward(&r(), &y, &dyt) };
        check("x", |e| v(&f(&t(&shape, e))), &x, &dy, &dx.unwrap())
    });
}

#[test]
fn softmax() {
    softmax_family("softmax", false);
}

#[test]
fn log_softmax() {
    softmax_family("log_softmax", true);
}

/// Activations `gelu` and `relu` (inputs at least 0.01 away from ReLU's kink).
#[test]
fn activations() {
    grad_test("activations", (small_shape(2), any::<bool>()), |(shape, relu), g| {
        let n = numel(&shape);
        let (x, dy) = (if relu { g.away(n, 0.01, 2.0) } else { g.vec(n, -4.0, 4.0) }, g.std(n));
        let (xt, dyt) = (t(&shape, &x), t(&shape, &dy));
        let f = |x: &Tensor<R>| if relu { ops::relu(&r(), x) } else { ops::gelu(&r(), x) }.unwrap();
        let dx = if relu { ops::relu_backward(&r(), &xt, &dyt) } else { ops::gelu_backward(&r(), &xt, &dyt) };
        check(if relu { "x (relu)" } else { "x (gelu)" }, |e| v(&f(&t(&shape, e))), &x, &dy, &dx.unwrap())
    });
}

#[test]
fn max_pool2d() {
    grad_test("max_pool2d", pool_geom(2, 6), |pg, g| {
        let (xs, ys) = (pg.x_shape(), pg.y_shape());
        // Distinct values at least 4/len apart: ε = 1e-6 never changes a window's argmax.
        let (x, dy) = (g.distinct(numel(&xs), -2.0, 2.0), g.std(numel(&ys)));
        let pool = |x: &[f64]| ops::max_pool2d(&r(), &t(&xs, x), pg.k, pg.stride, pg.pad).unwrap();
        let (_, idx) = pool(&x);
        let dx = ops::max_pool2d_backward(&r(), &xs, &t(&ys, &dy), &idx, pg.k, pg.stride, pg.pad).unwrap();
        check("x", |e| v(&pool(e).0), &x, &dy, &dx)
    });
}

#[test]
fn avg_pool2d() {
    grad_test("avg_pool2d", pool_geom(2, 6), |pg, g| {
        let (xs, ys) = (pg.x_shape(), pg.y_shape());
        let (x, dy) = (g.std(numel(&xs)), g.std(numel(&ys)));
        let (k, s, p, cip) = (pg.k, pg.stride, pg.pad, pg.count_include_pad);
        let dx = ops::avg_pool2d_backward(&r(), &xs, &t(&ys, &dy), k, s, p, cip).unwrap();
        check("x", |e| v(&ops::avg_pool2d(&r(), &t(&xs, e), k, s, p, cip).unwrap()), &x, &dy, &dx)
    });
}

#[test]
fn global_avg_pool_and_upsample() {
    grad_test(
        "global_avg_pool_and_upsample",
        (dim_to(2), dim_to(3), dim(), dim(), 1usize..=3),
        |(n, c, h, w, s), g| {
            let xs = [n, c, h, w];
            let x = g.std(numel(&xs));
            let dy = g.std(n * c);
            let dx = ops::global_avg_pool_backward(&r(), &xs, &t(&[n, c], &dy)).unwrap();
            check("x (global_avg_pool)", |e| v(&ops::global_avg_pool(&r(), &t(&xs, e)).unwrap()), &x, &dy, &dx)?;
            let ys = [n, c, h * s, w * s];
            let dy = g.std(numel(&ys));
            let dx = ops::upsample_nearest_backward(&r(), &xs, &t(&ys, &dy), s).unwrap();
            check("x (upsample_nearest)", |e| v(&ops::upsample_nearest(&r(), &t(&xs, e), s).unwrap()), &x, &dy, &dx)
        },
    );
}

#[test]
fn gather_rows() {
    grad_test("gather_rows", (dim_to(6), dim(), proptest::collection::vec(dim(), 1..=2)), |(vocab, d, id_shape), g| {
        let n = numel(&id_shape);
        let (table, id) = (g.std(vocab * d), g.ids(n, vocab));
        let it = ids(&id_shape, &id);
        let dy = g.std(n * d);
        let mut ys = id_shape.clone();
        ys.push(d);
        let dt = ops::scatter_add_rows(&r(), &it, &t(&ys, &dy), vocab).unwrap();
        check("table", |e| v(&ops::gather_rows(&r(), &t(&[vocab, d], e), &it).unwrap()), &table, &dy, &dt)
    });
}

/// The elementwise gradients of `out = a op b` (shaped like `out`), from forward ops.
fn binary_grads(op: BinaryOp, a: &Tensor<R>, b: &Tensor<R>, out: &Tensor<R>, dy: &Tensor<R>) -> (Tensor<R>, Tensor<R>) {
    let mask =
        |s: f64| ops::affine(&r(), &ops::unary(&r(), UnaryOp::Sign, &ops::sub(&r(), a, b).unwrap()).unwrap(), s, 0.5);
    let ga = match op {
        BinaryOp::Add | BinaryOp::Sub => ops::add(&r(), dy, &Tensor::zeros(&r(), out.shape()).unwrap()),
        BinaryOp::Mul => ops::mul(&r(), dy, b),
        BinaryOp::Div => ops::div(&r(), dy, b),
        BinaryOp::Max => ops::mul(&r(), dy, &mask(0.5).unwrap()),
        BinaryOp::Min => ops::mul(&r(), dy, &mask(-0.5).unwrap()),
    }
    .unwrap();
    let gb = match op {
        BinaryOp::Add => ga.duplicate(&r()),
        BinaryOp::Sub => ops::affine(&r(), &ga, -1.0, 0.0),
        BinaryOp::Mul => ops::mul(&r(), dy, a),
        BinaryOp::Div => ops::affine(&r(), &ops::div(&r(), &ops::mul(&r(), dy, out).unwrap(), b).unwrap(), -1.0, 0.0),
        BinaryOp::Max | BinaryOp::Min => ops::sub(&r(), dy, &ga),
    }
    .unwrap();
    (ga, gb)
}

#[test]
fn binary() {
    let params = (proptest::sample::select(&BINARY_OPS[..]), proptest::collection::vec(dim_to(4), 1..=3));
    grad_test("binary", params, |(op, out_shape), g| {
        let (a_shape, b_shape) = (broadcast_operand(g, &out_shape), broadcast_operand(g, &out_shape));
        let (na, nb) = (numel(&a_shape), numel(&b_shape));
        let (a, b) = match op {
            BinaryOp::Div => (g.std(na), g.away(nb, 0.5, 2.0)),
            // Distinct values: no ties between a and b, so max/min are differentiable.
            BinaryOp::Max | BinaryOp::Min => {
                let mut all = g.distinct(na + nb, -2.0, 2.0);
                let b = all.split_off(na);
                (all, b)
            }
            _ => (g.std(na), g.std(nb)),
        };
        let (at, bt) = (t(&a_shape, &a), t(&b_shape, &b));
        let out = ops::binary(&r(), op, &at, &bt).unwrap();
        let dy = g.std(out.numel());
        let (ga, gb) = binary_grads(op, &at, &bt, &out, &t(out.shape(), &dy));
        // A broadcast operand's gradient sums over the broadcast axes.
        let (ga, gb) =
            (ops::sum_to_shape(&r(), &ga, &a_shape).unwrap(), ops::sum_to_shape(&r(), &gb, &b_shape).unwrap());
        check("a", |e| v(&ops::binary(&r(), op, &t(&a_shape, e), &bt).unwrap()), &a, &dy, &ga)?;
        check("b", |e| v(&ops::binary(&r(), op, &at, &t(&b_shape, e)).unwrap()), &b, &dy, &gb)
    });
}

/// `dy · f'(x)` for a unary op, from forward ops.
fn unary_grad(op: UnaryOp, x: &Tensor<R>, dy: &Tensor<R>) -> Tensor<R> {
    let u = |op, x: &Tensor<R>| ops::unary(&r(), op, x).unwrap();
    let aff = |x: &Tensor<R>, a, b| ops::affine(&r(), x, a, b).unwrap();
    let mul = |x: &Tensor<R>, y: &Tensor<R>| ops::mul(&r(), x, y).unwrap();
    let div = |x: &Tensor<R>, y: &Tensor<R>| ops::div(&r(), x, y).unwrap();
    match op {
        UnaryOp::Neg => aff(dy, -1.0, 0.0),
        UnaryOp::Exp => mul(dy, &u(UnaryOp::Exp, x)),
        UnaryOp::Ln => div(dy, x),
        UnaryOp::Sqrt => div(dy, &aff(&u(UnaryOp::Sqrt, x), 2.0, 0.0)),
        UnaryOp::Abs => mul(dy, &u(UnaryOp::Sign, x)),
        UnaryOp::Square => mul(dy, &aff(x, 2.0, 0.0)),
        UnaryOp::Recip => aff(&div(dy, &u(UnaryOp::Square, x)), -1.0, 0.0),
        UnaryOp::Sigmoid => {
            let s = u(UnaryOp::Sigmoid, x);
            mul(dy, &mul(&s, &aff(&s, -1.0, 1.0)))
        }
        UnaryOp::Tanh => mul(dy, &aff(&u(UnaryOp::Square, &u(UnaryOp::Tanh, x)), -1.0, 1.0)),
        UnaryOp::Sign => aff(dy, 0.0, 0.0),
    }
}

#[test]
fn unary() {
    grad_test("unary", (proptest::sample::select(&UNARY_OPS[..]), small_shape(2)), |(op, shape), g| {
        let n = numel(&shape);
        let x = match op {
            UnaryOp::Ln | UnaryOp::Sqrt | UnaryOp::Recip => g.vec(n, 0.25, 4.0),
            UnaryOp::Abs | UnaryOp::Sign => g.away(n, 0.01, 2.0),
            _ => g.std(n),
        };
        let dy = g.std(n);
        let dx = unary_grad(op, &t(&shape, &x), &t(&shape, &dy));
        check(&format!("x ({op:?})"), |e| v(&ops::unary(&r(), op, &t(&shape, e)).unwrap()), &x, &dy, &dx)
    });
}

#[test]
fn reduce() {
    let params = (any::<bool>(), proptest::collection::vec(dim(), 1..=3), any::<prop::sample::Index>(), any::<bool>());
    grad_test("reduce", params, |(mean, shape, axis, keep), g| {
        let axis = axis.index(shape.len());
        let op = if mean { ReduceOp::Mean } else { ReduceOp::Sum };
        let x = g.std(numel(&shape));
        let mut kept = shape.clone();
        kept[axis] = 1;
        let dy = g.std(numel(&kept));
        // The gradient broadcasts dy back over the reduced axis (scaled by 1/n for Mean).
        let spread = ops::add(&r(), &Tensor::zeros(&r(), &shape).unwrap(), &t(&kept, &dy)).unwrap();
        let dx = ops::affine(&r(), &spread, if mean { 1.0 / shape[axis] as f64 } else { 1.0 }, 0.0).unwrap();
        check("x", |e| v(&ops::reduce(&r(), op, &t(&shape, e), axis, keep).unwrap()), &x, &dy, &dx)
    });
}

#[test]
fn window_stats() {
    grad_test("window_stats", (dim_to(2), dim_to(2), dim(), dim(), 1usize..=9), |(n, c, h, w, k), g| {
        let xs = [n, c, h, w];
        let len = numel(&xs);
        let (x, dmean, dvar) = (g.std(len), g.std(len), g.std(len));
        let (mean, _) = ops::window_stats(&r(), &t(&xs, &x), k).unwrap();
        let dx = ops::window_stats_backward(&r(), &t(&xs, &x), k, &mean, &t(&xs, &dmean), &t(&xs, &dvar)).unwrap();
        // L = ⟨dmean, mean(x)⟩ + ⟨dvar, var(x)⟩.
        let f = |e: &[f64]| {
            let (m, s) = ops::window_stats(&r(), &t(&xs, e), k).unwrap();
            [v(&m), v(&s)].concat()
        };
        check("x", f, &x, &[dmean, dvar].concat(), &dx)
    });
}

#[test]
fn cross_entropy() {
    grad_test("cross_entropy", (dim_to(4), dim()), |(rows, d), g| {
        let (x, target, dl) = (g.vec(rows * d, -8.0, 8.0), g.ids(rows, d), g.std(rows));
        let tt = ids(&[rows], &target);
        let dx = ops::cross_entropy_backward(&r(), &t(&[rows, d], &x), &tt, &t(&[rows], &dl)).unwrap();
        check("logits", |e| v(&ops::cross_entropy(&r(), &t(&[rows, d], e), &tt).unwrap()), &x, &dl, &dx)
    });
}

#[test]
fn losses() {
    let kinds = proptest::sample::select(&[Loss::BceWithLogits, Loss::L1, Loss::L2][..]);
    grad_test("losses", (kinds, small_shape(2)), |(kind, shape), g| {
        let n = numel(&shape);
        let pred = g.vec(n, -4.0, 4.0);
        let target = match kind {
            Loss::BceWithLogits => g.vec(n, 0.0, 1.0),
            // |p − t| ≥ 0.01: away from the kink of the L1 loss.
            Loss::L1 => pred.iter().zip(g.away(n, 0.01, 2.0)).map(|(p, o)| f32r(p + o)).collect(),
            Loss::L2 => g.std(n),
        };
        let (tt, dl) = (t(&shape, &target), g.std(n));
        let dx = ops::loss_backward(&r(), kind, &t(&shape, &pred), &tt, &t(&shape, &dl)).unwrap();
        check(&format!("pred ({kind:?})"), |e| v(&ops::loss(&r(), kind, &t(&shape, e), &tt).unwrap()), &pred, &dl, &dx)
    });
}
