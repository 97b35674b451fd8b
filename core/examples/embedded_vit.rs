//! The ViT enhancer on a device without an operating system: weights compiled into the
//! program as bytes, the model built and run on the plain-loop reference backend.
//!
//! `enhance` uses only `core`, `alloc` and what `cim-core` offers without its `std`
//! feature; firmware calls it from its own entry point with a global allocator. `main`
//! (std, for printing) only drives it here. Build and run it against the `no_std` core:
//! ```text
//! cargo run -p cim-core --no-default-features --example embedded_vit
//! ```
//! The weights (`data/vit_embedded.safetensors`, 58 KB of F16 values) are a small ViT,
//! `vit(img=16,patch=4,dim=32,depth=2,heads=2)`, with random weights; any safetensors
//! file that `cim` writes (`cim.arch` metadata) or a timm file with its name works.

extern crate alloc;

use alloc::vec::Vec;
use cim_core::{embedded, Reference, Result, Tensor};

/// The weights, in flash on a device.
static WEIGHTS: &[u8] = include_bytes!("data/vit_embedded.safetensors");

/// Features `[1, 1 + N, D]` of one normalized image `[1, C, H, W]` (row-major), and
/// their shape.
fn enhance(image: &[f32]) -> Result<(Vec<f32>, Vec<usize>)> {
    let b = Reference::<f32>::new();
    let (spec, model, store) = embedded::load_model(&b, WEIGHTS, None)?;
    let input = spec.input();
    let x = Tensor::from_slice(&b, &[1, input.channels, input.image_size, input.image_size], image)?;
    let y = model.infer(&b, &store, &x)?;
    let shape = y.shape().to_vec();
    Ok((y.to_vec(&b)?, shape))
}

fn main() {
    // A synthetic 16×16 RGB image: a diagonal gradient, ImageNet-normalized.
    let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
    let mut image = Vec::with_capacity(3 * 16 * 16);
    for c in 0..3 {
        for i in 0..16 {
            for j in 0..16 {
                let v = (i + j) as f32 / 30.0;
                image.push((v - mean[c]) / std[c]);
            }
        }
    }
    match enhance(&image) {
        Ok((y, shape)) => {
            let norm = y.iter().map(|v| v * v).sum::<f32>().sqrt();
            println!("features {shape:?}, L2 norm {norm:.4}, first values {:?}", &y[..4]);
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
