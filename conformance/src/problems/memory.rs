//! Memory ops: allocation, upload/download, copies and fills through views at offsets,
//! index buffers.

use crate::gen::{dim_to, with_data, Gen};
use crate::harness::{Check, Cx, Problem, Values};
use crate::tolerance::Tolerance;
use cim_core::tensor::{View, ViewMut};
use cim_core::{ops, Backend, Element, IndexTensor, Result, Tensor};
use proptest::prelude::*;

#[derive(Clone, Debug)]
pub struct MemoryProblem {
    pub data: Vec<f64>,
    pub ids: Vec<u32>,
    /// A window `[start, start + len)` of `data` copied into a second buffer at `dst`.
    pub start: usize,
    pub len: usize,
    pub dst: usize,
    pub fill: f64,
    pub pad: usize,
}

impl Problem for MemoryProblem {
    fn run<B: Backend>(&self, cx: &mut Cx<'_, B>) -> Result<()> {
        let b = cx.b;
        let n = self.data.len();
        let t = cx.t(&[n], &self.data)?;
        cx.out_exact("upload → download", &t)?;
        cx.out_exact("duplicate (copy)", &t.duplicate(b)?)?;
        cx.out_exact("alloc (zero-filled)", &Tensor::<B>::zeros(b, &[n])?)?;
        let mut f = cx.t(&[n], &self.data)?;
        ops::fill(b, &mut f, self.fill)?;
        cx.out_exact("fill", &f)?;
        // Copy a window between offset views; fill a window of the destination.
        let src = cx.slot(&self.data, self.pad)?;
        let mut dst = cx.slot(&vec![-1.0; n], self.pad + 1)?;
        let sv = src.view();
        let win = View { buf: sv.buf, offset: sv.offset + self.start, len: self.len };
        let dv = dst.view_mut();
        b.copy(win, ViewMut { buf: dv.buf, offset: dv.offset + self.dst, len: self.len })?;
        cx.out_slot("copy between offset views", &dst, Tolerance::EXACT)?;
        let dv = dst.view_mut();
        b.fill(ViewMut { buf: dv.buf, offset: dv.offset + self.dst, len: self.len }, B::E::of(self.fill))?;
        cx.out_slot("fill of an offset view", &dst, Tolerance::EXACT)?;
        let part = b.download(win)?.into_iter().map(B::E::f64).collect();
        cx.record("download of an offset view", Values::F(part), Check::Exact);
        // Index buffers.
        let ids = cx.ids(&[self.ids.len()], &self.ids)?;
        cx.out_ids("upload_idx → download_idx", &ids, Check::Exact)?;
        cx.out_ids("alloc_idx (zero-filled)", &IndexTensor::<B>::zeros(b, &[self.ids.len()])?, Check::Exact)?;
        let lens = vec![b.len(t.buf()) as u32, b.len_idx(&b.alloc_idx(self.ids.len())?) as u32];
        cx.record("len, len_idx", Values::I(lens), Check::Exact);
        Ok(())
    }
}

pub fn memory() -> impl Strategy<Value = MemoryProblem> {
    let n = prop_oneof![7 => dim_to(64), 1 => 1000usize..=100_000];
    with_data((n, dim_to(16)), |(n, n_ids), g: &mut Gen| {
        let start = g.below(n);
        let len = g.range(0, n - start);
        MemoryProblem {
            data: g.std(n),
            ids: (0..n_ids).map(|_| g.u32()).collect(),
            start,
            len,
            dst: g.range(0, n - len),
            fill: g.f(-2.0, 2.0),
            pad: g.range(1, 4),
        }
    })
}
