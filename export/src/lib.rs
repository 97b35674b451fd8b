//! `cim-export`: ONNX export of `cim` enhancers and inference through tract.
//!
//! - [`enhancer`]: what is exported — a ViT or ResNet backbone with no head, CIM's RESPIX
//!   or REVDET head, or a classifier — and its forward pass on any `cim` backend;
//! - [`source`]: loading one from a run directory, a training checkpoint or a weights file;
//! - [`onnx`]: the ONNX writer (opset 17, IR 8, dynamic batch, `f32` or `f16` weights,
//!   `cim.*` metadata);
//! - [`tract`]: checking, loading and running an ONNX file through tract;
//! - [`check`]: tract against the backend on a random input (`cim export --check`);
//! - [`restore`]: a RESPIX output back to an image (`cim infer --out restored.png`).
//!
//! ```no_run
//! use cim_core::{arch, Reference};
//! use cim_export::{check, onnx, Enhancer, HeadKind};
//! let b = Reference::<f32>::new();
//! let spec = arch::by_name("vit_tiny_patch4_32")?;
//! let (e, store) = Enhancer::random(&b, &spec, HeadKind::Respix, None, 0)?;
//! let bytes = onnx::to_bytes(&b, &e, &store, onnx::ExportOptions::default())?;
//! let c = check::check(&b, &e, &store, &bytes, 2, 0)?;
//! assert!(c.max_rel < 1e-4);
//! # Ok::<(), cim_core::Error>(())
//! ```

pub mod check;
pub mod enhancer;
pub mod onnx;
pub mod restore;
pub mod source;
pub mod tract;

pub use enhancer::{Enhancer, Head, HeadKind};
