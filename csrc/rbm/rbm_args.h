#pragma once
// The host side shared by the CPU and CUDA RBM kernels: argument checks and the units' total
// input, input @ weight^T + bias, by one GEMM (BLAS on CPU, cuBLAS on CUDA) with the bias added
// in its epilogue.
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <optional>

#include "common/checks.h"
#include "rbm/rbm.h"

namespace fastnets {

inline RbmUnit parse_rbm_unit(c10::string_view unit) {
  if (unit == "bernoulli") return RbmUnit::kBernoulli;
  if (unit == "gaussian") return RbmUnit::kGaussian;
  TORCH_CHECK(false, "unit must be \"bernoulli\" or \"gaussian\", got \"", std::string(unit), "\"");
}

inline void check_rbm_sample_args(const at::Tensor& input, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias) {
  check_training_dtype(input, "input");
  TORCH_CHECK(input.dim() == 2, "input must be 2-D (batch, in_features), got ", input.dim(), "-D of shape ",
              input.sizes());
  TORCH_CHECK(weight.dim() == 2, "weight must be 2-D (out_features, in_features), got ", weight.dim(),
              "-D of shape ", weight.sizes());
  TORCH_CHECK(weight.size(1) == input.size(1), "weight must have in_features = input.size(1) = ", input.size(1),
              " columns, got weight of shape ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), "weight must have input's dtype ", input.scalar_type(),
              ", got ", weight.scalar_type());
  TORCH_CHECK(weight.device() == input.device(), "weight must be on input's device ", input.device(), ", got ",
              weight.device());
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "bias must be 1-D of out_features = ",
                weight.size(0), " elements, got shape ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == input.scalar_type(), "bias must have input's dtype ", input.scalar_type(),
                ", got ", bias->scalar_type());
    TORCH_CHECK(bias->device() == input.device(), "bias must be on input's device ", input.device(), ", got ",
                bias->device());
  }
}

// input @ weight^T (+ bias) by at::addmm (CUDA; 16-bit types on the CPU, whose float and double take
// rbm.cpp's own GEMM): a fresh contiguous (batch, out_features) tensor the kernels then overwrite
// with the units' means.
inline at::Tensor rbm_total_input(const at::Tensor& input, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias) {
  at::Tensor total = bias.has_value() ? at::addmm(*bias, input, weight.t()) : at::mm(input, weight.t());
  return total.is_contiguous() ? total : total.contiguous();
}

}  // namespace fastnets
