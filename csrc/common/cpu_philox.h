#pragma once
// The CPU loops' Philox words (philox_words): kPhiloxLanes blocks at a time, in stream order. The
// rounds are philox4x32_10's (philox.h); GCC's vector extensions compile them to about twice the
// instructions a hand-picked sequence needs (the 32x32->64 multiplies above all), so AVX-512 and
// AVX2 have theirs in intrinsics: each multiply two vpmuludq (even and odd lanes) and two blends,
// and several independent registers to hide the multiplies' latency. Per core on the Zen 5
// development machine: AVX-512 5.0 G words/s (generic 32 lanes: 2.5), AVX2 2.2 G words/s (generic
// 8 lanes: 0.56). Tests hold the detected level's words against a Python Philox (philox_bits) and
// the other levels' against the baseline's (FASTNETS_CPU_ISA).
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <cstdint>

#include "common/cpu_isa.h"
#include "common/macros.h"
#include "common/philox.h"

namespace fastnets {
namespace cpu_detail {

// Registers of the intrinsic versions: 4 of each gave the most words (AVX-512: 3.8 G words/s with
// 2, spills with 8; AVX2: 1.65 with 2, 2.1 with 3).
constexpr int kAvx512Vectors = 4;
constexpr int kAvx2Vectors = 4;

// Philox lanes (blocks drawn at a time) of the loops compiled for each instruction set.
template <CpuIsa kIsa>
constexpr int kPhiloxLanes = kIsa == CpuIsa::kAvx512 ? 16 * kAvx512Vectors
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

FASTNETS_TARGET_AVX512 FASTNETS_ALWAYS_INLINE __m512i philox_mulhilo_avx512(__m512i a, __m512i factor, __m512i& hi) {
  const __m512i even = _mm512_mul_epu32(a, factor);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), factor);
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  return _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

// Words [first, first + 4 * kPhiloxLanes<kAvx512>) of the stream (seed, offset), in order; first a
// multiple of 4. Not always_inline: the generic philox_words, which calls it, has no AVX-512
// target (GCC may still inline it where that call is inlined into an AVX-512 loop).
FASTNETS_TARGET_AVX512 inline void philox_words_avx512(uint64_t seed, uint64_t offset, int64_t first,
                                                       uint32_t* words) {
  constexpr int V = kAvx512Vectors;
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512i c0[V], c1[V], c2[V], c3[V];
  for (int v = 0; v < V; ++v) {
    const PhiloxCounterWords w = philox_counter_words(offset, static_cast<uint64_t>(first / 4) + 16 * v);
    const __m512i low = _mm512_set1_epi32(static_cast<int>(w.block_low));
    const __m512i high = _mm512_set1_epi32(static_cast<int>(w.block_high));
    c0[v] = _mm512_set1_epi32(static_cast<int>(w.offset_low));
    c1[v] = _mm512_set1_epi32(static_cast<int>(w.offset_high));
    c2[v] = _mm512_add_epi32(low, lane);
    c3[v] = _mm512_mask_add_epi32(high, _mm512_cmplt_epu32_mask(c2[v], low), high, _mm512_set1_epi32(1));
  }
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(kPhiloxM1));
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
