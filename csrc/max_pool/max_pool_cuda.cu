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
struct Index4d {
  int64_t n, c, h, w;
};

__device__ __forceinline__ Index4d unravel(int64_t index, int64_t channels, int64_t height, int64_t width,
                                           bool channels_last) {
  Index4d i;
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

struct Layout {
  int64_t channels;
  bool channels_last;
  int64_t sn, sc, sh, sw;  // strides of the input (forward) or grad_output (backward)
  int64_t on, oc, oh, ow;  // strides of the output (forward) or grad_input (backward)
};

// One thread per output, in the output's memory order so that stores coalesce.
template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
max_pool2d_forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, index_t* __restrict__ argmax,
                          int64_t outputs, MaxPool2dGeometry g, Layout l) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < outputs; index += stride) {
    const Index4d o = unravel(index, l.channels, g.out_h, g.out_w, l.channels_last);
    const int64_t out = o.n * l.on + o.c * l.oc + o.h * l.oh + o.w * l.ow;
    y[out] = max_pool2d_window<scalar_t, acc_t>(x + o.n * l.sn + o.c * l.sc, l.sh, l.sw, g, o.h, o.w, argmax[out]);
  }
}

// One thread per input element, gathering from the outputs it won: no atomics.
template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
max_pool2d_backward_kernel(const scalar_t* __restrict__ grad_out, const index_t* __restrict__ argmax,
                           scalar_t* __restrict__ grad_in, int64_t inputs, MaxPool2dGeometry g, Layout l) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < inputs; index += stride) {
    const Index4d i = unravel(index, l.channels, g.in_h, g.in_w, l.channels_last);
    const int64_t plane = i.n * l.sn + i.c * l.sc;
    grad_in[i.n * l.on + i.c * l.oc + i.h * l.oh + i.w * l.ow] =
        max_pool2d_input_grad<scalar_t, acc_t>(grad_out + plane, argmax + plane, l.sh, l.sw, g, i.h, i.w);
  }
}

Layout layout_of(const at::Tensor& source, const at::Tensor& target, at::MemoryFormat format) {
  return Layout{source.size(1), format == at::MemoryFormat::ChannelsLast,
                source.stride(0), source.stride(1), source.stride(2), source.stride(3),
                target.stride(0), target.stride(1), target.stride(2), target.stride(3)};
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
    const Layout l = layout_of(x, out, format);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastnets::max_pool2d_cuda", [&] {
      dispatch_argmax(argmax.scalar_type(), [&](auto tag) {
        using index_t = decltype(tag);
        max_pool2d_forward_kernel<scalar_t, index_t>
            <<<grid_size(outputs, kThreads), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
                x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), argmax.mutable_data_ptr<index_t>(),
                outputs, g, l);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
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
    const Layout l = layout_of(go, grad_in, format);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, go.scalar_type(), "fastnets::max_pool2d_backward_cuda", [&] {
      dispatch_argmax(a.scalar_type(), [&](auto tag) {
        using index_t = decltype(tag);
        max_pool2d_backward_kernel<scalar_t, index_t>
            <<<grid_size(inputs, kThreads), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
                go.const_data_ptr<scalar_t>(), a.const_data_ptr<index_t>(), grad_in.mutable_data_ptr<scalar_t>(),
                inputs, g, l);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
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
