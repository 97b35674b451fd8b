//! `cim pretrain`: CIM pre-training on the CPU backend.
//!
//! ```text
//! cim pretrain [--preset tiny-respix] [--config F.toml] [--data DIR] [--run DIR]
//!              [--steps N] [--batch N] [--resume] [--quiet] [--tokenizer F]
//! ```
//! - The configuration is the preset, overlaid by the `--config` TOML file, overlaid by
//!   the flags; the resolved one is printed and written to `RUN/config.toml`.
//! - The tokenizer is `--tokenizer`, else the config's `tokenizer`, else
//!   `RUN/../tokenizer.safetensors`; where that default file does not exist, a tokenizer
//!   is trained first on the same data (`cim_core::tokenizer::train_on_dataset`) and
//!   saved there. A named file that does not exist is an error.
//! - Progress: a progress bar (step, losses, images/s, ETA), or with `--quiet` plain
//!   log lines every `log_every` steps. Ctrl-C saves a checkpoint and stops; `--resume`
//!   continues from it.
//!
//! Every failure is a one-line error message, never a panic.

use crate::Cpu;
use cim_core::data::{Dataset, Source};
use cim_core::tokenizer::{save_tokenizer, summary_metadata, train_on_dataset, TokenizerTrainConfig};
use cim_core::train::{self, presets, Event, PretrainConfig, RunDir, TrainOptions, TrainSummary};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// Tokenizer training steps when `cim pretrain` trains one itself (batch 64): those of
/// `cim tokenizer train`.
pub const AUTO_TOKENIZER_STEPS: u64 = super::tokenizer::DEFAULT_STEPS;

/// The arguments of `cim pretrain`.
#[derive(Args, Clone, Debug, Default)]
pub struct PretrainArgs {
    /// Starting configuration: tiny-respix (default), tiny-revdet, vit-s16-respix,
    /// vit-b16-respix, vit-b16-revdet, resnet50-respix, resnet50-revdet.
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// A TOML file overlaid on the preset (any key of RUN/config.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The training data (IDX folder such as Fashion-MNIST, CIFAR binaries, or an image folder).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// The run directory (default runs/<preset>).
    #[arg(long, value_name = "DIR")]
    pub run: Option<PathBuf>,
    /// Optimizer steps (overrides epochs).
    #[arg(long, value_name = "N")]
    pub steps: Option<u64>,
    /// Images per step.
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Continue from RUN/checkpoints/latest.
    #[arg(long)]
    pub resume: bool,
    /// No progress bar: plain log lines.
    #[arg(long)]
    pub quiet: bool,
    /// The trained tokenizer (.safetensors with encoder.* and decoder.*).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
}

/// The configuration and run directory the arguments resolve to.
pub fn resolve(args: &PretrainArgs) -> Result<(PretrainConfig, RunDir), String> {
    let name = args.preset.as_deref().unwrap_or(presets::DEFAULT_PRESET);
    let mut cfg = presets::preset(name)
        .ok_or_else(|| format!("unknown preset {name:?}; one of: {}", presets::PRESETS.join(", ")))?;
    if let Some(f) = &args.config {
        cfg = cfg.overlay_file(f).map_err(|e| e.to_string())?;
    }
    if let Some(d) = &args.data {
        cfg.data = d.clone();
    }
    if let Some(s) = args.steps {
        cfg.steps = s;
        cfg.epochs = 0;
    }
    if let Some(n) = args.batch {
        cfg.batch = n;
    }
    if let Some(t) = &args.tokenizer {
        cfg.tokenizer = t.clone();
    }
    let run = RunDir::new(args.run.clone().unwrap_or_else(|| Path::new("runs").join(&cfg.preset)));
    cfg.validate().map_err(|e| e.to_string())?;
    Ok((cfg, run))
}

fn open_data(cfg: &PretrainConfig) -> Result<Dataset, String> {
    train::open_data(cfg).map_err(|e| {
        let mut s = e.to_string();
        if !cfg.data.exists() && !s.contains("apt-get") {
            s.push_str(" (install Fashion-MNIST with `apt-get install dataset-fashion-mnist`, or pass --data DIR)");
        } else if !cfg.data.exists() {
            s.push_str(" or pass --data DIR");
        }
        s
    })
}

/// Train a tokenizer for `cfg` on its data and save it at `path`.
fn train_tokenizer(b: &Cpu, cfg: &PretrainConfig, path: &Path, quiet: bool) -> Result<(), String> {
    let mut tc = TokenizerTrainConfig::new(cfg.tokenizer_model.dvae(), cfg.tokenizer_image_size, AUTO_TOKENIZER_STEPS);
    tc.seed = cfg.seed;
    if quiet {
        tc.log_every = 50;
    }
    println!(
        "no tokenizer at {}: training one first ({} steps, batch {}, {} px)",
        path.display(),
        tc.steps,
        tc.batch,
        tc.image_size
    );
    let (tok, summary) =
        train_on_dataset(b, &tc, &cfg.data, |l| println!("tokenizer: {l}")).map_err(|e| e.to_string())?;
    println!("tokenizer: {}", summary.line());
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    save_tokenizer(path, &tok, b, &summary_metadata(&summary)).map_err(|e| e.to_string())?;
    println!("tokenizer: saved {}", path.display());
    Ok(())
}

/// The flag a Ctrl-C handler sets (installed once per process; `cim pretrain` and
/// `cim eval finetune` share it).
pub(crate) fn stop_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let f = Arc::new(AtomicBool::new(false));
        let g = f.clone();
        // Without a handler (another one is installed) Ctrl-C just ends the process.
        let _ = ctrlc::set_handler(move || {
            if g.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupted: saving a checkpoint after this step (Ctrl-C again to quit now)");
        });
        f
    })
    .clone()
}

/// Run `cim pretrain`; the error is one line.
pub fn run(args: &PretrainArgs) -> Result<TrainSummary, String> {
    let (cfg, run) = resolve(args)?;
    println!("# resolved configuration (preset {}), run directory {}", cfg.preset, run.root.display());
    print!("{}", cfg.to_toml());
    let data = open_data(&cfg)?;
    println!("data: {}", data.describe());
    let b = Cpu::new();
    let tok_path = train::tokenizer_path(&cfg, &run);
    if !tok_path.is_file() {
        if !cfg.tokenizer.as_os_str().is_empty() {
            return Err(format!("tokenizer {} does not exist", tok_path.display()));
        }
        train_tokenizer(&b, &cfg, &tok_path, args.quiet)?;
    }
    let mut cfg = cfg;
    cfg.tokenizer = tok_path;
    let source: Arc<dyn Source> = Arc::new(data);
    let opts = TrainOptions { resume: args.resume, stop: Some(stop_flag()) };
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let quiet = args.quiet;
    let mut last_loss = String::new();
    let mut on_event = |e: &Event| match e {
        Event::Started { start_step, total_steps, steps_per_epoch, params, resumed_from } => {
            if let Some(p) = resumed_from {
                println!("resuming from {} at step {start_step}", p.display());
            }
            println!(
                "training {params} parameters for {total_steps} steps ({steps_per_epoch} steps per epoch, batch {})",
                cfg.batch
            );
            bar.set_length(*total_steps);
            bar.set_position(*start_step);
        }
        Event::Step { step, loss, images_per_s } => {
            bar.set_position(*step);
            bar.set_message(format!("loss {loss:.4} {last_loss} {images_per_s:.1} img/s"));
        }
        Event::Logged(r) => {
            last_loss = format!("(mim {:.3} acc {:.3}, enh {:.3})", r.mim_loss, r.mim_acc, r.enh_loss);
            if quiet {
                println!("{}", r.summary());
            }
        }
        Event::Checkpoint { step, path } => {
            if quiet {
                println!("step {step}: checkpoint {}", path.display());
            }
        }
    };
    let result = train::pretrain(&b, &cfg, source, &run, &opts, &mut on_event);
    bar.finish_and_clear();
    let s = result.map_err(|e| e.to_string())?;
    Ok(s)
}

/// The arguments of `cim bench pretrain`.
#[derive(Args, Clone, Debug)]
pub struct BenchPretrainArgs {
    /// The configuration to time (as `cim pretrain --preset`).
    #[arg(long, value_name = "NAME", default_value = presets::DEFAULT_PRESET)]
    pub preset: String,
    /// A TOML file overlaid on the preset.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Images per step (default: the preset's).
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Untimed steps first.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub warmup: usize,
    /// Timed steps.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub steps: usize,
}

/// Run `cim bench pretrain`: time full steps of a preset on random data and weights.
pub fn run_bench(args: &BenchPretrainArgs) -> Result<cim_core::train::bench::PretrainBench, String> {
    let pa = PretrainArgs {
        preset: Some(args.preset.clone()),
        config: args.config.clone(),
        batch: args.batch,
        ..Default::default()
    };
    let (cfg, _) = resolve(&pa)?;
    let b = Cpu::new();
    println!(
        "bench pretrain: preset {}, {} px (tokenizer {} px), batch {}, {} enhancer, {}; {} threads; {} warm-up + {} timed steps",
        cfg.preset,
        cfg.image_size,
        cfg.tokenizer_image_size,
        cfg.batch,
        cfg.enhancer.arch,
        cfg.objective,
        rayon::current_num_threads(),
        args.warmup,
        args.steps
    );
    let bar = ProgressBar::with_draw_target(Some((args.warmup + args.steps) as u64), ProgressDrawTarget::stderr());
    let r = cim_core::train::bench::bench_pretrain(&b, &cfg, args.warmup, args.steps, &mut |i, ms| {
        bar.set_position(i as u64 + 1);
        bar.set_message(ms.map(|m| format!("{m:.1} ms")).unwrap_or_else(|| "warm-up".into()));
    })
    .map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    println!(
        "{} parameters; step median {:.1} ms, mean {:.1} ms; {:.1} images/s",
        r.params, r.median_ms, r.mean_ms, r.images_per_s
    );
    Ok(r)
}
