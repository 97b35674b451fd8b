//! Row gathers (embedding lookup) and their adjoint, the scatter-add of rows.

use crate::gen::{dim, dim_or, with_data, Gen};
use crate::harness::{Cx, Problem};
use crate::tolerance::Tolerance;
use cim_core::{ops, Backend, Result};
use proptest::prelude::*;

/// `table: [vocab, d]` and ids of rank 1 or 2, mostly with many repeats (vocab ≤ 9,
/// up to 81 ids), sometimes large.
#[derive(Clone, Debug)]
pub struct EmbeddingProblem {
    pub scatter: bool,
    pub vocab: usize,
    pub d: usize,
    pub ids_shape: Vec<usize>,
    pub ids: Vec<u32>,
    /// The table (gather) or the prior contents of the accumulated table (scatter).
    pub table: Vec<f64>,
    /// Rows to scatter: `[ids..., d]`.
    pub src: Vec<f64>,
    pub pad: usize,
}

impl Problem for EmbeddingProblem {
    fn run<B: Backend>(&self, cx: &mut Cx<'_, B>) -> Result<()> {
        let ids = cx.ids(&self.ids_shape, &self.ids)?;
        if !self.scatter {
            let table = cx.t(&[self.vocab, self.d], &self.table)?;
            return cx.out_exact("rows", &ops::gather_rows(cx.b, &table, &ids)?);
        }
        let mut shape = self.ids_shape.clone();
        shape.push(self.d);
        let src = cx.t(&shape, &self.src)?;
        // A row of the table sums at most one term per id.
        let tol = Tolerance::f32_for(self.ids.len() + 1).scale_abs(2.0);
        cx.out("table", &ops::scatter_add_rows(cx.b, &ids, &src, self.vocab)?, tol)?;
        let mut slot = cx.slot(&self.table, self.pad)?;
        cx.b.scatter_add_rows(self.d, ids.view(), src.view(), slot.view_mut())?;
        cx.out_slot("table accumulated (kernel on an offset view)", &slot, tol)
    }
}

fn embedding(scatter: bool) -> impl Strategy<Value = EmbeddingProblem> {
    let ids_shape = prop_oneof![
        7 => proptest::collection::vec(dim(), 1..=2),
        1 => (100usize..=2000).prop_map(|n| vec![n]),
    ];
    with_data(
        (Just(scatter), dim_or(100..=1000), dim_or(32..=256), ids_shape),
        |(scatter, vocab, d, ids_shape), g: &mut Gen| {
            let n: usize = ids_shape.iter().product();
            let ids = g.ids(n, vocab);
            let (table, src, pad) = (g.std(vocab * d), g.std(n * d), g.range(1, 4));
            EmbeddingProblem { scatter, vocab, d, ids_shape, ids, table, src, pad }
        },
    )
}

pub fn gather_rows() -> impl Strategy<Value = EmbeddingProblem> {
    embedding(false)
}
pub fn scatter_add_rows() -> impl Strategy<Value = EmbeddingProblem> {
    embedding(true)
}
