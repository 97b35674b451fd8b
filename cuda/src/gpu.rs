//! The real device: a context and a stream on one GPU, the kernels compiled by NVRTC
//! for its architecture (once per process and device), and a cuBLAS handle.

use crate::blas::ColMajorGemm;
use crate::device::{probe, DeviceInfo};
use crate::exec::AllocError;
use crate::kernels::{self, Signature};
use crate::launch::{check_args, Arg, BLOCK};
use cudarc::cublas::{sys as cublas_sys, CudaBlas};
use cudarc::driver::{result, sys, CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The loaded kernel module of one device, shared by every backend on it.
struct Loaded {
    _module: Arc<CudaModule>,
    funcs: HashMap<String, (CudaFunction, Signature)>,
}

pub struct Gpu {
    pub info: DeviceInfo,
    // Field order is drop order: the cuBLAS handle before its stream, the stream
    // before the context.
    blas: CudaBlas,
    kernels: Arc<Loaded>,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
}

/// Whether the NVRTC library can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: only asks the dynamic loader whether the library opens.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Whether the cuBLAS library can be loaded.
pub fn cublas_present() -> bool {
    // SAFETY: as above.
    unsafe { cublas_sys::is_culib_present() }
}

/// Compile the whole kernel program to PTX for compute capability `cc`.
pub fn compile(cc: (i32, i32), sources: &[(&str, &str)]) -> Result<cudarc::nvrtc::Ptx, String> {
    let opts = CompileOptions {
        // The reference's arithmetic is never contracted into multiply-adds.
        fmad: Some(false),
        options: vec![format!("--gpu-architecture=compute_{}{}", cc.0, cc.1)],
        name: Some("cim_kernels.cu".into()),
        ..Default::default()
    };
    compile_ptx_with_opts(kernels::program(kernels::PRELUDE_GPU, sources), opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => {
            format!("NVRTC failed to compile the kernels for compute_{}{}:\n{}", cc.0, cc.1, log.to_string_lossy())
        }
        other => format!("NVRTC failed for compute_{}{}: {other}", cc.0, cc.1),
    })
}

fn load(ctx: &Arc<CudaContext>, info: &DeviceInfo) -> Result<Arc<Loaded>, String> {
    static CACHE: OnceLock<Mutex<HashMap<usize, Arc<Loaded>>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(l) = cache.get(&info.ordinal) {
        return Ok(l.clone());
    }
    let ptx = compile(info.compute_capability, kernels::SOURCES)?;
    let module = ctx.load_module(ptx).map_err(|e| format!("cannot load the kernel module: {e}"))?;
    let mut funcs = HashMap::new();
    for sig in kernels::all_signatures()? {
        let f = module.load_function(&sig.name).map_err(|e| format!("kernel {}: {e}", sig.name))?;
        funcs.insert(sig.name.clone(), (f, sig));
    }
    let loaded = Arc::new(Loaded { _module: module, funcs });
    cache.insert(info.ordinal, loaded.clone());
    Ok(loaded)
}

fn drv(e: result::DriverError) -> String {
    format!("CUDA driver: {e}")
}

impl Gpu {
    pub fn new(ordinal: usize) -> Result<Gpu, String> {
        // probe() checks for the driver first, so nothing below can hit a missing libcuda.
        let info = probe(ordinal).map_err(|e| e.to_string())?;
        if !nvrtc_present() {
            return Err("the NVRTC library (libnvrtc.so) was not found: it compiles the kernels at run time".into());
        }
        if !cublas_present() {
            return Err("the cuBLAS library (libcublas.so) was not found".into());
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| format!("cannot open GPU {ordinal}: {e}"))?;
        let stream = ctx.new_stream().map_err(drv)?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| format!("cuBLAS: {e:?}"))?;
        // Plain FP32 GEMMs (no TF32), whatever the library's default.
        // SAFETY: a live handle.
        unsafe { cublas_sys::cublasSetMathMode(*blas.handle(), cublas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH) }
            .result()
            .map_err(|e| format!("cuBLAS: {e:?}"))?;
        let kernels = load(&ctx, &info)?;
        Ok(Gpu { info, blas, kernels, stream, ctx })
    }

    fn bind(&self) -> Result<(), String> {
        self.ctx.bind_to_thread().map_err(drv)
    }

    pub fn malloc(&self, bytes: usize) -> Result<u64, AllocError> {
        self.bind().map_err(AllocError::Other)?;
        // SAFETY: a plain allocation in the bound context.
        match unsafe { result::malloc_sync(bytes) } {
            Ok(p) => Ok(p),
            Err(result::DriverError(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY)) => Err(AllocError::OutOfMemory),
            Err(e) => Err(AllocError::Other(drv(e))),
        }
    }

    pub fn free(&self, blocks: &[(u64, usize)]) -> Result<(), String> {
        self.bind()?;
        self.stream.synchronize().map_err(drv)?;
        for &(p, _) in blocks {
            // SAFETY: blocks come from malloc above and are freed once (the pool drained them).
            unsafe { result::free_sync(p) }.map_err(drv)?;
        }
        Ok(())
    }

    pub fn htod(&self, dst: u64, src: &[u8]) -> Result<(), String> {
        self.bind()?;
        // SAFETY: dst is a live block of at least src.len() bytes. From pageable memory the
        // call returns once the source has been staged, so `src` may be dropped after it.
        unsafe { result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }.map_err(drv)
    }

    pub fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<(), String> {
        self.bind()?;
        // SAFETY: src is a live block of at least dst.len() bytes; we wait before returning.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }.map_err(drv)?;
        self.stream.synchronize().map_err(drv)
    }

    pub fn dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<(), String> {
        self.bind()?;
        // SAFETY: both blocks are live and hold `bytes` bytes at these addresses.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }.map_err(drv)
    }

    pub fn memset32(&self, dst: u64, value: u32, count: usize) -> Result<(), String> {
        self.bind()?;
        // SAFETY: dst is a live block of at least 4·count bytes.
        unsafe { sys::cuMemsetD32Async(dst, value, count, self.stream.cu_stream()) }.result().map_err(drv)
    }

    pub fn launch(&self, name: &str, blocks: u32, args: &mut [Arg]) -> Result<(), String> {
        let (f, sig) = self.kernels.funcs.get(name).ok_or_else(|| format!("no kernel named {name}"))?;
        check_args(sig, args)?;
        let mut params: Vec<*mut std::ffi::c_void> = args.iter_mut().map(Arg::as_param).collect();
        self.bind()?;
        // SAFETY: the arguments match the kernel's parameters (checked above) and point
        // at values that live until the call returns (the driver copies them).
        unsafe {
            result::launch_kernel(
                f.cu_function(),
                (blocks, 1, 1),
                (BLOCK, 1, 1),
                0,
                self.stream.cu_stream(),
                &mut params,
            )
        }
        .map_err(|e| format!("launching {name}: {e}"))
    }

    pub fn sgemm(&self, g: &ColMajorGemm, a: u64, b: u64, c: u64) -> Result<(), String> {
        use cublas_sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        let op = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        self.bind()?;
        // SAFETY: the handle is bound to our stream; the pointers address live blocks
        // that hold every element of the call (spans checked by cim-core's ops).
        unsafe {
            cudarc::cublas::result::sgemm_strided_batched(
                *self.blas.handle(),
                op(g.trans_a),
                op(g.trans_b),
                g.m,
                g.n,
                g.k,
                &g.alpha,
                a as *const f32,
                g.lda,
                g.stride_a,
                b as *const f32,
                g.ldb,
                g.stride_b,
                &g.beta,
                c as *mut f32,
                g.ldc,
                g.stride_c,
                g.batch,
            )
        }
        .map_err(|e| format!("cuBLAS SGEMM: {e:?}"))
    }

    pub fn synchronize(&self) -> Result<(), String> {
        self.bind()?;
        self.stream.synchronize().map_err(drv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each source compiles through NVRTC on its own (for compute capability 7.0 under
    /// CUDA 12, 7.5 under CUDA 13, and 9.0), where the library is present.
    #[test]
    fn kernel_sources_compile_with_nvrtc() {
        if !nvrtc_present() {
            println!("skipped: the NVRTC library is not on this machine");
            return;
        }
        let oldest = if cfg!(feature = "cuda-12") { (7, 0) } else { (7, 5) };
        for cc in [oldest, (9, 0)] {
            for src in kernels::SOURCES {
                if let Err(e) = compile(cc, std::slice::from_ref(src)) {
                    panic!("{}: {e}", src.0);
                }
            }
        }
    }

    #[test]
    fn missing_gpu_is_an_error() {
        match Gpu::new(0) {
            Ok(g) => println!("found {}", g.info),
            Err(e) => println!("skipped GPU part: {e}"),
        }
    }
}
