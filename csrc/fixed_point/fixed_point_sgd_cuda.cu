// SGD with fixed-point roundings in one pass: CUDA kernel. Schema and CPU kernel:
// fixed_point_sgd.cpp; the math: fixed_point_sgd.h.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/cuda_elementwise.cuh"
#include "fixed_point/fixed_point_sgd_args.h"

namespace fastnets {
namespace {

constexpr int kThreads = 256;

// The three roundings' streams (grad, weight, state); only stochastic ones draw and record. The
// op's seed_offsets [3, 2]: the kernel writes zeros for those that do not draw (no separate fill).
struct SgdSources {
  PhiloxSource source[3];
  bool draws[3];
  int64_t* seed_offsets;
};

// Each thread takes 4 consecutive elements, one Philox block of each stream that draws, per step
// of a grid-stride loop. Without momentum `buffer` is param and never touched.
template <bool kMomentum, SgdRoundingMode kMode, typename scalar_t, typename Step>
__global__ void __launch_bounds__(kThreads)
fixed_point_sgd_kernel(scalar_t* param, scalar_t* grad, scalar_t* buffer, int64_t n, Step step, SgdSources sources) {
  constexpr bool kDraws = kMode == SgdRoundingMode::kStochastic || kMode == SgdRoundingMode::kAny;
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    for (int s = 0; s < 3; ++s) {
      if (!sources.draws[s]) sources.seed_offsets[2 * s] = sources.seed_offsets[2 * s + 1] = 0;
    }
  }
  uint64_t seed[3] = {0, 0, 0}, offset[3] = {0, 0, 0};
  if (kDraws) {
    for (int s = 0; s < 3; ++s) {
      if (sources.draws[s]) sources.source[s].get(seed[s], offset[s]);
    }
  }
  const int64_t groups = (n + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t group = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; group < groups; group += stride) {
    PhiloxWords words[3] = {};
    if (kDraws) {
      for (int s = 0; s < 3; ++s) {
        if (sources.draws[s]) words[s] = philox_block(seed[s], offset[s], static_cast<uint64_t>(group));
      }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t i = 4 * group + j;
      if (i < n) {
        step.template update<kMomentum, kMode>(param[i], grad[i], buffer[i], words[0].w[j], words[1].w[j],
                                               words[2].w[j]);
      }
    }
  }
}

at::Tensor fixed_point_sgd_cuda(at::Tensor& param, at::Tensor& grad, const std::optional<at::Tensor>& momentum_buffer,
                                double lr, double momentum, double dampening, double weight_decay, bool nesterov,
                                bool maximize, bool first_step, c10::IntArrayRef grad_format,
                                c10::IntArrayRef weight_format, c10::IntArrayRef state_format,
                                const std::optional<at::Generator>& generator) {
  const SgdArgs args = parse_sgd_args(param, grad, momentum_buffer, lr, momentum, dampening, weight_decay, nesterov,
                                      maximize, first_step, grad_format, weight_format, state_format);
  TORCH_CHECK(param.is_cuda(), "param must be on the generator's device (cuda), got ", param.device());
  const c10::cuda::CUDAGuard guard(param.device());
  at::Tensor seed_offsets = at::empty({3, 2}, param.options().dtype(at::kLong));  // written by the kernel
  SgdSources sources{};
  sources.seed_offsets = seed_offsets.mutable_data_ptr<int64_t>();
  for (int s = 0; s < 3; ++s) {
    sources.draws[s] = args.roundings[s].enabled && args.roundings[s].stochastic;
    if (sources.draws[s]) {
      sources.source[s] =
          philox_from_generator(generator, param.get_device(), seed_offsets.mutable_data_ptr<int64_t>() + 2 * s);
    }
  }
  with_contiguous(param, grad, momentum_buffer, args, [&](at::Tensor& p, at::Tensor& g, at::Tensor& b) {
    const int64_t n = p.numel();
    if (n == 0 && args.mode() != SgdRoundingMode::kStochastic && args.mode() != SgdRoundingMode::kAny) {
      seed_offsets.zero_();  // no kernel to write them
      return;
    }
    const int64_t blocks = grid_size((n + 3) / 4, kThreads);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "fastnets::fixed_point_sgd_cuda", [&] {
      const auto step = make_sgd_step<scalar_t, FixedPointFormat>(args, [](const FixedPointFormat& f) { return f; });
      scalar_t* param_data = p.mutable_data_ptr<scalar_t>();
      scalar_t* grad_data = g.mutable_data_ptr<scalar_t>();
      scalar_t* buffer_data = b.defined() ? b.mutable_data_ptr<scalar_t>() : param_data;
      dispatch_sgd_mode(args.mode(), [&](auto mode) {
        constexpr SgdRoundingMode kMode = decltype(mode)::value;
        if (b.defined()) {
          fixed_point_sgd_kernel<true, kMode><<<blocks, kThreads, 0, stream>>>(param_data, grad_data, buffer_data, n,
                                                                             step, sources);
        } else {
          fixed_point_sgd_kernel<false, kMode><<<blocks, kThreads, 0, stream>>>(param_data, grad_data, buffer_data,
                                                                              n, step, sources);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return seed_offsets;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnets, CUDA, m) { m.impl("fixed_point_sgd_", &fixed_point_sgd_cuda); }

}  // namespace fastnets
