#pragma once
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011),
// the one random number generator of fastnets, compiled into both the CPU and the CUDA kernels.
//
// The stream contract: 32-bit word `i` of the stream (seed, offset) is word `i % 4` of
//   Philox4x32-10(key = (lo32(seed), hi32(seed)),
//                 counter = (lo32(offset), hi32(offset), lo32(i / 4), hi32(i / 4))).
// It depends on nothing else: not on threads, launch configuration or device. This is the
// counter layout of curand_init(seed, subsequence = i / 4, 4 * offset), so the block index never
// carries into the offset.
#include <cstdint>

#include "common/macros.h"

namespace fastnets {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;  // sqrt(3) - 1

FASTNETS_HOST_DEVICE uint32_t philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi) {
  const uint64_t product = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(product >> 32);
  return static_cast<uint32_t>(product);
}

#if !defined(__CUDACC__)
// kLanes independent Philox lanes in SIMD registers (GCC vector extensions). The rounds below
// are templates, so the CPU kernels run exactly the scalar math, kLanes counters at a time.
template <int kLanes>
struct PhiloxLanes {
  typedef uint32_t u32 __attribute__((vector_size(4 * kLanes)));
  typedef uint64_t u64 __attribute__((vector_size(4 * kLanes)));
};

// Written on 64-bit lanes (even and odd 32-bit lanes apart) so that it compiles to two
// 32x32->64 multiplies (vpmuludq) and a few shifts, masks and ors.
template <typename V, typename W = typename PhiloxLanes<sizeof(V) / 4>::u64>
FASTNETS_ALWAYS_INLINE V philox_mulhilo(V a, uint32_t b, V& hi) {
  // The empty asm hides the constant: otherwise GCC expands the multiply into shifts and adds.
  // The masks tell it both factors fit 32 bits.
  __asm__("" : "+r"(b));
  const uint64_t low_half = 0xFFFFFFFFull;
  const W factor = (W{} + b) & low_half;
  const W pairs = reinterpret_cast<W>(a);
  const W even = (pairs & low_half) * factor;
  const W odd = (pairs >> 32) * factor;
  hi = reinterpret_cast<V>((even >> 32) | (odd & ~low_half));
  return reinterpret_cast<V>((even & low_half) | (odd << 32));
}
#endif

// Ten rounds on the counter (c0..c3) with key (k0, k1); the result replaces the counter.
// U is uint32_t, or a vector of them on the CPU.
template <typename U>
FASTNETS_HOST_DEVICE void philox4x32_10(U& c0, U& c1, U& c2, U& c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    U hi0, hi1;
    const U lo0 = philox_mulhilo(c0, kPhiloxM0, hi0);
    const U lo1 = philox_mulhilo(c2, kPhiloxM1, hi1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
}

// The four words of block `block` (stream words 4*block .. 4*block+3).
struct PhiloxWords {
  uint32_t w[4];
};

FASTNETS_HOST_DEVICE PhiloxWords philox_block(uint64_t seed, uint64_t offset, uint64_t block) {
  uint32_t c0 = static_cast<uint32_t>(offset), c1 = static_cast<uint32_t>(offset >> 32);
  uint32_t c2 = static_cast<uint32_t>(block), c3 = static_cast<uint32_t>(block >> 32);
  philox4x32_10(c0, c1, c2, c3, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return PhiloxWords{{c0, c1, c2, c3}};
}

#if !defined(__CUDACC__)
// Blocks first_block .. first_block + kLanes - 1, word-major: words[w][lane] is word w of
// block first_block + lane.
template <int kLanes>
FASTNETS_ALWAYS_INLINE void philox_blocks(uint64_t seed, uint64_t offset, uint64_t first_block,
                          typename PhiloxLanes<kLanes>::u32 words[4]) {
  typedef typename PhiloxLanes<kLanes>::u32 V;
  V c2, c3;
  for (int lane = 0; lane < kLanes; ++lane) {
    const uint64_t block = first_block + lane;
    c2[lane] = static_cast<uint32_t>(block);
    c3[lane] = static_cast<uint32_t>(block >> 32);
  }
  V c0 = V{} + static_cast<uint32_t>(offset);
  V c1 = V{} + static_cast<uint32_t>(offset >> 32);
  philox4x32_10(c0, c1, c2, c3, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  words[0] = c0;
  words[1] = c1;
  words[2] = c2;
  words[3] = c3;
}
#endif

}  // namespace fastnets
