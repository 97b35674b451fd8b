//! `cim-conformance`: property-based conformance suites that hold every backend of
//! `cim` to the reference.
//!
//! - [`tolerance`]: how close is close enough, derived from the unit roundoff;
//! - [`gen`]: random shapes and geometry (proptest strategies) and seeded values;
//! - [`harness`]: the one generic runner — a [`harness::Problem`] builds its inputs on
//!   any backend, runs the op and records its outputs; [`harness::compare`] runs it on
//!   the backend under test and on the reference and checks every output;
//! - [`problems`]: the problems, one strategy per op of [`cim_core::Backend`];
//! - [`fd`]: finite-difference checks of gradients;
//! - [`backend_suite!`]: the whole suite for one backend, one `#[test]` per op.
//!
//! Environment: `CIM_PROPTEST_CASES` sets the number of random problems per op
//! (default 48; the finite-difference tests run a third as many), `CIM_PROPTEST_SEED`
//! the base seed (default fixed, so CI is reproducible; a failure report names it).

pub mod fd;
pub mod gen;
pub mod harness;
pub mod problems;
pub mod tolerance;

pub use harness::{check_op, compare, Availability, Check, Cx, Problem};
pub use tolerance::Tolerance;

/// The conformance suite of one backend: expands to one `#[test]` per op of the
/// [`cim_core::Backend`] trait (forward and backward entry points, memory ops
/// included), each checking [`harness::suite_cases`] random problems against
/// `Reference<f64>` (and, for exact outputs, `Reference<E>`).
///
/// Two forms:
///
/// ```ignore
/// // A backend that is always available (the constructor returns the backend):
/// cim_conformance::backend_suite!(cim_cpu::Cpu::new());
///
/// // A backend that may be missing on this machine: the constructor returns
/// // `Option<B>` or `Result<B, E: Display>` (see `harness::Availability`). When it is
/// // `None`/`Err`, every test prints "skipped: <reason>" (shown with
/// // `cargo test -- --nocapture`) and passes, so the suite runs on machines without
/// // the device.
/// cim_conformance::backend_suite!(optional cim_cuda::Cuda::new());
/// ```
///
/// The constructor expression is evaluated once per test. The backend's element type
/// must be `f32` (the tolerances are derived for it).
#[macro_export]
macro_rules! backend_suite {
    (optional $make:expr) => {
        $crate::__backend_suite_tests!({ $crate::harness::Availability::available($make) });
    };
    ($make:expr) => {
        $crate::__backend_suite_tests!({ ::core::result::Result::<_, ::std::string::String>::Ok($make) });
    };
}

/// The list of tests of [`backend_suite!`]: test name => problem strategy.
#[doc(hidden)]
#[macro_export]
macro_rules! __backend_suite_tests {
    ($make:block) => {
        $crate::__backend_suite_tests!(@each $make;
            memory => $crate::problems::memory::memory(),
            gemm => $crate::problems::linalg::gemm(),
            matmul => $crate::problems::linalg::matmul(),
            conv2d => $crate::problems::conv::conv2d(),
            conv2d_backward => $crate::problems::conv::conv2d_backward(),
            batch_norm_train => $crate::problems::norm::batch_norm_train(),
            batch_norm_eval => $crate::problems::norm::batch_norm_eval(),
            batch_norm_backward => $crate::problems::norm::batch_norm_backward(),
            layer_norm => $crate::problems::norm::layer_norm(),
            layer_norm_backward => $crate::problems::norm::layer_norm_backward(),
            softmax => $crate::problems::rows::softmax(),
            softmax_backward => $crate::problems::rows::softmax_backward(),
            log_softmax => $crate::problems::rows::log_softmax(),
            log_softmax_backward => $crate::problems::rows::log_softmax_backward(),
            gelu => $crate::problems::elementwise::gelu(),
            gelu_backward => $crate::problems::elementwise::gelu_backward(),
            relu => $crate::problems::elementwise::relu(),
            relu_backward => $crate::problems::elementwise::relu_backward(),
            max_pool2d => $crate::problems::pool::max_pool2d(),
            max_pool2d_backward => $crate::problems::pool::max_pool2d_backward(),
            avg_pool2d => $crate::problems::pool::avg_pool2d(),
            avg_pool2d_backward => $crate::problems::pool::avg_pool2d_backward(),
            global_avg_pool => $crate::problems::pool::global_avg_pool(),
            global_avg_pool_backward => $crate::problems::pool::global_avg_pool_backward(),
            upsample_nearest => $crate::problems::pool::upsample_nearest(),
            upsample_nearest_backward => $crate::problems::pool::upsample_nearest_backward(),
            gather_rows => $crate::problems::embedding::gather_rows(),
            scatter_add_rows => $crate::problems::embedding::scatter_add_rows(),
            binary => $crate::problems::elementwise::binary(),
            unary => $crate::problems::elementwise::unary(),
            affine => $crate::problems::elementwise::affine(),
            axpy => $crate::problems::elementwise::axpy(),
            reduce => $crate::problems::elementwise::reduce(),
            window_stats => $crate::problems::window::window_stats(),
            window_stats_backward => $crate::problems::window::window_stats_backward(),
            cross_entropy => $crate::problems::rows::cross_entropy(),
            cross_entropy_backward => $crate::problems::rows::cross_entropy_backward(),
            bce_with_logits => $crate::problems::elementwise::bce_with_logits(),
            bce_with_logits_backward => $crate::problems::elementwise::bce_with_logits_backward(),
            l1_loss => $crate::problems::elementwise::l1_loss(),
            l1_loss_backward => $crate::problems::elementwise::l1_loss_backward(),
            l2_loss => $crate::problems::elementwise::l2_loss(),
            l2_loss_backward => $crate::problems::elementwise::l2_loss_backward(),
            sample_categorical => $crate::problems::rows::sample_categorical(),
            rand_uniform => $crate::problems::rows::rand_uniform(),
            argmax => $crate::problems::rows::argmax(),
            cast => $crate::problems::elementwise::cast(),
            sum_squares => $crate::problems::elementwise::sum_squares(),
            adamw => $crate::problems::optim::adamw(),
        );
    };
    (@each $make:block; $($name:ident => $strategy:expr,)*) => {
        $(
            #[test]
            fn $name() {
                match $make {
                    ::core::result::Result::Ok(backend) => {
                        $crate::harness::check_op::<_, _>(::core::stringify!($name), &backend, $strategy)
                    }
                    ::core::result::Result::Err(reason) => {
                        ::std::println!("skipped: {}", reason);
                    }
                }
            }
        )*
    };
}
