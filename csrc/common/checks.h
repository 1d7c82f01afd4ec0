#pragma once
// Argument checks shared by the ops: every message names the argument and what was expected.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace fastnets {

inline bool is_training_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline void check_training_dtype(const at::Tensor& t, const char* name) {
  TORCH_CHECK(is_training_dtype(t.scalar_type()), name,
              " must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
}

inline void check_probability(double p, const char* name) {
  TORCH_CHECK(p >= 0.0 && p <= 1.0, name, " must be a probability in [0, 1], got ", p);
}

// The (seed, offset) pair an op saves for its backward: int64 tensor of shape [2] on `device`.
inline void check_seed_offset(const at::Tensor& seed_offset, const at::Device& device) {
  TORCH_CHECK(seed_offset.scalar_type() == at::kLong && seed_offset.dim() == 1 && seed_offset.numel() == 2,
              "seed_offset must be an int64 tensor of shape [2] (seed, offset), got ",
              seed_offset.scalar_type(), " of shape ", seed_offset.sizes());
  TORCH_CHECK(seed_offset.device() == device, "seed_offset must be on ", device, ", got ", seed_offset.device());
}

}  // namespace fastnets
