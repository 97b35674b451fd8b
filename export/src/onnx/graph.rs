//! A small builder over the ONNX protobuf messages: named nodes, weights as
//! initializers (`f32`, or `f16` with a `Cast` to `f32` after them), `int64` shape
//! constants, and the final `ModelProto`.

use crate::enhancer::invalid;
use cim_core::Result;
use std::collections::{BTreeMap, BTreeSet};
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
use tract_onnx::pb::{
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The ONNX operator set the graphs use.
pub const OPSET: i64 = 17;
/// The ONNX IR version of the files (IR 8 goes with opset 17).
pub const IR_VERSION: i64 = 8;
/// The name of the symbolic batch dimension.
pub const BATCH: &str = "batch";

/// An attribute of a node.
pub(crate) enum Attr<'a> {
    Int(&'a str, i64),
    Ints(&'a str, &'a [i64]),
    Float(&'a str, f32),
    Str(&'a str, &'a str),
}

impl Attr<'_> {
    fn proto(&self) -> AttributeProto {
        let mut a = AttributeProto::default();
        match *self {
            Attr::Int(n, v) => {
                a.name = n.into();
                a.r#type = AttributeType::Int as i32;
                a.i = v;
            }
            Attr::Ints(n, v) => {
                a.name = n.into();
                a.r#type = AttributeType::Ints as i32;
                a.ints = v.to_vec();
            }
            Attr::Float(n, v) => {
                a.name = n.into();
                a.r#type = AttributeType::Float as i32;
                a.f = v;
            }
            Attr::Str(n, v) => {
                a.name = n.into();
                a.r#type = AttributeType::String as i32;
                a.s = v.as_bytes().to_vec();
            }
        }
        a
    }
}

/// A graph under construction.
pub(crate) struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// Every value name defined so far (inputs, initializers, node outputs).
    names: BTreeSet<String>,
    /// Shared constants, by key.
    constants: BTreeMap<String, String>,
    /// Weights as `f16` initializers followed by a `Cast` to `f32`.
    half: bool,
}

fn tensor_type(elem: DataType, dims: &[Dimension]) -> TypeProto {
    TypeProto {
        denotation: String::new(),
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: elem as i32,
            shape: Some(TensorShapeProto { dim: dims.to_vec() }),
        })),
    }
}

/// `[batch, dims...]` with a symbolic batch.
fn batched(dims: &[usize]) -> Vec<Dimension> {
    let mut v = vec![Dimension { denotation: String::new(), value: Some(dimension::Value::DimParam(BATCH.into())) }];
    v.extend(
        dims.iter()
            .map(|&d| Dimension { denotation: String::new(), value: Some(dimension::Value::DimValue(d as i64)) }),
    );
    v
}

impl Graph {
    pub fn new(half: bool) -> Self {
        Graph { nodes: Vec::new(), initializers: Vec::new(), names: BTreeSet::new(), constants: BTreeMap::new(), half }
    }

    fn define(&mut self, name: &str) -> Result<()> {
        if !self.names.insert(name.to_string()) {
            return invalid(format!("the graph defines {name:?} twice"));
        }
        Ok(())
    }

    /// Declare a graph input (a name for the value; the proto comes in [`Graph::model`]).
    pub fn input(&mut self, name: &str) -> Result<String> {
        self.define(name)?;
        Ok(name.to_string())
    }

    /// A weight `name` of `shape`: an `f32` initializer, or (half) an `f16` one,
    /// `name.f16`, and a `Cast` to `f32` named `name`. Values must be finite and, in
    /// half precision, fit `f16`.
    pub fn weight(&mut self, name: &str, shape: &[usize], values: &[f32]) -> Result<String> {
        if shape.iter().product::<usize>() != values.len() {
            return invalid(format!("weight {name}: {} values for shape {shape:?}", values.len()));
        }
        if let Some(v) = values.iter().find(|v| !v.is_finite()) {
            return invalid(format!("weight {name} holds {v}; the checkpoint is broken"));
        }
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        if !self.half {
            self.define(name)?;
            let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.initializers.push(TensorProto {
                name: name.into(),
                dims,
                data_type: DataType::Float as i32,
                raw_data: raw,
                ..Default::default()
            });
            return Ok(name.to_string());
        }
        let mut raw = Vec::with_capacity(values.len() * 2);
        for &v in values {
            let h = half::f16::from_f32(v);
            if h.is_infinite() {
                return invalid(format!("weight {name}: value {v} does not fit f16 (export without --half)"));
            }
            raw.extend_from_slice(&h.to_le_bytes());
        }
        let stored = format!("{name}.f16");
        self.define(&stored)?;
        self.initializers.push(TensorProto {
            name: stored.clone(),
            dims,
            data_type: DataType::Float16 as i32,
            raw_data: raw,
            ..Default::default()
        });
        self.node("Cast", &[&stored], name, &[Attr::Int("to", DataType::Float as i64)])
    }

    /// An `int64` constant (shapes, axes, pads), shared by value.
    pub fn ints(&mut self, values: &[i64]) -> Result<String> {
        let key = format!("i64{values:?}");
        if let Some(n) = self.constants.get(&key) {
            return Ok(n.clone());
        }
        let name = format!("const.i64.{}", self.constants.len());
        self.define(&name)?;
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: vec![values.len() as i64],
            data_type: DataType::Int64 as i32,
            raw_data: raw,
            ..Default::default()
        });
        self.constants.insert(key, name.clone());
        Ok(name)
    }

    /// An `int64` scalar (a `Gather` index), shared by value.
    pub fn index(&mut self, value: i64) -> Result<String> {
        let key = format!("index{value}");
        if let Some(n) = self.constants.get(&key) {
            return Ok(n.clone());
        }
        let name = format!("const.index.{}", self.constants.len());
        self.define(&name)?;
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: vec![],
            data_type: DataType::Int64 as i32,
            raw_data: value.to_le_bytes().to_vec(),
            ..Default::default()
        });
        self.constants.insert(key, name.clone());
        Ok(name)
    }

    /// An `f32` scalar, kept in `f32` even in half precision (exact constants such as
    /// 0.5, 1, √2 and the attention scale), shared by value.
    pub fn scalar(&mut self, value: f32) -> Result<String> {
        let key = format!("f32:{:08x}", value.to_bits());
        if let Some(n) = self.constants.get(&key) {
            return Ok(n.clone());
        }
        let name = format!("const.f32.{}", self.constants.len());
        self.define(&name)?;
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: vec![],
            data_type: DataType::Float as i32,
            raw_data: value.to_le_bytes().to_vec(),
            ..Default::default()
        });
        self.constants.insert(key, name.clone());
        Ok(name)
    }

    /// A node `op` with one output, `out`.
    pub fn node(&mut self, op: &str, inputs: &[&str], out: &str, attrs: &[Attr<'_>]) -> Result<String> {
        for i in inputs {
            if !i.is_empty() && !self.names.contains(*i) {
                return invalid(format!("node {out} ({op}) reads {i:?}, which is not defined yet"));
            }
        }
        self.define(out)?;
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.to_string()],
            name: out.to_string(),
            op_type: op.to_string(),
            domain: String::new(),
            attribute: attrs.iter().map(Attr::proto).collect(),
            doc_string: String::new(),
        });
        Ok(out.to_string())
    }

    /// The model: one input `[batch, input_dims...]`, one output `[batch, output_dims...]`,
    /// both `f32`, opset [`OPSET`], IR [`IR_VERSION`].
    pub fn model(
        self,
        name: &str,
        input: (&str, &[usize]),
        output: (&str, &[usize]),
        metadata: &BTreeMap<String, String>,
        doc: &str,
    ) -> Result<ModelProto> {
        if !self.names.contains(output.0) {
            return invalid(format!("the graph never computes its output {:?}", output.0));
        }
        let value = |n: &str, dims: &[usize]| ValueInfoProto {
            name: n.into(),
            r#type: Some(tensor_type(DataType::Float, &batched(dims))),
            doc_string: String::new(),
        };
        let graph = GraphProto {
            node: self.nodes,
            name: name.into(),
            initializer: self.initializers,
            input: vec![value(input.0, input.1)],
            output: vec![value(output.0, output.1)],
            ..Default::default()
        };
        Ok(ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
            producer_name: "cim".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: doc.into(),
            graph: Some(graph),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto { key: k.clone(), value: v.clone() })
                .collect(),
            ..Default::default()
        })
    }
}
