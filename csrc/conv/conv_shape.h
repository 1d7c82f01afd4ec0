#pragma once
// Argument checks and output sizes of the convolution ops, shared by the CPU and CUDA entry points.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include "common/checks.h"
#include "conv/conv.h"

namespace fastnets {

inline void check_conv_pair(at::IntArrayRef values, const char* name, int64_t minimum) {
  TORCH_CHECK(values.size() == 2, name, " must have two values (height, width), got ", values);
  TORCH_CHECK(values[0] >= minimum && values[1] >= minimum, name, " must be at least ", minimum, ", got ", values);
}

// Checks input (N, C, H, W), weight (K, C / groups, R, S), bias (K) and the arguments.
inline Conv2dGeometry conv2d_geometry(const at::Tensor& input, const at::Tensor& weight,
                                      const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  check_training_dtype(input, "input");
  TORCH_CHECK(input.dim() == 4, "input must be 4-D (N, C, H, W), got shape ", input.sizes());
  TORCH_CHECK(weight.dim() == 4, "weight must be 4-D (out_channels, in_channels / groups, kH, kW), got shape ",
              weight.sizes());
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), "weight must have input's dtype ", input.scalar_type(),
              ", got ", weight.scalar_type());
  TORCH_CHECK(weight.device() == input.device(), "weight must be on input's device ", input.device(), ", got ",
              weight.device());
  check_conv_pair(stride, "stride", 1);
  check_conv_pair(padding, "padding", 0);
  check_conv_pair(dilation, "dilation", 1);
  TORCH_CHECK(groups >= 1, "groups must be at least 1, got ", groups);
  Conv2dGeometry g{};
  g.batch = input.size(0);
  g.in_channels = input.size(1);
  g.in_h = input.size(2);
  g.in_w = input.size(3);
  g.out_channels = weight.size(0);
  g.kernel_h = weight.size(2);
  g.kernel_w = weight.size(3);
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dilation_h = dilation[0];
  g.dilation_w = dilation[1];
  g.groups = groups;
  TORCH_CHECK(g.in_channels % groups == 0, "input's channels (", g.in_channels, ") must be divisible by groups (",
              groups, ")");
  TORCH_CHECK(g.out_channels >= 1 && g.out_channels % groups == 0, "weight's out_channels (", g.out_channels,
              ") must be positive and divisible by groups (", groups, ")");
  TORCH_CHECK(weight.size(1) == g.in_channels / groups && g.kernel_h >= 1 && g.kernel_w >= 1,
              "weight must have shape (out_channels, in_channels / groups = ", g.in_channels / groups,
              ", kH, kW) for input of shape ", input.sizes(), " and groups ", groups, ", got ", weight.sizes());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.out_channels, "bias must have shape (", g.out_channels,
                "), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == input.scalar_type(), "bias must have input's dtype ", input.scalar_type(),
                ", got ", bias->scalar_type());
    TORCH_CHECK(bias->device() == input.device(), "bias must be on input's device ", input.device(), ", got ",
                bias->device());
  }
  const int64_t span_h = g.dilation_h * (g.kernel_h - 1) + 1, span_w = g.dilation_w * (g.kernel_w - 1) + 1;
  TORCH_CHECK(g.in_h + 2 * g.pad_h >= span_h && g.in_w + 2 * g.pad_w >= span_w, "kernel size (", span_h, ", ",
              span_w, ") with dilation ", dilation, " is larger than the padded input (", g.in_h + 2 * g.pad_h, ", ",
              g.in_w + 2 * g.pad_w, ")");
  g.out_h = (g.in_h + 2 * g.pad_h - span_h) / g.stride_h + 1;
  g.out_w = (g.in_w + 2 * g.pad_w - span_w) / g.stride_w + 1;
  return g;
}

// The fused layer's pooling over the convolution output of g.
inline ConvPoolGeometry conv_pool_geometry(const Conv2dGeometry& g, at::IntArrayRef pool_kernel,
                                           at::IntArrayRef pool_stride) {
  check_conv_pair(pool_kernel, "pool_kernel", 1);
  check_conv_pair(pool_stride, "pool_stride", 1);
  TORCH_CHECK(pool_kernel[0] * pool_kernel[1] <= kMaxFusedPoolWindow, "pool_kernel must have at most ",
              kMaxFusedPoolWindow, " positions, got ", pool_kernel);
  TORCH_CHECK(pool_kernel[0] <= g.out_h && pool_kernel[1] <= g.out_w, "pool_kernel ", pool_kernel,
              " is larger than the convolution's output (", g.out_h, ", ", g.out_w, ")");
  return ConvPoolGeometry{pool_kernel[0], pool_kernel[1], pool_stride[0], pool_stride[1],
                          (g.out_h - pool_kernel[0]) / pool_stride[0] + 1,
                          (g.out_w - pool_kernel[1]) / pool_stride[1] + 1};
}

// Checks a gradient of the given shape against the forward's geometry.
inline void check_conv_grad(const at::Tensor& grad, const at::Tensor& input, const char* name,
                            std::initializer_list<int64_t> expected) {
  TORCH_CHECK(grad.sizes().equals(expected), name, " must have shape ", at::IntArrayRef(expected), ", got ",
              grad.sizes());
  TORCH_CHECK(grad.scalar_type() == input.scalar_type(), name, " must have input's dtype ", input.scalar_type(),
              ", got ", grad.scalar_type());
  TORCH_CHECK(grad.device() == input.device(), name, " must be on input's device ", input.device(), ", got ",
              grad.device());
}

inline void check_conv_argmax(const at::Tensor& argmax, const at::Tensor& grad_output) {
  TORCH_CHECK(argmax.scalar_type() == at::kByte && argmax.sizes() == grad_output.sizes(),
              "argmax must be a uint8 tensor of grad_output's shape ", grad_output.sizes(), ", got ",
              argmax.scalar_type(), " of shape ", argmax.sizes());
  TORCH_CHECK(argmax.device() == grad_output.device(), "argmax must be on grad_output's device ",
              grad_output.device(), ", got ", argmax.device());
}

// Checks conv_relu_pool2d_backward's arguments; pool receives the pooling geometry.
inline Conv2dGeometry conv_relu_pool2d_backward_geometry(const at::Tensor& grad_output, const at::Tensor& argmax,
                                                         const at::Tensor& input, const at::Tensor& weight,
                                                         at::IntArrayRef stride, at::IntArrayRef padding,
                                                         at::IntArrayRef dilation, int64_t groups,
                                                         at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride,
                                                         ConvPoolGeometry& pool) {
  const Conv2dGeometry g = conv2d_geometry(input, weight, std::nullopt, stride, padding, dilation, groups);
  pool = conv_pool_geometry(g, pool_kernel, pool_stride);
  check_conv_grad(grad_output, input, "grad_output", {g.batch, g.out_channels, pool.out_h, pool.out_w});
  check_conv_argmax(argmax, grad_output);
  return g;
}

}  // namespace fastnets
