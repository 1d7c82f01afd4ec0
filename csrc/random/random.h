#pragma once
// The Philox stream op's argument checks, shared by its CPU and CUDA entries.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>

#include "common/checks.h"

namespace fastnets {

inline void check_philox_bits_args(const at::Tensor& seed_offset, int64_t numel, int64_t first) {
  check_seed_offset(seed_offset, seed_offset.device());
  TORCH_CHECK(numel >= 0, "numel must be non-negative, got ", numel);
  TORCH_CHECK(first >= 0, "first must be non-negative, got ", first);
  TORCH_CHECK(first <= std::numeric_limits<int64_t>::max() - numel, "first + numel must be below 2^63, got first ",
              first, " and numel ", numel);
}

}  // namespace fastnets
