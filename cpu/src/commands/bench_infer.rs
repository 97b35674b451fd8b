//! `cim bench infer`: inference throughput of one enhancer on the CPU backend and, on the
//! ONNX file `cim export` writes for it, through tract.
//!
//! ```text
//! cim bench infer [--arch vit_small_patch16_224,resnet50] [--batch 1,8] [--onnx-dir DIR]
//! ```
//! Each model gets random weights (the backbone, no head, at its registry size: 224 px
//! for both defaults). Both runtimes use all threads (`--threads`); tract loads the file
//! for the batch being timed and optimizes it once (its load time is reported apart).
//! Each measurement runs once to warm up, then repeats for about `--seconds` (at least 3
//! runs) and reports the median. `--onnx-dir` keeps the files, e.g. for
//! `scripts/bench_onnxruntime.py`, which times the same files with onnxruntime.

use crate::Cpu;
use cim_core::{arch, Tensor};
use cim_export::check::random_input;
use cim_export::onnx::{self, ExportOptions};
use cim_export::tract::TractModel;
use cim_export::{Enhancer, HeadKind};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

/// The arguments of `cim bench infer`.
#[derive(Args, Clone, Debug)]
pub struct BenchInferArgs {
    /// Architectures (registry names or serialized configurations).
    #[arg(long, value_delimiter = ',', default_value = "vit_small_patch16_224,resnet50")]
    pub arch: Vec<String>,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub batch: Vec<usize>,
    /// Seconds of repeated runs per measurement (at least 3 runs).
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Write the exported files here as ARCH.onnx.
    #[arg(long, value_name = "DIR")]
    pub onnx_dir: Option<PathBuf>,
}

/// One measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct InferTiming {
    pub arch: String,
    pub batch: usize,
    /// `cpu` or `tract`.
    pub runtime: &'static str,
    pub median_ms: f64,
    pub images_per_s: f64,
    /// Seconds tract took to load and optimize the file (tract rows).
    pub load_s: Option<f64>,
}

/// Median milliseconds of `f` after one warm-up call.
fn time(seconds: f64, mut f: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
    f()?;
    let mut t = Vec::new();
    let start = Instant::now();
    while t.len() < 3 || (t.len() < 50 && start.elapsed().as_secs_f64() < seconds) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// Run the benchmark, calling `on_row` as each measurement finishes.
pub fn run(args: &BenchInferArgs, on_row: &mut dyn FnMut(&InferTiming)) -> Result<Vec<InferTiming>, String> {
    let cpu = Cpu::new();
    let threads = rayon::current_num_threads();
    let mut rows = Vec::new();
    for name in &args.arch {
        let spec = arch::by_name(name).map_err(|e| e.to_string())?;
        let (e, store) = Enhancer::random(&cpu, &spec, HeadKind::None, None, 1).map_err(|e| format!("{name}: {e}"))?;
        let bytes = onnx::to_bytes(&cpu, &e, &store, ExportOptions::default()).map_err(|e| format!("{name}: {e}"))?;
        if let Some(dir) = &args.onnx_dir {
            let file = dir.join(format!("{}.onnx", spec.registry_name().unwrap_or("model")));
            cim_core::checkpoint::write_atomic(&file, &bytes).map_err(|e| e.to_string())?;
        }
        for &n in &args.batch {
            let shape = e.input_shape(n);
            let x = random_input(&shape, 7);
            let xt = Tensor::from_slice(&cpu, &shape, &x).map_err(|e| e.to_string())?;
            let ms = time(args.seconds, || e.forward(&cpu, &store, &xt).map(drop).map_err(|e| e.to_string()))?;
            let mut push = |row: InferTiming| {
                on_row(&row);
                rows.push(row);
            };
            let ips = |ms: f64| n as f64 / (ms * 1e-3);
            push(InferTiming {
                arch: name.clone(),
                batch: n,
                runtime: "cpu",
                median_ms: ms,
                images_per_s: ips(ms),
                load_s: None,
            });
            let t0 = Instant::now();
            let m = TractModel::load(&bytes, name, n, threads).map_err(|e| e.to_string())?;
            let load_s = t0.elapsed().as_secs_f64();
            let ms = time(args.seconds, || m.run(&x, &shape).map(drop).map_err(|e| e.to_string()))?;
            push(InferTiming {
                arch: name.clone(),
                batch: n,
                runtime: "tract",
                median_ms: ms,
                images_per_s: ips(ms),
                load_s: Some(load_s),
            });
        }
    }
    Ok(rows)
}
