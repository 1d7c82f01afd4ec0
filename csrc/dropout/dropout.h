#pragma once
// Dropout math shared by the CPU and CUDA kernels.
//
// Element i is kept iff word i of the Philox stream (seed, offset) is >= keep_threshold,
// i.e. iff uniform_i = word_i * 2^-32 >= p, and is then scaled by 1 / (1 - p). A dropped
// element is multiplied by zero, as torch.nn.functional.dropout does (NaN and inf stay NaN).
// The backward pass applies the same function to the incoming gradient with the same
// (seed, offset), so no mask is ever stored.
#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace fastnets {

// Whether no word reaches ceil(p * 2^32): p = 1, or p within 2^-32 of it.
inline bool dropout_drops_all(double p) {
  return std::ceil(std::ldexp(p, 32)) > 4294967295.0;
}

// ceil(p * 2^32), the smallest word that keeps its element (any value when all are dropped).
inline uint32_t dropout_keep_threshold(double p) {
  return dropout_drops_all(p) ? 0xFFFFFFFFu : static_cast<uint32_t>(std::ceil(std::ldexp(p, 32)));
}

// The multiplier of a kept element; zero when every element is dropped, so that then even the
// word 0xFFFFFFFF, which the threshold above lets through, gives x * 0.
inline double dropout_scale(double p) {
  return dropout_drops_all(p) ? 0.0 : 1.0 / (1.0 - p);
}

// One element, given its stream word. acc_t is float for float32/float16/bfloat16, double for float64.
template <typename scalar_t, typename acc_t>
struct DropoutOp {
  uint32_t keep_threshold;
  acc_t scale;

  FASTNETS_HOST_DEVICE scalar_t operator()(scalar_t x, uint32_t word) const {
    const acc_t multiplier = word >= keep_threshold ? scale : acc_t(0);
    return static_cast<scalar_t>(static_cast<acc_t>(x) * multiplier);
  }
};

template <typename scalar_t, typename acc_t>
DropoutOp<scalar_t, acc_t> make_dropout_op(double p) {
  return {dropout_keep_threshold(p), static_cast<acc_t>(dropout_scale(p))};
}

}  // namespace fastnets
