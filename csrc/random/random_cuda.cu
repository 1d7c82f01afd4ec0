// The Philox stream on the GPU: word i here equals word i of the CPU op (random.cpp).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "common/philox.h"
#include "random/random.h"

namespace fastnets {
namespace {

constexpr int kThreads = 256;

// One thread per Philox block, from the block holding word `first`.
__global__ void philox_bits_kernel(const int64_t* seed_offset, int64_t* words, int64_t numel, int64_t first) {
  const uint64_t seed = static_cast<uint64_t>(seed_offset[0]);
  const uint64_t offset = static_cast<uint64_t>(seed_offset[1]);
  const int64_t first_block = first / 4, blocks = (first % 4 + numel + 3) / 4;  // no overflow near 2^63
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; b < blocks; b += stride) {
    const int64_t block = first_block + b;
    const PhiloxWords w = philox_block(seed, offset, static_cast<uint64_t>(block));
    for (int64_t j = 0; j < 4; ++j) {
      const int64_t index = 4 * block + j - first;
      if (index >= 0 && index < numel) words[index] = w.w[j];
    }
  }
}

at::Tensor philox_bits_cuda(const at::Tensor& seed_offset, int64_t numel, int64_t first) {
  check_philox_bits_args(seed_offset, numel, first);
  const c10::cuda::CUDAGuard guard(seed_offset.device());
  const at::Tensor so = seed_offset.contiguous();
  at::Tensor out = at::empty({numel}, seed_offset.options());
  if (numel > 0) {
    const int64_t blocks = (first % 4 + numel + 3) / 4;
    philox_bits_kernel<<<grid_size(blocks, kThreads), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        so.const_data_ptr<int64_t>(), out.mutable_data_ptr<int64_t>(), numel, first);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnets, CUDA, m) {
  m.impl("philox_bits", &philox_bits_cuda);
}

}  // namespace fastnets
