#pragma once
// Runtime choice of the widest SIMD instruction set the CPU has. Kernels compile their hot loop
// once per level (GCC target attributes) and call the best one; the math is the same template.
// FASTNETS_CPU_ISA=baseline|avx2|avx512 caps the choice (the tests run every level this way).
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <type_traits>

namespace fastnets {

enum class CpuIsa { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

inline const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

inline CpuIsa detected_cpu_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
    return CpuIsa::kAvx512;
  }
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? CpuIsa::kAvx2 : CpuIsa::kBaseline;
#else
  return CpuIsa::kBaseline;
#endif
}

inline CpuIsa cpu_isa() {
  static const CpuIsa isa = [] {
    const CpuIsa detected = detected_cpu_isa();
    const char* cap = std::getenv("FASTNETS_CPU_ISA");
    if (cap == nullptr || *cap == '\0') return detected;
    for (CpuIsa level : {CpuIsa::kBaseline, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
      if (std::strcmp(cap, cpu_isa_name(level)) == 0) return level < detected ? level : detected;
    }
    TORCH_CHECK(false, "FASTNETS_CPU_ISA must be baseline, avx2 or avx512, got ", cap);
  }();
  return isa;
}

}  // namespace fastnets

#if defined(__x86_64__) && defined(__GNUC__)
#define FASTNETS_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))
#define FASTNETS_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define FASTNETS_TARGET_AVX512
#define FASTNETS_TARGET_AVX2
#endif

#define FASTNETS_INLINE_LAMBDA __attribute__((always_inline))

namespace fastnets {
namespace isa_detail {
template <typename Fn>
FASTNETS_TARGET_AVX512 void call_avx512(const Fn& fn) { fn(); }
template <typename Fn>
FASTNETS_TARGET_AVX2 void call_avx2(const Fn& fn) { fn(); }
}  // namespace isa_detail

// Runs fn() compiled for the best instruction set up to `cap`: fn must be a lambda marked
// FASTNETS_INLINE_LAMBDA that calls only inlined code (FASTNETS_ALWAYS_INLINE), which then takes
// on that instruction set.
template <typename Fn>
void call_with_best_isa(const Fn& fn, CpuIsa cap = CpuIsa::kAvx512) {
  switch (cpu_isa() < cap ? cpu_isa() : cap) {
    case CpuIsa::kAvx512: isa_detail::call_avx512(fn); break;
    case CpuIsa::kAvx2: isa_detail::call_avx2(fn); break;
    default: fn(); break;
  }
}

template <CpuIsa kIsa>
using IsaTag = std::integral_constant<CpuIsa, kIsa>;

// Like call_with_best_isa, passing fn the chosen level as IsaTag<level>{}, so that it can pick
// sizes for that level at compile time.
template <typename Fn>
void call_with_best_isa_tag(const Fn& fn, CpuIsa cap = CpuIsa::kAvx512) {
  switch (cpu_isa() < cap ? cpu_isa() : cap) {
    case CpuIsa::kAvx512:
      isa_detail::call_avx512([&]() FASTNETS_INLINE_LAMBDA { fn(IsaTag<CpuIsa::kAvx512>{}); });
      break;
    case CpuIsa::kAvx2: isa_detail::call_avx2([&]() FASTNETS_INLINE_LAMBDA { fn(IsaTag<CpuIsa::kAvx2>{}); }); break;
    default: fn(IsaTag<CpuIsa::kBaseline>{}); break;
  }
}

}  // namespace fastnets
