//! RESPIX sliding-window statistics: mean and variance over `k×k` windows clipped to
//! the image, and their gradient.

use super::{host, host_vec, ref32};
use crate::gen::{dim, dim_to, with_data, Gen};
use crate::harness::{Cx, Problem};
use crate::tolerance::Tolerance;
use cim_core::{ops, Backend, Result, Tensor};
use proptest::prelude::*;

/// Windows of `k` from 1 to 9 (odd and even) over images of 1 to 9 pixels a side, so
/// windows are often larger than the image.
#[derive(Clone, Debug)]
pub struct WindowProblem {
    pub backward: bool,
    pub shape: [usize; 4],
    pub k: usize,
    pub x: Vec<f64>,
    /// Backward: the saved mean (from the reference forward), `dmean`, `dvar`.
    pub mean: Vec<f64>,
    pub dmean: Vec<f64>,
    pub dvar: Vec<f64>,
}

/// The fewest in-image pixels of any clipped window along an axis of length `len`.
fn min_span(k: usize, len: usize) -> usize {
    (0..len).map(|i| (i + (k - 1) / 2 + 1).min(len) - i.saturating_sub(k / 2)).min().unwrap_or(1)
}

impl Problem for WindowProblem {
    fn run<B: Backend>(&self, cx: &mut Cx<'_, B>) -> Result<()> {
        let x = cx.t(&self.shape, &self.x)?;
        let k2 = self.k * self.k;
        if !self.backward {
            let (mean, var) = ops::window_stats(cx.b, &x, self.k)?;
            cx.out("mean", &mean, Tolerance::f32_for(k2).scale_abs(2.0))?;
            // A one-pass variance cancels terms of size mean(x²) ≤ 4.
            return cx.out("var", &var, Tolerance::f32_for(k2).scale_abs(4.0));
        }
        let t = |v: &[f64]| cx.t(&self.shape, v);
        let (mean, dmean, dvar) = (t(&self.mean)?, t(&self.dmean)?, t(&self.dvar)?);
        let dx = ops::window_stats_backward(cx.b, &x, self.k, &mean, &dmean, &dvar)?;
        // dx sums ≤ k² terms (dmean + 2·dvar·(x − mean)) / n, each ≤ 18 / n_min.
        let n_min = min_span(self.k, self.shape[2]) * min_span(self.k, self.shape[3]);
        cx.out("dx", &dx, Tolerance::f32_for(k2).scale_abs(18.0 / n_min as f64))
    }
}

fn window(backward: bool) -> impl Strategy<Value = WindowProblem> {
    let sizes = prop_oneof![
        7 => (dim_to(2), dim_to(3), dim(), dim()),
        1 => (1usize..=2, 8usize..=16, 48usize..=96, 48usize..=96),
    ];
    with_data((Just(backward), sizes, 1usize..=9), |(backward, (n, c, h, w), k), g: &mut Gen| {
        let shape = [n, c, h, w];
        let len = n * c * h * w;
        let x = g.std(len);
        let mean = if backward {
            let r = ref32();
            host_vec(&host(ops::window_stats(&r, &host(Tensor::from_f64(&r, &shape, &x)), k)).0)
        } else {
            vec![]
        };
        WindowProblem { backward, shape, k, x, mean, dmean: g.std(len), dvar: g.std(len) }
    })
}

pub fn window_stats() -> impl Strategy<Value = WindowProblem> {
    window(false)
}
pub fn window_stats_backward() -> impl Strategy<Value = WindowProblem> {
    window(true)
}
