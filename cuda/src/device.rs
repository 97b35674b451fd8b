//! Finding the GPU: a missing driver, no device or a driver error is a clear
//! [`cim_core::Error`], never a panic.

use cim_core::Error;
use cudarc::driver::CudaContext;
use std::fmt;

/// What `cim` needs to know about a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_memory: usize,
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "GPU {}: {} (compute capability {}.{}, {:.1} GiB)",
            self.ordinal,
            self.name,
            self.compute_capability.0,
            self.compute_capability.1,
            self.total_memory as f64 / (1u64 << 30) as f64
        )
    }
}

fn backend_err(detail: impl Into<String>) -> Error {
    Error::Backend { backend: "cuda".into(), detail: detail.into() }
}

/// Whether the CUDA driver library can be loaded at all.
pub fn driver_present() -> bool {
    // SAFETY: only asks the dynamic loader whether libcuda can be opened; no CUDA call.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Open device `ordinal` and describe it.
pub fn probe(ordinal: usize) -> Result<DeviceInfo, Error> {
    if !driver_present() {
        return Err(backend_err(
            "the CUDA driver (libcuda.so) was not found: no NVIDIA GPU or driver on this machine; use the `cim` CPU binary",
        ));
    }
    let count = CudaContext::device_count().map_err(|e| backend_err(format!("cannot count devices: {e}")))?;
    if ordinal >= count.max(0) as usize {
        return Err(backend_err(format!("GPU {ordinal} requested, {count} present")));
    }
    let ctx = CudaContext::new(ordinal).map_err(|e| backend_err(format!("cannot open GPU {ordinal}: {e}")))?;
    let err = |e| backend_err(format!("GPU {ordinal}: {e}"));
    Ok(DeviceInfo {
        ordinal,
        name: ctx.name().map_err(err)?,
        compute_capability: ctx.compute_capability().map_err(err)?,
        total_memory: ctx.total_mem().map_err(err)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reports_instead_of_panicking() {
        match probe(0) {
            Ok(info) => println!("found {info}"),
            Err(e) => {
                println!("skipped GPU part: {e}");
                assert!(matches!(e, Error::Backend { .. }));
            }
        }
        // An absurd ordinal is always an error, GPU or not.
        assert!(probe(1 << 20).is_err());
    }
}
