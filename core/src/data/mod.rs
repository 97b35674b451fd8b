//! Data (feature `std`): the sources CIM trains on, its augmentation and the loader.
//!
//! - [`source`]: [`Dataset::open`] recognizes an IDX folder (MNIST, Fashion-MNIST, gzipped
//!   or not), CIFAR-10 / CIFAR-100 binaries, or an image folder (JPEG / PNG, class =
//!   first-level sub-folder); every source is a [`Source`] of [`Sample`]s.
//! - [`augment`]: the paper's random resized crop and flip, one crop giving the enhancer
//!   and the tokenizer views; an evaluation center crop; a plain resize.
//! - [`labeled`]: both splits of a labelled data set, checked for evaluation
//!   ([`open_labeled`]), and a seeded [`Subset`] of a source.
//! - [`loader`]: batches assembled on worker threads with prefetch, deterministic under a
//!   seed whatever the thread count, resumable at any step, skipping (and reporting)
//!   unreadable images.
//!
//! ```no_run
//! use cim_core::data::{Augment, Dataset, Loader, LoaderConfig, Split};
//! let ds = Dataset::open("/usr/share/datasets/fashion-mnist", Split::Train)?;
//! let aug = Augment::pretrain(32, 16);
//! let mut loader = Loader::new(ds, LoaderConfig::train(64, 0, aug))?;
//! let batch = loader.next_batch()?; // batch.enhancer: [64, 3, 32, 32], batch.tokenizer: [64, 3, 16, 16]
//! # Ok::<(), cim_core::Error>(())
//! ```

pub mod augment;
pub mod labeled;
pub mod loader;
pub mod source;

#[cfg(test)]
mod tests;

pub use augment::{Augment, CropBox, Filter, Geometry, RandomResizedCrop, ViewSpec, Views};
pub use labeled::{open_labeled, Labeled, Subset};
pub use loader::{epoch_permutation, sample_stream, Batch, Loader, LoaderConfig, LoaderReport};
pub use source::{
    decode_file, open_cifar, open_idx, ArraySource, Dataset, Format, ImageFolder, Sample, Source, Split,
    EXPECTED_FORMATS, FASHION_MNIST_DIR,
};
