// The Philox stream on the GPU: word i here equals word i of the CPU op (random.cpp).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "common/philox.h"

namespace fastnets {
namespace {

constexpr int kThreads = 256;

__global__ void philox_bits_kernel(const int64_t* seed_offset, int64_t* words, int64_t numel) {
  const uint64_t seed = static_cast<uint64_t>(seed_offset[0]);
  const uint64_t offset = static_cast<uint64_t>(seed_offset[1]);
  const int64_t blocks = (numel + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t block = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; block < blocks; block += stride) {
    const PhiloxWords w = philox_block(seed, offset, static_cast<uint64_t>(block));
    for (int64_t j = 0; j < 4 && 4 * block + j < numel; ++j) words[4 * block + j] = w.w[j];
  }
}

at::Tensor philox_bits_cuda(const at::Tensor& seed_offset, int64_t numel) {
  check_seed_offset(seed_offset, seed_offset.device());
  TORCH_CHECK(numel >= 0, "numel must be non-negative, got ", numel);
  const c10::cuda::CUDAGuard guard(seed_offset.device());
  const at::Tensor so = seed_offset.contiguous();
  at::Tensor out = at::empty({numel}, seed_offset.options());
  if (numel > 0) {
    philox_bits_kernel<<<grid_size((numel + 3) / 4, kThreads), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        so.const_data_ptr<int64_t>(), out.mutable_data_ptr<int64_t>(), numel);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnets, CUDA, m) {
  m.impl("philox_bits", &philox_bits_cuda);
}

}  // namespace fastnets
