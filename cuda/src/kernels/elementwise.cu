// Elementwise ops: unary, broadcast binary, affine, axpy, activations, losses, casts,
// fill, strided copies (permute) and the conv bias.

// op: 0 Neg, 1 Exp, 2 Ln, 3 Sqrt, 4 Abs, 5 Square, 6 Recip, 7 Sigmoid, 8 Tanh, 9 Sign.
CIM_KERNEL cim_unary(int op, const float* x, float* y, long long n) {
    CIM_LOOP(i, n) {
        double v = (double)x[i];
        double r;
        switch (op) {
            case 0: r = -v; break;
            case 1: r = exp(v); break;
            case 2: r = log(v); break;
            case 3: r = sqrt(v); break;
            case 4: r = fabs(v); break;
            case 5: r = v * v; break;
            case 6: r = 1.0 / v; break;
            case 7: r = cim_sigmoid(v); break;
            case 8: r = tanh(v); break;
            default: r = v > 0.0 ? 1.0 : (v < 0.0 ? -1.0 : (v == 0.0 ? 0.0 : v)); break;
        }
        y[i] = (float)r;
    }
}

// op: 0 Add, 1 Sub, 2 Mul, 3 Div, 4 Max, 5 Min. Output of `rank` axes `shape`; `sa`,
// `sb` are the operands' element strides per output axis (0 where broadcast).
CIM_KERNEL cim_binary(int op, const float* a, const float* b, float* out, long long n, int rank, Dims8 shape,
                      Dims8 sa, Dims8 sb) {
    CIM_LOOP(i, n) {
        double x = (double)a[cim_strided(i, rank, shape, sa)];
        double y = (double)b[cim_strided(i, rank, shape, sb)];
        double r;
        switch (op) {
            case 0: r = x + y; break;
            case 1: r = x - y; break;
            case 2: r = x * y; break;
            case 3: r = x / y; break;
            case 4: r = cim_max_nan(x, y); break;
            default: r = cim_min_nan(x, y); break;
        }
        out[i] = (float)r;
    }
}

// y[i] = x[offset of i in `shape` under `strides`]: permutations as strided gathers.
CIM_KERNEL cim_strided_copy(const float* x, float* y, long long n, int rank, Dims8 shape, Dims8 strides) {
    CIM_LOOP(i, n) { y[i] = x[cim_strided(i, rank, shape, strides)]; }
}

CIM_KERNEL cim_affine(double alpha, double beta, const float* x, float* y, long long n) {
    CIM_LOOP(i, n) { y[i] = (float)(alpha * (double)x[i] + beta); }
}

CIM_KERNEL cim_axpy(double alpha, const float* x, float* y, long long n) {
    CIM_LOOP(i, n) { y[i] = (float)((double)y[i] + alpha * (double)x[i]); }
}

CIM_KERNEL cim_gelu(const float* x, float* y, long long n) {
    CIM_LOOP(i, n) {
        double v = (double)x[i];
        y[i] = (float)(0.5 * v * (1.0 + erf(v * 0.70710678118654752440)));
    }
}

CIM_KERNEL cim_gelu_backward(const float* x, const float* dy, float* dx, long long n) {
    CIM_LOOP(i, n) {
        double v = (double)x[i];
        double cdf = 0.5 * (1.0 + erf(v * 0.70710678118654752440));
        double pdf = 0.3989422804014327 * exp(-0.5 * v * v);
        dx[i] = (float)((double)dy[i] * (cdf + v * pdf));
    }
}

CIM_KERNEL cim_relu(const float* x, float* y, long long n) {
    CIM_LOOP(i, n) {
        float v = x[i];
        y[i] = (v != v || v > 0.0f) ? v : 0.0f;
    }
}

CIM_KERNEL cim_relu_backward(const float* x, const float* dy, float* dx, long long n) {
    CIM_LOOP(i, n) { dx[i] = x[i] > 0.0f ? dy[i] : 0.0f; }
}

// kind: 0 BCE with logits, 1 L1, 2 L2.
CIM_KERNEL cim_loss(int kind, const float* p, const float* t, float* loss, long long n) {
    CIM_LOOP(i, n) {
        double z = (double)p[i], tv = (double)t[i];
        double l;
        if (kind == 0) {
            l = cim_max_nan(z, 0.0) - z * tv + log1p(exp(-fabs(z)));
        } else if (kind == 1) {
            l = fabs(z - tv);
        } else {
            double d = z - tv;
            l = d * d;
        }
        loss[i] = (float)l;
    }
}

CIM_KERNEL cim_loss_backward(int kind, const float* p, const float* t, const float* dloss, float* dp, long long n) {
    CIM_LOOP(i, n) {
        double z = (double)p[i], tv = (double)t[i], g = (double)dloss[i];
        double r;
        if (kind == 0) {
            r = g * (cim_sigmoid(z) - tv);
        } else if (kind == 1) {
            double d = z - tv;
            double s = d > 0.0 ? 1.0 : (d < 0.0 ? -1.0 : (d == 0.0 ? 0.0 : cim_nan_d()));
            r = g * s;
        } else {
            r = 2.0 * g * (z - tv);
        }
        dp[i] = (float)r;
    }
}

// Round to the nearest f16 value, ties to even (IEEE), returned as float. This is what
// `DType::round` gives wherever the `half` crate converts with the F16C instruction
// (x86-64 builds with half's `std` feature, as the conformance tests are).
CIM_DEVICE float cim_round_f16(float x) {
    unsigned int u = cim_f2u(x);
    unsigned int sign = u & 0x80000000u;
    unsigned int a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) return x;                               // inf, NaN
    if (a >= 0x477ff000u) return cim_u2f(sign | 0x7f800000u);     // >= 65520 rounds to inf
    if (a >= 0x38800000u) {                                      // normal f16: keep 10 mantissa bits
        unsigned int r = a + 0x0fffu + ((a >> 13) & 1u);
        return cim_u2f(sign | (r & ~0x1fffu));
    }
    // Subnormal f16: multiples of 2^-24; scaling by 2^24 is exact, rintf rounds to even.
    float q = rintf(cim_u2f(a) * 16777216.0f) * 5.9604644775390625e-8f;
    return cim_u2f(sign | cim_f2u(q));
}

// The bf16 rounding of `DType::round`, which goes through the `half` crate's f64 -> bf16
// conversion: it reads only the high 32 bits of the double, so for an f32 input the
// lowest 3 mantissa bits do not count towards the sticky bit (a value just above a tie
// may round to even). Mirrored operation for operation; returns the bf16 bit pattern.
CIM_DEVICE unsigned int cim_half_crate_bf16_bits(float v) {
    unsigned long long val = cim_d2u((double)v);
    unsigned int x = (unsigned int)(val >> 32);
    unsigned int sign = x & 0x80000000u, ex = x & 0x7ff00000u, man = x & 0x000fffffu;
    unsigned int hsign = sign >> 16;
    if (ex == 0x7ff00000u) {
        unsigned int nan_bit = (man == 0u && (unsigned int)val == 0u) ? 0u : 0x0040u;
        return hsign | 0x7f80u | nan_bit | (man >> 13);
    }
    long long hexp = (long long)(ex >> 20) - 1023 + 127;
    if (hexp >= 0xff) return hsign | 0x7f80u;
    if (hexp <= 0) {
        if (7 - hexp > 21) return hsign;
        man |= 0x00100000u;
        unsigned int hman = man >> (unsigned int)(14 - hexp);
        unsigned int round_bit = 1u << (unsigned int)(13 - hexp);
        if ((man & round_bit) != 0u && (man & (3u * round_bit - 1u)) != 0u) hman += 1u;
        return hsign | hman;
    }
    unsigned int bits = hsign | ((unsigned int)hexp << 7) | (man >> 13);
    unsigned int round_bit = 0x1000u;
    if ((man & round_bit) != 0u && (man & (3u * round_bit - 1u)) != 0u) bits += 1u;
    return bits;
}

CIM_DEVICE float cim_round_bf16(float v) { return cim_u2f(cim_half_crate_bf16_bits(v) << 16); }

// dtype: 0 F64, 1 F32 (both the identity on f32 values), 2 F16, 3 BF16.
CIM_KERNEL cim_cast(int dtype, const float* x, float* y, long long n) {
    CIM_LOOP(i, n) {
        float v = x[i];
        y[i] = dtype == 2 ? cim_round_f16(v) : (dtype == 3 ? cim_round_bf16(v) : v);
    }
}

// y[(img * c + ch) * plane + p] += bias[ch]: the conv bias after the GEMM.
CIM_KERNEL cim_add_channel_bias(const float* bias, float* y, long long n, long long c, long long plane) {
    CIM_LOOP(i, n) {
        long long ch = (i / plane) % c;
        y[i] = (float)((double)y[i] + (double)bias[ch]);
    }
}
