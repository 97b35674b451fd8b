//! The export issue's round trip at full size: export → tract → the CPU backend's
//! numbers, within 1e-4 relative with `f32` weights and 1e-2 with `f16`, for ViT-Ti/16
//! (224 px), ViT-Ti with patch 4 at 32 px, ResNet-18 and ResNet-50 (224 px), each with
//! every head (random weights; a classifier of 10 classes where the registry has none).

use cim_core::arch::by_name;
use cim_cpu::Cpu;
use cim_export::check::check;
use cim_export::onnx::{to_bytes, ExportOptions};
use cim_export::{Enhancer, HeadKind};

fn roundtrip(arch: &str, patch: Option<usize>, batch: usize) {
    let b = Cpu::new();
    for head in HeadKind::ALL {
        let mut spec = by_name(arch).unwrap();
        if head == HeadKind::Classifier && spec.classes().is_none() {
            spec = spec.with_classes(Some(10));
        }
        let (e, store) = Enhancer::random(&b, &spec, head, patch, 5).unwrap();
        for (half, tol) in [(false, 1e-4), (true, 1e-2)] {
            let bytes = to_bytes(&b, &e, &store, ExportOptions { half }).unwrap();
            let c = check(&b, &e, &store, &bytes, batch, 9).unwrap();
            eprintln!("{arch} {head} half={half}: {c:?}");
            assert_eq!(c.shape, e.output_shape(batch));
            assert!(c.max_rel <= tol, "{arch} {head} half={half}: {c:?}");
        }
    }
}

#[test]
fn vit_tiny_patch16_224() {
    roundtrip("vit_tiny_patch16_224", None, 2);
}

#[test]
fn vit_tiny_patch4_32() {
    roundtrip("vit_tiny_patch4_32", None, 2);
}

#[test]
fn resnet18() {
    roundtrip("resnet18", Some(16), 1);
}

#[test]
fn resnet50() {
    roundtrip("resnet50", Some(16), 1);
}
