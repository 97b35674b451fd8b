//! `cim infer`: one forward pass of a checkpoint on the CPU backend, or of an ONNX model
//! through tract.
//!
//! ```text
//! cim infer --weights FILE.safetensors [--arch NAME] --input x.npy|image.png --out y.npy
//! cim infer --model FILE.onnx --input x.npy|image.png --out y.npy|restored.png
//! ```
//! - `--weights`: the architecture comes from the file's `cim.arch` metadata, or from
//!   `--arch` (a registry name such as `vit_base_patch16_224` or `resnet50`, or a
//!   serialized configuration; see `cim_core::arch`), which a timm or torchvision file
//!   needs.
//! - `--model`: an ONNX file (`cim export` writes them), run by tract, optimized for the
//!   input's batch. Its input size and normalization come from the file (`cim.*`
//!   metadata; ImageNet mean/std for a file without it).
//! - A `.npy` input (recognized by its magic bytes) is an NCHW array of `f32` or `f64`,
//!   used as it is: already normalized as the model expects (for a dVAE decoder: codes
//!   `[B, vocab, h, w]`).
//! - Any other input is decoded as an image (PNG or JPEG), resized to the model's image
//!   size with a Catmull-Rom (bicubic) filter, scaled to `[0, 1]`, normalized with the
//!   file's `cim.mean` / `cim.std` metadata (else the architecture's: ImageNet mean/std
//!   for a ViT or ResNet, DALL-E's `map_pixels` for a dVAE encoder), batch 1. Both paths
//!   prepare inputs the same way, so their outputs compare.
//! - The output (see `cim_core::arch::Model::infer`, or the ONNX model's `cim.output`) is
//!   written as an `f32` `.npy`, atomically. With a RESPIX model (`cim export --head
//!   respix`) and batch 1, an `--out` ending in `.png` or `.jpg` is the restored image:
//!   the head's window-normalized pixels put back with the input's own window
//!   statistics (the paper's §A.2; `cim_export::restore`).
//!
//! Every failure is a one-line error message, never a panic.

use crate::Cpu;
use cim_core::arch::{ArchSpec, InputKind, InputSpec};
use cim_core::checkpoint::{self, Loaded};
use cim_core::cim::RespixNorm;
use cim_core::Tensor;
use cim_export::restore;
use cim_export::tract::{self, TractModel};
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
    /// The checkpoint, a .safetensors file (run on the CPU backend).
    #[arg(long, value_name = "FILE", required_unless_present = "model", conflicts_with = "model")]
    pub weights: Option<PathBuf>,
    /// An ONNX model (run through tract), e.g. written by `cim export`.
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// The architecture: a registry name (vit_base_patch16_224, resnet50, dalle_encoder, ...)
    /// or a serialized configuration. Needed for a file without `cim.arch` metadata (timm,
    /// torchvision); overrides the metadata otherwise. Not for --model.
    #[arg(long, value_name = "NAME", conflicts_with = "model")]
    pub arch: Option<String>,
    /// An NCHW f32/f64 .npy array (used as is), or a PNG/JPEG image (resized to the model's
    /// size and normalized as the checkpoint says, batch 1).
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// Where to write the output, an f32 .npy array (or, for a RESPIX ONNX model, a .png
    /// or .jpg: the restored image).
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
    pub output_doc: String,
}

/// The magic bytes of a `.npy` file.
const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// Run `cim infer`; the error is one line.
pub fn run(args: &InferArgs) -> Result<InferOutcome, String> {
    let b = Cpu::new();
    let weights = match (&args.weights, &args.model) {
        (_, Some(model)) => return run_onnx(args, model),
        (Some(w), None) => w,
        (None, None) => return Err("name a checkpoint (--weights FILE) or an ONNX model (--model FILE)".into()),
    };
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
    if image_out(&args.out) {
        return Err(format!(
            "--out {}: an image is written for a RESPIX ONNX model (--model); --weights writes a .npy",
            args.out.display()
        ));
    }
    write_npy(&args.out, &out_shape, values)?;
    Ok(InferOutcome { arch, input_shape: shape, output_shape: out_shape, output_doc: spec.output_doc().to_string() })
}

/// Whether `--out` names an image (the restored picture of a RESPIX model).
fn image_out(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg"))
}

/// `cim infer --model`: the ONNX model through tract.
fn run_onnx(args: &InferArgs, model: &Path) -> Result<InferOutcome, String> {
    let label = model.display().to_string();
    let bytes = fs::read(model).map_err(|e| format!("cannot read model {label}: {e}"))?;
    let (_, info) = tract::inspect(&bytes, &label).map_err(|e| e.to_string())?;
    let input_spec = info.input_spec().map_err(|e| format!("{label}: {e}"))?;
    let arch = info.metadata.get("cim.arch").cloned().unwrap_or_else(|| format!("ONNX model ({})", info.producer));
    let (data, shape) = read_input(&args.input, &input_spec, &arch)?;
    let want = &info.input_dims;
    let fits = shape.len() == want.len() && shape.iter().zip(want).skip(1).all(|(s, w)| Some(*s) == *w);
    if !fits || want.first().is_some_and(|w| w.is_some_and(|n| n != shape[0])) {
        return Err(format!(
            "input {} has shape {shape:?}; {label} takes {}",
            args.input.display(),
            tract::show_dims(want)
        ));
    }
    let m = TractModel::load(&bytes, &label, shape[0], rayon::current_num_threads()).map_err(|e| e.to_string())?;
    drop(bytes);
    let (y, out_shape) = m.run(&data, &shape).map_err(|e| e.to_string())?;
    let output_doc =
        info.metadata.get("cim.output").cloned().unwrap_or_else(|| format!("the output {}", info.output_name));
    if image_out(&args.out) {
        restore_image(&args.out, &info.metadata, &input_spec, &data, &shape, &y, &out_shape)?;
    } else {
        write_npy(&args.out, &out_shape, y)?;
    }
    Ok(InferOutcome { arch, input_shape: shape, output_shape: out_shape, output_doc })
}

/// Write the image a RESPIX model restores from input `x` (normalized) and its output `y`.
fn restore_image(
    path: &Path,
    meta: &BTreeMap<String, String>,
    spec: &InputSpec,
    x: &[f32],
    shape: &[usize],
    y: &[f32],
    out_shape: &[usize],
) -> Result<(), String> {
    let out = path.display();
    if meta.get("cim.head").map(String::as_str) != Some("respix") {
        return Err(format!(
            "--out {out}: an image is written for a model with a RESPIX head (cim export --head respix); write a .npy"
        ));
    }
    if shape[0] != 1 || out_shape != shape {
        return Err(format!(
            "--out {out}: one image in, one out (input {shape:?}, output {out_shape:?}); write a .npy"
        ));
    }
    let num = |k: &str| meta.get(k).and_then(|v| v.parse::<f64>().ok());
    let k = num("cim.respix_k").map(|k| k as usize).unwrap_or(8);
    let norm = match meta.get("cim.respix_norm").map(String::as_str).unwrap_or("window") {
        "window" => RespixNorm::SlidingWindow { k },
        "patch" => RespixNorm::Patch { p: k },
        "none" => RespixNorm::None,
        n => return Err(format!("the model's cim.respix_norm {n:?} is none of window, patch, none")),
    };
    let eps = num("cim.target_eps").unwrap_or(cim_core::cim::TARGET_EPS);
    let b = Cpu::new();
    let t = |v: &[f32]| Tensor::from_slice(&b, shape, v).map_err(|e| e.to_string());
    let restored =
        restore::restore(&b, &t(x)?, &t(y)?, norm, eps).and_then(|r| r.to_vec(&b)).map_err(|e| e.to_string())?;
    let px = restore::to_unit_range(&restored, &spec.mean, &spec.std);
    let (c, h, w) = (shape[1], shape[2] as u32, shape[3] as u32);
    let plane = shape[2] * shape[3];
    let byte = |v: f32| (v * 255.0).round() as u8;
    let img = match c {
        3 => image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |i, j| {
            let at = j as usize * shape[3] + i as usize;
            image::Rgb([byte(px[at]), byte(px[plane + at]), byte(px[2 * plane + at])])
        })),
        1 => image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(w, h, |i, j| {
            image::Luma([byte(px[j as usize * shape[3] + i as usize])])
        })),
        _ => return Err(format!("--out {out}: {c} channels do not make an image; write a .npy")),
    };
    let format = image::ImageFormat::from_path(path).map_err(|e| format!("--out {out}: {e}"))?;
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, format).map_err(|e| format!("cannot encode {out}: {e}"))?;
    checkpoint::write_atomic(path, bytes.get_ref()).map_err(|e| match e {
        cim_core::Error::Checkpoint { detail, .. } => format!("output {out}: {detail}"),
        e => format!("output {out}: {e}"),
    })
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
