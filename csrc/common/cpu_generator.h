#pragma once
// (seed, offset) for a CPU op from torch's CPU generator. The CPU generator is a Mersenne
// Twister with no offset, so each call takes a fresh 64-bit seed from it (offset 0): that
// advances it, so torch.manual_seed reproduces a run and two calls do not share a stream.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Generator.h>

#include <mutex>
#include <optional>
#include <utility>

namespace fastnets {

inline std::pair<uint64_t, uint64_t> cpu_seed_offset(const std::optional<at::Generator>& generator) {
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return {gen->random64(), 0};
}

}  // namespace fastnets
