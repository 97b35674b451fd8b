//! `cim eval`: what a pre-trained encoder is worth downstream, on the CPU backend.
//!
//! ```text
//! cim eval linear-probe (--checkpoint RUN_OR_FILE | --arch NAME | --pixels) [--data DIR]
//!                       [--pool mean|cls] [--epochs 100] [--lr 1,0.3,0.1,0.03] [--wd 0,5e-4]
//!                       [--train-limit N] [--test-limit N] [--json FILE] [--quiet]
//! cim eval finetune (--checkpoint RUN_OR_FILE [--from-scratch] | --arch NAME) [--data DIR]
//!                   [--run DIR] [--config F.toml] [--epochs N | --steps N] [--lr 1e-3]
//!                   [--layer-decay 0.8] [--mixup A] [--cutmix A] [--resume] [--quiet]
//! ```
//! - `--checkpoint`: a `cim pretrain` run directory (its `enhancer.safetensors`, else the
//!   enhancer of its newest checkpoint) or a checkpoint file; `--arch` alone: a random
//!   initialization (the baseline); `--pixels` (probe only): raw pixels as features.
//! - The data: IDX (Fashion-MNIST, the default), CIFAR binaries, or an image folder with
//!   `train/` and `val/` (or `test/`) class sub-folders; labels are required.
//! - Fine-tuning resolves its configuration as defaults < `--config` TOML < flags, and
//!   writes a run directory (`config.toml`, `metrics.jsonl`, `checkpoints/`,
//!   `model.safetensors`, `result.json`); Ctrl-C saves a checkpoint, `--resume` continues.
//!
//! Both print the test top-1 last; every failure is a one-line error, never a panic.

use super::pretrain::stop_flag;
use crate::Cpu;
use cim_core::data::{open_labeled, Dataset, Labeled, Source, Subset, FASHION_MNIST_DIR};
use cim_core::eval::finetune::{self, FinetuneConfig, FinetuneOptions, FinetuneSummary, FtEvent};
use cim_core::eval::{self as ev, ExtractOptions, Features, Pooling, ProbeConfig, ProbeReport};
use cim_core::train::RunDir;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// `cim eval` subcommands.
#[derive(Subcommand, Clone, Debug)]
pub enum EvalWhat {
    /// Linear probe on frozen features: a softmax classifier on cached, standardized
    /// features, learning rate and weight decay picked on a validation split; top-1 on the
    /// test split.
    LinearProbe(Box<ProbeArgs>),
    /// End-to-end fine-tuning (AdamW, warm-up + cosine, layer-wise lr decay for a ViT,
    /// label smoothing, optional mixup / CutMix); top-1 on the test split.
    Finetune(Box<FinetuneArgs>),
}

/// The arguments of `cim eval linear-probe`.
#[derive(Args, Clone, Debug, Default)]
pub struct ProbeArgs {
    /// Pre-trained weights: a cim pretrain run directory or a checkpoint file.
    #[arg(long, value_name = "RUN_OR_FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Architecture: alone, a random initialization (the baseline); with a file without
    /// cim.arch metadata, its architecture.
    #[arg(long, value_name = "NAME")]
    pub arch: Option<String>,
    /// Probe raw pixels (at --image-size) instead of an encoder's features.
    #[arg(long)]
    pub pixels: bool,
    /// Image side for --pixels.
    #[arg(long, value_name = "PX", default_value_t = 32)]
    pub image_size: usize,
    /// The labelled data (IDX folder, CIFAR binaries, or an image folder with train/ and val/).
    #[arg(long, value_name = "DIR", default_value = FASHION_MNIST_DIR)]
    pub data: PathBuf,
    /// ViT pooling: mean (of the patch tokens) or cls (the class token).
    #[arg(long, value_name = "HOW", default_value = "mean")]
    pub pool: String,
    /// Epochs of the classifier.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub epochs: usize,
    /// Mini-batch of the classifier.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub batch: usize,
    /// Peak learning rates to try (comma-separated).
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "1,0.3,0.1,0.03")]
    pub lr: Vec<f64>,
    /// Weight decays to try (comma-separated).
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "0,0.0005")]
    pub wd: Vec<f64>,
    /// Share of the training set held out to choose the learning rate and weight decay.
    #[arg(long, value_name = "F", default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Use at most N training images (a seeded sample; 0: all).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub train_limit: usize,
    /// Use at most N test images (a seeded sample; 0: all).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub test_limit: usize,
    /// Seed of the random initialization, the subsets and the probe.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Images per batch of feature extraction.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub feature_batch: usize,
    /// Loader threads (0: one per core).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub workers: usize,
    /// Also write the result as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// The last line `cim eval linear-probe` prints.
pub fn probe_line(o: &ProbeReport) -> String {
    let r = &o.result;
    format!(
        "linear probe: top-1 {:.2}% ({}/{}) on the test split; {} ({}-dim), lr {} wd {} (val top-1 {:.2}%)",
        100.0 * r.test_top1,
        r.test_correct,
        r.test_len,
        o.features,
        r.dim,
        r.lr,
        r.weight_decay,
        100.0 * r.val_top1
    )
}

fn bar(quiet: bool, len: u64, what: &str) -> ProgressBar {
    let b = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
    };
    let tpl = format!("{what} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}} < {{eta_precise}}] {{msg}}");
    b.set_style(ProgressStyle::with_template(&tpl).unwrap_or_else(|_| ProgressStyle::default_bar()));
    b
}

/// A labelled data set and its two splits as sources (seeded samples where limited).
type Splits = (Labeled, Arc<dyn Source>, Arc<dyn Source>);

/// Both splits of the data, each limited to a seeded sample where asked.
fn open_data(data: &Path, train_limit: usize, test_limit: usize, seed: u64) -> Result<Splits, String> {
    let labeled = open_labeled(data).map_err(|e| {
        let mut s = e.to_string();
        if !data.exists() && !s.contains("apt-get") {
            s.push_str(" (install Fashion-MNIST with `apt-get install dataset-fashion-mnist`, or pass --data DIR)");
        }
        s
    })?;
    let train = Subset::limit(Arc::new(labeled.train.clone()), train_limit, seed);
    let test = Subset::limit(Arc::new(labeled.test.clone()), test_limit, seed ^ 1);
    Ok((labeled, train, test))
}

/// A feature extractor with a progress callback.
type Extractor<'a> = dyn FnMut(Arc<dyn Source>, &mut dyn FnMut(usize, usize)) -> cim_core::Result<Features> + 'a;

/// Run `f` on `src` under a progress bar.
fn with_bar(quiet: bool, what: &str, src: Arc<dyn Source>, f: &mut Extractor<'_>) -> Result<Features, String> {
    let pb = bar(quiet, src.len() as u64, what);
    let r = f(src, &mut |done, _| pb.set_position(done as u64)).map_err(|e| e.to_string());
    pb.finish_and_clear();
    r
}

/// Whether every image of the data set is grey (one channel is enough for --pixels).
fn grayscale(ds: &Dataset) -> bool {
    matches!(ds, Dataset::Idx(a) | Dataset::Cifar(a) if a.channels() == 1)
}

/// Run `cim eval linear-probe`.
pub fn run_probe(a: &ProbeArgs) -> Result<ProbeReport, String> {
    let pooling = Pooling::parse(&a.pool).map_err(|e| e.to_string())?;
    let cfg = ProbeConfig {
        epochs: a.epochs,
        batch: a.batch,
        lrs: a.lr.clone(),
        weight_decays: a.wd.clone(),
        val_fraction: a.val_fraction,
        seed: a.seed,
        ..ProbeConfig::default()
    };
    cfg.validate().map_err(|e| e.to_string())?;
    match (&a.checkpoint, &a.arch, a.pixels) {
        (None, None, false) => {
            return Err("name the features: --checkpoint RUN_OR_FILE, --arch NAME (random init) or --pixels".into())
        }
        (Some(_), _, true) | (_, Some(_), true) => {
            return Err("--pixels probes raw pixels; it takes no --checkpoint or --arch".into())
        }
        _ => {}
    }
    if a.pixels && a.image_size == 0 {
        return Err("--image-size must be positive".into());
    }
    let (labeled, train, test) = open_data(&a.data, a.train_limit, a.test_limit, a.seed)?;
    let describe = |s: &Arc<dyn Source>, full: &Dataset| {
        if s.len() == full.len() {
            full.describe()
        } else {
            format!("{} of {}", s.len(), full.describe())
        }
    };
    println!("train: {}", describe(&train, &labeled.train));
    println!("test: {}", describe(&test, &labeled.test));
    let opts = ExtractOptions { batch: a.feature_batch.max(1), workers: a.workers };
    let b = Cpu::new();
    let t0 = Instant::now();
    let extract = |what: &str, src: Arc<dyn Source>, f: &mut Extractor<'_>| with_bar(a.quiet, what, src, f);
    let (features, pool, train_f, test_f) = if a.pixels {
        let gray = grayscale(&labeled.train);
        let mut f =
            |s: Arc<dyn Source>, p: &mut dyn FnMut(usize, usize)| ev::extract_pixels(s, a.image_size, gray, &opts, p);
        let tr = extract("pixels (train)", train, &mut f)?;
        let te = extract("pixels (test) ", test, &mut f)?;
        let what = format!("raw pixels at {0}x{0}{1}", a.image_size, if gray { ", grey" } else { "" });
        (what, "none".to_string(), tr, te)
    } else {
        let enc = match &a.checkpoint {
            Some(c) => ev::load_encoder(&b, c, a.arch.as_deref()),
            None => ev::random_encoder(&b, a.arch.as_deref().unwrap_or_default(), a.seed),
        }
        .map_err(|e| e.to_string())?;
        println!("encoder: {} from {}", enc.spec.arch_string(), enc.origin);
        let pool = match enc.spec.family() {
            "vit" => pooling.name().to_string(),
            _ => "global average".to_string(),
        };
        let mut f = |s: Arc<dyn Source>, p: &mut dyn FnMut(usize, usize)| ev::extract(&b, &enc, s, pooling, &opts, p);
        let tr = extract("features (train)", train, &mut f)?;
        let te = extract("features (test) ", test, &mut f)?;
        (format!("{} ({}) features of {}", enc.spec.arch_string(), pool, enc.origin), pool, tr, te)
    };
    let extract_seconds = t0.elapsed().as_secs_f64();
    println!(
        "features: {} train, {} test, {} dims, {:.1} s",
        train_f.len(),
        test_f.len(),
        train_f.dim,
        extract_seconds
    );
    let t1 = Instant::now();
    let result = ev::linear_probe(&train_f, &test_f, labeled.classes, &cfg).map_err(|e| e.to_string())?;
    let probe_seconds = t1.elapsed().as_secs_f64();
    for p in &result.grid {
        let how = if p.diverged {
            "diverged".to_string()
        } else {
            format!("val top-1 {:6.2}%  val loss {:.4}", 100.0 * p.val_top1, p.val_loss)
        };
        println!("  lr {:<8} wd {:<8} {how}", p.lr, p.weight_decay);
    }
    println!("probe: {:.1} s, train top-1 {:.2}%", probe_seconds, 100.0 * result.train_top1);
    let out = ProbeReport { features, pool, result, extract_seconds, probe_seconds };
    if let Some(j) = &a.json {
        cim_core::checkpoint::write_atomic(j, format!("{}\n", out.to_json()).as_bytes()).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// The arguments of `cim eval finetune`.
#[derive(Args, Clone, Debug, Default)]
pub struct FinetuneArgs {
    /// Pre-trained weights: a cim pretrain run directory or a checkpoint file.
    #[arg(long, value_name = "RUN_OR_FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Architecture: alone, training from a random initialization; with a file without
    /// cim.arch metadata, its architecture.
    #[arg(long, value_name = "NAME")]
    pub arch: Option<String>,
    /// The checkpoint's architecture and input normalization, randomly initialized: the
    /// baseline at the same budget.
    #[arg(long)]
    pub from_scratch: bool,
    /// The labelled data (IDX folder, CIFAR binaries, or an image folder with train/ and val/).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// The run directory (default runs/finetune).
    #[arg(long, value_name = "DIR")]
    pub run: Option<PathBuf>,
    /// A TOML file of settings (any key of RUN/config.toml), under the flags.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Epochs of the training split (default 3).
    #[arg(long, value_name = "N")]
    pub epochs: Option<u64>,
    /// Optimizer steps (overrides --epochs).
    #[arg(long, value_name = "N")]
    pub steps: Option<u64>,
    /// Images per step (default 64).
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Peak learning rate (default 1e-3).
    #[arg(long, value_name = "LR")]
    pub lr: Option<f64>,
    /// Final learning rate (default 1e-6).
    #[arg(long, value_name = "LR")]
    pub min_lr: Option<f64>,
    /// Warm-up steps (default 5% of the steps).
    #[arg(long, value_name = "N")]
    pub warmup_steps: Option<u64>,
    /// Layer-wise learning-rate decay of a ViT (default 0.8; 1: off).
    #[arg(long, value_name = "F")]
    pub layer_decay: Option<f64>,
    /// AdamW weight decay (default 0.05; the paper's ResNet recipe uses 0.02).
    #[arg(long, value_name = "F")]
    pub weight_decay: Option<f64>,
    /// Label smoothing (default 0.1).
    #[arg(long, value_name = "F")]
    pub label_smoothing: Option<f64>,
    /// Mixup α (default 0: off; the paper's ViT recipe: 0.8).
    #[arg(long, value_name = "A")]
    pub mixup: Option<f64>,
    /// CutMix α (default 0: off; the paper: 1.0).
    #[arg(long, value_name = "A")]
    pub cutmix: Option<f64>,
    /// Smallest area of the random resized crop (default 0.8; 1: whole images).
    #[arg(long, value_name = "F")]
    pub crop_min_scale: Option<f64>,
    /// No random horizontal flips.
    #[arg(long)]
    pub no_flip: bool,
    /// Use at most N training images (a seeded sample).
    #[arg(long, value_name = "N")]
    pub train_limit: Option<usize>,
    /// Use at most N test images (a seeded sample).
    #[arg(long, value_name = "N")]
    pub test_limit: Option<usize>,
    /// Seed of the initialization, the order, the augmentation and the mixing.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Loader threads (0: one per core).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Test top-1 every N steps too (default: at the end only).
    #[arg(long, value_name = "N")]
    pub eval_every: Option<u64>,
    /// A metrics line every N steps (default 50).
    #[arg(long, value_name = "N")]
    pub log_every: Option<u64>,
    /// A checkpoint every N steps (default 500).
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<u64>,
    /// Continue from RUN/checkpoints/latest.
    #[arg(long)]
    pub resume: bool,
    /// No progress bar: plain log lines.
    #[arg(long)]
    pub quiet: bool,
}

/// The configuration and run directory the arguments resolve to.
pub fn resolve_finetune(a: &FinetuneArgs) -> Result<(FinetuneConfig, RunDir), String> {
    let mut c = match &a.config {
        Some(f) => {
            let text =
                std::fs::read_to_string(f).map_err(|e| format!("cannot read config file {}: {e}", f.display()))?;
            FinetuneConfig::from_toml(&text).map_err(|e| format!("config file {}: {e}", f.display()))?
        }
        None => FinetuneConfig::default(),
    };
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = &a.$field { c.$field = v.clone(); } )* };
    }
    set!(data, batch, lr, min_lr, warmup_steps, layer_decay, weight_decay, label_smoothing, mixup, cutmix);
    set!(crop_min_scale, train_limit, test_limit, seed, workers, eval_every, log_every, checkpoint_every);
    if let Some(p) = &a.checkpoint {
        c.checkpoint = p.clone();
    }
    if let Some(n) = &a.arch {
        c.arch = n.clone();
    }
    if let Some(e) = a.epochs {
        c.epochs = e;
        c.steps = 0;
    }
    if let Some(s) = a.steps {
        c.steps = s;
    }
    c.from_scratch |= a.from_scratch;
    if a.no_flip {
        c.flip = false;
    }
    if c.from_scratch && c.checkpoint.as_os_str().is_empty() && c.arch.is_empty() {
        return Err("--from-scratch needs the --checkpoint whose architecture to train (or an --arch)".into());
    }
    c.validate().map_err(|e| e.to_string())?;
    let run = RunDir::new(a.run.clone().unwrap_or_else(|| PathBuf::from("runs/finetune")));
    Ok((c, run))
}

/// Run `cim eval finetune`.
pub fn run_finetune(a: &FinetuneArgs) -> Result<FinetuneSummary, String> {
    let (cfg, run) = resolve_finetune(a)?;
    println!("# resolved configuration, run directory {}", run.root.display());
    print!("{}", cfg.to_toml());
    let b = Cpu::new();
    let opts = FinetuneOptions { resume: a.resume, stop: Some(stop_flag()) };
    let pb = bar(a.quiet, 0, "fine-tuning");
    let quiet = a.quiet;
    let mut evaluating: Option<ProgressBar> = None;
    let mut on_event = |e: &FtEvent| match e {
        FtEvent::Started {
            start_step,
            total_steps,
            steps_per_epoch,
            params,
            train_len,
            test_len,
            classes,
            init,
            resumed_from,
        } => {
            if let Some(p) = resumed_from {
                println!("resuming from {} at step {start_step}", p.display());
            }
            println!("init: {init}");
            println!(
                "training {params} parameters for {total_steps} steps ({steps_per_epoch} per epoch, batch {}) on {train_len} \
                 images of {classes} classes; testing on {test_len}",
                cfg.batch
            );
            pb.set_length(*total_steps);
            pb.set_position(*start_step);
        }
        FtEvent::Step { step, loss, images_per_s } => {
            pb.set_position(*step);
            pb.set_message(format!("loss {loss:.4} {images_per_s:.1} img/s"));
        }
        FtEvent::Logged(r) => {
            if quiet || r.test_top1.is_some() {
                pb.suspend(|| println!("{}", r.summary()));
            }
        }
        FtEvent::Checkpoint { step, path } => {
            if quiet {
                println!("step {step}: checkpoint {}", path.display());
            }
        }
        FtEvent::Evaluating { done, total } => {
            let eb = evaluating.get_or_insert_with(|| bar(quiet, *total as u64, "testing"));
            eb.set_position(*done as u64);
            if done >= total {
                eb.finish_and_clear();
                evaluating = None;
            }
        }
    };
    let r = finetune::finetune(&b, &cfg, &run, &opts, &mut on_event);
    pb.finish_and_clear();
    r.map_err(|e| e.to_string())
}

/// Run `cim eval ...`; the result is the last line to print.
pub fn run(what: &EvalWhat) -> Result<String, String> {
    match what {
        EvalWhat::LinearProbe(a) => run_probe(a).map(|o| probe_line(&o)),
        EvalWhat::Finetune(a) => {
            let s = run_finetune(a)?;
            let run = a.run.clone().unwrap_or_else(|| PathBuf::from("runs/finetune"));
            match s.result {
                Some(r) => Ok(format!(
                    "fine-tuning: top-1 {:.2}% ({}/{}) on the test split after {} steps ({:.2} epochs, {:.1} s); {} from {}; \
                     run {}",
                    100.0 * r.test_top1,
                    r.test_correct,
                    r.test_len,
                    r.steps,
                    r.epochs,
                    r.train_seconds,
                    r.arch,
                    r.init,
                    run.display()
                )),
                None => Ok(format!(
                    "stopped at step {} of {}; continue with --resume (run {})",
                    s.steps,
                    s.total_steps,
                    run.display()
                )),
            }
        }
    }
}
