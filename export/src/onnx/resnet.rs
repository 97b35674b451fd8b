//! The ResNet backbone as ONNX: every convolution with its batch norm folded in
//! (evaluation mode), ReLU, the stem's max-pool, residual blocks. Output: the last
//! feature map `[N, C, H/s, W/s]`, as `ResNet::infer_features`.

use super::graph::{Attr, Graph};
use super::layers::{conv_bn, Weights};
use cim_core::models::resnet::{ResBlock, ResNet};
use cim_core::{Backend, Result};

/// The feature map of image `x` (`[N, C, H, W]`).
pub(crate) fn features<B: Backend>(g: &mut Graph, w: &Weights<'_, B>, r: &ResNet, x: &str) -> Result<String> {
    let y = conv_bn(g, w, &r.conv1, Some(&r.bn1), x, "conv1")?;
    let mut h = g.node("Relu", &[&y], "relu", &[])?;
    if let Some(mp) = &r.maxpool {
        let (k, s, p) = (mp.kernel, mp.stride, mp.padding);
        let attrs = [
            Attr::Ints("kernel_shape", &[k.0 as i64, k.1 as i64]),
            Attr::Ints("strides", &[s.0 as i64, s.1 as i64]),
            Attr::Ints("pads", &[p.0 as i64, p.1 as i64, p.0 as i64, p.1 as i64]),
        ];
        h = g.node("MaxPool", &[&h], "maxpool", &attrs)?;
    }
    for (i, stage) in r.stages.iter().enumerate() {
        for (j, blk) in stage.iter().enumerate() {
            h = block(g, w, blk, &h, &format!("layer{}.{j}", i + 1))?;
        }
    }
    Ok(h)
}

/// `relu(main(x) + shortcut(x))`.
fn block<B: Backend>(g: &mut Graph, w: &Weights<'_, B>, blk: &ResBlock, x: &str, name: &str) -> Result<String> {
    let mut h = x.to_string();
    let last = blk.convs.len().saturating_sub(1);
    for (i, cb) in blk.convs.iter().enumerate() {
        h = conv_bn(g, w, &cb.conv, Some(&cb.bn), &h, &format!("{name}.conv{}", i + 1))?;
        if i < last {
            h = g.node("Relu", &[&h], &format!("{name}.relu{}", i + 1), &[])?;
        }
    }
    let shortcut = match &blk.downsample {
        Some(ds) => conv_bn(g, w, &ds.conv, Some(&ds.bn), x, &format!("{name}.downsample"))?,
        None => x.to_string(),
    };
    let s = g.node("Add", &[&h, &shortcut], &format!("{name}.add"), &[])?;
    g.node("Relu", &[&s], &format!("{name}.out"), &[])
}
