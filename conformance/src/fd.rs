//! Finite-difference checks of gradients, in `f64`.
//!
//! For an op `y = f(x)` and an upstream gradient `dy`, the gradient of the scalar
//! `L(x) = ⟨dy, f(x)⟩` is the vector–Jacobian product a backward op computes. We
//! estimate each component by a central difference
//! `(L(x + ε·eᵢ) − L(x − ε·eᵢ)) / 2ε` with `ε = 1e-6` and require
//! `|numeric − analytic| ≤ 1e-6 · (1 + |analytic|)`.
//!
//! Why these numbers. The truncation error of the central difference is
//! `ε²/6 · |L'''| ≈ 1e-13 · |L'''|` — about 1e-12 for the smooth, O(1)-scaled
//! problems here, whose inputs keep away from kinks (ReLU at 0, ties of max pooling,
//! `|p − t|` at 0) and poles. The roundoff error is `≈ u · |L| / ε` with the `f64` unit
//! roundoff `u ≈ 1.1e-16`: about 1e-10 · |L|, 1e-8 for the largest `|L| ≈ 100` we
//! build. Both sit orders of magnitude below 1e-6, while a wrong gradient (a missing
//! term, a transposed index, a factor of 2) is off by O(1e-2) or more.

use crate::tolerance::Tolerance;

/// The step of the central differences.
pub const EPS: f64 = 1e-6;

/// The tolerance of [`fd_check`]: `1e-6 · (1 + |g|)`.
pub const FD_TOL: Tolerance = Tolerance { rel: 1e-6, abs: 1e-6 };

/// `⟨a, b⟩`.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "dot of vectors of different lengths");
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The central-difference gradient of `L(x) = ⟨dy, f(x)⟩` at `x`.
pub fn numeric_grad(f: impl Fn(&[f64]) -> Vec<f64>, x: &[f64], dy: &[f64]) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            xp[i] = x[i] + EPS;
            let hi = dot(dy, &f(&xp));
            xp[i] = x[i] - EPS;
            let lo = dot(dy, &f(&xp));
            xp[i] = x[i];
            (hi - lo) / (2.0 * EPS)
        })
        .collect()
}

/// Check an analytic gradient of `L(x) = ⟨dy, f(x)⟩` against central differences.
pub fn fd_check(f: impl Fn(&[f64]) -> Vec<f64>, x: &[f64], dy: &[f64], analytic: &[f64]) -> Result<(), String> {
    let numeric = numeric_grad(f, x, dy);
    FD_TOL.check(analytic, &numeric).map_err(|e| format!("analytic vs finite-difference gradient: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_right_gradient_and_rejects_a_wrong_one() {
        // f(x) = (x0², x0·x1, sin x1); L = dy0·x0² + dy1·x0·x1 + dy2·sin x1.
        let f = |x: &[f64]| vec![x[0] * x[0], x[0] * x[1], x[1].sin()];
        let (x, dy) = ([0.7, -1.3], [1.5, -0.5, 2.0]);
        let right = [2.0 * 1.5 * 0.7 - 0.5 * -1.3, -0.5 * 0.7 + 2.0 * (-1.3f64).cos()];
        assert!(fd_check(f, &x, &dy, &right).is_ok());
        let wrong = [right[0], right[1] + 1e-3];
        let e = fd_check(f, &x, &dy, &wrong).unwrap_err();
        assert!(e.contains("[1]"), "{e}");
    }
}
