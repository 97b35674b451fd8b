//! Element types: what a backend computes in, and the storage dtypes it can round to.

use core::fmt::{Debug, Display};
use core::iter::Sum;
use num_traits::{Float, FromPrimitive, NumAssign};

/// Storage precisions known to `cim`. Backends compute in their [`Element`] type;
/// `F16`/`BF16` are reached by rounding casts (mixed precision).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
}

impl DType {
    /// Unit roundoff (half the machine epsilon): the relative error of one rounding.
    pub fn unit_roundoff(self) -> f64 {
        match self {
            DType::F64 => f64::EPSILON / 2.0,
            DType::F32 => f32::EPSILON as f64 / 2.0,
            DType::F16 => 1.0 / 2048.0,
            DType::BF16 => 1.0 / 256.0,
        }
    }

    /// Round `v` to the nearest value representable in this dtype (ties to even).
    pub fn round(self, v: f64) -> f64 {
        match self {
            DType::F64 => v,
            DType::F32 => v as f32 as f64,
            DType::F16 => half::f16::from_f64(v).to_f64(),
            DType::BF16 => half::bf16::from_f64(v).to_f64(),
        }
    }
}

/// A floating-point element type a backend computes in (`f32`, `f64`).
pub trait Element: Float + FromPrimitive + NumAssign + Sum + Default + Debug + Display + Send + Sync + 'static {
    const DTYPE: DType;
    /// The error function, used by the exact GELU.
    fn erf(self) -> Self;
    fn of(v: f64) -> Self;
    fn f64(self) -> f64;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn erf(self) -> Self {
        libm::erff(self)
    }
    fn of(v: f64) -> Self {
        v as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
}

impl Element for f64 {
    const DTYPE: DType = DType::F64;
    fn erf(self) -> Self {
        libm::erf(self)
    }
    fn of(v: f64) -> Self {
        v
    }
    fn f64(self) -> f64 {
        self
    }
}
