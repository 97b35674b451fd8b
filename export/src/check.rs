//! Comparing the exported model, run by tract, with the `cim` forward pass.

use crate::enhancer::Enhancer;
use crate::tract::TractModel;
use cim_core::params::ParamStore;
use cim_core::{rng, Backend, Element, Error, Result, Tensor};

/// How far two outputs are apart.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// `max |a − b|`.
    pub max_abs: f64,
    /// `max |a − b| / max |b|`: the error relative to the reference's scale (an
    /// element-wise ratio is meaningless where the reference crosses zero).
    pub max_rel: f64,
    /// The output shape.
    pub shape: Vec<usize>,
}

/// Compare `got` with the reference `want` (see [`Comparison`]). NaN anywhere is an
/// infinite error.
pub fn compare(got: &[f32], want: &[f32], shape: &[usize]) -> Comparison {
    let mut max_abs = if got.len() == want.len() { 0.0f64 } else { f64::INFINITY };
    let mut scale = 0.0f64;
    for (&a, &b) in got.iter().zip(want) {
        let d = (a as f64 - b as f64).abs();
        max_abs = if d.is_nan() { f64::INFINITY } else { max_abs.max(d) };
        scale = scale.max((b as f64).abs());
    }
    let max_rel = if scale > 0.0 { max_abs / scale } else { max_abs };
    Comparison { max_abs, max_rel, shape: shape.to_vec() }
}

/// A reproducible input of `shape` with values of a normalized image (about N(0, 1)).
pub fn random_input(shape: &[usize], seed: u64) -> Vec<f32> {
    let n: usize = shape.iter().product();
    (0..n as u64).map(|i| rng::normal(seed, i) as f32).collect()
}

/// Run the ONNX bytes through tract and `e` on `b` on the same random input of `batch`
/// images; the comparison of the two outputs.
pub fn check<B: Backend>(
    b: &B,
    e: &Enhancer,
    store: &ParamStore<B>,
    onnx: &[u8],
    batch: usize,
    seed: u64,
) -> Result<Comparison> {
    let shape = e.input_shape(batch);
    let x = random_input(&shape, seed);
    let tract = TractModel::load(onnx, "the exported model", batch, 1)?;
    let (got, got_shape) = tract.run(&x, &shape)?;
    let xe: Vec<B::E> = x.iter().map(|&v| B::E::of(v as f64)).collect();
    let y = e.forward(b, store, &Tensor::from_slice(b, &shape, &xe)?)?;
    if y.shape() != got_shape.as_slice() {
        return Err(Error::Shape {
            op: "export check",
            detail: format!("tract gives {got_shape:?}, the {} backend {:?}", b.name(), y.shape()),
        });
    }
    let want: Vec<f32> = y.to_vec(b)?.into_iter().map(|v| v.f64() as f32).collect();
    Ok(compare(&got, &want, &got_shape))
}
