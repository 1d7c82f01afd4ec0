#pragma once
// The CPU GEMM of the convolutions and of cpu_matmul.h: C (+)= A B, with A packed in panels of
// kRows rows and B row-major, computed in tiles of kRows x (kVectors SIMD vectors) held in
// registers. GCC's vector extensions keep it portable: the same template compiles for AVX-512,
// AVX2 or SSE (cpu_isa.h) and for float or double; each k step loads kVectors vectors of B and
// broadcasts kRows values of A.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common/cpu_isa.h"
#include "common/macros.h"

namespace fastnets {

template <typename T, int kVectorBytes, int kRowsOfTile, int kVectorsOfTile>
struct GemmTile {
  typedef T vec __attribute__((vector_size(kVectorBytes)));
  static constexpr int kRows = kRowsOfTile;
  static constexpr int kVectors = kVectorsOfTile;
  static constexpr int kLanes = kVectorBytes / static_cast<int>(sizeof(T));
  static constexpr int kCols = kLanes * kVectors;
  // The same tile with kOtherRows rows.
  template <int kOtherRows>
  using WithRows = GemmTile<T, kVectorBytes, kOtherRows, kVectorsOfTile>;
};

// Every tile has kPanelRows rows, so A is packed the same way whatever the instruction set; the
// accumulators, the vectors of B and one broadcast fit the register file (32 registers for
// AVX-512, 16 for AVX2 and SSE). B's rows are padded to kMaxTileBytes, a multiple of every tile.
constexpr int kPanelRows = 8;
constexpr int kMaxTileBytes = 128;

template <typename T, CpuIsa kIsa>
using GemmTileFor = std::conditional_t<kIsa == CpuIsa::kAvx512, GemmTile<T, 64, kPanelRows, 2>,
                                       std::conditional_t<kIsa == CpuIsa::kAvx2, GemmTile<T, 32, kPanelRows, 1>,
                                                          GemmTile<T, 16, kPanelRows, 1>>>;

// Columns of a panel of B (cpu_matmul.h, the convolutions by positions): a whole number of tiles
// of every instruction set.
template <typename T>
constexpr int64_t kPanelCols = kMaxTileBytes / sizeof(T);

// Row length of B and C buffers holding `cols` columns of T.
template <typename T>
int64_t padded_cols(int64_t cols) {
  return (cols + kPanelCols<T> - 1) / kPanelCols<T> * kPanelCols<T>;
}

// One tile: C[rows][cols] (+)= sum over k < depth of a(i, k) b_row(k)[col + j] for i < kRows,
// j < kCols, where rows <= kRows and cols <= kCols are the valid part (the rest is computed and
// dropped). a(i, k) is A's value; packed A (pack_panels) is a_packed[k * kRows + i].
template <typename Tile, typename T, typename AValue, typename BRows>
FASTNETS_ALWAYS_INLINE void gemm_tile(int64_t depth, const AValue& a, const BRows& b_row, int64_t col, T* c,
                                      int64_t ldc, int64_t rows, int64_t cols, bool accumulate) {
  using vec = typename Tile::vec;
  constexpr int R = Tile::kRows, V = Tile::kVectors, L = Tile::kLanes;
  vec acc[R][V];
  for (int i = 0; i < R; ++i) {
    for (int j = 0; j < V; ++j) acc[i][j] = vec{};
  }
  for (int64_t k = 0; k < depth; ++k) {
    vec bk[V];
    const T* b = b_row(k) + col;
    for (int j = 0; j < V; ++j) std::memcpy(&bk[j], b + j * L, sizeof(vec));
    for (int i = 0; i < R; ++i) {
      const T ak = a(i, k);
      for (int j = 0; j < V; ++j) acc[i][j] += ak * bk[j];
    }
  }
  if (rows == R && cols == Tile::kCols) {
    for (int i = 0; i < R; ++i) {
      for (int j = 0; j < V; ++j) {
        vec out = acc[i][j];
        if (accumulate) {
          vec old;
          std::memcpy(&old, c + i * ldc + j * L, sizeof(vec));
          out += old;
        }
        std::memcpy(c + i * ldc + j * L, &out, sizeof(vec));
      }
    }
    return;
  }
  T tile[R][Tile::kCols];
  std::memcpy(tile, acc, sizeof(tile));
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) c[i * ldc + j] = (accumulate ? c[i * ldc + j] : T(0)) + tile[i][j];
  }
}

// C[rows][cols] (+)= A B with A packed as [rows / kRows panels][depth][kRows] (see pack_panels)
// and row k of B starting at b_row(k), readable up to padded_cols(cols) (the padding columns
// are read, not used).
// The depth goes in blocks of kDepthBlock, each summed in registers and added to C: B's block
// rows stay in cache across the tiles, and the rounding error grows with the block length and
// the number of blocks rather than with the whole depth.
constexpr int64_t kDepthBlock = 256;

template <typename Tile, typename T, typename BRows>
FASTNETS_ALWAYS_INLINE void gemm_rows(int64_t rows, int64_t cols, int64_t depth, const T* a_packed, const BRows& b_row,
                                      T* c, int64_t ldc, bool accumulate) {
  for (int64_t d0 = 0; d0 < depth || d0 == 0; d0 += kDepthBlock) {
    const int64_t block = std::min(kDepthBlock, depth - d0);
    const auto block_row = [&](int64_t k) FASTNETS_INLINE_LAMBDA { return b_row(d0 + k); };
    for (int64_t col = 0; col < cols; col += Tile::kCols) {
      for (int64_t row = 0; row < rows; row += Tile::kRows) {
        const T* panel = a_packed + row * depth + d0 * Tile::kRows;
        const auto a_value = [panel](int i, int64_t k) FASTNETS_INLINE_LAMBDA { return panel[k * Tile::kRows + i]; };
        gemm_tile<Tile>(block, a_value, block_row, col, c + row * ldc + col, ldc,
                        std::min<int64_t>(Tile::kRows, rows - row), std::min<int64_t>(Tile::kCols, cols - col),
                        accumulate || d0 > 0);
      }
    }
  }
}

// The same with B as [depth][ldb], ldb = padded_cols(cols).
template <typename Tile, typename T>
FASTNETS_ALWAYS_INLINE void gemm(int64_t rows, int64_t cols, int64_t depth, const T* a_packed, const T* b,
                                 int64_t ldb, T* c, int64_t ldc, bool accumulate) {
  gemm_rows<Tile>(rows, cols, depth, a_packed, [b, ldb](int64_t k) FASTNETS_INLINE_LAMBDA { return b + k * ldb; }, c,
                  ldc, accumulate);
}

// Values in A packed for `rows` rows of `depth`: whole panels.
inline int64_t panels_size(int64_t rows, int64_t depth) {
  return (rows + kPanelRows - 1) / kPanelRows * kPanelRows * depth;
}

// Packs A[rows][depth], given as value(row, k), into panels of kPanelRows rows:
// out[panel][k][row % kPanelRows], zero past the last row; out holds panels_size(rows, depth).
template <typename T, typename Value>
void pack_panels(int64_t rows, int64_t depth, const Value& value, T* out) {
  for (int64_t row0 = 0; row0 < rows; row0 += kPanelRows) {
    T* panel = out + row0 * depth;
    for (int64_t k = 0; k < depth; ++k) {
      for (int64_t i = 0; i < kPanelRows; ++i) panel[k * kPanelRows + i] = row0 + i < rows ? value(row0 + i, k) : T(0);
    }
  }
}

}  // namespace fastnets
