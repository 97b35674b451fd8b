//! `MaxPool2d` on NCHW (PyTorch semantics: padding counts as `-inf`, floor mode).

use super::{check_nonempty, check_same, produce, Layer};
use crate::backend::{Backend, Pool2d};
use crate::error::{invalid, shape_err, Result};
use crate::tensor::{IndexTensor, Tensor};
use alloc::format;
use alloc::vec::Vec;

const OP: &str = "MaxPool2d";

/// Max pooling over `kernel` windows with `stride` and `padding` (no parameters; the
/// `params` and `grads` buffers are not used).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool2d {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
}

/// The position of each output's maximum within its input plane, and the input shape.
pub struct MaxPoolCache<B: Backend> {
    pub idx: IndexTensor<B>,
    pub x_shape: Vec<usize>,
}

impl MaxPool2d {
    /// Square windows, as `nn.MaxPool2d(kernel, stride, padding)`. The kernel and stride
    /// must be positive and the padding at most half the kernel (PyTorch's rule).
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Result<Self> {
        if kernel == 0 || stride == 0 || 2 * padding > kernel {
            return invalid(
                OP,
                format!("kernel {kernel}, stride {stride}, padding {padding}: need kernel, stride > 0 and padding <= kernel / 2"),
            );
        }
        Ok(MaxPool2d { kernel: (kernel, kernel), stride: (stride, stride), padding: (padding, padding) })
    }

    /// The backend problem for input shape `x`, after validation.
    fn problem(&self, x: &[usize]) -> Result<Pool2d> {
        check_nonempty(OP, x, 4)?;
        if x.len() != 4 {
            return shape_err(OP, format!("input {x:?} is not [n, c, h, w]"));
        }
        if x[2] + 2 * self.padding.0 < self.kernel.0 || x[3] + 2 * self.padding.1 < self.kernel.1 {
            return shape_err(
                OP,
                format!("input {x:?} with padding {:?} is smaller than the kernel {:?}", self.padding, self.kernel),
            );
        }
        Ok(Pool2d {
            n: x[0],
            c: x[1],
            h: x[2],
            w: x[3],
            kh: self.kernel.0,
            kw: self.kernel.1,
            stride: self.stride,
            pad: self.padding,
            count_include_pad: false,
        })
    }

    fn run<B: Backend>(&self, b: &B, x: &Tensor<B>) -> Result<(Tensor<B>, MaxPoolCache<B>)> {
        let p = self.problem(x.shape())?;
        let shape = [p.n, p.c, p.out_h(), p.out_w()];
        let mut idx = IndexTensor::zeros(b, &shape)?;
        let y = produce(b, &shape, |y| b.max_pool2d(&p, x.view(), y, idx.view_mut()))?;
        Ok((y, MaxPoolCache { idx, x_shape: x.shape().to_vec() }))
    }
}

impl<B: Backend> Layer<B> for MaxPool2d {
    type Cache = MaxPoolCache<B>;

    fn forward_owned(&self, b: &B, _params: &B::Buf, x: Tensor<B>) -> Result<(Tensor<B>, MaxPoolCache<B>)> {
        self.run(b, &x)
    }

    /// The input is not needed by the backward pass, so nothing is copied.
    fn forward(&self, b: &B, _params: &B::Buf, x: &Tensor<B>) -> Result<(Tensor<B>, MaxPoolCache<B>)> {
        self.run(b, x)
    }

    fn backward(
        &self,
        b: &B,
        _params: &B::Buf,
        _grads: &mut B::Buf,
        cache: &MaxPoolCache<B>,
        dy: &Tensor<B>,
    ) -> Result<Tensor<B>> {
        let p = self.problem(&cache.x_shape)?;
        check_same(OP, "dy", dy.shape(), cache.idx.shape())?;
        produce(b, &cache.x_shape, |dx| b.max_pool2d_backward(&p, dy.view(), cache.idx.view(), dx))
    }
}
