//! Scalar math and slice reductions written so that LLVM vectorizes them: eight
//! independent accumulators for sums, branch-free `exp` and `erf`.

/// Sum with eight partial accumulators (vectorizable, and more accurate than one).
#[inline]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for j in 0..8 {
            acc[j] += c[j];
        }
    }
    let mut tail = 0f32;
    for &v in it.remainder() {
        tail += v;
    }
    fold8(acc) + tail
}

/// `acc[i] += x[i]` in `f64` (column sums whose order must match the reference's).
#[inline(always)]
fn add_f64_slice(acc: &mut [f64], x: &[f32]) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += v as f64;
    }
}

dispatch!(add_f64_fast, add_f64_slice, (acc: &mut [f64], x: &[f32]));

pub(crate) fn add_f64(acc: &mut [f64], x: &[f32]) {
    add_f64_fast(acc, x)
}

/// `Σ a·b`.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let mut ia = a.chunks_exact(8);
    let mut ib = b.chunks_exact(8);
    for (ca, cb) in (&mut ia).zip(&mut ib) {
        for j in 0..8 {
            acc[j] += ca[j] * cb[j];
        }
    }
    let mut tail = 0f32;
    for (&u, &v) in ia.remainder().iter().zip(ib.remainder()) {
        tail += u * v;
    }
    fold8(acc) + tail
}

/// `Σ (x - c)²`.
#[inline]
pub(crate) fn sum_sq_dev(x: &[f32], c: f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut it = x.chunks_exact(8);
    for ch in &mut it {
        for j in 0..8 {
            let d = ch[j] - c;
            acc[j] += d * d;
        }
    }
    let mut tail = 0f32;
    for &v in it.remainder() {
        let d = v - c;
        tail += d * d;
    }
    fold8(acc) + tail
}

/// `Σ a·(b - c)`.
#[inline]
pub(crate) fn dot_dev(a: &[f32], b: &[f32], c: f32) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let mut ia = a.chunks_exact(8);
    let mut ib = b.chunks_exact(8);
    for (ca, cb) in (&mut ia).zip(&mut ib) {
        for j in 0..8 {
            acc[j] += ca[j] * (cb[j] - c);
        }
    }
    let mut tail = 0f32;
    for (&u, &v) in ia.remainder().iter().zip(ib.remainder()) {
        tail += u * (v - c);
    }
    fold8(acc) + tail
}

/// Maximum of a non-empty slice (NaNs are skipped unless all are NaN).
#[inline]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for j in 0..8 {
            acc[j] = if c[j] > acc[j] { c[j] } else { acc[j] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in acc.iter().chain(it.remainder()) {
        if v > m {
            m = v;
        }
    }
    if m == f32::NEG_INFINITY && x.iter().any(|v| v.is_nan()) {
        return f32::NAN;
    }
    m
}

#[inline(always)]
fn fold8(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}

/// `e^x` in `f32` (Cephes `expf`: range reduction by `ln 2`, degree-5 polynomial),
/// within 2 ulp; branch-free so that loops over it vectorize. Below `-87.3` gives 0.
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const HI: f32 = 88.376_26;
    const LO: f32 = -87.336_55;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_375;
    const C2: f32 = -2.121_944_40e-4;
    // 1.5 · 2^23: adding it rounds to an integer held in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let xc = if x > HI { HI } else { x };
    let xc = if xc < LO { LO } else { xc };
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = xc - n * C1 - n * C2;
    let mut p = 1.987_569_150_0e-4f32;
    p = p * r + 1.398_199_950_7e-3;
    p = p * r + 8.333_451_907_3e-3;
    p = p * r + 4.166_579_589_4e-2;
    p = p * r + 1.666_666_545_9e-1;
    p = p * r + 5.000_000_120_1e-1;
    let e = p * (r * r) + r + 1.0;
    // 2^n from the integer in t's low bits.
    let bits = t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127) << 23;
    let y = e * f32::from_bits(bits);
    let y = if x > HI { f32::INFINITY } else { y };
    if x < LO {
        0.0
    } else {
        y
    }
}

/// `erfc(z)` for `z ≥ 0` with a small *relative* error everywhere (Numerical Recipes'
/// `erfcc`, a Chebyshev fit with fractional error below 1.1e-7, plus `f32` rounding);
/// branch-free. Relative accuracy in the tail is what `Φ(x)` for negative `x` needs,
/// where `1 + erf(x)` would cancel. `z2` is `z²`, passed in so that callers can form
/// it with one rounding; its rounding error `≈ z²·2⁻²⁴` is the relative error of the
/// result in the far tail.
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub(crate) fn erfc_pos(z: f32, z2: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let mut p = 0.170_872_77f32;
    p = p * t - 0.822_152_23;
    p = p * t + 1.488_515_87;
    p = p * t - 1.135_203_98;
    p = p * t + 0.278_868_07;
    p = p * t - 0.186_288_06;
    p = p * t + 0.096_784_18;
    p = p * t + 0.374_091_96;
    p = p * t + 1.000_023_68;
    p = p * t - 1.265_512_23;
    t * exp(p - z2)
}

/// `erf(z)` for `|z| ≤ 0.75` by its Taylor series (ten terms: truncation below 1e-9).
#[allow(clippy::excessive_precision)]
#[inline(always)]
fn erf_small(z: f32, z2: f32) -> f32 {
    let mut p = -1.0f32 / 6_894_720.0; // (-1)^9 / (9! · 19)
    p = p * z2 + 1.0 / 685_440.0;
    p = p * z2 - 1.0 / 75_600.0;
    p = p * z2 + 1.0 / 9_360.0;
    p = p * z2 - 1.0 / 1_320.0;
    p = p * z2 + 1.0 / 216.0;
    p = p * z2 - 1.0 / 42.0;
    p = p * z2 + 1.0 / 10.0;
    p = p * z2 - 1.0 / 3.0;
    p = p * z2 + 1.0;
    std::f32::consts::FRAC_2_SQRT_PI * z * p
}

/// The standard normal CDF `Φ(x) = (1 + erf(x/√2)) / 2`: by the Taylor series of `erf`
/// near 0 and by [`erfc_pos`] beyond, so that the negative tail keeps its relative
/// accuracy. Branch-free (both are computed, one is selected).
#[inline(always)]
pub(crate) fn normal_cdf(x: f32) -> f32 {
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    // z² = x²/2 with one rounding: in the far tail its error sets the result's.
    let z2 = 0.5 * (x * x);
    let near = 0.5 + 0.5 * erf_small(z, z2);
    let half_tail = 0.5 * erfc_pos(z.abs(), z2);
    let far = if x < 0.0 { half_tail } else { 1.0 - half_tail };
    if z2 < 0.5625 {
        near
    } else {
        far
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cim_core::Element;

    fn ulps(a: f32, b: f32) -> i64 {
        (a.to_bits() as i32 as i64 - b.to_bits() as i32 as i64).abs()
    }

    #[test]
    fn exp_is_within_2_ulp() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x < 88.0 {
            let u = ulps(exp(x), (x as f64).exp() as f32);
            worst = worst.max(u);
            x += 0.000_731;
        }
        assert!(worst <= 2, "exp worst {worst} ulp");
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn normal_cdf_is_accurate() {
        // Relative error for x < 0 (where gelu needs it), absolute error everywhere.
        let (mut rel_mid, mut rel_tail, mut abs) = (0f64, 0f64, 0f64);
        let mut x = -12.0f32;
        while x < 8.0 {
            let want = 0.5 * (1.0 + Element::erf(x as f64 / std::f64::consts::SQRT_2));
            let got = normal_cdf(x) as f64;
            let rel = (got - want).abs() / want;
            // (1 + erf in f64 keeps ~1e-8 relative accuracy down to x = -5.5.)
            if (-3.0..0.0).contains(&x) {
                rel_mid = rel_mid.max(rel);
            } else if (-5.5..-3.0).contains(&x) {
                rel_tail = rel_tail.max(rel);
            }
            abs = abs.max((got - want).abs());
            x += 0.000_37;
        }
        assert!(rel_mid < 8e-7, "Φ relative error {rel_mid} on [-3, 0)");
        assert!(rel_tail < 1.5e-6, "Φ relative error {rel_tail} on [-5.5, -3)");
        assert!(abs < 1e-7, "Φ absolute error {abs}");
        assert!(normal_cdf(f32::NAN).is_nan());
        assert_eq!(normal_cdf(f32::INFINITY), 1.0);
        assert_eq!(normal_cdf(f32::NEG_INFINITY), 0.0);
        assert_eq!(normal_cdf(0.0), 0.5);
    }

    #[test]
    fn reductions() {
        let x: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let y: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let s: f32 = x.iter().sum();
        assert!((sum(&x) - s).abs() < 1e-5);
        let d: f32 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
        assert!((dot(&x, &y) - d).abs() < 1e-5);
        let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(max(&x), m);
        assert!(max(&[f32::NAN, f32::NAN]).is_nan());
    }
}
