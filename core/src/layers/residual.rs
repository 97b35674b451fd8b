//! Residual connections.
//!
//! Forward: `y = x + f(x)`. Backward: `dy` flows unchanged into both branches, so
//! `dx = dy + (df/dx)ᵀ · dy`: run the branch's backward on `dy`, then [`add_into`] the
//! result `dy` itself.

use super::{check_same, produce};
use crate::backend::{Backend, BinaryOp};
use crate::error::Result;
use crate::tensor::Tensor;

/// `x + fx` as a new tensor (same shapes).
pub fn residual_add<B: Backend>(b: &B, x: &Tensor<B>, fx: &Tensor<B>) -> Result<Tensor<B>> {
    check_same("residual_add", "the branch output", fx.shape(), x.shape())?;
    let s = x.shape();
    produce(b, s, |y| b.binary(BinaryOp::Add, x.view(), s, fx.view(), s, y, s))
}

/// `acc += t` (same shapes), in place.
pub fn add_into<B: Backend>(b: &B, acc: &mut Tensor<B>, t: &Tensor<B>) -> Result<()> {
    check_same("add_into", "the addend", t.shape(), acc.shape())?;
    b.axpy(1.0, t.view(), acc.view_mut())
}
