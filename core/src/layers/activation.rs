//! Stateless activations: exact `Gelu` and `Relu`. Each caches its input.

use super::{check_nonempty, check_same, produce, Layer};
use crate::backend::Backend;
use crate::error::Result;
use crate::tensor::Tensor;

/// The input of an activation, for its backward pass.
pub struct ActivationCache<B: Backend> {
    pub x: Tensor<B>,
}

/// What [`Gelu`] saves.
pub type GeluCache<B> = ActivationCache<B>;
/// What [`Relu`] saves.
pub type ReluCache<B> = ActivationCache<B>;

/// An elementwise activation from a forward and a backward kernel of the backend.
/// The `params` and `grads` buffers are not used (there are no parameters).
macro_rules! activation {
    ($(#[$doc:meta])* $name:ident, $forward:ident, $backward:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name;

        impl<B: Backend> Layer<B> for $name {
            type Cache = ActivationCache<B>;

            fn forward_owned(&self, b: &B, params: &B::Buf, x: Tensor<B>) -> Result<(Tensor<B>, ActivationCache<B>)> {
                let y = self.infer(b, params, &x)?;
                Ok((y, ActivationCache { x }))
            }

            fn infer(&self, b: &B, _params: &B::Buf, x: &Tensor<B>) -> Result<Tensor<B>> {
                check_nonempty(stringify!($name), x.shape(), 0)?;
                produce(b, x.shape(), |y| b.$forward(x.view(), y))
            }

            fn backward(
                &self,
                b: &B,
                _params: &B::Buf,
                _grads: &mut B::Buf,
                cache: &ActivationCache<B>,
                dy: &Tensor<B>,
            ) -> Result<Tensor<B>> {
                let x = &cache.x;
                check_same(stringify!($name), "dy", dy.shape(), x.shape())?;
                produce(b, x.shape(), |dx| b.$backward(x.view(), dy.view(), dx))
            }
        }
    };
}

activation!(
    /// Exact GELU, `0.5 · x · (1 + erf(x / √2))` (PyTorch's default, timm's `nn.GELU`).
    Gelu,
    gelu,
    gelu_backward
);

activation!(
    /// `max(x, 0)`; the gradient at 0 is 0, as PyTorch.
    Relu,
    relu,
    relu_backward
);
