#pragma once
// One step of SGD with its fixed-point roundings fused into one pass over a parameter
// (fastnets.quant.FixedPointSGD): the math shared by the CPU and CUDA kernels.
//
// Per element, as torch.optim.SGD (foreach=False) computes it, in x's opmath type (float for
// float, half and bfloat16; double for double):
//   g = round_grad(grad)                 (written back to grad)
//   g = -g if maximize;  g = fma(param, weight_decay, g) if weight_decay != 0
//   buf = g on the first step, else fma(g, 1 - dampening, buf * momentum)       (momentum != 0)
//   d = fma(buf, momentum, g) if nesterov, else buf (g without momentum)
//   param = round_weight(fma(d, -lr, param));  buf = round_state(buf)
// torch's add with alpha is an FMA on the CPU and on CUDA, so for float32 and float64 this is
// torch's SGD then fixed_point_quantize_ of grad, param and buffer, bit for bit. For half and
// bfloat16 torch stores each op's result in the parameter's dtype; here only the results are
// stored (as torch's fused SGD does): the float32 step on the values, cast.
#include <ATen/OpMathType.h>
#include <math.h>
#include <string.h>

#include <cstdint>
#include <type_traits>

#include "fixed_point/fixed_point.h"

namespace fastnets {

FASTNETS_HOST_DEVICE float sgd_fma(float a, float b, float c) { return fmaf(a, b, c); }
FASTNETS_HOST_DEVICE double sgd_fma(double a, double b, double c) { return fma(a, b, c); }

// cond ? a : b for a condition fixed for the whole loop. GCC vectorizes no select on such a
// condition, so on the CPU it is a bitwise blend with an all-ones or all-zeros mask.
template <typename real_t>
FASTNETS_HOST_DEVICE real_t sgd_pick(bool cond, real_t a, real_t b) {
#if defined(__CUDA_ARCH__)
  return cond ? a : b;
#else
  using bits_t = std::conditional_t<sizeof(real_t) == 4, uint32_t, uint64_t>;
  static_assert(sizeof(real_t) == sizeof(bits_t), "sgd_pick takes float or double");
  bits_t a_bits, b_bits;
  memcpy(&a_bits, &a, sizeof a);
  memcpy(&b_bits, &b, sizeof b);
  const bits_t mask = bits_t(0) - static_cast<bits_t>(cond);
  const bits_t bits = (a_bits & mask) | (b_bits & ~mask);
  real_t result;
  memcpy(&result, &bits, sizeof result);
  return result;
#endif
}

// Which roundings a kernel can meet, fixed at compile time so that the common cases compute
// only what they need: none at all, only round-to-nearest, only stochastic, or both kinds (each
// rounding then computes both codes and picks one).
enum class SgdRoundingMode { kNone, kNearest, kStochastic, kAny };

// One of a step's three roundings: off (value passed through), or to `format`, nearest or
// stochastic with the element's word. format_t is FixedPointFormat (double arithmetic) or, where
// it gives the same bits (format.float_exact, scalar_t not double), FixedPointFormatFloat.
// Returns the value in real_t, to be cast to scalar_t: fixed_point_quantize's result, cast.
template <typename format_t>
struct SgdRounding {
  format_t format;
  bool enabled;
  bool stochastic;

  template <SgdRoundingMode kMode, typename real_t>
  FASTNETS_HOST_DEVICE real_t apply(real_t value, uint32_t word) const {
    if constexpr (kMode == SgdRoundingMode::kNone) {
      return value;
    } else {
      using math_t = decltype(format.eps);
      const math_t x = static_cast<math_t>(value);
      math_t code;
      if constexpr (kMode == SgdRoundingMode::kNearest) {
        code = fixed_point_code_nearest(x, format);
      } else if constexpr (kMode == SgdRoundingMode::kStochastic) {
        code = fixed_point_code_stochastic(x, word, format);
      } else {
        code = sgd_pick(stochastic, fixed_point_code_stochastic(x, word, format), fixed_point_code_nearest(x, format));
      }
      // Through float, as fixed_point_output casts to 16-bit types (for float and double: the cast).
      using rounded_t = std::conditional_t<std::is_same_v<real_t, double>, double, float>;
      return sgd_pick(enabled, static_cast<real_t>(static_cast<rounded_t>(code * format.eps)), value);
    }
  }
};

template <typename scalar_t, typename format_t>
struct FixedPointSgdStep {
  using real_t = at::opmath_type<scalar_t>;
  real_t neg_lr, momentum, dampening_keep, weight_decay;  // dampening_keep = 1 - dampening
  bool decays, nesterov, maximize, first_step;
  SgdRounding<format_t> round_grad, round_weight, round_state;

  // x rounded by `rounding` (kMode covers the roundings: SgdRoundingMode), in scalar_t.
  template <SgdRoundingMode kMode>
  FASTNETS_HOST_DEVICE scalar_t round(const SgdRounding<format_t>& rounding, real_t x, uint32_t word) const {
    return static_cast<scalar_t>(rounding.template apply<kMode>(x, word));
  }

  // The step before its last two roundings: returns the parameter moved, from the rounded
  // gradient; with kMomentum, `buffer` goes from the old momentum buffer to the new one.
  template <bool kMomentum>
  FASTNETS_HOST_DEVICE real_t move(real_t grad, real_t param, real_t& buffer) const {
    real_t g = sgd_pick(maximize, -grad, grad);
    g = sgd_pick(decays, sgd_fma(param, weight_decay, g), g);
    real_t direction = g;
    if constexpr (kMomentum) {
      buffer = sgd_pick(first_step, g, sgd_fma(g, dampening_keep, buffer * momentum));
      direction = sgd_pick(nesterov, sgd_fma(buffer, momentum, g), buffer);
    }
    return sgd_fma(direction, neg_lr, param);
  }

  // The whole step on one element; `buffer` is read and written only with kMomentum.
  template <bool kMomentum, SgdRoundingMode kMode>
  FASTNETS_HOST_DEVICE void update(scalar_t& param, scalar_t& grad, scalar_t& buffer, uint32_t grad_word,
                                   uint32_t weight_word, uint32_t state_word) const {
    if constexpr (kMode != SgdRoundingMode::kNone) {
      grad = round<kMode>(round_grad, static_cast<real_t>(grad), grad_word);
    }
    real_t next = static_cast<real_t>(buffer);
    const real_t moved = move<kMomentum>(static_cast<real_t>(grad), static_cast<real_t>(param), next);
    if constexpr (kMomentum) buffer = round<kMode>(round_state, next, state_word);
    param = round<kMode>(round_weight, moved, weight_word);
  }
};

}  // namespace fastnets
