// Helpers shared by every kernel source. Every kernel is a grid-stride loop with one
// thread per output (no shared memory, no barriers): simple, deterministic except for
// the atomics of scatter_add_rows, and runnable one thread at a time by the emulator.
// Arithmetic follows the reference kernels of cim-core: inputs are widened to double,
// each output is rounded to float once. The module is compiled with --fmad=false so
// that no multiply-add is contracted (the reference's Rust arithmetic never is).

#define CIM_LOOP(i, n) for (long long i = cim_tid(); i < (long long)(n); i += cim_nthreads())

// Up to eight axes of shapes and strides, passed by value.
struct Dims8 { long long v[8]; };

CIM_DEVICE double cim_nan_d() { return cim_u2d(0x7ff8000000000000ULL); }
CIM_DEVICE double cim_inf_d() { return cim_u2d(0x7ff0000000000000ULL); }
CIM_DEVICE float cim_inf_f() { return cim_u2f(0x7f800000u); }
CIM_DEVICE bool cim_isnan(double x) { return x != x; }

// max/min that propagate NaN (torch.maximum / torch.minimum).
CIM_DEVICE double cim_max_nan(double a, double b) {
    if (cim_isnan(a) || cim_isnan(b)) return cim_nan_d();
    return b > a ? b : a;
}
CIM_DEVICE double cim_min_nan(double a, double b) {
    if (cim_isnan(a) || cim_isnan(b)) return cim_nan_d();
    return b < a ? b : a;
}
// Whether v replaces the running maximum in a first-maximum scan where NaN beats all.
CIM_DEVICE bool cim_beats(double v, double best) { return !cim_isnan(best) && (cim_isnan(v) || v > best); }

CIM_DEVICE double cim_sigmoid(double x) {
    if (x >= 0.0) return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
}

// Offset of flat index i of a row-major `shape` (rank r) under element `strides`.
CIM_DEVICE long long cim_strided(long long i, int r, const Dims8& shape, const Dims8& strides) {
    long long off = 0;
    for (int a = r - 1; a >= 0; --a) {
        long long s = shape.v[a];
        off += (i % s) * strides.v[a];
        i /= s;
    }
    return off;
}
