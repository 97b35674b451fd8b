//! Inference through tract: an ONNX file (one written by [`crate::onnx`], or another
//! with one image-like input) decoded, checked, loaded with its batch fixed, optimized,
//! and run.
//!
//! The file is checked before tract sees it: a protobuf that does not decode (a
//! truncated or corrupt file), a graph without an input or an output, a node that
//! reads a value nothing defines, an initializer whose data does not fill its shape or
//! lives in an external file: each is a [`cim_core::Error::Checkpoint`] naming the file.
//! What tract itself refuses is an error too, and a panic inside tract is caught and
//! reported as one.

use cim_core::arch::{InputKind, InputSpec, IMAGENET_MEAN, IMAGENET_STD};
use cim_core::{Error, Result};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::dimension;
use tract_onnx::pb::{type_proto, ModelProto, TensorProto};
use tract_onnx::prelude::{
    tract_linalg::multithread::{multithread_tract_scope, Executor},
    tvec, DatumExt, Framework, InferenceModelExt, Tensor, TypedModel, TypedRunnableModel,
};

fn file_err(label: &str, detail: impl Into<String>) -> Error {
    Error::Checkpoint { path: label.to_string(), detail: detail.into() }
}

fn corrupt(label: &str, detail: impl std::fmt::Display) -> Error {
    file_err(label, format!("not a valid ONNX model (truncated or corrupt?): {detail}"))
}

/// What a file says about itself, read without tract.
#[derive(Clone, Debug, PartialEq)]
pub struct OnnxInfo {
    /// `metadata_props` (the `cim.*` keys of a file written by `cim export`).
    pub metadata: BTreeMap<String, String>,
    pub input_name: String,
    /// The input's dimensions; `None` for a symbolic one (the batch).
    pub input_dims: Vec<Option<usize>>,
    pub output_name: String,
    /// The producer, e.g. `cim 0.1.0`.
    pub producer: String,
}

impl OnnxInfo {
    /// How an image becomes this model's input: the side and channels of its input
    /// `[N, C, H, H]`; `cim.mean` / `cim.std` from the metadata, else ImageNet's (the
    /// grey average for one channel).
    pub fn input_spec(&self) -> Result<InputSpec> {
        let dims = &self.input_dims;
        let (c, h, w) = match dims[..] {
            [_, Some(c), Some(h), Some(w)] => (c, h, w),
            _ => {
                return Err(Error::Shape {
                    op: "onnx",
                    detail: format!(
                        "the input {} has dimensions {}; an image model takes [N, C, H, W] with C, H and W fixed",
                        self.input_name,
                        show_dims(dims)
                    ),
                })
            }
        };
        if h != w {
            return Err(Error::Shape { op: "onnx", detail: format!("the input is {h}×{w}; cim takes square images") });
        }
        let parse = |k: &str| -> Result<Option<Vec<f64>>> {
            let Some(v) = self.metadata.get(k) else { return Ok(None) };
            let vals: std::result::Result<Vec<f64>, _> = v.split(',').map(|x| x.trim().parse::<f64>()).collect();
            match vals {
                Ok(v) if v.len() == c && v.iter().all(|x| x.is_finite()) => Ok(Some(v)),
                _ => Err(Error::Invalid {
                    op: "onnx",
                    detail: format!("metadata {k} = {v:?} is not {c} comma-separated numbers"),
                }),
            }
        };
        let (mean, std, normalize) = match (parse("cim.mean")?, parse("cim.std")?) {
            (Some(m), Some(s)) if s.iter().all(|&x| x > 0.0) => (m, s, "cim.mean/cim.std"),
            (Some(_), Some(s)) => {
                return Err(Error::Invalid { op: "onnx", detail: format!("metadata cim.std {s:?} is not positive") })
            }
            _ if c == 3 => (IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec(), "imagenet"),
            _ => (vec![0.449; c], vec![0.226; c], "imagenet"),
        };
        Ok(InputSpec { kind: InputKind::Image, image_size: h, channels: c, normalize, mean, std })
    }
}

/// `[batch, 3, 224, 224]`.
pub fn show_dims(dims: &[Option<usize>]) -> String {
    let d: Vec<String> = dims.iter().map(|d| d.map(|v| v.to_string()).unwrap_or_else(|| "batch".into())).collect();
    format!("[{}]", d.join(", "))
}

fn elem_size(dt: i32) -> Option<usize> {
    let t = DataType::from_i32(dt)?;
    Some(match t {
        DataType::Float | DataType::Int32 | DataType::Uint32 => 4,
        DataType::Double | DataType::Int64 | DataType::Uint64 | DataType::Complex64 => 8,
        DataType::Complex128 => 16,
        DataType::Float16 | DataType::Bfloat16 | DataType::Int16 | DataType::Uint16 => 2,
        DataType::Uint8 | DataType::Int8 | DataType::Bool => 1,
        DataType::String | DataType::Undefined => return None,
    })
}

fn check_initializer(label: &str, t: &TensorProto) -> Result<()> {
    let what = |d: String| corrupt(label, format!("initializer {:?}: {d}", t.name));
    if t.data_location == Some(1) || !t.external_data.is_empty() {
        return Err(file_err(
            label,
            format!("initializer {:?} lives in an external file; cim reads self-contained models", t.name),
        ));
    }
    let numel = t
        .dims
        .iter()
        .try_fold(1usize, |a, &d| usize::try_from(d).ok().and_then(|d| a.checked_mul(d)))
        .ok_or_else(|| what(format!("bad dimensions {:?}", t.dims)))?;
    if !t.raw_data.is_empty() {
        let size = elem_size(t.data_type).ok_or_else(|| what(format!("raw data of type {}", t.data_type)))?;
        if Some(t.raw_data.len()) != numel.checked_mul(size) {
            return Err(what(format!("{} bytes for {numel} values of {size} bytes", t.raw_data.len())));
        }
        return Ok(());
    }
    let typed = t.float_data.len()
        + t.int32_data.len()
        + t.int64_data.len()
        + t.double_data.len()
        + t.uint64_data.len()
        + t.string_data.len();
    let complex = matches!(DataType::from_i32(t.data_type), Some(DataType::Complex64 | DataType::Complex128));
    if typed != numel && !(complex && typed == 2 * numel) {
        return Err(what(format!("{typed} values for {numel}")));
    }
    Ok(())
}

/// Decode and check a file's bytes (see the module docs); `label` names it in errors.
pub fn inspect(bytes: &[u8], label: &str) -> Result<(ModelProto, OnnxInfo)> {
    if bytes.is_empty() {
        return Err(corrupt(label, "the file is empty"));
    }
    let proto = ModelProto::decode(bytes).map_err(|e| corrupt(label, e))?;
    if !proto.opset_import.iter().any(|o| o.domain.is_empty() || o.domain == "ai.onnx") {
        return Err(corrupt(label, "no operator set is imported (not an ONNX model?)"));
    }
    let graph = proto.graph.as_ref().ok_or_else(|| corrupt(label, "no graph"))?;
    let mut defined: BTreeSet<&str> = BTreeSet::new();
    for t in &graph.initializer {
        check_initializer(label, t)?;
        defined.insert(&t.name);
    }
    let inputs: Vec<_> = graph.input.iter().filter(|i| !defined.contains(i.name.as_str())).collect();
    let [input] = inputs[..] else {
        return Err(file_err(
            label,
            format!("the graph has {} inputs; cim runs models with one (an image)", inputs.len()),
        ));
    };
    let Some(type_proto::Value::TensorType(tt)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(corrupt(label, format!("input {:?} has no tensor type", input.name)));
    };
    if tt.elem_type != DataType::Float as i32 {
        return Err(file_err(label, format!("input {:?} is not float32 (type {})", input.name, tt.elem_type)));
    }
    let input_dims: Vec<Option<usize>> = tt
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(dimension::Value::DimValue(v)) if v > 0 => Some(v as usize),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    for i in &graph.input {
        defined.insert(&i.name);
    }
    for n in &graph.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            if !defined.contains(i.as_str()) {
                return Err(corrupt(
                    label,
                    format!("node {:?} ({}) reads {i:?}, which nothing defines", n.name, n.op_type),
                ));
            }
        }
        if n.output.is_empty() || n.op_type.is_empty() {
            return Err(corrupt(label, format!("node {:?} has no operator or no output", n.name)));
        }
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            defined.insert(o);
        }
    }
    let output = graph.output.first().ok_or_else(|| corrupt(label, "the graph has no output"))?;
    if !defined.contains(output.name.as_str()) {
        return Err(corrupt(label, format!("nothing computes the output {:?}", output.name)));
    }
    let info = OnnxInfo {
        metadata: proto.metadata_props.iter().map(|e| (e.key.clone(), e.value.clone())).collect(),
        input_name: input.name.clone(),
        input_dims,
        output_name: output.name.clone(),
        producer: format!("{} {}", proto.producer_name, proto.producer_version).trim().to_string(),
    };
    Ok((proto, info))
}

/// The message of a caught panic.
fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown".into())
}

/// A model loaded by tract for one input shape, optimized, ready to run.
pub struct TractModel {
    plan: TypedRunnableModel<TypedModel>,
    pub info: OnnxInfo,
    /// The input shape the model was loaded for.
    pub input_shape: Vec<usize>,
    executor: Executor,
    label: String,
}

impl TractModel {
    /// Load the ONNX file at `path` for inputs of `batch` images.
    pub fn load_path(path: &Path, batch: usize, threads: usize) -> Result<TractModel> {
        let label = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| file_err(&label, format!("cannot read: {e}")))?;
        Self::load(&bytes, &label, batch, threads)
    }

    /// Load an ONNX file from its bytes for inputs of `batch` images (`label` names it in
    /// errors), running on `threads` threads (1: tract's single-threaded default).
    pub fn load(bytes: &[u8], label: &str, batch: usize, threads: usize) -> Result<TractModel> {
        let (proto, info) = inspect(bytes, label)?;
        let mut shape = Vec::with_capacity(info.input_dims.len());
        for (i, d) in info.input_dims.iter().enumerate() {
            match (i, d) {
                (0, None) => shape.push(batch),
                (0, Some(n)) if *n == batch => shape.push(batch),
                (_, Some(n)) => {
                    if i == 0 {
                        return Err(Error::Shape {
                            op: "onnx",
                            detail: format!("{label} takes a batch of {n}, not {batch} (it has no dynamic batch axis)"),
                        });
                    }
                    shape.push(*n)
                }
                (_, None) => {
                    return Err(file_err(label, format!("input dimension {i} is symbolic; cim fixes only the batch")))
                }
            }
        }
        if shape.is_empty() || batch == 0 {
            return Err(file_err(label, "the input has no shape (or the batch is 0)"));
        }
        let fact_shape = shape.clone();
        let built = catch_unwind(AssertUnwindSafe(|| -> tract_onnx::prelude::TractResult<_> {
            let onnx = tract_onnx::onnx().with_ignore_output_shapes(true);
            let model = onnx.model_for_proto_model(&proto)?;
            model.with_input_fact(0, f32::fact(fact_shape).into())?.into_optimized()?.into_runnable()
        }));
        let plan = match built {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Err(file_err(label, format!("tract cannot load it: {e:#}"))),
            Err(p) => return Err(file_err(label, format!("tract failed on it: {}", panic_text(p)))),
        };
        let executor = match threads {
            0 | 1 => Executor::SingleThread,
            n => match rayon::ThreadPoolBuilder::new().num_threads(n).thread_name(|i| format!("tract-{i}")).build() {
                Ok(pool) => Executor::MultiThread(Arc::new(pool)),
                Err(_) => Executor::SingleThread,
            },
        };
        Ok(TractModel { plan, info, input_shape: shape, executor, label: label.to_string() })
    }

    /// Run on `x` (row-major, of shape [`TractModel::input_shape`]): the output and its shape.
    pub fn run(&self, x: &[f32], shape: &[usize]) -> Result<(Vec<f32>, Vec<usize>)> {
        if shape != self.input_shape.as_slice() {
            return Err(Error::Shape {
                op: "onnx",
                detail: format!(
                    "input {shape:?} does not fit {}: it takes {:?} (loaded for batch {})",
                    self.label, self.input_shape, self.input_shape[0]
                ),
            });
        }
        let t = Tensor::from_shape(shape, x).map_err(|e| Error::Shape {
            op: "onnx",
            detail: format!("input {shape:?} with {} values: {e}", x.len()),
        })?;
        let run = catch_unwind(AssertUnwindSafe(|| {
            multithread_tract_scope(self.executor.clone(), || self.plan.run(tvec!(t.into())))
        }));
        let out = match run {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return Err(file_err(&self.label, format!("tract failed to run it: {e:#}"))),
            Err(p) => return Err(file_err(&self.label, format!("tract failed to run it: {}", panic_text(p)))),
        };
        let y = out.first().ok_or_else(|| file_err(&self.label, "the model returned nothing"))?;
        let view =
            y.to_array_view::<f32>().map_err(|e| file_err(&self.label, format!("the output is not float32: {e}")))?;
        Ok((view.iter().copied().collect(), view.shape().to_vec()))
    }
}
