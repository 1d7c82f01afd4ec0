// The Philox stream exposed as an op, so Python can build exact references for the random ops.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "common/checks.h"
#include "common/cpu_elementwise.h"
#include "common/cpu_generator.h"
#include "common/cpu_isa.h"
#include "random/random.h"

namespace fastnets {
namespace {

at::Tensor philox_bits_cpu(const at::Tensor& seed_offset, int64_t numel, int64_t first) {
  check_philox_bits_args(seed_offset, numel, first);
  const auto [seed, offset] = read_seed_offset(seed_offset);
  at::Tensor out = at::empty({numel}, seed_offset.options());
  int64_t* words = out.mutable_data_ptr<int64_t>();
  // By the SIMD groups of the random ops' loops (cpu_philox.h): the tests hold these words
  // against a Python Philox, and so the words the ops draw.
  const int64_t start = first / 4 * 4, span = first + numel - start;  // from the block holding `first`
  using cpu_detail::kChunk;
  at::parallel_for(0, (span + kChunk - 1) / kChunk, cpu_detail::kGrainChunks, [&](int64_t first_chunk,
                                                                                 int64_t last_chunk) {
    call_with_best_isa_tag([&](auto isa) FASTNETS_INLINE_LAMBDA {
      constexpr int kLanes = cpu_detail::kPhiloxLanes<decltype(isa)::value>;
      uint32_t group[4 * kLanes];
      for (int64_t i = first_chunk * kChunk; i < std::min(last_chunk * kChunk, span); i += 4 * kLanes) {
        cpu_detail::philox_words<kLanes>(seed, offset, start + i, group);
        for (int64_t j = 0; j < 4 * kLanes; ++j) {
          const int64_t index = i + j - (first - start);  // not start + i + j: past 2^63 near the end
          if (index >= 0 && index < numel) words[index] = group[j];
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastnets, m) {
  // Words first .. first + numel - 1 of the Philox stream (seed, offset) = seed_offset, as int64
  // in [0, 2^32), on seed_offset's device.
  m.def("philox_bits(Tensor seed_offset, int numel, int first=0) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastnets, CPU, m) {
  m.impl("philox_bits", &philox_bits_cpu);
}

}  // namespace fastnets
