// RBM unit sampling: CUDA kernels. Schema and CPU kernels: rbm.cpp; the math: rbm.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/cuda_elementwise.cuh"
#include "rbm/rbm.h"
#include "rbm/rbm_args.h"

namespace fastnets {
namespace {

constexpr int kThreads = 256;

// Each thread takes groups of 4 units, one Philox block (two for Gaussian units) per group;
// `mean` holds the total inputs on entry.
template <RbmUnit kUnit, bool kSample, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
rbm_sample_kernel(scalar_t* __restrict__ mean, scalar_t* __restrict__ sample, int64_t n, uint64_t second_block,
                  PhiloxSource source) {
  using acc_t = at::opmath_type<scalar_t>;
  const RbmSampleOp<kUnit, scalar_t, acc_t> op;
  uint64_t seed = 0, offset = 0;
  if (kSample) source.get(seed, offset);
  const int64_t groups = (n + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t group = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; group < groups; group += stride) {
    PhiloxWords words1{}, words2{};
    if (kSample) words1 = philox_block(seed, offset, static_cast<uint64_t>(group));
    if (kSample && kUnit == RbmUnit::kGaussian) words2 = philox_block(seed, offset, second_block + group);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t i = 4 * group + j;
      if (i < n) {
        const scalar_t total = mean[i];
        const scalar_t unit_mean = op.mean(total);
        mean[i] = unit_mean;
        if (kSample) sample[i] = op.sample(total, unit_mean, words1.w[j], words2.w[j]);
      }
    }
  }
}

template <RbmUnit kUnit, bool kSample, typename scalar_t>
void launch_rbm_sample(scalar_t* mean, scalar_t* sample, int64_t n, const PhiloxSource& source) {
  const int64_t blocks = grid_size((n + 3) / 4, kThreads);
  rbm_sample_kernel<kUnit, kSample><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      mean, sample, n, rbm_second_block(n), source);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The fused pass over `mean`, which holds the total inputs (contiguous, owned): means in place,
// samples into a new tensor.
std::tuple<at::Tensor, at::Tensor, at::Tensor> sample_units(at::Tensor mean, c10::string_view unit, bool sample,
                                                            const std::optional<at::Generator>& generator,
                                                            const std::optional<at::Tensor>& replay) {
  const RbmUnit kind = parse_rbm_unit(unit);
  if (replay.has_value()) check_seed_offset(*replay, mean.device());
  at::Tensor samples = at::empty(sample ? mean.sizes() : at::IntArrayRef{0}, mean.options());
  const auto long_options = mean.options().dtype(at::kLong);
  at::Tensor seed_offset = !sample             ? at::zeros({2}, long_options)
                           : replay.has_value() ? replay->contiguous().clone()
                                                : at::empty({2}, long_options);
  const int64_t n = mean.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mean.scalar_type(), "fastnets::rbm_sample_cuda", [&] {
    scalar_t* m = mean.mutable_data_ptr<scalar_t>();
    scalar_t* s = samples.mutable_data_ptr<scalar_t>();
    if (!sample) {
      if (kind == RbmUnit::kBernoulli && n > 0) launch_rbm_sample<RbmUnit::kBernoulli, false>(m, s, n, PhiloxSource{});
      return;
    }
    // The kernel runs even for n == 0: its first thread records the stream.
    const PhiloxSource source =
        replay.has_value() ? philox_replay(seed_offset.const_data_ptr<int64_t>())
                           : philox_from_generator(generator, mean.get_device(), seed_offset.mutable_data_ptr<int64_t>());
    if (kind == RbmUnit::kBernoulli) {
      launch_rbm_sample<RbmUnit::kBernoulli, true>(m, s, n, source);
    } else {
      launch_rbm_sample<RbmUnit::kGaussian, true>(m, s, n, source);
    }
  });
  return {mean, samples, seed_offset};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rbm_sample_cuda(const at::Tensor& input, const at::Tensor& weight,
                                                               const std::optional<at::Tensor>& bias,
                                                               c10::string_view unit, bool sample,
                                                               const std::optional<at::Generator>& generator,
                                                               const std::optional<at::Tensor>& replay) {
  TORCH_CHECK(input.is_cuda(), "input must be on the generator's device (cuda), got ", input.device());
  check_rbm_sample_args(input, weight, bias);
  parse_rbm_unit(unit);  // checked before the GEMM
  const c10::cuda::CUDAGuard guard(input.device());
  return sample_units(rbm_total_input(input, weight, bias), unit, sample, generator, replay);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rbm_sample_units_cuda(const at::Tensor& total_input,
                                                                     c10::string_view unit, bool sample,
                                                                     const std::optional<at::Generator>& generator,
                                                                     const std::optional<at::Tensor>& replay) {
  TORCH_CHECK(total_input.is_cuda(), "total_input must be on seed_offset's device (cuda), got ",
              total_input.device());
  check_training_dtype(total_input, "total_input");
  const c10::cuda::CUDAGuard guard(total_input.device());
  return sample_units(total_input.clone(at::MemoryFormat::Contiguous), unit, sample, generator, replay);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnets, CUDA, m) {
  m.impl("rbm_sample", &rbm_sample_cuda);
  m.impl("rbm_sample_units", &rbm_sample_units_cuda);
}

}  // namespace fastnets
