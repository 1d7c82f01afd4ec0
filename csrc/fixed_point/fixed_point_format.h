#pragma once
// Host-side checks and set-up of a fixed-point format, shared by the CPU and CUDA entry points.
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "fixed_point/fixed_point.h"

namespace fastnets {

// wl up to 53 keeps every code exact in double. fl keeps 2^fl, 2^-fl and the largest value
// (2^(wl-1) - 1) * 2^-fl finite, normal doubles.
inline FixedPointFormat make_fixed_point_format(int64_t wl, int64_t fl, bool clamp, bool symmetric) {
  TORCH_CHECK(wl >= 1 && wl <= 53, "wl (word length, sign bit included) must be in [1, 53], got ", wl);
  const int64_t min_fl = std::max<int64_t>(-1022, wl - 1024);
  TORCH_CHECK(fl >= min_fl && fl <= 1022, "fl (fraction bits) must be in [", min_fl, ", 1022] for wl = ", wl,
              ", got ", fl);
  const double half_range = std::ldexp(1.0, static_cast<int>(wl - 1));
  return FixedPointFormat{std::ldexp(1.0, static_cast<int>(fl)), std::ldexp(1.0, static_cast<int>(-fl)),
                          symmetric ? 1.0 - half_range : -half_range, half_range - 1.0, clamp,
                          fixed_point_float_exact(wl, fl, clamp)};
}

// fixed_point_quantize_masked's mask: one bool per element of input, on its device.
inline void check_quantize_mask(const at::Tensor& input, const at::Tensor& mask) {
  TORCH_CHECK(mask.scalar_type() == c10::kBool, "mask must be a bool tensor, got ", mask.scalar_type());
  TORCH_CHECK(mask.sizes() == input.sizes(), "mask must have input's size ", input.sizes(), ", got ", mask.sizes());
  TORCH_CHECK(mask.device() == input.device(), "mask must be on input's device (", input.device(), "), got ",
              mask.device());
}

// A rounding that an op may or may not apply, given as [] (none) or [wl, fl, stochastic, clamp,
// symmetric] (the flags 0 or 1), as fixed_point_sgd_ takes its three.
struct OptionalFixedPointFormat {
  bool enabled = false;
  bool stochastic = false;
  FixedPointFormat format{1.0, 1.0, -1.0, 0.0, true, true};
};

inline OptionalFixedPointFormat parse_optional_format(c10::IntArrayRef spec, const char* name) {
  OptionalFixedPointFormat result;
  if (spec.empty()) return result;
  TORCH_CHECK(spec.size() == 5, name, " must be [] or [wl, fl, stochastic, clamp, symmetric], got ", spec);
  for (size_t flag = 2; flag < 5; ++flag) {
    TORCH_CHECK(spec[flag] == 0 || spec[flag] == 1, name,
                " = [wl, fl, stochastic, clamp, symmetric] takes flags 0 or 1, got ", spec);
  }
  result.enabled = true;
  result.stochastic = spec[2] == 1;
  try {
    result.format = make_fixed_point_format(spec[0], spec[1], spec[3] == 1, spec[4] == 1);
  } catch (const c10::Error& error) {
    TORCH_CHECK(false, name, ": ", error.msg());
  }
  return result;
}

// Integer codes come in int8, int16 or int32.
inline void check_code_word_length(int64_t wl) {
  TORCH_CHECK(wl >= 1 && wl <= 32, "wl must be in [1, 32] for integer codes, got ", wl);
}

inline bool is_stochastic_rounding(c10::string_view rounding) {
  TORCH_CHECK(rounding == "stochastic" || rounding == "nearest",
              "rounding must be \"nearest\" or \"stochastic\", got \"", std::string(rounding), "\"");
  return rounding == "stochastic";
}

// The smallest integer dtype that holds wl-bit codes.
inline c10::ScalarType fixed_point_code_dtype(int64_t wl) {
  return wl <= 8 ? c10::kChar : (wl <= 16 ? c10::kShort : c10::kInt);
}

// fn(code_t{}) with code_t the C++ type of a code dtype.
template <typename Fn>
void dispatch_code_dtype(c10::ScalarType dtype, const Fn& fn) {
  switch (dtype) {
    case c10::kChar: fn(int8_t{}); break;
    case c10::kShort: fn(int16_t{}); break;
    case c10::kInt: fn(int32_t{}); break;
    default: TORCH_CHECK(false, "fixed-point codes are int8, int16 or int32, got ", dtype);
  }
}

}  // namespace fastnets
