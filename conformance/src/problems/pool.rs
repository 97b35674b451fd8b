//! Max and average pooling, global average pooling and nearest upsampling, forward
//! and backward.

use super::{host, ref32};
use crate::gen::{dim, dim_to, pool_geom, pool_geom_from, with_data, Gen, PoolGeom};
use crate::harness::{Check, Cx, Problem};
use crate::tolerance::Tolerance;
use cim_core::{ops, Backend, IndexTensor, Result, Tensor};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolOp {
    Max,
    MaxBackward,
    Avg,
    AvgBackward,
}

/// Pooling with kernels up to 5, stride up to 3 and padding up to `k / 2`; max pooling
/// sees distinct values (no ties, so the argmax is unambiguous).
#[derive(Clone, Debug)]
pub struct PoolProblem {
    pub op: PoolOp,
    pub g: PoolGeom,
    pub x: Vec<f64>,
    pub dy: Vec<f64>,
    /// Max-pooling indices for the backward pass (from the reference forward).
    pub idx: Vec<u32>,
}

impl Problem for PoolProblem {
    fn run<B: Backend>(&self, cx: &mut Cx<'_, B>) -> Result<()> {
        let g = &self.g;
        let (xs, ys) = (g.x_shape(), g.y_shape());
        let (k, s, p, cip) = (g.k, g.stride, g.pad, g.count_include_pad);
        // A window sums at most kh·kw terms; an input receives at most that many.
        let tol = Tolerance::f32_for(k.0 * k.1).scale_abs(2.0);
        let b = cx.b;
        match self.op {
            PoolOp::Max => {
                let (y, idx) = ops::max_pool2d(b, &cx.t(&xs, &self.x)?, k, s, p)?;
                cx.out_exact("y", &y)?;
                cx.out_ids("indices", &idx, Check::Exact)
            }
            PoolOp::Avg => cx.out("y", &ops::avg_pool2d(b, &cx.t(&xs, &self.x)?, k, s, p, cip)?, tol),
            PoolOp::MaxBackward => {
                let (dy, idx) = (cx.t(&ys, &self.dy)?, cx.ids(&ys, &self.idx)?);
                cx.out("dx", &ops::max_pool2d_backward(b, &xs, &dy, &idx, k, s, p)?, tol)
            }
            PoolOp::AvgBackward => {
                cx.out("dx", &ops::avg_pool2d_backward(b, &xs, &cx.t(&ys, &self.dy)?, k, s, p, cip)?, tol)
            }
        }
    }
}

fn pool(op: PoolOp) -> impl Strategy<Value = PoolProblem> {
    // Small; one time in eight large planes (beyond a backend's parallel chunk size).
    let geom = prop_oneof![7 => pool_geom(3, 9), 1 => pool_geom_from(1usize..=2, 8usize..=16, 32usize..=96)];
    with_data((Just(op), geom), |(op, g), r: &mut Gen| {
        let nx: usize = g.x_shape().iter().product();
        let x = if matches!(op, PoolOp::Max | PoolOp::MaxBackward) { r.distinct(nx, -2.0, 2.0) } else { r.std(nx) };
        let dy = r.std(g.y_shape().iter().product());
        let idx = if op == PoolOp::MaxBackward {
            let rf = ref32();
            let xt = host(Tensor::from_f64(&rf, &g.x_shape(), &x));
            let (_, idx): (_, IndexTensor<_>) = host(ops::max_pool2d(&rf, &xt, g.k, g.stride, g.pad));
            host(idx.to_vec(&rf))
        } else {
            vec![]
        };
        PoolProblem { op, g, x, dy, idx }
    })
}

pub fn max_pool2d() -> impl Strategy<Value = PoolProblem> {
    pool(PoolOp::Max)
}
pub fn max_pool2d_backward() -> impl Strategy<Value = PoolProblem> {
    pool(PoolOp::MaxBackward)
}
pub fn avg_pool2d() -> impl Strategy<Value = PoolProblem> {
    pool(PoolOp::Avg)
}
pub fn avg_pool2d_backward() -> impl Strategy<Value = PoolProblem> {
    pool(PoolOp::AvgBackward)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlaneOp {
    GlobalAvg,
    GlobalAvgBackward,
    Upsample,
    UpsampleBackward,
}

/// Per-plane ops over `x: [n, c, h, w]`: global average pooling and nearest upsampling
/// by `scale` (1 to 3).
#[derive(Clone, Debug)]
pub struct PlaneProblem {
    pub op: PlaneOp,
    pub shape: [usize; 4],
    pub scale: usize,
    pub x: Vec<f64>,
}

impl Problem for PlaneProblem {
    fn run<B: Backend>(&self, cx: &mut Cx<'_, B>) -> Result<()> {
        let [n, c, h, w] = self.shape;
        let s = self.scale;
        let b = cx.b;
        match self.op {
            PlaneOp::GlobalAvg => {
                let tol = Tolerance::f32_for(h * w).scale_abs(2.0 / (h * w) as f64);
                cx.out("y", &ops::global_avg_pool(b, &cx.t(&self.shape, &self.x)?)?, tol)
            }
            PlaneOp::GlobalAvgBackward => {
                let dx = ops::global_avg_pool_backward(b, &self.shape, &cx.t(&[n, c], &self.x)?)?;
                cx.out("dx", &dx, Tolerance::f32_for(1).scale_abs(2.0))
            }
            PlaneOp::Upsample => cx.out_exact("y", &ops::upsample_nearest(b, &cx.t(&self.shape, &self.x)?, s)?),
            PlaneOp::UpsampleBackward => {
                let dy = cx.t(&[n, c, h * s, w * s], &self.x)?;
                let dx = ops::upsample_nearest_backward(b, &self.shape, &dy, s)?;
                cx.out("dx", &dx, Tolerance::f32_for(s * s).scale_abs(2.0))
            }
        }
    }
}

fn plane(op: PlaneOp) -> impl Strategy<Value = PlaneProblem> {
    let sizes = prop_oneof![
        7 => (dim_to(2), dim_to(3), dim(), dim()),
        1 => (1usize..=2, 8usize..=32, 32usize..=64, 32usize..=64),
    ];
    with_data((Just(op), sizes, 1usize..=3), |(op, (n, c, h, w), scale), g: &mut Gen| {
        let len = match op {
            PlaneOp::GlobalAvgBackward => n * c,
            PlaneOp::UpsampleBackward => n * c * h * w * scale * scale,
            _ => n * c * h * w,
        };
        PlaneProblem { op, shape: [n, c, h, w], scale, x: g.std(len) }
    })
}

pub fn global_avg_pool() -> impl Strategy<Value = PlaneProblem> {
    plane(PlaneOp::GlobalAvg)
}
pub fn global_avg_pool_backward() -> impl Strategy<Value = PlaneProblem> {
    plane(PlaneOp::GlobalAvgBackward)
}
pub fn upsample_nearest() -> impl Strategy<Value = PlaneProblem> {
    plane(PlaneOp::Upsample)
}
pub fn upsample_nearest_backward() -> impl Strategy<Value = PlaneProblem> {
    plane(PlaneOp::UpsampleBackward)
}
