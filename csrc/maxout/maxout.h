#pragma once
// Maxout (Goodfellow et al. 2013), the math shared by the CPU and CUDA kernels.
//
// The input is viewed as (outer, channels * pieces, inner), dim being the middle one; output
// (outer, channels, inner) takes the max over each group of `pieces` consecutive entries and
// keeps the winner's position in its group in one byte. The rule is torch.max(dim)'s: the first
// maximum wins, and a NaN wins over any number (the first NaN).
#include <cstdint>

#include "common/macros.h"

namespace fastnets {

constexpr int64_t kMaxoutMaxPieces = 256;  // the argmax is one byte

template <typename acc_t>
FASTNETS_HOST_DEVICE bool maxout_takes(acc_t candidate, acc_t best) {
  // candidate != candidate: NaN. best == best: not already NaN, so the first NaN stays.
  // Bitwise operators, not || and &&: no branches, so the CPU loops vectorize.
  return ((candidate > best) | (candidate != candidate)) & (best == best);
}

// One output: max over x[0], x[stride], ..., x[(pieces - 1) * stride].
template <typename scalar_t, typename acc_t>
FASTNETS_HOST_DEVICE scalar_t maxout_group(const scalar_t* x, int64_t stride, int64_t pieces, uint8_t& argmax) {
  acc_t best = static_cast<acc_t>(x[0]);
  uint8_t best_piece = 0;
  for (int64_t k = 1; k < pieces; ++k) {
    const acc_t candidate = static_cast<acc_t>(x[k * stride]);
    const bool takes = maxout_takes(candidate, best);
    best = takes ? candidate : best;
    best_piece = takes ? static_cast<uint8_t>(k) : best_piece;
  }
  argmax = best_piece;
  return static_cast<scalar_t>(best);
}

}  // namespace fastnets
