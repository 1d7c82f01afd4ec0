// Maxout: CUDA kernels. Schemas and CPU kernels: maxout.cpp; the math: maxout.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "maxout/maxout_shape.h"

namespace fastnets {
namespace {

constexpr int kThreads = 256;

// One thread per output (outer, group, i): its pieces lie `inner` apart, so neighbouring threads
// read neighbouring addresses.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
maxout_forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, uint8_t* __restrict__ argmax,
                      int64_t outputs, int64_t pieces, int64_t inner) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < outputs; index += stride) {
    const int64_t row = index / inner, i = index - row * inner;
    y[index] = maxout_group<scalar_t, acc_t>(x + row * pieces * inner + i, inner, pieces, argmax[index]);
  }
}

// One thread per input element: its gradient, or zero. No atomics: each has one output.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
maxout_backward_kernel(const scalar_t* __restrict__ grad_out, const uint8_t* __restrict__ argmax,
                       scalar_t* __restrict__ grad_in, int64_t inputs, int64_t pieces, int64_t inner) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < inputs; index += stride) {
    const int64_t i = index % inner;
    const int64_t row_piece = index / inner;  // row * pieces + piece
    const int64_t row = row_piece / pieces, piece = row_piece - row * pieces;
    const int64_t output = row * inner + i;
    grad_in[index] = argmax[output] == piece ? grad_out[output] : scalar_t(0);
  }
}

std::tuple<at::Tensor, at::Tensor> maxout_cuda(const at::Tensor& input, int64_t pieces, int64_t dim) {
  check_training_dtype(input, "input");
  const MaxoutShape s = maxout_shape(input.sizes(), pieces, dim, "input");
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor in = input.contiguous();
  const auto out_sizes = maxout_sizes(in.sizes(), s.dim, 1, pieces);
  at::Tensor out = at::empty(out_sizes, in.options());
  at::Tensor argmax = at::empty(out_sizes, in.options().dtype(at::kByte));
  const int64_t outputs = out.numel();
  if (outputs == 0) return {out, argmax};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "fastnets::maxout_cuda", [&] {
    maxout_forward_kernel<scalar_t><<<grid_size(outputs, kThreads), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        in.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), argmax.mutable_data_ptr<uint8_t>(), outputs,
        s.pieces, s.inner);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, argmax};
}

at::Tensor maxout_backward_cuda(const at::Tensor& grad_output, const at::Tensor& argmax, int64_t pieces, int64_t dim) {
  std::vector<int64_t> in_sizes;
  const MaxoutShape s = maxout_backward_shape(grad_output, argmax, pieces, dim, in_sizes);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const at::Tensor g = grad_output.contiguous();
  const at::Tensor a = argmax.contiguous();
  at::Tensor grad_in = at::empty(in_sizes, g.options());
  const int64_t inputs = grad_in.numel();
  if (inputs == 0) return grad_in;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "fastnets::maxout_backward_cuda", [&] {
    maxout_backward_kernel<scalar_t><<<grid_size(inputs, kThreads), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        g.const_data_ptr<scalar_t>(), a.const_data_ptr<uint8_t>(), grad_in.mutable_data_ptr<scalar_t>(), inputs,
        s.pieces, s.inner);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_in;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnets, CUDA, m) {
  m.impl("maxout", &maxout_cuda);
  m.impl("maxout_backward", &maxout_backward_cuda);
}

}  // namespace fastnets
