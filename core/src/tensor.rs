//! Tensors: a shape plus a buffer owned by a backend; views into buffers.
//!
//! Layouts are row-major (C order); images are NCHW.

use crate::backend::Backend;
use crate::error::{invalid, shape_err, Result};
use alloc::format;
use alloc::vec::Vec;

/// Number of elements of a shape (1 for a scalar, rank 0).
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// A read-only window `[offset, offset + len)` into a backend buffer.
pub struct View<'a, S: ?Sized> {
    pub buf: &'a S,
    pub offset: usize,
    pub len: usize,
}

impl<S: ?Sized> Clone for View<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S: ?Sized> Copy for View<'_, S> {}

/// A writable window `[offset, offset + len)` into a backend buffer.
pub struct ViewMut<'a, S: ?Sized> {
    pub buf: &'a mut S,
    pub offset: usize,
    pub len: usize,
}

impl<'a, S: ?Sized> ViewMut<'a, S> {
    /// Reborrow, so one `ViewMut` can be passed to several calls in turn.
    pub fn reborrow(&mut self) -> ViewMut<'_, S> {
        ViewMut { buf: self.buf, offset: self.offset, len: self.len }
    }
    /// The same window, read-only.
    pub fn as_view(&self) -> View<'_, S> {
        View { buf: self.buf, offset: self.offset, len: self.len }
    }
}

impl<'a, T> View<'a, [T]> {
    /// A view of a whole slice.
    pub fn of(s: &'a [T]) -> Self {
        View { buf: s, offset: 0, len: s.len() }
    }
}

impl<'a, T> View<'a, Vec<T>> {
    /// The viewed elements of a host buffer.
    pub fn slice(&self) -> &'a [T] {
        &self.buf[self.offset..self.offset + self.len]
    }
}

impl<'a, T> ViewMut<'a, Vec<T>> {
    /// The viewed elements of a host buffer.
    pub fn slice(self) -> &'a mut [T] {
        &mut self.buf[self.offset..self.offset + self.len]
    }
}

/// A dense floating-point tensor: a shape and a buffer of `B::E` owned by backend `B`.
pub struct Tensor<B: Backend> {
    shape: Vec<usize>,
    buf: B::Buf,
}

impl<B: Backend> Tensor<B> {
    /// A zero-filled tensor.
    pub fn zeros(b: &B, shape: &[usize]) -> Result<Self> {
        Ok(Tensor { shape: shape.to_vec(), buf: b.alloc(numel(shape))? })
    }

    /// A tensor filled with `v`.
    pub fn full(b: &B, shape: &[usize], v: B::E) -> Result<Self> {
        let mut t = Self::zeros(b, shape)?;
        b.fill(t.view_mut(), v)?;
        Ok(t)
    }

    /// Upload host data; `data.len()` must equal the shape's element count.
    pub fn from_slice(b: &B, shape: &[usize], data: &[B::E]) -> Result<Self> {
        if numel(shape) != data.len() {
            return shape_err(
                "Tensor::from_slice",
                format!("shape {:?} holds {} elements, data has {}", shape, numel(shape), data.len()),
            );
        }
        Ok(Tensor { shape: shape.to_vec(), buf: b.upload(data)? })
    }

    /// Upload host `f64` data, converting to the backend's element type.
    pub fn from_f64(b: &B, shape: &[usize], data: &[f64]) -> Result<Self> {
        let v: Vec<B::E> = data.iter().map(|&x| crate::Element::of(x)).collect();
        Self::from_slice(b, shape, &v)
    }

    /// Wrap a buffer already holding `numel(shape)` elements.
    pub fn from_buf(b: &B, shape: &[usize], buf: B::Buf) -> Result<Self> {
        if b.len(&buf) != numel(shape) {
            return shape_err(
                "Tensor::from_buf",
                format!("shape {:?} holds {} elements, buffer has {}", shape, numel(shape), b.len(&buf)),
            );
        }
        Ok(Tensor { shape: shape.to_vec(), buf })
    }

    /// Download to the host.
    pub fn to_vec(&self, b: &B) -> Result<Vec<B::E>> {
        b.download(self.view())
    }

    /// Download to the host as `f64`.
    pub fn to_f64(&self, b: &B) -> Result<Vec<f64>> {
        Ok(self.to_vec(b)?.into_iter().map(crate::Element::f64).collect())
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn buf(&self) -> &B::Buf {
        &self.buf
    }
    pub fn into_buf(self) -> B::Buf {
        self.buf
    }
    pub fn view(&self) -> View<'_, B::Buf> {
        View { buf: &self.buf, offset: 0, len: numel(&self.shape) }
    }
    pub fn view_mut(&mut self) -> ViewMut<'_, B::Buf> {
        let len = numel(&self.shape);
        ViewMut { buf: &mut self.buf, offset: 0, len }
    }

    /// Same data, new shape with the same element count.
    pub fn reshape(self, shape: &[usize]) -> Result<Self> {
        if numel(shape) != self.numel() {
            return shape_err("reshape", format!("{:?} -> {:?} changes the element count", self.shape, shape));
        }
        Ok(Tensor { shape: shape.to_vec(), buf: self.buf })
    }

    /// A copy on the same backend.
    pub fn duplicate(&self, b: &B) -> Result<Self> {
        let mut t = Self::zeros(b, &self.shape)?;
        b.copy(self.view(), t.view_mut())?;
        Ok(t)
    }
}

/// A tensor of `u32` indices (tokens, classes, pooling argmax positions), owned by backend `B`.
pub struct IndexTensor<B: Backend> {
    shape: Vec<usize>,
    buf: B::IBuf,
}

impl<B: Backend> IndexTensor<B> {
    pub fn zeros(b: &B, shape: &[usize]) -> Result<Self> {
        Ok(IndexTensor { shape: shape.to_vec(), buf: b.alloc_idx(numel(shape))? })
    }
    pub fn from_slice(b: &B, shape: &[usize], data: &[u32]) -> Result<Self> {
        if numel(shape) != data.len() {
            return invalid(
                "IndexTensor::from_slice",
                format!("shape {:?} holds {} elements, data has {}", shape, numel(shape), data.len()),
            );
        }
        Ok(IndexTensor { shape: shape.to_vec(), buf: b.upload_idx(data)? })
    }
    pub fn to_vec(&self, b: &B) -> Result<Vec<u32>> {
        b.download_idx(self.view())
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
    pub fn view(&self) -> View<'_, B::IBuf> {
        View { buf: &self.buf, offset: 0, len: numel(&self.shape) }
    }
    pub fn view_mut(&mut self) -> ViewMut<'_, B::IBuf> {
        let len = numel(&self.shape);
        ViewMut { buf: &mut self.buf, offset: 0, len }
    }
    pub fn reshape(self, shape: &[usize]) -> Result<Self> {
        if numel(shape) != self.numel() {
            return shape_err("reshape", format!("{:?} -> {:?} changes the element count", self.shape, shape));
        }
        Ok(IndexTensor { shape: shape.to_vec(), buf: self.buf })
    }
}
