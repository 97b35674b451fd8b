//! The fused AdamW step.

use crate::gen::{with_data, Gen};
use crate::harness::{Cx, Problem};
use crate::tolerance::Tolerance;
use cim_core::backend::{AdamW, ParamGroup};
use cim_core::{ops, Backend, Result};
use proptest::prelude::*;

/// A few consecutive AdamW steps over 1 to 3 disjoint groups (random order, gaps between
/// them that must stay untouched) with their own learning rate and weight decay, with
/// or without a device-side gradient scale.
#[derive(Clone, Debug)]
pub struct AdamWProblem {
    pub hp: AdamW,
    pub groups: Vec<ParamGroup>,
    pub params: Vec<f64>,
    pub m: Vec<f64>,
    pub v: Vec<f64>,
    /// One gradient per step.
    pub grads: Vec<Vec<f64>>,
    pub grad_scale: Option<f64>,
}

impl Problem for AdamWProblem {
    fn run<B: Backend>(&self, cx: &mut Cx<'_, B>) -> Result<()> {
        let n = [self.params.len()];
        let (mut p, mut m, mut v) = (cx.t(&n, &self.params)?, cx.t(&n, &self.m)?, cx.t(&n, &self.v)?);
        let scale = self.grad_scale.map(|s| cx.t(&[1], &[s])).transpose()?;
        for (i, g) in self.grads.iter().enumerate() {
            let hp = AdamW { step: self.hp.step + i as u64, ..self.hp };
            ops::adamw(cx.b, &hp, &self.groups, &mut p, &cx.t(&n, g)?, &mut m, &mut v, scale.as_ref())?;
        }
        // Each step is a handful of roundings per element; m̂/(√v̂ + eps) is O(1).
        let tol = Tolerance::f32_for(8 * self.grads.len()).scale_abs(4.0);
        cx.out("params", &p, tol)?;
        cx.out("m", &m, tol)?;
        cx.out("v", &v, tol)
    }
}

pub fn adamw() -> impl Strategy<Value = AdamWProblem> {
    let len = prop_oneof![7 => 1usize..=40, 1 => 1000usize..=100_000];
    with_data((len, 1usize..=3, 1usize..=3, any::<bool>()), |(len, n_groups, steps, scaled), g: &mut Gen| {
        // Disjoint, non-empty groups in increasing order with gaps (left untouched).
        let mut groups = Vec::new();
        let mut pos = g.range(0, 2).min(len - 1);
        while groups.len() < n_groups && pos < len {
            let glen = g.range(1, len - pos);
            let (lr, weight_decay) = (g.pick(&[1e-3, 1e-2, 0.1, 3e-4]), g.pick(&[0.0, 0.05, 0.3]));
            groups.push(ParamGroup { offset: pos, len: glen, lr, weight_decay });
            pos += glen + g.range(0, 2);
        }
        g.shuffle(&mut groups);
        let hp = AdamW {
            beta1: g.pick(&[0.9, 0.8, 0.0]),
            beta2: g.pick(&[0.999, 0.95]),
            eps: g.pick(&[1e-8, 1e-6]),
            step: g.range(1, 5) as u64,
        };
        AdamWProblem {
            hp,
            groups,
            params: g.std(len),
            m: g.vec(len, -0.1, 0.1),
            v: g.vec(len, 0.01, 0.5),
            grads: (0..steps).map(|_| g.std(len)).collect(),
            grad_scale: scaled.then(|| g.f(0.1, 2.0)),
        }
    })
}
