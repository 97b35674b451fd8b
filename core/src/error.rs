//! Typed errors of the public API. Bad input is an [`Error`], never a panic.

use alloc::string::String;

/// Everything that can go wrong in `cim-core` and its backends.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// Operand shapes do not fit together.
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },
    /// An argument is out of its domain (zero-sized dimension, bad stride, index out of range...).
    #[error("{op}: invalid argument: {detail}")]
    Invalid { op: &'static str, detail: String },
    /// A device allocation failed.
    #[error("out of memory: {bytes} bytes requested on {backend}")]
    OutOfMemory { backend: String, bytes: usize },
    /// The backend failed (driver error, missing library, no device...).
    #[error("{backend} backend: {detail}")]
    Backend { backend: String, detail: String },
    /// A loss or gradient is NaN or infinite.
    #[error("non-finite value in {what}")]
    NonFinite { what: String },
    /// A named parameter is missing or has the wrong shape.
    #[error("parameter {name}: {detail}")]
    Param { name: String, detail: String },
    /// A checkpoint file cannot be read or written, is corrupt, or does not fit the model.
    #[error("checkpoint {path}: {detail}")]
    Checkpoint { path: String, detail: String },
    /// A data set cannot be found, read or decoded (feature `std`, module `data`).
    #[error("data: {detail}")]
    Data { detail: String },
}

pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Shorthand for a shape error.
pub fn shape_err<T>(op: &'static str, detail: impl Into<String>) -> Result<T> {
    Err(Error::Shape { op, detail: detail.into() })
}

/// Shorthand for an invalid-argument error.
pub fn invalid<T>(op: &'static str, detail: impl Into<String>) -> Result<T> {
    Err(Error::Invalid { op, detail: detail.into() })
}
