//! GEMM (strided, batched, broadcast, `alpha`/`beta`) and `matmul`.

use crate::gen::{dim, dim_to, with_data, Gen};
use crate::harness::{Cx, Problem};
use crate::tolerance::Tolerance;
use cim_core::backend::Gemm;
use cim_core::{ops, Backend, Result};
use proptest::prelude::*;

/// `ops::gemm` on packed tensors and the `gemm` kernel on views at an offset into
/// guarded buffers, with transposes, strides with gaps, stride-0 broadcast of `A` or
/// `B`, and `beta ≠ 0` accumulation (with `beta = 0` the old `C` may be NaN: never read).
#[derive(Clone, Debug)]
pub struct GemmProblem {
    pub p: Gemm,
    pub a: Vec<f64>,
    pub b: Vec<f64>,
    pub c: Vec<f64>,
    pub pad: usize,
}

impl GemmProblem {
    fn tol(&self) -> Tolerance {
        // k products of magnitude ≤ 4·|alpha|, plus beta·C with |C| ≤ 2.
        Tolerance::f32_for(self.p.k + 1).scale_abs(4.0 * self.p.alpha.abs() + 2.0 * self.p.beta.abs())
    }
}

impl Problem for GemmProblem {
    fn run<B: Backend>(&self, cx: &mut Cx<'_, B>) -> Result<()> {
        let (a, b) = (cx.t(&[self.a.len()], &self.a)?, cx.t(&[self.b.len()], &self.b)?);
        let mut c = cx.t(&[self.c.len()], &self.c)?;
        ops::gemm(cx.b, &self.p, &a, &b, &mut c)?;
        cx.out("C", &c, self.tol())?;
        let (sa, sb) = (cx.slot(&self.a, self.pad)?, cx.slot(&self.b, self.pad + 1)?);
        let mut sc = cx.slot(&self.c, self.pad + 2)?;
        cx.b.gemm(&self.p, sa.view(), sb.view(), sc.view_mut())?;
        cx.out_slot("C (kernel on offset views)", &sc, self.tol())
    }
}

pub fn gemm() -> impl Strategy<Value = GemmProblem> {
    let flags = (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>());
    let gaps = (0usize..=2, 0usize..=2, 0usize..=2);
    // Small, and one time in eight large enough (> 4 MFLOP) for a blocked, threaded GEMM.
    let sizes = prop_oneof![7 => (dim_to(3), dim(), dim(), dim()), 1 => (1usize..=2, 64usize..=160, 64usize..=160, 64usize..=160)];
    with_data((sizes, flags, gaps, 0usize..4, 0usize..4), |params, g: &mut Gen| {
        let ((batch, m, n, k), (trans_a, trans_b, bcast_a, bcast_b), (ga, gb, gc), ai, bi) = params;
        let alpha = [1.0, -0.5, 2.0, 0.3][ai];
        let beta = [0.0, 1.0, 0.5, -1.25][bi];
        let p = Gemm {
            batch,
            m,
            n,
            k,
            trans_a,
            trans_b,
            stride_a: if bcast_a { 0 } else { m * k + ga },
            stride_b: if bcast_b { 0 } else { k * n + gb },
            stride_c: m * n + gc,
            alpha,
            beta,
        };
        let c = if beta == 0.0 && g.bool() { vec![f64::NAN; p.span_c()] } else { g.std(p.span_c()) };
        GemmProblem { a: g.std(p.span_a()), b: g.std(p.span_b()), c, pad: g.range(1, 4), p }
    })
}

/// `ops::matmul` of rank-2/3 operands with transposes; a rank-2 operand broadcasts over
/// the other's batch.
#[derive(Clone, Debug)]
pub struct MatmulProblem {
    pub a_shape: Vec<usize>,
    pub b_shape: Vec<usize>,
    pub trans_a: bool,
    pub trans_b: bool,
    pub a: Vec<f64>,
    pub b: Vec<f64>,
    pub k: usize,
}

impl Problem for MatmulProblem {
    fn run<B: Backend>(&self, cx: &mut Cx<'_, B>) -> Result<()> {
        let a = cx.t(&self.a_shape, &self.a)?;
        let b = cx.t(&self.b_shape, &self.b)?;
        let c = ops::matmul(cx.b, &a, &b, self.trans_a, self.trans_b)?;
        cx.out("C", &c, Tolerance::f32_for(self.k).scale_abs(4.0))
    }
}

/// A matrix `rows×cols` stored transposed or not, with an optional batch.
fn operand(batch: Option<usize>, rows: usize, cols: usize, trans: bool) -> Vec<usize> {
    let (r, c) = if trans { (cols, rows) } else { (rows, cols) };
    batch.map_or(vec![r, c], |n| vec![n, r, c])
}

pub fn matmul() -> impl Strategy<Value = MatmulProblem> {
    let flags = (any::<bool>(), any::<bool>(), 0usize..4);
    let sizes = prop_oneof![7 => (dim_to(3), dim(), dim(), dim()), 1 => (1usize..=3, 32usize..=100, 32usize..=100, 32usize..=100)];
    with_data((sizes, flags), |((batch, m, n, k), (trans_a, trans_b, ranks)), g: &mut Gen| {
        // ranks: 0 = both rank 2, 1 = A batched, 2 = B batched, 3 = both batched.
        let a_shape = operand((ranks & 1 == 1).then_some(batch), m, k, trans_a);
        let b_shape = operand((ranks & 2 == 2).then_some(batch), k, n, trans_b);
        let (a, b) = (g.std(a_shape.iter().product()), g.std(b_shape.iter().product()));
        MatmulProblem { a_shape, b_shape, trans_a, trans_b, a, b, k }
    })
}
