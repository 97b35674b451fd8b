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

/// `erf(x)` in `f32` by a rational approximation (Eigen's `generic_fast_erf_float`),
/// within a few ulp of `erff`; branch-free.
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let x = if x > 4.0 { 4.0 } else { x };
    let x = if x < -4.0 { -4.0 } else { x };
    let x2 = x * x;
    let mut p = -2.726_142_258_013_06e-10f32;
    p = p * x2 + 2.770_681_424_959_02e-8;
    p = p * x2 + -2.101_024_020_825_08e-6;
    p = p * x2 + -5.692_506_394_623_46e-5;
    p = p * x2 + -7.349_906_303_268_55e-4;
    p = p * x2 + -2.954_599_808_540_25e-3;
    p = p * x2 + -1.609_603_332_624_15e-2;
    let p = x * p;
    let mut q = -1.456_607_184_649_96e-5f32;
    q = q * x2 + -2.133_740_552_789_05e-4;
    q = q * x2 + -1.682_826_974_382_03e-3;
    q = q * x2 + -7.373_329_167_204_68e-3;
    q = q * x2 + -1.426_473_905_141_89e-2;
    p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> i64 {
        (a.to_bits() as i32 as i64 - b.to_bits() as i32 as i64).abs()
    }

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x < 88.0 {
            let u = ulps(exp(x), libm::expf(x));
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
    fn erf_matches_libm() {
        let mut worst = 0f32;
        let mut x = -6.0f32;
        while x < 6.0 {
            let d = (erf(x) - libm::erff(x)).abs();
            worst = worst.max(d / libm::erff(x).abs().max(1e-3));
            x += 0.000_37;
        }
        assert!(worst < 1e-6, "erf worst relative error {worst}");
        assert!(erf(f32::NAN).is_nan());
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
