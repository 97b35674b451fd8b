//! `cim tokenizer train`: train the dVAE tokenizer that CIM pre-training freezes, on the
//! CPU backend.
//!
//! ```text
//! cim tokenizer train [--data DIR] [--out FILE] [--arch dvae_small] [--image-size 16]
//!                     [--steps N] [--batch 64] [--lr 2e-3] [--seed 0] [--quiet]
//! ```
//! Images of the data set (any `cim_core::data::Dataset` source; Fashion-MNIST by
//! default) are resized to `--image-size` px; the loss is described in
//! `cim_core::tokenizer`. Progress lines go to stderr every 50 steps (not with
//! `--quiet`). At the end the codebook statistics on 512 held-out images (codes used,
//! perplexity, sharpness, reconstruction MSE) are reported and stored in the
//! checkpoint's metadata; the checkpoint (encoder and decoder under `encoder.` /
//! `decoder.`, as the CIM tokenizer table names them) is written atomically.
//!
//! Every failure is a one-line error, never a panic.

use crate::Cpu;
pub use cim_core::tokenizer::TrainSummary;
use cim_core::tokenizer::{
    save_tokenizer, summary_metadata, tokenizer_config, train_on_dataset, Recon, TokenizerTrainConfig,
};
use clap::Args;
use std::path::PathBuf;

/// Steps of the default run: `dvae_small` at 16 px, batch 64 on Fashion-MNIST took 152 s on
/// 2 CPU cores (149 img/s) and left 294 of 512 codes used on held-out images (perplexity
/// 285, mean max probability 0.98, pixel MSE 0.028).
pub const DEFAULT_STEPS: u64 = 350;

/// The arguments of `cim tokenizer train`.
#[derive(Args, Clone, Debug)]
pub struct TokenizerTrainArgs {
    /// The training images: an IDX folder (MNIST, Fashion-MNIST), CIFAR binaries or an
    /// image folder.
    #[arg(long, value_name = "DIR", default_value = "/usr/share/datasets/fashion-mnist")]
    pub data: PathBuf,
    /// Where to write the tokenizer checkpoint (.safetensors).
    #[arg(long, value_name = "FILE", default_value = "runs/tokenizer.safetensors")]
    pub out: PathBuf,
    /// The dVAE: dvae_small (2 groups, 64 wide, 512 codes), dalle, or a serialized
    /// dvae_encoder(...) configuration.
    #[arg(long, value_name = "NAME", default_value = "dvae_small")]
    pub arch: String,
    /// Side of the training images (the tokenizer view); the token grid is this over
    /// 2^(groups-1).
    #[arg(long, value_name = "PX", default_value_t = 16)]
    pub image_size: usize,
    /// Optimizer steps.
    #[arg(long, default_value_t = DEFAULT_STEPS)]
    pub steps: u64,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Peak learning rate (AdamW, warm-up then cosine decay).
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Seed of the initialization, data order and Gumbel noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Reconstruction loss: l2 or logit-laplace.
    #[arg(long, value_name = "LOSS", default_value = "l2")]
    pub recon: String,
    /// Weight of the codebook-usage term KL(batch-mean code distribution ‖ uniform)
    /// (default: the library's).
    #[arg(long, value_name = "W")]
    pub usage_weight: Option<f64>,
    /// Weight of the per-token entropy penalty (sharp codes).
    #[arg(long, value_name = "W")]
    pub entropy_weight: Option<f64>,
    /// Weight of DALL-E's per-token KL to the uniform prior.
    #[arg(long, value_name = "W")]
    pub kl_weight: Option<f64>,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

/// The training configuration the arguments stand for.
pub fn config(args: &TokenizerTrainArgs) -> Result<TokenizerTrainConfig, cim_core::Error> {
    let dvae = tokenizer_config(&args.arch)?;
    let mut cfg = TokenizerTrainConfig::new(dvae, args.image_size, args.steps);
    cfg.batch = args.batch;
    cfg.lr = args.lr;
    cfg.seed = args.seed;
    cfg.recon = Recon::parse(&args.recon)?;
    cfg.usage_weight = args.usage_weight.unwrap_or(cfg.usage_weight);
    cfg.entropy_weight = args.entropy_weight.unwrap_or(cfg.entropy_weight);
    cfg.kl_weight = args.kl_weight.unwrap_or(cfg.kl_weight);
    cfg.validate()?;
    Ok(cfg)
}

/// Run `cim tokenizer train`: train, report and write the checkpoint.
pub fn run_train(args: &TokenizerTrainArgs) -> Result<TrainSummary, cim_core::Error> {
    let cfg = config(args)?;
    // Fail before training when the checkpoint cannot be written.
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| cim_core::Error::Checkpoint {
            path: args.out.display().to_string(),
            detail: format!("cannot create directory {}: {e}", dir.display()),
        })?;
    }
    if args.out.is_dir() {
        return Err(cim_core::Error::Checkpoint {
            path: args.out.display().to_string(),
            detail: "the output is a directory".to_string(),
        });
    }
    let b = Cpu::new();
    let quiet = args.quiet;
    let (tok, summary) = train_on_dataset(&b, &cfg, &args.data, |line| {
        if !quiet {
            eprintln!("{line}");
        }
    })?;
    save_tokenizer(&args.out, &tok, &b, &summary_metadata(&summary))?;
    if !quiet {
        eprintln!("{}", summary.line());
        eprintln!("wrote {}", args.out.display());
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TokenizerTrainArgs,
    }

    #[test]
    fn defaults_and_bad_arguments() {
        let a = Cli::parse_from(["t"]).args;
        assert_eq!(a.arch, "dvae_small");
        assert_eq!(a.image_size, 16);
        assert_eq!(a.out, PathBuf::from("runs/tokenizer.safetensors"));
        assert_eq!(config(&a).unwrap().steps, DEFAULT_STEPS);
        let bad = |f: &dyn Fn(&mut TokenizerTrainArgs)| {
            let mut a = Cli::parse_from(["t"]).args;
            f(&mut a);
            run_train(&a).unwrap_err().to_string()
        };
        assert!(bad(&|a| a.arch = "resnet50".into()).contains("not a dVAE"));
        assert!(bad(&|a| a.image_size = 15).contains("multiple"));
        assert!(bad(&|a| a.recon = "l3".into()).contains("l3"));
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none");
        assert!(bad(&|a| a.data = missing.clone()).contains("data"));
    }

    /// The default run on Fashion-MNIST (minutes): `cargo test -p cim-cpu --release
    /// default_tokenizer_run -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn default_tokenizer_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Cli::parse_from(["t"]).args;
        a.out = dir.path().join("tok.safetensors");
        let env = |k: &str| std::env::var(k).ok().map(|v| v.parse::<f64>().unwrap());
        if let Some(s) = env("CIM_TOK_STEPS") {
            a.steps = s as u64;
        }
        a.usage_weight = env("CIM_TOK_USAGE");
        a.entropy_weight = env("CIM_TOK_ENTROPY");
        let s = run_train(&a).unwrap();
        eprintln!("{s:?}");
        assert!(a.out.is_file());
    }
}
