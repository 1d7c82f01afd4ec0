// Dropout: CUDA kernels. Schemas and CPU kernels: dropout.cpp; the math: dropout.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/cuda_elementwise.cuh"
#include "dropout/dropout.h"

namespace fastnets {
namespace {

at::Tensor dropout_apply_cuda(const at::Tensor& input, double p, const PhiloxSource& source) {
  const at::Tensor in = input.contiguous();
  at::Tensor out = at::empty_like(in);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "fastnets::dropout_cuda", [&] {
    const auto op = make_dropout_op<scalar_t, at::opmath_type<scalar_t>>(p);
    cuda_map_with_philox<true>(in.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), in.numel(), op, source);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> dropout_cuda(const at::Tensor& input, double p,
                                                const std::optional<at::Generator>& generator) {
  TORCH_CHECK(input.is_cuda(), "input must be on the generator's device (cuda), got ", input.device());
  check_training_dtype(input, "input");
  check_probability(p, "p");
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor seed_offset = at::empty({2}, input.options().dtype(at::kLong));
  const PhiloxSource source = philox_from_generator(generator, input.get_device(), seed_offset.mutable_data_ptr<int64_t>());
  return {dropout_apply_cuda(input, p, source), seed_offset};
}

at::Tensor dropout_backward_cuda(const at::Tensor& grad_output, const at::Tensor& seed_offset, double p) {
  check_training_dtype(grad_output, "grad_output");
  check_probability(p, "p");
  check_seed_offset(seed_offset, grad_output.device());
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const at::Tensor so = seed_offset.contiguous();
  return dropout_apply_cuda(grad_output, p, philox_replay(so.const_data_ptr<int64_t>()));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnets, CUDA, m) {
  m.impl("dropout", &dropout_cuda);
  m.impl("dropout_backward", &dropout_backward_cuda);
}

}  // namespace fastnets
