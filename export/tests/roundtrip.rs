//! Export → tract → the same numbers as the reference backend, for small models of
//! both families with every head, in `f32` and `f16` weights.

use cim_core::arch::by_name;
use cim_core::Reference;
use cim_export::check::check;
use cim_export::onnx::{to_bytes, ExportOptions};
use cim_export::{Enhancer, HeadKind};

type R = Reference<f32>;

const VIT: &str = "vit(img=16,patch=4,dim=16,depth=2,heads=2,classes=5)";
const VIT_MEAN: &str = "vit(img=8,patch=4,dim=8,depth=1,heads=2,final_norm=false,qkv_bias=false,classes=3)";
const RESNET_BASIC: &str = "resnet(block=basic,layers=1-1-1-1,width=4,stem=small,classes=5,img=16)";
const RESNET_BOTTLENECK: &str = "resnet(block=bottleneck,layers=1-2-1-1,width=4,stem=imagenet,classes=4,img=64)";

fn roundtrip(arch: &str, head: HeadKind, patch: Option<usize>) {
    let b = R::new();
    let spec = by_name(arch).unwrap();
    let (e, store) = Enhancer::random(&b, &spec, head, patch, 3).unwrap();
    for (half, tol) in [(false, 1e-4), (true, 1e-2)] {
        let bytes = to_bytes(&b, &e, &store, ExportOptions { half }).unwrap();
        for batch in [1, 3] {
            let c = check(&b, &e, &store, &bytes, batch, 11).unwrap();
            assert_eq!(c.shape, e.output_shape(batch), "{arch} {head}");
            assert!(c.max_rel <= tol, "{arch} {head} half={half} batch {batch}: {c:?}");
            if !half {
                assert!(c.max_abs > 0.0 || c.max_rel == 0.0);
            }
        }
    }
}

#[test]
fn vit_every_head() {
    for head in HeadKind::ALL {
        roundtrip(VIT, head, None);
    }
}

#[test]
fn vit_without_final_norm_and_qkv_bias() {
    roundtrip(VIT_MEAN, HeadKind::None, None);
    roundtrip(VIT_MEAN, HeadKind::Classifier, None);
}

#[test]
fn resnet_basic_every_head() {
    for head in HeadKind::ALL {
        roundtrip(RESNET_BASIC, head, Some(4));
    }
}

#[test]
fn resnet_bottleneck_imagenet_stem_every_head() {
    for head in HeadKind::ALL {
        roundtrip(RESNET_BOTTLENECK, head, Some(16));
    }
}
