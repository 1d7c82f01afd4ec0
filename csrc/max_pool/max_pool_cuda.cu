// Max-pooling: CUDA kernels. Schemas and CPU kernels: max_pool.cpp; the math: max_pool.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/cuda_utils.cuh"
#include "max_pool/max_pool_shape.h"

namespace fastnets {
namespace {

constexpr int kThreads = 256;

// Element `index` of a 4-D tensor in its memory order (NCHW, or NHWC when channels_last).
template <typename int_t>
struct Index4d {
  int_t n, c, h, w;
};

template <typename int_t>
__device__ __forceinline__ Index4d<int_t> unravel(int_t index, int_t channels, int_t height, int_t width,
                                                  bool channels_last) {
  Index4d<int_t> i;
  if (channels_last) {
    i.c = index % channels;
    index /= channels;
    i.w = index % width;
    index /= width;
    i.h = index % height;
    i.n = index / height;
  } else {
    i.w = index % width;
    index /= width;
    i.h = index % height;
    index /= height;
    i.c = index % channels;
    i.n = index / channels;
  }
  return i;
}

template <typename int_t>
struct Layout {
  int_t channels;
  bool channels_last;
  int_t sn, sc, sh, sw;  // strides of the input (forward) or grad_output (backward)
  int_t on, oc, oh, ow;  // strides of the output (forward) or grad_input (backward)
};

// One thread per output, in the output's memory order so that stores coalesce.
template <typename scalar_t, typename index_t, typename int_t>
__global__ void __launch_bounds__(kThreads)
max_pool2d_forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, index_t* __restrict__ argmax,
                          int_t outputs, MaxPool2dGeometryOf<int_t> g, Layout<int_t> l) {
  using acc_t = at::opmath_type<scalar_t>;
  const int_t stride = static_cast<int_t>(gridDim.x) * blockDim.x;
  for (int_t index = blockIdx.x * static_cast<int_t>(blockDim.x) + threadIdx.x; index < outputs; index += stride) {
    const Index4d<int_t> o = unravel<int_t>(index, l.channels, g.out_h, g.out_w, l.channels_last);
    const int_t out = o.n * l.on + o.c * l.oc + o.h * l.oh + o.w * l.ow;
    y[out] = max_pool2d_window<scalar_t, acc_t>(x + o.n * l.sn + o.c * l.sc, l.sh, l.sw, g, o.h, o.w, argmax[out]);
  }
}

// One thread per input element, gathering from the outputs it won: no atomics.
template <typename scalar_t, typename index_t, typename int_t>
__global__ void __launch_bounds__(kThreads)
max_pool2d_backward_kernel(const scalar_t* __restrict__ grad_out, const index_t* __restrict__ argmax,
                           scalar_t* __restrict__ grad_in, int_t inputs, MaxPool2dGeometryOf<int_t> g,
                           Layout<int_t> l) {
  using acc_t = at::opmath_type<scalar_t>;
  const int_t stride = static_cast<int_t>(gridDim.x) * blockDim.x;
  for (int_t index = blockIdx.x * static_cast<int_t>(blockDim.x) + threadIdx.x; index < inputs; index += stride) {
    const Index4d<int_t> i = unravel<int_t>(index, l.channels, g.in_h, g.in_w, l.channels_last);
    const int_t plane = i.n * l.sn + i.c * l.sc;
    grad_in[i.n * l.on + i.c * l.oc + i.h * l.oh + i.w * l.ow] =
        max_pool2d_input_grad<scalar_t, acc_t>(grad_out + plane, argmax + plane, l.sh, l.sw, g, i.h, i.w);
  }
}

template <typename int_t>
Layout<int_t> layout_of(const at::Tensor& source, const at::Tensor& target, at::MemoryFormat format) {
  return Layout<int_t>{static_cast<int_t>(source.size(1)), format == at::MemoryFormat::ChannelsLast,
                       static_cast<int_t>(source.stride(0)), static_cast<int_t>(source.stride(1)),
                       static_cast<int_t>(source.stride(2)), static_cast<int_t>(source.stride(3)),
                       static_cast<int_t>(target.stride(0)), static_cast<int_t>(target.stride(1)),
                       static_cast<int_t>(target.stride(2)), static_cast<int_t>(target.stride(3))};
}

// Whether the kernels may index both tensors and the geometry in 32 bits: every element offset
// (and a grid-stride step past the last) below 2^31.
bool fits_int32(const at::Tensor& a, const at::Tensor& b, const MaxPool2dGeometry& g) {
  constexpr int64_t kLimit = int64_t(1) << 30;
  auto span = [](const at::Tensor& t) {
    int64_t last = 0;
    for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
    return std::max(last + 1, t.numel());
  };
  return g.fits_int32() && span(a) < kLimit && span(b) < kLimit;
}

// Calls body(int_t{}) with int32_t where fits_int32 allows, else int64_t.
template <typename Body>
void dispatch_index_width(bool narrow, Body&& body) {
  if (narrow) {
    body(int32_t{});
  } else {
    body(int64_t{});
  }
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_cuda(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                                   at::IntArrayRef dilation, bool ceil_mode) {
  check_max_pool_input(input, "input");
  const c10::cuda::CUDAGuard guard(input.device());
  at::MemoryFormat format;
  const at::Tensor x = max_pool_4d(input, format);
  const MaxPool2dGeometry g =
      max_pool2d_geometry(x.size(2), x.size(3), kernel_size, stride, padding, dilation, ceil_mode);
  at::Tensor out = at::empty({x.size(0), x.size(1), g.out_h, g.out_w}, x.options().memory_format(format));
  at::Tensor argmax = at::empty_like(out, out.options().dtype(max_pool_argmax_dtype(kernel_size)));
  const int64_t outputs = out.numel();
  if (outputs > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastnets::max_pool2d_cuda", [&] {
      dispatch_argmax(argmax.scalar_type(), [&](auto tag) {
        using index_t = decltype(tag);
        dispatch_index_width(fits_int32(x, out, g), [&](auto width) {
          using int_t = decltype(width);
          max_pool2d_forward_kernel<scalar_t, index_t, int_t>
              <<<grid_size(outputs, kThreads), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
                  x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                  argmax.mutable_data_ptr<index_t>(), static_cast<int_t>(outputs), g.as<int_t>(),
                  layout_of<int_t>(x, out, format));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
    });
  }
  if (input.dim() == 3) return {out.squeeze(0), argmax.squeeze(0)};
  return {out, argmax};
}

at::Tensor max_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& argmax,
                                    at::IntArrayRef input_size, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  const c10::cuda::CUDAGuard guard(grad_output.device());
  at::MemoryFormat format;
  at::Tensor a, go;
  const MaxPool2dGeometry g = max_pool2d_backward_geometry(grad_output, argmax, input_size, kernel_size, stride,
                                                           padding, dilation, ceil_mode, format, a, go);
  at::Tensor grad_in = at::empty({go.size(0), go.size(1), g.in_h, g.in_w}, go.options().memory_format(format));
  const int64_t inputs = grad_in.numel();
  if (inputs > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, go.scalar_type(), "fastnets::max_pool2d_backward_cuda", [&] {
      dispatch_argmax(a.scalar_type(), [&](auto tag) {
        using index_t = decltype(tag);
        // argmax shares grad_output's strides (max_pool2d_backward_geometry), so go's span covers it.
        dispatch_index_width(fits_int32(go, grad_in, g), [&](auto width) {
          using int_t = decltype(width);
          max_pool2d_backward_kernel<scalar_t, index_t, int_t>
              <<<grid_size(inputs, kThreads), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
                  go.const_data_ptr<scalar_t>(), a.const_data_ptr<index_t>(), grad_in.mutable_data_ptr<scalar_t>(),
                  static_cast<int_t>(inputs), g.as<int_t>(), layout_of<int_t>(go, grad_in, format));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
    });
  }
  return grad_output.dim() == 3 ? grad_in.squeeze(0) : grad_in;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnets, CUDA, m) {
  m.impl("max_pool2d", &max_pool2d_cuda);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cuda);
}

}  // namespace fastnets
