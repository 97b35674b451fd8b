//! Smoke tests: the fast ops against the reference kernels (run in `f64` on the same
//! `f32` inputs) on fixed shapes, with odd sizes, transposes, strides, padding and the
//! accumulate conventions. The property-based suites live in `cim-conformance`.

use super::Cpu;
use cim_core::backend::*;
use cim_core::reference::kernels as rk;
use cim_core::{DType, Error, View, ViewMut};

// ---- helpers ----------------------------------------------------------------------------

/// Values in `[lo, hi)` from a fixed stream.
fn data(len: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

fn rnd(len: usize, seed: u64) -> Vec<f32> {
    data(len, seed, -1.0, 1.0)
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

fn f32s(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

#[track_caller]
fn close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = g as f64 == w || (g as f64 - w).abs() <= tol * (1.0 + w.abs()) || (g.is_nan() && w.is_nan());
        assert!(ok, "{what}[{i}]: got {g}, want {w} (tol {tol})");
    }
}

#[allow(clippy::ptr_arg)]
fn v(b: &Vec<f32>) -> View<'_, Vec<f32>> {
    View { buf: b, offset: 0, len: b.len() }
}

fn m(b: &mut Vec<f32>) -> ViewMut<'_, Vec<f32>> {
    let len = b.len();
    ViewMut { buf: b, offset: 0, len }
}

#[allow(clippy::ptr_arg)]
fn vi(b: &Vec<u32>) -> View<'_, Vec<u32>> {
    View { buf: b, offset: 0, len: b.len() }
}

fn mi(b: &mut Vec<u32>) -> ViewMut<'_, Vec<u32>> {
    let len = b.len();
    ViewMut { buf: b, offset: 0, len }
}

/// One thread, and more threads than this machine has cores (to force the parallel
/// paths and uneven splits everywhere).
fn backends() -> Vec<Cpu> {
    vec![Cpu::with_threads(1).unwrap(), Cpu::with_threads(3).unwrap(), Cpu::new()]
}

// ---- memory -----------------------------------------------------------------------------

#[test]
fn memory_and_name() {
    let cpu = Cpu::new();
    assert_eq!(cpu.name(), "cpu");
    let x = rnd(100_001, 1);
    let mut b = cpu.upload(&x).unwrap();
    assert_eq!(cpu.download(v(&b)).unwrap(), x);
    let z = cpu.alloc(70_000).unwrap();
    assert!(z.iter().all(|&v| v == 0.0));
    cpu.fill(ViewMut { buf: &mut b, offset: 5, len: 90_000 }, 2.5).unwrap();
    assert_eq!(b[4], x[4]);
    assert!(b[5..90_005].iter().all(|&v| v == 2.5));
    assert_eq!(b[90_005], x[90_005]);
    let ids = cpu.upload_idx(&[3, 1, 4]).unwrap();
    assert_eq!(cpu.download_idx(vi(&ids)).unwrap(), vec![3, 1, 4]);
    assert!(cpu.alloc_idx(5).unwrap().iter().all(|&v| v == 0));
}

#[test]
fn allocation_failure_is_an_error() {
    let cpu = Cpu::new();
    assert!(matches!(cpu.alloc(usize::MAX / 2), Err(Error::OutOfMemory { .. })));
    assert!(matches!(cpu.alloc_idx(usize::MAX / 4), Err(Error::OutOfMemory { .. })));
}

// ---- GEMM -------------------------------------------------------------------------------

fn check_gemm(cpu: &Cpu, p: Gemm, c0_nan: bool) {
    let a = rnd(p.span_a(), 11);
    let b = rnd(p.span_b(), 12);
    let c0 = if c0_nan { vec![f32::NAN; p.span_c()] } else { rnd(p.span_c(), 13) };
    let mut want = f64s(&c0);
    rk::gemm(&p, &f64s(&a), &f64s(&b), &mut want);
    let mut c = c0.clone();
    cpu.gemm(&p, v(&a), v(&b), m(&mut c)).unwrap();
    let tol = 2e-6 * (p.k as f64).sqrt() * (1.0 + p.batch as f64 * (p.stride_c == 0) as u8 as f64);
    close(&format!("gemm {p:?}"), &c, &want, tol);
}

#[test]
fn gemm_shapes_and_transposes() {
    let shapes = [(1, 1, 1), (7, 5, 3), (33, 65, 17), (300, 200, 64), (40, 700, 100), (129, 3, 257)];
    for cpu in backends() {
        for &(mm, n, k) in &shapes {
            for ta in [false, true] {
                for tb in [false, true] {
                    let p = Gemm { trans_a: ta, trans_b: tb, alpha: 0.75, ..Gemm::new(mm, n, k) };
                    // beta = 0: the NaNs in C must be ignored.
                    check_gemm(&cpu, p, true);
                    check_gemm(&cpu, Gemm { beta: 1.0, ..p }, false);
                    check_gemm(&cpu, Gemm { beta: -0.5, ..p }, false);
                }
            }
        }
    }
}

#[test]
fn gemm_batched_strided() {
    for cpu in backends() {
        for &(batch, mm, n, k) in &[(3, 5, 4, 6), (20, 30, 20, 10), (8, 64, 64, 64), (96, 37, 37, 16)] {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let base = Gemm {
                    batch,
                    trans_a: ta,
                    trans_b: tb,
                    stride_a: mm * k + 3,
                    stride_b: k * n,
                    stride_c: mm * n + 1,
                    ..Gemm::new(mm, n, k)
                };
                check_gemm(&cpu, base, true);
                // B broadcast over the batch.
                check_gemm(&cpu, Gemm { stride_b: 0, beta: 1.0, ..base }, false);
                // C shared by the batch: the products sum into it.
                check_gemm(&cpu, Gemm { stride_c: 0, beta: 1.0, ..base }, false);
            }
        }
        // k = 0: C = beta · C.
        check_gemm(&cpu, Gemm { beta: 0.5, ..Gemm::new(4, 3, 0) }, false);
        check_gemm(&cpu, Gemm::new(4, 3, 0), true);
    }
}

#[test]
fn gemm_on_offset_views() {
    let cpu = Cpu::default();
    let p = Gemm::new(70, 90, 110);
    let a = rnd(p.span_a() + 7, 14);
    let b = rnd(p.span_b() + 3, 15);
    let mut want = vec![0.0; p.span_c()];
    rk::gemm(&p, &f64s(&a[7..]), &f64s(&b[3..]), &mut want);
    let mut c = vec![f32::NAN; p.span_c() + 5];
    #[allow(clippy::ptr_arg)]
    fn view(x: &Vec<f32>, offset: usize, len: usize) -> View<'_, Vec<f32>> {
        View { buf: x, offset, len }
    }
    cpu.gemm(&p, view(&a, 7, p.span_a()), view(&b, 3, p.span_b()), ViewMut { buf: &mut c, offset: 5, len: p.span_c() })
        .unwrap();
    close("gemm offsets", &c[5..], &want, 1e-5);
    assert!(c[..5].iter().all(|v| v.is_nan()));
}

// ---- convolution ------------------------------------------------------------------------

fn conv_cases() -> Vec<Conv2d> {
    let c = |n, c_in, h, w, c_out, kh, kw, stride, pad| Conv2d { n, c_in, h, w, c_out, kh, kw, stride, pad };
    vec![
        c(2, 3, 9, 7, 5, 3, 3, (1, 1), (1, 1)),
        c(3, 4, 11, 10, 6, 3, 2, (2, 1), (1, 2)),
        c(2, 8, 6, 5, 16, 1, 1, (1, 1), (0, 0)),
        c(2, 8, 7, 6, 12, 1, 1, (2, 2), (0, 0)),
        c(2, 3, 15, 15, 8, 7, 7, (2, 2), (3, 3)),
        c(1, 2, 3, 3, 4, 5, 5, (1, 1), (2, 2)),
        c(1, 16, 40, 40, 130, 3, 3, (1, 1), (1, 1)),
        c(2, 32, 20, 20, 24, 1, 1, (1, 1), (0, 0)),
        c(3, 5, 13, 17, 7, 2, 4, (3, 2), (0, 1)),
    ]
}

#[test]
fn conv2d_forward() {
    for cpu in backends() {
        for p in conv_cases() {
            let x = rnd(p.x_len(), 21);
            let w = rnd(p.w_len(), 22);
            let bias = rnd(p.c_out, 23);
            let tol = 3e-6 * ((p.c_in * p.kh * p.kw) as f64).sqrt();
            for with_bias in [false, true] {
                let mut want = vec![0.0; p.y_len()];
                let bb = f64s(&bias);
                rk::conv2d(&p, &f64s(&x), &f64s(&w), with_bias.then_some(&bb[..]), &mut want);
                let mut y = vec![f32::NAN; p.y_len()];
                cpu.conv2d(&p, v(&x), v(&w), with_bias.then(|| v(&bias)), m(&mut y)).unwrap();
                close(&format!("conv2d {p:?}"), &y, &want, tol);
            }
        }
    }
}

#[test]
fn conv2d_grad_input() {
    for cpu in backends() {
        for p in conv_cases() {
            let dy = rnd(p.y_len(), 24);
            let w = rnd(p.w_len(), 25);
            let mut want = vec![0.0; p.x_len()];
            rk::conv2d_grad_input(&p, &f64s(&dy), &f64s(&w), &mut want);
            let mut dx = vec![f32::NAN; p.x_len()];
            cpu.conv2d_grad_input(&p, v(&dy), v(&w), m(&mut dx)).unwrap();
            let tol = 3e-6 * ((p.c_out * p.kh * p.kw) as f64).sqrt();
            close(&format!("conv2d_grad_input {p:?}"), &dx, &want, tol);
        }
    }
}

#[test]
fn conv2d_grad_weight_and_bias_accumulate() {
    for cpu in backends() {
        for p in conv_cases() {
            let x = rnd(p.x_len(), 26);
            let dy = rnd(p.y_len(), 27);
            let dw0 = rnd(p.w_len(), 28);
            let db0 = rnd(p.c_out, 29);
            // Twice: dw = dw0 + 2 · (x ⋆ dy).
            let mut want = f64s(&dw0);
            rk::conv2d_grad_weight(&p, &f64s(&x), &f64s(&dy), &mut want);
            rk::conv2d_grad_weight(&p, &f64s(&x), &f64s(&dy), &mut want);
            let mut dw = dw0.clone();
            cpu.conv2d_grad_weight(&p, v(&x), v(&dy), m(&mut dw)).unwrap();
            cpu.conv2d_grad_weight(&p, v(&x), v(&dy), m(&mut dw)).unwrap();
            let l = p.n * p.out_h() * p.out_w();
            close(&format!("conv2d_grad_weight {p:?}"), &dw, &want, 4e-6 * (l as f64).sqrt());

            let mut want = f64s(&db0);
            rk::conv2d_grad_bias(&p, &f64s(&dy), &mut want);
            rk::conv2d_grad_bias(&p, &f64s(&dy), &mut want);
            let mut db = db0.clone();
            cpu.conv2d_grad_bias(&p, v(&dy), m(&mut db)).unwrap();
            cpu.conv2d_grad_bias(&p, v(&dy), m(&mut db)).unwrap();
            close(&format!("conv2d_grad_bias {p:?}"), &db, &want, 4e-6 * (l as f64).sqrt());
        }
    }
}

#[test]
fn conv2d_large_parallel() {
    // Big enough for several column blocks per image and per-worker partial sums.
    let p = Conv2d { n: 3, c_in: 32, h: 48, w: 44, c_out: 40, kh: 3, kw: 3, stride: (1, 1), pad: (1, 1) };
    let x = rnd(p.x_len(), 30);
    let w = rnd(p.w_len(), 31);
    let dy = rnd(p.y_len(), 32);
    let cpu = Cpu::with_threads(4).unwrap();
    let mut want = vec![0.0; p.y_len()];
    rk::conv2d(&p, &f64s(&x), &f64s(&w), None, &mut want);
    let mut y = vec![0.0; p.y_len()];
    cpu.conv2d(&p, v(&x), v(&w), None, m(&mut y)).unwrap();
    close("conv2d large", &y, &want, 1e-4);
    let mut want = vec![0.0; p.x_len()];
    rk::conv2d_grad_input(&p, &f64s(&dy), &f64s(&w), &mut want);
    let mut dx = vec![0.0; p.x_len()];
    cpu.conv2d_grad_input(&p, v(&dy), v(&w), m(&mut dx)).unwrap();
    close("conv2d_grad_input large", &dx, &want, 1e-4);
    let mut want = vec![0.0; p.w_len()];
    rk::conv2d_grad_weight(&p, &f64s(&x), &f64s(&dy), &mut want);
    let mut dw = vec![0.0; p.w_len()];
    cpu.conv2d_grad_weight(&p, v(&x), v(&dy), m(&mut dw)).unwrap();
    close("conv2d_grad_weight large", &dw, &want, 2e-4);
}

#[test]
fn reductions_are_deterministic() {
    // Same thread count, same bits, however the pool schedules the work.
    let cpu = Cpu::with_threads(3).unwrap();
    let p = conv_cases()[6];
    let x = rnd(p.x_len(), 33);
    let dy = rnd(p.y_len(), 34);
    let run = || {
        let mut dw = vec![0.0; p.w_len()];
        cpu.conv2d_grad_weight(&p, v(&x), v(&dy), m(&mut dw)).unwrap();
        let mut s = vec![0.0];
        cpu.sum_squares(v(&dw), m(&mut s)).unwrap();
        (dw, s)
    };
    let first = run();
    for _ in 0..5 {
        assert!(run() == first);
    }
}

// ---- normalization ----------------------------------------------------------------------

#[test]
fn layer_norm_and_backward() {
    for cpu in backends() {
        for &(rows, d) in &[(1, 1), (37, 129), (300, 768), (5, 3)] {
            let x = data(rows * d, 41, -3.0, 5.0);
            let gamma = rnd(d, 42);
            let beta = rnd(d, 43);
            let dy = rnd(rows * d, 44);
            let (mut wy, mut wm, mut wr) = (vec![0.0; rows * d], vec![0.0; rows], vec![0.0; rows]);
            rk::layer_norm(rows, d, 1e-5, &f64s(&x), &f64s(&gamma), &f64s(&beta), &mut wy, &mut wm, &mut wr);
            let (mut y, mut mean, mut rstd) = (vec![0.0; rows * d], vec![0.0; rows], vec![0.0; rows]);
            cpu.layer_norm(rows, d, 1e-5, v(&x), v(&gamma), v(&beta), m(&mut y), m(&mut mean), m(&mut rstd)).unwrap();
            close("layer_norm y", &y, &wy, 2e-5);
            close("layer_norm mean", &mean, &wm, 2e-6);
            close("layer_norm rstd", &rstd, &wr, 2e-5);

            let dg0 = rnd(d, 45);
            let db0 = rnd(d, 46);
            let mut wdx = vec![0.0; rows * d];
            let (mut wdg, mut wdb) = (f64s(&dg0), f64s(&db0));
            rk::layer_norm_backward(
                rows,
                d,
                &f64s(&x),
                &f64s(&dy),
                &f64s(&gamma),
                &f64s(&mean),
                &f64s(&rstd),
                &mut wdx,
                &mut wdg,
                &mut wdb,
            );
            let mut dx = vec![0.0; rows * d];
            let (mut dg, mut db) = (dg0.clone(), db0.clone());
            cpu.layer_norm_backward(
                rows,
                d,
                v(&x),
                v(&dy),
                v(&gamma),
                v(&mean),
                v(&rstd),
                m(&mut dx),
                m(&mut dg),
                m(&mut db),
            )
            .unwrap();
            close("layer_norm dx", &dx, &wdx, 5e-5);
            close("layer_norm dgamma", &dg, &wdg, 2e-5 * (rows as f64).sqrt());
            close("layer_norm dbeta", &db, &wdb, 2e-5 * (rows as f64).sqrt());
        }
    }
}

#[test]
fn batch_norm_train_eval_backward() {
    for cpu in backends() {
        for &(n, c, hw) in &[(3, 5, 7), (4, 8, 3000), (2, 3, 1)] {
            let p = BatchNorm { n, c, hw, eps: 1e-5, momentum: 0.1 };
            let len = n * c * hw;
            let x = data(len, 51, -2.0, 4.0);
            let gamma = rnd(c, 52);
            let beta = rnd(c, 53);
            let rm0 = rnd(c, 54);
            let rv0 = data(c, 55, 0.5, 2.0);
            let (mut wrm, mut wrv) = (f64s(&rm0), f64s(&rv0));
            let (mut wy, mut wsm, mut wsi) = (vec![0.0; len], vec![0.0; c], vec![0.0; c]);
            rk::batch_norm_train(
                &p,
                &f64s(&x),
                &f64s(&gamma),
                &f64s(&beta),
                &mut wrm,
                &mut wrv,
                &mut wy,
                &mut wsm,
                &mut wsi,
            );
            let (mut rm, mut rv) = (rm0.clone(), rv0.clone());
            let (mut y, mut sm, mut si) = (vec![0.0; len], vec![0.0; c], vec![0.0; c]);
            cpu.batch_norm_train(
                &p,
                v(&x),
                v(&gamma),
                v(&beta),
                m(&mut rm),
                m(&mut rv),
                m(&mut y),
                m(&mut sm),
                m(&mut si),
            )
            .unwrap();
            close("bn y", &y, &wy, 2e-5);
            close("bn running mean", &rm, &wrm, 2e-6);
            close("bn running var", &rv, &wrv, 2e-6);
            close("bn save mean", &sm, &wsm, 2e-6);
            close("bn save invstd", &si, &wsi, 2e-5);

            let mut wy = vec![0.0; len];
            rk::batch_norm_eval(&p, &f64s(&x), &f64s(&gamma), &f64s(&beta), &f64s(&rm0), &f64s(&rv0), &mut wy);
            let mut y = vec![0.0; len];
            cpu.batch_norm_eval(&p, v(&x), v(&gamma), v(&beta), v(&rm0), v(&rv0), m(&mut y)).unwrap();
            close("bn eval", &y, &wy, 2e-6);

            let dy = rnd(len, 56);
            let (dg0, db0) = (rnd(c, 57), rnd(c, 58));
            let mut wdx = vec![0.0; len];
            let (mut wdg, mut wdb) = (f64s(&dg0), f64s(&db0));
            rk::batch_norm_backward(
                &p,
                &f64s(&x),
                &f64s(&dy),
                &f64s(&gamma),
                &f64s(&sm),
                &f64s(&si),
                &mut wdx,
                &mut wdg,
                &mut wdb,
            );
            let mut dx = vec![0.0; len];
            let (mut dg, mut db) = (dg0.clone(), db0.clone());
            cpu.batch_norm_backward(&p, v(&x), v(&dy), v(&gamma), v(&sm), v(&si), m(&mut dx), m(&mut dg), m(&mut db))
                .unwrap();
            let k = ((n * hw) as f64).sqrt();
            close("bn dx", &dx, &wdx, 5e-5);
            close("bn dgamma", &dg, &wdg, 5e-6 * k);
            close("bn dbeta", &db, &wdb, 5e-6 * k);
        }
    }
}

// ---- softmax, activations, losses ------------------------------------------------------

#[test]
fn softmax_family() {
    for cpu in backends() {
        for &(rows, d) in &[(1, 1), (3, 5), (50, 197), (400, 197)] {
            let mut x = data(rows * d, 61, -8.0, 8.0);
            if d > 3 {
                x[2] = f32::NEG_INFINITY; // a masked logit
            }
            let dy = rnd(rows * d, 62);
            let xs = f64s(&x);
            let mut want = vec![0.0; rows * d];
            rk::softmax(rows, d, &xs, &mut want);
            let mut y = vec![0.0; rows * d];
            cpu.softmax(rows, d, v(&x), m(&mut y)).unwrap();
            close("softmax", &y, &want, 2e-6);
            let mut wdx = vec![0.0; rows * d];
            rk::softmax_backward(rows, d, &f64s(&y), &f64s(&dy), &mut wdx);
            let mut dx = vec![0.0; rows * d];
            cpu.softmax_backward(rows, d, v(&y), v(&dy), m(&mut dx)).unwrap();
            close("softmax_backward", &dx, &wdx, 5e-6);

            let mut want = vec![0.0; rows * d];
            rk::log_softmax(rows, d, &xs, &mut want);
            let mut y = vec![0.0; rows * d];
            cpu.log_softmax(rows, d, v(&x), m(&mut y)).unwrap();
            close("log_softmax", &y, &want, 2e-6);
            let mut wdx = vec![0.0; rows * d];
            rk::log_softmax_backward(rows, d, &f64s(&y), &f64s(&dy), &mut wdx);
            let mut dx = vec![0.0; rows * d];
            cpu.log_softmax_backward(rows, d, v(&y), v(&dy), m(&mut dx)).unwrap();
            close("log_softmax_backward", &dx, &wdx, 1e-5);
        }
    }
}

#[test]
fn cross_entropy_and_backward() {
    for cpu in backends() {
        for &(rows, classes) in &[(1, 1), (7, 10), (3000, 13), (20, 1000)] {
            let x = data(rows * classes, 71, -6.0, 6.0);
            let t: Vec<u32> = (0..rows).map(|r| ((r * 7 + 3) % classes) as u32).collect();
            let dl = rnd(rows, 72);
            let mut want = vec![0.0; rows];
            rk::cross_entropy(rows, classes, &f64s(&x), &t, &mut want);
            let mut loss = vec![0.0; rows];
            cpu.cross_entropy(rows, classes, v(&x), vi(&t), m(&mut loss)).unwrap();
            close("cross_entropy", &loss, &want, 2e-6);
            let mut want = vec![0.0; rows * classes];
            rk::cross_entropy_backward(rows, classes, &f64s(&x), &t, &f64s(&dl), &mut want);
            let mut dx = vec![0.0; rows * classes];
            cpu.cross_entropy_backward(rows, classes, v(&x), vi(&t), v(&dl), m(&mut dx)).unwrap();
            close("cross_entropy_backward", &dx, &want, 2e-6);
        }
    }
}

#[test]
fn activations() {
    for cpu in backends() {
        for &len in &[1, 17, 100_003] {
            let x = data(len, 81, -7.0, 7.0);
            let dy = rnd(len, 82);
            let xs = f64s(&x);
            let mut want = vec![0.0; len];
            rk::gelu(&xs, &mut want);
            let mut y = vec![0.0; len];
            cpu.gelu(v(&x), m(&mut y)).unwrap();
            // erf near ±1 is computed to ~1e-7 absolute, which gelu scales by |x|/2.
            close("gelu", &y, &want, 5e-7);
            let mut want = vec![0.0; len];
            rk::gelu_backward(&xs, &f64s(&dy), &mut want);
            let mut dx = vec![0.0; len];
            cpu.gelu_backward(v(&x), v(&dy), m(&mut dx)).unwrap();
            close("gelu_backward", &dx, &want, 1e-6);

            let mut want = vec![0.0; len];
            rk::relu(&x, &mut y);
            rk::relu(&xs, &mut want);
            cpu.relu(v(&x), m(&mut y)).unwrap();
            close("relu", &y, &want, 0.0);
            rk::relu_backward(&xs, &f64s(&dy), &mut want);
            cpu.relu_backward(v(&x), v(&dy), m(&mut dx)).unwrap();
            close("relu_backward", &dx, &want, 0.0);
        }
    }
}

#[test]
fn unary_affine_axpy_cast() {
    for cpu in backends() {
        let len = 70_001;
        let x = data(len, 91, 0.1, 3.0);
        for op in [
            UnaryOp::Neg,
            UnaryOp::Exp,
            UnaryOp::Ln,
            UnaryOp::Sqrt,
            UnaryOp::Abs,
            UnaryOp::Square,
            UnaryOp::Recip,
            UnaryOp::Sigmoid,
            UnaryOp::Tanh,
            UnaryOp::Sign,
        ] {
            // Delegated chunk by chunk: bit-identical to the f32 reference.
            let mut want = vec![0.0f32; len];
            rk::unary(op, &x, &mut want);
            let mut y = vec![0.0; len];
            cpu.unary(op, v(&x), m(&mut y)).unwrap();
            assert_eq!(y, want, "{op:?}");
        }
        let mut want = vec![0.0; len];
        rk::affine(1.5, -0.25, &f64s(&x), &mut want);
        let mut y = vec![0.0; len];
        cpu.affine(1.5, -0.25, v(&x), m(&mut y)).unwrap();
        close("affine", &y, &want, 5e-7);
        let y0 = rnd(len, 92);
        let mut want = f64s(&y0);
        rk::axpy(-0.5, &f64s(&x), &mut want);
        let mut y = y0.clone();
        cpu.axpy(-0.5, v(&x), m(&mut y)).unwrap();
        close("axpy", &y, &want, 5e-7);
        for dt in [DType::F16, DType::BF16, DType::F32] {
            let mut want = vec![0.0f32; len];
            rk::cast(dt, &x, &mut want);
            cpu.cast(dt, v(&x), m(&mut y)).unwrap();
            assert_eq!(y, want, "cast {dt:?}");
        }
    }
}

#[test]
fn binary_broadcasts() {
    #[allow(clippy::type_complexity)]
    let cases: &[(&[usize], &[usize], &[usize])] = &[
        (&[37, 129], &[37, 129], &[37, 129]),
        (&[700, 129], &[1, 129], &[700, 129]),
        (&[1, 129], &[700, 129], &[700, 129]),
        (&[6, 16, 30, 30], &[1, 16, 1, 1], &[6, 16, 30, 30]),
        (&[1, 16, 1, 1], &[6, 16, 30, 30], &[6, 16, 30, 30]),
        (&[300, 301], &[1, 1], &[300, 301]),
        (&[1], &[5], &[5]),
        (&[40, 1, 300], &[1, 50, 1], &[40, 50, 300]),
        (&[2, 1, 3], &[1, 4, 1], &[2, 4, 3]),
        (&[1, 3, 200, 1], &[9, 3, 1, 100], &[9, 3, 200, 100]),
    ];
    let ops = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Max, BinaryOp::Min];
    for cpu in backends() {
        for &(sa, sb, so) in cases {
            let na: usize = sa.iter().product();
            let nb: usize = sb.iter().product();
            let no: usize = so.iter().product();
            let a = data(na, 101, 0.5, 2.0);
            let b = data(nb, 102, 0.5, 2.0);
            for op in ops {
                let mut want = vec![0.0f32; no];
                rk::binary(op, &a, sa, &b, sb, &mut want, so);
                let mut y = vec![f32::NAN; no];
                cpu.binary(op, v(&a), sa, v(&b), sb, m(&mut y), so).unwrap();
                // One rounding of the same operands: bit-identical.
                assert_eq!(y, want, "{op:?} {sa:?} {sb:?} -> {so:?}");
            }
        }
    }
}

#[test]
fn losses_delegated() {
    for cpu in backends() {
        let len = 50_001;
        let p = rnd(len, 111);
        let t = data(len, 112, 0.0, 1.0);
        let dl = rnd(len, 113);
        let (mut want, mut got) = (vec![0.0f32; len], vec![0.0f32; len]);
        rk::bce_with_logits(&p, &t, &mut want);
        cpu.bce_with_logits(v(&p), v(&t), m(&mut got)).unwrap();
        assert_eq!(got, want);
        rk::bce_with_logits_backward(&p, &t, &dl, &mut want);
        cpu.bce_with_logits_backward(v(&p), v(&t), v(&dl), m(&mut got)).unwrap();
        assert_eq!(got, want);
        rk::l1_loss(&p, &t, &mut want);
        cpu.l1_loss(v(&p), v(&t), m(&mut got)).unwrap();
        assert_eq!(got, want);
        rk::l1_loss_backward(&p, &t, &dl, &mut want);
        cpu.l1_loss_backward(v(&p), v(&t), v(&dl), m(&mut got)).unwrap();
        assert_eq!(got, want);
        rk::l2_loss(&p, &t, &mut want);
        cpu.l2_loss(v(&p), v(&t), m(&mut got)).unwrap();
        assert_eq!(got, want);
        rk::l2_loss_backward(&p, &t, &dl, &mut want);
        cpu.l2_loss_backward(v(&p), v(&t), v(&dl), m(&mut got)).unwrap();
        assert_eq!(got, want);
    }
}

// ---- randomness, selection, pooling, embedding, reductions ----------------------------

#[test]
fn random_is_exactly_the_reference() {
    for cpu in backends() {
        let (rows, classes) = (1000, 37);
        let x = data(rows * classes, 121, -3.0, 3.0);
        let mut want = vec![0u32; rows];
        rk::sample_categorical(rows, classes, 0.7, 99, 12_345, &x, &mut want);
        let mut got = vec![0u32; rows];
        cpu.sample_categorical(rows, classes, 0.7, 99, 12_345, v(&x), mi(&mut got)).unwrap();
        assert_eq!(got, want);

        let mut want = vec![0.0f32; 100_003];
        rk::rand_uniform(7, 1_000_001, &mut want);
        let mut got = vec![0.0f32; 100_003];
        cpu.rand_uniform(7, 1_000_001, m(&mut got)).unwrap();
        assert_eq!(got, want);

        let mut want = vec![0u32; rows];
        rk::argmax(rows, classes, &x, &mut want);
        let mut got = vec![0u32; rows];
        cpu.argmax(rows, classes, v(&x), mi(&mut got)).unwrap();
        assert_eq!(got, want);
    }
}

#[test]
fn pools_gather_reduce_delegated() {
    for cpu in backends() {
        for p in [
            Pool2d { n: 3, c: 40, h: 23, w: 21, kh: 3, kw: 3, stride: (2, 2), pad: (1, 1), count_include_pad: true },
            Pool2d { n: 2, c: 3, h: 8, w: 9, kh: 2, kw: 3, stride: (2, 3), pad: (0, 1), count_include_pad: false },
        ] {
            let x = rnd(p.x_len(), 131);
            let dy = rnd(p.y_len(), 132);
            let (mut wy, mut wi) = (vec![0.0f32; p.y_len()], vec![0u32; p.y_len()]);
            rk::max_pool2d(&p, &x, &mut wy, &mut wi);
            let (mut y, mut idx) = (vec![0.0f32; p.y_len()], vec![0u32; p.y_len()]);
            cpu.max_pool2d(&p, v(&x), m(&mut y), mi(&mut idx)).unwrap();
            assert_eq!((&y, &idx), (&wy, &wi));
            let mut want = vec![0.0f32; p.x_len()];
            rk::max_pool2d_backward(&p, &dy, &wi, &mut want);
            let mut dx = vec![f32::NAN; p.x_len()];
            cpu.max_pool2d_backward(&p, v(&dy), vi(&idx), m(&mut dx)).unwrap();
            assert_eq!(dx, want);
            rk::avg_pool2d(&p, &x, &mut wy);
            cpu.avg_pool2d(&p, v(&x), m(&mut y)).unwrap();
            assert_eq!(y, wy);
            rk::avg_pool2d_backward(&p, &dy, &mut want);
            cpu.avg_pool2d_backward(&p, v(&dy), m(&mut dx)).unwrap();
            assert_eq!(dx, want);
        }

        let (nc, hw) = (500, 49);
        let x = rnd(nc * hw, 141);
        let (mut want, mut got) = (vec![0.0f32; nc], vec![0.0f32; nc]);
        rk::global_avg_pool(nc, hw, &x, &mut want);
        cpu.global_avg_pool(nc, hw, v(&x), m(&mut got)).unwrap();
        assert_eq!(got, want);
        let (mut want, mut got) = (vec![0.0f32; nc * hw], vec![0.0f32; nc * hw]);
        rk::global_avg_pool_backward(nc, hw, &x[..nc], &mut want);
        cpu.global_avg_pool_backward(nc, hw, v(&x[..nc].to_vec()), m(&mut got)).unwrap();
        assert_eq!(got, want);

        let (nc, h, w, s) = (300, 7, 5, 3);
        let x = rnd(nc * h * w, 142);
        let (mut want, mut got) = (vec![0.0f32; nc * h * w * s * s], vec![0.0f32; nc * h * w * s * s]);
        rk::upsample_nearest(nc, h, w, s, &x, &mut want);
        cpu.upsample_nearest(nc, h, w, s, v(&x), m(&mut got)).unwrap();
        assert_eq!(got, want);
        let (mut want2, mut got2) = (vec![0.0f32; nc * h * w], vec![0.0f32; nc * h * w]);
        rk::upsample_nearest_backward(nc, h, w, s, &want, &mut want2);
        cpu.upsample_nearest_backward(nc, h, w, s, v(&want), m(&mut got2)).unwrap();
        assert_eq!(got2, want2);

        let (rows, d) = (5000, 9);
        let table = rnd(100 * d, 143);
        let ids: Vec<u32> = (0..rows).map(|i| ((i * 37) % 100) as u32).collect();
        let (mut want, mut got) = (vec![0.0f32; rows * d], vec![0.0f32; rows * d]);
        rk::gather_rows(d, &table, &ids, &mut want);
        cpu.gather_rows(d, v(&table), vi(&ids), m(&mut got)).unwrap();
        assert_eq!(got, want);
        let (mut wt, mut gt) = (table.clone(), table.clone());
        rk::scatter_add_rows(d, &ids, &want, &mut wt);
        cpu.scatter_add_rows(d, vi(&ids), v(&want), m(&mut gt)).unwrap();
        assert_eq!(gt, wt);

        // Bit for bit, also through the column-sum path (inner ≥ 8) with chunks that
        // cross rows of the output ([1, 2080, 192] is a bias gradient of the tiny preset).
        for (outer, axis, inner) in [(300, 17, 11), (1, 2080, 192), (3, 700, 37), (2, 5, 3), (4, 0, 9)] {
            let x = rnd(outer * axis * inner, 144);
            for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
                let (mut want, mut got) = (vec![0.0f32; outer * inner], vec![1.0f32; outer * inner]);
                rk::reduce(op, outer, axis, inner, &x, &mut want);
                cpu.reduce(op, outer, axis, inner, v(&x), m(&mut got)).unwrap();
                assert_eq!(got, want, "{op:?} {outer}x{axis}x{inner}");
            }
        }
    }
}

// ---- RESPIX, optimizer ------------------------------------------------------------------

#[test]
fn window_stats_and_backward() {
    for cpu in backends() {
        for &(nc, h, w, k) in &[(3, 10, 13, 3), (2, 9, 8, 4), (4, 16, 16, 8), (1, 3, 2, 5), (2, 5, 5, 1)] {
            let x = data(nc * h * w, 151, 0.0, 1.0);
            let (mut wm, mut wv) = (vec![0.0; nc * h * w], vec![0.0; nc * h * w]);
            rk::window_stats(nc, h, w, k, &f64s(&x), &mut wm, &mut wv);
            let (mut mean, mut var) = (vec![0.0; nc * h * w], vec![0.0; nc * h * w]);
            cpu.window_stats(nc, h, w, k, v(&x), m(&mut mean), m(&mut var)).unwrap();
            close("window mean", &mean, &wm, 1e-6);
            close("window var", &var, &wv, 1e-6);

            let dm = rnd(nc * h * w, 152);
            let dv = rnd(nc * h * w, 153);
            let mut want = vec![0.0f32; nc * h * w];
            rk::window_stats_backward(nc, h, w, k, &x, &f32s(&wm), &dm, &dv, &mut want);
            let mut dx = vec![0.0f32; nc * h * w];
            cpu.window_stats_backward(nc, h, w, k, v(&x), v(&f32s(&wm)), v(&dm), v(&dv), m(&mut dx)).unwrap();
            assert_eq!(dx, want);
        }
    }
}

#[test]
fn sum_squares_and_adamw() {
    for cpu in backends() {
        for &len in &[0, 1, 1000, 1_000_003] {
            let x = rnd(len, 161);
            let mut want = vec![0.0];
            rk::sum_squares(&f64s(&x), &mut want);
            let mut got = vec![f32::NAN];
            cpu.sum_squares(v(&x), m(&mut got)).unwrap();
            close("sum_squares", &got, &want, 1e-6);
        }

        let len = 40_000;
        let p0 = rnd(len, 171);
        let g = rnd(len, 172);
        let m0 = rnd(len, 173);
        let v0 = data(len, 174, 0.0, 1.0);
        let hp = AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, step: 7 };
        let groups = [
            ParamGroup { offset: 0, len: 30_000, lr: 1e-3, weight_decay: 0.05 },
            ParamGroup { offset: 30_000, len: 9_000, lr: 5e-4, weight_decay: 0.0 },
        ];
        for scale in [None, Some(0.5f32)] {
            let (mut wp, mut wm, mut wv) = (f64s(&p0), f64s(&m0), f64s(&v0));
            rk::adamw(&hp, &groups, &mut wp, &f64s(&g), &mut wm, &mut wv, scale.unwrap_or(1.0) as f64);
            let (mut pp, mut mm, mut vv) = (p0.clone(), m0.clone(), v0.clone());
            let sbuf = vec![scale.unwrap_or(1.0)];
            cpu.adamw(&hp, &groups, m(&mut pp), v(&g), m(&mut mm), m(&mut vv), scale.map(|_| v(&sbuf))).unwrap();
            close("adamw p", &pp, &wp, 1e-6);
            close("adamw m", &mm, &wm, 1e-6);
            close("adamw v", &vv, &wv, 1e-6);
            // The tail outside every group is untouched.
            assert_eq!(&pp[39_000..], &p0[39_000..]);
        }
    }
}
