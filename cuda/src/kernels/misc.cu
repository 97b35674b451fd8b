// Reductions, embedding rows, RESPIX window statistics, im2col/col2im for the
// convolutions, the gradient norm and the fused AdamW step.

// Reduce the middle axis of [outer, axis, inner]. op: 0 Sum, 1 Mean, 2 Max.
CIM_KERNEL cim_reduce(int op, const float* x, float* y, long long outer, long long axis, long long inner) {
    CIM_LOOP(t, outer * inner) {
        long long o = t / inner, i = t % inner;
        double r;
        if (op == 2) {
            r = -cim_inf_d();
            for (long long a = 0; a < axis; ++a) r = cim_max_nan(r, (double)x[(o * axis + a) * inner + i]);
        } else {
            double s = 0.0;
            for (long long a = 0; a < axis; ++a) s += (double)x[(o * axis + a) * inner + i];
            r = op == 1 ? (axis == 0 ? 0.0 : s / (double)axis) : s;
        }
        y[t] = (float)r;
    }
}

// partial[t] = Σ x² over chunk t of `chunk` elements (first pass of sum_squares).
CIM_KERNEL cim_sum_squares_partial(const float* x, double* partial, long long n, long long chunk, long long parts) {
    CIM_LOOP(t, parts) {
        long long lo = t * chunk, hi = lo + chunk < n ? lo + chunk : n;
        double s = 0.0;
        for (long long i = lo; i < hi; ++i) {
            double v = (double)x[i];
            s += v * v;
        }
        partial[t] = s;
    }
}

// out[0] = Σ partial (second pass, one thread).
CIM_KERNEL cim_sum_partials(const double* partial, float* out, long long parts) {
    CIM_LOOP(t, 1) {
        double s = 0.0;
        for (long long i = 0; i < parts; ++i) s += partial[i];
        out[0] = (float)s;
    }
}

// db[co] += Σ_{n, p} dy[n, co, p] (conv bias gradient).
CIM_KERNEL cim_channel_sum_acc(const float* dy, float* db, long long n, long long c, long long plane) {
    CIM_LOOP(co, c) {
        double s = 0.0;
        for (long long ni = 0; ni < n; ++ni)
            for (long long p = 0; p < plane; ++p) s += (double)dy[(ni * c + co) * plane + p];
        db[co] = (float)((double)db[co] + s);
    }
}

CIM_KERNEL cim_gather_rows(const float* table, const unsigned int* ids, float* out, long long count, long long d) {
    CIM_LOOP(t, count * d) {
        long long i = t / d, j = t % d;
        out[t] = table[(long long)ids[i] * d + j];
    }
}

// table[ids[i], :] += src[i, :]; repeated ids meet in float atomics (order not fixed).
CIM_KERNEL cim_scatter_add_rows(const unsigned int* ids, const float* src, float* table, long long count, long long d) {
    CIM_LOOP(t, count * d) {
        long long i = t / d, j = t % d;
        cim_atomic_add(&table[(long long)ids[i] * d + j], src[t]);
    }
}

// RESPIX windows: rows i - k/2 ..= i + (k-1)/2 clipped to [0, len); empty when k == 0.
CIM_DEVICE void cim_span(long long i, long long k, long long len, long long* lo, long long* hi) {
    if (k == 0) { *lo = i; *hi = i; return; }
    long long l = i - k / 2;
    long long h = i + (k - 1) / 2 + 1;
    *lo = l > 0 ? l : 0;
    *hi = h < len ? h : len;
}

// Centres whose window contains j: j - (k-1)/2 <= i <= j + k/2, clipped.
CIM_DEVICE void cim_centres(long long j, long long k, long long len, long long* lo, long long* hi) {
    if (k == 0) { *lo = j; *hi = j; return; }
    long long l = j - (k - 1) / 2;
    long long h = j + k / 2 + 1;
    *lo = l > 0 ? l : 0;
    *hi = h < len ? h : len;
}

CIM_KERNEL cim_window_stats(const float* x, float* mean, float* var, long long nc, long long h, long long w,
                            long long k) {
    CIM_LOOP(o, nc * h * w) {
        long long j = o % w, i = (o / w) % h, c = o / (w * h);
        const float* xp = x + c * h * w;
        long long r0, r1, c0, c1;
        cim_span(i, k, h, &r0, &r1);
        cim_span(j, k, w, &c0, &c1);
        double cnt = (double)((r1 - r0) * (c1 - c0));
        if (cnt == 0.0) { mean[o] = 0.0f; var[o] = 0.0f; continue; }
        double s = 0.0;
        for (long long r = r0; r < r1; ++r)
            for (long long q = c0; q < c1; ++q) s += (double)xp[r * w + q];
        double mu = s / cnt;
        double sq = 0.0;
        for (long long r = r0; r < r1; ++r)
            for (long long q = c0; q < c1; ++q) {
                double dv = (double)xp[r * w + q] - mu;
                sq += dv * dv;
            }
        mean[o] = (float)mu;
        var[o] = (float)(sq / cnt);
    }
}

CIM_KERNEL cim_window_stats_backward(const float* x, const float* mean, const float* dmean, const float* dvar,
                                     float* dx, long long nc, long long h, long long w, long long k) {
    CIM_LOOP(t, nc * h * w) {
        long long jc = t % w, jr = (t / w) % h, c = t / (w * h);
        long long base = c * h * w;
        long long ir0, ir1, ic0, ic1;
        cim_centres(jr, k, h, &ir0, &ir1);
        cim_centres(jc, k, w, &ic0, &ic1);
        double xj = (double)x[t];
        double acc = 0.0;
        for (long long ir = ir0; ir < ir1; ++ir) {
            long long r0, r1;
            cim_span(ir, k, h, &r0, &r1);
            for (long long ic = ic0; ic < ic1; ++ic) {
                long long c0, c1;
                cim_span(ic, k, w, &c0, &c1);
                double cnt = (double)((r1 - r0) * (c1 - c0));
                long long o = base + ir * w + ic;
                acc += ((double)dmean[o] + 2.0 * (double)dvar[o] * (xj - (double)mean[o])) / cnt;
            }
        }
        dx[t] = (float)acc;
    }
}

// cols[img][K = c_in·kh·kw][P = oh·ow] for images img0 .. img0 + count of x: [n, c_in, h, w].
CIM_KERNEL cim_im2col(const float* x, float* cols, long long img0, long long count, long long c_in, long long h,
                      long long w, long long kh, long long kw, long long sh, long long sw, long long ph, long long pw,
                      long long oh_n, long long ow_n) {
    long long K = c_in * kh * kw, P = oh_n * ow_n;
    CIM_LOOP(t, count * K * P) {
        long long p = t % P, kk = (t / P) % K, img = t / (P * K);
        long long kj = kk % kw, ki = (kk / kw) % kh, ci = kk / (kw * kh);
        long long oh = p / ow_n, ow = p % ow_n;
        long long ih = oh * sh + ki - ph, iw = ow * sw + kj - pw;
        float v = 0.0f;
        if (ih >= 0 && ih < h && iw >= 0 && iw < w) v = x[(((img0 + img) * c_in + ci) * h + ih) * w + iw];
        cols[t] = v;
    }
}

// dx[img0 + img] = the sum of the column entries that read each pixel (gather form).
CIM_KERNEL cim_col2im(const float* cols, float* dx, long long img0, long long count, long long c_in, long long h,
                      long long w, long long kh, long long kw, long long sh, long long sw, long long ph, long long pw,
                      long long oh_n, long long ow_n) {
    long long P = oh_n * ow_n, K = c_in * kh * kw;
    CIM_LOOP(t, count * c_in * h * w) {
        long long iw = t % w, ih = (t / w) % h, ci = (t / (w * h)) % c_in, img = t / (w * h * c_in);
        double acc = 0.0;
        for (long long ki = 0; ki < kh; ++ki) {
            long long ph_pos = ih + ph - ki;  // oh·sh
            if (ph_pos < 0 || ph_pos % sh != 0) continue;
            long long oh = ph_pos / sh;
            if (oh >= oh_n) continue;
            for (long long kj = 0; kj < kw; ++kj) {
                long long pw_pos = iw + pw - kj;
                if (pw_pos < 0 || pw_pos % sw != 0) continue;
                long long ow = pw_pos / sw;
                if (ow >= ow_n) continue;
                acc += (double)cols[(img * K + (ci * kh + ki) * kw + kj) * P + oh * ow_n + ow];
            }
        }
        dx[(((img0 + img) * c_in + ci) * h + ih) * w + iw] = (float)acc;
    }
}

// One AdamW step over params[0 .. len) (pointers already at the group's offset).
CIM_KERNEL cim_adamw(float* params, const float* grads, float* m, float* v, long long len, double lr, double wd,
                     double b1, double b2, double eps, double bc1, double bc2, const float* grad_scale,
                     int has_scale) {
    CIM_LOOP(i, len) {
        double scale = has_scale ? (double)grad_scale[0] : 1.0;
        double g = (double)grads[i] * scale;
        double mi = b1 * (double)m[i] + (1.0 - b1) * g;
        double vi = b2 * (double)v[i] + (1.0 - b2) * g * g;
        double mhat = mi / bc1, vhat = vi / bc2;
        double p = (double)params[i];
        p = p * (1.0 - lr * wd) - lr * mhat / (sqrt(vhat) + eps);
        m[i] = (float)mi;
        v[i] = (float)vi;
        params[i] = (float)p;
    }
}
