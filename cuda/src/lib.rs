//! `cim-cuda`: the GPU backend of `cim`, on cudarc with dynamic loading.
//!
//! Nothing of CUDA is needed to build this crate: the driver, NVRTC and cuBLAS are
//! opened at run time, so it builds and its tests run (and skip their GPU parts) on
//! machines without a GPU. [`Cuda::new`] reports a missing GPU or library as an error.
//!
//! [`Cuda::emulated`] runs the same backend — allocator, launch arguments, GEMM mapping,
//! the kernels' own CUDA C source — on the host, one emulated thread at a time, so that
//! the conformance suite checks all of it without a GPU ([`emu`]).

pub mod alloc;
mod backend;
pub mod blas;
pub mod device;
pub mod emu;
mod exec;
pub mod gpu;
pub mod kernels;
pub mod launch;

pub use backend::{Cuda, CudaBuf, MemoryStats};
pub use device::{probe, DeviceInfo};
