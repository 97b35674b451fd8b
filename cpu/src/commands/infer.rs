//! `cim infer`: one forward pass of a checkpoint on the CPU backend.
//!
//! ```text
//! cim infer --weights FILE.safetensors [--arch NAME] --input x.npy|image.png --out y.npy
//! ```
//! - The architecture comes from the file's `cim.arch` metadata, or from `--arch` (a
//!   registry name such as `vit_base_patch16_224` or `resnet50`, or a serialized
//!   configuration; see `cim_core::arch`), which a timm or torchvision file needs.
//! - A `.npy` input (recognized by its magic bytes) is an NCHW array of `f32` or `f64`,
//!   used as it is: already normalized as the model expects (for a dVAE decoder: codes
//!   `[B, vocab, h, w]`).
//! - Any other input is decoded as an image (PNG or JPEG), resized to the model's image
//!   size with a Catmull-Rom (bicubic) filter, scaled to `[0, 1]`, normalized with the
//!   file's `cim.mean` / `cim.std` metadata (else the architecture's: ImageNet mean/std
//!   for a ViT or ResNet, DALL-E's `map_pixels` for a dVAE encoder), batch 1.
//! - The output (see `cim_core::arch::Model::infer`) is written as an `f32` `.npy`,
//!   atomically.
//!
//! Every failure is a one-line error message, never a panic.

use crate::Cpu;
use cim_core::arch::{ArchSpec, InputKind, InputSpec};
use cim_core::checkpoint::{self, Loaded};
use cim_core::Tensor;
use clap::Args;
use image::imageops::FilterType;
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::{ReadNpyError, ReadNpyExt, WriteNpyExt};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The arguments of `cim infer`.
#[derive(Args, Clone, Debug)]
pub struct InferArgs {
    /// The checkpoint, a .safetensors file.
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,
    /// The architecture: a registry name (vit_base_patch16_224, resnet50, dalle_encoder, ...)
    /// or a serialized configuration. Needed for a file without `cim.arch` metadata (timm,
    /// torchvision); overrides the metadata otherwise.
    #[arg(long, value_name = "NAME")]
    pub arch: Option<String>,
    /// An NCHW f32/f64 .npy array (used as is), or a PNG/JPEG image (resized to the model's
    /// size and normalized as the checkpoint says, batch 1).
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// Where to write the output, an f32 .npy array.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// What a successful run did.
#[derive(Clone, Debug, PartialEq)]
pub struct InferOutcome {
    /// The architecture run (`cim.arch` form).
    pub arch: String,
    pub input_shape: Vec<usize>,
    pub output_shape: Vec<usize>,
    /// What the output holds.
    pub output_doc: &'static str,
}

/// The magic bytes of a `.npy` file.
const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// Run `cim infer`; the error is one line.
pub fn run(args: &InferArgs) -> Result<InferOutcome, String> {
    let b = Cpu::new();
    let weights = &args.weights;
    let Loaded { spec, model, store, report } =
        checkpoint::load_model(weights, args.arch.as_deref(), &b).map_err(|e| e.to_string())?;
    let arch = spec.arch_string();
    let input_spec = input_spec(&spec, &report.metadata)?;
    let (data, shape) = read_input(&args.input, &input_spec, &arch)?;
    if shape.len() != 4 {
        return Err(format!(
            "input {} has shape {shape:?}; {arch} takes an NCHW array [N, C, H, W]",
            args.input.display()
        ));
    }
    let x = Tensor::from_slice(&b, &shape, &data).map_err(|e| format!("input {}: {e}", args.input.display()))?;
    let y = model
        .infer(&b, &store, &x)
        .map_err(|e| format!("input {} {shape:?} does not fit {arch}: {e}", args.input.display()))?;
    let out_shape = y.shape().to_vec();
    let values = y.to_vec(&b).map_err(|e| e.to_string())?;
    write_npy(&args.out, &out_shape, values)?;
    Ok(InferOutcome { arch, input_shape: shape, output_shape: out_shape, output_doc: spec.output_doc() })
}

/// The architecture's input, with the checkpoint's normalization where it records one.
fn input_spec(spec: &ArchSpec, meta: &BTreeMap<String, String>) -> Result<InputSpec, String> {
    let mut s = spec.input();
    let parse = |key: &str| -> Result<Option<Vec<f64>>, String> {
        let Some(v) = meta.get(key) else { return Ok(None) };
        let vals: Result<Vec<f64>, _> = v.split(',').map(|x| x.trim().parse::<f64>()).collect();
        match vals {
            Ok(vals) if vals.len() == s.channels => Ok(Some(vals)),
            _ => Err(format!("the checkpoint's {key} metadata {v:?} is not {} comma-separated numbers", s.channels)),
        }
    };
    if s.kind == InputKind::Image {
        if let (Some(mean), Some(std)) = (parse("cim.mean")?, parse("cim.std")?) {
            if std.iter().any(|&x| x == 0.0 || !x.is_finite()) {
                return Err(format!("the checkpoint's cim.std metadata {std:?} has a zero or non-finite value"));
            }
            s.mean = mean;
            s.std = std;
        }
    }
    Ok(s)
}

/// The input as NCHW values and shape.
fn read_input(path: &Path, spec: &InputSpec, arch: &str) -> Result<(Vec<f32>, Vec<usize>), String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot read input {}: {e}", path.display()))?;
    if bytes.starts_with(NPY_MAGIC) {
        return read_npy(path, &bytes);
    }
    if let InputKind::Codes { vocab, grid } = spec.kind {
        return Err(format!(
            "input {}: {arch} takes codes [B, {vocab}, {grid}, {grid}] (one-hot or probabilities) as a .npy array, \
             not an image",
            path.display()
        ));
    }
    read_image(path, &bytes, spec)
}

fn read_npy(path: &Path, bytes: &[u8]) -> Result<(Vec<f32>, Vec<usize>), String> {
    let bad = |e: ReadNpyError| format!("cannot read input {} as a .npy array: {e}", path.display());
    let a: ArrayD<f32> = match ArrayD::<f32>::read_npy(bytes) {
        Ok(a) => a,
        Err(ReadNpyError::WrongDescriptor(_)) => match ArrayD::<f64>::read_npy(bytes) {
            Ok(a) => a.mapv(|v| v as f32),
            Err(ReadNpyError::WrongDescriptor(d)) => {
                return Err(format!("input {}: the .npy array holds {d}; cim takes float32 or float64", path.display()))
            }
            Err(e) => return Err(bad(e)),
        },
        Err(e) => return Err(bad(e)),
    };
    let shape = a.shape().to_vec();
    // Logical (C) order whatever the file's memory order.
    Ok((a.iter().copied().collect(), shape))
}

fn read_image(path: &Path, bytes: &[u8], spec: &InputSpec) -> Result<(Vec<f32>, Vec<usize>), String> {
    let img = image::load_from_memory(bytes)
        .map_err(|e| format!("cannot read input {} as a .npy array or an image: {e}", path.display()))?;
    let side = u32::try_from(spec.image_size).map_err(|_| format!("image size {} is too large", spec.image_size))?;
    let c = spec.channels;
    let plane = spec.image_size * spec.image_size;
    let mut data = vec![0f32; c * plane];
    let mut put = |ch: usize, i: usize, v: f32| {
        let v = v.clamp(0.0, 1.0) as f64;
        data[ch * plane + i] = ((v - spec.mean[ch]) / spec.std[ch]) as f32;
    };
    match c {
        3 => {
            let rgb = image::imageops::resize(&img.to_rgb32f(), side, side, FilterType::CatmullRom);
            for (i, p) in rgb.pixels().enumerate() {
                for (ch, &v) in p.0.iter().enumerate() {
                    put(ch, i, v);
                }
            }
        }
        1 => {
            let grey = image::imageops::resize(&img.to_luma32f(), side, side, FilterType::CatmullRom);
            for (i, p) in grey.pixels().enumerate() {
                put(0, i, p.0[0]);
            }
        }
        _ => {
            return Err(format!(
                "input {}: the model takes {c} channels; an image gives 1 or 3 (pass a .npy array)",
                path.display()
            ))
        }
    }
    Ok((data, vec![1, c, spec.image_size, spec.image_size]))
}

fn write_npy(path: &Path, shape: &[usize], values: Vec<f32>) -> Result<(), String> {
    let a = ArrayD::from_shape_vec(IxDyn(shape), values).map_err(|e| format!("output: {e}"))?;
    let mut bytes = Vec::new();
    a.write_npy(&mut bytes).map_err(|e| format!("cannot encode the output: {e}"))?;
    checkpoint::write_atomic(path, &bytes).map_err(|e| match e {
        cim_core::Error::Checkpoint { detail, .. } => format!("output {}: {detail}", path.display()),
        e => format!("output {}: {e}", path.display()),
    })
}
