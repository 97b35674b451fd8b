// Prelude for the host emulator: the same vocabulary as prelude_gpu.cuh in plain C++,
// with one emulated thread at a time (the launcher sets the indices below). Kernels
// therefore must not use shared memory, barriers or warp functions.
#include <math.h>
#include <string.h>
#define CIM_KERNEL static void
#define CIM_DEVICE static inline
static thread_local unsigned int cim_block, cim_thread, cim_grid_dim, cim_block_dim;
CIM_DEVICE long long cim_tid() { return (long long)cim_block * cim_block_dim + cim_thread; }
CIM_DEVICE long long cim_nthreads() { return (long long)cim_grid_dim * cim_block_dim; }
CIM_DEVICE unsigned int cim_f2u(float x) { unsigned int u; memcpy(&u, &x, 4); return u; }
CIM_DEVICE float cim_u2f(unsigned int u) { float x; memcpy(&x, &u, 4); return x; }
CIM_DEVICE double cim_u2d(unsigned long long u) { double x; memcpy(&x, &u, 8); return x; }
CIM_DEVICE unsigned long long cim_d2u(double x) { unsigned long long u; memcpy(&u, &x, 8); return u; }
CIM_DEVICE void cim_atomic_add(float* p, float v) { *p += v; }
