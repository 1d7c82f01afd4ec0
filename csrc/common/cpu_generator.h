#pragma once
// The CPU side of the randomness contract: (seed, offset) from torch's CPU generator, and the
// int64 tensor [seed, offset] that ops return for their backward and take back.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <mutex>
#include <optional>
#include <utility>

namespace fastnets {

// The CPU generator is a Mersenne Twister with no offset, so each call takes a fresh 64-bit seed
// from it (offset 0): that advances it, so torch.manual_seed reproduces a run and two calls do
// not share a stream.
inline std::pair<uint64_t, uint64_t> cpu_seed_offset(const std::optional<at::Generator>& generator) {
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return {gen->random64(), 0};
}

inline at::Tensor cpu_seed_offset_tensor(uint64_t seed, uint64_t offset) {
  at::Tensor tensor = at::empty({2}, at::TensorOptions().dtype(at::kLong));
  tensor.mutable_data_ptr<int64_t>()[0] = static_cast<int64_t>(seed);
  tensor.mutable_data_ptr<int64_t>()[1] = static_cast<int64_t>(offset);
  return tensor;
}

// (seed, offset) of a CPU seed_offset tensor (already checked with check_seed_offset).
inline std::pair<uint64_t, uint64_t> read_seed_offset(const at::Tensor& seed_offset) {
  const at::Tensor so = seed_offset.contiguous();
  return {static_cast<uint64_t>(so.const_data_ptr<int64_t>()[0]), static_cast<uint64_t>(so.const_data_ptr<int64_t>()[1])};
}

}  // namespace fastnets
