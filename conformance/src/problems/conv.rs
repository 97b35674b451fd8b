//! 2-D convolution: forward (with and without bias) and the three gradients.

use crate::gen::{conv_geom, conv_geom_from, with_data, ConvGeom, Gen};
use crate::harness::{Cx, Problem};
use crate::tolerance::Tolerance;
use cim_core::{ops, Backend, Result};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvOp {
    Forward,
    Backward,
}

/// A convolution with odd sizes, stride up to 3 and padding up to `k − 1`.
/// Forward: `ops::conv2d`, and the kernel with every operand at an offset (weights and
/// bias live in a flat parameter buffer). Backward: `ops::conv2d_backward`, and the
/// `grad_weight`/`grad_bias` kernels accumulating into prefilled buffers at an offset.
#[derive(Clone, Debug)]
pub struct ConvProblem {
    pub op: ConvOp,
    pub g: ConvGeom,
    pub x: Vec<f64>,
    pub w: Vec<f64>,
    pub bias: Option<Vec<f64>>,
    /// Upstream gradient (backward).
    pub dy: Vec<f64>,
    /// Prior contents of the accumulated `dw`, `db` (backward).
    pub dw0: Vec<f64>,
    pub db0: Vec<f64>,
    pub pad: usize,
}

impl Problem for ConvProblem {
    fn run<B: Backend>(&self, cx: &mut Cx<'_, B>) -> Result<()> {
        let g = &self.g;
        let x = cx.t(&g.x_shape(), &self.x)?;
        let w = cx.t(&g.w_shape(), &self.w)?;
        let spec = ops::conv2d_spec(&x, &w, g.stride, g.pad)?;
        // Terms per output: c_in·kh·kw for y; c_out·kh·kw for dx; n·oh·ow for dw, db.
        let (k_fwd, k_dx, k_dw) = (g.c_in * g.kh * g.kw, g.c_out * g.kh * g.kw, g.n * g.out_h() * g.out_w());
        match self.op {
            ConvOp::Forward => {
                let tol = Tolerance::f32_for(k_fwd + 1).scale_abs(4.0);
                let bias = self.bias.as_ref().map(|v| cx.t(&[g.c_out], v)).transpose()?;
                let y = ops::conv2d(cx.b, &x, &w, bias.as_ref(), g.stride, g.pad)?;
                cx.out("y", &y, tol)?;
                let (sx, sw) = (cx.slot(&self.x, self.pad)?, cx.slot(&self.w, self.pad + 1)?);
                let sb = self.bias.as_ref().map(|v| cx.slot(v, self.pad + 2)).transpose()?;
                let mut sy = cx.slot(&vec![0.0; spec.y_len()], self.pad + 3)?;
                cx.b.conv2d(&spec, sx.view(), sw.view(), sb.as_ref().map(|s| s.view()), sy.view_mut())?;
                cx.out_slot("y (kernel on offset views)", &sy, tol)
            }
            ConvOp::Backward => {
                let dy = cx.t(&g.y_shape(), &self.dy)?;
                let (dx, dw, db) = ops::conv2d_backward(cx.b, &x, &w, &dy, g.stride, g.pad)?;
                cx.out("dx", &dx, Tolerance::f32_for(k_dx).scale_abs(4.0))?;
                cx.out("dw", &dw, Tolerance::f32_for(k_dw).scale_abs(4.0))?;
                cx.out("db", &db, Tolerance::f32_for(k_dw).scale_abs(2.0))?;
                let (sx, sdy) = (cx.slot(&self.x, self.pad)?, cx.slot(&self.dy, self.pad + 1)?);
                let (mut sdw, mut sdb) = (cx.slot(&self.dw0, self.pad + 2)?, cx.slot(&self.db0, self.pad + 3)?);
                cx.b.conv2d_grad_weight(&spec, sx.view(), sdy.view(), sdw.view_mut())?;
                cx.b.conv2d_grad_bias(&spec, sdy.view(), sdb.view_mut())?;
                cx.out_slot(
                    "dw accumulated (kernel on offset views)",
                    &sdw,
                    Tolerance::f32_for(k_dw + 1).scale_abs(4.0),
                )?;
                cx.out_slot(
                    "db accumulated (kernel on offset views)",
                    &sdb,
                    Tolerance::f32_for(k_dw + 1).scale_abs(2.0),
                )
            }
        }
    }
}

fn build(op: ConvOp, g: ConvGeom, r: &mut Gen) -> ConvProblem {
    let x = r.std(g.x_shape().iter().product());
    let w = r.std(g.w_shape().iter().product());
    let bias = r.bool().then(|| r.std(g.c_out));
    let dy = if op == ConvOp::Backward { r.std(g.y_shape().iter().product()) } else { vec![] };
    let (dw0, db0) = (r.std(w.len()), r.std(g.c_out));
    ConvProblem { op, g, x, w, bias, dy, dw0, db0, pad: r.range(1, 4) }
}

/// Small geometries; one time in eight a larger one (more channels, images up to 32×32)
/// spanning several of a backend's im2col blocks; and one time in sixteen one of more
/// than 4 MFLOP, where a backend splits the work across threads.
fn geom() -> impl Strategy<Value = ConvGeom> {
    prop_oneof![
        14 => conv_geom(3, 5, 9),
        2 => conv_geom(12, 5, 32),
        1 => conv_geom_from(Just(2usize), 12usize..=16, 3, 32usize..=40),
    ]
}

pub fn conv2d() -> impl Strategy<Value = ConvProblem> {
    with_data(geom(), |g, r: &mut Gen| build(ConvOp::Forward, g, r))
}

pub fn conv2d_backward() -> impl Strategy<Value = ConvProblem> {
    with_data(geom(), |g, r: &mut Gen| build(ConvOp::Backward, g, r))
}
