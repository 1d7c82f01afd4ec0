#pragma once
// C (+)= A B on the CPU for float and double with the register-tiled GEMM of cpu_gemm.h, for ops
// whose GEMMs are not a convolution's (the LSTM layer). On the 2-core development machine (AMD
// EPYC, AVX-512) it runs at about twice the rate of the MKL sgemm behind at::mm. B is prepared
// once (copied into rows padded for the tiles) and may serve many products; A is packed per call.
// Threads split the rows (tall A) or the columns (short A); each element of C is summed by one
// thread in a fixed order, so results do not depend on the thread count.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <memory>

#include "common/cpu_gemm.h"
#include "common/cpu_isa.h"

namespace fastnets {

inline bool cpu_matmul_supports(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kDouble;
}

// B (depth x cols) as the GEMM reads it: rows padded_cols(cols) apart (b itself when it is laid out
// so, otherwise a copy with zero padding).
struct GemmRightOperand {
  at::Tensor rows;  // (depth, padded_cols(cols))
  int64_t cols = 0;
};

inline int64_t padded_row_length(const at::Tensor& b) {
  return b.scalar_type() == at::kFloat ? padded_cols<float>(b.size(1)) : padded_cols<double>(b.size(1));
}

// Whether b is already laid out as the GEMM reads it: contiguous with a whole number of tiles per
// row (e.g. a weight of 512 columns), so that no read goes past a row, and it is used in place.
inline bool usable_in_place(const at::Tensor& b) {
  return b.dim() == 2 && cpu_matmul_supports(b.scalar_type()) && b.size(1) > 0 && b.is_contiguous() &&
         b.size(1) == padded_row_length(b);
}

inline GemmRightOperand prepare_right_operand(const at::Tensor& b) {
  TORCH_INTERNAL_ASSERT(b.dim() == 2 && cpu_matmul_supports(b.scalar_type()));
  const int64_t cols = b.size(1);
  if (usable_in_place(b)) return {b, cols};
  const int64_t ld = padded_row_length(b);
  at::Tensor rows = at::empty({b.size(0), ld}, b.options());
  rows.narrow(1, 0, cols).copy_(b);  // torch's copy: blocked when b is a transposed view
  rows.narrow(1, cols, ld - cols).zero_();
  return {rows, cols};
}

namespace cpu_matmul_detail {

constexpr int64_t kRowChunk = 256;  // rows of A per task when A is tall: a chunk's depth block stays in L2
constexpr int64_t kMinTaskFlops = 1 << 21;  // less work than this per thread costs more to share than to do
constexpr int64_t kMinTaskValues = 1 << 14;

// A grain (in units of `unit_work`) that gives each thread at least `min_work`.
inline int64_t grain_for(int64_t unit_work, int64_t min_work) {
  return std::max<int64_t>(1, (min_work + unit_work - 1) / std::max<int64_t>(unit_work, 1));
}

template <typename T>
void matmul(const at::Tensor& a, const GemmRightOperand& b, T* c, int64_t ldc, bool accumulate) {
  const int64_t rows = a.size(0), depth = a.size(1), cols = b.cols, ldb = b.rows.stride(0);
  const T* a_data = a.const_data_ptr<T>();
  const int64_t a_row_stride = a.stride(0), a_col_stride = a.stride(1);
  const T* b_data = b.rows.const_data_ptr<T>();
  const int64_t panels = (rows + kPanelRows - 1) / kPanelRows;
  // Uninitialized: pack_panels writes every value (zeros past the last row).
  const std::unique_ptr<T[]> packed(new T[panels_size(rows, depth)]);
  at::parallel_for(0, panels, grain_for(kPanelRows * depth, kMinTaskValues), [&](int64_t first, int64_t last) {
    const int64_t row0 = first * kPanelRows, count = std::min(last * kPanelRows, rows) - row0;
    pack_panels(count, depth, [&](int64_t i, int64_t k) {
      return a_data[(row0 + i) * a_row_stride + k * a_col_stride];
    }, packed.get() + row0 * depth);
  });
  const auto run = [&](int64_t row0, int64_t row_count, int64_t col0, int64_t col_count) {
    call_with_best_isa_tag([&](auto isa) FASTNETS_INLINE_LAMBDA {
      using Tile = GemmTileFor<T, decltype(isa)::value>;
      gemm<Tile>(row_count, col_count, depth, packed.get() + row0 * depth, b_data + col0, ldb,
                 c + row0 * ldc + col0, ldc, accumulate);
    });
  };
  if (rows >= 2 * kRowChunk) {
    const int64_t chunks = (rows + kRowChunk - 1) / kRowChunk;
    at::parallel_for(0, chunks, grain_for(2 * kRowChunk * depth * cols, kMinTaskFlops), [&](int64_t first, int64_t last) {
      for (int64_t chunk = first; chunk < last; ++chunk) {
        const int64_t row0 = chunk * kRowChunk;
        run(row0, std::min(kRowChunk, rows - row0), 0, cols);
      }
    });
  } else {
    // Column chunks of whole tiles of every instruction set (kMaxTileBytes).
    constexpr int64_t quantum = kMaxTileBytes / sizeof(T);
    const int64_t chunks = (cols + quantum - 1) / quantum;
    at::parallel_for(0, chunks, grain_for(2 * rows * quantum * depth, kMinTaskFlops), [&](int64_t first, int64_t last) {
      const int64_t col0 = first * quantum;
      run(0, rows, col0, std::min(last * quantum, cols) - col0);
    });
  }
}

}  // namespace cpu_matmul_detail

// c (rows x b.cols, rows of stride c.stride(0), unit column stride) (+)= a (rows x depth, any
// strides) times B.
inline void cpu_matmul(const at::Tensor& a, const GemmRightOperand& b, at::Tensor& c, bool accumulate) {
  TORCH_INTERNAL_ASSERT(a.dim() == 2 && c.dim() == 2 && a.size(1) == b.rows.size(0) && c.size(0) == a.size(0) &&
                        c.size(1) == b.cols && (c.stride(1) == 1 || c.size(1) <= 1) &&
                        a.scalar_type() == b.rows.scalar_type() && c.scalar_type() == a.scalar_type());
  if (c.numel() == 0) return;
  if (a.scalar_type() == at::kFloat) {
    cpu_matmul_detail::matmul<float>(a, b, c.mutable_data_ptr<float>(), c.stride(0), accumulate);
  } else {
    cpu_matmul_detail::matmul<double>(a, b, c.mutable_data_ptr<double>(), c.stride(0), accumulate);
  }
}

}  // namespace fastnets
