//! Host-side launch logic, free of CUDA and tested on the host: kernel arguments and
//! their check against the parsed signatures, grid sizes, and the shape arithmetic
//! (axis coalescing for broadcasts and permutations, convolution chunking).

use crate::kernels::{ArgKind, Signature};

/// Threads per block of every launch.
pub const BLOCK: u32 = 256;
/// The most blocks of one launch; kernels are grid-stride loops, so larger problems
/// just loop.
pub const MAX_BLOCKS: u32 = 1 << 16;

/// One kernel argument, by value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    U64(u64),
    F32(f32),
    F64(f64),
    Dims8([i64; 8]),
}

impl Arg {
    pub fn kind(&self) -> ArgKind {
        match self {
            Arg::Ptr(_) => ArgKind::Ptr,
            Arg::I32(_) => ArgKind::I32,
            Arg::I64(_) => ArgKind::I64,
            Arg::U64(_) => ArgKind::U64,
            Arg::F32(_) => ArgKind::F32,
            Arg::F64(_) => ArgKind::F64,
            Arg::Dims8(_) => ArgKind::Dims8,
        }
    }

    /// A pointer to the value, as `cuLaunchKernel` wants its `kernelParams` entries.
    /// Valid while `self` is neither moved nor dropped.
    pub fn as_param(&mut self) -> *mut std::ffi::c_void {
        match self {
            Arg::Ptr(v) | Arg::U64(v) => v as *mut u64 as *mut _,
            Arg::I32(v) => v as *mut i32 as *mut _,
            Arg::I64(v) => v as *mut i64 as *mut _,
            Arg::F32(v) => v as *mut f32 as *mut _,
            Arg::F64(v) => v as *mut f64 as *mut _,
            Arg::Dims8(v) => v.as_mut_ptr() as *mut _,
        }
    }
}

/// `usize` as a kernel's `long long`.
pub fn i64_arg(v: usize) -> Arg {
    Arg::I64(v as i64)
}

/// Check `args` against the kernel's declared parameters.
pub fn check_args(sig: &Signature, args: &[Arg]) -> Result<(), String> {
    if sig.params.len() != args.len() {
        return Err(format!("kernel {} takes {} arguments, {} given", sig.name, sig.params.len(), args.len()));
    }
    for (i, ((ty, kind), arg)) in sig.params.iter().zip(args).enumerate() {
        if *kind != arg.kind() {
            return Err(format!("kernel {}: argument {i} is `{ty}`, got {:?}", sig.name, arg));
        }
    }
    Ok(())
}

/// Blocks for a grid-stride loop over `n` items (`None`: nothing to launch).
pub fn blocks_for(n: usize) -> Option<u32> {
    if n == 0 {
        return None;
    }
    Some(n.div_ceil(BLOCK as usize).min(MAX_BLOCKS as usize) as u32)
}

/// An output of `shape` read through per-axis element `strides` of one or more
/// operands, simplified: axes of size 1 dropped, and neighbouring axes merged where
/// every operand walks them as one (`stride[a] == stride[a+1] · shape[a+1]`).
/// Returns the new shape and the new strides of each operand (rank ≥ 1).
pub fn coalesce(shape: &[usize], strides: &[Vec<usize>]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut out_shape: Vec<usize> = Vec::new();
    let mut out_strides: Vec<Vec<usize>> = vec![Vec::new(); strides.len()];
    for a in 0..shape.len() {
        if shape[a] == 1 {
            continue;
        }
        let merge = match out_shape.last() {
            Some(_) => strides.iter().zip(&out_strides).all(|(s, o)| *o.last().unwrap_or(&0) == s[a] * shape[a]),
            None => false,
        };
        if merge {
            let last = out_shape.len() - 1;
            out_shape[last] *= shape[a];
            for (s, o) in strides.iter().zip(out_strides.iter_mut()) {
                o[last] = s[a];
            }
        } else {
            out_shape.push(shape[a]);
            for (s, o) in strides.iter().zip(out_strides.iter_mut()) {
                o.push(s[a]);
            }
        }
    }
    if out_shape.is_empty() {
        out_shape.push(1);
        for o in out_strides.iter_mut() {
            o.push(0);
        }
    }
    (out_shape, out_strides)
}

/// Row-major strides of `shape` as seen from an output of the same rank: axes of size
/// 1 get stride 0 (broadcast).
pub fn broadcast_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0usize; shape.len()];
    let mut s = 1usize;
    for ax in (0..shape.len()).rev() {
        strides[ax] = if shape[ax] == 1 { 0 } else { s };
        s *= shape[ax];
    }
    strides
}

/// The output shape and source strides of `x.permute(perm)` for `x` of `shape`.
pub fn permute_plan(shape: &[usize], perm: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let r = shape.len();
    let mut x_strides = vec![1usize; r];
    for a in (0..r.saturating_sub(1)).rev() {
        x_strides[a] = x_strides[a + 1] * shape[a + 1];
    }
    (perm.iter().map(|&p| shape[p]).collect(), perm.iter().map(|&p| x_strides[p]).collect())
}

/// Pack up to eight values as a `Dims8` argument.
pub fn dims8(v: &[usize]) -> Result<Arg, String> {
    if v.len() > 8 {
        return Err(format!("{} axes after simplification; the kernels take at most 8", v.len()));
    }
    let mut d = [0i64; 8];
    for (o, &x) in d.iter_mut().zip(v) {
        *o = x as i64;
    }
    Ok(Arg::Dims8(d))
}

/// Offset of flat index `i` under `shape`/`strides`: the kernels' `cim_strided`.
pub fn strided_offset(mut i: usize, shape: &[usize], strides: &[usize]) -> usize {
    let mut off = 0;
    for a in (0..shape.len()).rev() {
        off += (i % shape[a]) * strides[a];
        i /= shape[a];
    }
    off
}

/// Images per im2col chunk: all of them if the column buffer (`per_image` elements
/// each) fits in `limit` elements, else as many as fit (at least one).
pub fn conv_chunk(n: usize, per_image: usize, limit: usize) -> usize {
    if n == 0 {
        return 0;
    }
    (limit / per_image.max(1)).clamp(1, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::classify_param;
    use cim_core::reference::kernels;

    #[test]
    fn args_are_checked_against_signatures() {
        let sig = Signature {
            name: "k".into(),
            params: ["const float* x", "long long n", "double a"].iter().map(|p| classify_param(p).unwrap()).collect(),
        };
        assert!(check_args(&sig, &[Arg::Ptr(8), Arg::I64(3), Arg::F64(1.0)]).is_ok());
        assert!(check_args(&sig, &[Arg::Ptr(8), Arg::I32(3), Arg::F64(1.0)]).is_err());
        assert!(check_args(&sig, &[Arg::Ptr(8), Arg::I64(3)]).is_err());
    }

    #[test]
    fn params_point_at_their_values() {
        let mut a = Arg::F32(1.5);
        let p = a.as_param() as *const f32;
        assert_eq!(unsafe { *p }, 1.5);
        let mut d = Arg::Dims8([1, 2, 3, 4, 5, 6, 7, 8]);
        let p = d.as_param() as *const i64;
        assert_eq!(unsafe { *p.add(7) }, 8);
    }

    #[test]
    fn grids() {
        assert_eq!(blocks_for(0), None);
        assert_eq!(blocks_for(1), Some(1));
        assert_eq!(blocks_for(256), Some(1));
        assert_eq!(blocks_for(257), Some(2));
        assert_eq!(blocks_for(usize::MAX / 2), Some(MAX_BLOCKS));
    }

    /// Broadcast binary addressing through `coalesce` equals the reference's odometer.
    #[test]
    fn coalesced_broadcasts_address_like_the_reference() {
        let cases: &[(&[usize], &[usize], &[usize])] = &[
            (&[2, 3, 4], &[2, 3, 4], &[2, 3, 4]),
            (&[2, 3, 4], &[1, 3, 1], &[2, 3, 4]),
            (&[1, 1, 4], &[2, 3, 1], &[2, 3, 4]),
            (&[5, 1, 1, 2], &[5, 3, 7, 2], &[5, 3, 7, 2]),
            (&[1], &[1], &[1]),
            (&[], &[], &[]),
            (&[3, 1, 2, 1, 4], &[1, 6, 1, 5, 4], &[3, 6, 2, 5, 4]),
        ];
        for (sa, sb, so) in cases {
            let total: usize = so.iter().product();
            let a: Vec<f64> = (0..sa.iter().product::<usize>()).map(|i| i as f64).collect();
            let b: Vec<f64> = (0..sb.iter().product::<usize>()).map(|i| 1000.0 * i as f64).collect();
            let mut want = vec![0.0; total];
            kernels::binary(cim_core::backend::BinaryOp::Add, &a, sa, &b, sb, &mut want, so);
            let (shape, st) = coalesce(so, &[broadcast_strides(sa), broadcast_strides(sb)]);
            assert!(shape.len() <= so.len().max(1));
            let got: Vec<f64> = (0..total)
                .map(|i| a[strided_offset(i, &shape, &st[0])] + b[strided_offset(i, &shape, &st[1])])
                .collect();
            assert_eq!(got, want, "{sa:?} {sb:?} {so:?}");
        }
        // Same shapes collapse to one axis.
        let (shape, _) = coalesce(&[2, 3, 4], &[broadcast_strides(&[2, 3, 4]), broadcast_strides(&[2, 3, 4])]);
        assert_eq!(shape, vec![24]);
    }

    #[test]
    fn coalesced_permutations_match_the_reference() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[2, 3, 4], &[0, 1, 2]),
            (&[2, 3, 4], &[2, 0, 1]),
            (&[2, 3, 4, 5], &[0, 2, 1, 3]),
            (&[1, 3, 1, 5], &[3, 2, 1, 0]),
            (&[4], &[0]),
            (&[2, 2, 2, 2, 2, 2, 2, 2, 2, 2], &[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]),
        ];
        for (shape, perm) in cases {
            let n: usize = shape.iter().product();
            let x: Vec<u32> = (0..n as u32).collect();
            let mut want = vec![0u32; n];
            kernels::permute(shape, perm, &x, &mut want);
            let (out_shape, src) = permute_plan(shape, perm);
            let (cs, st) = coalesce(&out_shape, &[src]);
            let got: Vec<u32> = (0..n).map(|i| x[strided_offset(i, &cs, &st[0])]).collect();
            assert_eq!(got, want, "{shape:?} {perm:?}");
        }
        // A full reversal of ten axes cannot be merged: more than the kernels take.
        let (out_shape, src) = permute_plan(&[2; 10], &[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]);
        assert!(dims8(&coalesce(&out_shape, &[src]).0).is_err());
    }

    #[test]
    fn conv_chunks() {
        assert_eq!(conv_chunk(0, 10, 100), 0);
        assert_eq!(conv_chunk(8, 10, 100), 8);
        assert_eq!(conv_chunk(8, 30, 100), 3);
        assert_eq!(conv_chunk(8, 1000, 100), 1);
        assert_eq!(conv_chunk(8, 0, 100), 8);
    }
}
