// Prelude for NVRTC: the small vocabulary the kernel sources use, on the device.
// No headers: NVRTC provides the math functions (exp, log, erf, ...) as builtins.
#define CIM_KERNEL extern "C" __global__ void
#define CIM_DEVICE __device__ __forceinline__
CIM_DEVICE long long cim_tid() { return (long long)blockIdx.x * blockDim.x + threadIdx.x; }
CIM_DEVICE long long cim_nthreads() { return (long long)gridDim.x * blockDim.x; }
CIM_DEVICE unsigned int cim_f2u(float x) { return __float_as_uint(x); }
CIM_DEVICE float cim_u2f(unsigned int u) { return __uint_as_float(u); }
CIM_DEVICE double cim_u2d(unsigned long long u) { return __longlong_as_double((long long)u); }
CIM_DEVICE unsigned long long cim_d2u(double x) { return (unsigned long long)__double_as_longlong(x); }
CIM_DEVICE void cim_atomic_add(float* p, float v) { atomicAdd(p, v); }
