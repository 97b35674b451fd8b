//! RESPIX sliding-window statistics by summed-area tables in `f64`, parallel over
//! planes.

use super::par::{SyncPtr, CHUNK};
use super::Cpu;
use cim_core::Result;

impl Cpu {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn window_stats_impl(
        &self,
        nc: usize,
        h: usize,
        w: usize,
        k: usize,
        x: &[f32],
        mean: &mut [f32],
        var: &mut [f32],
    ) -> Result<()> {
        let hw = h * w;
        assert!(
            k > 0 && x.len() >= nc * hw && mean.len() >= nc * hw && var.len() >= nc * hw,
            "window_stats: bad arguments"
        );
        if hw == 0 {
            return Ok(());
        }
        let (before, after) = (k / 2, (k - 1) / 2);
        let sw = w + 1;
        let sat = (h + 1) * sw;
        let mp = SyncPtr::new(mean);
        let vp = SyncPtr::new(var);
        let workers = if nc * hw <= 4 * CHUNK { 1 } else { self.threads() };
        self.tasks::<f64>(workers, nc, 2 * sat, |t, scratch| {
            let x = &x[t * hw..(t + 1) * hw];
            let (s1, s2) = scratch.split_at_mut(sat);
            // Summed-area tables of x and x², with a zero first row and column.
            for i in 0..h {
                let (mut r1, mut r2) = (0f64, 0f64);
                for j in 0..w {
                    let v = x[i * w + j] as f64;
                    r1 += v;
                    r2 += v * v;
                    s1[(i + 1) * sw + j + 1] = s1[i * sw + j + 1] + r1;
                    s2[(i + 1) * sw + j + 1] = s2[i * sw + j + 1] + r2;
                }
            }
            // SAFETY: plane t of the outputs belongs to this task alone.
            let (mo, vo) = unsafe { (mp.slice(t * hw, hw), vp.slice(t * hw, hw)) };
            for i in 0..h {
                let (i0, i1) = (i.saturating_sub(before), (i + after).min(h - 1) + 1);
                for j in 0..w {
                    let (j0, j1) = (j.saturating_sub(before), (j + after).min(w - 1) + 1);
                    let box_sum = |s: &[f64]| s[i1 * sw + j1] - s[i0 * sw + j1] - s[i1 * sw + j0] + s[i0 * sw + j0];
                    let cnt = ((i1 - i0) * (j1 - j0)) as f64;
                    let m = box_sum(s1) / cnt;
                    let v = (box_sum(s2) / cnt - m * m).max(0.0);
                    mo[i * w + j] = m as f32;
                    vo[i * w + j] = v as f32;
                }
            }
        })
    }
}
