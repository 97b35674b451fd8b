//! torchvision's ResNet (He et al. 2016, torchvision "v1.5": the stride of a bottleneck
//! sits on its 3×3 convolution), with BasicBlock (ResNet-18/34) and Bottleneck
//! (ResNet-50/101/152) blocks, and SimCLR's wide ResNet-50 ×2 / ×4.
//!
//! # Architecture and names
//! ```text
//! conv1 (7×7/2, pad 3, no bias) → bn1 → relu → maxpool (3×3/2, pad 1)     Stem::ImageNet
//! conv1 (3×3/1, pad 1, no bias) → bn1 → relu                               Stem::Small
//! layer1 … layer4   (stage i: planes = base_width · 2^i, stride 1, 2, 2, 2)
//! [avgpool → fc]    (optional classification head, see ResNet::classify)
//! ```
//! Tensor names are torchvision's exactly: `conv1.weight`, `bn1.{weight,bias}`, state
//! `bn1.{running_mean,running_var}`, `layer1.0.conv1.weight`, `layer1.0.bn1.*`,
//! `layer1.0.downsample.0.weight`, `layer1.0.downsample.1.*`, `fc.{weight,bias}`
//! (`num_batches_tracked` is not kept; the checkpoint loader handles it).
//!
//! Width: `base_width` is the stem width and the first stage's planes (64 in
//! torchvision; `64 · m` for SimCLR's `resnet50x{m}`, which scales every stage: stem
//! `64m`, bottleneck widths `64m · 2^i`, outputs `4 · 64m · 2^i`).
//!
//! # Initialization (torchvision)
//! Convolutions: Kaiming normal, fan-out (`Init::KaimingNormalFanOut`); batch norms:
//! weight 1, bias 0 (optionally the last BN of each block at weight 0,
//! `zero_init_residual`, off by default as in torchvision); `fc`: PyTorch's `nn.Linear`
//! default, uniform `±1/sqrt(fan_in)` for weight and bias.
//!
//! # Passes
//! [`ResNet::forward_features`] runs in training mode (batch statistics, running
//! statistics updated in `state`) or evaluation mode (running statistics), and keeps a
//! cache for [`ResNet::backward_features`]; [`ResNet::infer_features`] is evaluation
//! mode without a cache. Features are the last map `[n, c_out, h/s, w/s]` before
//! pooling, `s` = [`ResNetConfig::stride`]. [`ResNet::classify`] applies the global
//! average pool and `fc`.
//!
//! Memory: a block keeps its input once (shared by `conv1` and the downsample branch)
//! and the output of each inner ReLU once (the next convolution's input); ReLU
//! backward passes read the mask `y > 0` from the ReLU *output*, which equals `x > 0`.

use crate::backend::Backend;
use crate::error::{invalid, shape_err, Result};
use crate::layers::{
    add_into, produce, BatchNorm2d, BatchNormCache, Conv2d, Conv2dCache, Conv2dConfig, Layer, Linear, LinearCache,
    MaxPool2d, MaxPoolCache, Scope,
};
use crate::ops;
use crate::params::{Init, ParamTable};
use crate::tensor::Tensor;
use alloc::format;
use alloc::vec::Vec;

const OP: &str = "ResNet";

/// The first layers of the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stem {
    /// torchvision: 7×7 stride-2 convolution and a 3×3 stride-2 max-pool (network stride 32).
    ImageNet,
    /// For 32-px images (CIFAR style): a 3×3 stride-1 convolution, no max-pool (network
    /// stride 8).
    Small,
}

/// The residual block type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3×3 convolutions (ResNet-18/34), expansion 1.
    Basic,
    /// 1×1, 3×3 (with the stride), 1×1 convolutions (ResNet-50 and up), expansion 4.
    Bottleneck,
}

impl BlockKind {
    /// Output channels per plane.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// Hyper-parameters of a [`ResNet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResNetConfig {
    pub block: BlockKind,
    /// Blocks per stage (`layer1..layer4`); each at least 1.
    pub layers: [usize; 4],
    /// Stem width and planes of `layer1` (64, or `64 · m` for a width multiplier `m`).
    pub base_width: usize,
    /// Input channels (3).
    pub in_channels: usize,
    pub stem: Stem,
    /// Classes of the `fc` head; `None` registers no head.
    pub num_classes: Option<usize>,
    /// Initialize the last BN weight of every block to zero (torchvision's option).
    pub zero_init_residual: bool,
}

impl ResNetConfig {
    fn with(block: BlockKind, layers: [usize; 4], num_classes: Option<usize>) -> Self {
        ResNetConfig {
            block,
            layers,
            base_width: 64,
            in_channels: 3,
            stem: Stem::ImageNet,
            num_classes,
            zero_init_residual: false,
        }
    }
    /// torchvision `resnet18` (11,689,512 parameters with a 1000-class head).
    pub fn resnet18(num_classes: Option<usize>) -> Self {
        Self::with(BlockKind::Basic, [2, 2, 2, 2], num_classes)
    }
    pub fn resnet34(num_classes: Option<usize>) -> Self {
        Self::with(BlockKind::Basic, [3, 4, 6, 3], num_classes)
    }
    /// torchvision `resnet50` (25,557,032 parameters with a 1000-class head).
    pub fn resnet50(num_classes: Option<usize>) -> Self {
        Self::with(BlockKind::Bottleneck, [3, 4, 6, 3], num_classes)
    }
    pub fn resnet101(num_classes: Option<usize>) -> Self {
        Self::with(BlockKind::Bottleneck, [3, 4, 23, 3], num_classes)
    }
    pub fn resnet152(num_classes: Option<usize>) -> Self {
        Self::with(BlockKind::Bottleneck, [3, 8, 36, 3], num_classes)
    }
    /// SimCLR's `resnet50x{m}`: every width multiplied by `m` (×2: 93,907,072 parameters
    /// without a head; ×4: 375,378,176).
    pub fn resnet50_wide(m: usize, num_classes: Option<usize>) -> Self {
        ResNetConfig { base_width: 64 * m, ..Self::resnet50(num_classes) }
    }
    /// The same network with another stem.
    pub fn stem(self, stem: Stem) -> Self {
        ResNetConfig { stem, ..self }
    }
    /// Channels of the feature map.
    pub fn out_channels(&self) -> usize {
        self.base_width * 8 * self.block.expansion()
    }
    /// Total downsampling from image to feature map: 32 (ImageNet stem) or 8 (small stem).
    pub fn stride(&self) -> usize {
        match self.stem {
            Stem::ImageNet => 32,
            Stem::Small => 8,
        }
    }
    fn validate(&self) -> Result<()> {
        if self.layers.contains(&0) || self.base_width == 0 || self.in_channels == 0 || self.num_classes == Some(0) {
            return invalid(OP, format!("every stage needs a block and every width must be positive: {self:?}"));
        }
        Ok(())
    }
}

/// A convolution (no bias) followed by a batch norm.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm2d,
}

/// A batch norm with weight 0 (zero-init residual) or 1.
fn batch_norm(s: &mut Scope<'_>, c: usize, zero_gamma: bool) -> Result<BatchNorm2d> {
    if !zero_gamma {
        return BatchNorm2d::build(s, c);
    }
    Ok(BatchNorm2d {
        weight: s.param("weight", &[c], Init::Zeros)?,
        bias: s.param("bias", &[c], Init::Zeros)?,
        running_mean: s.state("running_mean", &[c], Init::Zeros)?,
        running_var: s.state("running_var", &[c], Init::Ones)?,
        channels: c,
        eps: 1e-5,
        momentum: 0.1,
    })
}

fn conv_cfg(c_in: usize, c_out: usize, k: usize, stride: usize) -> Conv2dConfig {
    Conv2dConfig::new(c_in, c_out, k).stride(stride).padding(k / 2).bias(false)
}

/// `relu(x)` as a new tensor.
pub(crate) fn relu<B: Backend>(b: &B, x: &Tensor<B>) -> Result<Tensor<B>> {
    produce(b, x.shape(), |y| b.relu(x.view(), y))
}

/// ReLU backward from the ReLU *output* `y`: `dx = dy · [y > 0]` (`y > 0` iff `x > 0`).
pub(crate) fn relu_backward_from_output<B: Backend>(b: &B, y: &Tensor<B>, dy: &Tensor<B>) -> Result<Tensor<B>> {
    if y.shape() != dy.shape() {
        return shape_err("relu backward", format!("dy {:?} vs activation {:?}", dy.shape(), y.shape()));
    }
    produce(b, y.shape(), |dx| b.relu_backward(y.view(), dy.view(), dx))
}

/// One residual block: `relu(main(x) + shortcut(x))`, `main` = `conv{k}/bn{k}` pairs
/// with a ReLU between them (two for Basic, three for Bottleneck), `shortcut` = identity
/// or `downsample.0` (1×1 conv with the stride) + `downsample.1` (BN).
#[derive(Clone, Debug, PartialEq)]
pub struct ResBlock {
    pub convs: Vec<ConvBn>,
    pub downsample: Option<ConvBn>,
    pub c_in: usize,
    pub c_out: usize,
    pub stride: usize,
}

/// What a block's backward pass needs.
pub struct ResBlockCache<B: Backend> {
    /// The block input (for `conv1` and the downsample convolution).
    pub input: Conv2dCache<B>,
    /// The BN caches of the main branch (`bn1`, `bn2`[, `bn3`]).
    pub bn: Vec<BatchNormCache<B>>,
    /// The inputs of `conv2`[, `conv3`]: outputs of the inner ReLUs.
    pub inner: Vec<Conv2dCache<B>>,
    /// The downsample BN cache.
    pub downsample: Option<BatchNormCache<B>>,
}

impl ResBlock {
    /// Register a block in scope `s` (`layerK.N`).
    pub fn build(
        s: &mut Scope<'_>,
        kind: BlockKind,
        c_in: usize,
        planes: usize,
        stride: usize,
        zero_init_residual: bool,
    ) -> Result<Self> {
        let c_out = planes * kind.expansion();
        let specs: Vec<(usize, usize, usize, usize)> = match kind {
            BlockKind::Basic => alloc::vec![(c_in, planes, 3, stride), (planes, planes, 3, 1)],
            BlockKind::Bottleneck => {
                alloc::vec![(c_in, planes, 1, 1), (planes, planes, 3, stride), (planes, c_out, 1, 1)]
            }
        };
        let last = specs.len() - 1;
        let mut convs = Vec::with_capacity(specs.len());
        for (i, &(ci, co, k, st)) in specs.iter().enumerate() {
            let conv = Conv2d::build(&mut s.child(&format!("conv{}", i + 1)), conv_cfg(ci, co, k, st))?;
            let bn = batch_norm(&mut s.child(&format!("bn{}", i + 1)), co, zero_init_residual && i == last)?;
            convs.push(ConvBn { conv, bn });
        }
        let downsample = if stride != 1 || c_in != c_out {
            let mut ds = s.child("downsample");
            let conv = Conv2d::build(&mut ds.child("0"), conv_cfg(c_in, c_out, 1, stride))?;
            let bn = BatchNorm2d::build(&mut ds.child("1"), c_out)?;
            Some(ConvBn { conv, bn })
        } else {
            None
        };
        Ok(ResBlock { convs, downsample, c_in, c_out, stride })
    }

    fn split(&self) -> Result<(&ConvBn, &[ConvBn])> {
        self.convs
            .split_first()
            .ok_or_else(|| crate::Error::Invalid { op: OP, detail: "a block without convolutions".into() })
    }

    /// Forward pass; moves `x` into the cache.
    pub fn forward<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        state: &mut B::Buf,
        x: Tensor<B>,
        train: bool,
    ) -> Result<(Tensor<B>, ResBlockCache<B>)> {
        let mut bns = Vec::with_capacity(self.convs.len());
        let mut inner = Vec::with_capacity(self.convs.len().saturating_sub(1));
        let (first, rest) = self.split()?;
        let h = first.conv.infer(b, params, &x)?;
        let (mut a, c) = first.bn.forward_owned(b, params, state, h, train)?;
        bns.push(c);
        for cb in rest {
            let r = relu(b, &a)?;
            let h = cb.conv.infer(b, params, &r)?;
            inner.push(Conv2dCache { x: r });
            let (a2, c) = cb.bn.forward_owned(b, params, state, h, train)?;
            a = a2;
            bns.push(c);
        }
        let ds = match &self.downsample {
            Some(ds) => {
                let h = ds.conv.infer(b, params, &x)?;
                let (d, c) = ds.bn.forward_owned(b, params, state, h, train)?;
                add_into(b, &mut a, &d)?;
                Some(c)
            }
            None => {
                add_into(b, &mut a, &x)?;
                None
            }
        };
        let y = relu(b, &a)?;
        Ok((y, ResBlockCache { input: Conv2dCache { x }, bn: bns, inner, downsample: ds }))
    }

    /// Evaluation-mode forward pass, no cache.
    pub fn infer<B: Backend>(&self, b: &B, params: &B::Buf, state: &B::Buf, x: &Tensor<B>) -> Result<Tensor<B>> {
        let (first, rest) = self.split()?;
        let h = first.conv.infer(b, params, x)?;
        let mut a = first.bn.infer(b, params, state, &h)?;
        for cb in rest {
            let r = relu(b, &a)?;
            let h = cb.conv.infer(b, params, &r)?;
            a = cb.bn.infer(b, params, state, &h)?;
        }
        match &self.downsample {
            Some(ds) => {
                let h = ds.conv.infer(b, params, x)?;
                add_into(b, &mut a, &ds.bn.infer(b, params, state, &h)?)?;
            }
            None => add_into(b, &mut a, x)?,
        }
        relu(b, &a)
    }

    /// Backward pass given the block output `y` (for the final ReLU) and `dy`; returns
    /// `dx`, accumulates parameter gradients into `grads`.
    pub fn backward<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &ResBlockCache<B>,
        y: &Tensor<B>,
        dy: &Tensor<B>,
    ) -> Result<Tensor<B>> {
        if cache.bn.len() != self.convs.len() || cache.inner.len() + 1 != self.convs.len() {
            return invalid(OP, "block cache does not match the block");
        }
        let da = relu_backward_from_output(b, y, dy)?;
        let mut d = da.duplicate(b)?;
        let mut dx = None;
        for i in (0..self.convs.len()).rev() {
            let dh = self.convs[i].bn.backward(b, params, grads, &cache.bn[i], &d)?;
            if i > 0 {
                let prev = &cache.inner[i - 1];
                let dr = self.convs[i].conv.backward(b, params, grads, prev, &dh)?;
                d = relu_backward_from_output(b, &prev.x, &dr)?;
            } else {
                dx = Some(self.convs[0].conv.backward(b, params, grads, &cache.input, &dh)?);
            }
        }
        let mut dx = dx.ok_or_else(|| crate::Error::Invalid { op: OP, detail: "empty block".into() })?;
        match (&self.downsample, &cache.downsample) {
            (Some(ds), Some(c)) => {
                let dh = ds.bn.backward(b, params, grads, c, &da)?;
                add_into(b, &mut dx, &ds.conv.backward(b, params, grads, &cache.input, &dh)?)?;
            }
            (None, None) => add_into(b, &mut dx, &da)?,
            _ => return invalid(OP, "downsample cache does not match the block"),
        }
        Ok(dx)
    }
}

/// A torchvision ResNet. See the module docs.
#[derive(Clone, Debug, PartialEq)]
pub struct ResNet {
    pub cfg: ResNetConfig,
    pub conv1: Conv2d,
    pub bn1: BatchNorm2d,
    /// `Some` for the ImageNet stem.
    pub maxpool: Option<MaxPool2d>,
    /// `layer1..layer4`.
    pub stages: [Vec<ResBlock>; 4],
    pub fc: Option<Linear>,
}

/// What [`ResNet::backward_features`] needs.
pub struct ResNetCache<B: Backend> {
    /// The input image (for `conv1`).
    pub stem: Conv2dCache<B>,
    pub bn1: BatchNormCache<B>,
    /// The stem ReLU output when a max-pool follows (otherwise it is the first block's
    /// input, cached there).
    pub stem_act: Option<Tensor<B>>,
    pub pool: Option<MaxPoolCache<B>>,
    /// Every block in order, `layer1.0` first.
    pub blocks: Vec<ResBlockCache<B>>,
    /// The returned feature map (the last block's output).
    pub features: Tensor<B>,
    pub train: bool,
}

/// What [`ResNet::classify_backward`] needs.
pub struct ClassifyCache<B: Backend> {
    pub feature_shape: Vec<usize>,
    /// The pooled features `[n, c]` (input of `fc`).
    pub fc: LinearCache<B>,
}

impl ResNet {
    /// Register a ResNet with its tensors under `prefix` (`""` gives torchvision's bare names).
    pub fn new(table: &mut ParamTable, prefix: &str, cfg: ResNetConfig) -> Result<Self> {
        Self::build(&mut Scope::new(table, prefix), cfg)
    }

    /// Register in a scope (fresh or shared).
    pub fn build(s: &mut Scope<'_>, cfg: ResNetConfig) -> Result<Self> {
        cfg.validate()?;
        let w0 = cfg.base_width;
        let (k, stride) = match cfg.stem {
            Stem::ImageNet => (7, 2),
            Stem::Small => (3, 1),
        };
        let conv1 = Conv2d::build(&mut s.child("conv1"), conv_cfg(cfg.in_channels, w0, k, stride))?;
        let bn1 = BatchNorm2d::build(&mut s.child("bn1"), w0)?;
        let maxpool = match cfg.stem {
            Stem::ImageNet => Some(MaxPool2d::new(3, 2, 1)?),
            Stem::Small => None,
        };
        let mut c_in = w0;
        let mut stages: [Vec<ResBlock>; 4] = Default::default();
        for (i, stage) in stages.iter_mut().enumerate() {
            let planes = w0 << i;
            let mut st = s.child(&format!("layer{}", i + 1));
            for j in 0..cfg.layers[i] {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                let blk = ResBlock::build(
                    &mut st.child(&format!("{j}")),
                    cfg.block,
                    c_in,
                    planes,
                    stride,
                    cfg.zero_init_residual,
                )?;
                c_in = blk.c_out;
                stage.push(blk);
            }
        }
        let fc = match cfg.num_classes {
            Some(classes) => {
                let mut f = s.child("fc");
                let init = Init::DefaultFanIn { fan_in: c_in };
                Some(Linear {
                    weight: f.param("weight", &[classes, c_in], init)?,
                    bias: Some(f.param("bias", &[classes], init)?),
                    d_in: c_in,
                    d_out: classes,
                })
            }
            None => None,
        };
        Ok(ResNet { cfg, conv1, bn1, maxpool, stages, fc })
    }

    /// Channels of the feature map.
    pub fn out_channels(&self) -> usize {
        self.cfg.out_channels()
    }

    /// Image-to-feature-map downsampling (32 or 8).
    pub fn stride(&self) -> usize {
        self.cfg.stride()
    }

    /// Every block in order.
    pub fn blocks(&self) -> impl Iterator<Item = &ResBlock> {
        self.stages.iter().flatten()
    }

    fn check_input(&self, x: &[usize]) -> Result<()> {
        if x.len() != 4 || x[1] != self.cfg.in_channels || x.contains(&0) {
            return shape_err(OP, format!("input {x:?} is not [n, {}, h, w]", self.cfg.in_channels));
        }
        Ok(())
    }

    /// Forward pass to the last feature map, with a cache. `train` selects batch
    /// statistics (updating the running ones in `state`) or the running statistics.
    pub fn forward_features<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        state: &mut B::Buf,
        x: &Tensor<B>,
        train: bool,
    ) -> Result<(Tensor<B>, ResNetCache<B>)> {
        self.check_input(x.shape())?;
        self.forward_features_owned(b, params, state, x.duplicate(b)?, train)
    }

    /// As [`ResNet::forward_features`], moving `x` into the cache.
    pub fn forward_features_owned<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        state: &mut B::Buf,
        x: Tensor<B>,
        train: bool,
    ) -> Result<(Tensor<B>, ResNetCache<B>)> {
        self.check_input(x.shape())?;
        let h = self.conv1.infer(b, params, &x)?;
        let (a, bn1) = self.bn1.forward_owned(b, params, state, h, train)?;
        let r = relu(b, &a)?;
        drop(a);
        let (mut h, stem_act, pool) = match &self.maxpool {
            Some(mp) => {
                let (p, c) = mp.forward(b, params, &r)?;
                (p, Some(r), Some(c))
            }
            None => (r, None, None),
        };
        let mut blocks = Vec::new();
        for blk in self.blocks() {
            let (y, c) = blk.forward(b, params, state, h, train)?;
            blocks.push(c);
            h = y;
        }
        let features = h.duplicate(b)?;
        Ok((h, ResNetCache { stem: Conv2dCache { x }, bn1, stem_act, pool, blocks, features, train }))
    }

    /// Evaluation-mode features (running statistics), no cache.
    pub fn infer_features<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        state: &B::Buf,
        x: &Tensor<B>,
    ) -> Result<Tensor<B>> {
        self.check_input(x.shape())?;
        let h = self.conv1.infer(b, params, x)?;
        let r = relu(b, &self.bn1.infer(b, params, state, &h)?)?;
        let mut h = match &self.maxpool {
            Some(mp) => mp.infer(b, params, &r)?,
            None => r,
        };
        for blk in self.blocks() {
            h = blk.infer(b, params, state, &h)?;
        }
        Ok(h)
    }

    /// Backward pass from the gradient of the feature map: returns `dx` (the image
    /// gradient) and accumulates every parameter gradient into `grads`.
    pub fn backward_features<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &ResNetCache<B>,
        dy: &Tensor<B>,
    ) -> Result<Tensor<B>> {
        let blocks: Vec<&ResBlock> = self.blocks().collect();
        if cache.blocks.len() != blocks.len() || cache.pool.is_some() != self.maxpool.is_some() {
            return invalid(OP, "cache does not match the network");
        }
        if dy.shape() != cache.features.shape() {
            return shape_err(OP, format!("dy {:?} vs features {:?}", dy.shape(), cache.features.shape()));
        }
        let mut d = dy.duplicate(b)?;
        for i in (0..blocks.len()).rev() {
            let y = match cache.blocks.get(i + 1) {
                Some(next) => &next.input.x,
                None => &cache.features,
            };
            d = blocks[i].backward(b, params, grads, &cache.blocks[i], y, &d)?;
        }
        let (d, act) = match (&self.maxpool, &cache.pool, &cache.stem_act) {
            (Some(mp), Some(pc), Some(act)) => (mp.backward(b, params, grads, pc, &d)?, act),
            (None, None, None) => match cache.blocks.first() {
                Some(first) => (d, &first.input.x),
                None => return invalid(OP, "a network without blocks"),
            },
            _ => return invalid(OP, "stem cache does not match the network"),
        };
        let da = relu_backward_from_output(b, act, &d)?;
        let dh = self.bn1.backward(b, params, grads, &cache.bn1, &da)?;
        self.conv1.backward(b, params, grads, &cache.stem, &dh)
    }

    fn head(&self) -> Result<&Linear> {
        self.fc
            .as_ref()
            .ok_or_else(|| crate::Error::Invalid { op: OP, detail: "no fc head (num_classes: None)".into() })
    }

    fn check_features(&self, s: &[usize]) -> Result<()> {
        if s.len() != 4 || s[1] != self.out_channels() || s.contains(&0) {
            return shape_err(OP, format!("features {s:?} are not [n, {}, h, w]", self.out_channels()));
        }
        Ok(())
    }

    /// Global average pool and `fc`: features `[n, c, h, w]` to logits `[n, classes]`.
    pub fn classify<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        features: &Tensor<B>,
    ) -> Result<(Tensor<B>, ClassifyCache<B>)> {
        let fc = self.head()?;
        self.check_features(features.shape())?;
        let pooled = ops::global_avg_pool(b, features)?;
        let (logits, c) = fc.forward_owned(b, params, pooled)?;
        Ok((logits, ClassifyCache { feature_shape: features.shape().to_vec(), fc: c }))
    }

    /// [`ResNet::classify`] without a cache.
    pub fn infer_classify<B: Backend>(&self, b: &B, params: &B::Buf, features: &Tensor<B>) -> Result<Tensor<B>> {
        let fc = self.head()?;
        self.check_features(features.shape())?;
        fc.infer(b, params, &ops::global_avg_pool(b, features)?)
    }

    /// Backward of [`ResNet::classify`]: the feature-map gradient; accumulates into the
    /// gradients of `fc`.
    pub fn classify_backward<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &ClassifyCache<B>,
        dlogits: &Tensor<B>,
    ) -> Result<Tensor<B>> {
        let fc = self.head()?;
        let dpooled = fc.backward(b, params, grads, &cache.fc, dlogits)?;
        ops::global_avg_pool_backward(b, &cache.feature_shape, &dpooled)
    }
}
