//! Tests of the convolutional models: ResNet, the ResNet enhancer head (pixel shuffle)
//! and the DALL-E dVAE. Parameter counts and names against torchvision / SimCLR /
//! DALL-E, finite-difference gradient checks in `f64` on the reference backend, batch
//! norm train/eval behaviour, layout identities, and shape errors.
//!
//! Finite differences: central, `ε = 1e-6`, tolerance `1e-6 · (1 + |analytic|)` as in
//! the layer tests (truncation ≈ ε², rounding ≈ 1e-16 · |f| / ε ≪ tolerance). The
//! checked function is `⟨dy, f(θ, x)⟩` for a random `dy`; parameters are sampled so
//! that every registered tensor contributes at least one element, plus random extras;
//! inputs are sampled likewise.

use super::conv_head::*;
use super::dvae::*;
use super::resnet::*;
use crate::error::Error;
use crate::layers::Layer;
use crate::params::{Kind, ParamStore, ParamTable};
use crate::rng::Stream;
use crate::tensor::{IndexTensor, Tensor};
use alloc::vec;
use alloc::vec::Vec;

use crate::testing::{fd_check_at, host, tensor, uniform, R};

/// Build the store; keep the (random) initial weights of rank ≥ 2 and replace the
/// rank-1 tensors (norm weights at 1, biases at 0 would hide gradient terms): norm and
/// conv weights in `[0.5, 1.5]`, biases in `±0.3`.
fn setup(table: ParamTable, seed: u64) -> (ParamStore<R>, Stream) {
    let mut s = Stream::new(seed);
    let mut store = table.build(&R::new(), seed).unwrap();
    let entries: Vec<_> = store.table.entries().to_vec();
    for e in entries.iter().filter(|e| e.alias_of.is_none() && e.param.kind == Kind::Trainable && e.shape.len() == 1) {
        let range = e.param.offset..e.param.offset + e.param.len;
        let weight = e.name.ends_with(".weight");
        for v in &mut store.params[range] {
            *v = if weight { 1.0 + uniform(&mut s, 1, 0.5)[0] } else { uniform(&mut s, 1, 0.3)[0] };
        }
    }
    (store, s)
}

/// One element of every trainable tensor, plus `extra` random ones.
fn sample_params(table: &ParamTable, s: &mut Stream, extra: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = table
        .entries()
        .iter()
        .filter(|e| e.alias_of.is_none() && e.param.kind == Kind::Trainable)
        .map(|e| e.param.offset + s.below(e.param.len as u32) as usize)
        .collect();
    let n = table.params_len() as u32;
    idx.extend((0..extra).map(|_| s.below(n) as usize));
    idx
}

fn sample(n: usize, k: usize, s: &mut Stream) -> Vec<usize> {
    if n <= k {
        return (0..n).collect();
    }
    (0..k).map(|_| s.below(n as u32) as usize).collect()
}

/// A one-input function under test: parameters and input to the output.
type Fwd1<'a> = dyn FnMut(&[f64], &[f64]) -> Vec<f64> + 'a;

/// Central differences at the sampled parameter and input indices of a one-input `f`.
fn fd_check(
    what: &str,
    f: &mut Fwd1<'_>,
    (params, dparams, p_idx): (&[f64], &[f64], &[usize]),
    (x, dx, x_idx): (&[f64], &[f64], &[usize]),
    dy: &[f64],
) {
    let mut g = |p: &[f64], ins: &[Vec<f64>]| f(p, &ins[0]);
    fd_check_at(what, &mut g, (params, dparams), (&[x.to_vec()], &[dx.to_vec()]), dy, Some(p_idx), Some(x_idx));
}

fn is_shape_err<T>(r: crate::Result<T>) -> bool {
    matches!(r, Err(Error::Shape { .. }))
}

fn is_invalid<T>(r: crate::Result<T>) -> bool {
    matches!(r, Err(Error::Invalid { .. }))
}

// ---- parameter counts -----------------------------------------------------------------------

fn conv(i: usize, o: usize, k: usize, bias: bool) -> usize {
    i * o * k * k + if bias { o } else { 0 }
}

/// torchvision's ResNet, counted from the architecture (trainable parameters).
fn resnet_count(cfg: &ResNetConfig) -> usize {
    let w0 = cfg.base_width;
    let k = if cfg.stem == Stem::ImageNet { 7 } else { 3 };
    let mut p = conv(cfg.in_channels, w0, k, false) + 2 * w0;
    let mut c_in = w0;
    let e = cfg.block.expansion();
    for (i, &n) in cfg.layers.iter().enumerate() {
        let planes = w0 << i;
        for j in 0..n {
            let stride = if i > 0 && j == 0 { 2 } else { 1 };
            p += match cfg.block {
                BlockKind::Basic => conv(c_in, planes, 3, false) + conv(planes, planes, 3, false) + 4 * planes,
                BlockKind::Bottleneck => {
                    conv(c_in, planes, 1, false)
                        + conv(planes, planes, 3, false)
                        + conv(planes, 4 * planes, 1, false)
                        + 4 * planes
                        + 8 * planes
                }
            };
            if stride != 1 || c_in != planes * e {
                p += conv(c_in, planes * e, 1, false) + 2 * planes * e;
            }
            c_in = planes * e;
        }
    }
    p + cfg.num_classes.map_or(0, |n| n * c_in + n)
}

fn table_of(cfg: ResNetConfig) -> ParamTable {
    let mut t = ParamTable::new();
    ResNet::new(&mut t, "", cfg).unwrap();
    t
}

#[test]
fn resnet_parameter_counts() {
    let cases = [
        (ResNetConfig::resnet18(Some(1000)), 11_689_512),
        (ResNetConfig::resnet34(Some(1000)), 21_797_672),
        (ResNetConfig::resnet50(Some(1000)), 25_557_032),
        (ResNetConfig::resnet101(Some(1000)), 44_549_160),
        (ResNetConfig::resnet152(Some(1000)), 60_192_808),
        (ResNetConfig::resnet50(None), 23_508_032),
        // SimCLR's wide ResNet-50 (×2: "94M", ×4: "375M", counted without the head).
        (ResNetConfig::resnet50_wide(2, None), 93_907_072),
        (ResNetConfig::resnet50_wide(4, None), 375_378_176),
        (ResNetConfig::resnet50_wide(2, Some(1000)), 98_004_072),
        (ResNetConfig::resnet50_wide(4, Some(1000)), 383_571_176),
    ];
    for (cfg, want) in cases {
        let t = table_of(cfg);
        assert_eq!(t.params_len(), want, "{cfg:?}");
        assert_eq!(resnet_count(&cfg), want, "{cfg:?}");
    }
    let x2 = table_of(ResNetConfig::resnet50_wide(2, None)).params_len() as f64;
    let x4 = table_of(ResNetConfig::resnet50_wide(4, None)).params_len() as f64;
    assert!((x2 / 1e6 - 94.0).abs() < 0.5 && (x4 / 1e6 - 375.0).abs() < 0.5, "{x2} {x4}");
    // ResNet-50: 53 batch norms, each with two running statistics.
    let t = table_of(ResNetConfig::resnet50(Some(1000)));
    let bn_channels: usize = t.entries().iter().filter(|e| e.name.ends_with("running_mean")).map(|e| e.param.len).sum();
    assert_eq!(t.entries().iter().filter(|e| e.name.ends_with("running_mean")).count(), 53);
    assert_eq!(t.state_len(), 2 * bn_channels);
    assert_eq!(t.entries().iter().filter(|e| e.param.kind == Kind::Trainable).count(), 161);
}

#[test]
fn resnet_names_follow_torchvision() {
    let t = table_of(ResNetConfig::resnet50(Some(1000)));
    let names: Vec<(&str, &[usize])> = t.entries().iter().take(12).map(|e| (e.name.as_str(), &e.shape[..])).collect();
    let want: [(&str, &[usize]); 12] = [
        ("conv1.weight", &[64, 3, 7, 7]),
        ("bn1.weight", &[64]),
        ("bn1.bias", &[64]),
        ("bn1.running_mean", &[64]),
        ("bn1.running_var", &[64]),
        ("layer1.0.conv1.weight", &[64, 64, 1, 1]),
        ("layer1.0.bn1.weight", &[64]),
        ("layer1.0.bn1.bias", &[64]),
        ("layer1.0.bn1.running_mean", &[64]),
        ("layer1.0.bn1.running_var", &[64]),
        ("layer1.0.conv2.weight", &[64, 64, 3, 3]),
        ("layer1.0.bn2.weight", &[64]),
    ];
    assert_eq!(names, want);
    let shape = |n: &str| t.entry(n).unwrap_or_else(|| panic!("missing {n}")).shape.clone();
    assert_eq!(shape("layer1.0.conv3.weight"), [256, 64, 1, 1]);
    assert_eq!(shape("layer1.0.downsample.0.weight"), [256, 64, 1, 1]);
    assert_eq!(shape("layer1.0.downsample.1.running_var"), [256]);
    assert_eq!(shape("layer2.0.conv1.weight"), [128, 256, 1, 1]);
    assert_eq!(shape("layer2.0.conv2.weight"), [128, 128, 3, 3]);
    assert_eq!(shape("layer2.0.downsample.0.weight"), [512, 256, 1, 1]);
    assert_eq!(shape("layer3.5.bn3.bias"), [1024]);
    assert_eq!(shape("layer4.2.conv3.weight"), [2048, 512, 1, 1]);
    assert_eq!(shape("fc.weight"), [1000, 2048]);
    assert_eq!(shape("fc.bias"), [1000]);
    assert!(t.entry("layer1.1.downsample.0.weight").is_none());
    assert!(t.entry("layer3.6.conv1.weight").is_none());
    assert_eq!(t.entries().last().unwrap().name, "fc.bias");
    // The stride sits on the 3×3 convolution (torchvision v1.5).
    let net = {
        let mut t = ParamTable::new();
        ResNet::new(&mut t, "", ResNetConfig::resnet50(None)).unwrap()
    };
    let l2 = &net.stages[1][0];
    assert_eq!(
        [l2.convs[0].conv.cfg.stride, l2.convs[1].conv.cfg.stride, l2.convs[2].conv.cfg.stride],
        [(1, 1), (2, 2), (1, 1)]
    );
    assert_eq!(l2.downsample.unwrap().conv.cfg.stride, (2, 2));
    assert!(net.fc.is_none() && net.maxpool.is_some());
    // ResNet-18: BasicBlocks, no downsample in layer1.
    let t = table_of(ResNetConfig::resnet18(None));
    assert!(t.entry("layer1.0.downsample.0.weight").is_none());
    assert!(t.entry("layer1.0.conv3.weight").is_none());
    assert_eq!(t.entry("layer1.1.conv2.weight").unwrap().shape, [64, 64, 3, 3]);
    assert_eq!(t.entry("layer2.0.conv1.weight").unwrap().shape, [128, 64, 3, 3]);
    assert_eq!(t.entry("layer2.0.downsample.0.weight").unwrap().shape, [128, 64, 1, 1]);
    assert!(t.entry("fc.weight").is_none());
    // Wide and small-stem variants; a prefix.
    let t = table_of(ResNetConfig::resnet50_wide(2, None));
    assert_eq!(t.entry("conv1.weight").unwrap().shape, [128, 3, 7, 7]);
    assert_eq!(t.entry("layer1.0.conv2.weight").unwrap().shape, [128, 128, 3, 3]);
    assert_eq!(t.entry("layer4.0.conv3.weight").unwrap().shape, [4096, 1024, 1, 1]);
    let t = table_of(ResNetConfig::resnet18(None).stem(Stem::Small));
    assert_eq!(t.entry("conv1.weight").unwrap().shape, [64, 3, 3, 3]);
    let mut t = ParamTable::new();
    ResNet::new(&mut t, "enhancer", ResNetConfig::resnet18(Some(10))).unwrap();
    assert!(t.entry("enhancer.layer4.1.bn2.running_mean").is_some() && t.entry("enhancer.fc.bias").is_some());
}

#[test]
fn resnet_initialization() {
    let b = R::new();
    let mut cfg = ResNetConfig::resnet50(Some(10));
    cfg.base_width = 16;
    let t = table_of(cfg);
    let store = t.build(&b, 5).unwrap();
    // Kaiming normal, fan-out: std sqrt(2 / (c_out · k²)).
    let w = store.get(&b, "layer2.0.conv2.weight").unwrap();
    let std = (w.iter().map(|v| v * v).sum::<f64>() / w.len() as f64).sqrt();
    let want = (2.0f64 / (32.0 * 9.0)).sqrt();
    assert!((std / want - 1.0).abs() < 0.05, "std {std} vs {want}");
    assert!(store.get(&b, "layer1.0.bn3.weight").unwrap().iter().all(|&v| v == 1.0));
    assert!(store.get(&b, "bn1.bias").unwrap().iter().all(|&v| v == 0.0));
    assert!(store.get(&b, "bn1.running_var").unwrap().iter().all(|&v| v == 1.0));
    // fc: PyTorch's nn.Linear default, uniform ±1/sqrt(fan_in) for weight and bias.
    let bound = 1.0 / (512.0f64).sqrt();
    for name in ["fc.weight", "fc.bias"] {
        let v = store.get(&b, name).unwrap();
        assert!(v.iter().all(|x| x.abs() <= bound) && v.iter().any(|&x| x != 0.0), "{name}");
    }
    // zero_init_residual zeroes the last BN weight of every block only.
    let store = table_of(ResNetConfig { zero_init_residual: true, ..cfg }).build(&b, 5).unwrap();
    assert!(store.get(&b, "layer3.2.bn3.weight").unwrap().iter().all(|&v| v == 0.0));
    assert!(store.get(&b, "layer3.2.bn2.weight").unwrap().iter().all(|&v| v == 1.0));
    assert!(store.get(&b, "layer3.0.downsample.1.weight").unwrap().iter().all(|&v| v == 1.0));
}

/// DALL-E's dVAE, counted from the architecture.
fn dvae_counts(c: &DvaeConfig) -> (usize, usize) {
    let block = |i: usize, o: usize, ks: [usize; 4]| {
        let h = o / 4;
        conv(i, h, ks[0], true)
            + conv(h, h, ks[1], true)
            + conv(h, h, ks[2], true)
            + conv(h, o, ks[3], true)
            + if i != o { conv(i, o, 1, true) } else { 0 }
    };
    let mut enc = conv(c.input_channels, c.n_hid, 7, true);
    let mut n_in = c.n_hid;
    for g in 0..c.group_count {
        for _ in 0..c.n_blk_per_group {
            enc += block(n_in, c.n_hid << g, [3, 3, 3, 1]);
            n_in = c.n_hid << g;
        }
    }
    enc += conv(n_in, c.vocab_size, 1, true);
    let mut dec = conv(c.vocab_size, c.n_init, 1, true);
    let mut n_in = c.n_init;
    for g in 0..c.group_count {
        let w = c.n_hid << (c.group_count - 1 - g);
        for _ in 0..c.n_blk_per_group {
            dec += block(n_in, w, [1, 3, 3, 3]);
            n_in = w;
        }
    }
    (enc, dec + conv(c.n_hid, 2 * c.input_channels, 1, true))
}

#[test]
fn dvae_parameter_counts() {
    let c = DvaeConfig::dalle();
    let (mut te, mut td) = (ParamTable::new(), ParamTable::new());
    DvaeEncoder::new(&mut te, "", c).unwrap();
    DvaeDecoder::new(&mut td, "", c).unwrap();
    assert_eq!(te.params_len(), 53_786_240);
    assert_eq!(td.params_len(), 43_829_766);
    assert_eq!(dvae_counts(&c), (53_786_240, 43_829_766));
    // "53.8 M encoder and 43.8 M decoder".
    assert!((te.params_len() as f64 / 1e6 - 53.8).abs() < 0.05);
    assert!((td.params_len() as f64 / 1e6 - 43.8).abs() < 0.05);
    assert_eq!(te.state_len() + td.state_len(), 0);
    let s = DvaeConfig::small();
    let (mut te, mut td) = (ParamTable::new(), ParamTable::new());
    DvaeEncoder::new(&mut te, "", s).unwrap();
    DvaeDecoder::new(&mut td, "", s).unwrap();
    assert_eq!((te.params_len(), td.params_len()), dvae_counts(&s));
    assert_eq!((s.grid(16), c.grid(112), c.post_gain()), (8, 14, 1.0 / 64.0));
}

#[test]
fn dvae_names_follow_dall_e() {
    let c = DvaeConfig::dalle();
    let mut t = ParamTable::new();
    DvaeEncoder::new(&mut t, "", c).unwrap();
    let shape = |t: &ParamTable, n: &str| t.entry(n).unwrap_or_else(|| panic!("missing {n}")).shape.clone();
    assert_eq!(t.entries()[0].name, "blocks.input.w");
    assert_eq!(shape(&t, "blocks.input.w"), [256, 3, 7, 7]);
    assert_eq!(shape(&t, "blocks.input.b"), [256]);
    assert_eq!(shape(&t, "blocks.group_1.block_1.res_path.conv_1.w"), [64, 256, 3, 3]);
    assert_eq!(shape(&t, "blocks.group_1.block_1.res_path.conv_4.w"), [256, 64, 1, 1]);
    assert_eq!(shape(&t, "blocks.group_1.block_2.res_path.conv_3.b"), [64]);
    assert!(t.entry("blocks.group_1.block_1.id_path.w").is_none());
    assert_eq!(shape(&t, "blocks.group_2.block_1.id_path.w"), [512, 256, 1, 1]);
    assert!(t.entry("blocks.group_2.block_2.id_path.w").is_none());
    assert_eq!(shape(&t, "blocks.group_4.block_2.res_path.conv_3.w"), [512, 512, 3, 3]);
    assert_eq!(shape(&t, "blocks.output.conv.w"), [8192, 2048, 1, 1]);
    assert_eq!(t.entries().last().unwrap().name, "blocks.output.conv.b");
    assert!(t.entry("blocks.group_5.block_1.res_path.conv_1.w").is_none());
    let mut t = ParamTable::new();
    DvaeDecoder::new(&mut t, "", c).unwrap();
    assert_eq!(shape(&t, "blocks.input.w"), [128, 8192, 1, 1]);
    assert_eq!(shape(&t, "blocks.group_1.block_1.id_path.w"), [2048, 128, 1, 1]);
    assert_eq!(shape(&t, "blocks.group_1.block_1.res_path.conv_1.w"), [512, 128, 1, 1]);
    assert_eq!(shape(&t, "blocks.group_1.block_1.res_path.conv_4.w"), [2048, 512, 3, 3]);
    assert!(t.entry("blocks.group_1.block_2.id_path.w").is_none());
    assert_eq!(shape(&t, "blocks.group_4.block_1.id_path.w"), [256, 512, 1, 1]);
    assert_eq!(shape(&t, "blocks.group_4.block_2.res_path.conv_2.w"), [64, 64, 3, 3]);
    assert_eq!(shape(&t, "blocks.output.conv.w"), [6, 256, 1, 1]);
    assert_eq!(shape(&t, "blocks.output.conv.b"), [6]);
    // Under a prefix, and the padding (k - 1) / 2.
    let mut t = ParamTable::new();
    let enc = DvaeEncoder::new(&mut t, "encoder", DvaeConfig::small()).unwrap();
    assert!(t.entry("encoder.blocks.group_2.block_1.id_path.b").is_some());
    assert_eq!(enc.input.cfg.padding, (3, 3));
    assert_eq!(enc.groups[0][0].res_path[0].cfg.padding, (1, 1));
    assert_eq!(enc.groups[0][0].res_path[3].cfg.padding, (0, 0));
    assert_eq!(enc.groups[0][0].post_gain, 1.0 / 16.0);
}

#[test]
fn dvae_initialization() {
    let b = R::new();
    let mut t = ParamTable::new();
    DvaeEncoder::new(&mut t, "", DvaeConfig::small()).unwrap();
    let store = t.build(&b, 9).unwrap();
    // Normal with std 1/sqrt(n_in · k²), zero biases.
    for (name, fan_in) in [("blocks.group_2.block_1.res_path.conv_2.w", 32.0 * 9.0), ("blocks.input.w", 3.0 * 49.0)] {
        let w = store.get(&b, name).unwrap();
        let std = (w.iter().map(|v| v * v).sum::<f64>() / w.len() as f64).sqrt();
        let want = 1.0 / f64::sqrt(fan_in);
        assert!((std / want - 1.0).abs() < 0.06, "{name}: std {std} vs {want}");
    }
    assert!(store.get(&b, "blocks.output.conv.b").unwrap().iter().all(|&v| v == 0.0));
}

// ---- ResNet: gradients and batch norm ---------------------------------------------------------

fn tiny_resnet(block: BlockKind, stem: Stem, classes: Option<usize>) -> ResNetConfig {
    ResNetConfig {
        block,
        layers: [1, 1, 1, 1],
        base_width: 4,
        in_channels: 3,
        stem,
        num_classes: classes,
        zero_init_residual: false,
    }
}

/// Finite-difference check of the ResNet features (and, with a head, the logits) in
/// training or evaluation mode.
fn check_resnet(what: &str, cfg: ResNetConfig, x_shape: [usize; 4], train: bool, seed: u64) {
    let b = R::new();
    let mut t = ParamTable::new();
    let net = ResNet::new(&mut t, "", cfg).unwrap();
    let (mut store, mut s) = setup(t, seed);
    if !train {
        // Running statistics away from (0, 1).
        let n = store.state.len() / 2;
        let mut st = Vec::new();
        for e in store.table.entries().iter().filter(|e| e.param.kind == Kind::State) {
            let v = if e.name.ends_with("running_mean") {
                uniform(&mut s, e.param.len, 0.5)
            } else {
                uniform(&mut s, e.param.len, 0.5).iter().map(|v| 1.0 + v).collect()
            };
            st.push((e.param.offset, v));
        }
        for (off, v) in st {
            store.state[off..off + v.len()].copy_from_slice(&v);
        }
        assert_eq!(store.state.len(), 2 * n);
    }
    let x = uniform(&mut s, x_shape.iter().product(), 1.0);
    let xt = tensor(&x_shape, &x);
    let state0 = store.state.clone();
    let with_head = cfg.num_classes.is_some();
    let run = |p: &Vec<f64>, xt: &Tensor<R>| {
        let mut st = state0.clone();
        let (f, c) = net.forward_features(&b, p, &mut st, xt, train).unwrap();
        if with_head {
            let (y, cc) = net.classify(&b, p, &f).unwrap();
            (y, c, Some(cc))
        } else {
            (f, c, None)
        }
    };
    let (y, cache, ccache) = run(&store.params, &xt);
    let dy = uniform(&mut s, y.numel(), 1.0);
    let dyt = tensor(y.shape(), &dy);
    let dfeat = match &ccache {
        Some(cc) => net.classify_backward(&b, &store.params, &mut store.grads, cc, &dyt).unwrap(),
        None => dyt,
    };
    let dx = net.backward_features(&b, &store.params, &mut store.grads, &cache, &dfeat).unwrap();
    assert_eq!(dx.shape(), x_shape, "{what}: dx shape");
    let p_idx = sample_params(&store.table, &mut s, 20);
    let x_idx = sample(x.len(), 40, &mut s);
    let mut f = |p: &[f64], xs: &[f64]| host(&run(&p.to_vec(), &tensor(&x_shape, xs)).0);
    fd_check(what, &mut f, (&store.params, &store.grads, &p_idx), (&x, &host(&dx), &x_idx), &dy);
}

#[test]
fn resnet_bottleneck_small_stem_gradients() {
    let cfg = tiny_resnet(BlockKind::Bottleneck, Stem::Small, None);
    check_resnet("bottleneck, small stem, train", cfg, [2, 3, 16, 16], true, 21);
    check_resnet("bottleneck, small stem, eval", cfg, [2, 3, 8, 8], false, 22);
}

#[test]
fn resnet_basic_imagenet_stem_gradients() {
    let mut cfg = tiny_resnet(BlockKind::Basic, Stem::ImageNet, None);
    cfg.layers = [2, 1, 1, 1];
    check_resnet("basic, imagenet stem, train", cfg, [3, 3, 32, 32], true, 23);
}

#[test]
fn resnet_classify_gradients() {
    check_resnet(
        "classify (bottleneck)",
        tiny_resnet(BlockKind::Bottleneck, Stem::Small, Some(5)),
        [2, 3, 8, 8],
        true,
        24,
    );
    check_resnet("classify (basic)", tiny_resnet(BlockKind::Basic, Stem::ImageNet, Some(3)), [2, 3, 32, 32], true, 25);
}

#[test]
fn resnet_shapes_and_modes() {
    let b = R::new();
    let cfg = tiny_resnet(BlockKind::Bottleneck, Stem::Small, Some(7));
    let mut t = ParamTable::new();
    let net = ResNet::new(&mut t, "", cfg).unwrap();
    let (mut store, mut s) = setup(t, 26);
    let x = tensor(&[2, 3, 16, 16], &uniform(&mut s, 2 * 3 * 256, 1.0));
    assert_eq!((net.stride(), net.out_channels()), (8, 128));
    let st0 = store.state.clone();
    // Evaluation mode: running statistics, state untouched, same as infer_features.
    let (fe, _) = net.forward_features(&b, &store.params, &mut store.state, &x, false).unwrap();
    assert_eq!(store.state, st0);
    assert_eq!(fe.shape(), [2, 128, 2, 2]);
    assert_eq!(host(&fe), host(&net.infer_features(&b, &store.params, &store.state, &x).unwrap()));
    // Training mode: batch statistics, running statistics updated.
    let (ft, _) = net.forward_features(&b, &store.params, &mut store.state, &x, true).unwrap();
    assert_ne!(host(&ft), host(&fe));
    assert_ne!(store.state, st0);
    let (ft2, _) =
        net.forward_features_owned(&b, &store.params, &mut st0.clone(), x.duplicate(&b).unwrap(), true).unwrap();
    assert_eq!(host(&ft), host(&ft2));
    // bn1's running statistics: 0.9 · (0, 1) + 0.1 · batch (mean, unbiased variance) of conv1's output.
    let h = host(&net.conv1.infer(&b, &store.params, &x).unwrap());
    let rm = store.get(&b, "bn1.running_mean").unwrap();
    let rv = store.get(&b, "bn1.running_var").unwrap();
    for c in 0..4 {
        let vals: Vec<f64> = (0..2).flat_map(|n| h[(n * 4 + c) * 256..(n * 4 + c + 1) * 256].to_vec()).collect();
        let mean = vals.iter().sum::<f64>() / 512.0;
        let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / 511.0;
        assert!((rm[c] - 0.1 * mean).abs() < 1e-12 && (rv[c] - (0.9 + 0.1 * var)).abs() < 1e-12);
    }
    // A second step moves them again by the momentum rule; deeper layers are updated too.
    let rm_l4 = store.get(&b, "layer4.0.bn3.running_mean").unwrap();
    assert!(rm_l4.iter().any(|&v| v != 0.0));
    net.forward_features(&b, &store.params, &mut store.state, &x, true).unwrap();
    let rm2 = store.get(&b, "bn1.running_mean").unwrap();
    for c in 0..4 {
        assert!((rm2[c] - (0.9 * rm[c] + rm[c])).abs() < 1e-12);
    }
    // Ten more steps on the same batch: running mean = (1 - 0.9^k) · batch mean.
    let mut st = st0.clone();
    for _ in 0..12 {
        net.forward_features(&b, &store.params, &mut st, &x, true).unwrap();
    }
    let rm = &st[net.bn1.running_mean.offset..net.bn1.running_mean.offset + 4];
    for c in 0..4 {
        let mean = rm2[c] / 0.19; // two steps: (1 - 0.81) · mean
        assert!((rm[c] - (1.0 - 0.9f64.powi(12)) * mean).abs() < 1e-12);
    }
    // classify: [n, classes]; infer_classify agrees.
    let (logits, _) = net.classify(&b, &store.params, &ft2).unwrap();
    assert_eq!(logits.shape(), [2, 7]);
    assert_eq!(host(&logits), host(&net.infer_classify(&b, &store.params, &ft2).unwrap()));
    // ImageNet stem: stride 32.
    let cfg = tiny_resnet(BlockKind::Basic, Stem::ImageNet, None);
    let mut t = ParamTable::new();
    let net = ResNet::new(&mut t, "", cfg).unwrap();
    let store = t.build(&b, 1).unwrap();
    let x = Tensor::<R>::zeros(&b, &[1, 3, 64, 64]).unwrap();
    assert_eq!(net.infer_features(&b, &store.params, &store.state, &x).unwrap().shape(), [1, 32, 2, 2]);
}

#[test]
fn resnet_shape_errors() {
    let b = R::new();
    let mut t = ParamTable::new();
    let net = ResNet::new(&mut t, "", tiny_resnet(BlockKind::Bottleneck, Stem::Small, None)).unwrap();
    let (mut store, _) = setup(t, 27);
    let z = |shape: &[usize]| Tensor::<R>::zeros(&b, shape).unwrap();
    let p = store.params.clone();
    let mut st = store.state.clone();
    assert!(is_shape_err(net.forward_features(&b, &p, &mut st, &z(&[2, 4, 8, 8]), true)));
    assert!(is_shape_err(net.forward_features(&b, &p, &mut st, &z(&[3, 8, 8]), true)));
    assert!(is_shape_err(net.forward_features(&b, &p, &mut st, &z(&[0, 3, 8, 8]), true)));
    assert!(is_shape_err(net.infer_features(&b, &p, &st, &z(&[1, 3, 0, 8]))));
    // One value per channel at layer4 in training mode (batch 1, 8×8 image → 1×1).
    assert!(is_shape_err(net.forward_features(&b, &p, &mut st, &z(&[1, 3, 8, 8]), true)));
    assert!(net.forward_features(&b, &p, &mut st, &z(&[1, 3, 8, 8]), false).is_ok());
    let (f, c) = net.forward_features(&b, &p, &mut st, &z(&[2, 3, 8, 8]), true).unwrap();
    assert!(is_shape_err(net.backward_features(&b, &p, &mut store.grads, &c, &z(&[2, 128, 2, 1]))));
    // No head: classify is an invalid call; a wrong feature map is a shape error.
    assert!(is_invalid(net.classify(&b, &p, &f)));
    let mut t = ParamTable::new();
    let net2 = ResNet::new(&mut t, "", tiny_resnet(BlockKind::Bottleneck, Stem::Small, Some(3))).unwrap();
    let p2 = t.build(&b, 1).unwrap().params;
    assert!(is_shape_err(net2.classify(&b, &p2, &z(&[2, 64, 1, 1]))));
    assert!(is_shape_err(net2.classify(&b, &p2, &z(&[2, 128]))));
    // Bad configurations and short buffers.
    let mut t = ParamTable::new();
    let bad = ResNetConfig { layers: [1, 0, 1, 1], ..ResNetConfig::resnet18(None) };
    assert!(is_invalid(ResNet::new(&mut t, "", bad)));
    assert!(is_invalid(net.infer_features(&b, &vec![0.0; 10], &st, &z(&[1, 3, 8, 8]))));
}

// ---- pixel shuffle and the enhancer head ------------------------------------------------------

#[test]
fn pixel_shuffle_matches_pytorch() {
    let b = R::new();
    let (n, c, r, h, w) = (2, 3, 2, 3, 4);
    let x: Vec<f64> = (0..n * c * r * r * h * w).map(|i| i as f64).collect();
    let xt = tensor(&[n, c * r * r, h, w], &x);
    let y = pixel_shuffle(&b, &xt, r).unwrap();
    assert_eq!(y.shape(), [n, c, h * r, w * r]);
    let y = host(&y);
    for bi in 0..n {
        for ch in 0..c {
            for oh in 0..h * r {
                for ow in 0..w * r {
                    let src = ((bi * c * r * r + ch * r * r + (oh % r) * r + ow % r) * h + oh / r) * w + ow / r;
                    assert_eq!(y[((bi * c + ch) * h * r + oh) * w * r + ow], x[src]);
                }
            }
        }
    }
    let back = pixel_unshuffle(&b, &tensor(&[n, c, h * r, w * r], &y), r).unwrap();
    assert_eq!(back.shape(), [n, c * r * r, h, w]);
    assert_eq!(host(&back), x);
    // Factor 1 is the identity; bad shapes are errors.
    assert_eq!(host(&pixel_shuffle(&b, &xt, 1).unwrap()), x);
    assert!(is_shape_err(pixel_shuffle(&b, &tensor(&[1, 3, 2, 2], &[0.0; 12]), 2)));
    assert!(is_shape_err(pixel_unshuffle(&b, &tensor(&[1, 3, 3, 2], &[0.0; 18]), 2)));
    assert!(is_invalid(pixel_shuffle(&b, &xt, 0)));
}

#[test]
fn conv_head_gradients_and_shapes() {
    let b = R::new();
    for (task, want) in [(ConvHeadTask::Respix, [2, 3, 8, 12]), (ConvHeadTask::Revdet, [2, 1, 4, 6])] {
        let mut t = ParamTable::new();
        let head = ConvHead::new(&mut t, "head", task, 5, 4, 2).unwrap();
        assert_eq!(t.entry("head.weight").unwrap().shape[0], if task == ConvHeadTask::Respix { 48 } else { 4 });
        let (mut store, mut s) = setup(t, 28);
        let shape = [2, 5, 2, 3];
        let x = uniform(&mut s, 60, 1.0);
        let xt = tensor(&shape, &x);
        let (y, cache) = head.forward(&b, &store.params, &xt).unwrap();
        assert_eq!(y.shape(), want);
        assert_eq!(host(&y), host(&head.infer(&b, &store.params, &xt).unwrap()));
        // Layout: output pixel (i, j) of cell (h, w) is conv channel c·r² + i·r + j at (h, w).
        let conv = host(&head.conv.infer(&b, &store.params, &xt).unwrap());
        let r = head.scale();
        let (ch, oh, ow) = (want[1] - 1, 2 * r - 1, r + 1);
        let k = ch * r * r + (oh % r) * r + ow % r;
        assert_eq!(
            host(&y)[((want[1] + ch) * want[2] + oh) * want[3] + ow],
            conv[((head.conv.cfg.c_out + k) * 2 + oh / r) * 3 + ow / r]
        );
        let dy = uniform(&mut s, y.numel(), 1.0);
        let dx = head.backward(&b, &store.params, &mut store.grads, &cache, &tensor(&want, &dy)).unwrap();
        let p_idx: Vec<usize> = (0..store.params.len()).collect();
        let x_idx: Vec<usize> = (0..60).collect();
        let mut f = |p: &[f64], xs: &[f64]| host(&head.infer(&b, &p.to_vec(), &tensor(&shape, xs)).unwrap());
        fd_check("conv head", &mut f, (&store.params, &store.grads, &p_idx), (&x, &host(&dx), &x_idx), &dy);
        // Shape errors.
        assert!(is_shape_err(head.forward(&b, &store.params, &tensor(&[2, 4, 2, 3], &[0.0; 48]))));
        assert!(is_shape_err(head.backward(&b, &store.params, &mut store.grads, &cache, &tensor(&[2, 3], &[0.0; 6]))));
    }
    // Sizes for the real networks, from the tables alone.
    let mut t = ParamTable::new();
    let r50 = ResNetConfig::resnet50(None);
    let respix = ConvHead::for_resnet(&mut t, "respix", ConvHeadTask::Respix, &r50, 16).unwrap();
    let revdet = ConvHead::for_resnet(&mut t, "revdet", ConvHeadTask::Revdet, &r50, 16).unwrap();
    assert_eq!(t.entry("respix.weight").unwrap().shape, [3072, 2048, 1, 1]);
    assert_eq!(t.entry("revdet.weight").unwrap().shape, [4, 2048, 1, 1]);
    assert_eq!(respix.out_shape(&[8, 2048, 7, 7]).unwrap(), [8, 3, 224, 224]);
    assert_eq!(revdet.out_shape(&[8, 2048, 7, 7]).unwrap(), [8, 1, 14, 14]);
    let small = ResNetConfig::resnet18(None).stem(Stem::Small);
    let revdet = ConvHead::for_resnet(&mut t, "small", ConvHeadTask::Revdet, &small, 4).unwrap();
    assert_eq!(revdet.out_shape(&[8, 512, 4, 4]).unwrap(), [8, 1, 8, 8]);
    assert!(is_invalid(ConvHead::new(&mut t, "bad", ConvHeadTask::Revdet, 8, 8, 16)));
    assert!(is_invalid(ConvHead::new(&mut t, "bad2", ConvHeadTask::Respix, 8, 8, 3)));
}

// ---- dVAE ---------------------------------------------------------------------------------------

fn tiny_dvae() -> DvaeConfig {
    DvaeConfig { group_count: 2, n_hid: 8, n_blk_per_group: 2, input_channels: 3, vocab_size: 6, n_init: 4 }
}

/// Finite-difference check of a dVAE half through the [`Layer`] trait.
fn check_dvae<L: Layer<R>>(what: &str, layer: &L, table: ParamTable, x_shape: &[usize], seed: u64) {
    let b = R::new();
    let (mut store, mut s) = setup(table, seed);
    let x = uniform(&mut s, x_shape.iter().product(), 1.0);
    let xt = tensor(x_shape, &x);
    let (y, cache) = layer.forward(&b, &store.params, &xt).unwrap();
    assert_eq!(host(&layer.infer(&b, &store.params, &xt).unwrap()), host(&y), "{what}: infer");
    let dy = uniform(&mut s, y.numel(), 1.0);
    let dx = layer.backward(&b, &store.params, &mut store.grads, &cache, &tensor(y.shape(), &dy)).unwrap();
    assert_eq!(dx.shape(), x_shape);
    let p_idx = sample_params(&store.table, &mut s, 20);
    let x_idx = sample(x.len(), 40, &mut s);
    let mut f = |p: &[f64], xs: &[f64]| host(&layer.forward(&b, &p.to_vec(), &tensor(x_shape, xs)).unwrap().0);
    fd_check(what, &mut f, (&store.params, &store.grads, &p_idx), (&x, &host(&dx), &x_idx), &dy);
}

#[test]
fn dvae_encoder_gradients() {
    let mut t = ParamTable::new();
    let enc = DvaeEncoder::new(&mut t, "", tiny_dvae()).unwrap();
    check_dvae("dVAE encoder", &enc, t, &[2, 3, 8, 8], 31);
    let mut t = ParamTable::new();
    let enc = DvaeEncoder::new(&mut t, "", DvaeConfig { group_count: 3, n_blk_per_group: 1, ..tiny_dvae() }).unwrap();
    check_dvae("dVAE encoder, 3 groups", &enc, t, &[1, 3, 8, 8], 32);
}

#[test]
fn dvae_decoder_gradients() {
    let mut t = ParamTable::new();
    let dec = DvaeDecoder::new(&mut t, "", tiny_dvae()).unwrap();
    check_dvae("dVAE decoder", &dec, t, &[2, 6, 3, 4], 33);
    let mut t = ParamTable::new();
    let dec = DvaeDecoder::new(&mut t, "", DvaeConfig { group_count: 3, n_blk_per_group: 1, ..tiny_dvae() }).unwrap();
    check_dvae("dVAE decoder, 3 groups", &dec, t, &[1, 6, 2, 2], 34);
}

#[test]
fn dvae_block_matches_formula() {
    // out = id_path(x) + post_gain · res_path(x), written out with the layer pieces.
    let b = R::new();
    let mut t = ParamTable::new();
    let c = tiny_dvae();
    let enc = DvaeEncoder::new(&mut t, "", c).unwrap();
    let (store, mut s) = setup(t, 35);
    let blk = &enc.groups[1][0];
    assert!(blk.id_path.is_some());
    let x = tensor(&[2, 8, 4, 4], &uniform(&mut s, 256, 1.0));
    let relu = |t: &Tensor<R>| crate::ops::relu(&b, t).unwrap();
    let mut h = relu(&x);
    for (i, conv) in blk.res_path.iter().enumerate() {
        h = conv.infer(&b, &store.params, &h).unwrap();
        if i < 3 {
            h = relu(&h);
        }
    }
    let id = blk.id_path.unwrap().infer(&b, &store.params, &x).unwrap();
    let want: Vec<f64> = host(&id).iter().zip(host(&h)).map(|(a, r)| a + r / 16.0).collect();
    assert_eq!(host(&blk.infer(&b, &store.params, &x).unwrap()), want);
}

#[test]
fn dvae_tokens_and_pixels() {
    let b = R::new();
    let c = DvaeConfig { vocab_size: 12, ..tiny_dvae() };
    let mut t = ParamTable::new();
    let enc = DvaeEncoder::new(&mut t, "enc", c).unwrap();
    let dec = DvaeDecoder::new(&mut t, "dec", c).unwrap();
    let (store, mut s) = setup(t, 36);
    let p = &store.params;
    let img: Vec<f64> = uniform(&mut s, 2 * 3 * 64, 0.5).iter().map(|v| v + 0.5).collect();
    let x = map_pixels(&b, &tensor(&[2, 3, 8, 8], &img)).unwrap();
    assert!(host(&x).iter().zip(&img).all(|(m, v)| (m - (0.8 * v + 0.1)).abs() < 1e-15));
    // Encoder: logits NCHW; channels-last logits are their transpose; tokens their argmax.
    let logits = enc.infer(&b, p, &x).unwrap();
    assert_eq!(logits.shape(), [2, 12, 4, 4]);
    let last = enc.infer_logits_last(&b, p, &x).unwrap();
    assert_eq!(last.shape(), [2, 4, 4, 12]);
    let nhwc = nchw_to_nhwc(&b, &logits).unwrap();
    assert_eq!(nhwc.shape(), [2, 4, 4, 12]);
    for (a, c) in host(&last).iter().zip(host(&nhwc)) {
        assert!((a - c).abs() < 1e-12);
    }
    assert_eq!(host(&nhwc_to_nchw(&b, &nhwc).unwrap()), host(&logits));
    let tokens = enc.encode_tokens(&b, p, &x).unwrap();
    assert_eq!(tokens.shape(), [2, 4, 4]);
    let lg = host(&logits);
    for (i, &tok) in tokens.to_vec(&b).unwrap().iter().enumerate() {
        let (n, q) = (i / 16, i % 16);
        let col: Vec<f64> = (0..12).map(|v| lg[(n * 12 + v) * 16 + q]).collect();
        let best = (0..12).fold(0, |m, v| if col[v] > col[m] { v } else { m });
        assert_eq!(tok as usize, best);
    }
    // Decoder: tokens decode exactly as their one-hot codes.
    let ids: Vec<u32> = (0..32).map(|i| (i * 5 % 12) as u32).collect();
    let tokens = IndexTensor::from_slice(&b, &[2, 4, 4], &ids).unwrap();
    let oh = one_hot(&b, &tokens, 12).unwrap();
    assert_eq!(oh.shape(), [2, 12, 4, 4]);
    let ohv = host(&oh);
    assert_eq!(ohv.iter().sum::<f64>(), 32.0);
    assert_eq!(ohv[(12 + 1) * 16 + 1], 1.0); // image 1, position 1: token 17 · 5 mod 12 = 1
    let out = dec.infer(&b, p, &oh).unwrap();
    assert_eq!(out.shape(), [2, 6, 8, 8]);
    let out2 = dec.decode_tokens(&b, p, &tokens).unwrap();
    for (a, c) in host(&out).iter().zip(host(&out2)) {
        assert!((a - c).abs() < 1e-12, "{a} vs {c}");
    }
    // Reconstruction: unmap(sigmoid(means)), clamped to [0, 1].
    let rec = host(&reconstruct(&b, &out).unwrap());
    let o = host(&out);
    assert_eq!(rec.len(), 2 * 3 * 64);
    for n in 0..2 {
        for i in 0..3 * 64 {
            let sig = 1.0 / (1.0 + (-o[n * 6 * 64 + i]).exp());
            let want = ((sig - 0.1) / 0.8).clamp(0.0, 1.0);
            assert!((rec[n * 3 * 64 + i] - want).abs() < 1e-12);
        }
    }
    let un = host(&unmap_pixels(&b, &tensor(&[4], &[0.0, 0.1, 0.5, 1.0])).unwrap());
    assert_eq!(un, [0.0, 0.0, 0.5, 1.0]);
    // Errors: bad token ranks and ids, wrong channel counts, too-small images.
    let bad = IndexTensor::from_slice(&b, &[2, 16], &ids).unwrap();
    assert!(is_shape_err(dec.decode_tokens(&b, p, &bad)));
    let big = IndexTensor::from_slice(&b, &[1, 1, 1], &[12]).unwrap();
    assert!(is_invalid(dec.decode_tokens(&b, p, &big)));
    assert!(is_invalid(one_hot(&b, &big, 12)));
    let z = |shape: &[usize]| Tensor::<R>::zeros(&b, shape).unwrap();
    assert!(is_shape_err(enc.forward(&b, p, &z(&[2, 4, 8, 8]))));
    assert!(is_shape_err(enc.infer(&b, p, &z(&[2, 3, 1, 8]))));
    assert!(is_shape_err(enc.encode_tokens(&b, p, &z(&[3, 8, 8]))));
    assert!(is_shape_err(dec.forward(&b, p, &z(&[2, 11, 4, 4]))));
    assert!(is_shape_err(dec.infer(&b, p, &z(&[2, 12, 0, 4]))));
    assert!(is_shape_err(reconstruct(&b, &z(&[2, 5, 4, 4]))));
    assert!(is_shape_err(nchw_to_nhwc(&b, &z(&[2, 5, 4]))));
    let (_, cache) = dec.forward(&b, p, &z(&[1, 12, 2, 2])).unwrap();
    let mut g = store.grads.clone();
    assert!(dec.backward(&b, p, &mut g, &cache, &z(&[1, 6, 4, 3])).is_err());
    let mut t = ParamTable::new();
    assert!(is_invalid(DvaeEncoder::new(&mut t, "", DvaeConfig { n_hid: 6, ..tiny_dvae() })));
    assert!(is_invalid(DvaeDecoder::new(&mut t, "", DvaeConfig { group_count: 0, ..tiny_dvae() })));
}
