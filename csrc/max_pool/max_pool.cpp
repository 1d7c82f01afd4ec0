// Max-pooling: operator schemas and CPU kernels. CUDA kernels: max_pool_cuda.cu; the math: max_pool.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/cpu_isa.h"
#include "common/macros.h"
#include "max_pool/max_pool_shape.h"

namespace fastnets {
namespace {

// Strides of a 4-D tensor, named.
struct Strides4d {
  int64_t n, c, h, w;
  explicit Strides4d(const at::Tensor& t) : n(t.stride(0)), c(t.stride(1)), h(t.stride(2)), w(t.stride(3)) {}
};

// One contiguous (H, W) plane. Outputs whose window lies inside the input go in blocks along
// the row, in local arrays (the argmax as int32 until the end), the form in which GCC vectorizes
// the strided loads and selects; kStride > 0 fixes the column stride at compile time. The rest
// (windows over the padding or the edge) take max_pool2d_window. Same rule, same results.
template <int kStride, typename scalar_t, typename index_t>
FASTNETS_ALWAYS_INLINE void max_pool2d_plane(const scalar_t* x, scalar_t* y, index_t* argmax,
                                             const MaxPool2dGeometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t kBlock = 64;
  const int64_t stride_w = kStride > 0 ? kStride : g.stride_w;
  const int64_t span_h = g.dilation_h * (g.kernel_h - 1) + 1, span_w = g.dilation_w * (g.kernel_w - 1) + 1;
  // Columns [first_inside, end_inside) have their whole window inside the input.
  const int64_t first_inside = std::min(g.out_w, (g.pad_w + stride_w - 1) / stride_w);
  const int64_t end_inside = g.in_w + g.pad_w < span_w  // no window fits (and the division would round up)
                                 ? first_inside
                                 : std::max(first_inside, std::min(g.out_w, (g.in_w - span_w + g.pad_w) / stride_w + 1));
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    scalar_t* out = y + oh * g.out_w;
    index_t* arg = argmax + oh * g.out_w;
    const int64_t h0 = oh * g.stride_h - g.pad_h;
    const bool row_inside = h0 >= 0 && h0 + span_h <= g.in_h;
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      if (row_inside && ow == first_inside) ow = end_inside;  // done in blocks below
      if (ow >= g.out_w) break;
      out[ow] = max_pool2d_window<scalar_t, acc_t>(x, g.in_w, 1, g, oh, ow, arg[ow]);
    }
    if (!row_inside) continue;
    for (int64_t ow0 = first_inside; ow0 < end_inside; ow0 += kBlock) {
      const int64_t n = std::min(kBlock, end_inside - ow0);
      acc_t best[kBlock];
      int32_t position[kBlock];
      for (int64_t j = 0; j < n; ++j) {
        best[j] = -std::numeric_limits<acc_t>::infinity();
        position[j] = 0;
      }
      for (int64_t i = 0; i < g.kernel_h; ++i) {
        for (int64_t k = 0; k < g.kernel_w; ++k) {
          const scalar_t* source = x + (h0 + i * g.dilation_h) * g.in_w + ow0 * stride_w - g.pad_w + k * g.dilation_w;
          const int32_t here = static_cast<int32_t>(i * g.kernel_w + k);
          for (int64_t j = 0; j < n; ++j) {
            const acc_t value = static_cast<acc_t>(source[j * stride_w]);
            const bool takes = (value > best[j]) | (value != value);
            best[j] = takes ? value : best[j];
            position[j] = takes ? here : position[j];
          }
        }
      }
      for (int64_t j = 0; j < n; ++j) {
        out[ow0 + j] = static_cast<scalar_t>(best[j]);
        arg[ow0 + j] = static_cast<index_t>(position[j]);
      }
    }
  }
}

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
        const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
        at::parallel_for(0, batch * channels, 1 + 4096 / out_plane, [&](int64_t first, int64_t last) {
          for (int64_t plane = first; plane < last; ++plane) {
            const scalar_t* source = xp + plane * in_plane;
            scalar_t* target = yp + plane * out_plane;
            index_t* positions = ap + plane * out_plane;
            // At most AVX2: pooled rows are short (14 outputs for 28 x 28 inputs), shorter than
            // AVX-512's 16 lanes, so its vector loop would never run (2.3 times slower measured).
            if (g.stride_w == 2) {
              call_with_best_isa([&]() FASTNETS_INLINE_LAMBDA { max_pool2d_plane<2>(source, target, positions, g); },
                                 CpuIsa::kAvx2);
            } else {
              call_with_best_isa([&]() FASTNETS_INLINE_LAMBDA { max_pool2d_plane<0>(source, target, positions, g); },
                                 CpuIsa::kAvx2);
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
        // Plane by plane, each output adds its gradient to its winner, in row-major output
        // order into a zeroed float sum per input (for 16-bit types a buffer, rounded once at
        // the end): the order and precision of max_pool2d_input_grad's gather, so the same bits,
        // with no search. Plane by plane, no two threads touch an input: no atomics.
        constexpr bool kSumInPlace = std::is_same_v<scalar_t, acc_t>;
        const int64_t in_plane = in_h * in_w, out_plane = g.out_h * g.out_w;
        at::parallel_for(0, batch * channels, 1 + 4096 / in_plane, [&](int64_t first, int64_t last) {
          std::vector<acc_t> buffer(kSumInPlace ? 0 : in_plane);
          for (int64_t plane = first; plane < last; ++plane) {
            const scalar_t* grad = gp + plane * out_plane;
            const index_t* positions = ap + plane * out_plane;
            scalar_t* target = ip + plane * in_plane;
            acc_t* sums = kSumInPlace ? reinterpret_cast<acc_t*>(target) : buffer.data();
            std::fill(sums, sums + in_plane, acc_t(0));
            for (int64_t oh = 0; oh < g.out_h; ++oh) {
              for (int64_t ow = 0; ow < g.out_w; ++ow) {
                const int64_t position = positions[oh * g.out_w + ow];
                const int64_t h = oh * g.stride_h - g.pad_h + position / g.kernel_w * g.dilation_h;
                const int64_t w = ow * g.stride_w - g.pad_w + position % g.kernel_w * g.dilation_w;
                // A window with no tap inside the input (all padding, or past the edge through
                // dilation) names a position outside it: its gradient has nowhere to go.
                if (h < 0 || h >= in_h || w < 0 || w >= in_w) continue;
                sums[h * in_w + w] += static_cast<acc_t>(grad[oh * g.out_w + ow]);
              }
            }
            if constexpr (!kSumInPlace) {
              for (int64_t i = 0; i < in_plane; ++i) target[i] = static_cast<scalar_t>(sums[i]);
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
