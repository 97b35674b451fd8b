//! `cim-cuda`: the GPU backend of `cim`.
