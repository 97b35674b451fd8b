// Max and average pooling, global average pooling, nearest upsampling. Backward
// passes are written in gather form (one thread per input pixel, summing the outputs
// that read it): deterministic, no atomics.

// In-image input range [lo, hi) of the window of output o along an axis of length len.
CIM_DEVICE void cim_window(long long o, long long k, long long stride, long long pad, long long len, long long* lo,
                           long long* hi) {
    long long start = o * stride, end = start + k;
    long long a = start > pad ? start - pad : 0;
    long long b = end > pad ? end - pad : 0;
    *lo = a < len ? a : len;
    *hi = b < len ? b : len;
}

// Outputs [lo, hi) whose window covers input coordinate i: o·stride - pad <= i < o·stride - pad + k.
CIM_DEVICE void cim_covering(long long i, long long k, long long stride, long long pad, long long out_len,
                             long long* lo, long long* hi) {
    long long pos = i + pad;
    if (k <= 0) { *lo = 0; *hi = 0; return; }
    long long l = pos >= k ? (pos - k) / stride + 1 : 0;  // smallest o with o·stride > pos - k
    long long h = pos / stride + 1;
    *lo = l;
    *hi = h < out_len ? h : out_len;
}

CIM_KERNEL cim_max_pool2d(const float* x, float* y, unsigned int* idx, long long nc, long long h, long long w,
                          long long kh, long long kw, long long sh, long long sw, long long ph, long long pw,
                          long long oh_n, long long ow_n) {
    CIM_LOOP(o, nc * oh_n * ow_n) {
        long long ow = o % ow_n, oh = (o / ow_n) % oh_n, p = o / (ow_n * oh_n);
        long long h0, h1, w0, w1;
        cim_window(oh, kh, sh, ph, h, &h0, &h1);
        cim_window(ow, kw, sw, pw, w, &w0, &w1);
        const float* xp = x + p * h * w;
        double best = -cim_inf_d();
        long long bi = 0;
        bool found = false;
        for (long long ih = h0; ih < h1; ++ih)
            for (long long iw = w0; iw < w1; ++iw) {
                double v = (double)xp[ih * w + iw];
                if (!found || cim_beats(v, best)) { best = v; bi = ih * w + iw; found = true; }
            }
        y[o] = (float)best;
        idx[o] = (unsigned int)bi;
    }
}

CIM_KERNEL cim_max_pool2d_backward(const float* dy, const unsigned int* idx, float* dx, long long nc, long long h,
                                   long long w, long long kh, long long kw, long long sh, long long sw, long long ph,
                                   long long pw, long long oh_n, long long ow_n) {
    CIM_LOOP(i, nc * h * w) {
        long long iw = i % w, ih = (i / w) % h, p = i / (w * h);
        long long o0, o1, q0, q1;
        cim_covering(ih, kh, sh, ph, oh_n, &o0, &o1);
        cim_covering(iw, kw, sw, pw, ow_n, &q0, &q1);
        double acc = 0.0;
        for (long long oh = o0; oh < o1; ++oh)
            for (long long ow = q0; ow < q1; ++ow) {
                long long o = (p * oh_n + oh) * ow_n + ow;
                if ((long long)idx[o] == ih * w + iw) acc += (double)dy[o];
            }
        dx[i] = (float)acc;
    }
}

CIM_DEVICE double cim_pool_divisor(int count_include_pad, long long kh, long long kw, long long h0, long long h1,
                                   long long w0, long long w1) {
    return count_include_pad ? (double)(kh * kw) : (double)((h1 - h0) * (w1 - w0));
}

CIM_KERNEL cim_avg_pool2d(const float* x, float* y, long long nc, long long h, long long w, long long kh, long long kw,
                          long long sh, long long sw, long long ph, long long pw, long long oh_n, long long ow_n,
                          int count_include_pad) {
    CIM_LOOP(o, nc * oh_n * ow_n) {
        long long ow = o % ow_n, oh = (o / ow_n) % oh_n, p = o / (ow_n * oh_n);
        long long h0, h1, w0, w1;
        cim_window(oh, kh, sh, ph, h, &h0, &h1);
        cim_window(ow, kw, sw, pw, w, &w0, &w1);
        const float* xp = x + p * h * w;
        double s = 0.0;
        for (long long ih = h0; ih < h1; ++ih)
            for (long long iw = w0; iw < w1; ++iw) s += (double)xp[ih * w + iw];
        double div = cim_pool_divisor(count_include_pad, kh, kw, h0, h1, w0, w1);
        y[o] = (float)(div > 0.0 ? s / div : 0.0);
    }
}

CIM_KERNEL cim_avg_pool2d_backward(const float* dy, float* dx, long long nc, long long h, long long w, long long kh,
                                   long long kw, long long sh, long long sw, long long ph, long long pw,
                                   long long oh_n, long long ow_n, int count_include_pad) {
    CIM_LOOP(i, nc * h * w) {
        long long iw = i % w, ih = (i / w) % h, p = i / (w * h);
        long long o0, o1, q0, q1;
        cim_covering(ih, kh, sh, ph, oh_n, &o0, &o1);
        cim_covering(iw, kw, sw, pw, ow_n, &q0, &q1);
        double acc = 0.0;
        for (long long oh = o0; oh < o1; ++oh) {
            long long h0, h1;
            cim_window(oh, kh, sh, ph, h, &h0, &h1);
            for (long long ow = q0; ow < q1; ++ow) {
                long long w0, w1;
                cim_window(ow, kw, sw, pw, w, &w0, &w1);
                double div = cim_pool_divisor(count_include_pad, kh, kw, h0, h1, w0, w1);
                if (div == 0.0) continue;
                acc += (double)dy[(p * oh_n + oh) * ow_n + ow] / div;
            }
        }
        dx[i] = (float)acc;
    }
}

CIM_KERNEL cim_global_avg_pool(const float* x, float* y, long long nc, long long hw) {
    CIM_LOOP(i, nc) {
        double s = 0.0;
        for (long long j = 0; j < hw; ++j) s += (double)x[i * hw + j];
        y[i] = (float)(hw > 0 ? s / (double)hw : 0.0);
    }
}

CIM_KERNEL cim_global_avg_pool_backward(const float* dy, float* dx, long long nc, long long hw) {
    CIM_LOOP(i, nc * hw) { dx[i] = (float)((double)dy[i / hw] / (double)hw); }
}

CIM_KERNEL cim_upsample_nearest(const float* x, float* y, long long nc, long long h, long long w, long long s) {
    long long oh = h * s, ow = w * s;
    CIM_LOOP(o, nc * oh * ow) {
        long long j = o % ow, i = (o / ow) % oh, c = o / (ow * oh);
        y[o] = x[(c * h + i / s) * w + j / s];
    }
}

CIM_KERNEL cim_upsample_nearest_backward(const float* dy, float* dx, long long nc, long long h, long long w,
                                         long long s) {
    long long oh = h * s, ow = w * s;
    CIM_LOOP(o, nc * h * w) {
        long long j = o % w, i = (o / w) % h, c = o / (w * h);
        double acc = 0.0;
        for (long long a = 0; a < s; ++a)
            for (long long b = 0; b < s; ++b) acc += (double)dy[(c * oh + i * s + a) * ow + j * s + b];
        dx[o] = (float)acc;
    }
}
