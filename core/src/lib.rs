//! `cim-core`: the backend-neutral heart of `cim`, a Rust implementation of
//! Corrupted Image Modeling (Fang et al., ICLR 2023).
//!
//! The crate is `no_std` + `alloc`; the default `std` feature adds what needs
//! an operating system. It holds:
//! - [`element`]: the numeric element types backends compute in;
//! - [`tensor`]: shapes, owned tensors and buffer views;
//! - [`backend`]: the [`Backend`] trait, the op set every backend implements;
//! - [`ops`]: the checked, tensor-level API over a backend (typed errors, no panics);
//! - [`reference`]: the plain-loop oracle backend, generic over `f32` and `f64`;
//! - [`rng`]: the counter-based random numbers every backend shares;
//! - [`params`]: flat parameter buffers with a name table;
//! - [`layers`]: layers with explicit forward and backward passes;
//! - [`arch`]: the architecture registry (timm / torchvision / DALL-E names, serialized configs);
//! - [`embedded`]: a model from safetensors bytes in memory, without `std`;
//! - `checkpoint` (feature `std`): safetensors files in both directions;
//! - `visual` (feature `std`): pictures of corruption, enhancer outputs, templates,
//!   tokenizers and training curves.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod arch;
pub mod backend;
#[cfg(feature = "std")]
pub mod checkpoint;
pub mod cim;
#[cfg(feature = "std")]
pub mod data;
pub mod element;
pub mod embedded;
pub mod error;
#[cfg(feature = "std")]
pub mod eval;
pub mod layers;
pub mod models;
pub mod ops;
pub mod params;
pub mod reference;
pub mod rng;
pub mod tensor;
#[cfg(test)]
pub(crate) mod testing;
pub mod tokenizer;
#[cfg(feature = "std")]
pub mod train;
#[cfg(feature = "std")]
pub mod visual;

pub use backend::Backend;
pub use element::{DType, Element};
pub use error::{Error, Result};
pub use reference::Reference;
pub use tensor::{IndexTensor, Tensor, View, ViewMut};
