// The Philox stream exposed as an op, so Python can build exact references for the random ops.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/cpu_generator.h"
#include "common/philox.h"

namespace fastnets {
namespace {

at::Tensor philox_bits_cpu(const at::Tensor& seed_offset, int64_t numel) {
  check_seed_offset(seed_offset, seed_offset.device());
  TORCH_CHECK(numel >= 0, "numel must be non-negative, got ", numel);
  const auto [seed, offset] = read_seed_offset(seed_offset);
  at::Tensor out = at::empty({numel}, seed_offset.options());
  int64_t* words = out.mutable_data_ptr<int64_t>();
  at::parallel_for(0, (numel + 3) / 4, 4096, [&](int64_t first_block, int64_t last_block) {
    for (int64_t block = first_block; block < last_block; ++block) {
      const PhiloxWords w = philox_block(seed, offset, static_cast<uint64_t>(block));
      for (int64_t j = 0; j < 4 && 4 * block + j < numel; ++j) words[4 * block + j] = w.w[j];
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastnets, m) {
  // Words 0 .. numel-1 of the Philox stream (seed, offset) = seed_offset, as int64 in [0, 2^32),
  // on seed_offset's device.
  m.def("philox_bits(Tensor seed_offset, int numel) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastnets, CPU, m) {
  m.impl("philox_bits", &philox_bits_cpu);
}

}  // namespace fastnets
