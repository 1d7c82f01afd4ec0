#pragma once
// Argument checks and output sizes of max_pool2d, shared by the CPU and CUDA entry points.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "common/checks.h"
#include "max_pool/max_pool.h"

namespace fastnets {

// PyTorch's pooling output size: floor (or ceil) division, and with ceil_mode no window that
// starts in the right padding.
inline int64_t max_pool_output_size(int64_t in, int64_t kernel, int64_t pad, int64_t stride, int64_t dilation,
                                    bool ceil_mode) {
  const int64_t numerator = in + 2 * pad - dilation * (kernel - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  int64_t out = (numerator >= 0 ? numerator / stride : -((-numerator + stride - 1) / stride)) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

inline void check_pair(at::IntArrayRef values, const char* name, int64_t minimum) {
  TORCH_CHECK(values.size() == 2, name, " must have two values (height, width), got ", values);
  TORCH_CHECK(values[0] >= minimum && values[1] >= minimum, name, " must be at least ", minimum, ", got ", values);
}

// Checks every argument; in_h and in_w are the input's last two sizes.
inline MaxPool2dGeometry max_pool2d_geometry(int64_t in_h, int64_t in_w, at::IntArrayRef kernel_size,
                                             at::IntArrayRef stride, at::IntArrayRef padding,
                                             at::IntArrayRef dilation, bool ceil_mode) {
  check_pair(kernel_size, "kernel_size", 1);
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  TORCH_CHECK(kernel_size[0] <= std::numeric_limits<int32_t>::max() / kernel_size[1],
              "kernel_size must have at most 2^31 - 1 positions (the argmax is int32), got ", kernel_size);
  TORCH_CHECK(padding[0] <= kernel_size[0] / 2 && padding[1] <= kernel_size[1] / 2,
              "padding should be at most half of kernel_size, got padding ", padding, " and kernel_size ", kernel_size);
  MaxPool2dGeometry g{kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0], padding[1],
                      dilation[0], dilation[1], in_h, in_w, 0, 0};
  g.out_h = max_pool_output_size(in_h, g.kernel_h, g.pad_h, g.stride_h, g.dilation_h, ceil_mode);
  g.out_w = max_pool_output_size(in_w, g.kernel_w, g.pad_w, g.stride_w, g.dilation_w, ceil_mode);
  TORCH_CHECK(g.out_h >= 1 && g.out_w >= 1, "kernel_size ", kernel_size, " with dilation ", dilation, " and padding ",
              padding, " is larger than the padded input (", in_h, ", ", in_w, "): output size (", g.out_h, ", ",
              g.out_w, ") is too small");
  return g;
}

inline void check_max_pool_input(const at::Tensor& input, const char* name) {
  check_training_dtype(input, name);
  TORCH_CHECK(input.dim() == 3 || input.dim() == 4, name, " must be (N, C, H, W) or (C, H, W), got shape ",
              input.sizes());
  for (int64_t d = input.dim() - 3; d < input.dim(); ++d) {
    TORCH_CHECK(input.size(d) > 0, name, " must have non-zero C, H and W, got shape ", input.sizes());
  }
}

// Windows of up to 256 elements keep their argmax in one byte, larger ones in int32.
inline at::ScalarType max_pool_argmax_dtype(at::IntArrayRef kernel_size) {
  return kernel_size[0] * kernel_size[1] <= 256 ? at::kByte : at::kInt;
}

// fn(index_t{}) with index_t the C++ type of an argmax dtype.
template <typename Fn>
void dispatch_argmax(at::ScalarType dtype, const Fn& fn) {
  if (dtype == at::kByte) {
    fn(uint8_t{});
  } else {
    TORCH_CHECK(dtype == at::kInt, "argmax must be uint8 or int32, got ", dtype);
    fn(int32_t{});
  }
}

// The input as 4-D and its memory format: channels_last is kept, anything else made contiguous.
inline at::Tensor max_pool_4d(const at::Tensor& input, at::MemoryFormat& format) {
  const at::Tensor x = input.dim() == 3 ? input.unsqueeze(0) : input;
  format = x.suggest_memory_format();
  return x.contiguous(format);
}

// Checks max_pool2d_backward's arguments; a and grad_output_4d receive the 4-D tensors in the
// argmax's memory format, which the gradient takes too.
inline MaxPool2dGeometry max_pool2d_backward_geometry(const at::Tensor& grad_output, const at::Tensor& argmax,
                                                      at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                                      at::IntArrayRef dilation, bool ceil_mode,
                                                      at::MemoryFormat& format, at::Tensor& a,
                                                      at::Tensor& grad_output_4d) {
  check_max_pool_input(grad_output, "grad_output");
  check_pair(kernel_size, "kernel_size", 1);
  TORCH_CHECK(argmax.sizes() == grad_output.sizes() && argmax.scalar_type() == max_pool_argmax_dtype(kernel_size),
              "argmax must be a ", max_pool_argmax_dtype(kernel_size), " tensor of grad_output's shape ",
              grad_output.sizes(), ", got ", argmax.scalar_type(), " of shape ", argmax.sizes());
  TORCH_CHECK(argmax.device() == grad_output.device(), "argmax must be on ", grad_output.device());
  TORCH_CHECK(static_cast<int64_t>(input_size.size()) == grad_output.dim(), "input_size must have ",
              grad_output.dim(), " values, got ", input_size);
  a = max_pool_4d(argmax, format);
  grad_output_4d = (grad_output.dim() == 3 ? grad_output.unsqueeze(0) : grad_output).contiguous(format);
  const int64_t in_h = input_size[input_size.size() - 2], in_w = input_size[input_size.size() - 1];
  const MaxPool2dGeometry g = max_pool2d_geometry(in_h, in_w, kernel_size, stride, padding, dilation, ceil_mode);
  TORCH_CHECK(grad_output_4d.size(2) == g.out_h && grad_output_4d.size(3) == g.out_w, "grad_output's (H, W) = (",
              grad_output_4d.size(2), ", ", grad_output_4d.size(3), ") do not match the output size (", g.out_h, ", ",
              g.out_w, ") of input_size ", input_size);
  return g;
}

}  // namespace fastnets
