//! Where the backend's work runs: a real GPU (driver, NVRTC, cuBLAS) or the host
//! emulator (the same kernel sources built by a C++ compiler, one thread at a time).
//! Both take raw 64-bit addresses: the caching allocator and the backend above are
//! shared, so the emulator exercises all of the backend's host-side logic.

use crate::blas::ColMajorGemm;
use crate::emu::Emu;
use crate::gpu::Gpu;
use crate::launch::Arg;

/// A failed allocation: out of memory (worth freeing the cache and retrying) or not.
#[derive(Debug)]
pub enum AllocError {
    OutOfMemory,
    Other(String),
}

pub enum Exec {
    Gpu(Gpu),
    Emu(Emu),
}

impl Exec {
    pub fn describe(&self) -> String {
        match self {
            Exec::Gpu(g) => g.info.to_string(),
            Exec::Emu(_) => "host emulator of the CUDA kernels".into(),
        }
    }
    pub fn malloc(&self, bytes: usize) -> Result<u64, AllocError> {
        match self {
            Exec::Gpu(g) => g.malloc(bytes),
            Exec::Emu(e) => e.malloc(bytes),
        }
    }
    /// Free blocks `(address, bytes)`, after the queued work that may use them is done.
    pub fn free(&self, blocks: &[(u64, usize)]) -> Result<(), String> {
        match self {
            Exec::Gpu(g) => g.free(blocks),
            Exec::Emu(e) => e.free(blocks),
        }
    }
    pub fn htod(&self, dst: u64, src: &[u8]) -> Result<(), String> {
        match self {
            Exec::Gpu(g) => g.htod(dst, src),
            Exec::Emu(e) => e.htod(dst, src),
        }
    }
    /// Copy to the host; waits for the queued work.
    pub fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<(), String> {
        match self {
            Exec::Gpu(g) => g.dtoh(dst, src),
            Exec::Emu(e) => e.dtoh(dst, src),
        }
    }
    pub fn dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<(), String> {
        match self {
            Exec::Gpu(g) => g.dtod(dst, src, bytes),
            Exec::Emu(e) => e.dtod(dst, src, bytes),
        }
    }
    /// Set `count` 32-bit words at `dst` to `value`.
    pub fn memset32(&self, dst: u64, value: u32, count: usize) -> Result<(), String> {
        match self {
            Exec::Gpu(g) => g.memset32(dst, value, count),
            Exec::Emu(e) => e.memset32(dst, value, count),
        }
    }
    /// Launch kernel `name` on `blocks` blocks of [`crate::launch::BLOCK`] threads.
    pub fn launch(&self, name: &str, blocks: u32, args: &mut [Arg]) -> Result<(), String> {
        match self {
            Exec::Gpu(g) => g.launch(name, blocks, args),
            Exec::Emu(e) => e.launch(name, blocks, args),
        }
    }
    /// A column-major strided batched SGEMM (`a`, `b`, `c` as cuBLAS names them).
    pub fn sgemm(&self, g: &ColMajorGemm, a: u64, b: u64, c: u64) -> Result<(), String> {
        match self {
            Exec::Gpu(gpu) => gpu.sgemm(g, a, b, c),
            Exec::Emu(_) => {
                // SAFETY: the backend passes addresses of live emulator blocks sized for the call.
                unsafe { crate::blas::host_sgemm(g, a as *const f32, b as *const f32, c as *mut f32) };
                Ok(())
            }
        }
    }
    pub fn synchronize(&self) -> Result<(), String> {
        match self {
            Exec::Gpu(g) => g.synchronize(),
            Exec::Emu(_) => Ok(()),
        }
    }
}
