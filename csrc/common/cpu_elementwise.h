#pragma once
// The CPU driver of the elementwise ops: out[i] = op(in[i], word i of the Philox stream).
// Threads split the elements into chunks (at::parallel_for, so torch.set_num_threads applies);
// each chunk runs a loop compiled for AVX-512, AVX2 or the baseline, chosen at run time, that
// draws kLanes Philox blocks at a time in SIMD registers. The op (a functor from the op's shared
// header, the same one the CUDA kernel calls) is inlined into each of those loops.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "common/cpu_isa.h"
#include "common/macros.h"
#include "common/cpu_philox.h"
#include "common/philox.h"

namespace fastnets {
namespace cpu_detail {

// Chunks are a multiple of every SIMD group (4 * kPhiloxLanes words), so each group starts on a
// Philox block boundary whatever the thread count.
constexpr int64_t kChunk = 4 * kPhiloxLanes<CpuIsa::kAvx512>;
constexpr int64_t kGrainChunks = (1 << 15) / kChunk;  // 32K elements: below that one thread is faster

// Elements [begin, end), begin a multiple of 4. Without words the op sees word 0. The op is
// taken by value: a reference could alias `out`, which would stop the loops vectorizing.
// `in` and `out` are pointers, or anything indexed like them (MaskedValues: two arrays read as one).
template <int kLanes, bool kWithWords, typename In, typename Out, typename Op>
FASTNETS_ALWAYS_INLINE void map_range(In in, Out out, int64_t begin, int64_t end, uint64_t seed,
                                      uint64_t offset, Op op) {
  if constexpr (!kWithWords) {
    for (int64_t i = begin; i < end; ++i) out[i] = op(in[i], 0u);
  } else {
    constexpr int64_t kGroup = 4 * kLanes;
    int64_t i = begin;
    for (; i + kGroup <= end; i += kGroup) {
      uint32_t words[kGroup];
      philox_words<kLanes>(seed, offset, i, words);
      for (int j = 0; j < kGroup; ++j) out[i + j] = op(in[i + j], words[j]);
    }
    for (; i < end; i += 4) {
      const PhiloxWords block = philox_block(seed, offset, static_cast<uint64_t>(i / 4));
      for (int j = 0; j < 4 && i + j < end; ++j) out[i + j] = op(in[i + j], block.w[j]);
    }
  }
}

// The same loop for three instruction sets; wider registers hold more Philox lanes.
template <bool kWithWords, typename In, typename Out, typename Op>
FASTNETS_TARGET_AVX512 void map_range_avx512(In in, Out out, int64_t begin, int64_t end, uint64_t seed,
                                             uint64_t offset, Op op) {
  map_range<kPhiloxLanes<CpuIsa::kAvx512>, kWithWords>(in, out, begin, end, seed, offset, op);
}

template <bool kWithWords, typename In, typename Out, typename Op>
FASTNETS_TARGET_AVX2 void map_range_avx2(In in, Out out, int64_t begin, int64_t end, uint64_t seed,
                                         uint64_t offset, Op op) {
  map_range<kPhiloxLanes<CpuIsa::kAvx2>, kWithWords>(in, out, begin, end, seed, offset, op);
}

template <bool kWithWords, typename In, typename Out, typename Op>
void map_range_baseline(In in, Out out, int64_t begin, int64_t end, uint64_t seed, uint64_t offset,
                        Op op) {
  map_range<kPhiloxLanes<CpuIsa::kBaseline>, kWithWords>(in, out, begin, end, seed, offset, op);
}

}  // namespace cpu_detail

// out[i] = op(in[i], word) for i < n, where word is word i of the stream (seed, offset) when
// kWithWords, else 0 (and no Philox is computed).
template <bool kWithWords, typename In, typename Out, typename Op>
void cpu_map_with_philox(In in, Out out, int64_t n, uint64_t seed, uint64_t offset, Op op) {
  using namespace cpu_detail;
  const CpuIsa isa = cpu_isa();
  at::parallel_for(0, (n + kChunk - 1) / kChunk, kGrainChunks, [&](int64_t first_chunk, int64_t last_chunk) {
    const int64_t begin = first_chunk * kChunk;
    const int64_t end = std::min(last_chunk * kChunk, n);
    switch (isa) {
      case CpuIsa::kAvx512: map_range_avx512<kWithWords>(in, out, begin, end, seed, offset, op); break;
      case CpuIsa::kAvx2: map_range_avx2<kWithWords>(in, out, begin, end, seed, offset, op); break;
      default: map_range_baseline<kWithWords>(in, out, begin, end, seed, offset, op); break;
    }
  });
}

}  // namespace fastnets
