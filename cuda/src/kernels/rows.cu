// Row-wise ops over [rows, d]: softmax and log-softmax with their backward passes,
// cross-entropy, argmax, Gumbel-max sampling and uniform noise. One thread per row.

// Row maximum (NaN-propagating) of row r.
CIM_DEVICE double cim_row_max(const float* x, long long d) {
    double mx = -cim_inf_d();
    for (long long j = 0; j < d; ++j) mx = cim_max_nan(mx, (double)x[j]);
    return mx;
}

CIM_DEVICE double cim_row_sumexp(const float* x, long long d, double mx) {
    double s = 0.0;
    for (long long j = 0; j < d; ++j) s += exp((double)x[j] - mx);
    return s;
}

CIM_KERNEL cim_softmax(const float* x, float* y, long long rows, long long d) {
    CIM_LOOP(r, rows) {
        const float* xr = x + r * d;
        double mx = cim_row_max(xr, d);
        double s = cim_row_sumexp(xr, d, mx);
        for (long long j = 0; j < d; ++j) y[r * d + j] = (float)(exp((double)xr[j] - mx) / s);
    }
}

CIM_KERNEL cim_log_softmax(const float* x, float* y, long long rows, long long d) {
    CIM_LOOP(r, rows) {
        const float* xr = x + r * d;
        double mx = cim_row_max(xr, d);
        double ls = log(cim_row_sumexp(xr, d, mx));
        for (long long j = 0; j < d; ++j) y[r * d + j] = (float)((double)xr[j] - mx - ls);
    }
}

CIM_KERNEL cim_softmax_backward(const float* y, const float* dy, float* dx, long long rows, long long d) {
    CIM_LOOP(r, rows) {
        long long o = r * d;
        double dot = 0.0;
        for (long long j = 0; j < d; ++j) dot += (double)dy[o + j] * (double)y[o + j];
        for (long long j = 0; j < d; ++j) dx[o + j] = (float)((double)y[o + j] * ((double)dy[o + j] - dot));
    }
}

CIM_KERNEL cim_log_softmax_backward(const float* y, const float* dy, float* dx, long long rows, long long d) {
    CIM_LOOP(r, rows) {
        long long o = r * d;
        double s = 0.0;
        for (long long j = 0; j < d; ++j) s += (double)dy[o + j];
        for (long long j = 0; j < d; ++j) dx[o + j] = (float)((double)dy[o + j] - exp((double)y[o + j]) * s);
    }
}

// ln Σ exp(row), stable; -inf for an empty or all -inf row.
CIM_DEVICE double cim_logsumexp(const float* x, long long d) {
    double mx = cim_row_max(x, d);
    if (mx == -cim_inf_d()) return mx;
    return mx + log(cim_row_sumexp(x, d, mx));
}

CIM_KERNEL cim_cross_entropy(const float* logits, const unsigned int* targets, float* loss, long long rows,
                             long long classes) {
    CIM_LOOP(r, rows) {
        const float* xr = logits + r * classes;
        loss[r] = (float)(cim_logsumexp(xr, classes) - (double)xr[targets[r]]);
    }
}

CIM_KERNEL cim_cross_entropy_backward(const float* logits, const unsigned int* targets, const float* dloss,
                                      float* dlogits, long long rows, long long classes) {
    CIM_LOOP(r, rows) {
        const float* xr = logits + r * classes;
        double lse = cim_logsumexp(xr, classes);
        long long t = (long long)targets[r];
        double g = (double)dloss[r];
        for (long long c = 0; c < classes; ++c) {
            double p = exp((double)xr[c] - lse);
            dlogits[r * classes + c] = (float)(g * (p - (c == t ? 1.0 : 0.0)));
        }
    }
}

CIM_KERNEL cim_argmax(const float* x, unsigned int* out, long long rows, long long d) {
    CIM_LOOP(r, rows) {
        double best = -cim_inf_d();
        long long bi = 0;
        for (long long j = 0; j < d; ++j) {
            double v = (double)x[r * d + j];
            if (j == 0 || cim_beats(v, best)) { best = v; bi = j; }
        }
        out[r] = (unsigned int)bi;
    }
}

// ---- the counter-based RNG of cim-core (core/src/rng.rs), bit for bit ----

// Philox4x32-10: ten rounds over a 128-bit counter under a 64-bit key.
CIM_DEVICE void cim_philox(unsigned int c[4], unsigned int k0, unsigned int k1) {
    for (int round = 0; round < 10; ++round) {
        if (round > 0) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
        unsigned long long p0 = (unsigned long long)0xD2511F53u * c[0];
        unsigned long long p1 = (unsigned long long)0xCD9E8D57u * c[2];
        unsigned int hi0 = (unsigned int)(p0 >> 32), lo0 = (unsigned int)p0;
        unsigned int hi1 = (unsigned int)(p1 >> 32), lo1 = (unsigned int)p1;
        unsigned int n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0; c[1] = lo1; c[2] = n2; c[3] = lo0;
    }
}

CIM_DEVICE unsigned int cim_bits(unsigned long long seed, unsigned long long i) {
    unsigned long long block = i / 4;
    unsigned int c[4] = {(unsigned int)block, (unsigned int)(block >> 32), 0u, 0u};
    cim_philox(c, (unsigned int)seed, (unsigned int)(seed >> 32));
    return c[i % 4];
}

CIM_DEVICE float cim_uniform(unsigned long long seed, unsigned long long i) {
    return (float)(cim_bits(seed, i) >> 8) * (1.0f / 16777216.0f);
}

CIM_DEVICE float cim_uniform_open(unsigned long long seed, unsigned long long i) {
    return ((float)(cim_bits(seed, i) >> 8) + 0.5f) * (1.0f / 16777216.0f);
}

// logf of the Rust `libm` crate (FreeBSD e_logf.c), operation for operation in float,
// so that the Gumbel noise is bit-identical to the CPU's; CUDA's own logf may differ
// from it in the last place.
CIM_DEVICE float cim_logf(float x) {
    const float ln2_hi = 6.9313812256e-01f, ln2_lo = 9.0580006145e-06f;
    const float lg1 = 0.66666662693f, lg2 = 0.40000972152f, lg3 = 0.28498786688f, lg4 = 0.24279078841f;
    unsigned int ix = cim_f2u(x);
    int k = 0;
    if (ix < 0x00800000u || (ix >> 31) != 0u) {
        if ((ix << 1) == 0u) return -1.0f / (x * x);
        if ((ix >> 31) != 0u) return (x - x) / 0.0f;
        k -= 25;
        x *= 33554432.0f;  // 2^25
        ix = cim_f2u(x);
    } else if (ix >= 0x7f800000u) {
        return x;
    } else if (ix == 0x3f800000u) {
        return 0.0f;
    }
    ix += 0x3f800000u - 0x3f3504f3u;
    k += (int)(ix >> 23) - 0x7f;
    ix = (ix & 0x007fffffu) + 0x3f3504f3u;
    x = cim_u2f(ix);
    float f = x - 1.0f;
    float s = f / (2.0f + f);
    float z = s * s;
    float w = z * z;
    float t1 = w * (lg2 + w * lg4);
    float t2 = z * (lg1 + w * lg3);
    float r = t2 + t1;
    float hfsq = 0.5f * f * f;
    float dk = (float)k;
    return s * (hfsq + r) + dk * ln2_lo - hfsq + f + dk * ln2_hi;
}

CIM_DEVICE float cim_gumbel(unsigned long long seed, unsigned long long i) {
    return -cim_logf(-cim_logf(cim_uniform_open(seed, i)));
}

// Scores formed in float, `logit / temperature + gumbel`, as Reference<f32> does.
CIM_KERNEL cim_sample_categorical(const float* logits, unsigned int* out, long long rows, long long classes,
                                  float temperature, unsigned long long seed, unsigned long long offset) {
    CIM_LOOP(r, rows) {
        unsigned long long base = offset + (unsigned long long)r * (unsigned long long)classes;
        double best = -cim_inf_d();
        long long bi = 0;
        for (long long c = 0; c < classes; ++c) {
            float g = cim_gumbel(seed, base + (unsigned long long)c);
            float q = logits[r * classes + c] / temperature;
            float score = q + g;
            double v = (double)score;
            if (c == 0 || cim_beats(v, best)) { best = v; bi = c; }
        }
        out[r] = (unsigned int)bi;
    }
}

CIM_KERNEL cim_rand_uniform(float* out, long long n, unsigned long long seed, unsigned long long offset) {
    CIM_LOOP(i, n) { out[i] = cim_uniform(seed, offset + (unsigned long long)i); }
}

// Exposes cim_logf for the emulator's test against the Rust libm (unused on the GPU).
CIM_KERNEL cim_logf_kernel(const float* x, float* y, long long n) {
    CIM_LOOP(i, n) { y[i] = cim_logf(x[i]); }
}
