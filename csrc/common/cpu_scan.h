#pragma once
// Whole-array tests that CPU kernels make before leaving out products whose results they know
// (inlined: a caller may compile them for its instruction set, call_with_best_isa).
#include <cstdint>

#include "common/macros.h"

namespace fastnets {

// Whether every value is finite: only then is 0 x value zero (0 x inf and 0 x NaN are NaN).
template <typename T>
FASTNETS_ALWAYS_INLINE bool all_finite(const T* values, int64_t count) {
  int not_finite = 0;  // x - x is 0 for finite x, NaN for inf and NaN; an int OR vectorizes
  for (int64_t i = 0; i < count; ++i) not_finite |= !(values[i] - values[i] == T(0));
  return not_finite == 0;
}

// Whether every value is +0 or -0.
template <typename T>
FASTNETS_ALWAYS_INLINE bool all_zero(const T* values, int64_t count) {
  int nonzero = 0;
  for (int64_t i = 0; i < count; ++i) nonzero |= values[i] != T(0);
  return nonzero == 0;
}

}  // namespace fastnets
