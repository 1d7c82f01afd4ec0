#pragma once
// C (+)= A B on the CPU for float and double with the register-tiled GEMM of cpu_gemm.h, for ops
// whose GEMMs are not a convolution's (the LSTM layer). On the 2-core development machine (AMD
// EPYC, AVX-512) it runs at about twice the rate of the MKL sgemm behind at::mm. B is prepared
// once (packed in column panels) and may serve many products; A is read in place when its rows
// are contiguous, else packed per call.
// Threads split the rows (tall A) or the columns (short A); each element of C is summed by one
// thread in a fixed order, so results do not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <type_traits>

#include "common/cpu_gemm.h"
#include "common/cpu_isa.h"
#include "common/cpu_transpose.h"

namespace fastnets {

inline bool cpu_matmul_supports(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kDouble;
}

// B (depth x cols) as the GEMM reads it, in panels of kPanelCols columns: column c of row k is at
// data[(c / kPanelCols) * panel_stride + k * row_stride + c % kPanelCols]. A prepared copy packs
// each panel's rows one after the other (row_stride = kPanelCols), so that a tile walks memory
// contiguously and a depth block of a panel stays in L1; b itself serves when it is contiguous
// with whole panels per row (row_stride = cols): no copy, for a product too small to repay one.
struct GemmRightOperand {
  at::Tensor data;
  int64_t depth = 0, cols = 0, panel_stride = 0, row_stride = 0;
};

inline int64_t panel_cols(const at::Tensor& b) {
  return b.scalar_type() == at::kFloat ? kPanelCols<float> : kPanelCols<double>;
}

// Whether b can be read in place (see GemmRightOperand).
inline bool usable_in_place(const at::Tensor& b) {
  return b.dim() == 2 && cpu_matmul_supports(b.scalar_type()) && b.size(1) > 0 && b.is_contiguous() &&
         b.size(1) % panel_cols(b) == 0;
}

inline GemmRightOperand right_operand_in_place(const at::Tensor& b) {
  TORCH_INTERNAL_ASSERT(usable_in_place(b));
  return {b, b.size(0), b.size(1), panel_cols(b), b.size(1)};
}

namespace cpu_matmul_detail {

// Memory for packed operands, `numel` values of `dtype`, from buffers that each thread keeps
// between calls. The LSTM packs operands of megabytes on every call; a fresh block that size is
// mapped by malloc and unmapped when freed, so each call page-faulted it in anew, which made an
// LSTMCell's forward+backward (B64 H512) take 6.3-7.9 ms instead of 3.4-3.8 ms in some runs here.
// kBuffers buffers of kScratchBytes, each allocated on first use and never filled (only the pages
// packed into become resident: a thread that packed keeps up to kBuffers x kScratchBytes until it
// ends); a larger request, or one while all are in use, gets its own allocation.
inline at::Tensor packing_scratch(int64_t numel, at::ScalarType dtype) {
  constexpr int64_t kScratchBytes = int64_t(32) << 20;
  // A product's two packed operands; or the LSTM forward's two weights, used through its loop
  // while its left-hand operands (rows of the input and of h) are read in place.
  constexpr size_t kBuffers = 2;
  thread_local std::array<at::Tensor, kBuffers> buffers;
  const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(dtype));
  if (bytes > 0 && bytes <= kScratchBytes) {
    for (at::Tensor& buffer : buffers) {
      // empty_cpu, not at::empty: no fill of the whole buffer under deterministic algorithms.
      if (!buffer.defined()) buffer = at::detail::empty_cpu({kScratchBytes}, at::kByte);
      if (buffer.storage().use_count() == 1) return buffer.narrow(0, 0, bytes).view(dtype);  // free
    }
  }
  return at::detail::empty_cpu({numel}, dtype);
}

constexpr int64_t kPackDepth = 64;  // rows of a panel per task of prepare_right_operand
constexpr int64_t kMinTaskValues = 1 << 14;  // fewer values than this per thread cost more to share than to copy

// A grain (in units of `unit_work`) that gives each thread at least `min_work`.
inline int64_t grain_for(int64_t unit_work, int64_t min_work) {
  return std::max<int64_t>(1, (min_work + unit_work - 1) / std::max<int64_t>(unit_work, 1));
}

// The columns [col0, col0 + width) of b (`cols` columns, values at source[k * row_stride + j *
// col_stride]; zeros past its last column), rows [k0, k1), into panel.
template <typename T>
FASTNETS_ALWAYS_INLINE void pack_panel_rows(const T* source, int64_t row_stride, int64_t col_stride, int64_t cols,
                                            int64_t col0, int64_t width, int64_t k0, int64_t k1, T* panel) {
  const int64_t count = std::min(width, cols - col0);
  for (int64_t k = k0; k < k1; ++k) {
    std::fill(panel + k * width + count, panel + (k + 1) * width, T(0));
  }
  if (col_stride == 1) {
    for (int64_t k = k0; k < k1; ++k) std::copy_n(source + k * row_stride + col0, count, panel + k * width);
    return;
  }
  // A transposed float b (a weight w^T: row_stride 1) by 8 x 8 blocks transposed in registers
  // (the copy of a transposed 2048 x 512 weight, 2 threads: 0.30 -> 0.13 ms; 784 x 500: 0.063 ->
  // 0.037 ms), the rest column by column: a column is then read contiguously, and the panel rows
  // written stay in L1.
  int64_t j0 = 0, k_end = k0;
  if constexpr (std::is_same_v<T, float>) {
    if (row_stride == 1) {
      j0 = count / 8 * 8;
      k_end = k0 + (k1 - k0) / 8 * 8;
      for (int64_t j = 0; j < j0; j += 8) {
        for (int64_t k = k0; k < k_end; k += 8) {
          transpose_8x8(source + (col0 + j) * col_stride + k, col_stride, panel + k * width + j, width);
        }
      }
    }
  }
  for (int64_t j = 0; j < count; ++j) {
    const T* column = source + (col0 + j) * col_stride;
    for (int64_t k = j < j0 ? k_end : k0; k < k1; ++k) panel[k * width + j] = column[k * row_stride];
  }
}

}  // namespace cpu_matmul_detail

// b packed in panels (one copy, any strides; the last panel zero-padded), in parallel.
inline GemmRightOperand prepare_right_operand(const at::Tensor& b) {
  TORCH_INTERNAL_ASSERT(b.dim() == 2 && cpu_matmul_supports(b.scalar_type()));
  const int64_t depth = b.size(0), cols = b.size(1), width = panel_cols(b);
  const int64_t panels = (cols + width - 1) / width, blocks = (depth + cpu_matmul_detail::kPackDepth - 1) /
                                                               cpu_matmul_detail::kPackDepth;
  at::Tensor data = cpu_matmul_detail::packing_scratch(panels * depth * width, b.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "fastnets::prepare_right_operand", [&] {
    scalar_t* out = data.mutable_data_ptr<scalar_t>();
    const scalar_t* source = b.const_data_ptr<scalar_t>();
    const int64_t row_stride = b.stride(0), col_stride = b.stride(1);
    const int64_t grain = cpu_matmul_detail::grain_for(cpu_matmul_detail::kPackDepth * width,
                                                       cpu_matmul_detail::kMinTaskValues);
    at::parallel_for(0, panels * blocks, grain, [&](int64_t first, int64_t last) {
      for (int64_t task = first; task < last; ++task) {
        const int64_t panel = task / blocks, k0 = task % blocks * cpu_matmul_detail::kPackDepth;
        call_with_best_isa([&]() FASTNETS_INLINE_LAMBDA {
          cpu_matmul_detail::pack_panel_rows(source, row_stride, col_stride, cols, panel * width, width, k0,
                                             std::min(k0 + cpu_matmul_detail::kPackDepth, depth),
                                             out + panel * depth * width);
        });
      }
    });
  });
  return {data, depth, cols, depth * width, width};
}

namespace cpu_matmul_detail {

constexpr int64_t kRowChunk = 256;  // rows of A per task when A is tall: a chunk's depth block stays in L2
// Depth summed in registers before a tile is added to C: twice cpu_gemm.h's kDepthBlock, so that
// the LSTM's products (depth 512) write C once and never read it back; a panel's block (64 KB)
// then outgrows L1, but two vectors of B per k step come from L2 fast enough: 3200 x 512 x 2048
// runs 2-3% faster.
constexpr int64_t kMatmulDepthBlock = 2 * kDepthBlock;
constexpr int64_t kMinTaskFlops = 1 << 21;  // less work than this per thread costs more to share than to do

template <typename T>
void matmul(const at::Tensor& a, const GemmRightOperand& b, T* c, int64_t ldc, bool accumulate) {
  const int64_t rows = a.size(0), depth = a.size(1), cols = b.cols;
  constexpr int64_t width = kPanelCols<T>;
  const T* a_data = a.const_data_ptr<T>();
  const int64_t a_row_stride = a.stride(0), a_col_stride = a.stride(1);
  const T* b_data = b.data.const_data_ptr<T>();
  const int64_t panels = (rows + kPanelRows - 1) / kPanelRows;
  // A's rows in place where they are contiguous: a tile's broadcasts then come from kRows rows
  // instead of one packed stream, which measured no slower and saves the copy (per LSTM step,
  // 64 x 512 forward and 64 x 2048 backward): 64x2048x512 (prepared B) 278-285 -> 263-267 us,
  // 3200x2048x512 16.3-16.8 -> 13.6-14.4 ms, 3200x512x2048 13.9-14.3 -> 13.4-14.1 ms.
  const bool in_place = a_col_stride == 1;
  // Uninitialized: the packing below writes every value (zeros past the last row).
  const at::Tensor packed_a = in_place ? at::Tensor() : packing_scratch(panels_size(rows, depth), b.data.scalar_type());
  T* const packed = in_place ? nullptr : packed_a.mutable_data_ptr<T>();
  if (!in_place && a_row_stride == 1) {
    // A transposed (the weight gradients' grad_gates^T): a panel's rows are runs of kPanelRows
    // values in each of A's columns, which lie a whole column apart. By blocks of kPackDepth
    // columns, each read once from end to end into every panel, not panel by panel through all
    // columns, which walked a page per value (a tenth of an LSTM layer's backward).
    const int64_t blocks = (depth + kPackDepth - 1) / kPackDepth;
    at::parallel_for(0, blocks, grain_for(kPackDepth * rows, kMinTaskValues), [&](int64_t first, int64_t last) {
      for (int64_t k0 = first * kPackDepth; k0 < std::min(last * kPackDepth, depth); k0 += kPackDepth) {
        const int64_t k1 = std::min(k0 + kPackDepth, depth);
        for (int64_t panel = 0; panel < panels; ++panel) {
          const int64_t row0 = panel * kPanelRows, count = std::min<int64_t>(kPanelRows, rows - row0);
          T* out = packed + row0 * depth;
          for (int64_t k = k0; k < k1; ++k) {
            const T* column = a_data + row0 + k * a_col_stride;
            for (int64_t i = 0; i < kPanelRows; ++i) out[k * kPanelRows + i] = i < count ? column[i] : T(0);
          }
        }
      }
    });
  } else if (!in_place) {
    at::parallel_for(0, panels, grain_for(kPanelRows * depth, kMinTaskValues), [&](int64_t first, int64_t last) {
      const int64_t row0 = first * kPanelRows, count = std::min(last * kPanelRows, rows) - row0;
      pack_panels(count, depth, [&](int64_t i, int64_t k) {
        return a_data[(row0 + i) * a_row_stride + k * a_col_stride];
      }, packed + row0 * depth);
    });
  }
  // Rows [row0, row0 + row_count) times B's column panels [first_panel, last_panel): per depth
  // block (summed in registers, then added to C), per panel, per tile of rows and columns.
  const auto run = [&](int64_t row0, int64_t row_count, int64_t first_panel, int64_t last_panel) {
    call_with_best_isa_tag([&](auto isa) FASTNETS_INLINE_LAMBDA {
      using Tile = GemmTileFor<T, decltype(isa)::value>;
      for (int64_t d0 = 0; d0 < depth || d0 == 0; d0 += kMatmulDepthBlock) {
        const int64_t block = std::min(kMatmulDepthBlock, depth - d0);
        for (int64_t panel = first_panel; panel < last_panel; ++panel) {
          const T* panel_rows = b_data + panel * b.panel_stride + d0 * b.row_stride;
          const int64_t row_stride = b.row_stride;
          const auto b_row = [panel_rows, row_stride](int64_t k) FASTNETS_INLINE_LAMBDA {
            return panel_rows + k * row_stride;
          };
          const int64_t panel_col0 = panel * width;
          for (int64_t col = 0; col < width && panel_col0 + col < cols; col += Tile::kCols) {
            for (int64_t row = 0; row < row_count; row += Tile::kRows) {
              const auto tile = [&](const auto& a_value) FASTNETS_INLINE_LAMBDA {
                gemm_tile<Tile>(block, a_value, b_row, col, c + (row0 + row) * ldc + panel_col0 + col, ldc,
                                std::min<int64_t>(Tile::kRows, row_count - row),
                                std::min<int64_t>(Tile::kCols, cols - panel_col0 - col), accumulate || d0 > 0);
              };
              if (in_place) {
                const T* a_rows[Tile::kRows];  // rows past the last repeat it, their sums dropped
                for (int i = 0; i < Tile::kRows; ++i) {
                  a_rows[i] = a_data + std::min(row0 + row + i, rows - 1) * a_row_stride + d0;
                }
                tile([&a_rows](int i, int64_t k) FASTNETS_INLINE_LAMBDA { return a_rows[i][k]; });
              } else {
                const T* a_panel = packed + (row0 + row) * depth + d0 * Tile::kRows;
                tile([a_panel](int i, int64_t k) FASTNETS_INLINE_LAMBDA { return a_panel[k * Tile::kRows + i]; });
              }
            }
          }
        }
      }
    });
  };
  const int64_t col_panels = (cols + width - 1) / width;
  if (rows >= 2 * kRowChunk) {
    // Chunks of at most kRowChunk rows, as many for each thread: 3200 rows in chunks of 256
    // gave one of two threads 7 chunks and the other 6 (a tenth of the time lost). No more
    // threads than chunks of kRowChunk rows, so that many threads do not make chunks tiny.
    const int64_t threads = std::clamp<int64_t>(at::get_num_threads(), 1, (rows + kRowChunk - 1) / kRowChunk);
    const int64_t per_thread = (rows + threads - 1) / threads;
    const int64_t chunks_per_thread = (per_thread + kRowChunk - 1) / kRowChunk;
    const int64_t chunk_rows =
        ((per_thread + chunks_per_thread - 1) / chunks_per_thread + kPanelRows - 1) / kPanelRows * kPanelRows;
    const int64_t chunks = (rows + chunk_rows - 1) / chunk_rows;
    const int64_t grain = grain_for(2 * chunk_rows * depth * cols, kMinTaskFlops);
    at::parallel_for(0, chunks, grain, [&](int64_t first, int64_t last) {
      for (int64_t chunk = first; chunk < last; ++chunk) {
        const int64_t row0 = chunk * chunk_rows;
        run(row0, std::min(chunk_rows, rows - row0), 0, col_panels);
      }
    });
  } else {
    at::parallel_for(0, col_panels, grain_for(2 * rows * width * depth, kMinTaskFlops),
                     [&](int64_t first, int64_t last) { run(0, rows, first, last); });
  }
}

}  // namespace cpu_matmul_detail

namespace cpu_matmul_detail {

// Rows of A at a time in dot_matmul, each with its own accumulator (independent FMA chains).
constexpr int kDotRows = 4;

template <typename T>
void dot_matmul(const at::Tensor& a, const at::Tensor& b, T* c, int64_t ldc, bool accumulate) {
  const at::Tensor a_rows = a.stride(1) == 1 ? a : a.contiguous();
  const int64_t rows = a.size(0), depth = a.size(1), cols = b.size(1);
  const T* a_data = a_rows.const_data_ptr<T>();
  const T* w_data = b.const_data_ptr<T>();  // column j of b: depth values from w_data + j * ldw
  const int64_t lda = a_rows.stride(0), ldw = b.stride(1);
  at::parallel_for(0, cols, grain_for(2 * rows * depth, kMinTaskFlops), [&](int64_t first, int64_t last) {
    call_with_best_isa_tag([&](auto isa) FASTNETS_INLINE_LAMBDA {
      using Tile = GemmTileFor<T, decltype(isa)::value>;
      using vec = typename Tile::vec;
      constexpr int L = Tile::kLanes;
      for (int64_t j = first; j < last; ++j) {
        const T* w = w_data + j * ldw;
        for (int64_t i0 = 0; i0 < rows; i0 += kDotRows) {
          const int count = static_cast<int>(std::min<int64_t>(kDotRows, rows - i0));
          const T* x[kDotRows];
          for (int r = 0; r < kDotRows; ++r) x[r] = a_data + (i0 + std::min(r, count - 1)) * lda;
          vec acc[kDotRows] = {};
          int64_t k = 0;
          for (; k + L <= depth; k += L) {
            vec wk;
            std::memcpy(&wk, w + k, sizeof(vec));
            for (int r = 0; r < kDotRows; ++r) {
              vec xk;
              std::memcpy(&xk, x[r] + k, sizeof(vec));
              acc[r] += xk * wk;
            }
          }
          for (int r = 0; r < count; ++r) {
            // The lanes summed pairwise, halving, in a fixed order: a short dependency chain.
            T lanes[L];
            std::memcpy(lanes, &acc[r], sizeof(vec));
            for (int width = L / 2; width >= 1; width /= 2) {
              for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
            }
            T sum = lanes[0];
            for (int64_t kk = k; kk < depth; ++kk) sum += x[r][kk] * w[kk];
            T& out = c[(i0 + r) * ldc + j];
            out = accumulate ? out + sum : sum;
          }
        }
      }
    });
  });
}

}  // namespace cpu_matmul_detail

// Products of fewer rows than this go to dot_product_matmul (or the tiled GEMM), never to at::mm:
// torch 2.14's float32 mm gave other bits for 1 and 2 threads at 5-7 and 9-11 rows, and for so
// few rows a copy of the weight into the tiled GEMM's layout costs more than the product.
constexpr int64_t kDotProductMaxRows = 16;

// Whether dot_product_matmul takes b: a transposed matrix (unit stride down its columns), as
// w.t() is for a row-major weight w.
inline bool dot_product_operand(const at::Tensor& b) {
  return b.dim() == 2 && cpu_matmul_supports(b.scalar_type()) && (b.stride(0) == 1 || b.size(0) <= 1);
}

// c (+)= a b for b = w^T read in place (dot_product_operand): each value of c is one dot product
// of a row of a and a row of w, summed in SIMD lanes, then across them in a fixed order, by one
// thread, so its bits do not depend on the thread count. For products of a few rows, where
// copying w into the tiled GEMM's layout costs more than the product (an LSTM cell's step at
// batch 1: 0.58 ms that way against 0.12 ms for at::mm).
inline void dot_product_matmul(const at::Tensor& a, const at::Tensor& b, at::Tensor& c, bool accumulate) {
  TORCH_INTERNAL_ASSERT(a.dim() == 2 && c.dim() == 2 && dot_product_operand(b) && a.size(1) == b.size(0) &&
                        c.size(0) == a.size(0) && c.size(1) == b.size(1) && (c.stride(1) == 1 || c.size(1) <= 1) &&
                        a.scalar_type() == b.scalar_type() && c.scalar_type() == a.scalar_type());
  if (c.numel() == 0) return;
  if (a.scalar_type() == at::kFloat) {
    cpu_matmul_detail::dot_matmul<float>(a, b, c.mutable_data_ptr<float>(), c.stride(0), accumulate);
  } else {
    cpu_matmul_detail::dot_matmul<double>(a, b, c.mutable_data_ptr<double>(), c.stride(0), accumulate);
  }
}

// c (rows x b.cols, rows of stride c.stride(0), unit column stride) (+)= a (rows x depth, any
// strides) times B.
inline void cpu_matmul(const at::Tensor& a, const GemmRightOperand& b, at::Tensor& c, bool accumulate) {
  TORCH_INTERNAL_ASSERT(a.dim() == 2 && c.dim() == 2 && a.size(1) == b.depth && c.size(0) == a.size(0) &&
                        c.size(1) == b.cols && (c.stride(1) == 1 || c.size(1) <= 1) &&
                        a.scalar_type() == b.data.scalar_type() && c.scalar_type() == a.scalar_type());
  if (c.numel() == 0) return;
  if (a.scalar_type() == at::kFloat) {
    cpu_matmul_detail::matmul<float>(a, b, c.mutable_data_ptr<float>(), c.stride(0), accumulate);
  } else {
    cpu_matmul_detail::matmul<double>(a, b, c.mutable_data_ptr<double>(), c.stride(0), accumulate);
  }
}

}  // namespace fastnets
