//! GELU and ReLU.

use crate::element::Element;

const FRAC_1_SQRT_2: f64 = core::f64::consts::FRAC_1_SQRT_2;
/// `1 / sqrt(2π)`.
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// Exact GELU: `y = 0.5 · x · (1 + erf(x / √2))`.
pub fn gelu<T: Element>(x: &[T], y: &mut [T]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        let v = xi.f64();
        *yi = T::of(0.5 * v * (1.0 + libm::erf(v * FRAC_1_SQRT_2)));
    }
}

/// `dx = dy · (Φ(x) + x · φ(x))` with the standard normal CDF `Φ` and density `φ`.
pub fn gelu_backward<T: Element>(x: &[T], dy: &[T], dx: &mut [T]) {
    for i in 0..x.len() {
        let v = x[i].f64();
        let cdf = 0.5 * (1.0 + libm::erf(v * FRAC_1_SQRT_2));
        let pdf = FRAC_1_SQRT_2PI * libm::exp(-0.5 * v * v);
        dx[i] = T::of(dy[i].f64() * (cdf + v * pdf));
    }
}

/// `y = max(x, 0)`; NaN propagates (as PyTorch).
pub fn relu<T: Element>(x: &[T], y: &mut [T]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi = if xi.is_nan() || xi > T::zero() { xi } else { T::zero() };
    }
}

/// `dx = dy · [x > 0]` (overwrites).
pub fn relu_backward<T: Element>(x: &[T], dy: &[T], dx: &mut [T]) {
    for i in 0..x.len() {
        dx[i] = if x[i] > T::zero() { dy[i] } else { T::zero() };
    }
}
