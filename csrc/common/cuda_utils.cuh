#pragma once
// Launch helpers and the CUDA side of the randomness contract.
#include <ATen/core/Generator.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAMacros.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <mutex>
#include <optional>

namespace fastnets {

// Every random op call reserves one step of torch's CUDA generator (4 offsets, the least it
// hands out) for all of its elements: the block index in the counter tells them apart.
constexpr uint64_t kPhiloxOffsetStep = 4;

// The stream offset of a call from the generator offset it reserved. torch's own CUDA random
// ops put generator offset / 4 in the counter (curand_init's convention, subsequence = thread),
// so this call's counters are theirs for the reserved step, which no other op is given.
__device__ __forceinline__ uint64_t stream_offset(uint64_t generator_offset) {
  return generator_offset / kPhiloxOffsetStep;
}

// The generator's (seed, offset) as a PhiloxCudaState: plain values, or, under CUDA graph
// capture, pointers that each replay fills anew. Kernels read it with at::cuda::philox::unpack.
inline at::PhiloxCudaState cuda_philox_state(const std::optional<at::Generator>& generator,
                                             c10::DeviceIndex device) {
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      generator, at::cuda::detail::getDefaultCUDAGenerator(device));
  // torch.Generator("cuda") has no device index: like torch's own ops, it serves any device.
  const c10::DeviceIndex generator_device = gen->device().index();
  TORCH_CHECK(generator_device < 0 || generator_device == device, "generator must be on the input's device cuda:",
              static_cast<int>(device), ", got ", gen->device());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return gen->philox_cuda_state(kPhiloxOffsetStep);
}

// Enough blocks of `threads` to cover `work_items`, at most a few waves of the whole GPU
// (kernels loop over the rest), and at least one.
inline int multiprocessor_count() {
  static std::array<std::atomic<int>, C10_COMPILE_TIME_MAX_GPUS> cache{};  // 0: not read yet
  const c10::DeviceIndex device = c10::cuda::current_device();
  int count = cache.at(device).load(std::memory_order_relaxed);
  if (count == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    cache[device].store(count, std::memory_order_relaxed);
  }
  return count;
}

inline int64_t grid_size(int64_t work_items, int threads) {
  const int64_t wanted = (work_items + threads - 1) / threads;
  const int sms = multiprocessor_count();
  const int64_t waves = static_cast<int64_t>(sms) * (2048 / threads) * 4;
  return std::max<int64_t>(1, std::min(wanted, waves));
}

// kElems consecutive elements as one aligned load or store.
template <typename scalar_t, int kElems>
struct alignas(sizeof(scalar_t) * kElems) AlignedVector {
  scalar_t v[kElems];
};

}  // namespace fastnets
