#pragma once
// 2-D max-pooling, the math shared by the CPU and CUDA kernels.
//
// Output (oh, ow) looks at input rows oh * stride_h - pad_h + i * dilation_h (i < kernel_h) and
// the like for columns, skipping those outside the input. The rule is PyTorch's: a value
// replaces the maximum if it is greater or NaN (so the last NaN wins, and the first of equal
// maxima); the maximum starts at -inf at the window's first position inside the input. The
// winner is kept as its position in the window, i * kernel_w + j: one byte for windows of up
// to 256 elements (PyTorch keeps an int64 flat index).
#include <cstdint>
#include <limits>

#include "common/macros.h"

namespace fastnets {

// The geometry in an integer type int_t: int64_t, or int32_t where the CUDA kernels can use it
// (64-bit division and multiplication cost GPUs many instructions each).
template <typename int_t>
struct MaxPool2dGeometryOf {
  int_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int_t in_h, in_w, out_h, out_w;

  // Whether every value, and every position the math below computes from them, fits in int32_t.
  bool fits_int32() const {
    constexpr int64_t kLimit = int64_t(1) << 29;
    for (const int64_t v : {int64_t(kernel_h), int64_t(kernel_w), int64_t(stride_h), int64_t(stride_w),
                            int64_t(pad_h), int64_t(pad_w), int64_t(dilation_h), int64_t(dilation_w),
                            int64_t(in_h), int64_t(in_w), int64_t(out_h), int64_t(out_w)}) {
      if (v >= kLimit) return false;
    }
    return int64_t(kernel_h) * kernel_w < kLimit &&  // window positions i * kernel_w + j
           int64_t(kernel_h) * dilation_h < kLimit && int64_t(kernel_w) * dilation_w < kLimit &&
           int64_t(out_h) * stride_h < kLimit && int64_t(out_w) * stride_w < kLimit;
  }

  template <typename other_t>
  MaxPool2dGeometryOf<other_t> as() const {
    return {static_cast<other_t>(kernel_h), static_cast<other_t>(kernel_w), static_cast<other_t>(stride_h),
            static_cast<other_t>(stride_w),  static_cast<other_t>(pad_h),    static_cast<other_t>(pad_w),
            static_cast<other_t>(dilation_h), static_cast<other_t>(dilation_w), static_cast<other_t>(in_h),
            static_cast<other_t>(in_w),      static_cast<other_t>(out_h),    static_cast<other_t>(out_w)};
  }
};
using MaxPool2dGeometry = MaxPool2dGeometryOf<int64_t>;

template <typename T>
struct NotDeduced {
  using type = T;
};

// Max of the window of output (oh, ow) in a plane addressed as plane[h * stride_row + w * stride_col].
template <typename scalar_t, typename acc_t, typename index_t, typename int_t>
FASTNETS_HOST_DEVICE scalar_t max_pool2d_window(const scalar_t* plane, typename NotDeduced<int_t>::type stride_row,
                                                typename NotDeduced<int_t>::type stride_col,
                                                const MaxPool2dGeometryOf<int_t>& g,
                                                typename NotDeduced<int_t>::type oh,
                                                typename NotDeduced<int_t>::type ow, index_t& argmax) {
  const int_t h0 = oh * g.stride_h - g.pad_h, w0 = ow * g.stride_w - g.pad_w;
  int_t first_i = 0, first_j = 0;  // the first position inside the input
  while (h0 + first_i * g.dilation_h < 0) ++first_i;
  while (w0 + first_j * g.dilation_w < 0) ++first_j;
  acc_t best = -std::numeric_limits<acc_t>::infinity();
  int_t best_position = first_i * g.kernel_w + first_j;
  for (int_t i = first_i; i < g.kernel_h; ++i) {
    const int_t h = h0 + i * g.dilation_h;
    if (h >= g.in_h) break;
    for (int_t j = first_j; j < g.kernel_w; ++j) {
      const int_t w = w0 + j * g.dilation_w;
      if (w >= g.in_w) break;
      const acc_t value = static_cast<acc_t>(plane[h * stride_row + w * stride_col]);
      if (value > best || value != value) {
        best = value;
        best_position = i * g.kernel_w + j;
      }
    }
  }
  argmax = static_cast<index_t>(best_position);
  return static_cast<scalar_t>(best);
}

// Gradient of input (h, w): the sum of the gradients of the outputs whose winner it is, taken
// in the order of the outputs (row-major), as PyTorch sums them; no atomics.
template <typename scalar_t, typename acc_t, typename index_t, typename int_t>
FASTNETS_HOST_DEVICE scalar_t max_pool2d_input_grad(const scalar_t* grad_plane, const index_t* argmax_plane,
                                                    typename NotDeduced<int_t>::type stride_row,
                                                    typename NotDeduced<int_t>::type stride_col,
                                                    const MaxPool2dGeometryOf<int_t>& g,
                                                    typename NotDeduced<int_t>::type h,
                                                    typename NotDeduced<int_t>::type w) {
  acc_t sum = acc_t(0);
  for (int_t i = g.kernel_h - 1; i >= 0; --i) {  // descending i: ascending output rows
    const int_t row = h + g.pad_h - i * g.dilation_h;
    if (row < 0) continue;
    const int_t oh = row / g.stride_h;
    if (oh * g.stride_h != row || oh >= g.out_h) continue;
    for (int_t j = g.kernel_w - 1; j >= 0; --j) {
      const int_t col = w + g.pad_w - j * g.dilation_w;
      if (col < 0) continue;
      const int_t ow = col / g.stride_w;
      if (ow * g.stride_w != col || ow >= g.out_w) continue;
      const int_t output = oh * stride_row + ow * stride_col;
      if (static_cast<int_t>(argmax_plane[output]) == i * g.kernel_w + j) {
        sum += static_cast<acc_t>(grad_plane[output]);
      }
    }
  }
  return static_cast<scalar_t>(sum);
}

}  // namespace fastnets
