#pragma once
// Fixed-point quantization (Gupta et al. 2015, "Deep Learning with Limited Numerical Precision"),
// the math shared by the CPU and CUDA kernels.
//
// A format <IL, FL> is given as its word length wl = IL + FL (sign bit included) and fl: values
// are integer codes times eps = 2^-fl, codes in [-2^(wl-1), 2^(wl-1) - 1] (symmetric: the most
// negative code dropped). Everything is computed in double, where x * 2^fl, the rounding and the
// clamp are exact for every input dtype; only the final cast to the output dtype can round. The
// CPU kernel computes the same bits in float where that is exact too (float_exact, below).
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
  // Whether the float functions below give these bits for float, half and bfloat16 inputs.
  bool float_exact;
};

// Where float arithmetic is exact too: the format saturates (an x * 2^fl that overflows float
// saturates either way), fl in [0, 100] (scaling up never loses bits, and code * 2^-fl stays a
// normal float) and codes fit float's 24-bit significand.
inline bool fixed_point_float_exact(int64_t wl, int64_t fl, bool clamp) {
  return clamp && fl >= 0 && fl <= 100 && wl <= 25;
}

// code limited to [format.min_code, format.max_code], NaN kept. Comparisons, not fmin/fmax:
// those would turn NaN into an end code. Two selects that keep NaN, each one SIMD max or min
// (they return their second operand then).
template <typename real_t, typename format_t>
FASTNETS_HOST_DEVICE real_t fixed_point_limit(real_t code, const format_t& format) {
  const real_t above_min = code < format.min_code ? format.min_code : code;
  return format.max_code < above_min ? format.max_code : above_min;
}

FASTNETS_HOST_DEVICE double fixed_point_saturate(double code, const FixedPointFormat& format) {
  return format.clamp ? fixed_point_limit(code, format) : code;
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

// The same codes in float arithmetic, for float, half and bfloat16 inputs where float_exact:
// twice the SIMD lanes of double, and the same bits. x * 2^fl = whole + part, whole = trunc(x *
// 2^fl): both exact, part in (-1, 1), below 0 only where x is. The decision word < frac * 2^32 (word an
// integer: word < ceil(frac * 2^32)) is then taken on uint32 with c = ceil(part * 2^32), exact:
//   part >= 0: down = whole, frac = part, up iff word < c (c <= 2^32 - 256: part has 24 bits);
//   part < 0:  down = whole - 1, frac = 1 + part, up iff word < 2^32 + c = 2^32 - |c|.
// NaN and +-inf give a NaN part, whose |c| is taken as 0 (float to uint32 is defined only in
// range): never up, and whole (NaN, +-inf) saturates or stays NaN.
struct FixedPointFormatFloat {
  float scale, eps, min_code, max_code;
};

inline FixedPointFormatFloat fixed_point_format_float(const FixedPointFormat& format) {
  return {static_cast<float>(format.scale), static_cast<float>(format.eps), static_cast<float>(format.min_code),
          static_cast<float>(format.max_code)};
}

FASTNETS_HOST_DEVICE float fixed_point_code_nearest(float x, const FixedPointFormatFloat& format) {
  return fixed_point_limit(rintf(x * format.scale), format);
}

FASTNETS_HOST_DEVICE float fixed_point_code_stochastic(float x, uint32_t word, const FixedPointFormatFloat& format) {
  const float scaled = x * format.scale;
  const float whole = truncf(scaled);
  const float part = scaled - whole;
  const bool below = part < 0.0f;
  const float magnitude = fabsf(ceilf(part * 4294967296.0f));
  const uint32_t bits = static_cast<uint32_t>(magnitude == magnitude ? magnitude : 0.0f);
  // Below zero the bound 2^32 - bits is taken mod 2^32: 0 then stands for 2^32, always up. GCC 12
  // vectorizes these selects, not the same written with & and | on the comparisons.
  const uint32_t bound = below ? 0u - bits : bits;
  const bool up = below ? (word < bound) | (bits == 0u) : word < bound;
  // Exact: |whole| < 2^24 where below. Adding 0 where not up turns a -0 into 0, as the double math does.
  const float down = below ? whole - 1.0f : whole;
  return fixed_point_limit(down + (up ? 1.0f : 0.0f), format);
}

template <bool kStochastic>
FASTNETS_HOST_DEVICE float fixed_point_code(float x, uint32_t word, const FixedPointFormatFloat& format) {
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
template <typename scalar_t, bool kStochastic_>
struct FixedPointQuantizeOp {
  static constexpr bool kStochastic = kStochastic_;
  FixedPointFormat format;

  FASTNETS_HOST_DEVICE scalar_t operator()(scalar_t x, uint32_t word) const {
    return fixed_point_output<scalar_t>(fixed_point_code<kStochastic>(fixed_point_input(x), word, format) * format.eps);
  }
};

// FixedPointQuantizeOp in float arithmetic (the format float_exact; scalar_t not double).
template <typename scalar_t, bool kStochastic_>
struct FixedPointQuantizeFloatOp {
  static constexpr bool kStochastic = kStochastic_;
  FixedPointFormatFloat format;

  FASTNETS_HOST_DEVICE scalar_t operator()(scalar_t x, uint32_t word) const {
    return static_cast<scalar_t>(fixed_point_code<kStochastic>(static_cast<float>(x), word, format) * format.eps);
  }
};

// An element with its keep flag, and two arrays (values, flags) read as one by the elementwise
// drivers, which index `in` like a pointer.
template <typename scalar_t>
struct MaskedValue {
  scalar_t value;
  bool keep;
};

template <typename scalar_t>
struct MaskedValues {
  const scalar_t* values;
  const bool* keep;

  // The flag read as a byte: GCC vectorizes no load of bool.
  FASTNETS_HOST_DEVICE MaskedValue<scalar_t> operator[](int64_t i) const {
    return {values[i], reinterpret_cast<const uint8_t*>(keep)[i] != 0};
  }
};

// Quantize (FixedPointQuantizeOp or its float twin) where the flag is set, 0 elsewhere: the
// backward of quant.quantize with zero_outside_range, mask and rounding in one pass. The word is
// drawn for every element, so kept elements round as fixed_point_quantize would round them.
template <typename Quantize>
struct FixedPointQuantizeMaskedOp {
  static constexpr bool kStochastic = Quantize::kStochastic;
  Quantize quantize;

  template <typename scalar_t>
  FASTNETS_HOST_DEVICE scalar_t operator()(MaskedValue<scalar_t> x, uint32_t word) const {
    const scalar_t rounded = quantize(x.value, word);
    return x.keep ? rounded : scalar_t(0);
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

// Whether x lies in the format's range [min, max], compared exactly; NaN does not. Where a
// saturating rounding leaves x's gradient (fastnets.quant.quantize's zero_outside_range). The ends
// code * 2^-fl are exact doubles for every format (make_fixed_point_format), unlike x * 2^fl,
// which can underflow to 0 for fl < 0 (an end of 0, wl = 1, would then take in tiny values).
template <typename scalar_t>
struct FixedPointInRangeOp {
  double min, max;

  explicit FixedPointInRangeOp(const FixedPointFormat& format)
      : min(format.min_code * format.eps), max(format.max_code * format.eps) {}

  FASTNETS_HOST_DEVICE bool operator()(scalar_t x, uint32_t /*word*/) const {
    const double value = fixed_point_input(x);
    return value >= min && value <= max;
  }
};

}  // namespace fastnets
