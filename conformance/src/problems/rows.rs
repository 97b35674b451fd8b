//! Ops over the last axis of `[..., d]`: softmax and log-softmax with their backward
//! passes, cross-entropy and its backward, argmax, and Gumbel-max sampling.

use super::{host, host_vec, ref32};
use crate::gen::{dim, dim_to, max_abs, with_data, Gen};
use crate::harness::{Check, Cx, Problem};
use crate::tolerance::Tolerance;
use cim_core::{ops, Backend, Result, Tensor};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RowOp {
    Softmax,
    SoftmaxBackward,
    LogSoftmax,
    LogSoftmaxBackward,
    CrossEntropy,
    CrossEntropyBackward,
    Argmax,
    Sample { temperature: f64, seed: u64, offset: u64 },
}

#[derive(Clone, Debug)]
pub struct RowsProblem {
    pub op: RowOp,
    /// Leading dims (rank 0 to 2); the rows are their product.
    pub lead: Vec<usize>,
    pub d: usize,
    /// Logits (or the input of the forward op).
    pub x: Vec<f64>,
    /// Upstream gradient: `[..., d]`, or `[...]` for cross-entropy.
    pub dy: Vec<f64>,
    /// The forward output, input of the softmax backward passes.
    pub y: Vec<f64>,
    pub targets: Vec<u32>,
}

impl RowsProblem {
    fn shape(&self) -> Vec<usize> {
        let mut s = self.lead.clone();
        s.push(self.d);
        s
    }
}

impl Problem for RowsProblem {
    fn run<B: Backend>(&self, cx: &mut Cx<'_, B>) -> Result<()> {
        let shape = self.shape();
        let x = cx.t(&shape, &self.x)?;
        let d = self.d;
        // exp(x − max) amplifies the rounding of `x − max` (|x − max| ≤ 2·range) into a
        // relative error of the same size: the condition number of the softmax.
        let range = max_abs(&self.x);
        let cond = 1.0 + range;
        let b = cx.b;
        match self.op {
            RowOp::Softmax => cx.out("y", &ops::softmax(b, &x)?, Tolerance::f32_for(d).times(cond)),
            RowOp::LogSoftmax => {
                cx.out("y", &ops::log_softmax(b, &x)?, Tolerance::f32_for(d).scale_abs(1.0 + 2.0 * range))
            }
            RowOp::SoftmaxBackward | RowOp::LogSoftmaxBackward => {
                let (y, dy) = (cx.t(&shape, &self.y)?, cx.t(&shape, &self.dy)?);
                let dx = if self.op == RowOp::SoftmaxBackward {
                    ops::softmax_backward(b, &y, &dy)?
                } else {
                    ops::log_softmax_backward(b, &y, &dy)?
                };
                cx.out("dx", &dx, Tolerance::f32_for(d + 1).scale_abs(2.0))
            }
            RowOp::CrossEntropy | RowOp::CrossEntropyBackward => {
                let t = cx.ids(&self.lead, &self.targets)?;
                if self.op == RowOp::CrossEntropy {
                    return cx.out(
                        "loss",
                        &ops::cross_entropy(b, &x, &t)?,
                        Tolerance::f32_for(d).scale_abs(1.0 + 2.0 * range),
                    );
                }
                let dl = cx.t(&self.lead, &self.dy)?;
                let dx = ops::cross_entropy_backward(b, &x, &t, &dl)?;
                cx.out("dlogits", &dx, Tolerance::f32_for(d).times(cond).scale_abs(2.0))
            }
            RowOp::Argmax => cx.out_ids("argmax", &ops::argmax(b, &x)?, Check::Exact),
            RowOp::Sample { temperature, seed, offset } => {
                cx.out_ids("samples", &ops::sample_categorical(b, &x, temperature, seed, offset)?, Check::ExactInE)
            }
        }
    }
}

/// Rows problems of one op; logits in `[-2, 2]` or, for the softmax family and the
/// losses, sometimes `[-20, 20]` (saturated rows).
fn rows(op: RowOp) -> impl Strategy<Value = RowsProblem> {
    let lead = proptest::collection::vec(dim(), 0..=2);
    let d = prop_oneof![6 => dim(), 2 => 10usize..=40, 1 => 500usize..=5000];
    with_data((Just(op), lead, d), |(op, lead, d), g: &mut Gen| {
        let rows: usize = lead.iter().product();
        let scale = if g.bool() { 2.0 } else { 20.0 };
        let x = match op {
            RowOp::Argmax => g.distinct(rows * d, -2.0, 2.0),
            _ => g.vec(rows * d, -scale, scale),
        };
        let dy_len = if matches!(op, RowOp::CrossEntropyBackward) { rows } else { rows * d };
        let dy = g.std(dy_len);
        let y = match op {
            RowOp::SoftmaxBackward | RowOp::LogSoftmaxBackward => {
                let r = ref32();
                let mut s = lead.clone();
                s.push(d);
                let xt = host(Tensor::from_f64(&r, &s, &x));
                let y = if op == RowOp::SoftmaxBackward { ops::softmax(&r, &xt) } else { ops::log_softmax(&r, &xt) };
                host_vec(&host(y))
            }
            _ => vec![],
        };
        let targets = g.ids(rows, d);
        RowsProblem { op, lead, d, x, dy, y, targets }
    })
}

pub fn softmax() -> impl Strategy<Value = RowsProblem> {
    rows(RowOp::Softmax)
}
pub fn softmax_backward() -> impl Strategy<Value = RowsProblem> {
    rows(RowOp::SoftmaxBackward)
}
pub fn log_softmax() -> impl Strategy<Value = RowsProblem> {
    rows(RowOp::LogSoftmax)
}
pub fn log_softmax_backward() -> impl Strategy<Value = RowsProblem> {
    rows(RowOp::LogSoftmaxBackward)
}
pub fn cross_entropy() -> impl Strategy<Value = RowsProblem> {
    rows(RowOp::CrossEntropy)
}
pub fn cross_entropy_backward() -> impl Strategy<Value = RowsProblem> {
    rows(RowOp::CrossEntropyBackward)
}
pub fn argmax() -> impl Strategy<Value = RowsProblem> {
    rows(RowOp::Argmax)
}

/// Gumbel-max sampling at random temperatures, seeds and counter offsets (including
/// offsets near `2⁶⁴`, where counters wrap); checked bit for bit against `Reference<E>`.
pub fn sample_categorical() -> impl Strategy<Value = RowsProblem> {
    let offset = prop_oneof![0u64..1000, any::<u64>(), (u64::MAX - 64)..=u64::MAX];
    let op = (0usize..4, any::<u64>(), offset).prop_map(|(t, seed, offset)| RowOp::Sample {
        temperature: [1.0, 0.5, 2.0, 0.7][t],
        seed,
        offset,
    });
    op.prop_flat_map(rows)
}

/// `rand_uniform` at random seeds and offsets; checked bit for bit.
#[derive(Clone, Debug)]
pub struct RandProblem {
    pub shape: Vec<usize>,
    pub seed: u64,
    pub offset: u64,
}

impl Problem for RandProblem {
    fn run<B: Backend>(&self, cx: &mut Cx<'_, B>) -> Result<()> {
        cx.out_exact("uniform", &ops::rand_uniform(cx.b, &self.shape, self.seed, self.offset)?)
    }
}

pub fn rand_uniform() -> impl Strategy<Value = RandProblem> {
    let offset = prop_oneof![0u64..1000, any::<u64>(), (u64::MAX - 64)..=u64::MAX];
    (proptest::collection::vec(dim_to(40), 1..=3), any::<u64>(), offset).prop_map(|(shape, seed, offset)| RandProblem {
        shape,
        seed,
        offset,
    })
}
