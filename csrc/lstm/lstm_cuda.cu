// LSTM layer: CUDA pointwise kernels and GEMMs (cuBLAS on the current stream); the loop:
// lstm_layer.h. Schemas and CPU kernels: lstm.cpp; the cell's math: lstm.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/cuda_utils.cuh"
#include "lstm/lstm.h"
#include "lstm/lstm_layer.h"

#if defined(FASTNETS_WITH_CUBLAS)  // setup.py: where cuBLAS's headers and library were found
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContextLight.h>

#include <algorithm>
#include <limits>
#endif

namespace fastnets {
namespace {

constexpr int kThreads = 256;

// One thread per (batch entry, hidden unit), grid-stride.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
lstm_forward_kernel(scalar_t* __restrict__ gates, const at::opmath_type<scalar_t>* __restrict__ bias,
                    const scalar_t* __restrict__ c_prev, scalar_t* __restrict__ c, scalar_t* __restrict__ h,
                    scalar_t* __restrict__ c_copy, scalar_t* __restrict__ h_copy, int64_t batch, int64_t hidden) {
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
    const scalar_t c_value = static_cast<scalar_t>(v.c), h_value = static_cast<scalar_t>(v.h);
    c[k] = c_value;
    h[k] = h_value;
    if (c_copy != nullptr) {  // the final states of a padded batch (both or neither)
      c_copy[k] = c_value;
      h_copy[k] = h_value;
    }
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
                                 at::Tensor& h, const at::Tensor& c_copy, const at::Tensor& h_copy) {
  TORCH_INTERNAL_ASSERT(c_copy.defined() == h_copy.defined());
  const int64_t batch = c.size(0), hidden = c.size(1);
  if (batch * hidden == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gates.scalar_type(), "fastnets::lstm_forward_cuda", [&] {
    lstm_forward_kernel<<<grid_size(batch * hidden, kThreads), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        gates.mutable_data_ptr<scalar_t>(), bias.const_data_ptr<at::opmath_type<scalar_t>>(),
        c_prev.const_data_ptr<scalar_t>(),
        c.mutable_data_ptr<scalar_t>(), h.mutable_data_ptr<scalar_t>(),
        c_copy.defined() ? c_copy.mutable_data_ptr<scalar_t>() : nullptr,
        h_copy.defined() ? h_copy.mutable_data_ptr<scalar_t>() : nullptr, batch, hidden);
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

#if defined(FASTNETS_WITH_CUBLAS)
// A row-major GEMM operand x (rows x cols) as cuBLAS reads it. cuBLAS is column-major, so c = a b
// is computed as c^T = b^T a^T: x^T is x's memory as stored when x's columns are contiguous (N),
// and x's memory transposed when its rows are (T).
struct BlasOperand {
  cublasOperation_t op;
  int64_t ld;  // 0: neither layout
};

BlasOperand blas_operand(const at::Tensor& x) {
  const int64_t rows = x.size(0), cols = x.size(1);
  if (x.stride(1) == 1 && x.stride(0) >= std::max<int64_t>(1, cols)) return {CUBLAS_OP_N, x.stride(0)};
  if (x.stride(0) == 1 && x.stride(1) >= std::max<int64_t>(1, rows)) return {CUBLAS_OP_T, x.stride(1)};
  return {CUBLAS_OP_N, 0};
}

// Whether float32 GEMMs may run in TF32: as torch.nn.LSTM decides on CUDA (cudnn_tf32: its cuDNN
// kernels follow torch.backends.cudnn.allow_tf32 where torch has cuDNN and it is enabled), else as
// torch.mm and torch.nn.LSTMCell decide (torch.backends.cuda.matmul.allow_tf32). Read when each
// op runs, as torch's switches are: the backward follows them as they are then.
bool float32_gemms_in_tf32(bool cudnn_tf32) {
  const at::Context& context = at::globalContext();
  if (cudnn_tf32 && at::Context::hasCuDNN() && context.userEnabledCuDNN()) {
    return context.allowTF32CuDNN(at::Float32Op::RNN);
  }
  return context.allowTF32CuBLAS();
}

// c (+)= a b by one cublasGemmEx on `handle` (torch's, for the current stream): at::mm's
// arithmetic (float32 in TF32 when `tf32`, 16-bit types accumulated in float) without its
// per-call overhead, which the step loop pays every step. False (nothing done) for what it does
// not take: empty or huge sizes, layouts with neither unit stride, and settings whose checks or
// math modes at::mm applies (deterministic algorithms, reduced-precision reductions of 16-bit
// types disallowed, a NoTF32Guard).
bool cublas_multiply(cublasHandle_t handle, const at::Tensor& a, const at::Tensor& b, at::Tensor& c, bool accumulate,
                     bool tf32) {
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  if (m == 0 || n == 0 || k == 0 || m > kMax || n > kMax || k > kMax) return false;
  const BlasOperand ob = blas_operand(b), oa = blas_operand(a);
  const int64_t ldc = c.stride(0);
  if (ob.ld == 0 || oa.ld == 0 || ob.ld > kMax || oa.ld > kMax || c.stride(1) != 1 || ldc < n || ldc > kMax) {
    return false;
  }
  const at::Context& context = at::globalContext();
  constexpr auto kDefaultReduction = at::CuBLASReductionOption::AllowReducedPrecisionWithSplitK;
  if (context.deterministicAlgorithms() ||
      (a.scalar_type() == at::kHalf && context.allowFP16ReductionCuBLAS() != kDefaultReduction) ||
      (a.scalar_type() == at::kBFloat16 && context.allowBF16ReductionCuBLAS() != kDefaultReduction) ||
      (a.scalar_type() == at::kFloat && at::NoTF32Guard::should_disable_tf32())) {
    return false;
  }
  const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  const double one_double = 1.0, beta_double = accumulate ? 1.0 : 0.0;
  const void* alpha_ptr = &one;
  const void* beta_ptr = &beta;
  cudaDataType_t type;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  switch (a.scalar_type()) {
    case at::kFloat:
      type = CUDA_R_32F;
      if (tf32) compute = CUBLAS_COMPUTE_32F_FAST_TF32;
      break;
    case at::kDouble:
      type = CUDA_R_64F;
      compute = CUBLAS_COMPUTE_64F;
      alpha_ptr = &one_double;
      beta_ptr = &beta_double;
      break;
    case at::kHalf:
      type = CUDA_R_16F;
      break;
    case at::kBFloat16:
      type = CUDA_R_16BF;
      break;
    default:
      return false;
  }
  // torch leaves the handle in TF32 tensor-op math while torch.backends.cuda.matmul.allow_tf32 is
  // on, and cuBLAS then takes TF32 for CUBLAS_COMPUTE_32F too: a float32 product that must stay
  // float32 (cuDNN's switch off, the matmul one on) runs in the default math mode, as torch.mm
  // does with TF32 off, and the handle gets its mode back after.
  const bool strict_float32 = type == CUDA_R_32F && !tf32;
  cublasMath_t saved_mode = CUBLAS_DEFAULT_MATH;
  if (strict_float32) {
    TORCH_CHECK(cublasGetMathMode(handle, &saved_mode) == CUBLAS_STATUS_SUCCESS &&
                    cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH) == CUBLAS_STATUS_SUCCESS,
                "fastnets LSTM: cannot set cuBLAS's math mode");
  }
  const cublasStatus_t status = cublasGemmEx(
      handle, ob.op, oa.op, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), alpha_ptr,
      b.const_data_ptr(), type, static_cast<int>(ob.ld), a.const_data_ptr(), type, static_cast<int>(oa.ld), beta_ptr,
      c.mutable_data_ptr(), type, static_cast<int>(ldc), compute, CUBLAS_GEMM_DEFAULT);
  const bool restored = !strict_float32 || cublasSetMathMode(handle, saved_mode) == CUBLAS_STATUS_SUCCESS;
  TORCH_CHECK(status == CUBLAS_STATUS_SUCCESS, "fastnets LSTM: cublasGemmEx failed with status ",
              static_cast<int>(status));
  TORCH_CHECK(restored, "fastnets LSTM: cannot restore cuBLAS's math mode");
  return true;
}
#endif

// The CUDA side of lstm_layer.h: cuBLAS GEMMs on the current stream (directly where setup.py
// found cuBLAS, else through at::mm, which then follows torch.mm's TF32 setting).
struct CudaLstm {
  using Right = at::Tensor;
  bool cudnn_tf32 = false;  // the op's argument: whose TF32 setting float32 GEMMs follow
#if defined(FASTNETS_WITH_CUBLAS)
  bool tf32 = float32_gemms_in_tf32(cudnn_tf32);  // read once per call of the op
  // Once per call of the op too: torch's getter sets the handle's stream, workspace and math mode
  // each time, host time that every step would pay while the GPU waits.
  cublasHandle_t blas = at::cuda::getCurrentCUDABlasHandle();
#endif

  static Right prepare(const at::Tensor& b, int64_t /*rows*/, int64_t /*fewest*/) { return b; }

  void multiply(const at::Tensor& a, const Right& b, at::Tensor& c, bool accumulate) const {
#if defined(FASTNETS_WITH_CUBLAS)
    if (cublas_multiply(blas, a, b, c, accumulate, tf32)) return;
#endif
    aten_multiply(a, b, c, accumulate);
  }

  // Reading h0's and w_hh's values would make the host wait for the GPU: the GEMM runs.
  static bool zero_state_products(const at::Tensor& /*h0*/, const at::Tensor& /*w_hh*/) { return false; }

  // One GEMM for all steps' input projections: on a GPU the larger product fills more of the chip.
  static bool project_per_step(const LstmSteps& /*steps*/, const at::Tensor& /*gates*/) { return false; }

  static constexpr auto forward = lstm_pointwise_forward_cuda;
  static constexpr auto backward = lstm_pointwise_backward_cuda;
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_cuda(
    const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    bool reverse, bool cudnn_tf32, const std::optional<at::Tensor>& batch_sizes) {
  const c10::cuda::CUDAGuard guard(input.device());
  return lstm_layer_forward(CudaLstm{cudnn_tf32}, input, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_backward_cuda(
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
    const std::optional<at::Tensor>& grad_c_n, const at::Tensor& input,
    const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& output, const at::Tensor& gates, const at::Tensor& cell_states, bool reverse,
    std::array<bool, 4> output_mask, bool cudnn_tf32,
    const std::optional<at::Tensor>& batch_sizes) {
  const c10::cuda::CUDAGuard guard(input.device());
  return lstm_layer_backward(CudaLstm{cudnn_tf32}, grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih, w_hh,
                             output, gates, cell_states, reverse, output_mask, batch_sizes);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnets, CUDA, m) {
  m.impl("lstm_layer", &lstm_layer_cuda);
  m.impl("lstm_layer_backward", &lstm_layer_backward_cuda);
}

}  // namespace fastnets
