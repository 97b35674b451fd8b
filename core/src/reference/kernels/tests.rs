//! Hand-checked cases for the reference kernels, and finite-difference checks of the
//! backward passes that are easiest to get wrong.

use super::*;
use crate::backend::*;
use crate::element::DType;
use crate::rng;
use alloc::vec;
use alloc::vec::Vec;

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

#[track_caller]
fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(close(*g, *w, tol), "at {i}: got {g}, want {w}\n got {got:?}\nwant {want:?}");
    }
}

/// Deterministic pseudo-random data in roughly [-1, 1].
fn data(seed: u64, len: usize) -> Vec<f64> {
    (0..len).map(|i| 2.0 * rng::uniform(seed, i as u64) as f64 - 1.0).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

const FD_EPS: f64 = 1e-6;
const FD_TOL: f64 = 1e-6;

/// Central finite differences of `f` at `x`, one coordinate at a time.
fn fd_grad(x: &[f64], mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            xp[i] = x[i] + FD_EPS;
            let hi = f(&xp);
            xp[i] = x[i] - FD_EPS;
            let lo = f(&xp);
            xp[i] = x[i];
            (hi - lo) / (2.0 * FD_EPS)
        })
        .collect()
}

// ---- gemm ------------------------------------------------------------------------------

#[test]
fn gemm_plain_and_transposes() {
    // A = [[1,2,3],[4,5,6]] (2×3), B = [[7,8],[9,10],[11,12]] (3×2).
    let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let b = [7.0, 8.0, 9.0, 10.0, 11.0, 12.0];
    let want = [58.0, 64.0, 139.0, 154.0];
    let mut c = [0.0f64; 4];
    gemm(&Gemm::new(2, 2, 3), &a, &b, &mut c);
    assert_eq!(c, want);

    let at = [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]; // A stored 3×2
    let bt = [7.0, 9.0, 11.0, 8.0, 10.0, 12.0]; // B stored 2×3
    for (ta, tb) in [(true, false), (false, true), (true, true)] {
        let p = Gemm { trans_a: ta, trans_b: tb, ..Gemm::new(2, 2, 3) };
        let mut c = [0.0f64; 4];
        gemm(&p, if ta { &at } else { &a }, if tb { &bt } else { &b }, &mut c);
        assert_eq!(c, want, "trans_a={ta} trans_b={tb}");
    }
}

#[test]
fn gemm_batch_broadcast_alpha_beta() {
    // Two A matrices (2×2), one shared B (stride 0), C accumulates with beta = 1.
    let a = [1.0, 0.0, 0.0, 1.0, 2.0, 1.0, 0.0, 3.0];
    let b = [1.0, 2.0, 3.0, 4.0];
    let p = Gemm { batch: 2, stride_a: 4, stride_b: 0, stride_c: 4, alpha: 2.0, beta: 1.0, ..Gemm::new(2, 2, 2) };
    let mut c = [1.0f64; 8];
    gemm(&p, &a, &b, &mut c);
    // Batch 0: I·B = [1,2,3,4]; batch 1: [[2,1],[0,3]]·B = [[5,8],[9,12]].
    assert_eq!(c, [3.0, 5.0, 7.0, 9.0, 11.0, 17.0, 19.0, 25.0]);

    // beta = 0 ignores whatever C holds, NaN included.
    let p0 = Gemm { beta: 0.0, alpha: 1.0, ..p };
    let mut c = [f64::NAN; 8];
    gemm(&p0, &a, &b, &mut c);
    assert_eq!(c, [1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 9.0, 12.0]);

    // Broadcast A instead, with trans_b: C[b] = A · B[b]ᵀ.
    let p1 = Gemm { batch: 2, trans_b: true, stride_a: 0, stride_b: 4, stride_c: 4, ..Gemm::new(2, 2, 2) };
    let a1 = [1.0, 2.0, 3.0, 4.0];
    let b1 = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0];
    let mut c = [0.0f64; 8];
    gemm(&p1, &a1, &b1, &mut c);
    assert_eq!(c, [1.0, 2.0, 3.0, 4.0, 2.0, 1.0, 4.0, 3.0]);
}

// ---- conv2d ----------------------------------------------------------------------------

#[test]
fn conv2d_hand_example() {
    let p = Conv2d { n: 1, c_in: 1, h: 3, w: 3, c_out: 1, kh: 2, kw: 2, stride: (1, 1), pad: (0, 0) };
    let x: Vec<f64> = (1..=9).map(|v| v as f64).collect();
    let w = [1.0, 2.0, 3.0, 4.0];
    let mut y = [0.0f64; 4];
    conv2d(&p, &x, &w, Some(&[0.5]), &mut y);
    // y00 = 1·1 + 2·2 + 3·4 + 4·5 = 37, and so on.
    assert_eq!(y, [37.5, 47.5, 67.5, 77.5]);

    // Padding 1: the top-left output only sees x[0,0] under w[1,1].
    let pp = Conv2d { pad: (1, 1), ..p };
    let mut y = vec![0.0f64; pp.y_len()];
    conv2d(&pp, &x, &w, None, &mut y);
    assert_eq!(pp.out_h(), 4);
    assert_eq!(y[0], 4.0);
    assert_eq!(y[15], 9.0); // bottom-right: x[2,2] under w[0,0]
}

/// The direct convolution formula with signed indices.
fn conv_naive(p: &Conv2d, x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
    let (oh_n, ow_n) = (p.out_h(), p.out_w());
    let mut y = vec![0.0; p.y_len()];
    for n in 0..p.n {
        for co in 0..p.c_out {
            for oh in 0..oh_n {
                for ow in 0..ow_n {
                    let mut s = b[co];
                    for ci in 0..p.c_in {
                        for ki in 0..p.kh {
                            for kj in 0..p.kw {
                                let ih = (oh * p.stride.0 + ki) as i64 - p.pad.0 as i64;
                                let iw = (ow * p.stride.1 + kj) as i64 - p.pad.1 as i64;
                                if ih < 0 || iw < 0 || ih >= p.h as i64 || iw >= p.w as i64 {
                                    continue;
                                }
                                let (ih, iw) = (ih as usize, iw as usize);
                                s += x[((n * p.c_in + ci) * p.h + ih) * p.w + iw]
                                    * w[((co * p.c_in + ci) * p.kh + ki) * p.kw + kj];
                            }
                        }
                    }
                    y[((n * p.c_out + co) * oh_n + oh) * ow_n + ow] = s;
                }
            }
        }
    }
    y
}

fn conv_params() -> Conv2d {
    Conv2d { n: 2, c_in: 2, h: 5, w: 4, c_out: 3, kh: 3, kw: 2, stride: (2, 2), pad: (1, 1) }
}

#[test]
fn conv2d_matches_naive_stride2_pad1() {
    let p = conv_params();
    let x = data(1, p.x_len());
    let w = data(2, p.w_len());
    let b = data(3, p.c_out);
    let mut y = vec![0.0; p.y_len()];
    conv2d(&p, &x, &w, Some(&b), &mut y);
    assert_close(&y, &conv_naive(&p, &x, &w, &b), 1e-14);

    // f32 agrees with the f64 result to f32 precision.
    let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let wf: Vec<f32> = w.iter().map(|&v| v as f32).collect();
    let bf: Vec<f32> = b.iter().map(|&v| v as f32).collect();
    let mut yf = vec![0.0f32; p.y_len()];
    conv2d(&p, &xf, &wf, Some(&bf), &mut yf);
    let yf: Vec<f64> = yf.iter().map(|&v| v as f64).collect();
    assert_close(&yf, &y, 1e-6);
}

#[test]
fn conv2d_gradients_match_finite_differences() {
    let p = conv_params();
    let x = data(4, p.x_len());
    let w = data(5, p.w_len());
    let b = data(6, p.c_out);
    let dy = data(7, p.y_len());
    let loss = |x: &[f64], w: &[f64], b: &[f64]| {
        let mut y = vec![0.0; p.y_len()];
        conv2d(&p, x, w, Some(b), &mut y);
        dot(&y, &dy)
    };

    let mut dx = vec![f64::NAN; p.x_len()]; // overwritten
    conv2d_grad_input(&p, &dy, &w, &mut dx);
    assert_close(&dx, &fd_grad(&x, |x| loss(x, &w, &b)), FD_TOL);

    let mut dw = vec![1.0; p.w_len()]; // accumulated onto 1
    conv2d_grad_weight(&p, &x, &dy, &mut dw);
    let want: Vec<f64> = fd_grad(&w, |w| loss(&x, w, &b)).iter().map(|g| g + 1.0).collect();
    assert_close(&dw, &want, FD_TOL);

    let mut db = vec![1.0; p.c_out];
    conv2d_grad_bias(&p, &dy, &mut db);
    let want: Vec<f64> = fd_grad(&b, |b| loss(&x, &w, b)).iter().map(|g| g + 1.0).collect();
    assert_close(&db, &want, FD_TOL);
}

// ---- normalization ---------------------------------------------------------------------

#[test]
fn batch_norm_train_stats_and_running_update() {
    // One channel, two samples of two pixels: values 1, 2, 3, 4.
    let p = BatchNorm { n: 2, c: 1, hw: 2, eps: 0.0, momentum: 0.1 };
    let x = [1.0, 2.0, 3.0, 4.0];
    let (mut rm, mut rv) = ([0.0], [1.0]);
    let mut y = [0.0; 4];
    let (mut sm, mut si) = ([0.0], [0.0]);
    batch_norm_train(&p, &x, &[2.0], &[1.0], &mut rm, &mut rv, &mut y, &mut sm, &mut si);
    // mean 2.5, biased var 1.25, unbiased var 5/3.
    let invstd = 1.0 / 1.25f64.sqrt();
    assert_close(&sm, &[2.5], 1e-15);
    assert_close(&si, &[invstd], 1e-15);
    assert_close(&rm, &[0.25], 1e-15);
    assert_close(&rv, &[0.9 + 0.1 * 5.0 / 3.0], 1e-15);
    let want: Vec<f64> = x.iter().map(|v| (v - 2.5) * invstd * 2.0 + 1.0).collect();
    assert_close(&y, &want, 1e-15);

    // Eval with the same statistics reproduces the training output.
    let mut ye = [0.0; 4];
    batch_norm_eval(&p, &x, &[2.0], &[1.0], &[2.5], &[1.25], &mut ye);
    assert_close(&ye, &y, 1e-15);
}

#[test]
fn batch_norm_backward_matches_finite_differences() {
    let p = BatchNorm { n: 3, c: 2, hw: 4, eps: 1e-5, momentum: 0.1 };
    let len = p.n * p.c * p.hw;
    let x = data(10, len);
    let gamma = data(11, p.c);
    let beta = data(12, p.c);
    let dy = data(13, len);
    let forward = |x: &[f64], g: &[f64], b: &[f64]| {
        let (mut rm, mut rv) = (vec![0.0; p.c], vec![1.0; p.c]);
        let (mut sm, mut si) = (vec![0.0; p.c], vec![0.0; p.c]);
        let mut y = vec![0.0; len];
        batch_norm_train(&p, x, g, b, &mut rm, &mut rv, &mut y, &mut sm, &mut si);
        (y, sm, si)
    };
    let loss = |x: &[f64], g: &[f64], b: &[f64]| dot(&forward(x, g, b).0, &dy);

    let (_, sm, si) = forward(&x, &gamma, &beta);
    let mut dx = vec![f64::NAN; len];
    let mut dg = vec![0.5; p.c];
    let mut db = vec![0.5; p.c];
    batch_norm_backward(&p, &x, &dy, &gamma, &sm, &si, &mut dx, &mut dg, &mut db);
    assert_close(&dx, &fd_grad(&x, |x| loss(x, &gamma, &beta)), FD_TOL);
    let want: Vec<f64> = fd_grad(&gamma, |g| loss(&x, g, &beta)).iter().map(|v| v + 0.5).collect();
    assert_close(&dg, &want, FD_TOL);
    let want: Vec<f64> = fd_grad(&beta, |b| loss(&x, &gamma, b)).iter().map(|v| v + 0.5).collect();
    assert_close(&db, &want, FD_TOL);
}

#[test]
fn layer_norm_backward_matches_finite_differences() {
    let (rows, d, eps) = (3, 5, 1e-5);
    let x = data(20, rows * d);
    let gamma = data(21, d);
    let beta = data(22, d);
    let dy = data(23, rows * d);
    let forward = |x: &[f64], g: &[f64], b: &[f64]| {
        let mut y = vec![0.0; rows * d];
        let (mut mu, mut rs) = (vec![0.0; rows], vec![0.0; rows]);
        layer_norm(rows, d, eps, x, g, b, &mut y, &mut mu, &mut rs);
        (y, mu, rs)
    };
    let loss = |x: &[f64], g: &[f64], b: &[f64]| dot(&forward(x, g, b).0, &dy);

    let (y, mu, rs) = forward(&x, &gamma, &beta);
    // Forward sanity: row 0 statistics.
    let m0: f64 = x[..d].iter().sum::<f64>() / d as f64;
    let v0: f64 = x[..d].iter().map(|v| (v - m0) * (v - m0)).sum::<f64>() / d as f64;
    assert_close(&[mu[0], rs[0]], &[m0, 1.0 / (v0 + eps).sqrt()], 1e-14);
    assert_close(&y[..1], &[(x[0] - m0) * rs[0] * gamma[0] + beta[0]], 1e-14);

    let mut dx = vec![f64::NAN; rows * d];
    let mut dg = vec![0.25; d];
    let mut db = vec![0.25; d];
    layer_norm_backward(rows, d, &x, &dy, &gamma, &mu, &rs, &mut dx, &mut dg, &mut db);
    assert_close(&dx, &fd_grad(&x, |x| loss(x, &gamma, &beta)), FD_TOL);
    let want: Vec<f64> = fd_grad(&gamma, |g| loss(&x, g, &beta)).iter().map(|v| v + 0.25).collect();
    assert_close(&dg, &want, FD_TOL);
    let want: Vec<f64> = fd_grad(&beta, |b| loss(&x, &gamma, b)).iter().map(|v| v + 0.25).collect();
    assert_close(&db, &want, FD_TOL);
}

// ---- softmax, activations --------------------------------------------------------------

#[test]
fn softmax_is_stable_and_log_softmax_agrees() {
    let x = [1000.0, 1001.0, 1002.0, -1.0, 0.0, 1.0];
    let mut y = [0.0; 6];
    softmax(2, 3, &x, &mut y);
    let e = [(-2.0f64).exp(), (-1.0f64).exp(), 1.0];
    let s: f64 = e.iter().sum();
    let want = [e[0] / s, e[1] / s, e[2] / s, e[0] / s, e[1] / s, e[2] / s];
    assert_close(&y, &want, 1e-15);
    let mut ly = [0.0; 6];
    log_softmax(2, 3, &x, &mut ly);
    let ly_exp: Vec<f64> = ly.iter().map(|v| v.exp()).collect();
    assert_close(&ly_exp, &want, 1e-15);
}

#[test]
fn gelu_and_relu_values() {
    let x = [-1.0, 0.0, 1.0, f64::NAN];
    let mut y = [0.0; 4];
    gelu(&x[..3], &mut y[..3]);
    assert_close(&y[..3], &[-0.158_655_253_931_457_05, 0.0, 0.841_344_746_068_543], 1e-15);
    let mut dx = [0.0; 3];
    gelu_backward(&x[..3], &[1.0; 3], &mut dx);
    // Φ(1) + φ(1) = 0.8413447460685429 + 0.24197072451914337.
    assert_close(&dx[2..], &[1.083_315_470_587_686_3], 1e-14);
    relu(&x, &mut y);
    assert_eq!(&y[..3], &[0.0, 0.0, 1.0]);
    assert!(y[3].is_nan());
    let mut dx = [9.0; 4];
    relu_backward(&x, &[2.0; 4], &mut dx);
    assert_eq!(dx, [0.0, 0.0, 2.0, 0.0]);
}

// ---- pooling ---------------------------------------------------------------------------

#[test]
fn max_pool_indices_first_max_and_backward() {
    // 1×1×4×4; the top-left window has a tie (5 at (0,1) and (1,0)): the first wins.
    #[rustfmt::skip]
    let x = [
        1.0, 5.0, 2.0, 3.0,
        5.0, 0.0, 4.0, 4.0,
        -1.0, -2.0, 7.0, 8.0,
        -3.0, -4.0, 9.0, 6.0,
    ];
    let p = Pool2d { n: 1, c: 1, h: 4, w: 4, kh: 2, kw: 2, stride: (2, 2), pad: (0, 0), count_include_pad: true };
    let mut y = [0.0; 4];
    let mut idx = [0u32; 4];
    max_pool2d(&p, &x, &mut y, &mut idx);
    assert_eq!(y, [5.0, 4.0, -1.0, 9.0]);
    assert_eq!(idx, [1, 6, 8, 14]);

    // Overlapping 3×3 windows, stride 1, pad 1: the 9 at (3,2) wins six windows.
    let p3 = Pool2d { kh: 3, kw: 3, stride: (1, 1), pad: (1, 1), ..p };
    let mut y = [0.0; 16];
    let mut idx = [0u32; 16];
    max_pool2d(&p3, &x, &mut y, &mut idx);
    #[rustfmt::skip]
    assert_eq!(idx, [
        1, 1, 1, 6,
        1, 10, 11, 11,
        4, 14, 14, 14,
        8, 14, 14, 14,
    ]);
    let mut dx = [f64::NAN; 16];
    max_pool2d_backward(&p3, &[1.0; 16], &idx, &mut dx);
    #[rustfmt::skip]
    assert_eq!(dx, [
        0.0, 4.0, 0.0, 0.0,
        1.0, 0.0, 1.0, 0.0,
        1.0, 0.0, 1.0, 2.0,
        0.0, 0.0, 6.0, 0.0,
    ]);
}

#[test]
fn avg_pool_values_and_adjoint() {
    let x: Vec<f64> = (0..16).map(|v| v as f64).collect();
    for include in [true, false] {
        let p =
            Pool2d { n: 1, c: 1, h: 4, w: 4, kh: 3, kw: 3, stride: (2, 2), pad: (1, 1), count_include_pad: include };
        let mut y = [0.0; 4];
        avg_pool2d(&p, &x, &mut y);
        // Top-left window covers x[0..2, 0..2] = {0, 1, 4, 5}.
        let want0 = if include { 10.0 / 9.0 } else { 2.5 };
        assert_close(&y[..1], &[want0], 1e-15);
        // Adjoint: <avg(x), dy> = <x, avg_backward(dy)>.
        let dy = data(30, 4);
        let mut dx = vec![f64::NAN; 16];
        avg_pool2d_backward(&p, &dy, &mut dx);
        let xr = data(31, 16);
        avg_pool2d(&p, &xr, &mut y);
        assert!(close(dot(&y, &dy), dot(&xr, &dx), 1e-14));
    }
}

#[test]
fn global_pool_and_upsample_are_adjoint() {
    let (nc, h, w, s) = (2, 2, 3, 2);
    let x = data(40, nc * h * w);
    let mut g = vec![0.0; nc];
    global_avg_pool(nc, h * w, &x, &mut g);
    assert_close(&g[..1], &[x[..6].iter().sum::<f64>() / 6.0], 1e-15);
    let dy = data(41, nc);
    let mut dx = vec![0.0; nc * h * w];
    global_avg_pool_backward(nc, h * w, &dy, &mut dx);
    assert!(close(dot(&g, &dy), dot(&x, &dx), 1e-14));

    let mut y = vec![0.0; nc * h * w * s * s];
    upsample_nearest(nc, h, w, s, &x, &mut y);
    assert_eq!(y[0], x[0]);
    assert_eq!(y[1], x[0]);
    assert_eq!(y[6], x[0]); // row 1 of the output, column 0
    assert_eq!(y[2], x[1]);
    let dy = data(42, y.len());
    let mut dx = vec![f64::NAN; x.len()];
    upsample_nearest_backward(nc, h, w, s, &dy, &mut dx);
    assert!(close(dot(&y, &dy), dot(&x, &dx), 1e-14));
}

// ---- embedding, elementwise ------------------------------------------------------------

#[test]
fn gather_and_scatter_rows() {
    let table = [0.0, 1.0, 10.0, 11.0, 20.0, 21.0];
    let mut out = [0.0; 6];
    gather_rows(2, &table, &[2, 0, 2], &mut out);
    assert_eq!(out, [20.0, 21.0, 0.0, 1.0, 20.0, 21.0]);
    let mut t = [1.0; 6];
    scatter_add_rows(2, &[2, 0, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &mut t);
    assert_eq!(t, [4.0, 5.0, 1.0, 1.0, 7.0, 9.0]);
}

#[test]
fn binary_broadcasting() {
    // [2,1,3] op [1,2,1] -> [2,2,3].
    let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let b = [10.0, 20.0];
    let mut out = [0.0; 12];
    binary(BinaryOp::Add, &a, &[2, 1, 3], &b, &[1, 2, 1], &mut out, &[2, 2, 3]);
    assert_eq!(out, [11.0, 12.0, 13.0, 21.0, 22.0, 23.0, 14.0, 15.0, 16.0, 24.0, 25.0, 26.0]);
    binary(BinaryOp::Div, &b, &[1, 2, 1], &a, &[2, 1, 3], &mut out, &[2, 2, 3]);
    assert_eq!(out[4], 20.0 / 2.0);
    let mut o = [0.0; 3];
    binary(BinaryOp::Max, &[1.0, f64::NAN, -1.0], &[3], &[0.0], &[1], &mut o, &[3]);
    assert_eq!(o[0], 1.0);
    assert!(o[1].is_nan());
    assert_eq!(o[2], 0.0);
    binary(BinaryOp::Min, &[1.0, 2.0, -1.0], &[3], &[0.0], &[1], &mut o, &[3]);
    assert_eq!(o, [0.0, 0.0, -1.0]);
    // Rank 0 and an empty output.
    let mut s = [0.0];
    binary(BinaryOp::Mul, &[3.0], &[], &[4.0], &[], &mut s, &[]);
    assert_eq!(s, [12.0]);
    binary::<f64>(BinaryOp::Sub, &[], &[0, 2], &[1.0, 2.0], &[1, 2], &mut [], &[0, 2]);
}

#[test]
fn unary_affine_axpy_reduce_cast() {
    let x = [-2.0, 0.0, 3.0];
    let mut y = [0.0; 3];
    unary(UnaryOp::Sign, &x, &mut y);
    assert_eq!(y, [-1.0, 0.0, 1.0]);
    unary(UnaryOp::Sign, &[-0.0f64], &mut y[..1]);
    assert!(y[0] == 0.0 && y[0].is_sign_positive());
    unary(UnaryOp::Sigmoid, &[-1000.0, 0.0, 1000.0], &mut y);
    assert_eq!(y, [0.0, 0.5, 1.0]);
    unary(UnaryOp::Square, &x, &mut y);
    assert_eq!(y, [4.0, 0.0, 9.0]);
    affine(2.0, 1.0, &x, &mut y);
    assert_eq!(y, [-3.0, 1.0, 7.0]);
    axpy(-1.0, &x, &mut y);
    assert_eq!(y, [-1.0, 1.0, 4.0]);

    // [2, 3, 2] reduced over the middle axis.
    let x: Vec<f64> = (0..12).map(|v| v as f64).collect();
    let mut r = [0.0; 4];
    reduce(ReduceOp::Sum, 2, 3, 2, &x, &mut r);
    assert_eq!(r, [6.0, 9.0, 24.0, 27.0]);
    reduce(ReduceOp::Mean, 2, 3, 2, &x, &mut r);
    assert_eq!(r, [2.0, 3.0, 8.0, 9.0]);
    reduce(ReduceOp::Max, 2, 3, 2, &x, &mut r);
    assert_eq!(r, [4.0, 5.0, 10.0, 11.0]);
    reduce(ReduceOp::Sum, 2, 0, 2, &[], &mut r);
    assert_eq!(r, [0.0; 4]);
    reduce(ReduceOp::Max, 1, 0, 1, &[], &mut r[..1]);
    assert_eq!(r[0], f64::NEG_INFINITY);

    let mut c = [0.0f32; 2];
    cast(DType::BF16, &[1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0], &mut c);
    assert_eq!(c, [1.0, 1.0 + 4.0 / 256.0]); // ties to even
    let mut s = [0.0f32];
    sum_squares(&[1.0f32, 2.0, 3.0], &mut s);
    assert_eq!(s, [14.0]);
}

// ---- window statistics -----------------------------------------------------------------

fn ramp16() -> Vec<f64> {
    (0..16).map(|v| v as f64).collect()
}

#[test]
fn window_stats_k2_by_hand() {
    // k = 2: rows i-1 ..= i, columns j-1 ..= j.
    let mut mean = [0.0; 16];
    let mut var = [0.0; 16];
    window_stats(1, 4, 4, 2, &ramp16(), &mut mean, &mut var);
    #[rustfmt::skip]
    let want_mean = [
        0.0, 0.5, 1.5, 2.5,
        2.0, 2.5, 3.5, 4.5,
        6.0, 6.5, 7.5, 8.5,
        10.0, 10.5, 11.5, 12.5,
    ];
    #[rustfmt::skip]
    let want_var = [
        0.0, 0.25, 0.25, 0.25,
        4.0, 4.25, 4.25, 4.25,
        4.0, 4.25, 4.25, 4.25,
        4.0, 4.25, 4.25, 4.25,
    ];
    assert_close(&mean, &want_mean, 1e-15);
    assert_close(&var, &want_var, 1e-15);
}

#[test]
fn window_stats_k3_by_hand() {
    // k = 3: rows i-1 ..= i+1. Corners see 2×2, top/bottom edges 2×3, left/right
    // edges 3×2, the interior 3×3.
    let mut mean = [0.0; 16];
    let mut var = [0.0; 16];
    // Two planes: the second is the first plus 100 (same variances).
    let x: Vec<f64> = ramp16().into_iter().chain(ramp16().into_iter().map(|v| v + 100.0)).collect();
    let mut mean2 = [0.0; 32];
    let mut var2 = [0.0; 32];
    window_stats(2, 4, 4, 3, &x, &mut mean2, &mut var2);
    mean.copy_from_slice(&mean2[..16]);
    var.copy_from_slice(&var2[..16]);
    #[rustfmt::skip]
    let want_mean = [
        2.5, 3.0, 4.0, 4.5,
        4.5, 5.0, 6.0, 6.5,
        8.5, 9.0, 10.0, 10.5,
        10.5, 11.0, 12.0, 12.5,
    ];
    let (c, tb, lr, int) = (4.25, 14.0 / 3.0, 131.0 / 12.0, 34.0 / 3.0);
    #[rustfmt::skip]
    let want_var = [
        c, tb, tb, c,
        lr, int, int, lr,
        lr, int, int, lr,
        c, tb, tb, c,
    ];
    assert_close(&mean, &want_mean, 1e-15);
    assert_close(&var, &want_var, 1e-15);
    let shifted: Vec<f64> = want_mean.iter().map(|v| v + 100.0).collect();
    assert_close(&mean2[16..], &shifted, 1e-15);
    assert_close(&var2[16..], &want_var, 1e-12);
}

#[test]
fn window_stats_backward_matches_finite_differences() {
    for k in [2, 3, 4] {
        let (nc, h, w) = (2, 4, 5);
        let len = nc * h * w;
        let x = data(50 + k as u64, len);
        let dmean = data(60, len);
        let dvar = data(61, len);
        let forward = |x: &[f64]| {
            let mut m = vec![0.0; len];
            let mut v = vec![0.0; len];
            window_stats(nc, h, w, k, x, &mut m, &mut v);
            (m, v)
        };
        let loss = |x: &[f64]| {
            let (m, v) = forward(x);
            dot(&m, &dmean) + dot(&v, &dvar)
        };
        let (m, _) = forward(&x);
        let mut dx = vec![f64::NAN; len];
        window_stats_backward(nc, h, w, k, &x, &m, &dmean, &dvar, &mut dx);
        assert_close(&dx, &fd_grad(&x, loss), FD_TOL);
    }
}

// ---- losses ----------------------------------------------------------------------------

#[test]
fn cross_entropy_uniform_logits_is_ln_c() {
    let (rows, classes) = (3, 7);
    let logits = vec![0.25; rows * classes];
    let targets = [0, 3, 6];
    let mut loss = [0.0; 3];
    cross_entropy(rows, classes, &logits, &targets, &mut loss);
    assert_close(&loss, &[(classes as f64).ln(); 3], 1e-15);
    let mut d = vec![f64::NAN; rows * classes];
    cross_entropy_backward(rows, classes, &logits, &targets, &[1.0, 2.0, 0.0], &mut d);
    assert_close(&d[..2], &[1.0 / 7.0 - 1.0, 1.0 / 7.0], 1e-15);
    assert_close(&d[7..8], &[2.0 / 7.0], 1e-15);
    assert_eq!(&d[14..], &[0.0; 7]);
    // Large logits stay finite.
    cross_entropy(1, 2, &[1000.0, 0.0], &[1], &mut loss[..1]);
    assert_close(&loss[..1], &[1000.0], 1e-15);
}

#[test]
fn elementwise_losses() {
    let z = [-800.0, 0.0, 2.0];
    let t = [0.0, 1.0, 0.5];
    let mut l = [0.0; 3];
    bce_with_logits(&z, &t, &mut l);
    let want2 = 2.0 - 1.0 + (1.0 + (-2.0f64).exp()).ln();
    assert_close(&l, &[0.0, 2.0f64.ln(), want2], 1e-15);
    let mut d = [0.0; 3];
    bce_with_logits_backward(&z, &t, &[1.0; 3], &mut d);
    assert_close(&d, &[0.0, -0.5, 1.0 / (1.0 + (-2.0f64).exp()) - 0.5], 1e-15);

    let p = [1.0, 2.0, 3.0];
    let q = [2.0, 2.0, 1.0];
    l1_loss(&p, &q, &mut l);
    assert_eq!(l, [1.0, 0.0, 2.0]);
    l1_loss_backward(&p, &q, &[3.0; 3], &mut d);
    assert_eq!(d, [-3.0, 0.0, 3.0]);
    l2_loss(&p, &q, &mut l);
    assert_eq!(l, [1.0, 0.0, 4.0]);
    l2_loss_backward(&p, &q, &[3.0; 3], &mut d);
    assert_eq!(d, [-6.0, 0.0, 12.0]);
}

// ---- randomness and selection ----------------------------------------------------------

#[test]
fn sample_categorical_dominant_logit() {
    let (rows, classes) = (200, 5);
    let mut logits = vec![0.0f32; rows * classes];
    for r in 0..rows {
        logits[r * classes + (r % classes)] = 1000.0;
    }
    let mut out = vec![0u32; rows];
    sample_categorical(rows, classes, 1.0, 42, 17, &logits, &mut out);
    for (r, &o) in out.iter().enumerate() {
        assert_eq!(o as usize, r % classes);
    }
}

#[test]
fn sample_categorical_uniform_histogram_and_noise() {
    let (rows, classes) = (20_000, 4);
    let logits = vec![0.0f64; rows * classes];
    let mut out = vec![0u32; rows];
    sample_categorical(rows, classes, 0.7, 9, 1234, &logits, &mut out);
    let mut hist = [0usize; 4];
    for &o in &out {
        hist[o as usize] += 1;
    }
    // Expected 5000 each, standard deviation about 61.
    for h in hist {
        assert!((4700..=5300).contains(&h), "histogram {hist:?}");
    }
    // The choice is the argmax of the documented Gumbel counters.
    for r in [0usize, 1, 777, rows - 1] {
        let g: Vec<f64> = (0..classes).map(|c| rng::gumbel(9, 1234 + (r * classes + c) as u64) as f64).collect();
        let mut best = 0;
        for c in 1..classes {
            if g[c] > g[best] {
                best = c;
            }
        }
        assert_eq!(out[r] as usize, best);
    }
}

#[test]
fn rand_uniform_and_argmax() {
    let mut u = [0.0f32; 5];
    rand_uniform(3, 10, &mut u);
    for (i, v) in u.iter().enumerate() {
        assert_eq!(*v, rng::uniform(3, 10 + i as u64));
    }
    let x = [1.0, 3.0, 3.0, f64::NAN, f64::NAN, 2.0, -1.0, -1.0];
    let mut out = [9u32; 4];
    argmax(4, 2, &x, &mut out);
    // NaN counts as the maximum; ties and NaNs: the first wins.
    assert_eq!(out, [1, 1, 0, 0]);
}

// ---- optimizer -------------------------------------------------------------------------

#[test]
fn adamw_one_step_by_hand() {
    let hp = AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, step: 1 };
    let groups = [
        ParamGroup { offset: 0, len: 2, lr: 0.1, weight_decay: 0.01 },
        ParamGroup { offset: 3, len: 1, lr: 0.01, weight_decay: 0.0 },
    ];
    let mut p = [1.0, -2.0, 5.0, 3.0];
    let g = [0.5, -0.25, 7.0, 1.0];
    let mut m = [0.0; 4];
    let mut v = [0.0; 4];
    adamw(&hp, &groups, &mut p, &g, &mut m, &mut v, 2.0);
    // Element 0: g = 1, m = 0.1, v = 0.001, m̂ = v̂ = 1:
    // p = 1·(1 - 0.001) - 0.1 · 1/(1 + 1e-8).
    // Element 1: g = -0.5, m̂ = -0.5, v̂ = 0.25: p = -2·0.999 + 0.1·0.5/(0.5 + 1e-8).
    // Element 3: g = 2, m̂ = 2, v̂ = 4, no decay: p = 3 - 0.01·2/(2 + 1e-8).
    let want_p = [0.999 - 0.1 / (1.0 + 1e-8), -1.998 + 0.05 / (0.5 + 1e-8), 5.0, 3.0 - 0.02 / (2.0 + 1e-8)];
    assert_close(&p, &want_p, 1e-15);
    assert_close(&m, &[0.1, -0.05, 0.0, 0.2], 1e-15);
    assert_close(&v, &[0.001, 0.00025, 0.0, 0.004], 1e-15);

    // Step 2 with the same gradient: m = 0.19, v = 0.001999 (element 0).
    let hp2 = AdamW { step: 2, ..hp };
    let p0 = p[0];
    adamw(&hp2, &groups, &mut p, &g, &mut m, &mut v, 2.0);
    let mhat = 0.19 / (1.0 - 0.81);
    let vhat: f64 = 0.001999 / (1.0 - 0.998001);
    let want = p0 * (1.0 - 0.001) - 0.1 * mhat / (vhat.sqrt() + 1e-8);
    assert_close(&p[..1], &[want], 1e-14);
}

// ---- zero sizes ------------------------------------------------------------------------

#[test]
fn zero_sized_dimensions_do_not_panic() {
    let p = Conv2d { n: 0, c_in: 1, h: 3, w: 3, c_out: 2, kh: 2, kw: 2, stride: (1, 1), pad: (0, 0) };
    let mut db = [0.0f32; 2];
    conv2d(&p, &[], &[0.0; 8], None, &mut []);
    conv2d_grad_bias(&p, &[], &mut db);
    assert_eq!(db, [0.0; 2]);
    let bn = BatchNorm { n: 0, c: 1, hw: 4, eps: 1e-5, momentum: 0.1 };
    let (mut rm, mut rv, mut sm, mut si) = ([0.5f32], [2.0f32], [9.0f32], [9.0f32]);
    batch_norm_train(&bn, &[], &[1.0], &[0.0], &mut rm, &mut rv, &mut [], &mut sm, &mut si);
    assert_eq!((rm, rv, sm[0]), ([0.5], [2.0], 0.0));
    let mut mu = [0.0f32; 2];
    let mut rs = [0.0f32; 2];
    layer_norm(2, 0, 1e-5, &[], &[], &[], &mut [], &mut mu, &mut rs);
    softmax::<f32>(0, 4, &[], &mut []);
    window_stats::<f32>(1, 0, 3, 3, &[], &mut [], &mut []);
    let mut am = [7u32; 2];
    argmax::<f32>(2, 0, &[], &mut am);
    assert_eq!(am, [0, 0]);
    let mut r = [1.0f32; 2];
    reduce(ReduceOp::Mean, 2, 0, 1, &[], &mut r);
    assert_eq!(r, [0.0; 2]);
    global_avg_pool::<f32>(1, 0, &[], &mut r[..1]);
    assert_eq!(r[0], 0.0);
}

#[test]
fn permute_matches_index_formula() {
    // x: [2, 3, 4] → perm [2, 0, 1] → y: [4, 2, 3], y[c, a, b] = x[a, b, c].
    let x: alloc::vec::Vec<f64> = (0..24).map(|v| v as f64).collect();
    let mut y = alloc::vec![0.0; 24];
    super::permute(&[2, 3, 4], &[2, 0, 1], &x, &mut y);
    for a in 0..2 {
        for b in 0..3 {
            for c in 0..4 {
                assert_eq!(y[(c * 2 + a) * 3 + b], x[(a * 3 + b) * 4 + c]);
            }
        }
    }
    // Identity and rank 0 leave data untouched.
    let mut z = alloc::vec![0.0; 24];
    super::permute(&[2, 3, 4], &[0, 1, 2], &x, &mut z);
    assert_eq!(z, x);
    let mut s = [0.0];
    super::permute::<f64>(&[], &[], &[7.0], &mut s);
    assert_eq!(s, [7.0]);
}
