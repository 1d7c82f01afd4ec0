#pragma once
// Launch helpers and the CUDA side of the randomness contract.
#include <ATen/core/Generator.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>

#include <algorithm>
#include <mutex>
#include <optional>

namespace fastnets {

// Every random op call takes one offset from torch's CUDA generator for all of its elements (the
// block index in the counter tells them apart); the generator rounds each step up to 4.
constexpr uint64_t kPhiloxOffsetStep = 4;

// The generator's (seed, offset) as a PhiloxCudaState: plain values, or, under CUDA graph
// capture, pointers that each replay fills anew. Kernels read it with at::cuda::philox::unpack.
inline at::PhiloxCudaState cuda_philox_state(const std::optional<at::Generator>& generator,
                                             c10::DeviceIndex device) {
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      generator, at::cuda::detail::getDefaultCUDAGenerator(device));
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return gen->philox_cuda_state(kPhiloxOffsetStep);
}

// Enough blocks of `threads` to cover `work_items`, at most a few waves of the whole GPU
// (kernels loop over the rest), and at least one.
inline int64_t grid_size(int64_t work_items, int threads) {
  const int64_t wanted = (work_items + threads - 1) / threads;
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  const int64_t waves = static_cast<int64_t>(sms) * (2048 / threads) * 4;
  return std::max<int64_t>(1, std::min(wanted, waves));
}

// kElems consecutive elements as one aligned load or store.
template <typename scalar_t, int kElems>
struct alignas(sizeof(scalar_t) * kElems) AlignedVector {
  scalar_t v[kElems];
};

}  // namespace fastnets
