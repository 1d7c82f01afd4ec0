#pragma once
// Argument checks and the (outer, groups, pieces, inner) view of maxout, shared by the CPU and
// CUDA entry points.
#include <ATen/WrapDimUtils.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <vector>

#include "maxout/maxout.h"

namespace fastnets {

struct MaxoutShape {
  int64_t dim;     // wrapped
  int64_t outer;   // product of the sizes before dim
  int64_t groups;  // output size along dim
  int64_t pieces;
  int64_t inner;   // product of the sizes after dim
};

inline MaxoutShape maxout_shape(at::IntArrayRef input_sizes, int64_t pieces, int64_t dim, const char* input_name) {
  TORCH_CHECK(!input_sizes.empty(), input_name, " must have at least one dimension, got a scalar");
  TORCH_CHECK(pieces >= 1 && pieces <= kMaxoutMaxPieces, "pieces must be in [1, ", kMaxoutMaxPieces, "], got ", pieces);
  const int64_t wrapped = c10::maybe_wrap_dim(dim, static_cast<int64_t>(input_sizes.size()));
  TORCH_CHECK(input_sizes[wrapped] % pieces == 0, "pieces (", pieces, ") must divide ", input_name, ".size(", dim,
              ") = ", input_sizes[wrapped]);
  MaxoutShape shape{wrapped, 1, input_sizes[wrapped] / pieces, pieces, 1};
  for (int64_t d = 0; d < wrapped; ++d) shape.outer *= input_sizes[d];
  for (int64_t d = wrapped + 1; d < static_cast<int64_t>(input_sizes.size()); ++d) shape.inner *= input_sizes[d];
  return shape;
}

// The sizes of a tensor like `sizes` with dim scaled: by 1 / pieces (forward) or pieces (backward).
inline std::vector<int64_t> maxout_sizes(at::IntArrayRef sizes, int64_t dim, int64_t numerator, int64_t denominator) {
  std::vector<int64_t> result(sizes.begin(), sizes.end());
  result[dim] = result[dim] * numerator / denominator;
  return result;
}

}  // namespace fastnets
