//! Bad input through `cim_core::ops` is a typed `cim_core::Error`, never a panic and
//! never a silent success — on every backend.

use cim_core::backend::{AdamW, Gemm, ParamGroup};
use cim_core::ops::{self, Loss};
use cim_core::{Backend, Error, IndexTensor, Reference, Result, Tensor};
use cim_cpu::Cpu;
use std::panic::{catch_unwind, AssertUnwindSafe};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Shape,
    Invalid,
}

/// One bad call and the error kind it must give.
type Case<'a> = (&'static str, Kind, Box<dyn Fn() -> Result<()> + 'a>);

fn t<B: Backend>(b: &B, shape: &[usize]) -> Tensor<B> {
    let n: usize = shape.iter().product();
    Tensor::from_f64(b, shape, &(0..n).map(|i| i as f64 * 0.25 - 1.0).collect::<Vec<_>>()).unwrap()
}

fn ids<B: Backend>(b: &B, shape: &[usize], v: &[u32]) -> IndexTensor<B> {
    IndexTensor::from_slice(b, shape, v).unwrap()
}

fn cases<B: Backend>(b: &B) -> Vec<Case<'_>> {
    use Kind::*;
    let x = move || t(b, &[2, 3, 5, 5]);
    let w = move || t(b, &[4, 3, 3, 3]);
    let hp = AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, step: 1 };
    let group = |offset, len| ParamGroup { offset, len, lr: 1e-3, weight_decay: 0.0 };
    let adamw = move |groups: Vec<ParamGroup>, hp: AdamW| -> Result<()> {
        let (mut p, g, mut m, mut v) = (t(b, &[10]), t(b, &[10]), t(b, &[10]), t(b, &[10]));
        ops::adamw(b, &hp, &groups, &mut p, &g, &mut m, &mut v, None)
    };
    let unit = |r: Result<Tensor<B>>| r.map(drop);
    vec![
        // Linear algebra.
        (
            "matmul: inner dimensions differ",
            Shape,
            Box::new(move || unit(ops::matmul(b, &t(b, &[2, 3]), &t(b, &[4, 5]), false, false))),
        ),
        (
            "matmul: batch sizes differ",
            Shape,
            Box::new(move || unit(ops::matmul(b, &t(b, &[2, 3, 4]), &t(b, &[3, 4, 5]), false, false))),
        ),
        (
            "matmul: rank 1 operand",
            Shape,
            Box::new(move || unit(ops::matmul(b, &t(b, &[3]), &t(b, &[3, 2]), false, false))),
        ),
        (
            "gemm: operand shorter than its span",
            Shape,
            Box::new(move || ops::gemm(b, &Gemm::new(3, 3, 3), &t(b, &[8]), &t(b, &[9]), &mut t(b, &[9]))),
        ),
        (
            "gemm: overlapping output matrices",
            Invalid,
            Box::new(move || {
                let p = Gemm { batch: 2, stride_c: 1, stride_a: 0, stride_b: 0, ..Gemm::new(2, 2, 2) };
                ops::gemm(b, &p, &t(b, &[4]), &t(b, &[4]), &mut t(b, &[8]))
            }),
        ),
        // Convolution.
        (
            "conv2d: channels differ",
            Shape,
            Box::new(move || unit(ops::conv2d(b, &x(), &t(b, &[4, 2, 3, 3]), None, (1, 1), (0, 0)))),
        ),
        (
            "conv2d: zero-sized kernel",
            Invalid,
            Box::new(move || unit(ops::conv2d(b, &x(), &t(b, &[4, 3, 0, 3]), None, (1, 1), (0, 0)))),
        ),
        ("conv2d: stride 0", Invalid, Box::new(move || unit(ops::conv2d(b, &x(), &w(), None, (0, 1), (0, 0))))),
        (
            "conv2d: kernel larger than the padded input",
            Shape,
            Box::new(move || unit(ops::conv2d(b, &x(), &t(b, &[4, 3, 7, 3]), None, (1, 1), (0, 0)))),
        ),
        (
            "conv2d: bias of the wrong length",
            Shape,
            Box::new(move || unit(ops::conv2d(b, &x(), &w(), Some(&t(b, &[3])), (1, 1), (0, 0)))),
        ),
        (
            "conv2d: rank-3 input",
            Shape,
            Box::new(move || unit(ops::conv2d(b, &t(b, &[3, 5, 5]), &w(), None, (1, 1), (0, 0)))),
        ),
        (
            "conv2d_backward: dy of the wrong shape",
            Shape,
            Box::new(move || ops::conv2d_backward(b, &x(), &w(), &t(b, &[2, 4, 5, 5]), (1, 1), (0, 0)).map(drop)),
        ),
        // Broadcasting and elementwise.
        ("binary: shapes do not broadcast", Shape, Box::new(move || unit(ops::add(b, &t(b, &[2, 3]), &t(b, &[4, 3]))))),
        ("axpy: shapes differ", Shape, Box::new(move || ops::axpy(b, 1.0, &t(b, &[3]), &mut t(b, &[4])))),
        ("loss: shapes differ", Shape, Box::new(move || unit(ops::loss(b, Loss::L2, &t(b, &[3]), &t(b, &[4]))))),
        (
            "reduce: axis out of range",
            Shape,
            Box::new(move || unit(ops::reduce(b, cim_core::backend::ReduceOp::Sum, &t(b, &[2, 3]), 2, false))),
        ),
        (
            "reduce: max over an empty axis",
            Invalid,
            Box::new(move || unit(ops::reduce(b, cim_core::backend::ReduceOp::Max, &t(b, &[2, 0]), 1, false))),
        ),
        (
            "from_slice: data of the wrong length",
            Shape,
            Box::new(move || Tensor::<B>::from_f64(b, &[2, 3], &[1.0; 5]).map(drop)),
        ),
        // Pooling and resampling.
        (
            "max_pool2d: zero-sized kernel",
            Invalid,
            Box::new(move || ops::max_pool2d(b, &x(), (0, 2), (1, 1), (0, 0)).map(drop)),
        ),
        ("max_pool2d: stride 0", Invalid, Box::new(move || ops::max_pool2d(b, &x(), (2, 2), (1, 0), (0, 0)).map(drop))),
        (
            "max_pool2d: window larger than the padded input",
            Shape,
            Box::new(move || ops::max_pool2d(b, &x(), (7, 7), (1, 1), (0, 0)).map(drop)),
        ),
        (
            "avg_pool2d: padding over half the kernel",
            Invalid,
            Box::new(move || unit(ops::avg_pool2d(b, &x(), (3, 3), (1, 1), (2, 0), true))),
        ),
        (
            "avg_pool2d_backward: dy of the wrong shape",
            Shape,
            Box::new(move || {
                unit(ops::avg_pool2d_backward(b, &[2, 3, 5, 5], &t(b, &[2, 3, 4, 4]), (3, 3), (1, 1), (0, 0), true))
            }),
        ),
        (
            "max_pool2d_backward: index outside the plane",
            Invalid,
            Box::new(move || {
                let dy = t(b, &[1, 1, 1, 1]);
                unit(ops::max_pool2d_backward(
                    b,
                    &[1, 1, 2, 2],
                    &dy,
                    &ids(b, &[1, 1, 1, 1], &[4]),
                    (2, 2),
                    (1, 1),
                    (0, 0),
                ))
            }),
        ),
        (
            "global_avg_pool: empty planes",
            Invalid,
            Box::new(move || unit(ops::global_avg_pool(b, &t(b, &[2, 3, 0, 4])))),
        ),
        ("upsample_nearest: scale 0", Invalid, Box::new(move || unit(ops::upsample_nearest(b, &x(), 0)))),
        ("window_stats: window 0", Invalid, Box::new(move || ops::window_stats(b, &x(), 0).map(drop))),
        // Normalization.
        (
            "layer_norm: gamma of the wrong length",
            Shape,
            Box::new(move || ops::layer_norm(b, &t(b, &[2, 4]), &t(b, &[3]), &t(b, &[4]), 1e-5).map(drop)),
        ),
        (
            "batch_norm_train: eps 0",
            Invalid,
            Box::new(move || {
                let (g, bt, mut rm, mut rv) = (t(b, &[3]), t(b, &[3]), t(b, &[3]), t(b, &[3]));
                ops::batch_norm_train(b, &x(), &g, &bt, &mut rm, &mut rv, 0.0, 0.1).map(drop)
            }),
        ),
        (
            "batch_norm_eval: running stats of the wrong length",
            Shape,
            Box::new(move || {
                unit(ops::batch_norm_eval(b, &x(), &t(b, &[3]), &t(b, &[3]), &t(b, &[2]), &t(b, &[3]), 1e-5))
            }),
        ),
        // Softmax, embedding, losses, sampling.
        ("softmax: empty axis", Invalid, Box::new(move || unit(ops::softmax(b, &t(b, &[3, 0]))))),
        ("log_softmax: empty axis", Invalid, Box::new(move || unit(ops::log_softmax(b, &t(b, &[3, 0]))))),
        ("softmax: rank 0", Shape, Box::new(move || unit(ops::softmax(b, &t(b, &[]))))),
        (
            "gather_rows: id out of range",
            Invalid,
            Box::new(move || unit(ops::gather_rows(b, &t(b, &[4, 3]), &ids(b, &[3], &[0, 4, 1])))),
        ),
        (
            "scatter_add_rows: id out of range",
            Invalid,
            Box::new(move || unit(ops::scatter_add_rows(b, &ids(b, &[2], &[0, 9]), &t(b, &[2, 3]), 4))),
        ),
        (
            "cross_entropy: target out of range",
            Invalid,
            Box::new(move || unit(ops::cross_entropy(b, &t(b, &[2, 5]), &ids(b, &[2], &[1, 5])))),
        ),
        (
            "cross_entropy_backward: target out of range",
            Invalid,
            Box::new(move || unit(ops::cross_entropy_backward(b, &t(b, &[2, 5]), &ids(b, &[2], &[7, 0]), &t(b, &[2])))),
        ),
        (
            "cross_entropy: targets of the wrong shape",
            Shape,
            Box::new(move || unit(ops::cross_entropy(b, &t(b, &[2, 5]), &ids(b, &[3], &[0, 1, 2])))),
        ),
        (
            "sample_categorical: temperature 0",
            Invalid,
            Box::new(move || ops::sample_categorical(b, &t(b, &[2, 5]), 0.0, 1, 0).map(drop)),
        ),
        // Optimizer.
        ("adamw: overlapping groups", Invalid, Box::new(move || adamw(vec![group(0, 6), group(4, 3)], hp))),
        ("adamw: group beyond the buffer", Invalid, Box::new(move || adamw(vec![group(8, 3)], hp))),
        ("adamw: step 0", Invalid, Box::new(move || adamw(vec![group(0, 10)], AdamW { step: 0, ..hp }))),
    ]
}

/// Run every case on `b`; collect the ones that panic, succeed, or give the wrong kind.
fn check_backend<B: Backend>(b: &B) {
    let mut failures = Vec::new();
    for (name, kind, f) in cases(b) {
        match catch_unwind(AssertUnwindSafe(&*f)) {
            Err(_) => failures.push(format!("{name}: panicked")),
            Ok(Ok(())) => failures.push(format!("{name}: accepted")),
            Ok(Err(e)) => {
                let got = match e {
                    Error::Shape { .. } => Some(Kind::Shape),
                    Error::Invalid { .. } => Some(Kind::Invalid),
                    _ => None,
                };
                if got != Some(kind) {
                    failures.push(format!("{name}: expected a {kind:?} error, got {e:?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "on the {} backend:\n{}", b.name(), failures.join("\n"));
}

#[test]
fn bad_input_is_a_typed_error_on_the_reference() {
    check_backend(&Reference::<f32>::new());
    check_backend(&Reference::<f64>::new());
}

#[test]
fn bad_input_is_a_typed_error_on_cpu() {
    check_backend(&Cpu::new());
}
