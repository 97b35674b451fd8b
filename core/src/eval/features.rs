//! Frozen features of a data set, computed once for the linear probe.
//!
//! - ViT: the final normalized hidden states `[B, 1 + N, D]` (timm's `forward_features`),
//!   pooled to the class token ([`Pooling::Cls`]) or the mean of the patch tokens
//!   ([`Pooling::Mean`], the default: CIM's enhancer has no objective on its class token);
//! - ResNet: the global average pool of the last feature map (batch norms in evaluation
//!   mode), `[B, C]`;
//! - raw pixels ([`extract_pixels`]): the image at the model's size, one channel for a
//!   grayscale data set — the classic baseline a linear probe must beat.
//!
//! Images are resized whole to the model's side (bicubic), without a crop: the small data
//! sets evaluated here are already centered.

use super::eval_err;
use super::pretrained::Encoder;
use crate::arch::Model;
use crate::backend::Backend;
use crate::data::{Augment, Batch, Loader, LoaderConfig, Source};
use crate::element::Element;
use crate::error::Result;
use crate::tensor::Tensor;
use std::sync::Arc;

/// How a ViT's tokens become one feature vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// The mean of the patch tokens after the final norm.
    Mean,
    /// The class token after the final norm.
    Cls,
}

impl Pooling {
    pub fn parse(s: &str) -> Result<Pooling> {
        match s {
            "mean" | "avg" => Ok(Pooling::Mean),
            "cls" | "token" => Ok(Pooling::Cls),
            _ => Err(eval_err(format!("unknown pooling {s:?} (mean, cls)"))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
        }
    }
}

/// One feature vector and label per image, row-major `[len, dim]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Features {
    pub data: Vec<f32>,
    pub labels: Vec<u32>,
    pub dim: usize,
}

impl Features {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// How images are batched for feature extraction and evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtractOptions {
    pub batch: usize,
    /// Loader threads (0: one per core).
    pub workers: usize,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions { batch: 128, workers: 0 }
    }
}

/// A loader that visits every image of `source` once, in order, resized to `size`.
pub fn eval_loader(source: Arc<dyn Source>, size: usize, opts: &ExtractOptions) -> Result<Loader> {
    let mut lc = LoaderConfig::eval(opts.batch.max(1), Augment::resize(size as u32));
    if opts.workers > 0 {
        lc.workers = opts.workers;
    }
    Loader::from_shared(source, lc)
}

/// The labels of a batch, or an error naming the first unlabelled image.
pub fn batch_labels(batch: &Batch, source: &dyn Source) -> Result<Vec<u32>> {
    batch.labels.clone().ok_or_else(|| {
        let first = batch.indices.first().map(|&i| source.item_path(i).display().to_string()).unwrap_or_default();
        eval_err(format!("a batch has images without a class (near {first}); evaluation needs labelled data"))
    })
}

/// `[n, 3, size, size]` pixels in `[0, 1]` as the model's input `(x − mean) / std`.
pub fn normalized_input<B: Backend>(
    b: &B,
    pixels: &[f32],
    n: usize,
    size: usize,
    mean: &[f64; 3],
    std: &[f64; 3],
) -> Result<Tensor<B>> {
    let plane = size * size;
    if pixels.len() != n * 3 * plane {
        return Err(eval_err(format!("{} pixels for {n} images of 3x{size}x{size}", pixels.len())));
    }
    let v: Vec<B::E> = pixels
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let c = (i / plane) % 3;
            B::E::of((x as f64 - mean[c]) / std[c])
        })
        .collect();
    Tensor::from_slice(b, &[n, 3, size, size], &v)
}

/// The width of the features [`encode`] returns.
pub fn feature_dim(model: &Model) -> Result<usize> {
    match model {
        Model::Vit { vit, .. } => Ok(vit.cfg.embed_dim),
        Model::ResNet(r) => Ok(r.out_channels()),
        _ => Err(eval_err("only a ViT or a ResNet has features to probe")),
    }
}

/// Pooled features `[n, dim]` of a normalized batch `x`.
pub fn encode<B: Backend>(b: &B, enc: &Encoder<B>, x: &Tensor<B>, pooling: Pooling) -> Result<Vec<f32>> {
    let y = enc.model.infer(b, &enc.store, x)?;
    let s = y.shape().to_vec();
    let v: Vec<f32> = y.to_vec(b)?.iter().map(|e| e.f64() as f32).collect();
    match &enc.model {
        Model::Vit { .. } => {
            let (n, t, d) = (s[0], s[1], s[2]);
            let mut out = vec![0f32; n * d];
            for (i, o) in out.chunks_exact_mut(d).enumerate() {
                let img = &v[i * t * d..(i + 1) * t * d];
                match pooling {
                    Pooling::Cls => o.copy_from_slice(&img[..d]),
                    Pooling::Mean => {
                        let mut acc = vec![0f64; d];
                        for tok in img[d..].chunks_exact(d) {
                            for (a, &x) in acc.iter_mut().zip(tok) {
                                *a += x as f64;
                            }
                        }
                        for (o, a) in o.iter_mut().zip(acc) {
                            *o = (a / (t - 1) as f64) as f32;
                        }
                    }
                }
            }
            Ok(out)
        }
        Model::ResNet(_) => {
            let (n, c) = (s[0], s[1]);
            let hw = s[2] * s[3];
            Ok((0..n * c)
                .map(|r| (v[r * hw..(r + 1) * hw].iter().map(|&x| x as f64).sum::<f64>() / hw as f64) as f32)
                .collect())
        }
        _ => Err(eval_err("only a ViT or a ResNet has features to probe")),
    }
}

/// The features of every image of `source`, in order; `progress(done, total)` after each
/// batch.
pub fn extract<B: Backend>(
    b: &B,
    enc: &Encoder<B>,
    source: Arc<dyn Source>,
    pooling: Pooling,
    opts: &ExtractOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Features> {
    let size = super::pretrained::image_size(&enc.spec);
    let dim = feature_dim(&enc.model)?;
    let total = source.len();
    let mut loader = eval_loader(source.clone(), size, opts)?;
    let mut out = Features { data: Vec::with_capacity(total * dim), labels: Vec::with_capacity(total), dim };
    for _ in 0..loader.steps_per_epoch() {
        let batch = loader.next_batch()?;
        let labels = batch_labels(&batch, source.as_ref())?;
        let x = normalized_input(b, &batch.enhancer, batch.len(), size, &enc.mean, &enc.std)?;
        out.data.extend(encode(b, enc, &x, pooling)?);
        out.labels.extend(labels);
        progress(out.len(), total);
    }
    Ok(out)
}

/// Raw pixels as features: every image of `source` resized to `size`, all three channels,
/// or the first only when `grayscale`.
pub fn extract_pixels(
    source: Arc<dyn Source>,
    size: usize,
    grayscale: bool,
    opts: &ExtractOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Features> {
    let plane = size * size;
    let dim = if grayscale { plane } else { 3 * plane };
    let total = source.len();
    let mut loader = eval_loader(source.clone(), size, opts)?;
    let mut out = Features { data: Vec::with_capacity(total * dim), labels: Vec::with_capacity(total), dim };
    for _ in 0..loader.steps_per_epoch() {
        let batch = loader.next_batch()?;
        let labels = batch_labels(&batch, source.as_ref())?;
        for img in batch.enhancer.chunks_exact(3 * plane) {
            out.data.extend_from_slice(&img[..dim]);
        }
        out.labels.extend(labels);
        progress(out.len(), total);
    }
    Ok(out)
}
