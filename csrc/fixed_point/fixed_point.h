#pragma once
// Fixed-point quantization (Gupta et al. 2015, "Deep Learning with Limited Numerical Precision"),
// the math shared by the CPU and CUDA kernels.
//
// A format <IL, FL> is given as its word length wl = IL + FL (sign bit included) and fl: values
// are integer codes times eps = 2^-fl, codes in [-2^(wl-1), 2^(wl-1) - 1] (symmetric: the most
// negative code dropped). Everything is computed in double, where x * 2^fl, the rounding and the
// clamp are exact for every input dtype; only the final cast to the output dtype can round.
//   nearest:    code = rint(x * 2^fl), ties to even.
//   stochastic: code = floor(x * 2^fl) + 1 with probability frac = x * 2^fl - floor(x * 2^fl):
//               the element's stream word decides, up iff word * 2^-32 < frac (exactly).
// NaN stays NaN; with clamp, +-inf and everything out of range saturate to the end codes.
// Every product here is exact (scalings by powers of two), so whether a compiler fuses a
// multiply and an add (FMA) cannot change a result: CPU and CUDA agree bit for bit.
#include <math.h>

#include <cstdint>

#include "common/macros.h"

namespace fastnets {

struct FixedPointFormat {
  double scale;     // 2^fl
  double eps;       // 2^-fl
  double min_code;  // -2^(wl-1), or -(2^(wl-1) - 1) when symmetric
  double max_code;  // 2^(wl-1) - 1
  bool clamp;
};

FASTNETS_HOST_DEVICE double fixed_point_saturate(double code, const FixedPointFormat& format) {
  if (!format.clamp) return code;
  // Comparisons, not fmin/fmax: those would turn NaN into an end code.
  return code < format.min_code ? format.min_code : (code > format.max_code ? format.max_code : code);
}

FASTNETS_HOST_DEVICE double fixed_point_code_nearest(double x, const FixedPointFormat& format) {
  return fixed_point_saturate(rint(x * format.scale), format);
}

FASTNETS_HOST_DEVICE double fixed_point_code_stochastic(double x, uint32_t word, const FixedPointFormat& format) {
  const double scaled = x * format.scale;
  const double down = floor(scaled);
  // Round up iff word * 2^-32 < frac = scaled - down, i.e. iff word < ceil(scaled * 2^32) - down * 2^32.
  // That threshold is exact, unlike scaled - down itself for scaled in (-1, 0). For +-inf it is
  // NaN, which compares false: they stay at floor = +-inf. Branch-free, so the CPU loops vectorize.
  const double threshold = ceil(scaled * 4294967296.0) - down * 4294967296.0;
  const double up = static_cast<double>(word) < threshold ? 1.0 : 0.0;
  return fixed_point_saturate(down + up, format);
}

template <bool kStochastic>
FASTNETS_HOST_DEVICE double fixed_point_code(double x, uint32_t word, const FixedPointFormat& format) {
  return kStochastic ? fixed_point_code_stochastic(x, word, format) : fixed_point_code_nearest(x, format);
}

// Every input dtype converts to double exactly (16-bit types through float, their own conversion);
// the result goes back through float too, which is how torch casts float64 to 16-bit types.
FASTNETS_HOST_DEVICE double fixed_point_input(double x) { return x; }
template <typename scalar_t>
FASTNETS_HOST_DEVICE double fixed_point_input(scalar_t x) { return static_cast<double>(static_cast<float>(x)); }

template <typename scalar_t>
FASTNETS_HOST_DEVICE scalar_t fixed_point_output(double value) { return static_cast<scalar_t>(static_cast<float>(value)); }
template <>
FASTNETS_HOST_DEVICE double fixed_point_output<double>(double value) { return value; }

// x rounded to the grid, in x's dtype (the double result cast: for 16-bit types through float32,
// as torch casts float64 to them).
template <typename scalar_t, bool kStochastic>
struct FixedPointQuantizeOp {
  FixedPointFormat format;

  FASTNETS_HOST_DEVICE scalar_t operator()(scalar_t x, uint32_t word) const {
    return fixed_point_output<scalar_t>(fixed_point_code<kStochastic>(fixed_point_input(x), word, format) * format.eps);
  }
};

// The integer code of x (the format always saturates here); NaN, which has none, gives 0.
template <typename scalar_t, typename code_t, bool kStochastic>
struct FixedPointCodeOp {
  FixedPointFormat format;

  FASTNETS_HOST_DEVICE code_t operator()(scalar_t x, uint32_t word) const {
    const double code = fixed_point_code<kStochastic>(fixed_point_input(x), word, format);
    return code == code ? static_cast<code_t>(code) : code_t(0);
  }
};

}  // namespace fastnets
