//! `cim export`: an enhancer to an ONNX file, for tract (or any ONNX runtime).
//!
//! ```text
//! cim export --checkpoint RUN|FILE --out m.onnx [--arch NAME] [--head none|respix|revdet|classifier]
//!            [--half] [--check]
//! ```
//! - `--checkpoint`: a run directory (its newest training checkpoint), a training
//!   checkpoint `RUN/checkpoints/step-N.safetensors` (the enhancer with its pre-training
//!   head), or a weights file: `RUN/enhancer.safetensors`, or a timm / torchvision file
//!   with `--arch` (see `cim_export::source`).
//! - `--head`: `none` (the backbone, as `cim infer --weights` computes), `respix` or
//!   `revdet` (the head the run pre-trained; from a training checkpoint), `classifier`
//!   (from a file with `head.*` / `fc.*`).
//! - `--half`: `f16` weights, half the file.
//! - `--check`: load the written file through tract, run it and the CPU backend on the
//!   same random input (batch 2, so the dynamic batch is exercised) and print the largest
//!   absolute and relative differences; above 1e-4 relative (`f32` weights) or 1e-2
//!   (`f16`) the command fails.
//!
//! The file is written atomically; see `cim_export::onnx` for what it holds.

use crate::Cpu;
use cim_export::check::{self, Comparison};
use cim_export::onnx::{self, ExportOptions};
use cim_export::{source, HeadKind};
use clap::Args;
use std::path::PathBuf;

/// The arguments of `cim export`.
#[derive(Args, Clone, Debug)]
pub struct ExportArgs {
    /// A run directory, a training checkpoint (RUN/checkpoints/step-N.safetensors) or a
    /// weights file (RUN/enhancer.safetensors, timm, torchvision).
    #[arg(long, value_name = "RUN|FILE")]
    pub checkpoint: PathBuf,
    /// Where to write the ONNX model.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The architecture of a weights file without `cim.arch` metadata (registry name or
    /// serialized configuration).
    #[arg(long, value_name = "NAME")]
    pub arch: Option<String>,
    /// The head: none, respix, revdet or classifier.
    #[arg(long, default_value = "none", value_name = "HEAD")]
    pub head: HeadKind,
    /// Store the weights as f16 (computation stays f32).
    #[arg(long)]
    pub half: bool,
    /// Compare the written file, run by tract, with the CPU backend on a random input.
    #[arg(long)]
    pub check: bool,
}

/// What `cim export` did.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportOutcome {
    /// The file the weights came from (a run directory's newest checkpoint).
    pub source: PathBuf,
    pub arch: String,
    pub head: HeadKind,
    pub bytes: usize,
    pub input: String,
    pub output: String,
    /// `--check`: tract against the CPU backend.
    pub check: Option<Comparison>,
    /// The relative tolerance the check was held to.
    pub tolerance: f64,
}

/// The batch `--check` runs.
pub const CHECK_BATCH: usize = 2;

/// Run `cim export`; the error is one line.
pub fn run(args: &ExportArgs) -> Result<ExportOutcome, String> {
    let b = Cpu::new();
    let loaded = source::load(&b, &args.checkpoint, args.arch.as_deref(), args.head).map_err(|e| e.to_string())?;
    let (e, store) = (&loaded.enhancer, &loaded.store);
    let opts = ExportOptions { half: args.half };
    let bytes = onnx::to_bytes(&b, e, store, opts).map_err(|e| e.to_string())?;
    cim_core::checkpoint::write_atomic(&args.out, &bytes).map_err(|e| e.to_string())?;
    let dims = |v: &[usize]| {
        let rest: Vec<String> = v[1..].iter().map(|d| d.to_string()).collect();
        format!("[batch, {}]", rest.join(", "))
    };
    let tolerance = if args.half { 1e-2 } else { 1e-4 };
    let mut outcome = ExportOutcome {
        source: loaded.path.clone(),
        arch: e.spec.arch_string(),
        head: e.head_kind(),
        bytes: bytes.len(),
        input: format!("{} {}", onnx::INPUT, dims(&e.input_shape(1))),
        output: format!("{} {}", e.output_name(), dims(&e.output_shape(1))),
        check: None,
        tolerance,
    };
    if args.check {
        let c = check::check(&b, e, store, &bytes, CHECK_BATCH, 0x0E_C4EC).map_err(|e| format!("check: {e}"))?;
        if c.max_rel.is_nan() || c.max_rel > tolerance {
            return Err(format!(
                "check: {} was written, but tract and the CPU backend differ by {:.3e} (relative {:.3e} > {tolerance})",
                args.out.display(),
                c.max_abs,
                c.max_rel
            ));
        }
        outcome.check = Some(c);
    }
    Ok(outcome)
}
