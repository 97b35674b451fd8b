//! `cim`: Corrupted Image Modeling on the CPU.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

// mimalloc keeps freed pages for reuse: with the system allocator every large
// activation buffer of a step came from fresh pages (10× more page faults, measured by
// `perf stat` on `cim bench pretrain`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "cim", version, about = "Corrupted Image Modeling (Fang et al., ICLR 2023) on the CPU")]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Describe the machine and the backend `cim` would use.
    Info,
    /// Measure the backend.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Run a checkpoint (.safetensors) on the CPU backend, or an ONNX model through tract, on an
    /// input (.npy or image), writing a .npy (or a RESPIX model's restored image).
    Infer(cim_cpu::commands::infer::InferArgs),
    /// Write an enhancer (with no head, its RESPIX / REVDET head or a classifier) as an ONNX model.
    Export(cim_cpu::commands::export::ExportArgs),
    /// CIM pre-training (default: the tiny RESPIX preset on Fashion-MNIST, training a
    /// tokenizer first where none exists).
    Pretrain(cim_cpu::commands::pretrain::PretrainArgs),
    /// The dVAE tokenizer that CIM pre-training freezes.
    Tokenizer {
        #[command(subcommand)]
        what: TokenizerWhat,
    },
    /// Pictures (PNG): corrupted samples, enhancer outputs, RESPIX templates, a tokenizer.
    Visualize {
        #[command(subcommand)]
        what: cim_cpu::commands::visualize::VisualizeWhat,
    },
    /// Training curves of one or more runs (PNG) from their metrics.jsonl.
    Plot(cim_cpu::commands::plot::PlotArgs),
    /// Downstream evaluation of a pre-trained encoder: linear probe or fine-tuning.
    Eval {
        #[command(subcommand)]
        what: cim_cpu::commands::eval::EvalWhat,
    },
}

#[derive(Subcommand)]
enum TokenizerWhat {
    /// Train a tokenizer on a data set (Fashion-MNIST by default) and save it.
    Train(cim_cpu::commands::tokenizer::TokenizerTrainArgs),
    /// Encode images to token maps and decode them back: reconstruction error, codebook
    /// usage, and the maps, reconstructions and a picture in a directory.
    Roundtrip(cim_cpu::commands::roundtrip::RoundtripArgs),
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Time the hot ops (GEMM, convolution, attention, norms) at model shapes.
    Ops {
        /// Only benchmarks whose name contains this text.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Time whole-model forward passes (random weights) from the architecture registry.
    Models {
        /// Architectures (registry names).
        #[arg(long, value_delimiter = ',', default_value = "vit_small_patch16_224,resnet50")]
        arch: Vec<String>,
        /// Batch sizes.
        #[arg(long, value_delimiter = ',', default_value = "1,8")]
        batch: Vec<usize>,
    },
    /// Time full pre-training steps (both views uploaded, the CIM step, AdamW) of a preset.
    Pretrain(cim_cpu::commands::pretrain::BenchPretrainArgs),
    /// Time inference of an enhancer on the CPU backend and, exported to ONNX, through tract.
    Infer(cim_cpu::commands::bench_infer::BenchInferArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(n).build_global() {
            eprintln!("error: cannot start {n} threads: {e}");
            return ExitCode::FAILURE;
        }
    }
    match cli.command {
        Command::Info => {
            println!("cim {} — CPU backend, {} threads", env!("CARGO_PKG_VERSION"), rayon::current_num_threads());
        }
        Command::Bench { what: BenchWhat::Ops { filter } } => {
            println!("{:<28} {:<44} {:>12} {:>10}", "op", "shape", "median ms", "GFLOP/s");
            for r in cim_cpu::bench::bench_ops(filter.as_deref()) {
                let g = r.gflops.map(|g| format!("{g:.1}")).unwrap_or_else(|| "-".into());
                println!("{:<28} {:<44} {:>12.3} {:>10}", r.name, r.shape, r.median_ms, g);
            }
        }
        Command::Bench { what: BenchWhat::Models { arch, batch } } => {
            println!("{:<36} {:<36} {:>12}", "model", "setting", "median ms");
            for a in &arch {
                for &n in &batch {
                    match cim_cpu::bench::bench_model(a, n) {
                        Ok(r) => println!("{:<36} {:<36} {:>12.1}", r.name, r.shape, r.median_ms),
                        Err(e) => {
                            eprintln!("error: {a} at batch {n}: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                }
            }
        }
        Command::Bench { what: BenchWhat::Pretrain(args) } => {
            if let Err(e) = cim_cpu::commands::pretrain::run_bench(&args) {
                eprintln!("error: {}", e.replace('\n', " "));
                return ExitCode::FAILURE;
            }
        }
        Command::Export(args) => match cim_cpu::commands::export::run(&args) {
            Ok(o) => {
                let weights = if args.half { "f16" } else { "f32" };
                let size = if o.bytes >= 1_000_000 {
                    format!("{:.1} MB", o.bytes as f64 / 1e6)
                } else {
                    format!("{:.1} kB", o.bytes as f64 / 1e3)
                };
                println!(
                    "{}: {} + head {}: {} -> {}; wrote {} ({size}, {weights} weights)",
                    o.source.display(),
                    o.arch,
                    o.head,
                    o.input,
                    o.output,
                    args.out.display(),
                );
                if let Some(c) = o.check {
                    println!(
                        "check (tract vs CPU backend, batch {}, {:?}): max abs error {:.3e}, max rel error {:.3e} (≤ {:e})",
                        cim_cpu::commands::export::CHECK_BATCH,
                        c.shape,
                        c.max_abs,
                        c.max_rel,
                        o.tolerance
                    );
                }
            }
            Err(e) => {
                eprintln!("error: {}", e.replace('\n', " "));
                return ExitCode::FAILURE;
            }
        },
        Command::Bench { what: BenchWhat::Infer(args) } => {
            println!(
                "{:<28} {:>5} {:<8} {:>11} {:>9} {:>8}",
                "model", "batch", "runtime", "median ms", "img/s", "load s"
            );
            let mut print = |r: &cim_cpu::commands::bench_infer::InferTiming| {
                let load = r.load_s.map(|s| format!("{s:.1}")).unwrap_or_else(|| "-".into());
                println!(
                    "{:<28} {:>5} {:<8} {:>11.1} {:>9.2} {:>8}",
                    r.arch, r.batch, r.runtime, r.median_ms, r.images_per_s, load
                );
            };
            if let Err(e) = cim_cpu::commands::bench_infer::run(&args, &mut print) {
                eprintln!("error: {}", e.replace('\n', " "));
                return ExitCode::FAILURE;
            }
        }
        Command::Infer(args) => match cim_cpu::commands::infer::run(&args) {
            Ok(o) => println!(
                "{}: {} {:?} -> {} {:?} ({})",
                o.arch,
                args.input.display(),
                o.input_shape,
                args.out.display(),
                o.output_shape,
                o.output_doc
            ),
            Err(e) => {
                eprintln!("error: {}", e.replace('\n', " "));
                return ExitCode::FAILURE;
            }
        },
        Command::Tokenizer { what: TokenizerWhat::Roundtrip(args) } => {
            if let Err(e) = cim_cpu::commands::roundtrip::run(&args) {
                eprintln!("error: {}", e.replace('\n', " "));
                return ExitCode::FAILURE;
            }
        }
        Command::Tokenizer { what: TokenizerWhat::Train(args) } => {
            if let Err(e) = cim_cpu::commands::tokenizer::run_train(&args) {
                eprintln!("error: {}", e.to_string().replace('\n', " "));
                return ExitCode::FAILURE;
            }
        }
        Command::Pretrain(args) => match cim_cpu::commands::pretrain::run(&args) {
            Ok(s) => {
                let how = if s.interrupted { "stopped" } else { "done" };
                let ckpt = s.last_checkpoint.map(|p| p.display().to_string()).unwrap_or_else(|| "none".into());
                println!("{how}: {} of {} steps in {:.1} s; last checkpoint {ckpt}", s.steps, s.total_steps, s.seconds);
                if let Some(r) = s.last {
                    println!("last: {}", r.summary());
                }
                for w in &s.warnings {
                    eprintln!("warning: {w}");
                }
            }
            Err(e) => {
                eprintln!("error: {}", e.replace('\n', " "));
                return ExitCode::FAILURE;
            }
        },
        Command::Visualize { what } => match cim_cpu::commands::visualize::run(&what) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("error: {}", e.replace('\n', " "));
                return ExitCode::FAILURE;
            }
        },
        Command::Eval { what } => match cim_cpu::commands::eval::run(&what) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("error: {}", e.replace('\n', " "));
                return ExitCode::FAILURE;
            }
        },
        Command::Plot(args) => match cim_cpu::commands::plot::run(&args) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("error: {}", e.replace('\n', " "));
                return ExitCode::FAILURE;
            }
        },
    }
    ExitCode::SUCCESS
}
