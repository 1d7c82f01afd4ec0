// LSTM layer: CUDA pointwise kernels (the loop and GEMMs: lstm_layer.h, cuBLAS on the current
// stream). Schemas and CPU kernels: lstm.cpp; the cell's math: lstm.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/cuda_utils.cuh"
#include "lstm/lstm.h"
#include "lstm/lstm_layer.h"

namespace fastnets {
namespace {

constexpr int kThreads = 256;

// One thread per (batch entry, hidden unit), grid-stride.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
lstm_forward_kernel(scalar_t* __restrict__ gates, const at::opmath_type<scalar_t>* __restrict__ bias,
                    const scalar_t* __restrict__ c_prev, scalar_t* __restrict__ c, scalar_t* __restrict__ h,
                    int64_t batch, int64_t hidden) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = batch * hidden;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = k / hidden, j = k - b * hidden;
    scalar_t* g = gates + b * 4 * hidden + j;
    const auto a = [&](int64_t gate) { return static_cast<acc_t>(g[gate * hidden]) + bias[gate * hidden + j]; };
    const auto v = lstm_forward_element<acc_t>(a(0), a(1), a(2), a(3), c_prev[k]);
    g[0] = static_cast<scalar_t>(v.i);
    g[hidden] = static_cast<scalar_t>(v.f);
    g[2 * hidden] = static_cast<scalar_t>(v.g);
    g[3 * hidden] = static_cast<scalar_t>(v.o);
    c[k] = static_cast<scalar_t>(v.c);
    h[k] = static_cast<scalar_t>(v.h);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
lstm_backward_kernel(const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ grad_h,
                     scalar_t* __restrict__ grad_c, const scalar_t* __restrict__ gates,
                     const scalar_t* __restrict__ c_prev, const scalar_t* __restrict__ c,
                     scalar_t* __restrict__ grad_gates, int64_t batch, int64_t hidden) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = batch * hidden;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = k / hidden, j = k - b * hidden;
    const scalar_t* g = gates + b * 4 * hidden + j;
    scalar_t* d = grad_gates + b * 4 * hidden + j;
    const acc_t dh = (grad_output != nullptr ? static_cast<acc_t>(grad_output[k]) : acc_t(0)) +
                     static_cast<acc_t>(grad_h[k]);
    const auto r = lstm_backward_element<acc_t>(dh, grad_c[k], g[0], g[hidden], g[2 * hidden], g[3 * hidden],
                                                c_prev[k], c[k]);
    d[0] = static_cast<scalar_t>(r.a_i);
    d[hidden] = static_cast<scalar_t>(r.a_f);
    d[2 * hidden] = static_cast<scalar_t>(r.a_g);
    d[3 * hidden] = static_cast<scalar_t>(r.a_o);
    grad_c[k] = static_cast<scalar_t>(r.c_prev);
  }
}

void lstm_pointwise_forward_cuda(at::Tensor& gates, const at::Tensor& bias, const at::Tensor& c_prev, at::Tensor& c,
                                 at::Tensor& h) {
  const int64_t batch = c.size(0), hidden = c.size(1);
  if (batch * hidden == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gates.scalar_type(), "fastnets::lstm_forward_cuda", [&] {
    lstm_forward_kernel<<<grid_size(batch * hidden, kThreads), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        gates.mutable_data_ptr<scalar_t>(), bias.const_data_ptr<at::opmath_type<scalar_t>>(),
        c_prev.const_data_ptr<scalar_t>(),
        c.mutable_data_ptr<scalar_t>(), h.mutable_data_ptr<scalar_t>(), batch, hidden);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void lstm_pointwise_backward_cuda(const at::Tensor& grad_output, const at::Tensor& grad_h, at::Tensor& grad_c,
                                  const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& c,
                                  at::Tensor& grad_gates) {
  const int64_t batch = c.size(0), hidden = c.size(1);
  if (batch * hidden == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gates.scalar_type(), "fastnets::lstm_backward_cuda", [&] {
    lstm_backward_kernel<<<grid_size(batch * hidden, kThreads), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        grad_output.defined() ? grad_output.const_data_ptr<scalar_t>() : nullptr, grad_h.const_data_ptr<scalar_t>(),
        grad_c.mutable_data_ptr<scalar_t>(),
        gates.const_data_ptr<scalar_t>(), c_prev.const_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(),
        grad_gates.mutable_data_ptr<scalar_t>(), batch, hidden);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// The CUDA side of lstm_layer.h: cuBLAS GEMMs (at::mm) on the current stream.
struct CudaLstm {
  using Right = at::Tensor;

  static Right prepare(const at::Tensor& b, int64_t /*rows*/) { return b; }

  static void multiply(const at::Tensor& a, const Right& b, at::Tensor& c, bool accumulate) {
    aten_multiply(a, b, c, accumulate);
  }

  static constexpr auto forward = lstm_pointwise_forward_cuda;
  static constexpr auto backward = lstm_pointwise_backward_cuda;
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_cuda(
    const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    bool reverse) {
  const c10::cuda::CUDAGuard guard(input.device());
  return lstm_layer_forward<CudaLstm>(input, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_backward_cuda(
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
    const std::optional<at::Tensor>& grad_c_n, const at::Tensor& input,
    const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& output, const at::Tensor& gates, const at::Tensor& cell_states, bool reverse,
    std::array<bool, 3> output_mask) {
  const c10::cuda::CUDAGuard guard(input.device());
  return lstm_layer_backward<CudaLstm>(grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih, w_hh, output, gates,
                                       cell_states, reverse, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnets, CUDA, m) {
  m.impl("lstm_layer", &lstm_layer_cuda);
  m.impl("lstm_layer_backward", &lstm_layer_backward_cuda);
}

}  // namespace fastnets
