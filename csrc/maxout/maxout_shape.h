#pragma once
// Argument checks and the (outer, groups, pieces, inner) view of maxout, shared by the CPU and
// CUDA entry points.
#include <ATen/WrapDimUtils.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <vector>

#include "common/checks.h"
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

// Checks maxout_backward's arguments; in_sizes receives grad_input's sizes.
inline MaxoutShape maxout_backward_shape(const at::Tensor& grad_output, const at::Tensor& argmax, int64_t pieces,
                                         int64_t dim, std::vector<int64_t>& in_sizes) {
  TORCH_CHECK(is_training_dtype(grad_output.scalar_type()),
              "grad_output must be float32, float64, float16 or bfloat16, got ", grad_output.scalar_type());
  TORCH_CHECK(argmax.scalar_type() == at::kByte && argmax.sizes() == grad_output.sizes(),
              "argmax must be a uint8 tensor of grad_output's shape ", grad_output.sizes(), ", got ",
              argmax.scalar_type(), " of shape ", argmax.sizes());
  TORCH_CHECK(argmax.device() == grad_output.device(), "argmax must be on ", grad_output.device());
  TORCH_CHECK(grad_output.dim() > 0, "grad_output must have at least one dimension, got a scalar");
  in_sizes = maxout_sizes(grad_output.sizes(), c10::maybe_wrap_dim(dim, grad_output.dim()), pieces, 1);
  return maxout_shape(in_sizes, pieces, dim, "grad_input");
}

}  // namespace fastnets
