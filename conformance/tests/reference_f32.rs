//! The conformance suite on the reference backend in `f32` (the embedded inference
//! path): it must agree with itself in `f64` within the `f32` tolerances.
cim_conformance::backend_suite!(cim_core::Reference::<f32>::new());

/// The `optional` form of the macro: a backend that is not available on this machine
/// turns every test into a printed skip.
mod unavailable {
    cim_conformance::backend_suite!(optional Err::<cim_core::Reference<f32>, _>("no such device on this machine"));
}
