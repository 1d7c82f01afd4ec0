#pragma once
// RBM unit sampling (Hinton 2002; Hinton, "A practical guide to training RBMs", 2010): the math
// shared by the CPU and CUDA kernels.
//
// Given a unit's total input a (the GEMM's output plus the bias), a unit
//   bernoulli: mean = sigmoid(a),  sample = 1 iff u < mean, else 0;
//   gaussian (unit variance): mean = a,  sample = a + z,  z ~ N(0, 1) by Box-Muller:
//             z = sqrt(-2 ln u1) * cos(2 pi u2).
// For element i (row-major) of an n-element output drawn from the stream (seed, offset):
//   u = uniform from word i, u1 = 1 - u, u2 = uniform from word 4 * ceil(n / 4) + i (the next
//   n words, starting on a Philox block boundary). A uniform is exact: (word >> 8) * 2^-24 in float
//   arithmetic (float32, float16, bfloat16; fastnets.random.uniform(dtype=float32)), word * 2^-32
//   in float64; u1 = 1 - u is never 0.
// The Bernoulli test compares u with the mean as returned (rounded to the output dtype), so a
// reference built from fastnets.random reproduces the samples from the returned means exactly.
//
// log and cos are written here, like exp and sigmoid (common/fma_math.h), with explicit fma and
// the correctly rounded +, -, *, / and sqrt only, and no product is added outside an fma (except
// exact products by powers of two), so neither libm nor a compiler's contraction of a * b + c can
// change a bit: CPU and CUDA compute the same means and samples from the same total input (and
// the CPU loops vectorize).
#include <math.h>

#include <cstdint>
#include <cstring>

#include "common/fma_math.h"
#include "common/macros.h"

namespace fastnets {

// ln u for u in [2^-32, 1]: u = m 2^e with m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(s) with
// s = (m - 1) / (m + 1), |s| < 0.172, by its series.
FASTNETS_HOST_DEVICE float rbm_log_unit(float u) {
  const uint32_t bits = bits_as<uint32_t>(u);
  const float mantissa = bits_as<float>((bits & 0x007FFFFFu) | 0x3F800000u);  // [1, 2)
  const bool above = mantissa > 1.41421356f;
  const float m = above ? mantissa * 0.5f : mantissa;
  const float e = static_cast<float>(static_cast<int32_t>(bits >> 23) - 127 + (above ? 1 : 0));
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  float p = 1.0f / 11;
  p = fmaf(p, s2, 1.0f / 9);
  p = fmaf(p, s2, 1.0f / 7);
  p = fmaf(p, s2, 1.0f / 5);
  p = fmaf(p, s2, 1.0f / 3);
  p = fmaf(p, s2, 1.0f);
  return fmaf(e, 0.693359375f, fmaf(e, -2.12194440e-4f, 2.0f * s * p));
}

FASTNETS_HOST_DEVICE double rbm_log_unit(double u) {
  const uint64_t bits = bits_as<uint64_t>(u);
  const double mantissa = bits_as<double>((bits & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull);
  const bool above = mantissa > 1.4142135623730951;
  const double m = above ? mantissa * 0.5 : mantissa;
  const double e = static_cast<double>(static_cast<int64_t>(bits >> 52) - 1023 + (above ? 1 : 0));
  const double s = (m - 1.0) / (m + 1.0);
  const double s2 = s * s;
  double p = 1.0 / 21;  // 1 / (2k + 1) for k = 10 .. 0
  p = fma(p, s2, 1.0 / 19);
  p = fma(p, s2, 1.0 / 17);
  p = fma(p, s2, 1.0 / 15);
  p = fma(p, s2, 1.0 / 13);
  p = fma(p, s2, 1.0 / 11);
  p = fma(p, s2, 1.0 / 9);
  p = fma(p, s2, 1.0 / 7);
  p = fma(p, s2, 1.0 / 5);
  p = fma(p, s2, 1.0 / 3);
  p = fma(p, s2, 1.0);
  return fma(e, 6.93147180369123816490e-01, fma(e, 1.90821492927058770002e-10, 2.0 * s * p));
}

// cos(2 pi u) for u in [0, 1): u = q / 4 + f with q = round(4u) and |f| <= 1/8 (both exact),
// x = 2 pi f in [-pi/4, pi/4], and cos(q pi / 2 + x) is +-cos x or +-sin x by quadrant.
FASTNETS_HOST_DEVICE float rbm_cos_2pi(float u) {
  const float shift = 12582912.0f;
  const float q = fmaf(u, 4.0f, shift) - shift;
  const float x = fmaf(q, -0.25f, u) * 6.28318531f;
  const float x2 = x * x;
  float c = 1.0f / 40320;
  c = fmaf(c, x2, -1.0f / 720);
  c = fmaf(c, x2, 1.0f / 24);
  c = fmaf(c, x2, -0.5f);
  c = fmaf(c, x2, 1.0f);
  float s = 1.0f / 362880;
  s = fmaf(s, x2, -1.0f / 5040);
  s = fmaf(s, x2, 1.0f / 120);
  s = fmaf(s, x2, -1.0f / 6);
  s = fmaf(s, x2, 1.0f) * x;
  const int32_t quadrant = static_cast<int32_t>(q) & 3;
  const float magnitude = (quadrant & 1) ? s : c;
  return (quadrant == 1 || quadrant == 2) ? -magnitude : magnitude;
}

FASTNETS_HOST_DEVICE double rbm_cos_2pi(double u) {
  const double shift = 6755399441055744.0;
  const double q = fma(u, 4.0, shift) - shift;
  const double x = fma(q, -0.25, u) * 6.283185307179586;
  const double x2 = x * x;
  // cos: (-1)^k / (2k)!, sin: (-1)^k / (2k+1)!, k = 8 .. 0
  double c = 4.779477332387385e-14, s = 2.8114572543455206e-15;
  c = fma(c, x2, -1.1470745597729725e-11);
  s = fma(s, x2, -7.647163731819816e-13);
  c = fma(c, x2, 2.08767569878681e-09);
  s = fma(s, x2, 1.6059043836821613e-10);
  c = fma(c, x2, -2.755731922398589e-07);
  s = fma(s, x2, -2.505210838544172e-08);
  c = fma(c, x2, 2.48015873015873e-05);
  s = fma(s, x2, 2.755731922398589e-06);
  c = fma(c, x2, -1.388888888888889e-03);
  s = fma(s, x2, -1.984126984126984e-04);
  c = fma(c, x2, 4.1666666666666664e-02);
  s = fma(s, x2, 8.333333333333333e-03);
  c = fma(c, x2, -0.5);
  s = fma(s, x2, -1.6666666666666666e-01);
  c = fma(c, x2, 1.0);
  s = fma(s, x2, 1.0);
  s *= x;
  const int32_t quadrant = static_cast<int32_t>(q) & 3;
  const double magnitude = (quadrant & 1) ? s : c;
  return (quadrant == 1 || quadrant == 2) ? -magnitude : magnitude;
}

// A uniform in [0, 1) from a stream word.
FASTNETS_HOST_DEVICE float rbm_uniform(uint32_t word, float) {
  return static_cast<float>(word >> 8) * 0x1p-24f;
}
FASTNETS_HOST_DEVICE double rbm_uniform(uint32_t word, double) {
  return static_cast<double>(word) * 0x1p-32;
}
// 1 - u, in (0, 1] (exact), for the logarithm.
template <typename acc_t>
FASTNETS_HOST_DEVICE acc_t rbm_uniform_positive(uint32_t word) {
  return acc_t(1) - rbm_uniform(word, acc_t{});
}

// a + z, z ~ N(0, 1) by Box-Muller. One explicit fma: a compiler may not fuse it differently.
template <typename acc_t>
FASTNETS_HOST_DEVICE acc_t rbm_add_normal(acc_t a, uint32_t word1, uint32_t word2) {
  const acc_t radius = sqrt(acc_t(-2) * rbm_log_unit(rbm_uniform_positive<acc_t>(word1)));
  return fma(radius, rbm_cos_2pi(rbm_uniform(word2, acc_t{})), a);
}

enum class RbmUnit { kBernoulli, kGaussian };

// One unit from its total input and its words. acc_t: float for float32/float16/bfloat16, double
// for float64. Two calls, not one returning a pair: GCC vectorizes the loops that store each.
template <RbmUnit kUnit, typename scalar_t, typename acc_t>
struct RbmSampleOp {
  FASTNETS_HOST_DEVICE scalar_t mean(scalar_t total_input) const {
    return kUnit == RbmUnit::kBernoulli ? static_cast<scalar_t>(fma_sigmoid(static_cast<acc_t>(total_input)))
                                        : total_input;
  }

  // `mean` is mean(total_input).
  FASTNETS_HOST_DEVICE scalar_t sample(scalar_t total_input, scalar_t mean, uint32_t word1, uint32_t word2) const {
    if (kUnit == RbmUnit::kBernoulli) {
      return static_cast<scalar_t>(rbm_uniform(word1, acc_t{}) < static_cast<acc_t>(mean) ? acc_t(1) : acc_t(0));
    }
    return static_cast<scalar_t>(rbm_add_normal(static_cast<acc_t>(total_input), word1, word2));
  }
};

// Where the second word of element i starts: the first Philox block after the first n words.
inline uint64_t rbm_second_block(int64_t n) {
  return static_cast<uint64_t>((n + 3) / 4);
}

}  // namespace fastnets
