//! `Mlp`: `fc1 → GELU → fc2`, as timm's `Mlp` (names `fc1.*`, `fc2.*`).

use super::{Gelu, GeluCache, Layer, Linear, LinearCache, Scope};
use crate::backend::Backend;
use crate::error::Result;
use crate::params::{Init, ParamTable};
use crate::tensor::Tensor;

/// Two linear layers with a GELU between them: `[..., dim] → [..., hidden] → [..., dim]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mlp {
    pub fc1: Linear,
    pub act: Gelu,
    pub fc2: Linear,
}

/// The caches of the three stages.
pub struct MlpCache<B: Backend> {
    pub fc1: LinearCache<B>,
    pub act: GeluCache<B>,
    pub fc2: LinearCache<B>,
}

impl Mlp {
    /// Register `{prefix}.fc1.{weight,bias}` (`[hidden, dim]`) and `{prefix}.fc2.*`
    /// (`[dim, hidden]`). timm's ViT uses `hidden = 4 · dim`.
    pub fn new(table: &mut ParamTable, prefix: &str, dim: usize, hidden: usize) -> Result<Self> {
        Self::build(&mut Scope::new(table, prefix), dim, hidden)
    }

    /// Share the tensors registered under `existing`.
    pub fn shared(table: &mut ParamTable, prefix: &str, existing: &str, dim: usize, hidden: usize) -> Result<Self> {
        Self::build(&mut Scope::shared(table, prefix, existing), dim, hidden)
    }

    /// Register in a scope (fresh or shared).
    pub fn build(s: &mut Scope<'_>, dim: usize, hidden: usize) -> Result<Self> {
        Ok(Mlp {
            fc1: Linear::build(&mut s.child("fc1"), dim, hidden, true, Init::TIMM)?,
            act: Gelu,
            fc2: Linear::build(&mut s.child("fc2"), hidden, dim, true, Init::TIMM)?,
        })
    }
}

impl<B: Backend> Layer<B> for Mlp {
    type Cache = MlpCache<B>;

    fn forward_owned(&self, b: &B, params: &B::Buf, x: Tensor<B>) -> Result<(Tensor<B>, MlpCache<B>)> {
        let (h, fc1) = self.fc1.forward_owned(b, params, x)?;
        let (g, act) = self.act.forward_owned(b, params, h)?;
        let (y, fc2) = self.fc2.forward_owned(b, params, g)?;
        Ok((y, MlpCache { fc1, act, fc2 }))
    }

    fn infer(&self, b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<Tensor<B>> {
        let h = self.fc1.infer(b, params, x)?;
        let g = self.act.infer(b, params, &h)?;
        self.fc2.infer(b, params, &g)
    }

    fn backward(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &MlpCache<B>,
        dy: &Tensor<B>,
    ) -> Result<Tensor<B>> {
        let dg = self.fc2.backward(b, params, grads, &cache.fc2, dy)?;
        let dh = self.act.backward(b, params, grads, &cache.act, &dg)?;
        self.fc1.backward(b, params, grads, &cache.fc1, &dh)
    }
}
