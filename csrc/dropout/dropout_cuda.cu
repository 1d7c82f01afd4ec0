// Dropout: CUDA kernels. Schemas and CPU kernels: dropout.cpp; the math: dropout.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "common/philox.h"
#include "dropout/dropout.h"

namespace fastnets {
namespace {

constexpr int kThreads = 256;

// Each thread takes kElems consecutive elements (16 bytes, or 32 for float64: one aligned vector
// of at least one Philox block) per step.
// The stream comes either from seed_offset_in (backward) or from the generator's state, which the
// first thread then records in seed_offset_out for the backward pass.
template <typename scalar_t, typename acc_t, int kElems, bool kVectorized>
__global__ void __launch_bounds__(kThreads)
dropout_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out, int64_t n, uint32_t keep_threshold,
               acc_t scale, at::PhiloxCudaState philox, const int64_t* seed_offset_in, int64_t* seed_offset_out) {
  uint64_t seed, offset;
  if (seed_offset_in != nullptr) {
    seed = static_cast<uint64_t>(seed_offset_in[0]);
    offset = static_cast<uint64_t>(seed_offset_in[1]);
  } else {
    const auto state = at::cuda::philox::unpack(philox);
    seed = std::get<0>(state);
    offset = stream_offset(std::get<1>(state));
    if (blockIdx.x == 0 && threadIdx.x == 0) {
      seed_offset_out[0] = static_cast<int64_t>(seed);
      seed_offset_out[1] = static_cast<int64_t>(offset);
    }
  }
  const int64_t groups = (n + kElems - 1) / kElems;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t group = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; group < groups; group += stride) {
    const int64_t first = group * kElems;
    uint32_t words[kElems];
#pragma unroll
    for (int b = 0; b < kElems / 4; ++b) {
      const PhiloxWords block = philox_block(seed, offset, static_cast<uint64_t>(first / 4 + b));
#pragma unroll
      for (int w = 0; w < 4; ++w) words[4 * b + w] = block.w[w];
    }
    if (kVectorized && first + kElems <= n) {
      using Vec = AlignedVector<scalar_t, kElems>;
      Vec v = *reinterpret_cast<const Vec*>(in + first);
#pragma unroll
      for (int j = 0; j < kElems; ++j) v.v[j] = dropout_element(v.v[j], words[j], keep_threshold, scale);
      *reinterpret_cast<Vec*>(out + first) = v;
    } else {
#pragma unroll
      for (int j = 0; j < kElems; ++j) {
        if (first + j < n) out[first + j] = dropout_element(in[first + j], words[j], keep_threshold, scale);
      }
    }
  }
}

// Forward (seed_offset_in == nullptr: draw from `generator`, fill seed_offset_out) or backward.
at::Tensor dropout_apply_cuda(const at::Tensor& input, double p, const std::optional<at::Generator>& generator,
                              const int64_t* seed_offset_in, int64_t* seed_offset_out) {
  const at::Tensor in = input.contiguous();
  at::Tensor out = at::empty_like(in);
  const int64_t n = in.numel();
  const uint32_t keep_threshold = dropout_keep_threshold(p);
  const at::PhiloxCudaState philox =
      seed_offset_in == nullptr ? cuda_philox_state(generator, in.get_device()) : at::PhiloxCudaState();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "fastnets::dropout_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int kElems = sizeof(scalar_t) >= 4 ? 4 : 16 / sizeof(scalar_t);
    const acc_t scale = static_cast<acc_t>(dropout_scale(p));
    const scalar_t* x = in.const_data_ptr<scalar_t>();
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    const auto alignment = sizeof(AlignedVector<scalar_t, kElems>);
    const bool aligned = reinterpret_cast<uintptr_t>(x) % alignment == 0 && reinterpret_cast<uintptr_t>(y) % alignment == 0;
    const int64_t blocks = grid_size((n + kElems - 1) / kElems, kThreads);
    if (aligned) {
      dropout_kernel<scalar_t, acc_t, kElems, true><<<blocks, kThreads, 0, stream>>>(
          x, y, n, keep_threshold, scale, philox, seed_offset_in, seed_offset_out);
    } else {
      dropout_kernel<scalar_t, acc_t, kElems, false><<<blocks, kThreads, 0, stream>>>(
          x, y, n, keep_threshold, scale, philox, seed_offset_in, seed_offset_out);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  at::Tensor out = dropout_apply_cuda(input, p, generator, nullptr, seed_offset.mutable_data_ptr<int64_t>());
  return {out, seed_offset};
}

at::Tensor dropout_backward_cuda(const at::Tensor& grad_output, const at::Tensor& seed_offset, double p) {
  check_training_dtype(grad_output, "grad_output");
  check_probability(p, "p");
  check_seed_offset(seed_offset, grad_output.device());
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const at::Tensor so = seed_offset.contiguous();
  return dropout_apply_cuda(grad_output, p, std::nullopt, so.const_data_ptr<int64_t>(), nullptr);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnets, CUDA, m) {
  m.impl("dropout", &dropout_cuda);
  m.impl("dropout_backward", &dropout_backward_cuda);
}

}  // namespace fastnets
