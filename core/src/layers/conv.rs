//! `Conv2d`: 2-D cross-correlation on NCHW, PyTorch layout (`weight: [out, in, kh, kw]`).

use super::{check_nonempty, check_same, opt_pview, produce, pview, pview_mut, Layer, Scope};
use crate::backend::{self, Backend};
use crate::error::{invalid, shape_err, Result};
use crate::params::{Init, Param, ParamTable};
use crate::tensor::Tensor;
use alloc::format;

const OP: &str = "Conv2d";

/// Hyper-parameters of a [`Conv2d`]. [`Conv2dConfig::new`] gives PyTorch's defaults
/// (stride 1, no padding, with bias) with torchvision ResNet's weight initialization
/// (`Init::KaimingNormalFanOut`) and zero biases.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Conv2dConfig {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub bias: bool,
    pub init: Init,
    pub bias_init: Init,
}

impl Conv2dConfig {
    /// A square `kernel × kernel` convolution from `c_in` to `c_out` channels.
    pub fn new(c_in: usize, c_out: usize, kernel: usize) -> Self {
        Conv2dConfig {
            c_in,
            c_out,
            kernel: (kernel, kernel),
            stride: (1, 1),
            padding: (0, 0),
            bias: true,
            init: Init::KaimingNormalFanOut,
            bias_init: Init::Zeros,
        }
    }
    /// The same stride along both axes.
    pub fn stride(self, s: usize) -> Self {
        Conv2dConfig { stride: (s, s), ..self }
    }
    /// The same zero padding along both axes.
    pub fn padding(self, p: usize) -> Self {
        Conv2dConfig { padding: (p, p), ..self }
    }
    pub fn bias(self, bias: bool) -> Self {
        Conv2dConfig { bias, ..self }
    }
    /// The weight initialization.
    pub fn init(self, init: Init) -> Self {
        Conv2dConfig { init, ..self }
    }
    pub fn bias_init(self, bias_init: Init) -> Self {
        Conv2dConfig { bias_init, ..self }
    }
}

/// A 2-D convolution layer (zero padding, no dilation, no groups).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Conv2d {
    pub weight: Param,
    pub bias: Option<Param>,
    pub cfg: Conv2dConfig,
}

/// The input, for the weight gradient.
pub struct Conv2dCache<B: Backend> {
    pub x: Tensor<B>,
}

impl Conv2d {
    /// Register `{prefix}.weight` and (when `cfg.bias`) `{prefix}.bias`.
    pub fn new(table: &mut ParamTable, prefix: &str, cfg: Conv2dConfig) -> Result<Self> {
        Self::build(&mut Scope::new(table, prefix), cfg)
    }

    /// Share the tensors registered under `existing`.
    pub fn shared(table: &mut ParamTable, prefix: &str, existing: &str, cfg: Conv2dConfig) -> Result<Self> {
        Self::build(&mut Scope::shared(table, prefix, existing), cfg)
    }

    /// Register in a scope (fresh or shared).
    pub fn build(s: &mut Scope<'_>, cfg: Conv2dConfig) -> Result<Self> {
        let (kh, kw) = cfg.kernel;
        if kh == 0 || kw == 0 || cfg.stride.0 == 0 || cfg.stride.1 == 0 {
            return invalid(OP, format!("kernel {:?} and stride {:?} must be positive", cfg.kernel, cfg.stride));
        }
        let weight = s.param("weight", &[cfg.c_out, cfg.c_in, kh, kw], cfg.init)?;
        let bias = if cfg.bias { Some(s.param("bias", &[cfg.c_out], cfg.bias_init)?) } else { None };
        Ok(Conv2d { weight, bias, cfg })
    }

    /// The backend problem for input shape `x`, after validation.
    fn problem(&self, x: &[usize]) -> Result<backend::Conv2d> {
        check_nonempty(OP, x, 4)?;
        let c = &self.cfg;
        if x.len() != 4 || x[1] != c.c_in {
            return shape_err(OP, format!("input {x:?} is not [n, {}, h, w]", c.c_in));
        }
        if x[2] + 2 * c.padding.0 < c.kernel.0 || x[3] + 2 * c.padding.1 < c.kernel.1 {
            return shape_err(
                OP,
                format!("input {x:?} with padding {:?} is smaller than the kernel {:?}", c.padding, c.kernel),
            );
        }
        Ok(backend::Conv2d {
            n: x[0],
            c_in: c.c_in,
            h: x[2],
            w: x[3],
            c_out: c.c_out,
            kh: c.kernel.0,
            kw: c.kernel.1,
            stride: c.stride,
            pad: c.padding,
        })
    }
}

fn y_shape(p: &backend::Conv2d) -> [usize; 4] {
    [p.n, p.c_out, p.out_h(), p.out_w()]
}

impl<B: Backend> Layer<B> for Conv2d {
    type Cache = Conv2dCache<B>;

    fn forward_owned(&self, b: &B, params: &B::Buf, x: Tensor<B>) -> Result<(Tensor<B>, Conv2dCache<B>)> {
        let y = self.infer(b, params, &x)?;
        Ok((y, Conv2dCache { x }))
    }

    fn infer(&self, b: &B, params: &B::Buf, x: &Tensor<B>) -> Result<Tensor<B>> {
        let p = self.problem(x.shape())?;
        let w = pview(b, &self.weight, params)?;
        let bias = opt_pview(b, &self.bias, params)?;
        produce(b, &y_shape(&p), |y| b.conv2d(&p, x.view(), w, bias, y))
    }

    fn backward(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        cache: &Conv2dCache<B>,
        dy: &Tensor<B>,
    ) -> Result<Tensor<B>> {
        let x = &cache.x;
        let p = self.problem(x.shape())?;
        check_same(OP, "dy", dy.shape(), &y_shape(&p))?;
        b.conv2d_grad_weight(&p, x.view(), dy.view(), pview_mut(b, &self.weight, grads)?)?;
        if let Some(bias) = &self.bias {
            b.conv2d_grad_bias(&p, dy.view(), pview_mut(b, bias, grads)?)?;
        }
        let w = pview(b, &self.weight, params)?;
        produce(b, x.shape(), |dx| b.conv2d_grad_input(&p, dy.view(), w, dx))
    }
}
