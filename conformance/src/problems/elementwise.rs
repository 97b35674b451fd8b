//! Elementwise ops (activations, unary ops, affine maps, axpy, elementwise losses,
//! rounding casts, sum of squares), broadcast binary ops and axis reductions.

use crate::gen::{dim, f32r, shape, with_data, Gen};
use crate::harness::{Cx, Problem};
use crate::tolerance::Tolerance;
use cim_core::backend::{BinaryOp, ReduceOp, UnaryOp};
use cim_core::ops::{self, Loss};
use cim_core::{Backend, DType, Result};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ElemOp {
    Gelu,
    GeluBackward,
    Relu,
    ReluBackward,
    Unary(UnaryOp),
    Affine { alpha: f64, beta: f64 },
    Axpy { alpha: f64 },
    Loss(Loss),
    LossBackward(Loss),
    Cast(DType),
    SumSquares,
}

pub const UNARY_OPS: [UnaryOp; 10] = [
    UnaryOp::Neg,
    UnaryOp::Exp,
    UnaryOp::Ln,
    UnaryOp::Sqrt,
    UnaryOp::Abs,
    UnaryOp::Square,
    UnaryOp::Recip,
    UnaryOp::Sigmoid,
    UnaryOp::Tanh,
    UnaryOp::Sign,
];

pub const BINARY_OPS: [BinaryOp; 6] =
    [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Max, BinaryOp::Min];

/// One elementwise op over tensors of one shape: `x` is the input (prediction,
/// logits), `u` the second operand (upstream gradient, target, axpy's `y`), `dl` the
/// upstream gradient of a loss.
#[derive(Clone, Debug)]
pub struct ElemProblem {
    pub op: ElemOp,
    pub shape: Vec<usize>,
    pub x: Vec<f64>,
    pub u: Vec<f64>,
    pub dl: Vec<f64>,
}

/// Tolerance of an elementwise result: `f32_for(4)` (a few roundings, a few ulps of a
/// transcendental) with the absolute floor scaled to the magnitude of the terms.
fn elem_tol(m: f64) -> Tolerance {
    Tolerance::f32_for(4).scale_abs(m)
}

impl Problem for ElemProblem {
    fn run<B: Backend>(&self, cx: &mut Cx<'_, B>) -> Result<()> {
        let b = cx.b;
        let x = cx.t(&self.shape, &self.x)?;
        let u = cx.t(&self.shape, &self.u)?;
        let zmax = crate::gen::max_abs(&self.x);
        match self.op {
            ElemOp::Gelu => cx.out("y", &ops::gelu(b, &x)?, elem_tol(1.0)),
            ElemOp::GeluBackward => cx.out("dx", &ops::gelu_backward(b, &x, &u)?, elem_tol(2.0)),
            ElemOp::Relu => cx.out("y", &ops::relu(b, &x)?, elem_tol(1.0)),
            ElemOp::ReluBackward => cx.out("dx", &ops::relu_backward(b, &x, &u)?, elem_tol(1.0)),
            ElemOp::Unary(op) => cx.out("y", &ops::unary(b, op, &x)?, elem_tol(1.0)),
            ElemOp::Affine { alpha, beta } => {
                cx.out("y", &ops::affine(b, &x, alpha, beta)?, elem_tol(2.0 * alpha.abs() + beta.abs()))
            }
            ElemOp::Axpy { alpha } => {
                let mut y = u;
                ops::axpy(b, alpha, &x, &mut y)?;
                cx.out("y", &y, elem_tol(2.0 * alpha.abs() + 2.0))
            }
            ElemOp::Loss(kind) => {
                // BCE: max(z, 0) − z·t + ln(1 + e^−|z|) cancels terms of size |z|.
                let m = if kind == Loss::L2 { 16.0 } else { 1.0 + zmax };
                cx.out("loss", &ops::loss(b, kind, &x, &u)?, elem_tol(m))
            }
            ElemOp::LossBackward(kind) => {
                let dl = cx.t(&self.shape, &self.dl)?;
                cx.out("dpred", &ops::loss_backward(b, kind, &x, &u, &dl)?, elem_tol(8.0))
            }
            ElemOp::Cast(dtype) => cx.out_exact("y", &ops::cast(b, &x, dtype)?),
            ElemOp::SumSquares => {
                cx.out("sum", &ops::sum_squares(b, &x)?, Tolerance::f32_for(self.x.len()).scale_abs(4.0))
            }
        }
    }
}

/// Values that exercise rounding to `f16`/`bf16`: random magnitudes from `2⁻³⁰` to
/// `2²⁰` (subnormal and overflowing `f16`), exact ties of both formats, signed zeros,
/// infinities, NaN, and the largest `f32`.
fn cast_values(g: &mut Gen, n: usize) -> Vec<f64> {
    const SPECIAL: [f64; 12] = [
        0.0,
        -0.0,
        1.0 + 1.0 / 2048.0, // f16 tie, rounds to even (down)
        1.0 + 3.0 / 2048.0, // f16 tie, rounds to even (up)
        1.0 + 1.0 / 256.0,  // bf16 tie (down)
        -(1.0 + 3.0 / 256.0),
        65504.0, // largest f16
        65520.0, // rounds to f16 infinity
        5.960464477539063e-8,
        f64::INFINITY,
        f64::NAN,
        f32::MAX as f64,
    ];
    (0..n)
        .map(|i| {
            if g.below(4) == 0 {
                SPECIAL[i % SPECIAL.len()]
            } else {
                let e = g.range(0, 50) as i32 - 30;
                f32r(g.f(-2.0, 2.0) * 2f64.powi(e))
            }
        })
        .collect()
}

fn elem(op: ElemOp) -> impl Strategy<Value = ElemProblem> {
    with_data((Just(op), shape(4)), |(op, shape), g: &mut Gen| {
        let n: usize = shape.iter().product();
        let x = match op {
            ElemOp::Unary(UnaryOp::Ln | UnaryOp::Sqrt | UnaryOp::Recip) => g.vec(n, 0.05, 4.0),
            // Exact zeros (and −0) test the strict `x > 0` of ReLU and Sign(0) = 0.
            ElemOp::Relu | ElemOp::ReluBackward | ElemOp::Unary(UnaryOp::Sign | UnaryOp::Abs) => {
                g.std(n).into_iter().map(|v| [v, v, v, 0.0, -0.0][g.below(5)]).collect()
            }
            ElemOp::Loss(Loss::BceWithLogits) | ElemOp::LossBackward(Loss::BceWithLogits) => {
                let s = g.pick(&[2.0, 20.0]);
                g.vec(n, -s, s)
            }
            ElemOp::Cast(_) => cast_values(g, n),
            _ => g.std(n),
        };
        let u = match op {
            ElemOp::Loss(Loss::BceWithLogits) | ElemOp::LossBackward(Loss::BceWithLogits) => g.vec(n, 0.0, 1.0),
            // L1 targets stay 0.01 away from the prediction: sign(p − t) is unambiguous.
            ElemOp::Loss(Loss::L1) | ElemOp::LossBackward(Loss::L1) => {
                let off = g.away(n, 0.01, 2.0);
                x.iter().zip(off).map(|(p, o)| f32r(p + o)).collect()
            }
            _ => g.std(n),
        };
        ElemProblem { op, shape, u, dl: g.std(n), x }
    })
}

pub fn gelu() -> impl Strategy<Value = ElemProblem> {
    elem(ElemOp::Gelu)
}
pub fn gelu_backward() -> impl Strategy<Value = ElemProblem> {
    elem(ElemOp::GeluBackward)
}
pub fn relu() -> impl Strategy<Value = ElemProblem> {
    elem(ElemOp::Relu)
}
pub fn relu_backward() -> impl Strategy<Value = ElemProblem> {
    elem(ElemOp::ReluBackward)
}
pub fn unary() -> impl Strategy<Value = ElemProblem> {
    proptest::sample::select(&UNARY_OPS[..]).prop_flat_map(|op| elem(ElemOp::Unary(op)))
}
pub fn affine() -> impl Strategy<Value = ElemProblem> {
    let ab = (-3.0f64..3.0, prop_oneof![Just(0.0), -3.0f64..3.0]);
    ab.prop_flat_map(|(alpha, beta)| elem(ElemOp::Affine { alpha, beta }))
}
pub fn axpy() -> impl Strategy<Value = ElemProblem> {
    (-3.0f64..3.0).prop_flat_map(|alpha| elem(ElemOp::Axpy { alpha }))
}
pub fn bce_with_logits() -> impl Strategy<Value = ElemProblem> {
    elem(ElemOp::Loss(Loss::BceWithLogits))
}
pub fn bce_with_logits_backward() -> impl Strategy<Value = ElemProblem> {
    elem(ElemOp::LossBackward(Loss::BceWithLogits))
}
pub fn l1_loss() -> impl Strategy<Value = ElemProblem> {
    elem(ElemOp::Loss(Loss::L1))
}
pub fn l1_loss_backward() -> impl Strategy<Value = ElemProblem> {
    elem(ElemOp::LossBackward(Loss::L1))
}
pub fn l2_loss() -> impl Strategy<Value = ElemProblem> {
    elem(ElemOp::Loss(Loss::L2))
}
pub fn l2_loss_backward() -> impl Strategy<Value = ElemProblem> {
    elem(ElemOp::LossBackward(Loss::L2))
}
pub fn cast() -> impl Strategy<Value = ElemProblem> {
    proptest::sample::select(&[DType::F16, DType::BF16, DType::F32, DType::F64][..])
        .prop_flat_map(|d| elem(ElemOp::Cast(d)))
}
pub fn sum_squares() -> impl Strategy<Value = ElemProblem> {
    elem(ElemOp::SumSquares)
}

/// `a op b` with NumPy broadcasting: every axis of each operand is the output's size or
/// 1, and an operand may have fewer axes (left-padded with 1). Divisors stay at least
/// 0.25 from zero; `Max`/`Min` see distinct values.
#[derive(Clone, Debug)]
pub struct BinaryProblem {
    pub op: BinaryOp,
    pub a_shape: Vec<usize>,
    pub b_shape: Vec<usize>,
    pub a: Vec<f64>,
    pub b: Vec<f64>,
}

impl Problem for BinaryProblem {
    fn run<B: Backend>(&self, cx: &mut Cx<'_, B>) -> Result<()> {
        let (a, b) = (cx.t(&self.a_shape, &self.a)?, cx.t(&self.b_shape, &self.b)?);
        cx.out("out", &ops::binary(cx.b, self.op, &a, &b)?, Tolerance::f32_for(1).scale_abs(4.0))
    }
}

/// A random broadcast of `out`: each axis kept or set to 1, then some leading axes dropped.
pub fn broadcast_operand(g: &mut Gen, out: &[usize]) -> Vec<usize> {
    let mut s: Vec<usize> = out.iter().map(|&d| if g.below(3) == 0 { 1 } else { d }).collect();
    let drop = g.below(s.len() + 1).min(s.iter().take_while(|&&d| d == 1).count());
    s.drain(..drop);
    s
}

pub fn binary() -> impl Strategy<Value = BinaryProblem> {
    with_data((proptest::sample::select(&BINARY_OPS[..]), shape(4)), |(op, out), g: &mut Gen| {
        let (a_shape, b_shape) = (broadcast_operand(g, &out), broadcast_operand(g, &out));
        let (na, nb) = (a_shape.iter().product::<usize>(), b_shape.iter().product::<usize>());
        let (a, b) = match op {
            BinaryOp::Div => (g.std(na), g.away(nb, 0.25, 2.0)),
            BinaryOp::Max | BinaryOp::Min => {
                let mut v = g.distinct(na + nb, -2.0, 2.0);
                let b = v.split_off(na);
                (v, b)
            }
            _ => (g.std(na), g.std(nb)),
        };
        BinaryProblem { op, a_shape, b_shape, a, b }
    })
}

/// `ops::reduce` over a random axis of a rank-1 to 4 tensor, with or without the axis
/// kept. `Max` is a selection: exact.
#[derive(Clone, Debug)]
pub struct ReduceProblem {
    pub op: ReduceOp,
    pub shape: Vec<usize>,
    pub axis: usize,
    pub keep_dim: bool,
    pub x: Vec<f64>,
}

impl Problem for ReduceProblem {
    fn run<B: Backend>(&self, cx: &mut Cx<'_, B>) -> Result<()> {
        let y = ops::reduce(cx.b, self.op, &cx.t(&self.shape, &self.x)?, self.axis, self.keep_dim)?;
        let k = self.shape[self.axis];
        match self.op {
            ReduceOp::Max => cx.out_exact("y", &y),
            ReduceOp::Sum => cx.out("y", &y, Tolerance::f32_for(k).scale_abs(2.0)),
            ReduceOp::Mean => cx.out("y", &y, Tolerance::f32_for(k).scale_abs(2.0 / k as f64)),
        }
    }
}

pub fn reduce() -> impl Strategy<Value = ReduceProblem> {
    let ops = proptest::sample::select(&[ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max][..]);
    let shape = prop_oneof![
        4 => shape(4),
        1 => (dim(), 10usize..=100).prop_map(|(a, b)| vec![a, b]),
        1 => (dim(), 1000usize..=50000).prop_map(|(a, b)| vec![a, b]),
        1 => (1000usize..=5000, dim(), dim()).prop_map(|(a, b, c)| vec![a, b, c]),
    ];
    with_data((ops, shape, any::<prop::sample::Index>(), any::<bool>()), |(op, shape, axis, keep_dim), g: &mut Gen| {
        let axis = axis.index(shape.len());
        let x = g.std(shape.iter().product());
        ReduceProblem { op, shape, axis, keep_dim, x }
    })
}
