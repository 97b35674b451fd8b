//! Random op problems: one type per family of ops, each with the proptest strategies
//! the suite draws from (one strategy per op of the [`cim_core::Backend`] trait).
//!
//! Every problem holds its inputs as `f64` values that are exact in `f32` (see
//! [`crate::gen::Gen`]); inputs that must be consistent with others (the saved
//! statistics of a norm's backward pass, the max-pooling indices, a softmax output) are
//! computed when the problem is built, by `Reference<f32>`, so that they too are the
//! same numbers on every backend and each backward kernel is tested in isolation.

pub mod conv;
pub mod elementwise;
pub mod embedding;
pub mod linalg;
pub mod memory;
pub mod norm;
pub mod optim;
pub mod pool;
pub mod rows;
pub mod window;

use cim_core::{Reference, Result};

/// The backend that computes derived inputs while a problem is built.
pub(crate) fn ref32() -> Reference<f32> {
    Reference::new()
}

/// Unwrap a reference result while building a problem (inputs are valid by construction).
pub(crate) fn host<T>(r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("building a problem: the f32 reference failed: {e}"))
}

/// Download a reference tensor as `f64`.
pub(crate) fn host_vec(t: &cim_core::Tensor<Reference<f32>>) -> Vec<f64> {
    host(t.to_f64(&ref32()))
}
