// Maxout: operator schemas and CPU kernels. CUDA kernels: maxout_cuda.cu; the math: maxout.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "common/checks.h"
#include "common/cpu_isa.h"
#include "common/macros.h"
#include "maxout/maxout_shape.h"

namespace fastnets {
namespace {

constexpr int64_t kGrain = 16384;  // elements per task

// Rows [first_row, last_row) of (outer, group). kPieces > 0 fixes pieces at compile time, which
// lets the inner == 1 case ((N, F) activations) vectorize across rows.
template <typename scalar_t, int kPieces>
FASTNETS_ALWAYS_INLINE void maxout_forward_rows(const scalar_t* x, scalar_t* y, uint8_t* argmax, const MaxoutShape& s,
                                                int64_t first_row, int64_t last_row) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t pieces = kPieces > 0 ? kPieces : s.pieces;
  if (s.inner == 1) {
    // Blocks of rows in local arrays (the argmax as int32 until the end): the form in which
    // GCC vectorizes the strided loads and the selects.
    constexpr int64_t kBlock = 64;
    int64_t row = first_row;
    for (; row + kBlock <= last_row; row += kBlock) {
      acc_t best[kBlock];
      int32_t arg[kBlock];
      for (int64_t j = 0; j < kBlock; ++j) {
        best[j] = static_cast<acc_t>(x[(row + j) * pieces]);
        arg[j] = 0;
      }
      for (int64_t k = 1; k < pieces; ++k) {
        for (int64_t j = 0; j < kBlock; ++j) {
          const acc_t candidate = static_cast<acc_t>(x[(row + j) * pieces + k]);
          const bool takes = maxout_takes(candidate, best[j]);
          best[j] = takes ? candidate : best[j];
          arg[j] = takes ? static_cast<int32_t>(k) : arg[j];
        }
      }
      for (int64_t j = 0; j < kBlock; ++j) {
        y[row + j] = static_cast<scalar_t>(best[j]);
        argmax[row + j] = static_cast<uint8_t>(arg[j]);
      }
    }
    for (; row < last_row; ++row) {
      uint8_t arg;
      y[row] = maxout_group<scalar_t, acc_t>(x + row * pieces, 1, pieces, arg);
      argmax[row] = arg;
    }
    return;
  }
  // Piece by piece over blocks of the contiguous inner run, in local arrays as above.
  constexpr int64_t kBlock = 64;
  for (int64_t row = first_row; row < last_row; ++row) {
    const scalar_t* group = x + row * pieces * s.inner;
    for (int64_t i0 = 0; i0 < s.inner; i0 += kBlock) {
      const int64_t n = std::min(kBlock, s.inner - i0);
      acc_t best[kBlock];
      int32_t arg[kBlock];
      for (int64_t j = 0; j < n; ++j) {
        best[j] = static_cast<acc_t>(group[i0 + j]);
        arg[j] = 0;
      }
      for (int64_t k = 1; k < pieces; ++k) {
        const scalar_t* piece = group + k * s.inner + i0;
        for (int64_t j = 0; j < n; ++j) {
          const acc_t candidate = static_cast<acc_t>(piece[j]);
          const bool takes = maxout_takes(candidate, best[j]);
          best[j] = takes ? candidate : best[j];
          arg[j] = takes ? static_cast<int32_t>(k) : arg[j];
        }
      }
      for (int64_t j = 0; j < n; ++j) {
        y[row * s.inner + i0 + j] = static_cast<scalar_t>(best[j]);
        argmax[row * s.inner + i0 + j] = static_cast<uint8_t>(arg[j]);
      }
    }
  }
}

template <typename scalar_t, int kPieces>
FASTNETS_ALWAYS_INLINE void maxout_backward_rows(const scalar_t* grad_out, const uint8_t* argmax, scalar_t* grad_in,
                                                 const MaxoutShape& s, int64_t first_row, int64_t last_row) {
  const int64_t pieces = kPieces > 0 ? kPieces : s.pieces;
  if (s.inner == 1) {
    for (int64_t row = first_row; row < last_row; ++row) {
      for (int64_t k = 0; k < pieces; ++k) grad_in[row * pieces + k] = argmax[row] == k ? grad_out[row] : scalar_t(0);
    }
    return;
  }
  for (int64_t row = first_row; row < last_row; ++row) {
    const scalar_t* g = grad_out + row * s.inner;
    const uint8_t* arg = argmax + row * s.inner;
    scalar_t* group = grad_in + row * pieces * s.inner;
    for (int64_t k = 0; k < pieces; ++k) {
      scalar_t* piece = group + k * s.inner;
      for (int64_t i = 0; i < s.inner; ++i) piece[i] = arg[i] == k ? g[i] : scalar_t(0);
    }
  }
}

// fn(std::integral_constant<int, kPieces>) for the common piece counts, kPieces = 0 otherwise.
template <typename Fn>
void dispatch_pieces(int64_t pieces, const Fn& fn) {
  switch (pieces) {
    case 2: fn(std::integral_constant<int, 2>()); break;
    case 3: fn(std::integral_constant<int, 3>()); break;
    case 4: fn(std::integral_constant<int, 4>()); break;
    default: fn(std::integral_constant<int, 0>()); break;
  }
}

std::tuple<at::Tensor, at::Tensor> maxout_cpu(const at::Tensor& input, int64_t pieces, int64_t dim) {
  check_training_dtype(input, "input");
  const MaxoutShape s = maxout_shape(input.sizes(), pieces, dim, "input");
  const at::Tensor in = input.contiguous();
  const auto out_sizes = maxout_sizes(in.sizes(), s.dim, 1, pieces);
  at::Tensor out = at::empty(out_sizes, in.options());
  at::Tensor argmax = at::empty(out_sizes, in.options().dtype(at::kByte));
  const int64_t rows = s.outer * s.groups;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "fastnets::maxout", [&] {
    const scalar_t* x = in.const_data_ptr<scalar_t>();
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    uint8_t* a = argmax.mutable_data_ptr<uint8_t>();
    dispatch_pieces(s.pieces, [&](auto pieces) {
      at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, s.pieces * s.inner)), [&](int64_t first, int64_t last) {
        call_with_best_isa([&]() FASTNETS_INLINE_LAMBDA {
          maxout_forward_rows<scalar_t, decltype(pieces)::value>(x, y, a, s, first, last);
        });
      });
    });
  });
  return {out, argmax};
}

at::Tensor maxout_backward_cpu(const at::Tensor& grad_output, const at::Tensor& argmax, int64_t pieces, int64_t dim) {
  std::vector<int64_t> in_sizes;
  const MaxoutShape s = maxout_backward_shape(grad_output, argmax, pieces, dim, in_sizes);
  const at::Tensor g = grad_output.contiguous();
  const at::Tensor a = argmax.contiguous();
  at::Tensor grad_in = at::empty(in_sizes, g.options());
  const int64_t rows = s.outer * s.groups;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "fastnets::maxout_backward", [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const uint8_t* ap = a.const_data_ptr<uint8_t>();
    scalar_t* gi = grad_in.mutable_data_ptr<scalar_t>();
    dispatch_pieces(s.pieces, [&](auto pieces) {
      at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, s.pieces * s.inner)), [&](int64_t first, int64_t last) {
        call_with_best_isa([&]() FASTNETS_INLINE_LAMBDA {
          maxout_backward_rows<scalar_t, decltype(pieces)::value>(gp, ap, gi, s, first, last);
        });
      });
    });
  });
  return grad_in;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastnets, m) {
  // Max over groups of `pieces` consecutive entries of dim. Returns (output, argmax): the
  // winner's position in its group, uint8, all that backward keeps.
  m.def("maxout(Tensor input, int pieces, int dim=1) -> (Tensor, Tensor)");
  // grad_output routed to each group's argmax piece; zeros elsewhere.
  m.def("maxout_backward(Tensor grad_output, Tensor argmax, int pieces, int dim=1) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastnets, CPU, m) {
  m.impl("maxout", &maxout_cpu);
  m.impl("maxout_backward", &maxout_backward_cpu);
}

}  // namespace fastnets
