//! How close a backend's result must be to the oracle's.
//!
//! The oracle is [`cim_core::Reference<f64>`] run on the *same* `f32`-rounded inputs as
//! the backend under test, so its result is exact up to `f64` rounding (≈ 1e-16, far
//! below any `f32` tolerance): every difference we see is the backend's own rounding
//! error, and a tolerance is a bound on that error, derived below from the unit
//! roundoff `u` of the precision the backend computes in ([`DType::unit_roundoff`]).

use cim_core::DType;
use std::fmt::Write as _;

/// An elementwise bound `|got − want| ≤ abs + rel · |want|`.
///
/// `rel` covers the rounding of the result itself and errors proportional to it;
/// `abs` is the floor that protects results which cancel to (nearly) zero, where a
/// relative bound is meaningless: the error of a sum is relative to the *terms*, not to
/// the sum. Constructors give `abs` for terms of unit magnitude; scale it with
/// [`Tolerance::scale_abs`] when the terms are larger (e.g. products of two values in
/// `[-2, 2]` have magnitude up to 4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub rel: f64,
    pub abs: f64,
}

impl Tolerance {
    /// Bit-for-bit equality (up to the sign of zero; NaN matches NaN).
    pub const EXACT: Tolerance = Tolerance { rel: 0.0, abs: 0.0 };

    pub fn new(rel: f64, abs: f64) -> Self {
        Tolerance { rel, abs }
    }

    /// An `f32` result accumulated from `k` terms of unit magnitude (a dot product of
    /// length `k`, a reduction over `k` elements; `k = 1` for elementwise ops).
    ///
    /// Justification. Recursive summation of `k` terms has the worst-case bound
    /// `|err| ≤ (k−1)·u·Σ|tᵢ|` (Higham, *Accuracy and Stability*, §4.2), but rounding
    /// errors are independent and of random sign, so the error grows like `√k·u` relative
    /// to the typical size of the partial sums (Higham & Mary 2019, "A new approach to
    /// probabilistic rounding error analysis": `λ·√k·u` holds with probability
    /// ≥ 1 − 2·exp(−λ²/2)); blocked, pairwise and FMA-based kernels (GEMM micro-kernels,
    /// tree reductions on GPUs) do at least as well. We take
    /// - `rel = 8·√k·u` (λ = 8: a failure probability below 1e-13 per element, and room
    ///   for a few ulps of error in `libm`-style transcendentals), and
    /// - `abs = rel·√k`: the relative bound applied to `√k`, the typical magnitude of a
    ///   sum of `k` unit terms of random sign, which covers outputs that cancel to ~0.
    ///
    /// For `u = 2⁻²⁴`: `k = 1` → rel ≈ 4.8e-7; `k = 81` → rel ≈ 4.3e-6, abs ≈ 3.9e-5.
    /// An indexing bug changes an output by a whole term (≥ 1e-2 here), far outside.
    pub fn f32_for(k: usize) -> Self {
        Self::for_dtype(DType::F32, k)
    }

    /// The [`Tolerance::f32_for`] rule for any precision (e.g. `DType::F64` for a future
    /// double-precision backend).
    pub fn for_dtype(dtype: DType, k: usize) -> Self {
        let sk = (k.max(1) as f64).sqrt();
        let rel = 8.0 * sk * dtype.unit_roundoff();
        Tolerance { rel, abs: rel * sk }
    }

    /// Mixed precision with `bf16` storage (`u = 2⁻⁸`) and `f32` accumulation: each
    /// input is rounded once to `bf16` (relative error ≤ u), so a product carries ≤ 2u and
    /// a result of unit magnitude ≈ 2u–4u; we allow `4u = 1/64 ≈ 1.6e-2` relative and
    /// absolute (the same as PyTorch's default `rtol` for `bfloat16`). Loose by design:
    /// for the GPU's mixed-precision suites, where the reference sees unrounded inputs.
    pub fn bf16() -> Self {
        let u = DType::BF16.unit_roundoff();
        Tolerance { rel: 4.0 * u, abs: 4.0 * u }
    }

    /// Mixed precision with `f16` storage (`u = 2⁻¹¹`) and `f32` accumulation, by the same
    /// argument as [`Tolerance::bf16`]: `4u ≈ 2e-3` relative and absolute.
    pub fn f16() -> Self {
        let u = DType::F16.unit_roundoff();
        Tolerance { rel: 4.0 * u, abs: 4.0 * u }
    }

    /// Multiply the absolute floor by the magnitude `m` of the accumulated terms.
    pub fn scale_abs(self, m: f64) -> Self {
        Tolerance { abs: self.abs * m, ..self }
    }

    /// Multiply both bounds by `f` (a condition number of the op, e.g. the error
    /// amplification of `exp` over a range of logits).
    pub fn times(self, f: f64) -> Self {
        Tolerance { rel: self.rel * f, abs: self.abs * f }
    }

    /// Whether one pair of values is within the bound (NaN matches only NaN; an infinity
    /// only the same infinity).
    pub fn accepts(&self, got: f64, want: f64) -> bool {
        if got.is_nan() || want.is_nan() {
            return got.is_nan() && want.is_nan();
        }
        if got.is_infinite() || want.is_infinite() {
            return got == want;
        }
        got == want || (got - want).abs() <= self.abs + self.rel * want.abs()
    }

    /// The largest `|got − want| / (abs + rel·|want|)` over the elements: how much of the
    /// tolerance is used (`≤ 1` passes; infinite for a NaN or infinity mismatch).
    pub fn usage(&self, got: &[f64], want: &[f64]) -> f64 {
        let one = |g: f64, w: f64| {
            if g == w || (g.is_nan() && w.is_nan()) {
                0.0
            } else if g.is_finite() && w.is_finite() {
                (g - w).abs() / (self.abs + self.rel * w.abs())
            } else {
                f64::INFINITY
            }
        };
        got.iter().zip(want).map(|(&g, &w)| one(g, w)).fold(0.0, f64::max)
    }

    /// Check `got` against `want` elementwise. The error message names the number of
    /// failures, the worst element (the largest error relative to its allowance) with
    /// both values, and the largest absolute and relative errors over all elements.
    pub fn check(&self, got: &[f64], want: &[f64]) -> Result<(), String> {
        if got.len() != want.len() {
            return Err(format!("length mismatch: got {} values, want {}", got.len(), want.len()));
        }
        let (mut max_abs, mut max_rel) = (0.0f64, 0.0f64);
        let mut bad = 0usize;
        let mut worst: Option<(usize, f64)> = None;
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            if self.accepts(g, w) {
                continue;
            }
            bad += 1;
            let err = (g - w).abs();
            let ratio = if err.is_nan() { f64::INFINITY } else { err / (self.abs + self.rel * w.abs()) };
            if err.is_finite() {
                max_abs = max_abs.max(err);
                if w != 0.0 {
                    max_rel = max_rel.max(err / w.abs());
                }
            }
            if worst.is_none_or(|(_, r)| ratio > r) {
                worst = Some((i, ratio));
            }
        }
        match worst {
            None => Ok(()),
            Some((i, _)) => {
                let (g, w) = (got[i], want[i]);
                let mut msg = format!(
                    "{bad} of {} values out of tolerance (rel {:.2e}, abs {:.2e}); worst at [{i}]: got {g:e}, want {w:e}",
                    got.len(),
                    self.rel,
                    self.abs
                );
                if g.is_finite() && w.is_finite() {
                    let _ =
                        write!(msg, " (|diff| {:.3e}, allowed {:.3e})", (g - w).abs(), self.abs + self.rel * w.abs());
                }
                let _ = write!(msg, "; max abs error {max_abs:.3e}, max rel error {max_rel:.3e}");
                Err(msg)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_within_bound_and_rejects_outside() {
        let t = Tolerance::new(1e-3, 1e-6);
        assert!(t.check(&[1.0005, 0.0, -2.0], &[1.0, 5e-7, -2.001]).is_ok());
        let e = t.check(&[1.0, 1.01, 3.0], &[1.0, 1.0, 3.0]).unwrap_err();
        assert!(e.contains("1 of 3"), "{e}");
        assert!(e.contains("[1]"), "{e}");
        assert!(e.contains("got 1.01e0"), "{e}");
        assert!(e.contains("want 1e0"), "{e}");
    }

    #[test]
    fn abs_floor_protects_cancellation() {
        let t = Tolerance::new(1e-6, 1e-4);
        assert!(t.check(&[5e-5], &[0.0]).is_ok());
        assert!(t.check(&[2e-4], &[0.0]).is_err());
    }

    #[test]
    fn nan_handling() {
        let t = Tolerance::f32_for(1);
        assert!(t.check(&[f64::NAN], &[f64::NAN]).is_ok());
        let e = t.check(&[1.0, f64::NAN], &[1.0, 2.0]).unwrap_err();
        assert!(e.contains("[1]") && e.contains("got NaN"), "{e}");
        assert!(t.check(&[2.0], &[f64::NAN]).is_err());
        assert!(t.check(&[f64::INFINITY], &[f64::INFINITY]).is_ok());
        assert!(t.check(&[f64::INFINITY], &[f64::NEG_INFINITY]).is_err());
        assert!(t.check(&[f64::INFINITY], &[1.0]).is_err());
    }

    #[test]
    fn worst_element_is_reported_with_max_errors() {
        let t = Tolerance::new(0.0, 1e-3);
        let e = t.check(&[0.01, 0.5, 0.02], &[0.0, 0.0, 0.0]).unwrap_err();
        assert!(e.contains("3 of 3") && e.contains("worst at [1]"), "{e}");
        assert!(e.contains("max abs error 5.000e-1"), "{e}");
    }

    #[test]
    fn exact_and_length_mismatch() {
        assert!(Tolerance::EXACT.check(&[1.5, -0.0], &[1.5, 0.0]).is_ok());
        assert!(Tolerance::EXACT.check(&[1.5], &[1.5 + 1e-15]).is_err());
        assert!(Tolerance::EXACT.check(&[1.0], &[1.0, 2.0]).unwrap_err().contains("length"));
    }

    #[test]
    fn f32_rule_grows_with_terms() {
        let u = DType::F32.unit_roundoff();
        let t1 = Tolerance::f32_for(1);
        assert_eq!(t1, Tolerance::new(8.0 * u, 8.0 * u));
        let t = Tolerance::f32_for(100);
        assert!((t.rel - 80.0 * u).abs() < 1e-20 && (t.abs - 800.0 * u).abs() < 1e-18);
        assert_eq!(Tolerance::f32_for(0), t1);
        assert!(Tolerance::bf16().rel > Tolerance::f16().rel && Tolerance::f16().rel > t.rel);
        assert_eq!(t1.scale_abs(4.0).abs, 32.0 * u);
        assert_eq!(t1.times(2.0), Tolerance::new(16.0 * u, 16.0 * u));
    }

    #[test]
    fn usage_is_the_fraction_of_the_allowance_used() {
        let t = Tolerance::new(0.0, 0.5);
        assert_eq!(t.usage(&[1.0, 2.25], &[1.0, 2.0]), 0.5);
        assert_eq!(t.usage(&[f64::NAN], &[f64::NAN]), 0.0);
        assert_eq!(t.usage(&[f64::NAN], &[1.0]), f64::INFINITY);
    }
}
