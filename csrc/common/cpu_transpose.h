#pragma once
// A transposing copy of floats in 8 x 8 blocks held in registers (cpu_matmul.h's packing of a
// transposed weight; in conv.cpp, the channels-last copy of the input and positions_gemm's tile
// stores).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common/macros.h"

namespace fastnets {

// 8 x 8 values: out[k * ldo + j] = in[j * ldi + k] for j, k < 8, by GCC vector shuffles (in a
// function compiled for AVX-512, each one instruction): three rounds of pairwise interleaves.
FASTNETS_ALWAYS_INLINE void transpose_8x8(const float* in, int64_t ldi, float* out, int64_t ldo) {
  typedef float v8 __attribute__((vector_size(32)));
  typedef int32_t i8 __attribute__((vector_size(32)));
  v8 r[8], t[8], u[8];
  for (int j = 0; j < 8; ++j) std::memcpy(&r[j], in + j * ldi, sizeof(v8));
  for (int j = 0; j < 8; j += 2) {  // pairs of values: t[j] = r_j0 r_j+1,0 r_j1 r_j+1,1 | the same from 4
    t[j] = __builtin_shuffle(r[j], r[j + 1], i8{0, 8, 1, 9, 4, 12, 5, 13});
    t[j + 1] = __builtin_shuffle(r[j], r[j + 1], i8{2, 10, 3, 11, 6, 14, 7, 15});
  }
  for (int j = 0; j < 8; j += 4) {  // u[j + m]: k = m and m + 4 of rows j .. j + 3
    u[j] = __builtin_shuffle(t[j], t[j + 2], i8{0, 1, 8, 9, 4, 5, 12, 13});
    u[j + 1] = __builtin_shuffle(t[j], t[j + 2], i8{2, 3, 10, 11, 6, 7, 14, 15});
    u[j + 2] = __builtin_shuffle(t[j + 1], t[j + 3], i8{0, 1, 8, 9, 4, 5, 12, 13});
    u[j + 3] = __builtin_shuffle(t[j + 1], t[j + 3], i8{2, 3, 10, 11, 6, 7, 14, 15});
  }
  for (int m = 0; m < 4; ++m) {
    const v8 low = __builtin_shuffle(u[m], u[m + 4], i8{0, 1, 2, 3, 8, 9, 10, 11});
    const v8 high = __builtin_shuffle(u[m], u[m + 4], i8{4, 5, 6, 7, 12, 13, 14, 15});
    std::memcpy(out + m * ldo, &low, sizeof(v8));
    std::memcpy(out + (m + 4) * ldo, &high, sizeof(v8));
  }
}

// out[j * ldo + i] = in[i * ldi + j] for i < rows, j < cols. Floats by 8 x 8 blocks where rows
// and cols are 8 or more (the last block of either overlapping the one before, which writes the
// same values again), else value by value.
template <typename T>
FASTNETS_ALWAYS_INLINE void transpose_copy(const T* in, int64_t ldi, int64_t rows, int64_t cols, T* out, int64_t ldo) {
  if constexpr (std::is_same_v<T, float>) {
    if (rows >= 8 && cols >= 8) {
      for (int64_t j0 = 0; j0 < cols; j0 += 8) {
        const int64_t j = std::min(j0, cols - 8);
        for (int64_t i0 = 0; i0 < rows; i0 += 8) {
          const int64_t i = std::min(i0, rows - 8);
          transpose_8x8(in + i * ldi + j, ldi, out + j * ldo + i, ldo);
        }
      }
      return;
    }
  }
  for (int64_t j = 0; j < cols; ++j) {
    for (int64_t i = 0; i < rows; ++i) out[j * ldo + i] = in[i * ldi + j];
  }
}

}  // namespace fastnets
