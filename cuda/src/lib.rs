//! `cim-cuda`: the GPU backend of `cim`, on cudarc with dynamic loading.
//!
//! Nothing of CUDA is needed to build this crate: the driver and libraries are opened
//! at run time, so it builds and its tests run (and skip their GPU parts) on machines
//! without a GPU. The backend itself arrives with the CUDA issue; this crate already
//! finds the device and reports clearly when there is none.

pub mod device;

pub use device::{probe, DeviceInfo};
