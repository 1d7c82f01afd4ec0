#pragma once

// Always inlined: the CPU kernels compile their loops once per instruction set (GCC target
// attributes), and only inlined helpers take on the caller's instruction set.
#define FASTNETS_ALWAYS_INLINE inline __attribute__((always_inline))

// Marks the shared math that nvcc compiles for the GPU and the host compiler for the CPU.
#if defined(__CUDACC__)
#define FASTNETS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FASTNETS_HOST_DEVICE FASTNETS_ALWAYS_INLINE
#endif
