//! The host emulator: the kernel sources built for the CPU by a C++ compiler (`CXX`,
//! default `c++`) with a host prelude, each launch run one thread at a time, device
//! memory as host memory, and cuBLAS as a plain column-major GEMM. It exists to test
//! everything of the backend except the GPU itself — the kernels' arithmetic and
//! indexing, the launch arguments, the allocator, the GEMM mapping — on machines
//! without one. It says nothing about races, atomics or CUDA's own math library.

use crate::exec::AllocError;
use crate::kernels::{self, Signature};
use crate::launch::{check_args, Arg, BLOCK};
use std::alloc::Layout;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

type Trampoline = unsafe extern "C" fn(u32, u32, *mut *mut std::ffi::c_void);

struct Lib {
    funcs: HashMap<String, (Trampoline, Signature)>,
    // Keeps the code of the trampolines mapped.
    _lib: libloading::Library,
}

pub struct Emu {
    lib: Arc<Lib>,
}

/// Alignment of emulated device blocks (cudaMalloc gives at least 256).
const ALIGN: usize = 256;

/// The C++ translation unit: host prelude, kernels, and one `extern "C"` trampoline
/// per kernel that runs every (block, thread) of a 1-D launch in turn.
pub fn host_program() -> Result<String, String> {
    let mut src = kernels::program(kernels::PRELUDE_HOST, kernels::SOURCES);
    src.push_str("\n// ---- launch trampolines ----\n");
    for sig in kernels::all_signatures()? {
        let args: Vec<String> =
            sig.params.iter().enumerate().map(|(i, (ty, _))| format!("*({ty}*)args[{i}]")).collect();
        src.push_str(&format!(
            "extern \"C\" void cim_emu_{name}(unsigned int grid, unsigned int block, void** args) {{\n\
             \x20   cim_grid_dim = grid; cim_block_dim = block;\n\
             \x20   for (unsigned int b = 0; b < grid; ++b) for (unsigned int t = 0; t < block; ++t) {{\n\
             \x20       cim_block = b; cim_thread = t;\n\
             \x20       {name}({args});\n\
             \x20   }}\n}}\n",
            name = sig.name,
            args = args.join(", ")
        ));
    }
    Ok(src)
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, c| (h ^ c as u64).wrapping_mul(0x100_0000_01b3))
}

/// Build (or find, by the source's hash) the emulator's shared library.
fn build() -> Result<PathBuf, String> {
    let src = host_program()?;
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let dir = std::env::temp_dir().join("cim-cuda-emu");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let lib = dir.join(format!("kernels-{:016x}.so", fnv(&(src.clone() + &cxx))));
    if lib.exists() {
        return Ok(lib);
    }
    let tag = format!("{}-{:?}", std::process::id(), std::thread::current().id())
        .replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let cpp = dir.join(format!("kernels-{tag}.cpp"));
    let tmp = dir.join(format!("kernels-{tag}.so"));
    std::fs::write(&cpp, &src).map_err(|e| format!("cannot write {}: {e}", cpp.display()))?;
    let out = std::process::Command::new(&cxx)
        .args(["-std=c++17", "-O2", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math", "-w", "-o"])
        .arg(&tmp)
        .arg(&cpp)
        .output()
        .map_err(|e| format!("no C++ compiler to build the emulator (`{cxx}`: {e})"))?;
    let _ = std::fs::remove_file(&cpp);
    if !out.status.success() {
        return Err(format!("`{cxx}` failed to build the emulated kernels:\n{}", String::from_utf8_lossy(&out.stderr)));
    }
    // Atomic publish: concurrent test processes may race to build the same library.
    std::fs::rename(&tmp, &lib).map_err(|e| format!("cannot move the emulator library into place: {e}"))?;
    Ok(lib)
}

fn open() -> Result<Arc<Lib>, String> {
    static LIB: OnceLock<Result<Arc<Lib>, String>> = OnceLock::new();
    LIB.get_or_init(|| {
        let path = build()?;
        // SAFETY: the library is our own C++ code, with no initialisers of note.
        let lib =
            unsafe { libloading::Library::new(&path) }.map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        let mut funcs = HashMap::new();
        for sig in kernels::all_signatures()? {
            let sym = format!("cim_emu_{}", sig.name);
            // SAFETY: the trampolines have exactly this signature (generated above).
            let f: Trampoline = *unsafe { lib.get::<Trampoline>(sym.as_bytes()) }.map_err(|e| format!("{sym}: {e}"))?;
            funcs.insert(sig.name.clone(), (f, sig));
        }
        Ok(Arc::new(Lib { funcs, _lib: lib }))
    })
    .clone()
}

impl Emu {
    pub fn new() -> Result<Emu, String> {
        Ok(Emu { lib: open()? })
    }

    pub fn malloc(&self, bytes: usize) -> Result<u64, AllocError> {
        let layout = Layout::from_size_align(bytes.max(1), ALIGN).map_err(|e| AllocError::Other(e.to_string()))?;
        // SAFETY: a non-zero-sized layout.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        if p.is_null() {
            Err(AllocError::OutOfMemory)
        } else {
            Ok(p as u64)
        }
    }

    pub fn free(&self, blocks: &[(u64, usize)]) -> Result<(), String> {
        for &(p, bytes) in blocks {
            let layout = Layout::from_size_align(bytes.max(1), ALIGN).map_err(|e| e.to_string())?;
            // SAFETY: allocated by malloc above with this size class, freed once.
            unsafe { std::alloc::dealloc(p as *mut u8, layout) };
        }
        Ok(())
    }

    pub fn htod(&self, dst: u64, src: &[u8]) -> Result<(), String> {
        // SAFETY: dst is a live block of at least src.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }

    pub fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<(), String> {
        // SAFETY: src is a live block of at least dst.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    pub fn dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<(), String> {
        // SAFETY: live blocks; `copy` allows overlap, as cuMemcpy does not promise it.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }

    pub fn memset32(&self, dst: u64, value: u32, count: usize) -> Result<(), String> {
        // SAFETY: dst is a live, 4-aligned block of at least 4·count bytes.
        unsafe { std::slice::from_raw_parts_mut(dst as *mut u32, count) }.fill(value);
        Ok(())
    }

    pub fn launch(&self, name: &str, blocks: u32, args: &mut [Arg]) -> Result<(), String> {
        let (f, sig) = self.lib.funcs.get(name).ok_or_else(|| format!("no kernel named {name}"))?;
        check_args(sig, args)?;
        let mut params: Vec<*mut std::ffi::c_void> = args.iter_mut().map(Arg::as_param).collect();
        // SAFETY: arguments checked against the kernel's parameters; pointers address
        // live host blocks.
        unsafe { f(blocks, BLOCK, params.as_mut_ptr()) };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emu() -> Option<Emu> {
        match Emu::new() {
            Ok(e) => Some(e),
            Err(e) => {
                println!("skipped: {e}");
                None
            }
        }
    }

    /// The kernels' port of libm's logf is bit-identical to the Rust `libm` crate.
    #[test]
    fn logf_port_matches_libm() {
        let Some(e) = emu() else { return };
        let mut xs: Vec<f32> = (1..=1u32 << 16).map(|i| ((i as f32) + 0.5) / 65536.0).collect();
        xs.extend((0..4096u32).map(|i| f32::from_bits(0x0000_1000 + i * 0x1_0000)));
        xs.extend([1.0, 2.0, 0.5, 1e-30, 3e38, 17.25, 1.0 - f32::EPSILON]);
        let n = xs.len();
        let x = e.malloc(n * 4).unwrap();
        let y = e.malloc(n * 4).unwrap();
        e.htod(x, bytemuck_f32(&xs)).unwrap();
        let mut args = [Arg::Ptr(x), Arg::Ptr(y), Arg::I64(n as i64)];
        e.launch("cim_logf_kernel", crate::launch::blocks_for(n).unwrap(), &mut args).unwrap();
        let mut out = vec![0u8; n * 4];
        e.dtoh(&mut out, y).unwrap();
        for (i, &v) in xs.iter().enumerate() {
            let got = f32::from_le_bytes(out[4 * i..4 * i + 4].try_into().unwrap());
            assert_eq!(got.to_bits(), libm::logf(v).to_bits(), "logf({v:e})");
        }
        e.free(&[(x, n * 4), (y, n * 4)]).unwrap();
    }

    /// The rounding casts agree with `DType::round` bit for bit over many bit patterns.
    #[test]
    fn casts_match_dtype_round() {
        let Some(e) = emu() else { return };
        let mut xs: Vec<f32> = (0..1u32 << 18).map(|i| f32::from_bits(i.wrapping_mul(0x9E37_79B1))).collect();
        xs.extend((0..1u32 << 12).map(|i| f32::from_bits(0x3f80_0000 + (i << 4))));
        xs.extend((0..1u32 << 12).map(|i| f32::from_bits(0x3380_0000 + (i << 8))));
        let n = xs.len();
        let x = e.malloc(n * 4).unwrap();
        let y = e.malloc(n * 4).unwrap();
        e.htod(x, bytemuck_f32(&xs)).unwrap();
        // F16: IEEE round-to-nearest-even (half's from_f32 is exact on every path);
        // BF16: `DType::round`, whose f64 path the kernel mirrors.
        let f16 = |v: f32| half::f16::from_f32(v).to_f32();
        let bf16 = |v: f32| cim_core::DType::BF16.round(v as f64) as f32;
        for (code, round) in [(2, &f16 as &dyn Fn(f32) -> f32), (3, &bf16)] {
            let mut args = [Arg::I32(code), Arg::Ptr(x), Arg::Ptr(y), Arg::I64(n as i64)];
            e.launch("cim_cast", crate::launch::blocks_for(n).unwrap(), &mut args).unwrap();
            let mut out = vec![0u8; n * 4];
            e.dtoh(&mut out, y).unwrap();
            for (i, &v) in xs.iter().enumerate() {
                let got = f32::from_le_bytes(out[4 * i..4 * i + 4].try_into().unwrap());
                let want = round(v);
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "cast {code} of {v:e} ({:#x}): got {got:e}, want {want:e}",
                    v.to_bits()
                );
            }
        }
        e.free(&[(x, n * 4), (y, n * 4)]).unwrap();
    }

    fn bytemuck_f32(v: &[f32]) -> &[u8] {
        // SAFETY: f32 has no padding; u8 has alignment 1.
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
    }

    #[test]
    fn bad_arguments_are_errors_not_crashes() {
        let Some(e) = emu() else { return };
        assert!(e.launch("cim_no_such_kernel", 1, &mut []).is_err());
        assert!(e.launch("cim_relu", 1, &mut [Arg::I64(0)]).is_err());
    }
}
