#pragma once
// The CPU loops' Philox words (philox_words): kPhiloxLanes blocks at a time, in stream order. The
// rounds are philox4x32_10's (philox.h); GCC's vector extensions compile them to about twice the
// instructions a hand-picked sequence needs (the 32x32->64 multiplies above all), so AVX-512 and
// AVX2 have theirs in intrinsics, with several independent registers to hide the multiplies'
// latency. AVX-512 keeps each counter word in a 64-bit lane (8 blocks a register): a multiply
// (vpmuludq) then gives the low word and, shifted, the high one, 6 instructions a round for 8
// blocks against 8 when two 32-bit lanes share a 64-bit one (which takes two multiplies and two
// blends). Per core, AVX-512: 2.65 G words/s on the Zen 4 development machine (2.2 with 32-bit
// lanes; 5.0 on the Zen 5 one with those). AVX2 keeps 32-bit lanes, which were faster there (1.4-1.7 G
// words/s on Zen 4 against 1.3-1.5; 2.2 on Zen 5; generic 8 lanes: 0.56). Tests hold the detected
// level's words against a Python Philox (philox_bits) and the other levels' against the
// baseline's (FASTNETS_CPU_ISA).
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <cstdint>

#include "common/cpu_isa.h"
#include "common/macros.h"
#include "common/philox.h"

namespace fastnets {
namespace cpu_detail {

// Registers of the intrinsic versions. AVX-512: 4 registers of 8 blocks per pass, two passes (2.3 G
// words/s with 2, 1.7 with 8: spills). AVX2: 4 registers of 8 blocks (1.65 with 2, 2.1 with 3).
constexpr int kAvx512Vectors = 4;
constexpr int kAvx512Passes = 2;
constexpr int kAvx2Vectors = 4;

// Philox lanes (blocks drawn at a time) of the loops compiled for each instruction set.
template <CpuIsa kIsa>
constexpr int kPhiloxLanes = kIsa == CpuIsa::kAvx512 ? 8 * kAvx512Vectors * kAvx512Passes
                             : kIsa == CpuIsa::kAvx2 ? 8 * kAvx2Vectors
                                                     : 4;

#if defined(__x86_64__) && defined(__GNUC__)
// GCC 12 warns of the intrinsics' own _mm512_undefined sources once inlined (its bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

// The counter words of a register's first block (philox.h's contract); each lane adds its index
// to block_low, and one to block_high where that wraps.
struct PhiloxCounterWords {
  uint32_t offset_low, offset_high, block_low, block_high;
};

inline PhiloxCounterWords philox_counter_words(uint64_t offset, uint64_t block) {
  return {static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32), static_cast<uint32_t>(block),
          static_cast<uint32_t>(block >> 32)};
}

// Blocks [block, block + 8 * kAvx512Vectors) into words[0 .. 32 * kAvx512Vectors), in order.
FASTNETS_TARGET_AVX512 FASTNETS_ALWAYS_INLINE void philox_pass_avx512(uint64_t seed, uint64_t offset, uint64_t block,
                                                                      uint32_t* words) {
  constexpr int V = kAvx512Vectors;
  // Word w of block b + lane in 64-bit lane `lane` of c_w, in its low half. The high halves carry
  // garbage (a product's high word, xors of it), which neither the multiplies (vpmuludq reads the
  // low halves) nor the stores read.
  const __m512i lane = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  const __m512i offset_low = _mm512_set1_epi64(static_cast<long long>(offset & 0xFFFFFFFFu));
  const __m512i offset_high = _mm512_set1_epi64(static_cast<long long>(offset >> 32));
  __m512i c0[V], c1[V], c2[V], c3[V];
  for (int v = 0; v < V; ++v) {
    c0[v] = offset_low;
    c1[v] = offset_high;
    c2[v] = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(block + 8 * v)), lane);  // the block number
    c3[v] = _mm512_srli_epi64(c2[v], 32);
  }
  const __m512i m0 = _mm512_set1_epi64(kPhiloxM0), m1 = _mm512_set1_epi64(kPhiloxM1);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const __m512i key0 = _mm512_set1_epi32(static_cast<int>(k0)), key1 = _mm512_set1_epi32(static_cast<int>(k1));
    for (int v = 0; v < V; ++v) {
      const __m512i product0 = _mm512_mul_epu32(c0[v], m0);  // hi0:lo0
      const __m512i product1 = _mm512_mul_epu32(c2[v], m1);  // hi1:lo1
      c0[v] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(product1, 32), c1[v], key0, 0x96);  // 0x96: a ^ b ^ c
      c1[v] = product1;
      c2[v] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(product0, 32), c3[v], key1, 0x96);
      c3[v] = product0;
    }
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  // Words 0-1 and 2-3 of lane b's block side by side, then the blocks' 128-bit quartets in order.
  const __m512i blocks_0_to_3 = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
  const __m512i blocks_4_to_7 = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
  for (int v = 0; v < V; ++v) {
    const __m512i w01 = _mm512_mask_blend_epi32(0xAAAA, c0[v], _mm512_slli_epi64(c1[v], 32));
    const __m512i w23 = _mm512_mask_blend_epi32(0xAAAA, c2[v], _mm512_slli_epi64(c3[v], 32));
    _mm512_storeu_si512(words + 32 * v, _mm512_permutex2var_epi64(w01, blocks_0_to_3, w23));
    _mm512_storeu_si512(words + 32 * v + 16, _mm512_permutex2var_epi64(w01, blocks_4_to_7, w23));
  }
}

// Words [first, first + 4 * kPhiloxLanes<kAvx512>) of the stream (seed, offset), in order; first a
// multiple of 4. Not always_inline: the generic philox_words, which calls it, has no AVX-512
// target (GCC may still inline it where that call is inlined into an AVX-512 loop).
FASTNETS_TARGET_AVX512 inline void philox_words_avx512(uint64_t seed, uint64_t offset, int64_t first,
                                                       uint32_t* words) {
  constexpr int kBlocksPerPass = 8 * kAvx512Vectors;
  for (int pass = 0; pass < kAvx512Passes; ++pass) {
    philox_pass_avx512(seed, offset, static_cast<uint64_t>(first / 4) + kBlocksPerPass * pass,
                       words + 4 * kBlocksPerPass * pass);
  }
}

FASTNETS_TARGET_AVX2 FASTNETS_ALWAYS_INLINE __m256i philox_mulhilo_avx2(__m256i a, __m256i factor, __m256i& hi) {
  const __m256i even = _mm256_mul_epu32(a, factor);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), factor);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  return _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

// The same for AVX2: words [first, first + 4 * kPhiloxLanes<kAvx2>), registers of 8 lanes.
FASTNETS_TARGET_AVX2 inline void philox_words_avx2(uint64_t seed, uint64_t offset, int64_t first, uint32_t* words) {
  constexpr int V = kAvx2Vectors;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256i c0[V], c1[V], c2[V], c3[V];
  for (int v = 0; v < V; ++v) {
    const PhiloxCounterWords w = philox_counter_words(offset, static_cast<uint64_t>(first / 4) + 8 * v);
    const __m256i low = _mm256_set1_epi32(static_cast<int>(w.block_low));
    c0[v] = _mm256_set1_epi32(static_cast<int>(w.offset_low));
    c1[v] = _mm256_set1_epi32(static_cast<int>(w.offset_high));
    c2[v] = _mm256_add_epi32(low, lane);
    // No unsigned compare in AVX2: the low word did not wrap where max(c2, low) == c2 (all ones,
    // -1), so the high word is high + 1 + that.
    const __m256i kept = _mm256_cmpeq_epi32(_mm256_max_epu32(c2[v], low), c2[v]);
    c3[v] = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(w.block_high + 1)), kept);
  }
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const __m256i key0 = _mm256_set1_epi32(static_cast<int>(k0)), key1 = _mm256_set1_epi32(static_cast<int>(k1));
    for (int v = 0; v < V; ++v) {
      __m256i hi0, hi1;
      const __m256i lo0 = philox_mulhilo_avx2(c0[v], m0, hi0);
      const __m256i lo1 = philox_mulhilo_avx2(c2[v], m1, hi1);
      c0[v] = _mm256_xor_si256(_mm256_xor_si256(hi1, c1[v]), key0);
      c1[v] = lo1;
      c2[v] = _mm256_xor_si256(_mm256_xor_si256(hi0, c3[v]), key1);
      c3[v] = lo0;
    }
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  // After the unpacks, 128-bit half h of u_r holds block 4 h + r.
  for (int v = 0; v < V; ++v) {
    const __m256i t0 = _mm256_unpacklo_epi32(c0[v], c1[v]), t1 = _mm256_unpackhi_epi32(c0[v], c1[v]);
    const __m256i t2 = _mm256_unpacklo_epi32(c2[v], c3[v]), t3 = _mm256_unpackhi_epi32(c2[v], c3[v]);
    const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
    const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
    uint32_t* out = words + 32 * v;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_permute2x128_si256(u0, u1, 0x20));  // 0-1
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 8), _mm256_permute2x128_si256(u2, u3, 0x20));   // 2-3
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16), _mm256_permute2x128_si256(u0, u1, 0x31));  // 4-5
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 24), _mm256_permute2x128_si256(u2, u3, 0x31));  // 6-7
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
  } else if constexpr (kLanes == kPhiloxLanes<CpuIsa::kAvx2>) {
    philox_words_avx2(seed, offset, first, words);
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

}  // namespace cpu_detail
}  // namespace fastnets
