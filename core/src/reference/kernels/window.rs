//! RESPIX sliding-window statistics: per-pixel mean and biased variance over a `k×k`
//! window clipped to the image.

use crate::element::Element;

/// The in-image rows (or columns) `lo..hi` of the window around coordinate `i`:
/// `i - k/2 ..= i + (k-1)/2`, clipped to `0..len`. Empty when `k == 0`.
fn span(i: usize, k: usize, len: usize) -> (usize, usize) {
    if k == 0 {
        return (i, i);
    }
    let lo = i.saturating_sub(k / 2);
    let hi = (i + (k - 1) / 2 + 1).min(len);
    (lo, hi)
}

/// The centres `lo..hi` whose window contains coordinate `j`: `i` with
/// `i - k/2 <= j <= i + (k-1)/2`, i.e. `j - (k-1)/2 <= i <= j + k/2`, clipped to `0..len`.
fn centres(j: usize, k: usize, len: usize) -> (usize, usize) {
    if k == 0 {
        return (j, j);
    }
    let lo = j.saturating_sub((k - 1) / 2);
    let hi = (j + k / 2 + 1).min(len);
    (lo, hi)
}

/// Mean and biased variance over the clipped `k×k` window around each pixel of
/// `x: [nc, h, w]`, dividing by the number of in-image pixels. The variance is computed
/// in two passes (`mean((x - mean)²)`), so it is never negative.
pub fn window_stats<T: Element>(nc: usize, h: usize, w: usize, k: usize, x: &[T], mean: &mut [T], var: &mut [T]) {
    let plane = h * w;
    for c in 0..nc {
        let xp = &x[c * plane..(c + 1) * plane];
        for i in 0..h {
            let (r0, r1) = span(i, k, h);
            for j in 0..w {
                let (c0, c1) = span(j, k, w);
                let cnt = ((r1 - r0) * (c1 - c0)) as f64;
                let o = c * plane + i * w + j;
                if cnt == 0.0 {
                    mean[o] = T::zero();
                    var[o] = T::zero();
                    continue;
                }
                let mut s = 0.0f64;
                for r in r0..r1 {
                    for q in c0..c1 {
                        s += xp[r * w + q].f64();
                    }
                }
                let mu = s / cnt;
                let mut sq = 0.0f64;
                for r in r0..r1 {
                    for q in c0..c1 {
                        let d = xp[r * w + q].f64() - mu;
                        sq += d * d;
                    }
                }
                mean[o] = T::of(mu);
                var[o] = T::of(sq / cnt);
            }
        }
    }
}

/// Gradient of [`window_stats`] (overwrites `dx`). With `n_i` the pixel count of window
/// `W_i` and the saved `mean_i`:
/// `dx_j = Σ_{i : j ∈ W_i} [dmean_i / n_i + dvar_i · 2 (x_j - mean_i) / n_i]`.
pub fn window_stats_backward<T: Element>(
    nc: usize,
    h: usize,
    w: usize,
    k: usize,
    x: &[T],
    mean: &[T],
    dmean: &[T],
    dvar: &[T],
    dx: &mut [T],
) {
    let plane = h * w;
    for c in 0..nc {
        let base = c * plane;
        for jr in 0..h {
            let (ir0, ir1) = centres(jr, k, h);
            for jc in 0..w {
                let (ic0, ic1) = centres(jc, k, w);
                let xj = x[base + jr * w + jc].f64();
                let mut acc = 0.0f64;
                for ir in ir0..ir1 {
                    let (r0, r1) = span(ir, k, h);
                    for ic in ic0..ic1 {
                        let (c0, c1) = span(ic, k, w);
                        let n = ((r1 - r0) * (c1 - c0)) as f64;
                        let o = base + ir * w + ic;
                        let mu = mean[o].f64();
                        acc += (dmean[o].f64() + 2.0 * dvar[o].f64() * (xj - mu)) / n;
                    }
                }
                dx[base + jr * w + jc] = T::of(acc);
            }
        }
    }
}
