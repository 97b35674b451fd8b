//! Gradient checks of every layer against central finite differences in `f64` on the
//! reference backend, plus layout, weight-sharing, accumulation and shape-error tests.
//!
//! Tolerance. For a smooth `f`, the central difference `(f(x+ε) − f(x−ε)) / 2ε` has a
//! truncation error of `ε² |f'''| / 6 ≈ 1e-12` at `ε = 1e-6`, and a rounding error of
//! about `u · |f| / ε ≈ 1.1e-16 · |f| / 1e-6 ≈ 1e-10 · |f|`, where `f = ⟨dy, y⟩` sums a
//! few dozen terms of order one here: about 1e-9 in all. The check allows
//! `1e-6 · (1 + |value|)`, three orders of margin, while a wrong gradient term is off
//! by order 1e-1 or more. Inputs are kept away from kinks (ReLU at 0, max-pool ties).

use super::*;
use crate::error::Error;
use crate::params::{ParamStore, ParamTable};
use crate::rng::Stream;
use crate::tensor::Tensor;
use alloc::vec;
use alloc::vec::Vec;

use crate::testing::{fd_check as fd_check_only, host, tensor, uniform, Fwd, R};

/// Values in `±[0.1, 1.1)`: no ReLU kink within reach of the perturbation.
fn away_from_zero(s: &mut Stream, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let v = 0.1 + s.next_f32() as f64;
            if s.next_u32().is_multiple_of(2) {
                v
            } else {
                -v
            }
        })
        .collect()
}

/// A random permutation of `0.1 · (0..n)` plus small noise: distinct values at least
/// 0.05 apart, so no max-pool window has a tie within reach of the perturbation.
fn distinct(s: &mut Stream, n: usize) -> Vec<f64> {
    let mut v: Vec<f64> = (0..n).map(|i| 0.1 * i as f64).collect();
    for i in (1..n).rev() {
        let j = s.below(i as u32 + 1) as usize;
        v.swap(i, j);
    }
    v.iter().map(|x| x + 0.05 * s.next_f32() as f64 - 1.0).collect()
}

/// Build the store and overwrite every parameter with a random value in `±0.5`
/// (initial values such as LayerNorm's ones would hide errors in some terms).
fn setup(table: ParamTable, seed: u64) -> (ParamStore<R>, Stream) {
    let mut s = Stream::new(seed);
    let mut store = table.build(&R::new(), seed).unwrap();
    let n = store.params.len();
    store.params = uniform(&mut s, n, 0.5);
    (store, s)
}

/// Every parameter and every input element.
fn fd_check(what: &str, f: &mut Fwd<'_>, grads: (&[f64], &[f64]), inputs: (&[Vec<f64>], &[Vec<f64>]), dy: &[f64]) {
    fd_check_only(what, f, grads, inputs, dy, None)
}

/// Finite-difference check of a [`Layer`] on input `x`; also checks that `infer` and
/// `forward_owned` agree with `forward`. Returns the store (with the gradients).
fn check_layer<L: Layer<R>>(what: &str, layer: &L, table: ParamTable, x: Vec<f64>, shape: &[usize]) -> ParamStore<R> {
    let b = R::new();
    let (mut store, mut s) = setup(table, 7);
    let xt = tensor(shape, &x);
    let (y, cache) = layer.forward(&b, &store.params, &xt).unwrap();
    assert_eq!(host(&layer.infer(&b, &store.params, &xt).unwrap()), host(&y), "{what}: infer");
    let (y2, _) = layer.forward_owned(&b, &store.params, xt.duplicate(&b).unwrap()).unwrap();
    assert_eq!(host(&y2), host(&y), "{what}: forward_owned");
    let dy = uniform(&mut s, y.numel(), 1.0);
    let dx = layer.backward(&b, &store.params, &mut store.grads, &cache, &tensor(y.shape(), &dy)).unwrap();
    assert_eq!(dx.shape(), shape, "{what}: dx shape");
    let mut f = |p: &[f64], ins: &[Vec<f64>]| host(&layer.forward(&b, &p.to_vec(), &tensor(shape, &ins[0])).unwrap().0);
    fd_check(what, &mut f, (&store.params, &store.grads), (&[x], &[host(&dx)]), &dy);
    store
}

fn random_input(shape: &[usize], seed: u64) -> Vec<f64> {
    uniform(&mut Stream::new(seed), shape.iter().product(), 1.0)
}

// ---- gradient checks ----------------------------------------------------------------------

#[test]
fn linear_gradients() {
    for bias in [true, false] {
        let mut t = ParamTable::new();
        let l = Linear::new(&mut t, "fc", 4, 3, bias).unwrap();
        check_layer("linear", &l, t, random_input(&[2, 3, 4], 1), &[2, 3, 4]);
    }
    let mut t = ParamTable::new();
    let l = Linear::new(&mut t, "fc", 5, 2, true).unwrap();
    check_layer("linear rank 1", &l, t, random_input(&[5], 2), &[5]);
}

#[test]
fn conv_gradients() {
    let cases = [
        Conv2dConfig::new(2, 3, 3).stride(2).padding(1),
        Conv2dConfig::new(2, 3, 3).bias(false),
        Conv2dConfig { kernel: (2, 3), stride: (1, 2), padding: (1, 0), ..Conv2dConfig::new(3, 2, 1) },
    ];
    for cfg in cases {
        let mut t = ParamTable::new();
        let conv = Conv2d::new(&mut t, "conv", cfg).unwrap();
        let shape = [2, cfg.c_in, 5, 4];
        check_layer("conv2d", &conv, t, random_input(&shape, 3), &shape);
    }
}

#[test]
fn layer_norm_gradients() {
    let mut t = ParamTable::new();
    let ln = LayerNorm::new(&mut t, "norm", 5, 1e-6).unwrap();
    check_layer("layer norm", &ln, t, random_input(&[2, 3, 5], 4), &[2, 3, 5]);
}

#[test]
fn activation_gradients() {
    let shape = [2, 3, 4];
    check_layer("gelu", &Gelu, ParamTable::new(), random_input(&shape, 5), &shape);
    let x = away_from_zero(&mut Stream::new(6), 24);
    check_layer("relu", &Relu, ParamTable::new(), x, &shape);
}

#[test]
fn max_pool_gradients() {
    // The ResNet stem's pool (3, 2, 1): overlapping windows and padding; and (2, 2, 0).
    for (k, s, p) in [(3, 2, 1), (2, 2, 0), (3, 1, 1)] {
        let pool = MaxPool2d::new(k, s, p).unwrap();
        let shape = [2, 2, 5, 5];
        let x = distinct(&mut Stream::new(8), 100);
        check_layer("max pool", &pool, ParamTable::new(), x, &shape);
    }
}

#[test]
fn mlp_gradients() {
    let mut t = ParamTable::new();
    let mlp = Mlp::new(&mut t, "mlp", 4, 6).unwrap();
    check_layer("mlp", &mlp, t, random_input(&[2, 3, 4], 9), &[2, 3, 4]);
}

#[test]
fn attention_gradients() {
    for (heads, qkv_bias) in [(2, true), (1, false), (4, true)] {
        let mut t = ParamTable::new();
        let attn = Attention::new(&mut t, "attn", 4, heads, qkv_bias).unwrap();
        check_layer("attention", &attn, t, random_input(&[2, 3, 4], 10), &[2, 3, 4]);
    }
}

#[test]
fn block_gradients() {
    let mut t = ParamTable::new();
    let block = Block::new(&mut t, "blocks.0", 4, 2, 2.0, true).unwrap();
    check_layer("block", &block, t, random_input(&[2, 3, 4], 11), &[2, 3, 4]);
}

/// A biased forward pass: parameters, `x`, bias to `y`.
type BiasedFwd<'a> = dyn Fn(&Vec<f64>, Tensor<R>, &Tensor<R>) -> Tensor<R> + 'a;
/// A biased forward and backward pass: parameters, gradients, `x`, bias, `dy` to `dx`
/// and the bias gradient.
type BiasedBwd<'a> =
    dyn Fn(&Vec<f64>, &mut Vec<f64>, Tensor<R>, &Tensor<R>, &Tensor<R>) -> (Tensor<R>, Option<Tensor<R>>) + 'a;

/// Attention or a block with an additive bias: the bias is a second checked input.
fn check_biased(
    what: &str,
    table: ParamTable,
    bias_shape: &[usize],
    forward: &BiasedFwd<'_>,
    backward: &BiasedBwd<'_>,
) {
    let x_shape = [2, 3, 4];
    let (mut store, mut s) = setup(table, 12);
    let x = uniform(&mut s, 24, 1.0);
    let bias = uniform(&mut s, bias_shape.iter().product(), 1.0);
    let y = forward(&store.params, tensor(&x_shape, &x), &tensor(bias_shape, &bias));
    let dy = uniform(&mut s, y.numel(), 1.0);
    let (dx, dbias) = backward(
        &store.params,
        &mut store.grads,
        tensor(&x_shape, &x),
        &tensor(bias_shape, &bias),
        &tensor(&x_shape, &dy),
    );
    let dbias = dbias.expect("a bias gradient");
    assert_eq!(dbias.shape(), bias_shape);
    let mut f = |p: &[f64], ins: &[Vec<f64>]| {
        host(&forward(&p.to_vec(), tensor(&x_shape, &ins[0]), &tensor(bias_shape, &ins[1])))
    };
    fd_check(what, &mut f, (&store.params, &store.grads), (&[x, bias], &[host(&dx), host(&dbias)]), &dy);
}

#[test]
fn attention_bias_gradients() {
    let b = R::new();
    for bias_shape in [&[2usize, 3, 3][..], &[1, 2, 3, 3], &[2, 2, 3, 3]] {
        let mut t = ParamTable::new();
        let attn = Attention::new(&mut t, "attn", 4, 2, true).unwrap();
        check_biased(
            "attention with bias",
            t,
            bias_shape,
            &|p, x, bias| attn.forward_biased(&b, p, x, Some(bias)).unwrap().0,
            &|p, g, x, bias, dy| {
                let (_, cache) = attn.forward_biased(&b, p, x, Some(bias)).unwrap();
                attn.backward_biased(&b, p, g, &cache, dy).unwrap()
            },
        );
    }
}

#[test]
fn block_bias_gradients() {
    let b = R::new();
    let mut t = ParamTable::new();
    let block = Block::new(&mut t, "blocks.0", 4, 2, 2.0, false).unwrap();
    check_biased(
        "block with bias",
        t,
        &[2, 3, 3],
        &|p, x, bias| {
            let y = block.forward_biased(&b, p, x.duplicate(&b).unwrap(), Some(bias)).unwrap().0;
            assert_eq!(host(&block.infer_biased(&b, p, &x, Some(bias)).unwrap()), host(&y));
            y
        },
        &|p, g, x, bias, dy| {
            let (_, cache) = block.forward_biased(&b, p, x, Some(bias)).unwrap();
            block.backward_biased(&b, p, g, &cache, dy).unwrap()
        },
    );
}

/// Batch norm in one mode: checks `dx`, `dweight`, `dbias`; `state` is given fresh to
/// each forward pass (training mode updates it, without effect on the output).
fn check_batch_norm(train: bool, state: Option<Vec<f64>>) {
    let b = R::new();
    let mut t = ParamTable::new();
    let bn = BatchNorm2d::new(&mut t, "bn", 3).unwrap();
    let (mut store, mut s) = setup(t, 13);
    if let Some(st) = state {
        store.state = st;
    }
    let shape = [2, 3, 2, 2];
    let x = uniform(&mut s, 24, 1.0);
    let mut st = store.state.clone();
    let (y, cache) = bn.forward(&b, &store.params, &mut st, &tensor(&shape, &x), train).unwrap();
    let dy = uniform(&mut s, 24, 1.0);
    let dx = bn.backward(&b, &store.params, &mut store.grads, &cache, &tensor(&shape, &dy)).unwrap();
    assert_eq!(y.shape(), shape);
    let state0 = store.state.clone();
    let mut f = |p: &[f64], ins: &[Vec<f64>]| {
        let mut st = state0.clone();
        host(&bn.forward(&b, &p.to_vec(), &mut st, &tensor(&shape, &ins[0]), train).unwrap().0)
    };
    let what = if train { "batch norm (train)" } else { "batch norm (eval)" };
    fd_check(what, &mut f, (&store.params, &store.grads), (&[x], &[host(&dx)]), &dy);
}

#[test]
fn batch_norm_train_gradients() {
    check_batch_norm(true, None);
}

#[test]
fn batch_norm_eval_gradients() {
    // Running statistics away from the initial (0, 1), so that they matter.
    check_batch_norm(false, Some(vec![0.3, -0.2, 0.1, 0.5, 1.7, 0.9]));
}

#[test]
fn batch_norm_running_statistics() {
    let b = R::new();
    let mut t = ParamTable::new();
    let bn = BatchNorm2d::new(&mut t, "bn", 2).unwrap();
    let (mut store, mut s) = setup(t, 14);
    let x = uniform(&mut s, 16, 2.0);
    let xt = tensor(&[2, 2, 2, 2], &x);
    bn.forward(&b, &store.params, &mut store.state, &xt, true).unwrap();
    for c in 0..2 {
        let vals: Vec<f64> = (0..2).flat_map(|n| x[(n * 2 + c) * 4..(n * 2 + c) * 4 + 4].to_vec()).collect();
        let mean = vals.iter().sum::<f64>() / 8.0;
        let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / 7.0;
        let rm = store.get(&b, "bn.running_mean").unwrap()[c];
        let rv = store.get(&b, "bn.running_var").unwrap()[c];
        assert!((rm - 0.1 * mean).abs() < 1e-12, "running mean {rm} vs {}", 0.1 * mean);
        assert!((rv - (0.9 + 0.1 * var)).abs() < 1e-12, "running var {rv} vs {}", 0.9 + 0.1 * var);
    }
    // Evaluation mode leaves the statistics alone and agrees with `infer`.
    let before = store.state.clone();
    let (y, _) = bn.forward(&b, &store.params, &mut store.state, &xt, false).unwrap();
    assert_eq!(store.state, before);
    assert_eq!(host(&bn.infer(&b, &store.params, &store.state, &xt).unwrap()), host(&y));
}

// ---- layouts ------------------------------------------------------------------------------

#[test]
fn linear_matches_pytorch_layout() {
    let b = R::new();
    let mut t = ParamTable::new();
    let l = Linear::new(&mut t, "fc", 3, 2, true).unwrap();
    let (store, mut s) = setup(t, 15);
    let x = uniform(&mut s, 12, 1.0);
    let y = host(&l.infer(&b, &store.params, &tensor(&[4, 3], &x)).unwrap());
    let w = store.get(&b, "fc.weight").unwrap();
    let bias = store.get(&b, "fc.bias").unwrap();
    for r in 0..4 {
        for o in 0..2 {
            let want = bias[o] + (0..3).map(|i| x[r * 3 + i] * w[o * 3 + i]).sum::<f64>();
            assert!((y[r * 2 + o] - want).abs() < 1e-14);
        }
    }
}

/// timm's `Attention.forward`, written out with plain loops.
fn naive_attention(
    store: &ParamStore<R>,
    x: &[f64],
    (nb, nt, d, nh): (usize, usize, usize, usize),
    bias: &[f64],
) -> Vec<f64> {
    let b = R::new();
    let get = |n: &str| store.get(&b, n).unwrap();
    let (wq, bq, wp, bp) =
        (get("attn.qkv.weight"), get("attn.qkv.bias"), get("attn.proj.weight"), get("attn.proj.bias"));
    let hd = d / nh;
    let lin = |x: &[f64], w: &[f64], bias: &[f64], o: usize| -> Vec<f64> {
        let i_n = x.len() / (nb * nt);
        (0..nb * nt)
            .flat_map(|r| (0..o).map(move |j| bias[j] + (0..i_n).map(|i| x[r * i_n + i] * w[j * i_n + i]).sum::<f64>()))
            .collect()
    };
    let qkv = lin(x, &wq, &bq, 3 * d);
    let at = |bi: usize, n: usize, s: usize, h: usize, e: usize| qkv[(bi * nt + n) * 3 * d + s * d + h * hd + e];
    let mut merged = vec![0.0; nb * nt * d];
    for bi in 0..nb {
        for h in 0..nh {
            for n in 0..nt {
                let scores: Vec<f64> = (0..nt)
                    .map(|m| {
                        let qk: f64 = (0..hd).map(|e| at(bi, n, 0, h, e) * at(bi, m, 1, h, e)).sum();
                        qk / (hd as f64).sqrt() + bias[(h * nt + n) * nt + m]
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - mx).exp()).sum();
                for e in 0..hd {
                    merged[(bi * nt + n) * d + h * hd + e] =
                        (0..nt).map(|m| (scores[m] - mx).exp() / z * at(bi, m, 2, h, e)).sum();
                }
            }
        }
    }
    lin(&merged, &wp, &bp, d)
}

#[test]
fn attention_matches_timm_layout() {
    let b = R::new();
    let (nb, nt, d, nh) = (2, 5, 6, 3);
    let mut t = ParamTable::new();
    let attn = Attention::new(&mut t, "attn", d, nh, true).unwrap();
    let (store, mut s) = setup(t, 16);
    let x = uniform(&mut s, nb * nt * d, 1.0);
    let bias = uniform(&mut s, nh * nt * nt, 1.0);
    let xt = tensor(&[nb, nt, d], &x);
    let y = host(&attn.infer(&b, &store.params, &xt).unwrap());
    let want = naive_attention(&store, &x, (nb, nt, d, nh), &vec![0.0; bias.len()]);
    let yb = host(&attn.infer_biased(&b, &store.params, &xt, Some(&tensor(&[nh, nt, nt], &bias))).unwrap());
    let want_b = naive_attention(&store, &x, (nb, nt, d, nh), &bias);
    for (got, want) in [(y, want), (yb, want_b)] {
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-12, "{g} vs {w}");
        }
    }
}

#[test]
fn parameter_names_follow_timm_and_torchvision() {
    let mut t = ParamTable::new();
    Block::new(&mut t, "blocks.0", 8, 2, 4.0, true).unwrap();
    Conv2d::new(&mut t, "conv1", Conv2dConfig::new(3, 4, 7).stride(2).padding(3).bias(false)).unwrap();
    BatchNorm2d::new(&mut t, "bn1", 4).unwrap();
    let names: Vec<(&str, &[usize])> = t.entries().iter().map(|e| (e.name.as_str(), &e.shape[..])).collect();
    let want: [(&str, &[usize]); 17] = [
        ("blocks.0.norm1.weight", &[8]),
        ("blocks.0.norm1.bias", &[8]),
        ("blocks.0.attn.qkv.weight", &[24, 8]),
        ("blocks.0.attn.qkv.bias", &[24]),
        ("blocks.0.attn.proj.weight", &[8, 8]),
        ("blocks.0.attn.proj.bias", &[8]),
        ("blocks.0.norm2.weight", &[8]),
        ("blocks.0.norm2.bias", &[8]),
        ("blocks.0.mlp.fc1.weight", &[32, 8]),
        ("blocks.0.mlp.fc1.bias", &[32]),
        ("blocks.0.mlp.fc2.weight", &[8, 32]),
        ("blocks.0.mlp.fc2.bias", &[8]),
        ("conv1.weight", &[4, 3, 7, 7]),
        ("bn1.weight", &[4]),
        ("bn1.bias", &[4]),
        ("bn1.running_mean", &[4]),
        ("bn1.running_var", &[4]),
    ];
    assert_eq!(names, want);
    // Initial values: norms at (1, 0), running statistics at (0, 1).
    let store = t.build(&R::new(), 3).unwrap();
    let b = R::new();
    assert!(store.get(&b, "blocks.0.norm1.weight").unwrap().iter().all(|&v| v == 1.0));
    assert!(store.get(&b, "blocks.0.attn.proj.bias").unwrap().iter().all(|&v| v == 0.0));
    assert!(store.get(&b, "bn1.running_var").unwrap().iter().all(|&v| v == 1.0));
    assert!(store.get(&b, "blocks.0.attn.qkv.weight").unwrap().iter().all(|&v| v.abs() <= 2.0 && v != 0.0));
}

// ---- weight sharing and accumulation ------------------------------------------------------

#[test]
fn shared_linear_sums_gradients() {
    let b = R::new();
    let mut t = ParamTable::new();
    let l1 = Linear::new(&mut t, "a", 3, 3, true).unwrap();
    let l2 = Linear::shared(&mut t, "b", "a", 3, 3, true).unwrap();
    assert_eq!(l1, l2);
    assert_eq!(t.params_len(), 12);
    assert_eq!(t.entry("b.weight").unwrap().alias_of.as_deref(), Some("a.weight"));
    let (mut store, mut s) = setup(t, 17);
    let x = uniform(&mut s, 6, 1.0);
    let compose = |p: &Vec<f64>, x: &[f64]| {
        let (h, c1) = l1.forward(&b, p, &tensor(&[2, 3], x)).unwrap();
        let (y, c2) = l2.forward_owned(&b, p, h).unwrap();
        (y, c1, c2)
    };
    let (y, c1, c2) = compose(&store.params, &x);
    let dy = uniform(&mut s, y.numel(), 1.0);
    let dh = l2.backward(&b, &store.params, &mut store.grads, &c2, &tensor(&[2, 3], &dy)).unwrap();
    let dx = l1.backward(&b, &store.params, &mut store.grads, &c1, &dh).unwrap();
    let mut f = |p: &[f64], ins: &[Vec<f64>]| host(&compose(&p.to_vec(), &ins[0]).0);
    fd_check("shared linear", &mut f, (&store.params, &store.grads), (&[x], &[host(&dx)]), &dy);
}

#[test]
fn shared_block_aliases_every_tensor() {
    let mut t = ParamTable::new();
    let a = Block::new(&mut t, "enc.blocks.0", 8, 2, 4.0, true).unwrap();
    let n = t.params_len();
    let b = Block::shared(&mut t, "gen.blocks.0", "enc.blocks.0", 8, 2, 4.0, true).unwrap();
    assert_eq!(a, b);
    assert_eq!(t.params_len(), n, "sharing allocates nothing");
    assert_eq!(t.with_prefix("gen.").count(), 12);
    assert!(t.with_prefix("gen.").all(|e| e.alias_of.as_deref() == Some(&e.name.replacen("gen.", "enc.", 1)[..])));
    let bn = BatchNorm2d::new(&mut t, "x.bn", 4).unwrap();
    let bn2 = BatchNorm2d::shared(&mut t, "y.bn", "x.bn", 4).unwrap();
    assert_eq!(bn, bn2);
    // Wrong shapes or a missing source are errors.
    assert!(matches!(Linear::shared(&mut t, "c", "enc.blocks.0.attn.proj", 8, 4, true), Err(Error::Param { .. })));
    assert!(matches!(Linear::shared(&mut t, "d", "nowhere", 8, 8, true), Err(Error::Param { .. })));
}

#[test]
fn backward_accumulates_parameter_gradients() {
    let b = R::new();
    let mut t = ParamTable::new();
    let block = Block::new(&mut t, "blk", 4, 2, 2.0, true).unwrap();
    let conv = Conv2d::new(&mut t, "conv", Conv2dConfig::new(2, 2, 3).padding(1)).unwrap();
    let bn = BatchNorm2d::new(&mut t, "bn", 2).unwrap();
    let (mut store, mut s) = setup(t, 18);
    let x = tensor(&[2, 3, 4], &uniform(&mut s, 24, 1.0));
    let img = tensor(&[2, 2, 3, 3], &uniform(&mut s, 36, 1.0));
    let (y, cb) = block.forward(&b, &store.params, &x).unwrap();
    let (z, cc) = conv.forward(&b, &store.params, &img).unwrap();
    let (w, cn) = bn.forward(&b, &store.params, &mut store.state, &img, true).unwrap();
    let dy = tensor(y.shape(), &uniform(&mut s, y.numel(), 1.0));
    let dz = tensor(z.shape(), &uniform(&mut s, z.numel(), 1.0));
    let dw = tensor(w.shape(), &uniform(&mut s, w.numel(), 1.0));
    let run = |grads: &mut Vec<f64>| {
        let dx1 = block.backward(&b, &store.params, grads, &cb, &dy).unwrap();
        let dx2 = conv.backward(&b, &store.params, grads, &cc, &dz).unwrap();
        let dx3 = bn.backward(&b, &store.params, grads, &cn, &dw).unwrap();
        [host(&dx1), host(&dx2), host(&dx3)]
    };
    let mut grads = store.grads.clone();
    let dx_once = run(&mut grads);
    let once = grads.clone();
    assert!(once.iter().filter(|&&g| g != 0.0).count() > once.len() / 2);
    // Activation gradients are overwritten (the same both times), parameter ones add up.
    assert_eq!(run(&mut grads), dx_once);
    for (g, g1) in grads.iter().zip(&once) {
        assert!((g - 2.0 * g1).abs() <= 1e-12 * (1.0 + g.abs()), "{g} vs 2 x {g1}");
    }
}

#[test]
fn residual_helpers() {
    let b = R::new();
    let x = tensor(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
    let fx = tensor(&[2, 2], &[0.5, -1.0, 0.0, 2.0]);
    let mut y = residual_add(&b, &x, &fx).unwrap();
    assert_eq!(host(&y), [1.5, 1.0, 3.0, 6.0]);
    add_into(&b, &mut y, &x).unwrap();
    assert_eq!(host(&y), [2.5, 3.0, 6.0, 10.0]);
    let other = tensor(&[4], &[0.0; 4]);
    assert!(matches!(residual_add(&b, &x, &other), Err(Error::Shape { .. })));
    assert!(matches!(add_into(&b, &mut y, &other), Err(Error::Shape { .. })));
}

// ---- shape errors -------------------------------------------------------------------------

fn is_shape_err<T>(r: crate::Result<T>) -> bool {
    matches!(r, Err(Error::Shape { .. }))
}

#[test]
fn shape_errors_are_errors() {
    let b = R::new();
    let mut t = ParamTable::new();
    let lin = Linear::new(&mut t, "fc", 4, 3, true).unwrap();
    let conv = Conv2d::new(&mut t, "conv", Conv2dConfig::new(2, 3, 3)).unwrap();
    let bn = BatchNorm2d::new(&mut t, "bn", 2).unwrap();
    let ln = LayerNorm::new(&mut t, "ln", 4, 1e-6).unwrap();
    let attn = Attention::new(&mut t, "attn", 4, 2, true).unwrap();
    let block = Block::new(&mut t, "blk", 4, 2, 2.0, true).unwrap();
    let mlp = Mlp::new(&mut t, "mlp", 4, 8).unwrap();
    let pool = MaxPool2d::new(3, 2, 1).unwrap();
    let (mut store, _) = setup(t, 19);
    let p = &store.params;
    let z = |shape: &[usize]| Tensor::<R>::zeros(&b, shape).unwrap();

    // Linear: wrong feature count, rank 0, zero-sized, wrong dy.
    assert!(is_shape_err(lin.forward(&b, p, &z(&[2, 5]))));
    assert!(is_shape_err(lin.forward(&b, p, &z(&[]))));
    assert!(is_shape_err(lin.infer(&b, p, &z(&[0, 4]))));
    let (_, c) = lin.forward(&b, p, &z(&[2, 4])).unwrap();
    let mut g = store.grads.clone();
    assert!(is_shape_err(lin.backward(&b, p, &mut g, &c, &z(&[2, 4]))));
    // Conv2d: rank, channels, image smaller than the kernel, zero batch.
    assert!(is_shape_err(conv.forward(&b, p, &z(&[2, 5, 5]))));
    assert!(is_shape_err(conv.forward(&b, p, &z(&[1, 3, 5, 5]))));
    assert!(is_shape_err(conv.forward(&b, p, &z(&[1, 2, 2, 5]))));
    assert!(is_shape_err(conv.forward(&b, p, &z(&[0, 2, 5, 5]))));
    // BatchNorm2d: channels, rank, one value per channel in training.
    let mut st = store.state.clone();
    assert!(is_shape_err(bn.forward(&b, p, &mut st, &z(&[2, 3, 2, 2]), true)));
    assert!(is_shape_err(bn.forward(&b, p, &mut st, &z(&[2, 2, 4]), false)));
    assert!(is_shape_err(bn.forward(&b, p, &mut st, &z(&[1, 2, 1, 1]), true)));
    assert!(bn.forward(&b, p, &mut st, &z(&[1, 2, 1, 1]), false).is_ok());
    // LayerNorm, MLP: last axis.
    assert!(is_shape_err(ln.forward(&b, p, &z(&[3, 5]))));
    assert!(is_shape_err(mlp.forward(&b, p, &z(&[3, 5]))));
    // Activations: zero-sized input; wrong dy.
    assert!(is_shape_err(Layer::<R>::forward(&Gelu, &b, p, &z(&[2, 0]))));
    let (_, c) = Layer::<R>::forward(&Relu, &b, p, &z(&[2, 3])).unwrap();
    assert!(is_shape_err(Relu.backward(&b, p, &mut g, &c, &z(&[3, 2]))));
    // MaxPool2d: rank, input smaller than the window; bad hyper-parameters.
    assert!(is_shape_err(Layer::<R>::forward(&pool, &b, p, &z(&[2, 5, 5]))));
    assert!(is_shape_err(Layer::<R>::forward(&pool, &b, p, &z(&[1, 1, 1, 0]))));
    assert!(matches!(MaxPool2d::new(0, 1, 0), Err(Error::Invalid { .. })));
    assert!(matches!(MaxPool2d::new(2, 2, 2), Err(Error::Invalid { .. })));
    // Attention and Block: rank, width, bias shape.
    assert!(is_shape_err(attn.forward(&b, p, &z(&[3, 4]))));
    assert!(is_shape_err(attn.forward(&b, p, &z(&[1, 3, 6]))));
    assert!(is_shape_err(attn.forward_biased(&b, p, z(&[1, 3, 4]), Some(&z(&[2, 3, 4])))));
    assert!(is_shape_err(attn.forward_biased(&b, p, z(&[1, 3, 4]), Some(&z(&[2, 2, 3, 3])))));
    assert!(is_shape_err(attn.forward_biased(&b, p, z(&[3, 3, 4]), Some(&z(&[2, 2, 3, 3])))));
    assert!(is_shape_err(block.forward_biased(&b, p, z(&[1, 3, 4]), Some(&z(&[3, 3])))));
    assert!(is_shape_err(block.forward(&b, p, &z(&[1, 3, 8]))));
    let (_, c) = attn.forward(&b, p, &z(&[1, 3, 4])).unwrap();
    assert!(is_shape_err(attn.backward(&b, p, &mut g, &c, &z(&[1, 4, 4]))));
    // Bad hyper-parameters and short buffers are invalid arguments.
    let mut t2 = ParamTable::new();
    assert!(matches!(Attention::new(&mut t2, "a", 5, 2, true), Err(Error::Invalid { .. })));
    assert!(matches!(Conv2d::new(&mut t2, "c", Conv2dConfig::new(1, 1, 3).stride(0)), Err(Error::Invalid { .. })));
    assert!(matches!(lin.infer(&b, &vec![0.0; 3], &z(&[1, 4])), Err(Error::Invalid { .. })));
    assert!(matches!(bn.forward(&b, p, &mut vec![], &z(&[2, 2, 2, 2]), true), Err(Error::Invalid { .. })));
    store.grads = g;
}
