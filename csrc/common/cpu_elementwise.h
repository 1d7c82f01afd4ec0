#pragma once
// The CPU driver of the elementwise ops: out[i] = op(in[i], word i of the Philox stream).
// Threads split the elements into chunks (at::parallel_for, so torch.set_num_threads applies);
// each chunk runs a loop compiled for AVX-512, AVX2 or the baseline, chosen at run time, that
// draws kLanes Philox blocks at a time in SIMD registers. The op (a functor from the op's shared
// header, the same one the CUDA kernel calls) is inlined into each of those loops.
#include <ATen/Parallel.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>

#include "common/cpu_isa.h"
#include "common/macros.h"
#include "common/philox.h"

namespace fastnets {
namespace cpu_detail {

// Philox lanes (blocks drawn at a time) of the loops compiled for each instruction set. AVX-512's
// are kAvx512Vectors registers of 16 lanes (philox_words_avx512).
constexpr int kAvx512Vectors = 4;
template <CpuIsa kIsa>
constexpr int kPhiloxLanes = kIsa == CpuIsa::kAvx512 ? 16 * kAvx512Vectors : (kIsa == CpuIsa::kAvx2 ? 8 : 4);

// Chunks are a multiple of every SIMD group (4 * kPhiloxLanes words), so each group starts on a
// Philox block boundary whatever the thread count.
constexpr int64_t kChunk = 4 * kPhiloxLanes<CpuIsa::kAvx512>;
constexpr int64_t kGrainChunks = (1 << 15) / kChunk;  // 32K elements: below that one thread is faster

#if defined(__x86_64__) && defined(__GNUC__)
// philox4x32_10 on AVX-512 registers of 16 lanes. GCC's vector extensions compile the generic
// rounds to about twice the instructions: here each 32x32->64 multiply is two vpmuludq (even and
// odd lanes) and two masked blends, a xor of three values one ternary-logic op, and
// kAvx512Vectors independent registers hide the multiplies' latency (on the Zen 5 development
// machine, per core: 5.0 G words/s, against 2.5 for the generic 32 lanes and 3.8 for 2 registers
// here; 8 spilled). The rounds are philox4x32_10's, checked bit for bit against philox_block.
// GCC 12 warns of the intrinsics' own _mm512_undefined sources once inlined (its bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
FASTNETS_TARGET_AVX512 FASTNETS_ALWAYS_INLINE __m512i philox_mulhilo_avx512(__m512i a, __m512i factor, __m512i& hi) {
  const __m512i even = _mm512_mul_epu32(a, factor);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), factor);
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  return _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

// Words [first, first + 4 * kPhiloxLanes<kAvx512>) of the stream (seed, offset), in order; first a
// multiple of 4. Not inlined into the generic philox_words (a target mismatch): a call per group.
FASTNETS_TARGET_AVX512 inline void philox_words_avx512(uint64_t seed, uint64_t offset, int64_t first,
                                                       uint32_t* words) {
  constexpr int V = kAvx512Vectors;
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512i c0[V], c1[V], c2[V], c3[V];
  for (int v = 0; v < V; ++v) {
    const uint64_t block = static_cast<uint64_t>(first / 4) + 16 * v;
    const __m512i low = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(block)));
    c0[v] = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset)));
    c1[v] = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset >> 32)));
    c2[v] = _mm512_add_epi32(low, lane);
    // The block's high word, plus one in lanes whose low word wrapped.
    c3[v] = _mm512_mask_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(block >> 32))),
                                  _mm512_cmplt_epu32_mask(c2[v], low),
                                  _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(block >> 32))),
                                  _mm512_set1_epi32(1));
  }
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(kPhiloxM0)), m1 = _mm512_set1_epi32(static_cast<int>(kPhiloxM1));
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const __m512i key0 = _mm512_set1_epi32(static_cast<int>(k0)), key1 = _mm512_set1_epi32(static_cast<int>(k1));
    for (int v = 0; v < V; ++v) {
      __m512i hi0, hi1;
      const __m512i lo0 = philox_mulhilo_avx512(c0[v], m0, hi0);
      const __m512i lo1 = philox_mulhilo_avx512(c2[v], m1, hi1);
      c0[v] = _mm512_ternarylogic_epi32(hi1, c1[v], key0, 0x96);  // 0x96: a ^ b ^ c
      c1[v] = lo1;
      c2[v] = _mm512_ternarylogic_epi32(hi0, c3[v], key1, 0x96);
      c3[v] = lo0;
    }
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  // Register v holds word w of blocks 16 v .. 16 v + 15 in c_w: transposed to the blocks' four
  // words each, in stream order. After the unpacks, 128-bit lane q of u_r holds block 4 q + r.
  for (int v = 0; v < V; ++v) {
    const __m512i t0 = _mm512_unpacklo_epi32(c0[v], c1[v]), t1 = _mm512_unpackhi_epi32(c0[v], c1[v]);
    const __m512i t2 = _mm512_unpacklo_epi32(c2[v], c3[v]), t3 = _mm512_unpackhi_epi32(c2[v], c3[v]);
    const __m512i u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);
    const __m512i u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);
    const __m512i b0415 = _mm512_shuffle_i32x4(u0, u1, 0x44), b2637 = _mm512_shuffle_i32x4(u2, u3, 0x44);
    const __m512i b8c9d = _mm512_shuffle_i32x4(u0, u1, 0xEE), bAeBf = _mm512_shuffle_i32x4(u2, u3, 0xEE);
    uint32_t* out = words + 64 * v;
    _mm512_storeu_si512(out, _mm512_shuffle_i32x4(b0415, b2637, 0x88));       // blocks 0-3
    _mm512_storeu_si512(out + 16, _mm512_shuffle_i32x4(b0415, b2637, 0xDD));  // blocks 4-7
    _mm512_storeu_si512(out + 32, _mm512_shuffle_i32x4(b8c9d, bAeBf, 0x88));  // 8-11
    _mm512_storeu_si512(out + 48, _mm512_shuffle_i32x4(b8c9d, bAeBf, 0xDD));  // 12-15
  }
}
#pragma GCC diagnostic pop
#endif

// Words [first, first + 4 * kLanes) of the stream (seed, offset), in order; first a multiple of 4.
// kLanes = kPhiloxLanes<kIsa>, from a loop compiled for kIsa.
template <int kLanes>
FASTNETS_ALWAYS_INLINE void philox_words(uint64_t seed, uint64_t offset, int64_t first, uint32_t* words) {
#if defined(__x86_64__) && defined(__GNUC__)
  if constexpr (kLanes == kPhiloxLanes<CpuIsa::kAvx512>) {
    philox_words_avx512(seed, offset, first, words);
  } else
#endif
  {
    typename PhiloxLanes<kLanes>::u32 lanes[4];
    philox_blocks<kLanes>(seed, offset, static_cast<uint64_t>(first / 4), lanes);
    for (int lane = 0; lane < kLanes; ++lane) {
      for (int w = 0; w < 4; ++w) words[4 * lane + w] = lanes[w][lane];
    }
  }
}

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
