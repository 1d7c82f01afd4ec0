#pragma once
// exp, sigmoid and tanh for the kernels, shared by CPU and CUDA: written with explicit fma and the
// correctly rounded +, -, *, / only, and no product added outside an fma except exact products by
// powers of two. Neither libm nor a compiler's contraction of a * b + c can then change a bit, so
// CPU and CUDA agree exactly, and GCC vectorizes the CPU loops they are inlined into.
#include <math.h>

#include <cstdint>
#include <cstring>

#include "common/macros.h"

namespace fastnets {

// The bits of a value as another type of the same size (memcpy: defined behaviour, and free).
template <typename To, typename From>
FASTNETS_HOST_DEVICE To bits_as(From value) {
  static_assert(sizeof(To) == sizeof(From), "bits_as needs types of one size");
  To result;
  memcpy(&result, &value, sizeof result);
  return result;
}

// e^x for finite x in [-88, 89] (float) / [-40, 710] (double): x = n ln2 + r, |r| <= ln2 / 2
// (Cody-Waite: ln2 in two parts), e^r by its Taylor polynomial, times 2^n as two halves, because
// 2^n alone may not be a normal number. Above ~88.7 (709.8) the product overflows to inf.
FASTNETS_HOST_DEVICE float fma_exp(float x) {
  const float shift = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = fmaf(x, 1.44269504f, shift) - shift;
  float r = fmaf(n, -0.693359375f, x);
  r = fmaf(n, 2.12194440e-4f, r);
  float p = 1.0f / 5040;
  p = fmaf(p, r, 1.0f / 720);
  p = fmaf(p, r, 1.0f / 120);
  p = fmaf(p, r, 1.0f / 24);
  p = fmaf(p, r, 1.0f / 6);
  p = fmaf(p, r, 0.5f);
  p = fmaf(p, r, 1.0f);
  p = fmaf(p, r, 1.0f);
  const int32_t k = static_cast<int32_t>(n);
  const int32_t half = k >> 1;  // floor(k / 2): one shift, where k / 2 takes three
  return p * bits_as<float>(static_cast<uint32_t>(half + 127) << 23) *
         bits_as<float>(static_cast<uint32_t>(k - half + 127) << 23);
}

FASTNETS_HOST_DEVICE double fma_exp(double x) {
  const double shift = 6755399441055744.0;  // 1.5 * 2^52
  const double n = fma(x, 1.4426950408889634, shift) - shift;
  double r = fma(n, -6.93147180369123816490e-01, x);
  r = fma(n, -1.90821492927058770002e-10, r);
  // Taylor: 1/k! for k = 13 .. 0 (explicit, so that GCC vectorizes the loop this is inlined into)
  double p = 1.6059043836821613e-10;
  p = fma(p, r, 2.08767569878681e-09);
  p = fma(p, r, 2.505210838544172e-08);
  p = fma(p, r, 2.755731922398589e-07);
  p = fma(p, r, 2.7557319223985893e-06);
  p = fma(p, r, 2.48015873015873e-05);
  p = fma(p, r, 1.984126984126984e-04);
  p = fma(p, r, 1.388888888888889e-03);
  p = fma(p, r, 8.333333333333333e-03);
  p = fma(p, r, 4.1666666666666664e-02);
  p = fma(p, r, 1.6666666666666666e-01);
  p = fma(p, r, 0.5);
  p = fma(p, r, 1.0);
  p = fma(p, r, 1.0);
  const int64_t k = static_cast<int64_t>(n);
  const int64_t half = k >> 1;
  return p * bits_as<double>(static_cast<uint64_t>(half + 1023) << 52) *
         bits_as<double>(static_cast<uint64_t>(k - half + 1023) << 52);
}

// x limited to [low, high], NaN to low: the argument of fma_exp, which converts it to an integer
// (undefined for NaN); the callers return NaN themselves. Each select is one SIMD max or min (the
// second operand when x is NaN).
template <typename T>
FASTNETS_HOST_DEVICE T exp_argument(T x, T low, T high) {
  const T above_low = x > low ? x : low;
  return above_low < high ? above_low : high;
}

// 1 / (1 + e^-a). Beyond the clamp the result no longer changes (1, or 0 via e^-a = inf); NaN
// stays NaN.
FASTNETS_HOST_DEVICE float fma_sigmoid(float a) {
  const float e = fma_exp(exp_argument(-a, -88.0f, 89.0f));
  return a == a ? 1.0f / (1.0f + e) : a;
}

FASTNETS_HOST_DEVICE double fma_sigmoid(double a) {
  const double e = fma_exp(exp_argument(-a, -40.0, 710.0));
  return a == a ? 1.0 / (1.0 + e) : a;
}

// tanh x = 1 - 2 / (1 + e^2x): absolute error of a few ulp of 1 (not relative, near 0).
FASTNETS_HOST_DEVICE float fma_tanh(float x) {
  const float e = fma_exp(exp_argument(2.0f * x, -88.0f, 89.0f));
  return x == x ? 1.0f - 2.0f / (1.0f + e) : x;
}

FASTNETS_HOST_DEVICE double fma_tanh(double x) {
  const double e = fma_exp(exp_argument(2.0 * x, -40.0, 710.0));
  return x == x ? 1.0 - 2.0 / (1.0 + e) : x;
}

}  // namespace fastnets
