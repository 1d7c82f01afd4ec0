#pragma once
// 2-D convolution and the fused convolution + bias + ReLU + max-pooling: the index math and the
// pooling epilogue shared by the CPU and CUDA kernels.
//
// The convolution is a GEMM per image and group: output[k][p] = sum_q weight[k][q] * patch[q][p]
// over q = (c, r, s) of the group's input channels and kernel taps ("patch" index) and p =
// (oh, ow) the output position. Output (oh, ow) reads input (oh * stride_h - pad_h +
// r * dilation_h, ow * stride_w - pad_w + s * dilation_w), zero outside the input.
//
// The fused layer pools relu(conv) with windows of pool_kernel every pool_stride over the
// convolution's output (no padding, floor mode). Its argmax byte holds the winner's position in
// the window, i * pool_kernel_w + j, with kReluInactive set when the winner's pre-activation was
// not positive: ReLU's gradient is zero there, so backward needs neither the convolution output
// nor the pooled output.
#include <cstdint>
#include <limits>

#include "common/macros.h"

namespace fastnets {

struct Conv2dGeometry {
  int64_t batch, in_channels, in_h, in_w;
  int64_t out_channels, kernel_h, kernel_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups;
  int64_t out_h, out_w;

  FASTNETS_HOST_DEVICE int64_t group_in_channels() const { return in_channels / groups; }
  FASTNETS_HOST_DEVICE int64_t group_out_channels() const { return out_channels / groups; }
  // The GEMM's reduction length per group: input channels x kernel taps.
  FASTNETS_HOST_DEVICE int64_t patch_size() const { return group_in_channels() * kernel_h * kernel_w; }
  FASTNETS_HOST_DEVICE int64_t out_plane() const { return out_h * out_w; }
  FASTNETS_HOST_DEVICE int64_t in_plane() const { return in_h * in_w; }
};

// Pooling of the fused layer: every window lies inside the convolution's output.
struct ConvPoolGeometry {
  int64_t kernel_h, kernel_w, stride_h, stride_w, out_h, out_w;
};

constexpr uint8_t kReluInactive = 0x80;
constexpr int64_t kMaxFusedPoolWindow = 128;  // positions below kReluInactive

// Patch entry q = (c, r, s): the offset of its input channel (relative to the group's first) and
// where its tap reads relative to an output's window origin (oh * stride_h, ow * stride_w). Split
// from conv_entry_offset so that GPU loaders divide once per q, not once per output.
struct ConvPatchEntry {
  int64_t channel_offset, dh, dw;
};

FASTNETS_HOST_DEVICE ConvPatchEntry conv_patch_entry(const Conv2dGeometry& g, int64_t q) {
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t c = q / taps, r = q % taps / g.kernel_w, s = q % g.kernel_w;
  return {c * g.in_h * g.in_w, r * g.dilation_h - g.pad_h, s * g.dilation_w - g.pad_w};
}

// Offset of the input element that `entry` reads for the output with window origin (ih0, iw0),
// relative to the group's first input channel, or -1 when it falls in the zero padding.
FASTNETS_HOST_DEVICE int64_t conv_entry_offset(const Conv2dGeometry& g, const ConvPatchEntry& entry, int64_t ih0,
                                               int64_t iw0) {
  const int64_t ih = ih0 + entry.dh, iw = iw0 + entry.dw;
  if (ih < 0 || ih >= g.in_h || iw < 0 || iw >= g.in_w) return -1;
  return entry.channel_offset + ih * g.in_w + iw;
}

// The same for patch entry q and output (oh, ow).
FASTNETS_HOST_DEVICE int64_t conv_input_offset(const Conv2dGeometry& g, int64_t q, int64_t oh, int64_t ow) {
  return conv_entry_offset(g, conv_patch_entry(g, q), oh * g.stride_h, ow * g.stride_w);
}

// Outputs o in [first, last) read input o * stride + offset inside [0, in_size): the range of
// one kernel tap along a row or column, so that loops over it need no bounds checks.
FASTNETS_HOST_DEVICE void conv_tap_range(int64_t out_size, int64_t in_size, int64_t stride, int64_t offset,
                                                int64_t& first, int64_t& last) {
  first = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  last = in_size - 1 - offset < 0 ? 0 : (in_size - 1 - offset) / stride + 1;
  if (last > out_size) last = out_size;
  if (first > out_size) first = out_size;
  if (last < first) last = first;
}

// The output position (oh, ow) that reads input (ih, iw) through tap (r, s), as oh * out_w + ow,
// or -1 when none does (stride skips it, or it would lie outside the output).
FASTNETS_HOST_DEVICE int64_t conv_output_position(const Conv2dGeometry& g, int64_t r, int64_t s, int64_t ih,
                                                         int64_t iw) {
  const int64_t row = ih + g.pad_h - r * g.dilation_h, col = iw + g.pad_w - s * g.dilation_w;
  if (row < 0 || col < 0) return -1;
  // Stride 1 (the common case) skips the divisions, which GPUs pay for per element.
  const int64_t oh = g.stride_h == 1 ? row : row / g.stride_h, ow = g.stride_w == 1 ? col : col / g.stride_w;
  if (oh * g.stride_h != row || ow * g.stride_w != col || oh >= g.out_h || ow >= g.out_w) return -1;
  return oh * g.out_w + ow;
}

// relu(x), keeping NaN (torch.relu does). T may be a GCC vector type too (the CPU kernel
// applies it to SIMD vectors), hence T{} for zero and | rather than ||.
template <typename T>
FASTNETS_HOST_DEVICE T relu_keep_nan(T x) {
  return ((x > T{}) | (x != x)) ? x : T{};
}

// The fused pooling rule, max_pool2d's on the ReLU's output: a value replaces the maximum if
// greater or NaN, so the first of equal maxima wins (the maximum starts at -inf).
template <typename T>
FASTNETS_HOST_DEVICE auto relu_pool_takes(T value, T best) {
  return (value > best) | (value != value);
}

// The argmax byte of a winner at `position` with pooled value `best` = relu(pre-activation):
// active where the pre-activation was positive or NaN (torch.relu's gradient passes a NaN's, as
// max_pool2d's goes to a NaN winner), | kReluInactive elsewhere.
// (Position and value may be SIMD vectors too.)
template <typename Position, typename T>
FASTNETS_HOST_DEVICE Position relu_pool_argmax(Position position, T best) {
  return position | (((best > T{}) | (best != best)) ? Position{} : Position{} + kReluInactive);
}

// Pooled output (ph, pw) of relu(conv) from one channel's convolution output, addressed as
// plane[oh * row_stride + ow] and already holding the bias.
template <typename acc_t>
FASTNETS_HOST_DEVICE acc_t relu_max_pool_window(const acc_t* plane, int64_t row_stride, const ConvPoolGeometry& pool,
                                                int64_t ph, int64_t pw, uint8_t& argmax) {
  const acc_t* window = plane + ph * pool.stride_h * row_stride + pw * pool.stride_w;
  acc_t best = -std::numeric_limits<acc_t>::infinity();
  int64_t best_position = 0;
  for (int64_t i = 0; i < pool.kernel_h; ++i) {
    for (int64_t j = 0; j < pool.kernel_w; ++j) {
      const acc_t value = relu_keep_nan(window[i * row_stride + j]);
      if (relu_pool_takes(value, best)) {
        best = value;
        best_position = i * pool.kernel_w + j;
      }
    }
  }
  argmax = static_cast<uint8_t>(relu_pool_argmax(best_position, best));
  return best;
}

// Gradient of the convolution output (oh, ow) in the fused layer: the sum, in row-major order of
// the pooled outputs, of the gradients of the windows it won with a positive (or NaN) pre-activation.
template <typename scalar_t, typename acc_t>
FASTNETS_HOST_DEVICE acc_t relu_max_pool_conv_grad(const scalar_t* grad_plane, const uint8_t* argmax_plane,
                                                          const ConvPoolGeometry& pool, int64_t oh, int64_t ow) {
  acc_t sum = acc_t(0);
  for (int64_t i = pool.kernel_h - 1; i >= 0; --i) {  // descending i: ascending pooled rows
    const int64_t row = oh - i;
    if (row < 0) continue;
    const int64_t ph = row / pool.stride_h;
    if (ph * pool.stride_h != row || ph >= pool.out_h) continue;
    for (int64_t j = pool.kernel_w - 1; j >= 0; --j) {
      const int64_t col = ow - j;
      if (col < 0) continue;
      const int64_t pw = col / pool.stride_w;
      if (pw * pool.stride_w != col || pw >= pool.out_w) continue;
      const int64_t pooled = ph * pool.out_w + pw;
      if (static_cast<int64_t>(argmax_plane[pooled]) == i * pool.kernel_w + j) {  // active winner only
        sum += static_cast<acc_t>(grad_plane[pooled]);
      }
    }
  }
  return sum;
}

}  // namespace fastnets
