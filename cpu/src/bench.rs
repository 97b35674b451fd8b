//! Timings of the hot ops of [`crate::Cpu`] at ViT-B/16 and ResNet-50 shapes.
//!
//! Each benchmark runs once to warm up, then repeats until about half a second has
//! passed (at least 3 and at most 25 runs) and reports the median. Shapes are picked
//! so that each one finishes in a few seconds on a 2-core machine; the two `b64`
//! GEMMs are the slowest (a few seconds each there).

use crate::Cpu;
use cim_core::backend::{Backend, Conv2d, Gemm};
use cim_core::{Result, View, ViewMut};
use std::time::Instant;

/// One benchmark's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchResult {
    pub name: String,
    pub shape: String,
    /// Median wall time of one call, in milliseconds (NaN when the benchmark failed,
    /// with the error in `shape`).
    pub median_ms: f64,
    /// Arithmetic throughput, for the ops counted in flops (GEMM, convolution).
    pub gflops: Option<f64>,
}

const BUDGET_S: f64 = 0.5;
const MIN_RUNS: usize = 3;
const MAX_RUNS: usize = 25;

/// ViT-B/16 tokens per image (196 patches + the class token).
const TOKENS: usize = 197;

type Buf = Vec<f32>;

#[allow(clippy::ptr_arg)]
fn v(b: &Buf) -> View<'_, Buf> {
    View { buf: b, offset: 0, len: b.len() }
}

fn m(b: &mut Buf) -> ViewMut<'_, Buf> {
    let len = b.len();
    ViewMut { buf: b, offset: 0, len }
}

/// A buffer of `len` values in `[-1, 1)` from a fixed xorshift stream.
fn filled(cpu: &Cpu, len: usize, seed: u64) -> Result<Buf> {
    let mut b = cpu.alloc(len)?;
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for x in b.iter_mut() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        *x = (s >> 40) as f32 * (2.0 / (1u64 << 24) as f32) - 1.0;
    }
    Ok(b)
}

/// Median milliseconds of `f` after one warm-up call.
fn time(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = Vec::new();
    let start = Instant::now();
    while t.len() < MIN_RUNS || (t.len() < MAX_RUNS && start.elapsed().as_secs_f64() < BUDGET_S) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// A benchmark: its name and a runner giving `(shape, median_ms, flops)`.
type Case = (&'static str, fn(&Cpu) -> Result<(String, f64, Option<f64>)>);

fn gemm_case(cpu: &Cpu, p: Gemm) -> Result<(String, f64, Option<f64>)> {
    let a = filled(cpu, p.span_a(), 1)?;
    let b = filled(cpu, p.span_b(), 2)?;
    let mut c = cpu.alloc(p.span_c())?;
    let ms = time(|| cpu.gemm(&p, v(&a), v(&b), m(&mut c)))?;
    let t = |x: bool| if x { "ᵀ" } else { "" };
    let shape = format!("{}x [{}x{}]{} · [{}x{}]{}", p.batch, p.m, p.k, t(p.trans_a), p.k, p.n, t(p.trans_b));
    Ok((shape, ms, Some(p.flops())))
}

fn gemm(batch: usize, m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Gemm {
    Gemm { batch, trans_a, trans_b, stride_a: m * k, stride_b: k * n, stride_c: m * n, ..Gemm::new(m, n, k) }
}

#[derive(Clone, Copy)]
enum ConvPass {
    Forward,
    GradInput,
    GradWeight,
}

fn conv_case(cpu: &Cpu, p: Conv2d, pass: ConvPass) -> Result<(String, f64, Option<f64>)> {
    let x = filled(cpu, p.x_len(), 3)?;
    let w = filled(cpu, p.w_len(), 4)?;
    let dy = filled(cpu, p.y_len(), 5)?;
    let bias = filled(cpu, p.c_out, 6)?;
    let ms = match pass {
        ConvPass::Forward => {
            let mut y = cpu.alloc(p.y_len())?;
            time(|| cpu.conv2d(&p, v(&x), v(&w), Some(v(&bias)), m(&mut y)))?
        }
        ConvPass::GradInput => {
            let mut dx = cpu.alloc(p.x_len())?;
            time(|| cpu.conv2d_grad_input(&p, v(&dy), v(&w), m(&mut dx)))?
        }
        ConvPass::GradWeight => {
            let mut dw = cpu.alloc(p.w_len())?;
            time(|| cpu.conv2d_grad_weight(&p, v(&x), v(&dy), m(&mut dw)))?
        }
    };
    let shape =
        format!("n{} {}x{}x{} -> {} k{}x{} s{} p{}", p.n, p.c_in, p.h, p.w, p.c_out, p.kh, p.kw, p.stride.0, p.pad.0);
    Ok((shape, ms, Some(p.flops())))
}

fn conv(n: usize, c_in: usize, hw: usize, c_out: usize, k: usize, s: usize, pad: usize) -> Conv2d {
    Conv2d { n, c_in, h: hw, w: hw, c_out, kh: k, kw: k, stride: (s, s), pad: (pad, pad) }
}

fn resnet_3x3() -> Conv2d {
    conv(8, 64, 56, 64, 3, 1, 1)
}

fn resnet_1x1() -> Conv2d {
    conv(8, 64, 56, 256, 1, 1, 0)
}

fn resnet_stem() -> Conv2d {
    conv(8, 3, 224, 64, 7, 2, 3)
}

fn layer_norm_case(cpu: &Cpu, backward: bool) -> Result<(String, f64, Option<f64>)> {
    let (rows, d) = (64 * TOKENS, 768);
    let x = filled(cpu, rows * d, 7)?;
    let gamma = filled(cpu, d, 8)?;
    let beta = filled(cpu, d, 9)?;
    let mut y = cpu.alloc(rows * d)?;
    let mut mean = cpu.alloc(rows)?;
    let mut rstd = cpu.alloc(rows)?;
    cpu.layer_norm(rows, d, 1e-6, v(&x), v(&gamma), v(&beta), m(&mut y), m(&mut mean), m(&mut rstd))?;
    let ms = if backward {
        let dy = filled(cpu, rows * d, 10)?;
        let mut dx = cpu.alloc(rows * d)?;
        let mut dg = cpu.alloc(d)?;
        let mut db = cpu.alloc(d)?;
        time(|| {
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
        })?
    } else {
        time(|| cpu.layer_norm(rows, d, 1e-6, v(&x), v(&gamma), v(&beta), m(&mut y), m(&mut mean), m(&mut rstd)))?
    };
    Ok((format!("[{rows}, {d}]"), ms, None))
}

fn softmax_case(cpu: &Cpu, backward: bool) -> Result<(String, f64, Option<f64>)> {
    let (rows, d) = (8 * 12 * TOKENS, TOKENS);
    let x = filled(cpu, rows * d, 11)?;
    let mut y = cpu.alloc(rows * d)?;
    cpu.softmax(rows, d, v(&x), m(&mut y))?;
    let ms = if backward {
        let dy = filled(cpu, rows * d, 12)?;
        let mut dx = cpu.alloc(rows * d)?;
        time(|| cpu.softmax_backward(rows, d, v(&y), v(&dy), m(&mut dx)))?
    } else {
        time(|| cpu.softmax(rows, d, v(&x), m(&mut y)))?
    };
    Ok((format!("[{rows}, {d}]"), ms, None))
}

fn gelu_case(cpu: &Cpu, backward: bool) -> Result<(String, f64, Option<f64>)> {
    let len = 64 * TOKENS * 3072;
    let x = filled(cpu, len, 13)?;
    let ms = if backward {
        let dy = filled(cpu, len, 14)?;
        let mut dx = cpu.alloc(len)?;
        time(|| cpu.gelu_backward(v(&x), v(&dy), m(&mut dx)))?
    } else {
        let mut y = cpu.alloc(len)?;
        time(|| cpu.gelu(v(&x), m(&mut y)))?
    };
    Ok((format!("[{}, 3072]", 64 * TOKENS), ms, None))
}

const CASES: &[Case] = &[
    ("gemm_b8_attn_proj", |c| gemm_case(c, gemm(1, 8 * TOKENS, 768, 768, false, false))),
    ("gemm_b8_mlp_fc1", |c| gemm_case(c, gemm(1, 8 * TOKENS, 3072, 768, false, false))),
    ("gemm_b8_mlp_fc1_dw", |c| gemm_case(c, gemm(1, 768, 3072, 8 * TOKENS, true, false))),
    ("gemm_b8_mlp_fc1_dx", |c| gemm_case(c, gemm(1, 8 * TOKENS, 768, 3072, false, true))),
    ("gemm_b64_attn_proj", |c| gemm_case(c, gemm(1, 64 * TOKENS, 768, 768, false, false))),
    ("gemm_b64_mlp_fc1", |c| gemm_case(c, gemm(1, 64 * TOKENS, 3072, 768, false, false))),
    // The tiny-respix preset: batch 32 × 65 tokens, width 192.
    ("gemm_tiny_qkv", |c| gemm_case(c, gemm(1, 32 * 65, 576, 192, false, false))),
    ("gemm_tiny_mlp_fc2", |c| gemm_case(c, gemm(1, 32 * 65, 192, 768, false, false))),
    ("gemm_tiny_mlp_fc1_dw", |c| gemm_case(c, gemm(1, 192, 768, 32 * 65, true, false))),
    ("gemm_tiny_mlp_fc1_dx", |c| gemm_case(c, gemm(1, 32 * 65, 192, 768, false, true))),
    ("gemm_b8_attn_scores", |c| gemm_case(c, gemm(8 * 12, TOKENS, TOKENS, 64, false, true))),
    ("gemm_b8_attn_values", |c| gemm_case(c, gemm(8 * 12, TOKENS, 64, TOKENS, false, false))),
    ("conv_r50_3x3_fwd", |c| conv_case(c, resnet_3x3(), ConvPass::Forward)),
    ("conv_r50_3x3_dx", |c| conv_case(c, resnet_3x3(), ConvPass::GradInput)),
    ("conv_r50_3x3_dw", |c| conv_case(c, resnet_3x3(), ConvPass::GradWeight)),
    ("conv_r50_1x1_fwd", |c| conv_case(c, resnet_1x1(), ConvPass::Forward)),
    ("conv_r50_1x1_dx", |c| conv_case(c, resnet_1x1(), ConvPass::GradInput)),
    ("conv_r50_1x1_dw", |c| conv_case(c, resnet_1x1(), ConvPass::GradWeight)),
    ("conv_r50_stem_fwd", |c| conv_case(c, resnet_stem(), ConvPass::Forward)),
    ("conv_r50_stem_dx", |c| conv_case(c, resnet_stem(), ConvPass::GradInput)),
    ("conv_r50_stem_dw", |c| conv_case(c, resnet_stem(), ConvPass::GradWeight)),
    ("layer_norm_fwd", |c| layer_norm_case(c, false)),
    ("layer_norm_bwd", |c| layer_norm_case(c, true)),
    ("softmax_fwd", |c| softmax_case(c, false)),
    ("softmax_bwd", |c| softmax_case(c, true)),
    ("gelu_fwd", |c| gelu_case(c, false)),
    ("gelu_bwd", |c| gelu_case(c, true)),
];

/// Run the benchmarks whose name contains `filter` (all when `None`) on a [`Cpu`] over
/// rayon's global pool.
pub fn bench_ops(filter: Option<&str>) -> Vec<BenchResult> {
    let cpu = Cpu::new();
    let mut out = Vec::new();
    for (name, run) in CASES {
        if filter.is_some_and(|f| !name.contains(f)) {
            continue;
        }
        out.push(match run(&cpu) {
            Ok((shape, median_ms, flops)) => BenchResult {
                name: name.to_string(),
                shape,
                median_ms,
                gflops: flops.map(|f| f / (median_ms * 1e-3) / 1e9),
            },
            Err(e) => {
                BenchResult { name: name.to_string(), shape: format!("failed: {e}"), median_ms: f64::NAN, gflops: None }
            }
        });
    }
    out
}

/// The names of all benchmarks, in run order.
pub fn bench_names() -> Vec<&'static str> {
    CASES.iter().map(|(n, _)| *n).collect()
}

/// Forward (inference) throughput of a whole model from the architecture registry
/// (random weights), as `cim infer` runs it.
pub fn bench_model(arch: &str, batch: usize) -> Result<BenchResult> {
    use cim_core::arch;
    use cim_core::params::ParamTable;
    use cim_core::Tensor;
    let cpu = Cpu::new();
    let spec = arch::by_name(arch)?;
    let mut table = ParamTable::new();
    let model = spec.build(&mut table, "")?;
    let store = table.build(&cpu, 0)?;
    let input = spec.input();
    let shape = [batch, input.channels, input.image_size, input.image_size];
    let x = Tensor::from_slice(&cpu, &shape, &filled(&cpu, shape.iter().product(), 7)?)?;
    let ms = time(|| model.infer(&cpu, &store, &x).map(drop))?;
    Ok(BenchResult {
        name: format!("{arch} forward"),
        shape: format!("batch {batch}, {0}x{0}, {1:.1} img/s", input.image_size, batch as f64 / (ms * 1e-3)),
        median_ms: ms,
        gflops: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cargo test --release -p cim-cpu -- --ignored --nocapture bench`
    #[test]
    #[ignore]
    fn bench_print() {
        let filter = std::env::var("CIM_BENCH").ok();
        println!("threads: {}", Cpu::new().threads());
        println!("{:<22} {:<40} {:>11} {:>9}", "op", "shape", "median ms", "GFLOP/s");
        for r in bench_ops(filter.as_deref()) {
            let g = r.gflops.map(|g| format!("{g:.1}")).unwrap_or_else(|| "-".into());
            println!("{:<22} {:<40} {:>11.3} {:>9}", r.name, r.shape, r.median_ms, g);
        }
    }

    #[test]
    fn names_are_unique() {
        let mut n = bench_names();
        n.sort();
        n.dedup();
        assert_eq!(n.len(), CASES.len());
    }
}
