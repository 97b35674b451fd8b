//! The ONNX writer: an [`Enhancer`] and its weights to an ONNX model.
//!
//! # The file
//! - opset [`OPSET`] (17), IR version [`IR_VERSION`] (8), producer `cim`;
//! - one input, `image`: `[batch, C, H, W]` `f32`, normalized as `cim.mean` / `cim.std`
//!   say; one output, `features`, `pixels` or `logits` (see [`Enhancer::output_name`]),
//!   with a symbolic first dimension `batch` on both;
//! - weights as initializers under timm / torchvision names (`blocks.0.attn.q.weight`,
//!   `layer1.0.conv1.weight`, `enhancer_head.weight`); MatMul weights are stored
//!   transposed, `[in, out]`, and timm's fused `qkv` is split into `q`, `k`, `v`;
//! - ViT: the patch embedding as a strided `Conv`, native `LayerNormalization`,
//!   attention as `MatMul` / `Softmax` / `MatMul`, GELU as `0.5·x·(1 + Erf(x/√2))`;
//! - ResNet: batch norms folded into the convolutions (evaluation mode), `MaxPool`,
//!   `DepthToSpace` (CRD, PyTorch's pixel shuffle) in the CIM head;
//! - with `half`, weights are `f16` initializers (`NAME.f16`) each followed by a `Cast`
//!   to `f32` named `NAME`: files half the size, computation in `f32`;
//! - `metadata_props`: the architecture's `cim.*` keys (`cim.arch`, `cim.family`,
//!   `cim.image_size`, `cim.in_chans`, `cim.patch_size`, `cim.normalize`, `cim.mean`,
//!   `cim.std`, ...), plus `cim.version`, `cim.head`, `cim.output`, `cim.weights`
//!   (`f32` / `f16`) and, for RESPIX, `cim.respix_norm`, `cim.respix_k`,
//!   `cim.target_eps` (what restoring an image needs).
//!
//! # Why the prost types of `tract-onnx`
//! The messages are `tract_onnx::pb`, encoded with `prost` 0.11 (the version
//! `tract-onnx` uses), rather than the `onnx-protobuf` crate: its generated code pins the
//! `protobuf` runtime it was generated with (3.4.0) and does not build against the
//! current 3.x that Cargo resolves, it would add a second protobuf runtime next to
//! tract's, and it is MPL-2.0 in an MIT / Apache-2.0 workspace. tract's types are the
//! ones the reader uses, so the writer and the runtime agree on the schema.

mod graph;
mod heads;
mod layers;
mod resnet;
mod vit;

pub use graph::{BATCH, IR_VERSION, OPSET};

use crate::enhancer::{invalid, Enhancer, Head, HeadKind};
use cim_core::arch::Model;
use cim_core::cim::RespixNorm;
use cim_core::params::ParamStore;
use cim_core::{checkpoint, Backend, Result};
use graph::Graph;
use layers::Weights;
use prost::Message;
use std::collections::BTreeMap;
use std::path::Path;
use tract_onnx::pb::ModelProto;

/// The name of the graph's input.
pub const INPUT: &str = "image";

/// What protobuf can hold in one message (2 GiB); larger models need `half`.
const MAX_BYTES: usize = i32::MAX as usize;

/// How to write the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// Weights as `f16` (computation stays `f32`).
    pub half: bool,
}

/// The `metadata_props` of the exported model (see the module docs).
pub fn metadata(e: &Enhancer, opts: ExportOptions) -> BTreeMap<String, String> {
    let join = |v: &[f64]| v.iter().map(|x| format!("{x}")).collect::<Vec<_>>().join(",");
    let mut m = e.spec.metadata();
    m.insert("cim.mean".into(), join(&e.input.mean));
    m.insert("cim.std".into(), join(&e.input.std));
    if let Some(p) = e.patch_size {
        m.insert("cim.patch_size".into(), p.to_string());
    }
    m.insert("cim.version".into(), env!("CARGO_PKG_VERSION").into());
    m.insert("cim.head".into(), e.head_kind().as_str().into());
    m.insert("cim.output".into(), e.output_doc());
    m.insert("cim.weights".into(), if opts.half { "f16" } else { "f32" }.into());
    if e.head_kind() == HeadKind::Respix {
        let (norm, k) = match e.respix_norm {
            RespixNorm::SlidingWindow { k } => ("window", k),
            RespixNorm::Patch { p } => ("patch", p),
            RespixNorm::None => ("none", 0),
        };
        m.insert("cim.respix_norm".into(), norm.into());
        m.insert("cim.respix_k".into(), k.to_string());
        m.insert("cim.target_eps".into(), format!("{}", e.target_eps));
    }
    m
}

/// The ONNX model of `e` with the weights of `store`.
pub fn to_model<B: Backend>(b: &B, e: &Enhancer, store: &ParamStore<B>, opts: ExportOptions) -> Result<ModelProto> {
    let w = Weights { b, store };
    let mut g = Graph::new(opts.half);
    let x = g.input(INPUT)?;
    let out = e.output_name();
    let f = match &e.model {
        Model::Vit { vit, .. } => vit::features(&mut g, &w, vit, &x)?,
        Model::ResNet(r) => resnet::features(&mut g, &w, r, &x)?,
        _ => return invalid(format!("{} is not a ViT or a ResNet", e.spec.arch_string())),
    };
    let y = match (&e.head, &e.model) {
        (Head::None, _) => g.node("Identity", &[&f], out, &[])?,
        (Head::Classifier, Model::Vit { head: Some(h), .. }) => heads::vit_classifier(&mut g, &w, h, &f, out)?,
        (Head::Classifier, Model::ResNet(r)) => match &r.fc {
            Some(fc) => heads::resnet_classifier(&mut g, &w, fc, &f, out)?,
            None => return invalid("the ResNet has no fc"),
        },
        (Head::VitRespix(h), Model::Vit { .. }) => heads::vit_respix(&mut g, &w, h, &f, out)?,
        (Head::VitRevdet(h), Model::Vit { vit, .. }) => {
            heads::vit_revdet(&mut g, &w, h, vit.cfg.num_patches(), &f, out)?
        }
        (Head::Conv(h), Model::ResNet(_)) => {
            let tokens = e.output_shape(1).get(1).copied().unwrap_or(0);
            heads::conv_head(&mut g, &w, h, tokens, &f, out)?
        }
        _ => return invalid("the head does not fit the backbone"),
    };
    let input_dims = &e.input_shape(1)[1..];
    let output_dims = &e.output_shape(1)[1..];
    let doc = format!("cim enhancer {}, head {}: {}", e.spec.arch_string(), e.head_kind(), e.output_doc());
    g.model("cim_enhancer", (&x, input_dims), (&y, output_dims), &metadata(e, opts), &doc)
}

/// The encoded ONNX file of `e`.
pub fn to_bytes<B: Backend>(b: &B, e: &Enhancer, store: &ParamStore<B>, opts: ExportOptions) -> Result<Vec<u8>> {
    let m = to_model(b, e, store, opts)?;
    let n = m.encoded_len();
    if n > MAX_BYTES {
        let hint = if opts.half { "" } else { "; --half halves it" };
        return invalid(format!("the model needs {n} bytes, more than one protobuf file holds (2 GiB){hint}"));
    }
    Ok(m.encode_to_vec())
}

/// Write the ONNX file of `e` to `path` atomically; returns its size in bytes.
pub fn write<B: Backend>(
    path: &Path,
    b: &B,
    e: &Enhancer,
    store: &ParamStore<B>,
    opts: ExportOptions,
) -> Result<usize> {
    let bytes = to_bytes(b, e, store, opts)?;
    checkpoint::write_atomic(path, &bytes)?;
    Ok(bytes.len())
}
