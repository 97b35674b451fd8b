//! Downstream evaluation (feature `std`): what a pre-trained encoder is worth on a
//! labelled data set, generic over the backend.
//!
//! - [`pretrained`]: the encoder under evaluation — a `cim pretrain` run's enhancer, a
//!   checkpoint file, or a random initialization (the baseline);
//! - [`features`]: frozen features (ViT: class token or mean of the patch tokens after
//!   the final norm; ResNet: global average pool) or raw pixels, for every image once;
//! - [`probe`]: the linear probe on cached features (standardized, a small grid over
//!   learning rate and weight decay chosen on a validation split of the training set,
//!   top-1 on the test split);
//! - [`loss`]: label-smoothed soft-target cross-entropy, mixup and CutMix;
//! - [`finetune`]: end-to-end fine-tuning with the paper's recipe scaled down (AdamW,
//!   warm-up + cosine, layer-wise learning-rate decay for a ViT, label smoothing), from
//!   pre-trained weights or from scratch, in a run directory like pre-training's.
//!
//! Labelled data comes from `data::open_labeled` (IDX, CIFAR binaries, image folders with
//! `train/` and `val/` class sub-folders).

pub mod features;
pub mod finetune;
pub mod loss;
pub mod pretrained;
pub mod probe;
#[cfg(test)]
mod tests;

pub use features::{extract, extract_pixels, ExtractOptions, Features, Pooling};
pub use finetune::{
    finetune, FinetuneConfig, FinetuneOptions, FinetuneRecord, FinetuneResult, FinetuneSummary, FtEvent,
};
pub use pretrained::{load_encoder, random_encoder, Encoder};
pub use probe::{linear_probe, GridPoint, ProbeConfig, ProbeReport, ProbeResult};

use crate::error::Error;

pub(crate) fn eval_err(detail: impl Into<String>) -> Error {
    Error::Invalid { op: "eval", detail: detail.into() }
}
