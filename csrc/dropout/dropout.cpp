// Dropout: operator schemas and CPU kernels. CUDA kernels: dropout_cuda.cu.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>

#include "common/checks.h"
#include "common/cpu_generator.h"
#include "common/cpu_isa.h"
#include "common/cpu_memory.h"
#include "common/philox.h"
#include "dropout/dropout.h"

namespace fastnets {
namespace {

// Threads split the elements into chunks of kChunk: a multiple of every SIMD group below, so each
// group starts on a Philox block boundary whatever the thread count.
constexpr int64_t kChunk = 128;
constexpr int64_t kGrainChunks = 256;  // 32K elements: below that one thread is faster

// Elements [begin, end) with begin a multiple of 4; kLanes Philox blocks (4 * kLanes elements) at a time.
template <int kLanes, typename scalar_t, typename acc_t>
FASTNETS_ALWAYS_INLINE void dropout_range(const scalar_t* in, scalar_t* out, int64_t begin, int64_t end,
                                          uint64_t seed, uint64_t offset, uint32_t keep_threshold, acc_t scale) {
  constexpr int64_t kGroup = 4 * kLanes;
  int64_t i = begin;
  for (; i + kGroup <= end; i += kGroup) {
    typename PhiloxLanes<kLanes>::u32 lanes[4];
    philox_blocks<kLanes>(seed, offset, static_cast<uint64_t>(i / 4), lanes);
    uint32_t words[kGroup];
    for (int lane = 0; lane < kLanes; ++lane) {
      for (int w = 0; w < 4; ++w) words[4 * lane + w] = lanes[w][lane];
    }
    for (int j = 0; j < kGroup; ++j) out[i + j] = dropout_element(in[i + j], words[j], keep_threshold, scale);
  }
  for (; i < end; i += 4) {
    const PhiloxWords block = philox_block(seed, offset, static_cast<uint64_t>(i / 4));
    for (int j = 0; j < 4 && i + j < end; ++j) {
      out[i + j] = dropout_element(in[i + j], block.w[j], keep_threshold, scale);
    }
  }
}

// The same loop compiled for three instruction sets; wider registers hold more Philox lanes.
template <typename scalar_t, typename acc_t>
FASTNETS_TARGET_AVX512 void dropout_range_avx512(const scalar_t* in, scalar_t* out, int64_t begin, int64_t end,
                                                 uint64_t seed, uint64_t offset, uint32_t keep_threshold, acc_t scale) {
  dropout_range<32>(in, out, begin, end, seed, offset, keep_threshold, scale);
}

template <typename scalar_t, typename acc_t>
FASTNETS_TARGET_AVX2 void dropout_range_avx2(const scalar_t* in, scalar_t* out, int64_t begin, int64_t end,
                                             uint64_t seed, uint64_t offset, uint32_t keep_threshold, acc_t scale) {
  dropout_range<8>(in, out, begin, end, seed, offset, keep_threshold, scale);
}

template <typename scalar_t, typename acc_t>
void dropout_range_baseline(const scalar_t* in, scalar_t* out, int64_t begin, int64_t end,
                            uint64_t seed, uint64_t offset, uint32_t keep_threshold, acc_t scale) {
  dropout_range<4>(in, out, begin, end, seed, offset, keep_threshold, scale);
}

// Forward and backward alike: the input times the mask of stream (seed, offset), scaled.
at::Tensor dropout_apply_cpu(const at::Tensor& input, uint64_t seed, uint64_t offset, double p) {
  const at::Tensor in = input.contiguous();
  at::Tensor out = at::empty_like(in);
  prefault_huge_pages(out.data_ptr(), out.nbytes());  // serially: faults from two threads stall
  const int64_t n = in.numel();
  const uint32_t keep_threshold = dropout_keep_threshold(p);
  const CpuIsa isa = cpu_isa();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "fastnets::dropout", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t scale = static_cast<acc_t>(dropout_scale(p));
    const scalar_t* x = in.const_data_ptr<scalar_t>();
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, (n + kChunk - 1) / kChunk, kGrainChunks, [&](int64_t first_chunk, int64_t last_chunk) {
      const int64_t begin = first_chunk * kChunk;
      const int64_t end = std::min(last_chunk * kChunk, n);
      switch (isa) {
        case CpuIsa::kAvx512: dropout_range_avx512(x, y, begin, end, seed, offset, keep_threshold, scale); break;
        case CpuIsa::kAvx2: dropout_range_avx2(x, y, begin, end, seed, offset, keep_threshold, scale); break;
        default: dropout_range_baseline(x, y, begin, end, seed, offset, keep_threshold, scale); break;
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> dropout_cpu(const at::Tensor& input, double p,
                                               const std::optional<at::Generator>& generator) {
  check_training_dtype(input, "input");
  check_probability(p, "p");
  const auto [seed, offset] = cpu_seed_offset(generator);
  at::Tensor seed_offset = at::empty({2}, input.options().dtype(at::kLong));
  seed_offset.mutable_data_ptr<int64_t>()[0] = static_cast<int64_t>(seed);
  seed_offset.mutable_data_ptr<int64_t>()[1] = static_cast<int64_t>(offset);
  return {dropout_apply_cpu(input, seed, offset, p), seed_offset};
}

at::Tensor dropout_backward_cpu(const at::Tensor& grad_output, const at::Tensor& seed_offset, double p) {
  check_training_dtype(grad_output, "grad_output");
  check_probability(p, "p");
  check_seed_offset(seed_offset, grad_output.device());
  const at::Tensor so = seed_offset.contiguous();
  const int64_t* values = so.const_data_ptr<int64_t>();
  return dropout_apply_cpu(grad_output, static_cast<uint64_t>(values[0]), static_cast<uint64_t>(values[1]), p);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastnets, m) {
  // Training-mode dropout. Returns (output, seed_offset): seed_offset, an int64 tensor [2] on the
  // input's device, names the Philox stream the mask came from and is all that backward keeps.
  m.def("dropout(Tensor input, float p, Generator? generator=None) -> (Tensor, Tensor)",
        {at::Tag::nondeterministic_seeded});
  // grad_output times the mask of stream seed_offset, scaled: the backward of dropout (and a
  // forward replayed from a known seed_offset).
  m.def("dropout_backward(Tensor grad_output, Tensor seed_offset, float p) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastnets, CPU, m) {
  m.impl("dropout", &dropout_cpu);
  m.impl("dropout_backward", &dropout_backward_cpu);
}

}  // namespace fastnets
