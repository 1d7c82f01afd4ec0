// Max-pooling: operator schemas and CPU kernels. CUDA kernels: max_pool_cuda.cu; the math: max_pool.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "max_pool/max_pool_shape.h"

namespace fastnets {
namespace {

// Strides of a 4-D tensor, named.
struct Strides4d {
  int64_t n, c, h, w;
  explicit Strides4d(const at::Tensor& t) : n(t.stride(0)), c(t.stride(1)), h(t.stride(2)), w(t.stride(3)) {}
};

std::tuple<at::Tensor, at::Tensor> max_pool2d_cpu(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, bool ceil_mode) {
  check_max_pool_input(input, "input");
  at::MemoryFormat format;
  const at::Tensor x = max_pool_4d(input, format);
  const MaxPool2dGeometry g =
      max_pool2d_geometry(x.size(2), x.size(3), kernel_size, stride, padding, dilation, ceil_mode);
  const int64_t batch = x.size(0), channels = x.size(1);
  at::Tensor out = at::empty({batch, channels, g.out_h, g.out_w}, x.options().memory_format(format));
  at::Tensor argmax = at::empty_like(out, out.options().dtype(max_pool_argmax_dtype(kernel_size)));
  const Strides4d xs(x), ys(out);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastnets::max_pool2d", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = out.mutable_data_ptr<scalar_t>();
    dispatch_argmax(argmax.scalar_type(), [&](auto tag) {
      using index_t = decltype(tag);
      index_t* ap = argmax.mutable_data_ptr<index_t>();
      auto one = [&](int64_t n, int64_t c, int64_t oh, int64_t ow) {
        const int64_t o = n * ys.n + c * ys.c + oh * ys.h + ow * ys.w;
        yp[o] = max_pool2d_window<scalar_t, acc_t>(xp + n * xs.n + c * xs.c, xs.h, xs.w, g, oh, ow, ap[o]);
      };
      if (format == at::MemoryFormat::ChannelsLast) {  // channels innermost, as they lie in memory
        at::parallel_for(0, batch * g.out_h * g.out_w, 1 + 4096 / channels, [&](int64_t first, int64_t last) {
          for (int64_t pixel = first; pixel < last; ++pixel) {
            const int64_t n = pixel / (g.out_h * g.out_w), oh = pixel / g.out_w % g.out_h, ow = pixel % g.out_w;
            for (int64_t c = 0; c < channels; ++c) one(n, c, oh, ow);
          }
        });
      } else {  // plane by plane
        at::parallel_for(0, batch * channels, 1 + 4096 / (g.out_h * g.out_w), [&](int64_t first, int64_t last) {
          for (int64_t plane = first; plane < last; ++plane) {
            const int64_t n = plane / channels, c = plane % channels;
            for (int64_t oh = 0; oh < g.out_h; ++oh) {
              for (int64_t ow = 0; ow < g.out_w; ++ow) one(n, c, oh, ow);
            }
          }
        });
      }
    });
  });
  if (input.dim() == 3) return {out.squeeze(0), argmax.squeeze(0)};
  return {out, argmax};
}

at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& argmax,
                                   at::IntArrayRef input_size, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  at::MemoryFormat format;
  at::Tensor a, go;
  const MaxPool2dGeometry g = max_pool2d_backward_geometry(grad_output, argmax, input_size, kernel_size, stride,
                                                           padding, dilation, ceil_mode, format, a, go);
  const int64_t in_h = g.in_h, in_w = g.in_w;
  const int64_t batch = go.size(0), channels = go.size(1);
  at::Tensor grad_in = at::empty({batch, channels, in_h, in_w}, go.options().memory_format(format));
  const Strides4d gs(go), is(grad_in);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, go.scalar_type(), "fastnets::max_pool2d_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = go.const_data_ptr<scalar_t>();
    scalar_t* ip = grad_in.mutable_data_ptr<scalar_t>();
    dispatch_argmax(a.scalar_type(), [&](auto tag) {
      using index_t = decltype(tag);
      const index_t* ap = a.const_data_ptr<index_t>();
      auto one = [&](int64_t n, int64_t c, int64_t h, int64_t w) {
        const int64_t plane = n * gs.n + c * gs.c;
        ip[n * is.n + c * is.c + h * is.h + w * is.w] =
            max_pool2d_input_grad<scalar_t, acc_t>(gp + plane, ap + plane, gs.h, gs.w, g, h, w);
      };
      if (format == at::MemoryFormat::ChannelsLast) {
        at::parallel_for(0, batch * in_h * in_w, 1 + 4096 / channels, [&](int64_t first, int64_t last) {
          for (int64_t pixel = first; pixel < last; ++pixel) {
            const int64_t n = pixel / (in_h * in_w), h = pixel / in_w % in_h, w = pixel % in_w;
            for (int64_t c = 0; c < channels; ++c) one(n, c, h, w);
          }
        });
      } else {
        at::parallel_for(0, batch * channels, 1 + 4096 / (in_h * in_w), [&](int64_t first, int64_t last) {
          for (int64_t plane = first; plane < last; ++plane) {
            const int64_t n = plane / channels, c = plane % channels;
            for (int64_t h = 0; h < in_h; ++h) {
              for (int64_t w = 0; w < in_w; ++w) one(n, c, h, w);
            }
          }
        });
      }
    });
  });
  return grad_output.dim() == 3 ? grad_in.squeeze(0) : grad_in;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastnets, m) {
  // torch.nn.functional.max_pool2d's semantics. Returns (output, argmax): the winner's position
  // in its window (uint8 for windows of up to 256 elements, else int32), all backward keeps.
  m.def("max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding=0, int[2] dilation=1, "
        "bool ceil_mode=False) -> (Tensor, Tensor)");
  // The input gradient: each input gathers the gradients of the outputs it won.
  m.def("max_pool2d_backward(Tensor grad_output, Tensor argmax, SymInt[] input_size, int[2] kernel_size, "
        "int[2] stride, int[2] padding=0, int[2] dilation=1, bool ceil_mode=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastnets, CPU, m) {
  m.impl("max_pool2d", &max_pool2d_cpu);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cpu);
}

}  // namespace fastnets
