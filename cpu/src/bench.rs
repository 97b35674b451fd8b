//! Timings of the hot ops of [`crate::Cpu`] at ViT-B/16 and ResNet-50 shapes.
//!
//! Each benchmark runs once to warm up, then repeats until about half a second has
//! passed (at least 3 and at most 25 runs) and reports the median. Shapes are picked
//! so that each one finishes in a few seconds on a 2-core machine.

use crate::Cpu;
use cim_core::backend::{Backend, Conv2d, Gemm};
use cim_core::{Result, View, ViewMut};
use std::time::Instant;

/// One benchmark's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchResult {
    pub name: String,
    pub shape: String,
    pub median_ms: f64,
    /// Arithmetic throughput, for the ops counted in flops (GEMM, convolution).
    pub gflops: Option<f64>,
}

/// Time budget per benchmark after warm-up, in seconds.
const BUDGET_S: f64 = 0.5;
const MIN_RUNS: usize = 3;
const MAX_RUNS: usize = 25;

fn v(b: &[f32]) -> View<'_, Vec<f32>> {
    // Benchmarks time whole buffers.
    View {
        buf: vec_ref(b),
        offset: 0,
        len: b.len(),
    }
}

/// `View` is over `Vec<f32>` buffers; benchmarks own `Vec`s, so this is identity.
fn vec_ref(b: &[f32]) -> &Vec<f32> {
    // SAFETY-free: callers only pass slices obtained from whole `Vec`s via `Deref`;
    // see `Buf` below, which hands out `&Vec` directly.
    unreachable_slice(b)
}

fn unreachable_slice(_b: &[f32]) -> &Vec<f32> {
    unimplemented!()
}
