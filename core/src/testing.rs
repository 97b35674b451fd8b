//! Helpers shared by the gradient tests of layers and models: random data, host
//! round-trips on the `f64` reference backend, and the finite-difference check.
//!
//! Tolerance of the check. For a smooth `f`, the central difference
//! `(f(x+ε) − f(x−ε)) / 2ε` has a truncation error of `ε² |f'''| / 6 ≈ 1e-12` at
//! `ε = 1e-6`, and a rounding error of about `u · |f| / ε ≈ 1e-10 · |f|`, where
//! `f = ⟨dy, y⟩` sums a few dozen to a few thousand terms of order one: about 1e-9 in
//! all. The check allows `1e-6 · (1 + |value|)`, three orders of margin, while a wrong
//! gradient term is off by order 1e-1 or more.

use crate::reference::Reference;
use crate::rng::Stream;
use crate::tensor::Tensor;
use alloc::vec::Vec;

pub type R = Reference<f64>;

pub const EPS: f64 = 1e-6;
pub const TOL: f64 = 1e-6;

/// `n` values uniform in `±scale`.
pub fn uniform(s: &mut Stream, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| scale * (2.0 * s.next_f32() as f64 - 1.0)).collect()
}

pub fn tensor(shape: &[usize], data: &[f64]) -> Tensor<R> {
    Tensor::from_slice(&R::new(), shape, data).unwrap()
}

pub fn host(t: &Tensor<R>) -> Vec<f64> {
    t.to_f64(&R::new()).unwrap()
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The function under test: parameters and inputs to the output.
pub type Fwd<'a> = dyn FnMut(&[f64], &[Vec<f64>]) -> Vec<f64> + 'a;

/// Compare analytic gradients with central differences of `⟨dy, f(params, inputs)⟩` at
/// the parameter indices `p_idx` (all when `None`) and the input indices `x_idx`
/// (every element of every input when `None`; else these elements of input 0).
#[allow(clippy::too_many_arguments)]
pub fn fd_check_at(
    what: &str,
    f: &mut Fwd<'_>,
    (params, dparams): (&[f64], &[f64]),
    (inputs, dinputs): (&[Vec<f64>], &[Vec<f64>]),
    dy: &[f64],
    p_idx: Option<&[usize]>,
    x_idx: Option<&[usize]>,
) {
    assert_eq!(params.len(), dparams.len(), "{what}: parameter gradient length");
    let compare = |name: &str, i: usize, analytic: f64, plus: Vec<f64>, minus: Vec<f64>| {
        let numeric = (dot(dy, &plus) - dot(dy, &minus)) / (2.0 * EPS);
        let err = (numeric - analytic).abs();
        assert!(
            err <= TOL * (1.0 + analytic.abs()),
            "{what}: d{name}[{i}] analytic {analytic:.12e} vs numeric {numeric:.12e} (error {err:.3e})"
        );
    };
    let mut p = params.to_vec();
    let all: Vec<usize> = (0..p.len()).collect();
    for &i in p_idx.unwrap_or(&all) {
        let v = p[i];
        p[i] = v + EPS;
        let plus = f(&p, inputs);
        p[i] = v - EPS;
        let minus = f(&p, inputs);
        p[i] = v;
        compare("param", i, dparams[i], plus, minus);
    }
    let mut ins = inputs.to_vec();
    for k in 0..ins.len() {
        assert_eq!(ins[k].len(), dinputs[k].len(), "{what}: input {k} gradient length");
        let every: Vec<usize> = (0..ins[k].len()).collect();
        let idx = match x_idx {
            None => &every[..],
            Some(_) if k > 0 => &[][..],
            Some(ix) => ix,
        };
        for &i in idx {
            let v = ins[k][i];
            ins[k][i] = v + EPS;
            let plus = f(params, &ins);
            ins[k][i] = v - EPS;
            let minus = f(params, &ins);
            ins[k][i] = v;
            compare(if k == 0 { "x" } else { "input" }, i, dinputs[k][i], plus, minus);
        }
    }
}

/// [`fd_check_at`] over every input element and the parameters in `only` (all if `None`).
pub fn fd_check(
    what: &str,
    f: &mut Fwd<'_>,
    grads: (&[f64], &[f64]),
    inputs: (&[Vec<f64>], &[Vec<f64>]),
    dy: &[f64],
    only: Option<&[usize]>,
) {
    fd_check_at(what, f, grads, inputs, dy, only, None)
}
