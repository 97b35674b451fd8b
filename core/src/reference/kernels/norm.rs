//! Batch normalization and layer normalization.

use crate::backend::BatchNorm;
use crate::element::Element;
use alloc::vec;

/// Index of element `(ni, ci, s)` of `x: [n, c, hw]`.
#[inline]
fn at(p: &BatchNorm, ni: usize, ci: usize, s: usize) -> usize {
    (ni * p.c + ci) * p.hw + s
}

/// Training-mode batch norm. Per channel, over the `n · hw` elements: biased batch
/// variance for normalization, `running = (1 - momentum) · running + momentum · stat`
/// with the unbiased variance (the biased one when there is a single element), and
/// saves the batch mean and `1/sqrt(var_biased + eps)`.
pub fn batch_norm_train<T: Element>(
    p: &BatchNorm,
    x: &[T],
    gamma: &[T],
    beta: &[T],
    running_mean: &mut [T],
    running_var: &mut [T],
    y: &mut [T],
    save_mean: &mut [T],
    save_invstd: &mut [T],
) {
    let count = p.n * p.hw;
    for ci in 0..p.c {
        if count == 0 {
            // Nothing to normalize: keep the running statistics, save neutral stats.
            save_mean[ci] = T::zero();
            save_invstd[ci] = T::of(1.0 / libm::sqrt(p.eps));
            continue;
        }
        let cnt = count as f64;
        let mut sum = 0.0f64;
        for ni in 0..p.n {
            for s in 0..p.hw {
                sum += x[at(p, ni, ci, s)].f64();
            }
        }
        let mean = sum / cnt;
        let mut sq = 0.0f64;
        for ni in 0..p.n {
            for s in 0..p.hw {
                let d = x[at(p, ni, ci, s)].f64() - mean;
                sq += d * d;
            }
        }
        let var = sq / cnt;
        let invstd = 1.0 / libm::sqrt(var + p.eps);
        let (g, b) = (gamma[ci].f64(), beta[ci].f64());
        for ni in 0..p.n {
            for s in 0..p.hw {
                let i = at(p, ni, ci, s);
                y[i] = T::of((x[i].f64() - mean) * invstd * g + b);
            }
        }
        let unbiased = if count > 1 { sq / (cnt - 1.0) } else { var };
        let mo = p.momentum;
        running_mean[ci] = T::of((1.0 - mo) * running_mean[ci].f64() + mo * mean);
        running_var[ci] = T::of((1.0 - mo) * running_var[ci].f64() + mo * unbiased);
        save_mean[ci] = T::of(mean);
        save_invstd[ci] = T::of(invstd);
    }
}

/// Evaluation-mode batch norm: `y = (x - running_mean) / sqrt(running_var + eps) · gamma + beta`.
pub fn batch_norm_eval<T: Element>(
    p: &BatchNorm,
    x: &[T],
    gamma: &[T],
    beta: &[T],
    running_mean: &[T],
    running_var: &[T],
    y: &mut [T],
) {
    for ci in 0..p.c {
        let mean = running_mean[ci].f64();
        let invstd = 1.0 / libm::sqrt(running_var[ci].f64() + p.eps);
        let (g, b) = (gamma[ci].f64(), beta[ci].f64());
        for ni in 0..p.n {
            for s in 0..p.hw {
                let i = at(p, ni, ci, s);
                y[i] = T::of((x[i].f64() - mean) * invstd * g + b);
            }
        }
    }
}

/// Backward of [`batch_norm_train`] from the saved statistics. With
/// `x̂ = (x - mean) · invstd` and the per-channel sums `Σdy`, `Σdy·x̂` over `N = n · hw`:
/// `dx = gamma · invstd / N · (N · dy - Σdy - x̂ · Σdy·x̂)` (overwrites),
/// `dgamma += Σdy·x̂`, `dbeta += Σdy`.
pub fn batch_norm_backward<T: Element>(
    p: &BatchNorm,
    x: &[T],
    dy: &[T],
    gamma: &[T],
    save_mean: &[T],
    save_invstd: &[T],
    dx: &mut [T],
    dgamma: &mut [T],
    dbeta: &mut [T],
) {
    let count = p.n * p.hw;
    for ci in 0..p.c {
        let mean = save_mean[ci].f64();
        let invstd = save_invstd[ci].f64();
        let mut sum_dy = 0.0f64;
        let mut sum_dy_xhat = 0.0f64;
        for ni in 0..p.n {
            for s in 0..p.hw {
                let i = at(p, ni, ci, s);
                let g = dy[i].f64();
                sum_dy += g;
                sum_dy_xhat += g * (x[i].f64() - mean) * invstd;
            }
        }
        if count > 0 {
            let cnt = count as f64;
            let k = gamma[ci].f64() * invstd / cnt;
            for ni in 0..p.n {
                for s in 0..p.hw {
                    let i = at(p, ni, ci, s);
                    let xhat = (x[i].f64() - mean) * invstd;
                    dx[i] = T::of(k * (cnt * dy[i].f64() - sum_dy - xhat * sum_dy_xhat));
                }
            }
        }
        dgamma[ci] = T::of(dgamma[ci].f64() + sum_dy_xhat);
        dbeta[ci] = T::of(dbeta[ci].f64() + sum_dy);
    }
}

/// Layer norm over rows of width `d` (biased variance); saves per-row mean and
/// `rstd = 1/sqrt(var + eps)`.
pub fn layer_norm<T: Element>(
    rows: usize,
    d: usize,
    eps: f64,
    x: &[T],
    gamma: &[T],
    beta: &[T],
    y: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
) {
    for r in 0..rows {
        let row = &x[r * d..(r + 1) * d];
        let (mu, var) = if d == 0 {
            (0.0, 0.0)
        } else {
            let mu = super::sum_f64(row.iter().map(|v| v.f64())) / d as f64;
            let sq = super::sum_f64(row.iter().map(|v| {
                let c = v.f64() - mu;
                c * c
            }));
            (mu, sq / d as f64)
        };
        let rs = 1.0 / libm::sqrt(var + eps);
        for j in 0..d {
            let xhat = (row[j].f64() - mu) * rs;
            y[r * d + j] = T::of(xhat * gamma[j].f64() + beta[j].f64());
        }
        mean[r] = T::of(mu);
        rstd[r] = T::of(rs);
    }
}

/// Backward of [`layer_norm`]. With `x̂ = (x - mean) · rstd` and `g = dy · gamma`:
/// `dx = rstd · (g - mean(g) - x̂ · mean(g · x̂))` (overwrites),
/// `dgamma += Σ_rows dy · x̂`, `dbeta += Σ_rows dy`.
pub fn layer_norm_backward<T: Element>(
    rows: usize,
    d: usize,
    x: &[T],
    dy: &[T],
    gamma: &[T],
    mean: &[T],
    rstd: &[T],
    dx: &mut [T],
    dgamma: &mut [T],
    dbeta: &mut [T],
) {
    let mut acc_gamma = vec![0.0f64; d];
    let mut acc_beta = vec![0.0f64; d];
    for r in 0..rows {
        let mu = mean[r].f64();
        let rs = rstd[r].f64();
        let mut sum_g = 0.0f64;
        let mut sum_g_xhat = 0.0f64;
        for j in 0..d {
            let i = r * d + j;
            let xhat = (x[i].f64() - mu) * rs;
            let g = dy[i].f64() * gamma[j].f64();
            sum_g += g;
            sum_g_xhat += g * xhat;
            acc_gamma[j] += dy[i].f64() * xhat;
            acc_beta[j] += dy[i].f64();
        }
        if d == 0 {
            continue;
        }
        let mean_g = sum_g / d as f64;
        let mean_g_xhat = sum_g_xhat / d as f64;
        for j in 0..d {
            let i = r * d + j;
            let xhat = (x[i].f64() - mu) * rs;
            let g = dy[i].f64() * gamma[j].f64();
            dx[i] = T::of(rs * (g - mean_g - xhat * mean_g_xhat));
        }
    }
    for j in 0..d {
        dgamma[j] = T::of(dgamma[j].f64() + acc_gamma[j]);
        dbeta[j] = T::of(dbeta[j].f64() + acc_beta[j]);
    }
}
