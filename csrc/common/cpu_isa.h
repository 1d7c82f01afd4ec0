#pragma once
// Runtime choice of the widest SIMD instruction set the CPU has. Kernels compile their hot loop
// once per level (GCC target attributes) and call the best one; the math is the same template.

namespace fastnets {

enum class CpuIsa { kBaseline, kAvx2, kAvx512 };

inline CpuIsa cpu_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const CpuIsa isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
      return CpuIsa::kAvx512;
    }
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? CpuIsa::kAvx2 : CpuIsa::kBaseline;
  }();
  return isa;
#else
  return CpuIsa::kBaseline;
#endif
}

inline const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

}  // namespace fastnets

#if defined(__x86_64__) && defined(__GNUC__)
#define FASTNETS_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))
#define FASTNETS_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define FASTNETS_TARGET_AVX512
#define FASTNETS_TARGET_AVX2
#endif
