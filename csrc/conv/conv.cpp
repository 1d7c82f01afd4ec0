// Convolution and the fused Conv2d + bias + ReLU + MaxPool2d: operator schemas and CPU kernels.
// CUDA kernels: conv_cuda.cu; the index math and pooling epilogue: conv.h; the GEMM: common/cpu_gemm.h.
//
// Per image and group the convolution is a GEMM over the image's patch matrix (im2col), built
// in a per-thread buffer (in L2 for layers like the MNIST CNN's); only the output (for the fused
// layer: the pooled output and a 1-byte argmax) reaches memory. Stride-1 convolutions, and
// those that go by output positions (positions_gemm, by_positions: column stride 1 or 2), skip
// im2col: the GEMM reads a zero-padded copy of the input (see PaddedConv), with output channels
// (padded_gemm, stride 1) or output positions as rows.
// Backward: grad_input = a flipped-kernel convolution of the padded gradient for stride 1
// (channels or positions as rows, alike), else (and where the padding is wider than the kernel's
// reach, or by channels with inf or NaN weights) col2im(W^T dy), per image; grad_weight from a
// padded channels-last copy of the input, any stride, by taps or by input channels
// (weight_grad_by_taps, weight_grad_by_channels).
// grad_weight and grad_bias are summed per image into kWeightGradChunks fixed chunks of the
// batch, then the chunks in order: the same bits for any thread count. The fused layer's weight
// and bias gradients go by the pool's active winners instead where most of the convolution's
// gradients are zero (conv_relu_pool2d_weight_grads_by_winners).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/all.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/zeros.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/cpu_isa.h"
#include "common/cpu_scan.h"
#include "common/macros.h"
#include "conv/conv_shape.h"
#include "common/cpu_gemm.h"
#include "common/cpu_transpose.h"

namespace fastnets {
namespace {

constexpr int64_t kWeightGradChunks = 8;


// Patch entry q = (c, r, s): its channel, the offsets of its tap (it reads input (oh *
// stride_h + row_offset, ow * stride_w + col_offset) for output (oh, ow)) and the outputs whose
// reads fall inside the input.
struct PatchTap {
  int64_t channel, row_offset, col_offset, oh_first, oh_last, ow_first, ow_last;
  PatchTap(const Conv2dGeometry& g, int64_t q) {
    const int64_t taps = g.kernel_h * g.kernel_w;
    channel = q / taps;
    row_offset = q % taps / g.kernel_w * g.dilation_h - g.pad_h;
    col_offset = q % g.kernel_w * g.dilation_w - g.pad_w;
    conv_tap_range(g.out_h, g.in_h, g.stride_h, row_offset, oh_first, oh_last);
    conv_tap_range(g.out_w, g.in_w, g.stride_w, col_offset, ow_first, ow_last);
  }
};

// The patch matrix of one image and group, x pointing at the group's first input channel:
// entry (q, p) = input read by patch entry q for output p = oh * out_w + ow (zero in the
// padding), written to row_of(q)[p].
template <typename acc_t, typename scalar_t, typename Rows>
FASTNETS_ALWAYS_INLINE void im2col(const scalar_t* x, const Conv2dGeometry& g, const Rows& row_of) {
  for (int64_t q = 0; q < g.patch_size(); ++q) {
    const PatchTap t(g, q);
    acc_t* out = row_of(q);
    const scalar_t* plane = x + t.channel * g.in_plane();
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      acc_t* o = out + oh * g.out_w;
      if (oh < t.oh_first || oh >= t.oh_last) {
        for (int64_t ow = 0; ow < g.out_w; ++ow) o[ow] = acc_t(0);
        continue;
      }
      const scalar_t* in = plane + (oh * g.stride_h + t.row_offset) * g.in_w;
      for (int64_t ow = 0; ow < t.ow_first; ++ow) o[ow] = acc_t(0);
      if (g.stride_w == 1) {
        for (int64_t ow = t.ow_first; ow < t.ow_last; ++ow) {
          o[ow] = static_cast<acc_t>(in[ow + t.col_offset]);
        }
      } else {
        for (int64_t ow = t.ow_first; ow < t.ow_last; ++ow) {
          o[ow] = static_cast<acc_t>(in[ow * g.stride_w + t.col_offset]);
        }
      }
      for (int64_t ow = t.ow_last; ow < g.out_w; ++ow) o[ow] = acc_t(0);
    }
  }
}

// The adjoint of im2col: dx[c][ih][iw] += col[q][p] for every patch entry reading (ih, iw), in
// a fixed order (q, then p).
template <typename acc_t>
FASTNETS_ALWAYS_INLINE void col2im(const acc_t* col, int64_t ldc, const Conv2dGeometry& g, acc_t* dx) {
  for (int64_t q = 0; q < g.patch_size(); ++q) {
    const PatchTap t(g, q);
    acc_t* plane = dx + t.channel * g.in_plane();
    for (int64_t oh = t.oh_first; oh < t.oh_last; ++oh) {
      const acc_t* o = col + q * ldc + oh * g.out_w;
      acc_t* in = plane + (oh * g.stride_h + t.row_offset) * g.in_w;
      for (int64_t ow = t.ow_first; ow < t.ow_last; ++ow) in[ow * g.stride_w + t.col_offset] += o[ow];
    }
  }
}

// The order of a convolution's depth, its taps q = (c, r, s) of channel c, kernel row r
// and kernel column s: kTaps, d = q, or kKernelColumns, d = (s, r, c) (positions_gemm and
// weight_grad_by_taps), which puts the taps of one kernel column, and in it those of one kernel
// row, in a range.
enum class DepthOrder { kTaps, kKernelColumns };

// Stride-1 convolutions as a GEMM read straight from a zero-padded copy of the source, without
// im2col: in planes of padded_w columns, output (oh, ow) is column oh * padded_w + ow, and tap
// q = (c, r, s) reads the source at column + tap_offset(q), tap_offset = c * plane + r *
// dilation_h * padded_w + s * dilation_w: row q of B is the padded source from tap_offset(q).
// A padded row is the pad_left zeros then the source row (then zeros up to out_w, where the
// padding is wider than the kernel's reach: every output column of a row must be computed in that
// row), so that the reads past its end (at most pad_left, the padding being symmetric) land in
// the next row's zeros; one more zero row at the bottom serves the last row. The columns with
// ow >= out_w are computed and dropped (the work grows by padded_w / out_w).
// positions_gemm and weight_grad_by_taps read the same layout for any stride: output (oh, ow)
// reads padded row oh * stride_h + r * dilation_h and column ow * stride_w + s * dilation_w, at
// most the last source column plus pad_left, hence the same wrap into the next row's zeros.
struct PaddedConv {
  int64_t channels, height, width, pad_top, pad_left, padded_h, padded_w, kernel_h, kernel_w, dilation_h, dilation_w,
      out_h, out_w, stride_h, stride_w;
  PaddedConv(int64_t channels_, int64_t height_, int64_t width_, int64_t pad_h, int64_t pad_w, int64_t kernel_h_,
             int64_t kernel_w_, int64_t dilation_h_, int64_t dilation_w_, int64_t out_h_, int64_t out_w_,
             int64_t stride_h_ = 1, int64_t stride_w_ = 1)
      : channels(channels_), height(height_), width(width_), pad_top(pad_h), pad_left(pad_w),
        padded_h(height_ + 2 * pad_h + 1), padded_w(std::max(width_ + pad_w, out_w_)), kernel_h(kernel_h_),
        kernel_w(kernel_w_), dilation_h(dilation_h_), dilation_w(dilation_w_), out_h(out_h_), out_w(out_w_),
        stride_h(stride_h_), stride_w(stride_w_) {}
  int64_t columns() const { return out_h * padded_w; }
  int64_t plane() const { return padded_h * padded_w; }
  int64_t depth() const { return channels * kernel_h * kernel_w; }
  int64_t tap_offset(int64_t q) const {
    const int64_t taps = kernel_h * kernel_w;
    return q / taps * plane() + q % taps / kernel_w * dilation_h * padded_w + q % kernel_w * dilation_w;
  }
  // The tap q = (c, r, s) at depth index d in the given order (DepthOrder).
  int64_t tap(int64_t d, DepthOrder order) const {
    if (order == DepthOrder::kTaps) return d;
    const int64_t s = d / (kernel_h * channels), r = d / channels % kernel_h;
    return (d % channels * kernel_h + r) * kernel_w + s;
  }
  // The kernel rows r with which output row oh reads a source row (not the zero rows around it),
  // a range [first, last): padded row oh * stride_h + r * dilation_h.
  std::pair<int64_t, int64_t> kernel_rows_reading_source(int64_t oh) const {
    return reading_source(pad_top - oh * stride_h, height, dilation_h, 0, kernel_h);
  }
  // The output rows that read a source row with kernel row r, a range [first, last).
  std::pair<int64_t, int64_t> output_rows_reading_source(int64_t r) const {
    return reading_source(pad_top - r * dilation_h, height, stride_h, 0, out_h);
  }
  // The outputs in [ow_first, ow_last) of a row whose kernel column s reads a source column, a
  // range [first, last): padded column ow * stride_w + s * dilation_w.
  std::pair<int64_t, int64_t> outputs_reading_source_column(int64_t s, int64_t ow_first, int64_t ow_last) const {
    return reading_source(pad_left - s * dilation_w, width, stride_w, ow_first, ow_last);
  }
  // The i in [lo, hi) with start <= i * step < start + size (step > 0), a range [first, last).
  static std::pair<int64_t, int64_t> reading_source(int64_t start, int64_t size, int64_t step, int64_t lo,
                                                    int64_t hi) {
    const auto ceil_div = [step](int64_t a) { return a >= 0 ? (a + step - 1) / step : -(-a / step); };
    const int64_t first = std::max(lo, ceil_div(start)), last = std::min(hi, ceil_div(start + size));
    return {first, std::max(first, last)};
  }
  // Values of the padded buffer: the gemm's reads of padding columns run past the last plane.
  template <typename acc_t>
  int64_t buffer_size() const {
    return channels * plane() + (kernel_w - 1) * dilation_w + padded_cols<acc_t>(columns()) - columns();
  }
};

// The forward of input planes (in_h, in_w) padded by (pad_h, pad_w), or, for grad_input, of
// grad_output planes padded by the kernel span less the padding (a flipped-kernel convolution).
PaddedConv padded_forward(const Conv2dGeometry& g) {
  return PaddedConv(g.group_in_channels(), g.in_h, g.in_w, g.pad_h, g.pad_w, g.kernel_h, g.kernel_w, g.dilation_h,
                    g.dilation_w, g.out_h, g.out_w, g.stride_h, g.stride_w);
}

bool has_padded_grad_input(const Conv2dGeometry& g) {
  return g.stride_h == 1 && g.stride_w == 1 && g.pad_h <= g.dilation_h * (g.kernel_h - 1) &&
         g.pad_w <= g.dilation_w * (g.kernel_w - 1);
}

PaddedConv padded_grad_input(const Conv2dGeometry& g) {
  return PaddedConv(g.group_out_channels(), g.out_h, g.out_w, g.dilation_h * (g.kernel_h - 1) - g.pad_h,
                    g.dilation_w * (g.kernel_w - 1) - g.pad_w, g.kernel_h, g.kernel_w, g.dilation_h, g.dilation_w,
                    g.in_h, g.in_w);
}

// Copies planes [channels][height][width], source_plane and source_row values apart, into the
// padded buffer, after pad_top rows and pad_left columns of each padded plane; the rest stays zero.
template <typename acc_t, typename scalar_t>
FASTNETS_ALWAYS_INLINE void fill_padded(const scalar_t* source, int64_t source_plane, int64_t height, int64_t width,
                                        int64_t source_row, const PaddedConv& pc, acc_t* padded) {
  const int64_t top = pc.pad_top, left = pc.pad_left;
  for (int64_t c = 0; c < pc.channels; ++c) {
    for (int64_t h = 0; h < height; ++h) {
      const scalar_t* in = source + c * source_plane + h * source_row;
      acc_t* out = padded + c * pc.plane() + (h + top) * pc.padded_w + left;
      for (int64_t w = 0; w < width; ++w) out[w] = static_cast<acc_t>(in[w]);
    }
  }
}

template <typename Tile, typename acc_t>
FASTNETS_ALWAYS_INLINE void padded_gemm(const PaddedConv& pc, int64_t rows, const acc_t* a_panels,
                                        const acc_t* padded, const std::vector<int64_t>& offsets, acc_t* c,
                                        int64_t ldc) {
  gemm_rows<Tile>(rows, pc.columns(), pc.depth(), a_panels,
                  [&](int64_t k) FASTNETS_INLINE_LAMBDA { return padded + offsets[k]; }, c, ldc, false);
}

// The taps' offsets in depth order (PaddedConv::tap).
std::vector<int64_t> tap_offsets(const PaddedConv& pc, DepthOrder order) {
  std::vector<int64_t> offsets(pc.depth());
  for (int64_t d = 0; d < pc.depth(); ++d) offsets[d] = pc.tap_offset(pc.tap(d, order));
  return offsets;
}

// The products skipped for reading zero padding would be 0 x value, zeros only where the value
// is finite (all_finite, common/cpu_scan.h): with an inf or NaN weight (for the forward) or
// gradient (for grad_weight) every product is taken, and the NaN spreads as it does in torch's
// float64 convolution, whose im2col holds the zeros.

// Products by output positions instead (column stride 1 or 2, any row stride): tiles of a run
// of up to kRowTilePositions positions of one output row x Tile::kCols channels, the positions'
// inputs broadcast from the padded copy (no dropped columns) and the weights read as rows of B
// (pack_channel_panels), both in the depth order by kernel columns (DepthOrder::kKernelColumns).
// Where skip_padding (the weights finite: all_finite), a tile leaves out every product with the
// zero padding, as oneDNN does: the kernel rows that read only zero rows for its output row, and
// for each kernel column, the positions at either end that read a zero column; its depth thus
// goes by kernel columns, each a sub-tile of the positions that read the source. For MNIST's
// conv2 (5x5, padding 2, 14x14 outputs) that leaves out 16.4% of the products, all of them zeros.
// Where a group has many channels, the padding columns are many and the depth is not small
// (MNIST's conv2: 64 channels, 16 padded columns per 14 outputs, depth 800), it is faster than
// padded_gemm, and for column stride 2 than im2col (by_positions).
// A tile's sums are summed in registers per depth block within a kernel column, then in a tile
// buffer (in L1), and stored transposed, out[k * ldc + p]: a two-level sum, within PyTorch's
// float32 error on depths of a few hundred (blocks of 256 gave 3x its error on a depth of 300).
constexpr int64_t kPositionsDepthBlock = 64;

// 14 positions x 2 vectors of accumulators, B's 2 vectors and a broadcast fit AVX-512's 32
// registers, and 14 x 1, one of B and a broadcast fit the 16 of AVX2 and SSE; 14 is also the row of
// MNIST's conv2, one run a row.
constexpr int kRowTilePositions = 14;

// The sub-tile of kPositions positions from `inputs`, kStride apart: tile[i][j] += sum over the
// depth of inputs[i * kStride + tap[q]] x panel[q][col + j].
template <int kStride, int kPositions, typename Tile, typename acc_t>
FASTNETS_ALWAYS_INLINE void positions_tile(int64_t depth, const acc_t* inputs, const int64_t* tap,
                                           const acc_t* panel, int64_t col, acc_t* tile) {
  using SubTile = typename Tile::template WithRows<kPositions>;
  const auto a_value = [inputs, tap](int i, int64_t q) FASTNETS_INLINE_LAMBDA {
    return inputs[i * kStride + tap[q]];
  };
  const auto b_row = [panel](int64_t q) FASTNETS_INLINE_LAMBDA { return panel + q * kPanelCols<acc_t>; };
  gemm_tile<SubTile>(depth, a_value, b_row, col, tile, Tile::kCols, kPositions, Tile::kCols, true);
}

template <int kStride, typename Tile, typename acc_t, int... kCounts>
FASTNETS_ALWAYS_INLINE void positions_tile_of(int positions, std::integer_sequence<int, kCounts...>, int64_t depth,
                                              const acc_t* inputs, const int64_t* tap, const acc_t* panel,
                                              int64_t col, acc_t* tile) {
  ((positions == kCounts + 1 ? positions_tile<kStride, kCounts + 1, Tile>(depth, inputs, tap, panel, col, tile)
                             : void()),
   ...);
}

// Column strides that positions_gemm compiles for (others build im2col).
bool has_positions_stride(int64_t stride_w) { return stride_w == 1 || stride_w == 2; }

template <typename Tile, typename acc_t>
FASTNETS_ALWAYS_INLINE void positions_gemm(const PaddedConv& pc, int64_t channels, const acc_t* weight_panels,
                                           const acc_t* padded, const std::vector<int64_t>& offsets, acc_t* out,
                                           int64_t ldc, bool skip_padding) {
  const int64_t depth = pc.depth(), column_depth = pc.kernel_h * pc.channels;
  // Runs of nearly equal length (the last shorter), at most kRowTilePositions each.
  const int64_t runs = (pc.out_w + kRowTilePositions - 1) / kRowTilePositions;
  const int64_t run_length = (pc.out_w + runs - 1) / runs;
  acc_t tile[kRowTilePositions][Tile::kCols];
  for (int64_t col = 0; col < channels; col += Tile::kCols) {
    const int64_t cols = std::min<int64_t>(Tile::kCols, channels - col);
    const acc_t* panel = weight_panels + col / kPanelCols<acc_t> * depth * kPanelCols<acc_t>;
    for (int64_t oh = 0; oh < pc.out_h; ++oh) {
      const auto [first_row, last_row] =
          skip_padding ? pc.kernel_rows_reading_source(oh) : std::pair<int64_t, int64_t>(0, pc.kernel_h);
      for (int64_t ow0 = 0; ow0 < pc.out_w; ow0 += run_length) {
        const int64_t ow_last = std::min(pc.out_w, ow0 + run_length);
        std::fill(&tile[0][0], &tile[0][0] + kRowTilePositions * Tile::kCols, acc_t(0));
        for (int64_t s = 0; s < pc.kernel_w; ++s) {
          const auto [first, last] = skip_padding ? pc.outputs_reading_source_column(s, ow0, ow_last)
                                                  : std::pair<int64_t, int64_t>(ow0, ow_last);
          if (first == last) continue;
          const acc_t* inputs = padded + oh * pc.stride_h * pc.padded_w + first * pc.stride_w;
          const int64_t depth_last = s * column_depth + last_row * pc.channels;
          for (int64_t d0 = s * column_depth + first_row * pc.channels; d0 < depth_last; d0 += kPositionsDepthBlock) {
            const int count = static_cast<int>(last - first);
            const auto sequence = std::make_integer_sequence<int, kRowTilePositions>();
            const int64_t depth = std::min(kPositionsDepthBlock, depth_last - d0);
            acc_t* sub_tile = &tile[first - ow0][0];
            if (pc.stride_w == 1) {
              positions_tile_of<1, Tile>(count, sequence, depth, inputs, offsets.data() + d0,
                                         panel + d0 * kPanelCols<acc_t>, col % kPanelCols<acc_t>, sub_tile);
            } else {
              positions_tile_of<2, Tile>(count, sequence, depth, inputs, offsets.data() + d0,
                                         panel + d0 * kPanelCols<acc_t>, col % kPanelCols<acc_t>, sub_tile);
            }
          }
        }
        // value by value, these stores took 2.5% of MNIST's conv2 forward
        transpose_copy(&tile[0][0], Tile::kCols, ow_last - ow0, cols, out + col * ldc + oh * pc.out_w + ow0, ldc);
      }
    }
  }
}

// positions_gemm for the best instruction set, compiled once per accumulation type rather than
// inlined into each caller's instruction-set branch (that inlining made the grad_weight loop
// beside it in conv2d_backward_images 20% slower).
template <typename acc_t>
__attribute__((noinline)) void positions_gemm_best_isa(const PaddedConv& pc, int64_t channels,
                                                       const acc_t* weight_panels, const acc_t* padded,
                                                       const std::vector<int64_t>& offsets, acc_t* out, int64_t ldc,
                                                       bool skip_padding) {
  call_with_best_isa_tag([&](auto isa) FASTNETS_INLINE_LAMBDA {
    positions_gemm<GemmTileFor<acc_t, decltype(isa)::value>>(pc, channels, weight_panels, padded, offsets, out, ldc,
                                                             skip_padding);
  });
}

// grad_weight by taps (any stride): grad_weight^T[q][k] = sum over outputs p of
// input(q, p) x dy[k][p], in tiles of kPanelRows taps x Tile::kCols channels, the taps in the
// depth order by kernel columns (DepthOrder::kKernelColumns). The input is held zero-padded with
// channels last, so that a tile's taps (the same kernel row r and column s, consecutive channels)
// read one run of values per output. Where the gradient is finite (all_finite), such a tile takes
// only the outputs whose reads of (r, s) fall in the source, not in the zero padding: the output
// rows of output_rows_reading_source(r) and, in each, the outputs of
// outputs_reading_source_column(s, 0, out_w), listed once per kernel column (TapOutputs).
// Tiles of several (r, s) (channels not a multiple of kPanelRows) and non-finite gradients take
// every output: products with the zero padding add zeros, or spread the gradient's NaN as the
// dense product does.
struct TapOutputs {
  // Per list, per output (oh, ow) in order: the offset of its padded position (oh * stride_h *
  // padded_w + ow * stride_w) in the channels-last input, and p * gradient_stride (p = oh * out_w
  // + ow): where its gradients start in dy^T's panels (by taps) or its column of dy (by channels).
  // Lists 0 to kernel_w - 1 hold the outputs that kernel column s reads the source for, list
  // kernel_w all.
  std::vector<int64_t> input, gradient, start, per_row;
  TapOutputs() = default;
  TapOutputs(const PaddedConv& pf, int64_t gradient_stride) {
    for (int64_t s = 0; s <= pf.kernel_w; ++s) {
      const auto [first, last] =
          s < pf.kernel_w ? pf.outputs_reading_source_column(s, 0, pf.out_w) : std::pair<int64_t, int64_t>(0, pf.out_w);
      start.push_back(static_cast<int64_t>(input.size()));
      per_row.push_back(last - first);
      for (int64_t oh = 0; oh < pf.out_h; ++oh) {
        for (int64_t ow = first; ow < last; ++ow) {
          input.push_back((oh * pf.stride_h * pf.padded_w + ow * pf.stride_w) * pf.channels);
          gradient.push_back((oh * pf.out_w + ow) * gradient_stride);
        }
      }
    }
  }
};

// Calls set(i, j) for i < rows, j < cols in blocks of kTransposeBlock columns, i within: a
// transposing copy that reads rows and writes columns (or the reverse) then touches each cache line
// of either side once per block. Row by row, planes 4 KB apart (32x32 floats) all fell in one L1
// set: the 3 -> 64 channel 32x32 grad_weight ran 2.6x slower.
constexpr int64_t kTransposeBlock = 16;

template <typename Set>
FASTNETS_ALWAYS_INLINE void for_transpose_blocks(int64_t rows, int64_t cols, const Set& set) {
  for (int64_t j0 = 0; j0 < cols; j0 += kTransposeBlock) {
    const int64_t j_last = std::min(cols, j0 + kTransposeBlock);
    for (int64_t i = 0; i < rows; ++i) {
      for (int64_t j = j0; j < j_last; ++j) set(i, j);
    }
  }
}

// Copies planes [channels][height][width] with channels last: value (c, h, w) to out[h * out_row + w
// * channels + c]. Floats by transpose_copy (value by value, this copy took 0.45 ms of MNIST's conv2
// backward at N=64, 21 ms on one thread).
template <typename acc_t, typename scalar_t>
FASTNETS_ALWAYS_INLINE void copy_channels_last(const scalar_t* x, int64_t channels, int64_t height, int64_t width,
                                               acc_t* out, int64_t out_row) {
  const int64_t plane = height * width;
  for (int64_t h = 0; h < height; ++h) {
    if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
      transpose_copy(x + h * width, plane, channels, width, out + h * out_row, channels);
    } else {
      for_transpose_blocks(channels, width, [&](int64_t c, int64_t w) {
        out[h * out_row + w * channels + c] = static_cast<acc_t>(x[c * plane + h * width + w]);
      });
    }
  }
}

// Copies input planes [channels][height][width] into the zero-padded channels-last buffer of pf:
// value (c, h, w) at ((h + pad_top) * padded_w + w + pad_left) * channels + c; the rest stays zero.
template <typename acc_t, typename scalar_t>
FASTNETS_ALWAYS_INLINE void fill_padded_channels_last(const scalar_t* x, const PaddedConv& pf, acc_t* padded) {
  const int64_t first = (pf.pad_top * pf.padded_w + pf.pad_left) * pf.channels;
  copy_channels_last(x, pf.channels, pf.height, pf.width, padded + first, pf.padded_w * pf.channels);
}

// sum[d][k] += the weight gradient of tap d (depth order by kernel columns) and channel k < channels
// for one image: padded its input (fill_padded_channels_last), dy_panels its gradient in panels of
// kPanelCols channels, [k / width][p][k % width].
template <typename Tile, typename acc_t>
FASTNETS_ALWAYS_INLINE void weight_grad_by_taps(const PaddedConv& pf, const TapOutputs& outputs, const acc_t* padded,
                                                const acc_t* dy_panels, int64_t channels, bool skip_padding,
                                                acc_t* sum, int64_t ldk) {
  constexpr int64_t width = kPanelCols<acc_t>;
  const int64_t patch = pf.depth(), positions = pf.out_h * pf.out_w;
  for (int64_t q0 = 0; q0 < patch; q0 += kPanelRows) {
    const int64_t rows = std::min<int64_t>(kPanelRows, patch - q0);
    // The tile's taps: one (r, s) and consecutive channels, or (rows past the patch repeating the
    // last tap, dropped) any taps.
    const int64_t s = q0 / (pf.kernel_h * pf.channels), r = q0 / pf.channels % pf.kernel_h;
    const bool one_tap = rows == kPanelRows && q0 % pf.channels + kPanelRows <= pf.channels;
    int64_t tap_input[kPanelRows];
    for (int i = 0; i < kPanelRows; ++i) {
      const int64_t q = pf.tap(std::min<int64_t>(q0 + i, patch - 1), DepthOrder::kKernelColumns);
      const int64_t c = q / (pf.kernel_h * pf.kernel_w);
      tap_input[i] = pf.tap_offset(q - c * pf.kernel_h * pf.kernel_w) * pf.channels + c;
    }
    const int64_t list = one_tap && skip_padding ? s : pf.kernel_w;
    const auto [first_row, last_row] =
        one_tap && skip_padding ? pf.output_rows_reading_source(r) : std::pair<int64_t, int64_t>(0, pf.out_h);
    const int64_t first = outputs.start[list] + first_row * outputs.per_row[list];
    const int64_t last = outputs.start[list] + last_row * outputs.per_row[list];
    for (int64_t d0 = first; d0 < last; d0 += kDepthBlock) {
      const int64_t* input = outputs.input.data() + d0;
      const int64_t* gradient = outputs.gradient.data() + d0;
      const acc_t* taps = padded + tap_input[0];
      for (int64_t col = 0; col < channels; col += Tile::kCols) {
        const acc_t* panel = dy_panels + col / width * positions * width;
        const auto b_row = [&](int64_t p) FASTNETS_INLINE_LAMBDA { return panel + gradient[p]; };
        const int64_t depth = std::min(kDepthBlock, last - d0), cols = std::min<int64_t>(Tile::kCols, channels - col);
        if (one_tap) {
          const auto a_value = [&](int i, int64_t p) FASTNETS_INLINE_LAMBDA { return taps[input[p] + i]; };
          gemm_tile<Tile>(depth, a_value, b_row, col % width, sum + q0 * ldk + col, ldk, rows, cols, true);
        } else {
          const auto a_value = [&](int i, int64_t p) FASTNETS_INLINE_LAMBDA { return padded[input[p] + tap_input[i]]; };
          gemm_tile<Tile>(depth, a_value, b_row, col % width, sum + q0 * ldk + col, ldk, rows, cols, true);
        }
      }
    }
  }
}

// weight_grad_by_taps for the best instruction set, compiled once per accumulation type.
template <typename acc_t>
__attribute__((noinline)) void weight_grad_by_taps_best_isa(const PaddedConv& pf, const TapOutputs& outputs,
                                                            const acc_t* padded, const acc_t* dy_panels,
                                                            int64_t channels, bool skip_padding, acc_t* sum,
                                                            int64_t ldk) {
  call_with_best_isa_tag([&](auto isa) FASTNETS_INLINE_LAMBDA {
    weight_grad_by_taps<GemmTileFor<acc_t, decltype(isa)::value>>(pf, outputs, padded, dy_panels, channels,
                                                                  skip_padding, sum, ldk);
  });
}

// grad_weight by input channels (any stride): grad_weight[k][d] = sum over outputs p of dy[k][p] x
// input(d, p), in tiles of Tile::kRows output channels x Tile::kCols input channels of one tap
// (r, s), d in the depth order by kernel columns. A tile broadcasts dy's values (its rows ldc
// apart, as conv2d_backward_images holds them: no transposed copy) and loads the tap's channels of
// one output as vectors from the padded channels-last input, which then stays in L1 across the
// tiles of every output channel; by taps, each tile streams a panel of dy^T instead. It takes the
// outputs of weight_grad_by_taps' one-tap tiles (TapOutputs), in the same order and depth blocks:
// where a group's channels are a multiple of kPanelRows, the same bits. Rows past the last output
// channel read dy's zero rows (kPanelRows more), columns past the group's channels the next
// position's values (the padded buffer holds kPanelCols values more), computed and dropped.
template <typename Tile, typename acc_t>
FASTNETS_ALWAYS_INLINE void weight_grad_by_channels(const PaddedConv& pf, const TapOutputs& outputs,
                                                    const acc_t* padded, const acc_t* dy, int64_t ldc,
                                                    int64_t out_channels, bool skip_padding, acc_t* sum, int64_t ld) {
  for (int64_t s = 0; s < pf.kernel_w; ++s) {
    for (int64_t r = 0; r < pf.kernel_h; ++r) {
      const int64_t tap_depth = (s * pf.kernel_h + r) * pf.channels;  // of its channel 0
      const acc_t* tap = padded + pf.tap_offset(r * pf.kernel_w + s) * pf.channels;
      const int64_t list = skip_padding ? s : pf.kernel_w;
      const auto [first_row, last_row] =
          skip_padding ? pf.output_rows_reading_source(r) : std::pair<int64_t, int64_t>(0, pf.out_h);
      const int64_t first = outputs.start[list] + first_row * outputs.per_row[list];
      const int64_t last = outputs.start[list] + last_row * outputs.per_row[list];
      for (int64_t c0 = 0; c0 < pf.channels; c0 += Tile::kCols) {
        const int64_t cols = std::min<int64_t>(Tile::kCols, pf.channels - c0);
        for (int64_t d0 = first; d0 < last; d0 += kDepthBlock) {
          const int64_t* input = outputs.input.data() + d0;
          const int64_t* gradient = outputs.gradient.data() + d0;
          const int64_t depth = std::min(kDepthBlock, last - d0);
          const auto b_row = [&](int64_t p) FASTNETS_INLINE_LAMBDA { return tap + input[p]; };
          for (int64_t k0 = 0; k0 < out_channels; k0 += Tile::kRows) {
            const acc_t* dy_rows = dy + k0 * ldc;
            const auto a_value = [&](int i, int64_t p) FASTNETS_INLINE_LAMBDA {
              return dy_rows[i * ldc + gradient[p]];
            };
            gemm_tile<Tile>(depth, a_value, b_row, c0, sum + k0 * ld + tap_depth + c0, ld,
                            std::min<int64_t>(Tile::kRows, out_channels - k0), cols, true);
          }
        }
      }
    }
  }
}

// weight_grad_by_channels for the best instruction set, compiled once per accumulation type.
template <typename acc_t>
__attribute__((noinline)) void weight_grad_by_channels_best_isa(const PaddedConv& pf, const TapOutputs& outputs,
                                                                const acc_t* padded, const acc_t* dy, int64_t ldc,
                                                                int64_t out_channels, bool skip_padding, acc_t* sum,
                                                                int64_t ld) {
  call_with_best_isa_tag([&](auto isa) FASTNETS_INLINE_LAMBDA {
    weight_grad_by_channels<GemmTileFor<acc_t, decltype(isa)::value>>(pf, outputs, padded, dy, ldc, out_channels,
                                                                      skip_padding, sum, ld);
  });
}

// Whether grad_weight goes by input channels: where its tiles, padding included, compute no more
// products than by taps (rows of taps, columns of output channels), an estimate that counts columns
// in whole kPanelCols (wider than AVX2's and SSE's tiles). A few input channels (a first layer's 1
// or 3) with a kernel larger than 1x1 go by taps, whose tiles span taps.
// By channels against by taps, one thread, batch 64 for MNIST's conv2 and 32 for the others: MNIST's
// conv2 11.5 -> 10.3-10.6 ms (float64 11.0 -> 10.6), 32 -> 128 channels 5x5 at 7x7 5.7 -> 4.8,
// 64 -> 40 channels 3x3 at 20x20 4.6 -> 2.8, 64 -> 64 channels 3x3 at 28x28 18.8 -> 18.1; 128 ->
// 128 channels 3x3 at 14x14 17.4-17.7 -> 16.6-17.5 and stride 2 (64 -> 128, 3x3, 28x28) 10.4-10.8
// -> 9.8-11.3, within this machine's noise.
template <typename acc_t>
bool weight_grad_goes_by_channels(const PaddedConv& pf, int64_t out_channels) {
  const int64_t by_taps = panels_size(pf.depth(), padded_cols<acc_t>(out_channels));
  const int64_t by_channels = pf.kernel_h * pf.kernel_w * panels_size(out_channels, padded_cols<acc_t>(pf.channels));
  return by_channels <= by_taps;
}

// positions_gemm stores each output through a tile buffer, transposed: about the work of this
// many products per output. (With the earlier tiles of 8 positions, MNIST's conv1, depth 25, ran
// 1.5x slower by positions than by channels, though it computed 10% fewer values that way.)
constexpr int64_t kPositionsTileCost = 32;

// Whether positions_gemm costs less than the GEMM by channels (padded_gemm over pc.columns() for
// stride 1, gemm over im2col's out_h * out_w otherwise: channel_columns) for `channels` output
// rows (A's panels of kPanelRows channels) over `positions` outputs read from the padded layout
// pc: the products each computes (by positions, those with the source only), plus
// positions_gemm's cost per tile (kPositionsTileCost, in products per position). Narrow outputs
// go by positions too: one thread, 64 -> 64 channels, 5x5 kernels, padding 2, batch 64, the
// forward at 7x7 took 7.8 ms by channels and 4.4 by positions (torch: 4.1), at 4x4 3.8 and 1.3
// (torch: 1.2).
template <typename acc_t>
bool by_positions(const PaddedConv& pc, int64_t channels, int64_t positions, int64_t channel_columns) {
  int64_t row_taps = 0, column_taps = 0;  // summed over the output rows, and over the kernel columns
  for (int64_t oh = 0; oh < pc.out_h; ++oh) {
    const auto [first, last] = pc.kernel_rows_reading_source(oh);
    row_taps += last - first;
  }
  for (int64_t s = 0; s < pc.kernel_w; ++s) {
    const auto [first, last] = pc.outputs_reading_source_column(s, 0, pc.out_w);
    column_taps += last - first;
  }
  const int64_t products = row_taps * column_taps * pc.channels;
  return padded_cols<acc_t>(channels) * (products + kPositionsTileCost * positions) <
         (channels + kPanelRows - 1) / kPanelRows * kPanelRows * padded_cols<acc_t>(channel_columns) * pc.depth();
}

// Whether the forward goes by positions (positions_gemm): column stride 1 or 2, any row stride.
// Stride 2 by channels built im2col: one thread, 64 -> 128 channels, 3x3, padding 1, 28x28
// inputs, batch 32, the forward took 12.6 ms that way (torch: 9.0).
template <typename acc_t>
bool forward_by_positions(const Conv2dGeometry& g) {
  if (!has_positions_stride(g.stride_w)) return false;
  const PaddedConv pc = padded_forward(g);
  const bool stride_one = g.stride_h == 1 && g.stride_w == 1;
  return by_positions<acc_t>(pc, g.group_out_channels(), g.out_plane(), stride_one ? pc.columns() : g.out_plane());
}

// positions_gemm's B for one group: value(q, k) for rows q < depth and channels k < channels, in
// panels of kPanelCols channels, [panel][q][k % kPanelCols], zeros past the last channel: a
// tile's weights are one contiguous stream.
template <typename acc_t, typename Value>
void pack_channel_panels(int64_t depth, int64_t channels, const Value& value, acc_t* out) {
  constexpr int64_t width = kPanelCols<acc_t>;
  for (int64_t k0 = 0; k0 < channels; k0 += width) {
    for (int64_t q = 0; q < depth; ++q) {
      acc_t* row = out + k0 * depth + q * width;  // panel k0 / width starts at k0 * depth
      for (int64_t j = 0; j < width; ++j) row[j] = k0 + j < channels ? value(q, k0 + j) : acc_t(0);
    }
  }
}

// Weights as positions_gemm's B, one block per group: rows patch entries in its depth order,
// columns the group's output channels.
template <typename acc_t, typename scalar_t>
std::vector<acc_t> weight_panels(const scalar_t* w, const Conv2dGeometry& g) {
  const int64_t out_channels = g.group_out_channels(), patch = g.patch_size();
  const int64_t per_group = patch * padded_cols<acc_t>(out_channels);
  const PaddedConv pc = padded_forward(g);
  std::vector<int64_t> tap_of(patch);  // found once: tap's divisions made packing 3% of the forward
  for (int64_t d = 0; d < patch; ++d) tap_of[d] = pc.tap(d, DepthOrder::kKernelColumns);
  std::vector<acc_t> panels(g.groups * per_group);
  for (int64_t group = 0; group < g.groups; ++group) {
    const scalar_t* wg = w + group * out_channels * patch;
    const auto value = [&](int64_t d, int64_t k) { return static_cast<acc_t>(wg[k * patch + tap_of[d]]); };
    pack_channel_panels(patch, out_channels, value, panels.data() + group * per_group);
  }
  return panels;
}

// Weights as gemm's A, one block of panels per group: forward rows are the group's output
// channels over patch entries; transposed (for grad_input) rows are patch entries over channels.
template <typename acc_t, typename scalar_t>
std::vector<acc_t> pack_weight(const scalar_t* w, const Conv2dGeometry& g, bool transposed) {
  const int64_t out_channels = g.group_out_channels(), patch = g.patch_size();
  const int64_t rows = transposed ? patch : out_channels, depth = transposed ? out_channels : patch;
  const int64_t per_group = panels_size(rows, depth);
  std::vector<acc_t> packed(per_group * g.groups);
  for (int64_t group = 0; group < g.groups; ++group) {
    const scalar_t* wg = w + group * out_channels * patch;
    if (transposed) {
      pack_panels(rows, depth, [&](int64_t q, int64_t k) { return static_cast<acc_t>(wg[k * patch + q]); },
                  packed.data() + group * per_group);
    } else {
      pack_panels(rows, depth, [&](int64_t k, int64_t q) { return static_cast<acc_t>(wg[k * patch + q]); },
                  packed.data() + group * per_group);
    }
  }
  return packed;
}

// The weights of the padded grad_input, a convolution of the gradient with flipped kernels: input
// channel c over depth q = (k, r', s'), weight[k][c][kernel_h - 1 - r'][kernel_w - 1 - s'];
// by_positions: positions_gemm's B (rows q in its depth order, columns c), else gemm's A panels
// (rows c). One block per group.
template <typename acc_t, typename scalar_t>
std::vector<acc_t> pack_flipped_weight(const scalar_t* w, const Conv2dGeometry& g, bool by_positions) {
  const int64_t out_channels = g.group_out_channels(), in_channels = g.group_in_channels();
  const int64_t taps = g.kernel_h * g.kernel_w, depth = out_channels * taps;
  const int64_t per_group = by_positions ? depth * padded_cols<acc_t>(in_channels) : panels_size(in_channels, depth);
  // Depth index d of channel c reads the weights at first_read[d] + c * taps (q = (k, r', s') its
  // tap, in positions_gemm's order where by_positions).
  const PaddedConv pc = padded_grad_input(g);
  std::vector<int64_t> first_read(depth);
  for (int64_t d = 0; d < depth; ++d) {
    const int64_t q = by_positions ? pc.tap(d, DepthOrder::kKernelColumns) : d;
    first_read[d] = q / taps * in_channels * taps + taps - 1 - q % taps;
  }
  std::vector<acc_t> packed(per_group * g.groups);
  for (int64_t group = 0; group < g.groups; ++group) {
    const scalar_t* wg = w + group * out_channels * in_channels * taps;
    const auto flipped = [&](int64_t c, int64_t d) { return static_cast<acc_t>(wg[first_read[d] + c * taps]); };
    if (by_positions) {
      pack_channel_panels(depth, in_channels, [&](int64_t d, int64_t c) { return flipped(c, d); },
                          packed.data() + group * per_group);
    } else {
      pack_panels(in_channels, depth, flipped, packed.data() + group * per_group);
    }
  }
  return packed;
}

// The forward's weights, packed for conv2d_forward_images: as B of positions_gemm where that
// costs less (by_positions), else as A panels; and whether they are all finite (all_finite), found
// once per call rather than by each thread's conv2d_forward_images.
template <typename acc_t>
struct ForwardWeights {
  std::vector<acc_t> panels;
  bool finite;
};

template <typename acc_t, typename scalar_t>
ForwardWeights<acc_t> forward_weights(const scalar_t* w, const Conv2dGeometry& g) {
  const bool positions = forward_by_positions<acc_t>(g);
  std::vector<acc_t> panels = positions ? weight_panels<acc_t>(w, g) : pack_weight<acc_t>(w, g, false);
  const bool finite = all_finite(panels.data(), static_cast<int64_t>(panels.size()));
  return {std::move(panels), finite};
}

// The forward GEMM of images [first, last): epilogue(n, group, out, ldc, row) receives the
// group's convolution output without bias, output (oh, ow) of channel k at out[k * ldc + oh *
// row + ow]. Stride 1 and the GEMM by positions read a padded copy of the input (row = its padded
// width; out_w by positions), other strides build the patch matrix (row = out_w). weights:
// forward_weights.
template <typename scalar_t, typename Epilogue>
void conv2d_forward_images(const scalar_t* x, const ForwardWeights<at::opmath_type<scalar_t>>& weights,
                           const Conv2dGeometry& g, int64_t first, int64_t last, const Epilogue& epilogue) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t patch = g.patch_size(), out_channels = g.group_out_channels();
  const PaddedConv pc = padded_forward(g);
  const bool positions = forward_by_positions<acc_t>(g);
  const bool padded_input = positions || (g.stride_h == 1 && g.stride_w == 1);
  const int64_t per_group = positions ? patch * padded_cols<acc_t>(out_channels) : panels_size(out_channels, patch);
  const DepthOrder order = positions ? DepthOrder::kKernelColumns : DepthOrder::kTaps;
  const std::vector<int64_t> offsets = padded_input ? tap_offsets(pc, order) : std::vector<int64_t>();
  const bool skip_padding = positions && weights.finite;
  const int64_t columns = padded_input && !positions ? pc.columns() : g.out_plane();
  const int64_t ldc = padded_cols<acc_t>(columns), row = padded_input && !positions ? pc.padded_w : g.out_w;
  std::vector<acc_t> source(padded_input ? pc.buffer_size<acc_t>() : patch * ldc, acc_t(0)), out(out_channels * ldc);
  for (int64_t n = first; n < last; ++n) {
    for (int64_t group = 0; group < g.groups; ++group) {
      const scalar_t* xg = x + (n * g.in_channels + group * g.group_in_channels()) * g.in_plane();
      const acc_t* a = weights.panels.data() + group * per_group;
      call_with_best_isa_tag([&](auto isa) FASTNETS_INLINE_LAMBDA {
        using Tile = GemmTileFor<acc_t, decltype(isa)::value>;
        if (padded_input) {
          fill_padded(xg, g.in_plane(), g.in_h, g.in_w, g.in_w, pc, source.data());
          if (positions) {
            positions_gemm_best_isa(pc, out_channels, a, source.data(), offsets, out.data(), ldc, skip_padding);
          } else {
            padded_gemm<Tile>(pc, out_channels, a, source.data(), offsets, out.data(), ldc);
          }
        } else {
          im2col<acc_t>(xg, g, [&](int64_t q) { return source.data() + q * ldc; });
          gemm<Tile>(out_channels, columns, patch, a, source.data(), ldc, out.data(), ldc, false);
        }
      });
      epilogue(n, group, out.data(), ldc, row);
    }
  }
}

at::Tensor conv2d_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const Conv2dGeometry g = conv2d_geometry(input, weight, bias, stride, padding, dilation, groups);
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastnets::conv2d", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const ForwardWeights<acc_t> weights = forward_weights<acc_t>(w.const_data_ptr<scalar_t>(), g);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* bp = has_bias ? b.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const int64_t positions = g.out_plane(), out_channels = g.group_out_channels();
    // out[k * ldc + oh * row + ow] + bias -> y, compiled for the best instruction set (MNIST's conv2
    // forward: 2.6% of its time for SSE, 2.0% for AVX-512); rows of `row` = out_w values are one run.
    auto store = [&](int64_t n, int64_t group, acc_t* out, int64_t ldc, int64_t row) {
      call_with_best_isa_tag([&](auto) FASTNETS_INLINE_LAMBDA {
        const int64_t rows = row == g.out_w ? 1 : g.out_h, run = row == g.out_w ? positions : g.out_w;
        for (int64_t k = 0; k < out_channels; ++k) {
          const int64_t channel = group * out_channels + k;
          const acc_t shift = bp ? static_cast<acc_t>(bp[channel]) : acc_t(0);
          scalar_t* target = yp + (n * g.out_channels + channel) * positions;
          for (int64_t oh = 0; oh < rows; ++oh) {
            for (int64_t ow = 0; ow < run; ++ow) {
              target[oh * g.out_w + ow] = static_cast<scalar_t>(out[k * ldc + oh * row + ow] + shift);
            }
          }
        }
      });
    };
    at::parallel_for(0, g.batch, 1, [&](int64_t first, int64_t last) {
      conv2d_forward_images(xp, weights, g, first, last, store);
    });
  });
  return y;
}

#if defined(__x86_64__) && defined(__GNUC__)
constexpr bool kHaveVectorPooling = true;

// relu_max_pool_window over one channel for float, 16 pooled outputs of a row at a time, their
// window taps gathered from conv[oh * row_stride + ow] (without the bias, shift). The rule of
// conv.h (relu keeping NaN; greater or NaN takes; argmax | kReluInactive unless the maximum is
// positive or NaN) as AVX-512 compare masks: GCC lowers the selects of generic vectors lane by lane
// outside a function compiled for AVX-512, hence intrinsics.
FASTNETS_TARGET_AVX512 void relu_max_pool_avx512(const float* conv, int64_t row_stride, float shift,
                                                 const ConvPoolGeometry& pool, float* out, uint8_t* argmax) {
  const __m512 zero = _mm512_setzero_ps(), bias = _mm512_set1_ps(shift);
  const __m512i lane_offsets = _mm512_mullo_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
      _mm512_set1_epi32(static_cast<int>(pool.stride_w)));
  for (int64_t ph = 0; ph < pool.out_h; ++ph) {
    for (int64_t pw0 = 0; pw0 < pool.out_w; pw0 += 16) {
      const int64_t count = std::min<int64_t>(16, pool.out_w - pw0);
      const __mmask16 lanes = static_cast<__mmask16>((1u << count) - 1);
      __m512 best = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
      __m512i position = _mm512_setzero_si512();
      for (int64_t i = 0; i < pool.kernel_h; ++i) {
        for (int64_t j = 0; j < pool.kernel_w; ++j) {
          const float* first = conv + (ph * pool.stride_h + i) * row_stride + pw0 * pool.stride_w + j;
          __m512 value = _mm512_add_ps(_mm512_mask_i32gather_ps(zero, lanes, lane_offsets, first, 4), bias);
          const __mmask16 nan = _mm512_cmp_ps_mask(value, value, _CMP_UNORD_Q);
          value = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(value, zero, _CMP_GT_OQ) | nan, value);
          const __mmask16 takes = _mm512_cmp_ps_mask(value, best, _CMP_GT_OQ) | nan;
          best = _mm512_mask_mov_ps(best, takes, value);
          position = _mm512_mask_mov_epi32(position, takes,
                                           _mm512_set1_epi32(static_cast<int>(i * pool.kernel_w + j)));
        }
      }
      const __mmask16 inactive = static_cast<__mmask16>(
          ~(_mm512_cmp_ps_mask(best, zero, _CMP_GT_OQ) | _mm512_cmp_ps_mask(best, best, _CMP_UNORD_Q)));
      position = _mm512_mask_or_epi32(position, inactive, position, _mm512_set1_epi32(kReluInactive));
      _mm512_mask_storeu_ps(out + ph * pool.out_w + pw0, lanes, best);
      _mm512_mask_cvtepi32_storeu_epi8(argmax + ph * pool.out_w + pw0, lanes, position);
    }
  }
}
#else
constexpr bool kHaveVectorPooling = false;
void relu_max_pool_avx512(const float*, int64_t, float, const ConvPoolGeometry&, float*, uint8_t*) {}
#endif

std::tuple<at::Tensor, at::Tensor> conv_relu_pool2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                                                        const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                                        at::IntArrayRef padding, at::IntArrayRef dilation,
                                                        int64_t groups, at::IntArrayRef pool_kernel,
                                                        at::IntArrayRef pool_stride) {
  const Conv2dGeometry g = conv2d_geometry(input, weight, bias, stride, padding, dilation, groups);
  const ConvPoolGeometry pool = conv_pool_geometry(g, pool_kernel, pool_stride);
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty({g.batch, g.out_channels, pool.out_h, pool.out_w}, x.options());
  at::Tensor argmax = at::empty(y.sizes(), x.options().dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastnets::conv_relu_pool2d", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const ForwardWeights<acc_t> weights = forward_weights<acc_t>(w.const_data_ptr<scalar_t>(), g);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* bp = has_bias ? b.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    uint8_t* ap = argmax.mutable_data_ptr<uint8_t>();
    const int64_t pooled = pool.out_h * pool.out_w, out_channels = g.group_out_channels();
    // float with AVX-512: vector pooling; otherwise relu_max_pool_window window by window.
    const bool vector_pooling = kHaveVectorPooling && std::is_same_v<acc_t, float> && cpu_isa() == CpuIsa::kAvx512;
    at::parallel_for(0, g.batch, 1, [&](int64_t first, int64_t last) {
      std::vector<float> pooled_values(vector_pooling ? pooled : 0);
      conv2d_forward_images(xp, weights, g, first, last, [&](int64_t n, int64_t group, acc_t* out, int64_t ldc,
                                                            int64_t row) {
        for (int64_t k = 0; k < out_channels; ++k) {
          const int64_t channel = group * out_channels + k;
          const acc_t shift = bp ? static_cast<acc_t>(bp[channel]) : acc_t(0);
          acc_t* conv = out + k * ldc;
          scalar_t* target = yp + (n * g.out_channels + channel) * pooled;
          uint8_t* winners = ap + (n * g.out_channels + channel) * pooled;
          if (vector_pooling) {  // acc_t is float here
            float* values = std::is_same_v<scalar_t, float> ? reinterpret_cast<float*>(target) : pooled_values.data();
            relu_max_pool_avx512(reinterpret_cast<const float*>(conv), row, static_cast<float>(shift), pool, values,
                                 winners);
            if (!std::is_same_v<scalar_t, float>) {
              for (int64_t o = 0; o < pooled; ++o) target[o] = static_cast<scalar_t>(values[o]);
            }
            continue;
          }
          for (int64_t oh = 0; oh < g.out_h; ++oh) {
            for (int64_t ow = 0; ow < g.out_w; ++ow) conv[oh * row + ow] += shift;
          }
          for (int64_t o = 0; o < pooled; ++o) {
            target[o] = static_cast<scalar_t>(
                relu_max_pool_window(conv, row, pool, o / pool.out_w, o % pool.out_w, winners[o]));
          }
        }
      });
    });
  });
  return {y, argmax};
}

// values[0] + ... + values[count - 1] in double, in kLanes interleaved partial sums (independent
// chains of additions, which vectorize), then those in order: a fixed order for any thread count.
template <typename acc_t>
double plane_sum(const acc_t* values, int64_t count) {
  constexpr int kLanes = 8;
  double lanes[kLanes] = {};
  int64_t p = 0;
  for (; p + kLanes <= count; p += kLanes) {
    for (int i = 0; i < kLanes; ++i) lanes[i] += static_cast<double>(values[p + i]);
  }
  double sum = 0.0;
  for (; p < count; ++p) sum += static_cast<double>(values[p]);
  for (double lane : lanes) sum += lane;
  return sum;
}

// The per-chunk weight sums, left unset: each chunk's are zeroed by the thread that sums into them,
// just before (in its cache, the pages faulted in by the threads together). Zeroed at allocation,
// by one thread, the 1.6 MB of MNIST's conv2 at N=64 took about 1% of its backward on one thread.
template <typename acc_t>
std::unique_ptr<acc_t[]> unset_weight_sums(int64_t chunks, int64_t weight_chunk) {
  return std::unique_ptr<acc_t[]>(new acc_t[chunks * weight_chunk]);
}

// The weight gradient (w's shape) and the bias gradient from per-chunk sums, each value's chunks
// added in chunk order (either empty when not needed): value q of output channel `channel` of
// chunk i at weight_sums[i * weight_chunk + weight_index(channel, q)], the bias of chunk i at
// bias_sums[i * out_channels + channel].
template <typename scalar_t, typename acc_t, typename WeightIndex>
std::pair<at::Tensor, at::Tensor> grads_from_chunks(const at::Tensor& w, int64_t chunks, bool need_weight,
                                                    bool need_bias, const acc_t* weight_sums, int64_t weight_chunk,
                                                    const WeightIndex& weight_index,
                                                    const std::vector<double>& bias_sums) {
  const int64_t out_channels = w.size(0), patch = w.numel() / std::max<int64_t>(out_channels, 1);
  at::Tensor grad_weight = at::empty({0}, w.options()), grad_bias = at::empty({0}, w.options());
  if (need_weight) {
    grad_weight = at::empty(w.sizes(), w.options());
    scalar_t* gw = grad_weight.mutable_data_ptr<scalar_t>();
    // The chunks summed in their own layout first: read at weight_index's stride, chunk by chunk,
    // they missed the cache (a millisecond of MNIST's conv2 at N=64, 8% of its grad_weight). A chunk
    // at a time, so that the sums are vector adds (value by value, over the chunks, they were scalar).
    std::vector<acc_t> total(weight_chunk);
    at::parallel_for(0, weight_chunk, 4096, [&](int64_t first, int64_t last) {
      std::fill(total.begin() + first, total.begin() + last, acc_t(0));
      for (int64_t chunk = 0; chunk < chunks; ++chunk) {
        const acc_t* sums = weight_sums + chunk * weight_chunk;
        for (int64_t i = first; i < last; ++i) total[i] += sums[i];
      }
    });
    at::parallel_for(0, out_channels, 1, [&](int64_t first, int64_t last) {
      for (int64_t channel = first; channel < last; ++channel) {
        for (int64_t q = 0; q < patch; ++q) {
          gw[channel * patch + q] = static_cast<scalar_t>(total[weight_index(channel, q)]);
        }
      }
    });
  }
  if (need_bias) {
    grad_bias = at::empty({out_channels}, w.options());
    scalar_t* gb = grad_bias.mutable_data_ptr<scalar_t>();
    for (int64_t channel = 0; channel < out_channels; ++channel) {
      double sum = 0.0;
      for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += bias_sums[chunk * out_channels + channel];
      gb[channel] = static_cast<scalar_t>(sum);
    }
  }
  return {grad_weight, grad_bias};
}

// The backward of images [0, batch): conv_grad(n, group, dy) writes the gradient of the group's
// convolution output, dy[k * ldc + oh * out_w + ow] (ldc = padded_cols(out_h * out_w)).
template <typename scalar_t, typename ConvGrad>
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_images(const at::Tensor& x, const at::Tensor& w,
                                                                     const Conv2dGeometry& g,
                                                                     std::array<bool, 3> output_mask,
                                                                     const ConvGrad& conv_grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const bool need_input = output_mask[0], need_weight = output_mask[1], need_bias = output_mask[2];
  const int64_t patch = g.patch_size(), positions = g.out_plane();
  const int64_t in_channels = g.group_in_channels(), out_channels = g.group_out_channels();
  const int64_t ldc = padded_cols<acc_t>(positions), ldk = padded_cols<acc_t>(out_channels);
  const int64_t transposed_per_group = panels_size(patch, out_channels);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  // grad_input: a flipped-kernel convolution of the padded gradient where the stride is 1, else
  // col2im(W^T dy). col2im, like PyTorch's CPU backward, never multiplies a weight by the
  // gradient's zero padding, so an inf or NaN weight reaches only the inputs it reads. By positions
  // those products are left out alike (skip_padding); by channels (padded_gemm) they are formed,
  // so inf or NaN weights go by col2im there.
  const bool stride_one_input_grad = need_input && has_padded_grad_input(g);
  const PaddedConv pc = padded_grad_input(g);
  const bool input_grad_by_positions =
      stride_one_input_grad && by_positions<acc_t>(pc, in_channels, g.in_plane(), pc.columns());
  const bool padded_input_grad =
      input_grad_by_positions || (stride_one_input_grad && at::isfinite(w).all().item<bool>());
  const std::vector<int64_t> offsets =
      padded_input_grad
          ? tap_offsets(pc, input_grad_by_positions ? DepthOrder::kKernelColumns : DepthOrder::kTaps)
          : std::vector<int64_t>();
  // By positions, grad_input's GEMM writes the planes as grad_input lays them out: for float and
  // double, straight into grad_input. Otherwise col holds the gradient of input (c, h, w) at col[c *
  // ldx + h * x_row + w], then copied (converted) into grad_input.
  const bool input_grad_straight = input_grad_by_positions && std::is_same_v<scalar_t, acc_t>;
  const int64_t ldx = padded_cols<acc_t>(input_grad_by_positions ? g.in_plane() : pc.columns());
  const int64_t x_row = input_grad_by_positions ? g.in_w : pc.padded_w;
  const int64_t flipped_per_group = input_grad_by_positions ? pc.depth() * padded_cols<acc_t>(in_channels)
                                                            : panels_size(in_channels, pc.depth());
  // grad_weight = dy x patches^T, by channels or (transposed) by taps from a padded channels-last copy
  // of the input (weight_grad_by_channels, weight_grad_by_taps), any stride. With the patches built by
  // im2col, which forms every product with the padding, the backward of a stride-2 layer (64 -> 128
  // channels, 3x3, 28x28, batch 32, one thread) took 25.7 ms; by taps 23.1 (torch: 22.4-24.0).
  const PaddedConv pf = padded_forward(g);
  const bool weight_by_channels = need_weight && weight_grad_goes_by_channels<acc_t>(pf, out_channels);
  // By taps, dy^T in panels of kPanelCols channels, [k / width][p][k % width] (a tile's gradients
  // are one stream: 4% faster than rows of ldk); by channels dy itself.
  const TapOutputs tap_outputs =
      need_weight ? TapOutputs(pf, weight_by_channels ? 1 : kPanelCols<acc_t>) : TapOutputs();
  const int64_t ld_depth = padded_cols<acc_t>(patch);  // by channels, the weight sums' rows
  const std::vector<acc_t> transposed =
      !need_input ? std::vector<acc_t>()
      : padded_input_grad ? pack_flipped_weight<acc_t>(w.const_data_ptr<scalar_t>(), g, input_grad_by_positions)
                          : pack_weight<acc_t>(w.const_data_ptr<scalar_t>(), g, true);

  at::Tensor grad_input = need_input ? at::empty(x.sizes(), x.options()) : at::empty({0}, x.options());
  scalar_t* gi = need_input ? grad_input.mutable_data_ptr<scalar_t>() : nullptr;
  // Per chunk: the weight gradient, [group][k][d] by channels, transposed [group][d][k] by taps (d
  // the depth order by kernel columns), and the bias gradient [channel].
  const int64_t chunks = std::min(g.batch, kWeightGradChunks);
  const int64_t weight_chunk = !need_weight          ? 0
                               : weight_by_channels ? g.groups * out_channels * ld_depth
                                                    : g.groups * patch * ldk;
  const int64_t bias_chunk = need_bias ? g.out_channels : 0;
  const std::unique_ptr<acc_t[]> weight_sums = unset_weight_sums<acc_t>(chunks, weight_chunk);
  // The bias gradient sums whole planes in double (plane_sum), so that it stays within an ulp or so
  // of the exact sum, as PyTorch's pairwise sum does.
  std::vector<double> bias_sums(chunks * bias_chunk, 0.0);

  at::parallel_for(0, chunks, 1, [&](int64_t first_chunk, int64_t last_chunk) {
    // dy's rows past out_channels: zeros that weight_grad_by_channels' last tile reads
    std::vector<acc_t> dy((out_channels + kPanelRows) * ldc, acc_t(0));
    std::vector<acc_t> dy_t(need_weight && !weight_by_channels ? positions * ldk : 0, acc_t(0));
    const int64_t col_size = padded_input_grad ? in_channels * ldx : patch * ldc;
    std::vector<acc_t> col(!need_input || input_grad_straight ? 0 : col_size);
    std::vector<acc_t> dx(need_input && !padded_input_grad ? in_channels * g.in_plane() : 0);
    std::vector<acc_t> padded(padded_input_grad ? pc.buffer_size<acc_t>() : 0, acc_t(0));
    std::vector<acc_t> padded_x(need_weight ? pf.padded_h * pf.padded_w * pf.channels + kPanelCols<acc_t> : 0,
                                acc_t(0));
    for (int64_t chunk = first_chunk; chunk < last_chunk; ++chunk) {
      acc_t* weight_sum = weight_sums.get() + chunk * weight_chunk;
      std::fill_n(weight_sum, weight_chunk, acc_t(0));
      double* bias_sum = bias_sums.data() + chunk * bias_chunk;
      for (int64_t n = g.batch * chunk / chunks; n < g.batch * (chunk + 1) / chunks; ++n) {
        for (int64_t group = 0; group < g.groups; ++group) {
          conv_grad(n, group, dy.data());
          const int64_t x_offset = (n * g.in_channels + group * in_channels) * g.in_plane();
          call_with_best_isa_tag([&](auto isa) FASTNETS_INLINE_LAMBDA {
            using Tile = GemmTileFor<acc_t, decltype(isa)::value>;
            if (padded_input_grad) {
              fill_padded(dy.data(), ldc, g.out_h, g.out_w, g.out_w, pc, padded.data());
              const acc_t* flipped = transposed.data() + group * flipped_per_group;
              if (input_grad_by_positions) {
                acc_t* target = col.data();
                int64_t ld = ldx;
                if constexpr (std::is_same_v<scalar_t, acc_t>) {
                  target = gi + x_offset;
                  ld = g.in_plane();
                }
                positions_gemm_best_isa(pc, in_channels, flipped, padded.data(), offsets, target, ld, true);
              } else {
                padded_gemm<Tile>(pc, in_channels, flipped, padded.data(), offsets, col.data(), ldx);
              }
              if (!input_grad_straight) {
                for (int64_t c = 0; c < in_channels; ++c) {
                  for (int64_t h = 0; h < g.in_h; ++h) {
                    for (int64_t w = 0; w < g.in_w; ++w) {
                      gi[x_offset + (c * g.in_h + h) * g.in_w + w] =
                          static_cast<scalar_t>(col[c * ldx + h * x_row + w]);
                    }
                  }
                }
              }
            } else if (need_input) {
              gemm<Tile>(patch, positions, out_channels, transposed.data() + group * transposed_per_group, dy.data(),
                         ldc, col.data(), ldc, false);
              std::fill(dx.begin(), dx.end(), acc_t(0));
              col2im(col.data(), ldc, g, dx.data());
              for (size_t i = 0; i < dx.size(); ++i) gi[x_offset + i] = static_cast<scalar_t>(dx[i]);
            }
            if (need_weight) {
              constexpr int64_t width = kPanelCols<acc_t>;
              if (!weight_by_channels) {
                for_transpose_blocks(out_channels, positions, [&](int64_t k, int64_t p) {
                  dy_t[(k / width * positions + p) * width + k % width] = dy[k * ldc + p];
                });
              }
              const bool finite = all_finite(dy.data(), out_channels * ldc);  // zeros past each plane
              fill_padded_channels_last(xp + x_offset, pf, padded_x.data());
              if (weight_by_channels) {
                weight_grad_by_channels_best_isa(pf, tap_outputs, padded_x.data(), dy.data(), ldc, out_channels,
                                                 finite, weight_sum + group * out_channels * ld_depth, ld_depth);
              } else {
                weight_grad_by_taps_best_isa(pf, tap_outputs, padded_x.data(), dy_t.data(), out_channels, finite,
                                             weight_sum + group * patch * ldk, ldk);
              }
            }
          });
          if (need_bias) {
            for (int64_t k = 0; k < out_channels; ++k) {
              bias_sum[group * out_channels + k] += plane_sum(dy.data() + k * ldc, positions);
            }
          }
        }
      }
    }
  });

  std::vector<int64_t> depth_of_tap(need_weight ? patch : 0);  // the rows of weight_sums
  for (size_t d = 0; d < depth_of_tap.size(); ++d) depth_of_tap[pf.tap(d, DepthOrder::kKernelColumns)] = d;
  const auto [grad_weight, grad_bias] = grads_from_chunks<scalar_t>(
      w, chunks, need_weight, need_bias, weight_sums.get(), weight_chunk,
      [&](int64_t channel, int64_t q) {
        return weight_by_channels ? channel * ld_depth + depth_of_tap[q]
                                  : (channel / out_channels * patch + depth_of_tap[q]) * ldk + channel % out_channels;
      },
      bias_sums);
  return {grad_input, grad_weight, grad_bias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cpu(const at::Tensor& grad_output,
                                                                   const at::Tensor& input, const at::Tensor& weight,
                                                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                                                   at::IntArrayRef dilation, int64_t groups,
                                                                   std::array<bool, 3> output_mask) {
  const Conv2dGeometry g = conv2d_geometry(input, weight, std::nullopt, stride, padding, dilation, groups);
  check_conv_grad(grad_output, input, "grad_output", {g.batch, g.out_channels, g.out_h, g.out_w});
  const at::Tensor x = input.contiguous(), w = weight.contiguous(), dy = grad_output.contiguous();
  std::tuple<at::Tensor, at::Tensor, at::Tensor> grads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastnets::conv2d_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const int64_t positions = g.out_plane(), out_channels = g.group_out_channels();
    const int64_t ldc = padded_cols<acc_t>(positions);
    grads = conv2d_backward_images<scalar_t>(x, w, g, output_mask, [&](int64_t n, int64_t group, acc_t* out) {
      const scalar_t* source = dyp + (n * g.out_channels + group * out_channels) * positions;
      for (int64_t k = 0; k < out_channels; ++k) {
        for (int64_t p = 0; p < positions; ++p) out[k * ldc + p] = static_cast<acc_t>(source[k * positions + p]);
      }
    });
  });
  return grads;
}

// The fused layer's weight and bias gradients by active winners: a pooled output's gradient
// reaches one convolution output at most (its active winner), so with windows of several outputs
// most of the convolution's gradients are zero, and the dense product of conv2d_backward_images
// multiplies those zeros (three in four for a 2x2 pool). Here each active winner (n, k, window)
// with gradient d adds d x its input patch to channel k's weight gradient, the input of each
// image and group held zero-padded and channels last, so that the inner loops run over the
// group's input channels with unit stride. Sums per fixed chunk of the batch, then the chunks in
// order, as in conv2d_backward_images: the same bits for any thread count. The input gradient
// stays dense: by winners, its sums scattered over the input stored more than the dense product
// computes (MNIST's conv2, N=64: a backward of 7.0 ms, against 5.2 with the dense input gradient
// and 6.7 all dense); gathered per input value from the winners listed by output position it was
// still about 0.5 ms slower than dense (its weights, scattered over channels, came from L2), and
// gathered tap by tap, with a tap's weights and the image's sums in L1, no faster than dense.
// Where it pays: at least kMinWinnerChannels input channels per group, and at most one pooled
// output per kWinnerSparsity convolution outputs.
constexpr int64_t kMinWinnerChannels = 16;
constexpr int64_t kWinnerSparsity = 3;

bool by_winners(const Conv2dGeometry& g, const ConvPoolGeometry& pool) {
  return g.group_in_channels() >= kMinWinnerChannels && kWinnerSparsity * pool.out_h * pool.out_w <= g.out_plane();
}

// Calls visit(o, oh, ow) for each pooled output o of one plane whose winner (argmax, one byte
// per output) is active, in row-major order, (oh, ow) the convolution output the winner sits at;
// fails on an active winner outside the window. The winner's row and column in its window come
// from a table: four 64-bit divisions per pooled output took 8% of the fused layer's input
// gradient (MNIST's conv2, batch 64: 6.2 ms against 5.7, 2 threads).
class ActiveWinners {
 public:
  explicit ActiveWinners(const ConvPoolGeometry& pool) : pool_(pool) {
    for (int64_t t = 0; t < pool.kernel_h * pool.kernel_w; ++t) {
      window_row_.push_back(t / pool.kernel_w);
      window_col_.push_back(t % pool.kernel_w);
    }
  }
  template <typename Visit>
  FASTNETS_ALWAYS_INLINE void for_each(const uint8_t* winners, const Visit& visit) const {
    const int64_t taps = static_cast<int64_t>(window_row_.size());
    for (int64_t ph = 0, o = 0; ph < pool_.out_h; ++ph) {
      for (int64_t pw = 0; pw < pool_.out_w; ++pw, ++o) {
        const uint8_t winner = winners[o];
        if (winner & kReluInactive) continue;
        TORCH_CHECK(winner < taps, "argmax holds ", static_cast<int>(winner), ", not a position in a ", pool_.kernel_h,
                    "x", pool_.kernel_w, " window");
        visit(o, ph * pool_.stride_h + window_row_[winner], pw * pool_.stride_w + window_col_[winner]);
      }
    }
  }

 private:
  ConvPoolGeometry pool_;
  std::vector<int64_t> window_row_, window_col_;
};

// One image's winners of one output channel: where each one's patch starts in the padded
// channels-last input, and its gradient.
template <typename acc_t>
struct Winners {
  std::vector<int64_t> start;
  std::vector<acc_t> grad;
  int64_t count = 0;
};

// sums[tap][c] += sum over the winners i of grad_i x input[start_i + offsets[tap] + c], for the
// kTaps taps of `offsets` and the kLanes channels from c: each tap's sum in an accumulator of its
// own, kTaps independent chains of fmas (one accumulator would wait out each fma's latency).
template <int kTaps, int kLanes, typename acc_t>
FASTNETS_ALWAYS_INLINE void add_winner_taps(const Winners<acc_t>& winners, const acc_t* input, const int64_t* offsets,
                                            int64_t channels, int64_t c, acc_t* sums) {
  typedef acc_t vec __attribute__((vector_size(kLanes * sizeof(acc_t))));
  const acc_t* tap_inputs[kTaps];
  for (int j = 0; j < kTaps; ++j) tap_inputs[j] = input + offsets[j] + c;
  vec totals[kTaps];
  for (int j = 0; j < kTaps; ++j) totals[j] = vec{};
  for (int64_t i = 0; i < winners.count; ++i) {
    const int64_t start = winners.start[i];
    const vec grad = vec{} + winners.grad[i];
    for (int j = 0; j < kTaps; ++j) {
      vec values;
      std::memcpy(&values, tap_inputs[j] + start, sizeof(vec));
      totals[j] += grad * values;
    }
  }
  for (int j = 0; j < kTaps; ++j) {
    vec old;
    std::memcpy(&old, sums + j * channels + c, sizeof(vec));
    old += totals[j];
    std::memcpy(sums + j * channels + c, &old, sizeof(vec));
  }
}

// sums[tap][c] += sum over the winners i of grad_i x input[start_i + offsets[tap] + c] for every
// tap and channel: the winners summed in registers per group of kTapGroup taps and block of
// kLanes channels, then added to sums once.
constexpr int kTapGroup = 8;

template <int kLanes, typename acc_t>
FASTNETS_ALWAYS_INLINE void add_winner_patches(const Winners<acc_t>& winners, const acc_t* input,
                                               const std::vector<int64_t>& offsets, int64_t channels, acc_t* sums) {
  const int64_t taps = static_cast<int64_t>(offsets.size()), vector_channels = channels / kLanes * kLanes;
  int64_t tap = 0;
  for (; tap + kTapGroup <= taps; tap += kTapGroup) {
    for (int64_t c = 0; c < vector_channels; c += kLanes) {
      add_winner_taps<kTapGroup, kLanes>(winners, input, offsets.data() + tap, channels, c, sums + tap * channels);
    }
  }
  for (; tap < taps; ++tap) {
    for (int64_t c = 0; c < vector_channels; c += kLanes) {
      add_winner_taps<1, kLanes>(winners, input, offsets.data() + tap, channels, c, sums + tap * channels);
    }
  }
  for (tap = 0; tap < taps; ++tap) {
    for (int64_t c = vector_channels; c < channels; ++c) {
      acc_t total = acc_t(0);
      for (int64_t i = 0; i < winners.count; ++i) total += winners.grad[i] * input[winners.start[i] + offsets[tap] + c];
      sums[tap * channels + c] += total;
    }
  }
}

// (grad_weight, grad_bias) of the fused layer by winners; either empty when not needed.
template <typename scalar_t>
std::pair<at::Tensor, at::Tensor> conv_relu_pool2d_weight_grads_by_winners(
    const at::Tensor& grad_output, const at::Tensor& argmax, const at::Tensor& x, const at::Tensor& w,
    const Conv2dGeometry& g, const ConvPoolGeometry& pool, bool need_weight, bool need_bias) {
  if (!need_weight && !need_bias) return {at::empty({0}, w.options()), at::empty({0}, w.options())};
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = g.group_in_channels(), out_channels = g.group_out_channels();
  const int64_t taps = g.kernel_h * g.kernel_w, pooled = pool.out_h * pool.out_w;
  const int64_t padded_w = g.in_w + 2 * g.pad_w, padded_size = (g.in_h + 2 * g.pad_h) * padded_w * channels;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* dyp = grad_output.const_data_ptr<scalar_t>();
  const uint8_t* ap = argmax.const_data_ptr<uint8_t>();
  const int64_t chunks = std::min(g.batch, kWeightGradChunks);
  const int64_t weight_chunk = need_weight ? g.out_channels * taps * channels : 0;
  const int64_t bias_chunk = need_bias ? g.out_channels : 0;
  // [chunk][channel][r][s][c]
  const std::unique_ptr<acc_t[]> weight_sums = unset_weight_sums<acc_t>(chunks, weight_chunk);
  std::vector<double> bias_sums(chunks * bias_chunk, 0.0);
  // tap (r, s) of a patch: its offset in the padded channels-last input
  std::vector<int64_t> tap_offsets(taps);
  for (int64_t t = 0; t < taps; ++t) {
    tap_offsets[t] = (t / g.kernel_w * g.dilation_h * padded_w + t % g.kernel_w * g.dilation_w) * channels;
  }

  const ActiveWinners active_winners(pool);
  at::parallel_for(0, chunks, 1, [&](int64_t first_chunk, int64_t last_chunk) {
    std::vector<acc_t> x_padded(need_weight ? padded_size : 0, acc_t(0));  // the padding stays zero
    Winners<acc_t> winners{std::vector<int64_t>(pooled), std::vector<acc_t>(pooled)};
    for (int64_t chunk = first_chunk; chunk < last_chunk; ++chunk) {
      std::fill_n(weight_sums.get() + chunk * weight_chunk, weight_chunk, acc_t(0));
      for (int64_t n = g.batch * chunk / chunks; n < g.batch * (chunk + 1) / chunks; ++n) {
        for (int64_t group = 0; group < g.groups; ++group) {
          if (need_weight) {
            const scalar_t* image = xp + (n * g.in_channels + group * channels) * g.in_plane();
            acc_t* first = x_padded.data() + (g.pad_h * padded_w + g.pad_w) * channels;
            call_with_best_isa_tag([&](auto) FASTNETS_INLINE_LAMBDA {
              copy_channels_last(image, channels, g.in_h, g.in_w, first, padded_w * channels);
            });
          }
          for (int64_t k = 0; k < out_channels; ++k) {
            const int64_t channel = group * out_channels + k, plane = (n * g.out_channels + channel) * pooled;
            winners.count = 0;
            double bias = 0.0;
            active_winners.for_each(ap + plane, [&](int64_t o, int64_t oh, int64_t ow) {
              winners.start[winners.count] = (oh * g.stride_h * padded_w + ow * g.stride_w) * channels;
              winners.grad[winners.count] = static_cast<acc_t>(dyp[plane + o]);
              bias += static_cast<double>(winners.grad[winners.count]);
              ++winners.count;
            });
            if (need_bias) bias_sums[chunk * bias_chunk + channel] += bias;
            if (need_weight) {
              acc_t* sums = weight_sums.get() + chunk * weight_chunk + channel * taps * channels;
              // Blocks of channels one SIMD register wide: wider blocks spilled the accumulators
              // on AVX2 (MNIST's conv2: forward+backward 24.5 -> 35.5 ms with AVX2 at 64 bytes).
              call_with_best_isa_tag([&](auto isa) FASTNETS_INLINE_LAMBDA {
                constexpr int kLanes = GemmTileFor<acc_t, decltype(isa)::value>::kLanes;
                add_winner_patches<kLanes>(winners, x_padded.data(), tap_offsets, channels, sums);
              });
            }
          }
        }
      }
    }
  });

  return grads_from_chunks<scalar_t>(
      w, chunks, need_weight, need_bias, weight_sums.get(), weight_chunk,
      [&](int64_t channel, int64_t q) { return (channel * taps + q % taps) * channels + q / taps; }, bias_sums);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_relu_pool2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& argmax, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride, std::array<bool, 3> output_mask) {
  ConvPoolGeometry pool;
  const Conv2dGeometry g = conv_relu_pool2d_backward_geometry(grad_output, argmax, input, weight, stride, padding,
                                                              dilation, groups, pool_kernel, pool_stride, pool);
  const at::Tensor x = input.contiguous(), w = weight.contiguous(), dy = grad_output.contiguous();
  const at::Tensor a = argmax.contiguous();
  std::tuple<at::Tensor, at::Tensor, at::Tensor> grads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastnets::conv_relu_pool2d_backward",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const uint8_t* ap = a.const_data_ptr<uint8_t>();
    const int64_t pooled = pool.out_h * pool.out_w, out_channels = g.group_out_channels();
    const int64_t ldc = padded_cols<acc_t>(g.out_plane());
    const ActiveWinners active_winners(pool);
    // The weight and bias gradients by winners where that pays; the input gradient always densely.
    // An input that is not finite goes densely too: the products of its gradient's zeros with inf
    // or NaN are NaN, as PyTorch's are, where the sums by winners would leave those products out.
    const bool sums_by_winners =
        by_winners(g, pool) && (!output_mask[1] || at::isfinite(x).all().item<bool>());
    const std::array<bool, 3> dense_mask =
        sums_by_winners ? std::array<bool, 3>{output_mask[0], false, false} : output_mask;
    if (sums_by_winners) {
      const auto [grad_weight, grad_bias] =
          conv_relu_pool2d_weight_grads_by_winners<scalar_t>(dy, a, x, w, g, pool, output_mask[1], output_mask[2]);
      grads = {at::empty({0}, x.options()), grad_weight, grad_bias};
      if (!output_mask[0]) return;
    }
    const auto dense = conv2d_backward_images<scalar_t>(x, w, g, dense_mask, [&](int64_t n, int64_t group, acc_t* out) {
      for (int64_t k = 0; k < out_channels; ++k) {
        const int64_t plane = (n * g.out_channels + group * out_channels + k) * pooled;
        const uint8_t* winners = ap + plane;
        const scalar_t* grad = dyp + plane;
        acc_t* target = out + k * ldc;
        // Each pooled output adds its gradient to its active winner, in row-major order: the
        // order (so the bits) of relu_max_pool_conv_grad's gather, without its search.
        std::fill(target, target + g.out_plane(), acc_t(0));
        active_winners.for_each(winners, [&](int64_t o, int64_t oh, int64_t ow) {
          target[oh * g.out_w + ow] += static_cast<acc_t>(grad[o]);
        });
      }
    });
    grads = sums_by_winners ? std::make_tuple(std::get<0>(dense), std::get<1>(grads), std::get<2>(grads)) : dense;
  });
  return grads;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastnets, m) {
  // torch.nn.functional.conv2d with explicit (symmetric) padding.
  m.def("conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride=1, int[2] padding=0, int[2] dilation=1, "
        "int groups=1) -> Tensor");
  // (grad_input, grad_weight, grad_bias); those not asked for in output_mask are empty.
  m.def("conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, int[2] padding, "
        "int[2] dilation, int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // max_pool2d(relu(conv2d(...)), pool_kernel, pool_stride) in one pass. Returns (output, argmax):
  // the winner's position in its window, | 0x80 when its pre-activation was neither positive nor NaN.
  m.def("conv_relu_pool2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
        "int[2] dilation, int groups, int[2] pool_kernel, int[2] pool_stride) -> (Tensor, Tensor)");
  m.def("conv_relu_pool2d_backward(Tensor grad_output, Tensor argmax, Tensor input, Tensor weight, int[2] stride, "
        "int[2] padding, int[2] dilation, int groups, int[2] pool_kernel, int[2] pool_stride, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastnets, CPU, m) {
  m.impl("conv2d", &conv2d_cpu);
  m.impl("conv2d_backward", &conv2d_backward_cpu);
  m.impl("conv_relu_pool2d", &conv_relu_pool2d_cpu);
  m.impl("conv_relu_pool2d_backward", &conv_relu_pool2d_backward_cpu);
}

}  // namespace fastnets
