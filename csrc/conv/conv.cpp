// Convolution and the fused Conv2d + bias + ReLU + MaxPool2d: operator schemas and CPU kernels.
// CUDA kernels: conv_cuda.cu; the index math and pooling epilogue: conv.h; the GEMM: cpu_gemm.h.
//
// Per image and group the convolution is a GEMM over the image's patch matrix (im2col), built
// in a per-thread buffer (in L2 for layers like the MNIST CNN's; no tiling over positions yet);
// only the output (for the fused layer: the pooled output and a 1-byte argmax) reaches memory.
// The GEMM's columns are output positions in a ColumnLayout: row-major, or for the fused layer
// with windows that do not overlap, window tap by window tap, which turns pooling into
// elementwise maxima of contiguous blocks. Backward: grad_input = col2im(W^T dy) per image;
// grad_weight and grad_bias are summed per image into kWeightGradChunks fixed chunks of the
// batch, then the chunks in order: the same bits for any thread count.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/cpu_isa.h"
#include "common/macros.h"
#include "conv/conv_shape.h"
#include "conv/cpu_gemm.h"

namespace fastnets {
namespace {

constexpr int64_t kWeightGradChunks = 8;


// Patch entry q = (c, r, s): its channel and the offsets of its tap: it reads input
// (oh * stride_h + row_offset, ow * stride_w + col_offset) for output (oh, ow).
struct PatchTap {
  int64_t channel, row_offset, col_offset;
  PatchTap(const Conv2dGeometry& g, int64_t q) {
    const int64_t taps = g.kernel_h * g.kernel_w;
    channel = q / taps;
    row_offset = q % taps / g.kernel_w * g.dilation_h - g.pad_h;
    col_offset = q % g.kernel_w * g.dilation_w - g.pad_w;
  }
};

// A grid of output positions: cell (a, b) is output (a * step_h + first_h, b * step_w + first_w).
struct PositionGrid {
  int64_t rows, cols, step_h, step_w, first_h, first_w;
};

// The GEMM's columns: the grids' cells, grid after grid, each row-major.
struct ColumnLayout {
  std::vector<PositionGrid> grids;
  int64_t columns = 0;
  void add(const PositionGrid& grid) {
    grids.push_back(grid);
    columns += grid.rows * grid.cols;
  }
};

// Every output, row-major.
ColumnLayout natural_columns(const Conv2dGeometry& g) {
  ColumnLayout layout;
  layout.add({g.out_h, g.out_w, 1, 1, 0, 0});
  return layout;
}

// Windows that do not overlap: one grid per window tap t = i * kernel_w + j, whose cell (ph, pw)
// is that tap of pooled output (ph, pw). Column t * pooled + ph * out_w + pw; outputs under no
// window are left out.
bool pools_without_overlap(const ConvPoolGeometry& pool) {
  return pool.stride_h >= pool.kernel_h && pool.stride_w >= pool.kernel_w;
}

ColumnLayout window_tap_columns(const ConvPoolGeometry& pool) {
  ColumnLayout layout;
  for (int64_t i = 0; i < pool.kernel_h; ++i) {
    for (int64_t j = 0; j < pool.kernel_w; ++j) {
      layout.add({pool.out_h, pool.out_w, pool.stride_h, pool.stride_w, i, j});
    }
  }
  return layout;
}

// Calls row(column, ih_row, first, last, step, offset) for each row of each grid as seen by patch
// entry tap: the row's cells b in [first, last) read input row pointer ih_row at b * step +
// offset; the other cells (and whole rows with ih_row == -1) fall in the padding.
template <typename Row>
FASTNETS_ALWAYS_INLINE void for_each_tap_row(const Conv2dGeometry& g, const ColumnLayout& layout,
                                             const PatchTap& tap, const Row& row) {
  int64_t column = 0;
  for (const PositionGrid& grid : layout.grids) {
    const int64_t step_h = grid.step_h * g.stride_h, step_w = grid.step_w * g.stride_w;
    const int64_t offset_h = grid.first_h * g.stride_h + tap.row_offset;
    const int64_t offset_w = grid.first_w * g.stride_w + tap.col_offset;
    int64_t a_first, a_last, b_first, b_last;
    conv_tap_range(grid.rows, g.in_h, step_h, offset_h, a_first, a_last);
    conv_tap_range(grid.cols, g.in_w, step_w, offset_w, b_first, b_last);
    for (int64_t a = 0; a < grid.rows; ++a) {
      const bool inside = a >= a_first && a < a_last;
      row(column + a * grid.cols, grid.cols, inside ? a * step_h + offset_h : -1, b_first, b_last, step_w, offset_w);
    }
    column += grid.rows * grid.cols;
  }
}

// The patch matrix of one image and group, x pointing at the group's first input channel:
// entry (q, column) = input read by patch entry q for the layout's output at `column` (zero in
// the padding), written to rows[q] + column * kPositionStride. kPositionStride 1 gives rows of a
// matrix; kPanelRows gives the panels of gemm's A (rows[q] = panel start + q % kPanelRows).
template <int kPositionStride, typename acc_t, typename scalar_t, typename Rows>
FASTNETS_ALWAYS_INLINE void im2col(const scalar_t* x, const Conv2dGeometry& g, const ColumnLayout& layout,
                                   const Rows& row_of) {
  for (int64_t q = 0; q < g.patch_size(); ++q) {
    const PatchTap tap(g, q);
    acc_t* out = row_of(q);
    const scalar_t* plane = x + tap.channel * g.in_plane();
    for_each_tap_row(g, layout, tap, [&](int64_t column, int64_t cols, int64_t ih, int64_t first, int64_t last,
                                         int64_t step, int64_t offset) FASTNETS_INLINE_LAMBDA {
      acc_t* o = out + column * kPositionStride;
      if (ih < 0) {
        for (int64_t b = 0; b < cols; ++b) o[b * kPositionStride] = acc_t(0);
        return;
      }
      const scalar_t* in = plane + ih * g.in_w;
      for (int64_t b = 0; b < first; ++b) o[b * kPositionStride] = acc_t(0);
      if (step == 1) {
        for (int64_t b = first; b < last; ++b) o[b * kPositionStride] = static_cast<acc_t>(in[b + offset]);
      } else {
        for (int64_t b = first; b < last; ++b) o[b * kPositionStride] = static_cast<acc_t>(in[b * step + offset]);
      }
      for (int64_t b = last; b < cols; ++b) o[b * kPositionStride] = acc_t(0);
    });
  }
}

// The adjoint of im2col: dx[c][ih][iw] += col[q][column] for every patch entry reading (ih, iw),
// in a fixed order (q, then column).
template <typename acc_t>
FASTNETS_ALWAYS_INLINE void col2im(const acc_t* col, int64_t ldc, const Conv2dGeometry& g, const ColumnLayout& layout,
                                   acc_t* dx) {
  for (int64_t q = 0; q < g.patch_size(); ++q) {
    const PatchTap tap(g, q);
    acc_t* plane = dx + tap.channel * g.in_plane();
    for_each_tap_row(g, layout, tap, [&](int64_t column, int64_t, int64_t ih, int64_t first, int64_t last,
                                         int64_t step, int64_t offset) FASTNETS_INLINE_LAMBDA {
      if (ih < 0) return;
      const acc_t* o = col + q * ldc + column;
      acc_t* in = plane + ih * g.in_w;
      if (step == 1) {  // a separate loop that GCC vectorizes
        for (int64_t b = first; b < last; ++b) in[b + offset] += o[b];
      } else {
        for (int64_t b = first; b < last; ++b) in[b * step + offset] += o[b];
      }
    });
  }
}

// Stride-1 convolutions as a GEMM read straight from a zero-padded copy of the source, without
// im2col: in planes of padded_w columns, output (oh, ow) is column oh * padded_w + ow, and tap
// q = (c, r, s) reads the source at column + tap_offset(q), tap_offset = c * plane + r *
// dilation_h * padded_w + s * dilation_w: row q of B is the padded source from tap_offset(q).
// The columns with ow >= out_w are computed and dropped (the work grows by padded_w / out_w).
struct PaddedConv {
  int64_t channels, padded_h, padded_w, kernel_h, kernel_w, dilation_h, dilation_w, out_h, out_w;
  int64_t columns() const { return out_h * padded_w; }
  int64_t plane() const { return padded_h * padded_w; }
  int64_t depth() const { return channels * kernel_h * kernel_w; }
  int64_t tap_offset(int64_t q) const {
    const int64_t taps = kernel_h * kernel_w;
    return q / taps * plane() + q % taps / kernel_w * dilation_h * padded_w + q % kernel_w * dilation_w;
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
  return {g.group_in_channels(), g.in_h + 2 * g.pad_h, g.in_w + 2 * g.pad_w, g.kernel_h, g.kernel_w,
          g.dilation_h, g.dilation_w, g.out_h, g.out_w};
}

bool has_padded_grad_input(const Conv2dGeometry& g) {
  return g.stride_h == 1 && g.stride_w == 1 && g.pad_h <= g.dilation_h * (g.kernel_h - 1) &&
         g.pad_w <= g.dilation_w * (g.kernel_w - 1);
}

PaddedConv padded_grad_input(const Conv2dGeometry& g) {
  return {g.group_out_channels(), g.out_h + 2 * (g.dilation_h * (g.kernel_h - 1) - g.pad_h),
          g.out_w + 2 * (g.dilation_w * (g.kernel_w - 1) - g.pad_w), g.kernel_h, g.kernel_w, g.dilation_h,
          g.dilation_w, g.in_h, g.in_w};
}

// Copies planes [channels][height][width] (source values, or source_stride apart) into the
// padded buffer, at row top and column left of each padded plane; the rest stays zero.
template <typename acc_t, typename scalar_t>
FASTNETS_ALWAYS_INLINE void fill_padded(const scalar_t* source, int64_t source_plane, int64_t height, int64_t width,
                                        int64_t source_row, const PaddedConv& pc, int64_t top, int64_t left,
                                        acc_t* padded) {
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

std::vector<int64_t> tap_offsets(const PaddedConv& pc) {
  std::vector<int64_t> offsets(pc.depth());
  for (int64_t q = 0; q < pc.depth(); ++q) offsets[q] = pc.tap_offset(q);
  return offsets;
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

// Weights as A of the padded grad_input: rows the group's input channels, depth (k, r', s') =
// weight[k][c][kernel_h - 1 - r'][kernel_w - 1 - s'].
template <typename acc_t, typename scalar_t>
std::vector<acc_t> pack_flipped_weight(const scalar_t* w, const Conv2dGeometry& g) {
  const int64_t out_channels = g.group_out_channels(), in_channels = g.group_in_channels();
  const int64_t taps = g.kernel_h * g.kernel_w, depth = out_channels * taps;
  const int64_t per_group = panels_size(in_channels, depth);
  std::vector<acc_t> packed(per_group * g.groups);
  for (int64_t group = 0; group < g.groups; ++group) {
    const scalar_t* wg = w + group * out_channels * in_channels * taps;
    pack_panels(in_channels, depth, [&](int64_t c, int64_t q) {
      const int64_t k = q / taps, flipped = taps - 1 - q % taps;
      return static_cast<acc_t>(wg[(k * in_channels + c) * taps + flipped]);
    }, packed.data() + group * per_group);
  }
  return packed;
}

// The forward GEMM of images [first, last): epilogue(n, group, out, ldc) receives the group's
// convolution output without bias, out[k * ldc + column] in the layout's columns, ldc =
// padded_cols(columns).
template <typename scalar_t, typename Epilogue>
void conv2d_forward_images(const scalar_t* x, const std::vector<at::opmath_type<scalar_t>>& weight_panels,
                           const Conv2dGeometry& g, const ColumnLayout& layout, int64_t first, int64_t last,
                           const Epilogue& epilogue) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t patch = g.patch_size(), positions = layout.columns, out_channels = g.group_out_channels();
  const int64_t ldc = padded_cols<acc_t>(positions), per_group = panels_size(out_channels, patch);
  std::vector<acc_t> col(patch * ldc, acc_t(0)), out(out_channels * ldc);
  for (int64_t n = first; n < last; ++n) {
    for (int64_t group = 0; group < g.groups; ++group) {
      const scalar_t* xg = x + (n * g.in_channels + group * g.group_in_channels()) * g.in_plane();
      call_with_best_isa_tag([&](auto isa) FASTNETS_INLINE_LAMBDA {
        using Tile = GemmTileFor<acc_t, decltype(isa)::value>;
        im2col<1, acc_t>(xg, g, layout, [&](int64_t q) { return col.data() + q * ldc; });
        gemm<Tile>(out_channels, positions, patch, weight_panels.data() + group * per_group, col.data(), ldc,
                   out.data(), ldc, false);
      });
      epilogue(n, group, out.data(), ldc);
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
    const std::vector<acc_t> panels = pack_weight<acc_t>(w.const_data_ptr<scalar_t>(), g, false);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* bp = has_bias ? b.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const int64_t positions = g.out_plane(), out_channels = g.group_out_channels();
    // out[k * ldc + oh * row + ow] + bias -> y
    auto store = [&](int64_t n, int64_t group, const acc_t* out, int64_t ldc, int64_t row) {
      for (int64_t k = 0; k < out_channels; ++k) {
        const int64_t channel = group * out_channels + k;
        const acc_t shift = bp ? static_cast<acc_t>(bp[channel]) : acc_t(0);
        scalar_t* target = yp + (n * g.out_channels + channel) * positions;
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          for (int64_t ow = 0; ow < g.out_w; ++ow) {
            target[oh * g.out_w + ow] = static_cast<scalar_t>(out[k * ldc + oh * row + ow] + shift);
          }
        }
      }
    };
    if (g.stride_h == 1 && g.stride_w == 1) {
      const PaddedConv pc = padded_forward(g);
      const std::vector<int64_t> offsets = tap_offsets(pc);
      const int64_t ldc = padded_cols<acc_t>(pc.columns()), per_group = panels_size(out_channels, pc.depth());
      at::parallel_for(0, g.batch, 1, [&](int64_t first, int64_t last) {
        std::vector<acc_t> padded(pc.buffer_size<acc_t>(), acc_t(0)), out(out_channels * ldc);
        for (int64_t n = first; n < last; ++n) {
          for (int64_t group = 0; group < g.groups; ++group) {
            const scalar_t* xg = xp + (n * g.in_channels + group * g.group_in_channels()) * g.in_plane();
            fill_padded(xg, g.in_plane(), g.in_h, g.in_w, g.in_w, pc, g.pad_h, g.pad_w, padded.data());
            call_with_best_isa_tag([&](auto isa) FASTNETS_INLINE_LAMBDA {
              padded_gemm<GemmTileFor<acc_t, decltype(isa)::value>>(pc, out_channels, panels.data() + group * per_group,
                                                                    padded.data(), offsets, out.data(), ldc);
            });
            store(n, group, out.data(), ldc, pc.padded_w);
          }
        }
      });
      return;
    }
    const ColumnLayout layout = natural_columns(g);
    at::parallel_for(0, g.batch, 1, [&](int64_t first, int64_t last) {
      conv2d_forward_images(xp, panels, g, layout, first, last, [&](int64_t n, int64_t group, const acc_t* out,
                                                                     int64_t ldc) { store(n, group, out, ldc, g.out_w); });
    });
  });
  return y;
}

#if defined(__x86_64__) && defined(__GNUC__)
constexpr bool kHaveTapPooling = true;

// relu_max_pool_window for window_tap_columns, float, 16 pooled outputs at a time: tap t of every
// pooled output is the contiguous block conv[t * pooled, (t + 1) * pooled), so a window's taps
// are lanes at the same place in each block. The rule of conv.h (relu keeping NaN; greater or
// NaN takes; argmax | kReluInactive unless the maximum is positive) as AVX-512 compare masks:
// GCC lowers vector selects of generic vectors lane by lane outside a function compiled for
// AVX-512, hence intrinsics. conv lacks the bias (shift); reads stay inside the blocks.
FASTNETS_TARGET_AVX512 void relu_max_pool_taps_avx512(const float* conv, float shift, int64_t pooled, int64_t taps,
                                                      float* out, uint8_t* argmax) {
  const __m512 zero = _mm512_setzero_ps(), bias = _mm512_set1_ps(shift);
  for (int64_t q0 = 0; q0 < pooled; q0 += 16) {
    const __mmask16 lanes = pooled - q0 >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (pooled - q0)) - 1);
    __m512 best = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    __m512i position = _mm512_setzero_si512();
    for (int64_t t = 0; t < taps; ++t) {
      __m512 value = _mm512_add_ps(_mm512_maskz_loadu_ps(lanes, conv + t * pooled + q0), bias);
      const __mmask16 nan = _mm512_cmp_ps_mask(value, value, _CMP_UNORD_Q);
      value = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(value, zero, _CMP_GT_OQ) | nan, value);
      const __mmask16 takes = _mm512_cmp_ps_mask(value, best, _CMP_GT_OQ) | nan;
      best = _mm512_mask_mov_ps(best, takes, value);
      position = _mm512_mask_mov_epi32(position, takes, _mm512_set1_epi32(static_cast<int>(t)));
    }
    const __mmask16 inactive = static_cast<__mmask16>(~_mm512_cmp_ps_mask(best, zero, _CMP_GT_OQ));
    position = _mm512_mask_or_epi32(position, inactive, position, _mm512_set1_epi32(kReluInactive));
    _mm512_mask_storeu_ps(out + q0, lanes, best);
    _mm512_mask_cvtepi32_storeu_epi8(argmax + q0, lanes, position);
  }
}
#else
constexpr bool kHaveTapPooling = false;
void relu_max_pool_taps_avx512(const float*, float, int64_t, int64_t, float*, uint8_t*) {}
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
    const std::vector<acc_t> panels = pack_weight<acc_t>(w.const_data_ptr<scalar_t>(), g, false);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* bp = has_bias ? b.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    uint8_t* ap = argmax.mutable_data_ptr<uint8_t>();
    const int64_t pooled = pool.out_h * pool.out_w, out_channels = g.group_out_channels();
    // Window by window in float with AVX-512; otherwise every output, row-major, pooled by
    // relu_max_pool_window.
    const bool by_taps = kHaveTapPooling && std::is_same_v<acc_t, float> && cpu_isa() == CpuIsa::kAvx512 &&
                         pools_without_overlap(pool);
    const ColumnLayout layout = by_taps ? window_tap_columns(pool) : natural_columns(g);
    at::parallel_for(0, g.batch, 1, [&](int64_t first, int64_t last) {
      std::vector<float> pooled_values(by_taps ? pooled : 0);
      conv2d_forward_images(xp, panels, g, layout, first, last, [&](int64_t n, int64_t group, acc_t* out,
                                                                     int64_t ldc) {
        for (int64_t k = 0; k < out_channels; ++k) {
          const int64_t channel = group * out_channels + k;
          const acc_t shift = bp ? static_cast<acc_t>(bp[channel]) : acc_t(0);
          acc_t* conv = out + k * ldc;
          scalar_t* target = yp + (n * g.out_channels + channel) * pooled;
          uint8_t* winners = ap + (n * g.out_channels + channel) * pooled;
          if (by_taps) {  // acc_t is float here
            float* values = std::is_same_v<scalar_t, float> ? reinterpret_cast<float*>(target) : pooled_values.data();
            relu_max_pool_taps_avx512(reinterpret_cast<const float*>(conv), static_cast<float>(shift), pooled,
                                      pool.kernel_h * pool.kernel_w, values, winners);
            if (!std::is_same_v<scalar_t, float>) {
              for (int64_t o = 0; o < pooled; ++o) target[o] = static_cast<scalar_t>(values[o]);
            }
            continue;
          }
          for (int64_t p = 0; p < layout.columns; ++p) conv[p] += shift;
          for (int64_t o = 0; o < pooled; ++o) {
            target[o] = static_cast<scalar_t>(
                relu_max_pool_window(conv, g.out_w, pool, o / pool.out_w, o % pool.out_w, winners[o]));
          }
        }
      });
    });
  });
  return {y, argmax};
}

// The backward of images [0, batch): conv_grad(n, group, dy) writes the gradient of the group's
// convolution output in the layout's columns, dy[k * ldc + column] (ldc = padded_cols(columns)).
template <typename scalar_t, typename ConvGrad>
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_images(const at::Tensor& x, const at::Tensor& w,
                                                                     const Conv2dGeometry& g,
                                                                     const ColumnLayout& layout,
                                                                     std::array<bool, 3> output_mask,
                                                                     const ConvGrad& conv_grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const bool need_input = output_mask[0], need_weight = output_mask[1], need_bias = output_mask[2];
  const int64_t patch = g.patch_size(), positions = layout.columns;
  const int64_t in_channels = g.group_in_channels(), out_channels = g.group_out_channels();
  const int64_t ldc = padded_cols<acc_t>(positions), ldk = padded_cols<acc_t>(out_channels);
  const int64_t transposed_per_group = panels_size(patch, out_channels), patch_panels = panels_size(patch, positions);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  // grad_input: a flipped-kernel convolution of the padded gradient where the stride is 1 (and
  // the columns are row-major), else col2im(W^T dy).
  const bool padded_input_grad = need_input && layout.grids.size() == 1 && layout.grids[0].step_h == 1 &&
                                 layout.grids[0].step_w == 1 && has_padded_grad_input(g);
  const PaddedConv pc = padded_grad_input(g);
  const std::vector<int64_t> offsets = padded_input_grad ? tap_offsets(pc) : std::vector<int64_t>();
  const int64_t ldx = padded_input_grad ? padded_cols<acc_t>(pc.columns()) : 0;
  const int64_t flipped_per_group = panels_size(in_channels, pc.depth());
  const std::vector<acc_t> transposed =
      !need_input ? std::vector<acc_t>()
      : padded_input_grad ? pack_flipped_weight<acc_t>(w.const_data_ptr<scalar_t>(), g)
                          : pack_weight<acc_t>(w.const_data_ptr<scalar_t>(), g, true);

  at::Tensor grad_input = need_input ? at::empty(x.sizes(), x.options()) : at::empty({0}, x.options());
  scalar_t* gi = need_input ? grad_input.mutable_data_ptr<scalar_t>() : nullptr;
  // Per chunk: the transposed weight gradient [group][q][k] and the bias gradient [channel].
  const int64_t chunks = std::min(g.batch, kWeightGradChunks);
  const int64_t weight_chunk = need_weight ? g.groups * patch * ldk : 0, bias_chunk = need_bias ? g.out_channels : 0;
  std::vector<acc_t> weight_sums(chunks * weight_chunk, acc_t(0)), bias_sums(chunks * bias_chunk, acc_t(0));

  at::parallel_for(0, chunks, 1, [&](int64_t first_chunk, int64_t last_chunk) {
    std::vector<acc_t> dy(out_channels * ldc, acc_t(0)), dy_t(need_weight ? positions * ldk : 0, acc_t(0));
    std::vector<acc_t> col(need_input ? (padded_input_grad ? in_channels * ldx : patch * ldc) : 0);
    std::vector<acc_t> dx(need_input && !padded_input_grad ? in_channels * g.in_plane() : 0);
    std::vector<acc_t> padded(padded_input_grad ? pc.buffer_size<acc_t>() : 0, acc_t(0));
    std::vector<acc_t> x_panels(need_weight ? patch_panels : 0, acc_t(0));
    for (int64_t chunk = first_chunk; chunk < last_chunk; ++chunk) {
      acc_t* weight_sum = weight_sums.data() + chunk * weight_chunk;
      acc_t* bias_sum = bias_sums.data() + chunk * bias_chunk;
      for (int64_t n = g.batch * chunk / chunks; n < g.batch * (chunk + 1) / chunks; ++n) {
        for (int64_t group = 0; group < g.groups; ++group) {
          conv_grad(n, group, dy.data());
          const int64_t x_offset = (n * g.in_channels + group * in_channels) * g.in_plane();
          call_with_best_isa_tag([&](auto isa) FASTNETS_INLINE_LAMBDA {
            using Tile = GemmTileFor<acc_t, decltype(isa)::value>;
            if (padded_input_grad) {
              const int64_t top = (pc.padded_h - g.out_h) / 2, left = (pc.padded_w - g.out_w) / 2;
              fill_padded(dy.data(), ldc, g.out_h, g.out_w, g.out_w, pc, top, left, padded.data());
              padded_gemm<Tile>(pc, in_channels, transposed.data() + group * flipped_per_group, padded.data(), offsets,
                                col.data(), ldx);
              for (int64_t c = 0; c < in_channels; ++c) {
                for (int64_t h = 0; h < g.in_h; ++h) {
                  for (int64_t w = 0; w < g.in_w; ++w) {
                    gi[x_offset + (c * g.in_h + h) * g.in_w + w] =
                        static_cast<scalar_t>(col[c * ldx + h * pc.padded_w + w]);
                  }
                }
              }
            } else if (need_input) {
              gemm<Tile>(patch, positions, out_channels, transposed.data() + group * transposed_per_group, dy.data(),
                         ldc, col.data(), ldc, false);
              std::fill(dx.begin(), dx.end(), acc_t(0));
              col2im(col.data(), ldc, g, layout, dx.data());
              for (size_t i = 0; i < dx.size(); ++i) gi[x_offset + i] = static_cast<scalar_t>(dx[i]);
            }
            if (need_weight) {
              im2col<kPanelRows, acc_t>(xp + x_offset, g, layout, [&](int64_t q) {
                return x_panels.data() + q / kPanelRows * kPanelRows * positions + q % kPanelRows;
              });
              for (int64_t k = 0; k < out_channels; ++k) {
                for (int64_t p = 0; p < positions; ++p) dy_t[p * ldk + k] = dy[k * ldc + p];
              }
              gemm<Tile>(patch, out_channels, positions, x_panels.data(), dy_t.data(), ldk,
                         weight_sum + group * patch * ldk, ldk, true);
            }
          });
          if (need_bias) {
            for (int64_t k = 0; k < out_channels; ++k) {
              acc_t sum = acc_t(0);
              for (int64_t p = 0; p < positions; ++p) sum += dy[k * ldc + p];
              bias_sum[group * out_channels + k] += sum;
            }
          }
        }
      }
    }
  });

  at::Tensor grad_weight = at::empty({0}, x.options()), grad_bias = at::empty({0}, x.options());
  if (need_weight) {
    grad_weight = at::empty(w.sizes(), w.options());
    scalar_t* gw = grad_weight.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.out_channels, 1, [&](int64_t first, int64_t last) {
      for (int64_t channel = first; channel < last; ++channel) {
        const int64_t group = channel / out_channels, k = channel % out_channels;
        for (int64_t q = 0; q < patch; ++q) {
          acc_t sum = acc_t(0);
          for (int64_t chunk = 0; chunk < chunks; ++chunk) {
            sum += weight_sums[chunk * weight_chunk + (group * patch + q) * ldk + k];
          }
          gw[channel * patch + q] = static_cast<scalar_t>(sum);
        }
      }
    });
  }
  if (need_bias) {
    grad_bias = at::empty({g.out_channels}, x.options());
    scalar_t* gb = grad_bias.mutable_data_ptr<scalar_t>();
    for (int64_t channel = 0; channel < g.out_channels; ++channel) {
      acc_t sum = acc_t(0);
      for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += bias_sums[chunk * bias_chunk + channel];
      gb[channel] = static_cast<scalar_t>(sum);
    }
  }
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
    grads = conv2d_backward_images<scalar_t>(x, w, g, natural_columns(g), output_mask,
                                             [&](int64_t n, int64_t group, acc_t* out) {
      const scalar_t* source = dyp + (n * g.out_channels + group * out_channels) * positions;
      for (int64_t k = 0; k < out_channels; ++k) {
        for (int64_t p = 0; p < positions; ++p) out[k * ldc + p] = static_cast<acc_t>(source[k * positions + p]);
      }
    });
  });
  return grads;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_relu_pool2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& argmax, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride, std::array<bool, 3> output_mask) {
  const Conv2dGeometry g = conv2d_geometry(input, weight, std::nullopt, stride, padding, dilation, groups);
  const ConvPoolGeometry pool = conv_pool_geometry(g, pool_kernel, pool_stride);
  check_conv_grad(grad_output, input, "grad_output", {g.batch, g.out_channels, pool.out_h, pool.out_w});
  check_conv_argmax(argmax, grad_output);
  const at::Tensor x = input.contiguous(), w = weight.contiguous(), dy = grad_output.contiguous();
  const at::Tensor a = argmax.contiguous();
  std::tuple<at::Tensor, at::Tensor, at::Tensor> grads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastnets::conv_relu_pool2d_backward",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const uint8_t* ap = a.const_data_ptr<uint8_t>();
    const int64_t pooled = pool.out_h * pool.out_w, out_channels = g.group_out_channels();
    const int64_t taps = pool.kernel_h * pool.kernel_w;
    const ColumnLayout layout = natural_columns(g);
    const int64_t ldc = padded_cols<acc_t>(layout.columns);
    grads = conv2d_backward_images<scalar_t>(x, w, g, layout, output_mask, [&](int64_t n, int64_t group, acc_t* out) {
      for (int64_t k = 0; k < out_channels; ++k) {
        const int64_t plane = (n * g.out_channels + group * out_channels + k) * pooled;
        const uint8_t* winners = ap + plane;
        const scalar_t* grad = dyp + plane;
        acc_t* target = out + k * ldc;
        // Each pooled output adds its gradient to its active winner, in row-major order: the
        // order (so the bits) of relu_max_pool_conv_grad's gather, without its search.
        std::fill(target, target + layout.columns, acc_t(0));
        for (int64_t o = 0; o < pooled; ++o) {
          const uint8_t winner = winners[o];
          if (winner & kReluInactive) continue;
          TORCH_CHECK(winner < taps, "argmax holds ", static_cast<int>(winner), ", not a position in a ",
                      pool.kernel_h, "x", pool.kernel_w, " window");
          const int64_t oh = o / pool.out_w * pool.stride_h + winner / pool.kernel_w;
          const int64_t ow = o % pool.out_w * pool.stride_w + winner % pool.kernel_w;
          target[oh * g.out_w + ow] += static_cast<acc_t>(grad[o]);
        }
      }
    });
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
  // the winner's position in its window, | 0x80 when its pre-activation was not positive.
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
