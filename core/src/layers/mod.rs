//! Layers with explicit forward and backward passes (no autograd tape).
//!
//! A layer holds [`Param`] handles (offsets into one flat parameter buffer) and its
//! hyper-parameters; it owns no memory. Its tensors are registered in a [`ParamTable`]
//! under PyTorch/timm names (`{prefix}.weight`, `{prefix}.qkv.bias`...), so that
//! checkpoints map one-to-one onto the PyTorch models.
//!
//! # Construction
//! Every layer with parameters has
//! - `new(table, prefix, ...)`, which registers fresh tensors, and
//! - `shared(table, prefix, existing_prefix, ...)`, which registers each tensor as an
//!   alias ([`ParamTable::alias`]) of the same tensor under `existing_prefix` (weight
//!   sharing between two models: both read the same values and accumulate into the
//!   same gradient range). Shapes are checked against the existing tensors.
//!
//! Both go through a [`Scope`], which models can use to build their own sub-trees.
//!
//! # Forward and backward
//! Layers implement [`Layer`]:
//! - `forward(b, params, &x)` returns the output and a cache of what the backward pass
//!   needs (it copies `x` into the cache when the backward pass needs the input);
//! - `forward_owned(b, params, x)` does the same but moves `x` into the cache instead of
//!   copying it (the input stays readable through the cache's public fields);
//! - `infer(b, params, &x)` computes the output only, keeping nothing;
//! - `backward(b, params, grads, &cache, &dy)` returns `dx` and **accumulates** the
//!   parameter gradients into `grads` (`+=`, so a shared parameter sums the gradients
//!   of all its uses; zeroing `grads` is the caller's job).
//!
//! The parameter values and the gradients are passed as two buffers (not a whole
//! `ParamStore`) so that `params` can be read while `grads` is written.
//!
//! Exceptions to the uniform trait: [`BatchNorm2d`] also takes the state buffer (running
//! statistics) and a `train` flag; [`Attention`] and [`Block`] take an optional additive
//! attention bias through `forward_biased` / `backward_biased`, which also return its
//! gradient.
//!
//! # Validation
//! Inputs are checked before any kernel runs; a wrong rank, a wrong channel or feature
//! count, or a zero-sized dimension is an [`Error::Shape`], never a panic. Parameter
//! handles that do not fit in the given buffers are an [`Error::Invalid`].
//!
//! # Residual connections
//! `y = x + f(x)`: the backward pass hands `dy` to both branches and sums their input
//! gradients, `dx = dy + df⁻¹(dy)`; see [`residual_add`] and [`add_into`].

mod activation;
mod attention;
mod batch_norm;
mod block;
mod conv;
mod layer_norm;
mod linear;
mod mlp;
mod pool;
mod residual;

#[cfg(test)]
mod tests;

pub use activation::{Gelu, GeluCache, Relu, ReluCache};
pub use attention::{Attention, AttentionCache};
pub use batch_norm::{BatchNorm2d, BatchNormCache};
pub use block::{Block, BlockCache};
pub use conv::{Conv2d, Conv2dCache, Conv2dConfig};
pub use layer_norm::{LayerNorm, LayerNormCache};
pub use linear::{Linear, LinearCache};
pub use mlp::{Mlp, MlpCache};
pub use pool::{MaxPool2d, MaxPoolCache};
pub use residual::{add_into, residual_add};

use crate::backend::{Backend, ReduceOp};
use crate::error::{invalid, shape_err, Error, Result};
use crate::params::{Init, Kind, Param, ParamTable};
use crate::tensor::{Tensor, View, ViewMut};
use alloc::format;
use alloc::string::{String, ToString};

/// A layer with an explicit forward and backward pass. See the module docs.
pub trait Layer<B: Backend> {
    /// What the backward pass needs, saved by the forward pass.
    type Cache;

    /// Forward pass that moves `x` into the cache (no copy).
    fn forward_owned(&self, b: &B, params: &B::Buf, x: Tensor<B>) -> Result<(Tensor<B>, Self::Cache)>;

    /// Backward pass: returns `dx` (a new tensor) and accumulates the parameter
    /// gradients into `grads`.
    fn backward(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &Self::Cache,
        dy: &Tensor<B>,
    ) -> Result<Tensor<B>>;

    /// Forward pass that keeps a copy of `x` where the backward pass needs it.
    fn forward(&self, b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<(Tensor<B>, Self::Cache)> {
        self.forward_owned(b, params, x.duplicate(b)?)
    }

    /// Inference: the output only, no cache.
    fn infer(&self, b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<Tensor<B>> {
        Ok(self.forward(b, params, x)?.0)
    }
}

// ---- registration ------------------------------------------------------------------------

/// `prefix.leaf`, or `leaf` alone under an empty prefix.
fn join(prefix: &str, leaf: &str) -> String {
    if prefix.is_empty() {
        leaf.to_string()
    } else {
        format!("{prefix}.{leaf}")
    }
}

/// A name prefix in a [`ParamTable`] under which a layer registers its tensors: fresh
/// ones, or aliases of the tensors under another prefix (weight sharing).
pub struct Scope<'t> {
    table: &'t mut ParamTable,
    prefix: String,
    existing: Option<String>,
}

impl<'t> Scope<'t> {
    /// Register fresh tensors under `prefix`.
    pub fn new(table: &'t mut ParamTable, prefix: &str) -> Self {
        Scope { table, prefix: prefix.to_string(), existing: None }
    }

    /// Register each tensor under `prefix` as an alias of the same tensor under
    /// `existing` (which must already be registered, with the same shape).
    pub fn shared(table: &'t mut ParamTable, prefix: &str, existing: &str) -> Self {
        Scope { table, prefix: prefix.to_string(), existing: Some(existing.to_string()) }
    }

    /// The sub-scope `prefix.name` (aliasing `existing.name` in a shared scope).
    pub fn child(&mut self, name: &str) -> Scope<'_> {
        Scope {
            table: self.table,
            prefix: join(&self.prefix, name),
            existing: self.existing.as_deref().map(|e| join(e, name)),
        }
    }

    /// The full name of `leaf` in this scope.
    pub fn name(&self, leaf: &str) -> String {
        join(&self.prefix, leaf)
    }

    /// A trainable tensor (weight decay applies when its rank is at least 2).
    pub fn param(&mut self, leaf: &str, shape: &[usize], init: Init) -> Result<Param> {
        self.add(leaf, shape, init, Kind::Trainable, shape.len() >= 2)
    }

    /// A trainable tensor exempt from weight decay.
    pub fn param_no_decay(&mut self, leaf: &str, shape: &[usize], init: Init) -> Result<Param> {
        self.add(leaf, shape, init, Kind::Trainable, false)
    }

    /// A non-trainable state tensor (running statistics).
    pub fn state(&mut self, leaf: &str, shape: &[usize], init: Init) -> Result<Param> {
        self.add(leaf, shape, init, Kind::State, false)
    }

    fn add(&mut self, leaf: &str, shape: &[usize], init: Init, kind: Kind, decay: bool) -> Result<Param> {
        let name = self.name(leaf);
        let Some(existing) = &self.existing else {
            return match (kind, decay) {
                (Kind::State, _) => self.table.state(&name, shape, init),
                (Kind::Trainable, true) => self.table.param(&name, shape, init),
                (Kind::Trainable, false) => self.table.param_no_decay(&name, shape, init),
            };
        };
        let src = join(existing, leaf);
        let e = self.table.entry(&src).ok_or_else(|| Error::Param {
            name: src.clone(),
            detail: format!("not registered; cannot share it as {name}"),
        })?;
        if e.shape != shape || e.param.kind != kind {
            return Err(Error::Param {
                name: src.clone(),
                detail: format!("is {:?} {:?}; {name} needs {:?} {:?}", e.param.kind, e.shape, kind, shape),
            });
        }
        self.table.alias(&name, &src)
    }
}

// ---- helpers shared by the layers -------------------------------------------------------

/// The range of `buf` that `p` names, checked against the buffer's length.
pub(crate) fn pview<'a, B: Backend>(b: &B, p: &Param, buf: &'a B::Buf) -> Result<View<'a, B::Buf>> {
    check_fits(b.len(buf), p)?;
    Ok(p.of(buf))
}

/// The range of `buf` that `p` names, writable, checked against the buffer's length.
pub(crate) fn pview_mut<'a, B: Backend>(b: &B, p: &Param, buf: &'a mut B::Buf) -> Result<ViewMut<'a, B::Buf>> {
    check_fits(b.len(buf), p)?;
    Ok(p.of_mut(buf))
}

fn check_fits(len: usize, p: &Param) -> Result<()> {
    if p.offset + p.len > len {
        return invalid(
            "layer",
            format!("parameter range {}..{} lies outside a buffer of {len} elements", p.offset, p.offset + p.len),
        );
    }
    Ok(())
}

/// The optional parameter's view (bias).
pub(crate) fn opt_pview<'a, B: Backend>(b: &B, p: &Option<Param>, buf: &'a B::Buf) -> Result<Option<View<'a, B::Buf>>> {
    p.as_ref().map(|p| pview(b, p, buf)).transpose()
}

/// A fresh zero tensor of `shape` that `kernel` writes.
pub(crate) fn produce<B: Backend>(
    b: &B,
    shape: &[usize],
    kernel: impl FnOnce(ViewMut<'_, B::Buf>) -> Result<()>,
) -> Result<Tensor<B>> {
    let mut t = Tensor::zeros(b, shape)?;
    kernel(t.view_mut())?;
    Ok(t)
}

/// `[offset, offset + len)` of `buf`.
pub(crate) fn sub<S: ?Sized>(buf: &S, offset: usize, len: usize) -> View<'_, S> {
    View { buf, offset, len }
}

/// `[offset, offset + len)` of `buf`, writable.
pub(crate) fn sub_mut<S: ?Sized>(buf: &mut S, offset: usize, len: usize) -> ViewMut<'_, S> {
    ViewMut { buf, offset, len }
}

/// `grads[p] += t` (parameter gradients accumulate).
pub(crate) fn accumulate<B: Backend>(b: &B, t: &Tensor<B>, p: &Param, grads: &mut B::Buf) -> Result<()> {
    b.axpy(1.0, t.view(), pview_mut(b, p, grads)?)
}

/// Sum over the middle axis of `x: [outer, axis, inner]`, giving `[outer, inner]`.
pub(crate) fn sum_axis<B: Backend>(
    b: &B,
    outer: usize,
    axis: usize,
    inner: usize,
    x: View<'_, B::Buf>,
) -> Result<Tensor<B>> {
    produce(b, &[outer, inner], |y| b.reduce(ReduceOp::Sum, outer, axis, inner, x, y))
}

/// `shape` has at least `min_rank` axes and no zero-sized one.
pub(crate) fn check_nonempty(op: &'static str, shape: &[usize], min_rank: usize) -> Result<()> {
    if shape.len() < min_rank {
        return shape_err(op, format!("input {shape:?} has rank {}, needs at least {min_rank}", shape.len()));
    }
    if shape.contains(&0) {
        return shape_err(op, format!("input {shape:?} has a zero-sized dimension"));
    }
    Ok(())
}

/// `got == want`, for upstream gradients and operands that must match exactly.
pub(crate) fn check_same(op: &'static str, what: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got != want {
        return shape_err(op, format!("{what} has shape {got:?}, expected {want:?}"));
    }
    Ok(())
}
