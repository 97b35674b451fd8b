//! The ONNX file itself (versions, names, dynamic batch, metadata, f16 weights), and
//! the errors for files that are not sound models, inputs that do not fit, and
//! architectures that cannot be exported.

use cim_core::arch::by_name;
use cim_core::cim::{target, RespixNorm};
use cim_core::{Reference, Tensor};
use cim_export::check::random_input;
use cim_export::onnx::{to_bytes, to_model, ExportOptions, BATCH, INPUT, IR_VERSION, OPSET};
use cim_export::tract::{inspect, TractModel};
use cim_export::{restore, Enhancer, HeadKind};
use prost::Message;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as Dim;
use tract_onnx::pb::{type_proto, ModelProto, ValueInfoProto};

type R = Reference<f32>;

const VIT: &str = "vit(img=16,patch=4,dim=16,depth=2,heads=2)";
const RESNET: &str = "resnet(block=basic,layers=1-1-1-1,width=4,stem=small,img=16)";

fn model(arch: &str, head: HeadKind, half: bool) -> (ModelProto, Vec<u8>) {
    let b = R::new();
    let (e, store) = Enhancer::random(&b, &by_name(arch).unwrap(), head, Some(4), 1).unwrap();
    let opts = ExportOptions { half };
    (to_model(&b, &e, &store, opts).unwrap(), to_bytes(&b, &e, &store, opts).unwrap())
}

fn dims(v: &ValueInfoProto) -> Vec<String> {
    let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) else { panic!() };
    t.shape
        .as_ref()
        .unwrap()
        .dim
        .iter()
        .map(|d| match d.value.as_ref().unwrap() {
            Dim::DimValue(v) => v.to_string(),
            Dim::DimParam(p) => p.clone(),
        })
        .collect()
}

#[test]
fn vit_file_layout_and_metadata() {
    let (m, bytes) = model(VIT, HeadKind::Respix, false);
    assert_eq!(ModelProto::decode(bytes.as_slice()).unwrap(), m, "the bytes are the model");
    assert_eq!((m.ir_version, m.opset_import[0].version, m.opset_import[0].domain.as_str()), (IR_VERSION, OPSET, ""));
    assert_eq!((IR_VERSION, OPSET), (8, 17));
    let g = m.graph.as_ref().unwrap();
    assert_eq!(g.input.len(), 1);
    assert_eq!(g.input[0].name, INPUT);
    assert_eq!(dims(&g.input[0]), [BATCH, "3", "16", "16"]);
    assert_eq!(g.output[0].name, "pixels");
    assert_eq!(dims(&g.output[0]), [BATCH, "3", "16", "16"]);
    let inits: Vec<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    for n in [
        "patch_embed.proj.weight",
        "blocks.1.attn.q.weight",
        "blocks.0.mlp.fc2.bias",
        "norm.weight",
        "enhancer_head.weight",
    ] {
        assert!(inits.contains(&n), "{n} not in {inits:?}");
    }
    let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
    for op in ["Conv", "LayerNormalization", "Erf", "Softmax", "MatMul"] {
        assert!(ops.contains(&op), "{op}");
    }
    assert!(!ops.contains(&"Cast"));
    let meta: std::collections::BTreeMap<_, _> =
        m.metadata_props.iter().map(|e| (e.key.as_str(), e.value.as_str())).collect();
    assert_eq!(meta["cim.arch"], by_name(VIT).unwrap().arch_string());
    assert_eq!((meta["cim.image_size"], meta["cim.patch_size"], meta["cim.head"]), ("16", "4", "respix"));
    assert_eq!((meta["cim.mean"], meta["cim.std"]), ("0.485,0.456,0.406", "0.229,0.224,0.225"));
    assert_eq!((meta["cim.version"], meta["cim.weights"]), (env!("CARGO_PKG_VERSION"), "f32"));
    assert_eq!((meta["cim.respix_norm"], meta["cim.respix_k"]), ("window", "8"));
    let (_, info) = inspect(&bytes, "m.onnx").unwrap();
    assert_eq!(info.input_dims, [None, Some(3), Some(16), Some(16)]);
    let spec = info.input_spec().unwrap();
    assert_eq!((spec.image_size, spec.channels, spec.mean[0]), (16, 3, 0.485));
}

#[test]
fn resnet_file_folds_batch_norm() {
    let (m, _) = model(RESNET, HeadKind::Revdet, false);
    let g = m.graph.as_ref().unwrap();
    let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
    assert!(!ops.contains(&"BatchNormalization"));
    assert!(ops.contains(&"DepthToSpace") && ops.contains(&"Conv") && ops.contains(&"Relu"));
    assert_eq!(g.output[0].name, "logits");
    assert_eq!(dims(&g.output[0]), [BATCH, "16"], "a 4×4 token grid at patch 4");
    let inits: Vec<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    assert!(inits.contains(&"layer2.0.downsample.weight") && inits.contains(&"layer1.0.conv1.bias"));
}

#[test]
fn half_weights_halve_the_file() {
    let (m, _) = model(VIT, HeadKind::None, false);
    let (mh, _) = model(VIT, HeadKind::None, true);
    let weight_bytes = |m: &ModelProto| -> usize {
        m.graph.as_ref().unwrap().initializer.iter().filter(|t| !t.dims.is_empty()).map(|t| t.raw_data.len()).sum()
    };
    let (full, half) = (weight_bytes(&m), weight_bytes(&mh));
    assert!(half * 10 < full * 6, "{half} vs {full}");
    let g = mh.graph.as_ref().unwrap();
    let w = g.initializer.iter().find(|t| t.name == "patch_embed.proj.weight.f16").unwrap();
    assert_eq!(w.data_type, DataType::Float16 as i32);
    let cast = g.node.iter().find(|n| n.output[0] == "patch_embed.proj.weight").unwrap();
    assert_eq!(cast.op_type, "Cast");
    let meta = mh.metadata_props.iter().find(|e| e.key == "cim.weights").unwrap();
    assert_eq!(meta.value, "f16");
    assert_eq!(m.graph.unwrap().output, g.output);
    // A weight beyond f16's range is an error, not an infinity.
    let b = R::new();
    let (e, mut store) = Enhancer::random(&b, &by_name(VIT).unwrap(), HeadKind::None, None, 1).unwrap();
    store.set(&b, "norm.bias", &[16], &[1e6; 16]).unwrap();
    let err = to_bytes(&b, &e, &store, ExportOptions { half: true }).unwrap_err().to_string();
    assert!(err.contains("norm.bias") && err.contains("does not fit f16"), "{err}");
}

/// Where the graph ends inside the encoded model (cuts before it cannot decode).
fn graph_end(m: &ModelProto) -> usize {
    let mut head = m.clone();
    head.metadata_props.clear();
    head.opset_import.clear();
    head.encoded_len()
}

#[test]
fn malformed_and_truncated_files_are_errors() {
    let (m, bytes) = model(VIT, HeadKind::None, false);
    let load = |b: &[u8]| TractModel::load(b, "m.onnx", 1, 1).err().map(|e| e.to_string());
    assert!(load(&bytes).is_none(), "the file itself loads");
    for bad in [&b""[..], b"not an onnx file at all", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"] {
        let e = load(bad).expect("an error");
        assert!(e.contains("m.onnx") && e.contains("not a valid ONNX model"), "{e}");
    }
    // Every cut inside the graph: an error, never a panic.
    let end = graph_end(&m);
    for len in (0..end).step_by(end / 97 + 1).chain([1, 2, end - 1]) {
        let e = load(&bytes[..len]).unwrap_or_else(|| panic!("a file cut at {len} of {} loaded", bytes.len()));
        assert!(e.contains("m.onnx"), "{len}: {e}");
    }
    // Cuts in the trailing opset and metadata: errors or (at a field boundary) a model
    // without its metadata, but no panic.
    for len in end..bytes.len() {
        let _ = inspect(&bytes[..len], "m.onnx");
    }
    // A node reading a value nothing defines.
    let mut broken = m.clone();
    broken.graph.as_mut().unwrap().node[3].input[0] = "nowhere".into();
    let e = load(&broken.encode_to_vec()).unwrap();
    assert!(e.contains("\"nowhere\", which nothing defines"), "{e}");
    // An initializer whose data is cut short.
    let mut short = m.clone();
    short.graph.as_mut().unwrap().initializer[0].raw_data.truncate(5);
    let e = load(&short.encode_to_vec()).unwrap();
    assert!(e.contains("5 bytes for"), "{e}");
    // Data in an external file is refused rather than read.
    let mut ext = m.clone();
    ext.graph.as_mut().unwrap().initializer[0].data_location = Some(1);
    assert!(load(&ext.encode_to_vec()).unwrap().contains("external file"));
    // No graph, no opset.
    let mut none = m.clone();
    none.graph = None;
    assert!(load(&none.encode_to_vec()).unwrap().contains("no graph"));
    let mut no_opset = m.clone();
    no_opset.opset_import.clear();
    assert!(load(&no_opset.encode_to_vec()).unwrap().contains("operator set"));
}

#[test]
fn inputs_that_do_not_fit_are_errors() {
    let (m, bytes) = model(VIT, HeadKind::None, false);
    let t = TractModel::load(&bytes, "m.onnx", 2, 1).unwrap();
    assert_eq!(t.input_shape, [2, 3, 16, 16]);
    let x = random_input(&[2, 3, 16, 16], 1);
    assert_eq!(t.run(&x, &[2, 3, 16, 16]).unwrap().1, [2, 17, 16]);
    for shape in [[1usize, 3, 16, 16], [2, 3, 32, 32], [2, 1, 16, 16]] {
        let x = random_input(&shape, 1);
        let e = t.run(&x, &shape).unwrap_err().to_string();
        assert!(e.contains("does not fit") && e.contains("[2, 3, 16, 16]"), "{e}");
    }
    assert!(t.run(&x[..10], &[2, 3, 16, 16]).is_err(), "too few values");
    // A model with a fixed batch takes only that batch.
    let mut fixed = m.clone();
    let g = fixed.graph.as_mut().unwrap();
    let Some(type_proto::Value::TensorType(tt)) = g.input[0].r#type.as_mut().unwrap().value.as_mut() else { panic!() };
    tt.shape.as_mut().unwrap().dim[0].value = Some(Dim::DimValue(1));
    let e = TractModel::load(&fixed.encode_to_vec(), "fixed.onnx", 4, 1).err().unwrap().to_string();
    assert!(e.contains("takes a batch of 1, not 4"), "{e}");
}

#[test]
fn what_cannot_be_exported_is_an_error() {
    let b = R::new();
    let dvae = by_name("dvae_small_encoder").unwrap();
    let e = Enhancer::random(&b, &dvae, HeadKind::None, None, 0).err().unwrap().to_string();
    assert!(e.contains("ViT and ResNet"), "{e}");
    let headless = by_name(VIT).unwrap();
    let e = Enhancer::random(&b, &headless, HeadKind::Classifier, None, 0).err().unwrap().to_string();
    assert!(e.contains("no classifier"), "{e}");
    let r = by_name(RESNET).unwrap();
    let e = Enhancer::random(&b, &r, HeadKind::Revdet, None, 0).err().unwrap().to_string();
    assert!(e.contains("patch size"), "{e}");
    let e = by_name("vit_huge").unwrap_err().to_string();
    assert!(e.contains("unknown architecture") && e.contains("vit_base_patch16_224"), "{e}");
    assert_eq!("revdet".parse::<HeadKind>(), Ok(HeadKind::Revdet));
    assert!("pixels".parse::<HeadKind>().unwrap_err().contains("none, respix, revdet or classifier"));
}

#[test]
fn restore_inverts_the_respix_targets() {
    let b = R::new();
    let shape = [1, 3, 16, 16];
    let x = Tensor::from_slice(&b, &shape, &random_input(&shape, 3)).unwrap();
    for norm in [RespixNorm::SlidingWindow { k: 8 }, RespixNorm::Patch { p: 4 }, RespixNorm::None] {
        let t = target::respix_target(&b, &x, norm, 1e-6).unwrap();
        let back = restore::restore(&b, &x, &t, norm, 1e-6).unwrap().to_vec(&b).unwrap();
        let want = x.to_vec(&b).unwrap();
        let err = back.iter().zip(&want).map(|(a, w)| (a - w).abs()).fold(0f32, f32::max);
        assert!(err < 1e-4, "{norm:?}: {err}");
    }
    let px = restore::to_unit_range(&[-10.0, 0.0, 10.0], &[0.5], &[0.25]);
    assert_eq!(px, [0.0, 0.5, 1.0]);
}
