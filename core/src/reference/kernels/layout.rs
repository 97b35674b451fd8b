//! Layout changes: axis permutation.

/// `y = x.permute(perm)`: `x` has `shape`; `y` has shape `[shape[perm[0]], ...]`,
/// and `y[i_0, .., i_{r-1}] = x[j]` where `j[perm[a]] = i_a`.
pub fn permute<T: Copy>(shape: &[usize], perm: &[usize], x: &[T], y: &mut [T]) {
    let r = shape.len();
    // Row-major strides of x, taken in y's axis order.
    let mut x_strides = alloc::vec![1usize; r];
    for a in (0..r.saturating_sub(1)).rev() {
        x_strides[a] = x_strides[a + 1] * shape[a + 1];
    }
    let out_shape: alloc::vec::Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let strides: alloc::vec::Vec<usize> = perm.iter().map(|&p| x_strides[p]).collect();
    let mut idx = alloc::vec![0usize; r];
    let mut src = 0usize;
    for out in y.iter_mut() {
        *out = x[src];
        // Odometer increment over y's index, tracking the source offset.
        for a in (0..r).rev() {
            idx[a] += 1;
            src += strides[a];
            if idx[a] < out_shape[a] {
                break;
            }
            src -= strides[a] * out_shape[a];
            idx[a] = 0;
        }
    }
}
