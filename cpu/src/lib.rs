//! `cim-cpu`: the fast CPU backend of `cim`.
//!
//! [`Cpu`] implements [`cim_core::Backend`] over host memory in `f32`: GEMM on
//! `matrixmultiply`'s micro-kernels, convolutions by blocked im2col + GEMM, and the
//! heavy row and elementwise kernels by hand-written loops, all parallelized with
//! rayon. Ops that are cheap or rare reuse the reference kernels of
//! [`cim_core::reference::kernels`], chunked over rayon where their contract allows.
//! [`bench`] times the hot ops at model shapes; [`commands`] holds the `cim`
//! subcommands that run models (`cim infer`).

mod backend;
pub mod bench;
pub mod commands;

pub use backend::Cpu;
