// LSTM layer: operator schemas and CPU pointwise kernels. CUDA kernels: lstm_cuda.cu; the loop
// through time: lstm_layer.h; the cell's math: lstm.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>

#include "common/cpu_isa.h"
#include "common/cpu_matmul.h"
#include "common/cpu_scan.h"
#include "lstm/lstm.h"
#include "lstm/lstm_layer.h"

namespace fastnets {
namespace {

// Rows (batch entries) split across threads, at least kMinTaskUnits units each; each row's hidden
// units in one vectorized loop, written as a function of restrict pointers so that GCC knows the
// arrays do not overlap.
constexpr int64_t kMinTaskUnits = 1 << 14;

int64_t grain_rows(int64_t hidden) {
  return std::max<int64_t>(1, kMinTaskUnits / std::max<int64_t>(hidden, 1));
}

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
FASTNETS_ALWAYS_INLINE void forward_row(int64_t hidden, scalar_t* __restrict__ gi, scalar_t* __restrict__ gf,
                                        scalar_t* __restrict__ gg, scalar_t* __restrict__ go,
                                        const acc_t* __restrict__ bias, const scalar_t* __restrict__ c_prev,
                                        scalar_t* __restrict__ c, scalar_t* __restrict__ h) {
  const auto a = [bias](const scalar_t* gate, int64_t gate_index, int64_t j) FASTNETS_INLINE_LAMBDA {
    return static_cast<acc_t>(gate[j]) + bias[gate_index + j];
  };
  for (int64_t j = 0; j < hidden; ++j) {
    const auto v = lstm_forward_element<acc_t>(a(gi, 0, j), a(gf, hidden, j), a(gg, 2 * hidden, j),
                                               a(go, 3 * hidden, j), c_prev[j]);
    gi[j] = static_cast<scalar_t>(v.i);
    gf[j] = static_cast<scalar_t>(v.f);
    gg[j] = static_cast<scalar_t>(v.g);
    go[j] = static_cast<scalar_t>(v.o);
    c[j] = static_cast<scalar_t>(v.c);
    h[j] = static_cast<scalar_t>(v.h);
  }
}

// kGradOutput: whether grad_output exists (autograd passes none when the loss ignores the output).
template <bool kGradOutput, typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
FASTNETS_ALWAYS_INLINE void backward_row(int64_t hidden, const scalar_t* __restrict__ grad_output,
                                         const scalar_t* __restrict__ grad_h, scalar_t* __restrict__ grad_c,
                                         const scalar_t* __restrict__ gates, const scalar_t* __restrict__ c_prev,
                                         const scalar_t* __restrict__ c, scalar_t* __restrict__ grad_gates) {
  for (int64_t j = 0; j < hidden; ++j) {
    const acc_t dh = (kGradOutput ? static_cast<acc_t>(grad_output[j]) : acc_t(0)) + static_cast<acc_t>(grad_h[j]);
    const auto d = lstm_backward_element<acc_t>(dh, grad_c[j], gates[j], gates[hidden + j], gates[2 * hidden + j],
                                                gates[3 * hidden + j], c_prev[j], c[j]);
    grad_gates[j] = static_cast<scalar_t>(d.a_i);
    grad_gates[hidden + j] = static_cast<scalar_t>(d.a_f);
    grad_gates[2 * hidden + j] = static_cast<scalar_t>(d.a_g);
    grad_gates[3 * hidden + j] = static_cast<scalar_t>(d.a_o);
    grad_c[j] = static_cast<scalar_t>(d.c_prev);
  }
}

void lstm_pointwise_forward_cpu(at::Tensor& gates, const at::Tensor& bias, const at::Tensor& c_prev, at::Tensor& c,
                                at::Tensor& h, const at::Tensor& c_copy, const at::Tensor& h_copy) {
  const int64_t batch = c.size(0), hidden = c.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gates.scalar_type(), "fastnets::lstm_forward", [&] {
    scalar_t* g = gates.mutable_data_ptr<scalar_t>();
    const auto* bs = bias.const_data_ptr<at::opmath_type<scalar_t>>();
    const scalar_t* cp = c_prev.const_data_ptr<scalar_t>();
    scalar_t* cn = c.mutable_data_ptr<scalar_t>();
    scalar_t* hn = h.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch, grain_rows(hidden), [&](int64_t first, int64_t last) {
      call_with_best_isa([&]() FASTNETS_INLINE_LAMBDA {
        for (int64_t b = first; b < last; ++b) {
          scalar_t* row = g + b * 4 * hidden;
          forward_row(hidden, row, row + hidden, row + 2 * hidden, row + 3 * hidden, bs, cp + b * hidden,
                      cn + b * hidden, hn + b * hidden);
        }
      });
    });
  });
  if (c_copy.defined()) c_copy.copy_(c);  // no launch to save on the CPU: copied after the pass
  if (h_copy.defined()) h_copy.copy_(h);
}

void lstm_pointwise_backward_cpu(const at::Tensor& grad_output, const at::Tensor& grad_h, at::Tensor& grad_c,
                                 const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& c,
                                 at::Tensor& grad_gates) {
  const int64_t batch = c.size(0), hidden = c.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gates.scalar_type(), "fastnets::lstm_backward", [&] {
    const scalar_t* go = grad_output.defined() ? grad_output.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* gh = grad_h.const_data_ptr<scalar_t>();
    scalar_t* gc = grad_c.mutable_data_ptr<scalar_t>();
    const scalar_t* g = gates.const_data_ptr<scalar_t>();
    const scalar_t* cp = c_prev.const_data_ptr<scalar_t>();
    const scalar_t* cn = c.const_data_ptr<scalar_t>();
    scalar_t* dg = grad_gates.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch, grain_rows(hidden), [&](int64_t first, int64_t last) {
      call_with_best_isa([&]() FASTNETS_INLINE_LAMBDA {
        for (int64_t b = first; b < last; ++b) {
          const int64_t row = b * hidden;
          if (go != nullptr) {
            backward_row<true>(hidden, go + row, gh + row, gc + row, g + 4 * row, cp + row, cn + row, dg + 4 * row);
          } else {
            backward_row<false>(hidden, go, gh + row, gc + row, g + 4 * row, cp + row, cn + row, dg + 4 * row);
          }
        }
      });
    });
  });
}

// The CPU side of lstm_layer.h: float and double GEMMs by cpu_matmul.h's tiled GEMM, float16 and
// bfloat16 ones by at::mm, and so are products too small to repay a copy of their right operand
// (fewer than kTiledMinRows rows in all against a transposed weight) unless that operand is
// taller than wide or a product has few rows: BLAS may split such a product's work over threads
// differently, with other roundings (the weight gradients of a small hidden size, 3300 deep, came
// out different for 1 and 3 threads; torch 2.14's float32 mm gives other bits for 1 and 2 threads
// at 5-7 and 9-11 rows). A product of few rows by a transposed weight takes dot products of the
// weight's rows in place (dot_product_matmul), deterministic too, without the copy.
// kTiledMinRows: where the copy and the tiled GEMM overtake at::mm (fastnets::matmul, which
// copies, against torch.mm, of a (rows, H) by a transposed (4H, H): H 512: 16 rows 0.31 / 0.29 ms,
// 32 rows 0.35 / 0.40, 64 rows 0.45 / 0.70 (a cell's step); H 128 and 1024 alike). From
// kPackedMinRows on, an operand the GEMM could read in place is copied too: its panels then lie
// contiguous; below, the copy costs more than it saves (a cell's backward).
constexpr int64_t kTiledMinRows = 32;
constexpr int64_t kPackedMinRows = 256;
// The input projections step by step (CpuLstm::project_per_step) where a step's gates fit half
// of the development machine's 1 MB L2 (tuned there, on 2 cores: other caches and core counts
// may want other limits) and its GEMMs have the rows to run at full rate: each step's recurrent
// GEMM then adds to gates just written, instead of to gates that one GEMM for all steps wrote
// out to memory long before (T 50, 2 threads, ms, one GEMM / per step: B 64 H 512 forward
// 65.3-67.8 / 63.6-64.5, B 32 H 512 33.5-34.5 / 33.2-33.7, B 128 H 256 38.4-41.1 / 35.0-40.2;
// with 1 MB of gates per step it lost: B 128 H 512 143.8-162.8 / 151.5-156.4, B 64 H 1024
// 286.6-312.1 / 307.0-321.6, B 256 H 512 279.8-296.4 / 286.0-311.8).
constexpr int64_t kPerStepProjectionMinRows = 32;
constexpr int64_t kPerStepProjectionMaxBytes = int64_t(512) << 10;

struct CpuLstm {
  struct Right {
    GemmRightOperand tiled;  // fastnets' GEMM, when defined
    at::Tensor plain;        // else at::mm's operand, or the dot products' for products of few rows
  };

  // b for products of `rows` rows in all, the smallest of `fewest` rows.
  static Right prepare(const at::Tensor& b, int64_t rows, int64_t fewest) {
    const bool tiled = cpu_matmul_supports(b.scalar_type());
    if (tiled && rows >= kPackedMinRows) return Right{prepare_right_operand(b), {}};
    if (usable_in_place(b)) return Right{right_operand_in_place(b), {}};
    if (tiled && rows >= kTiledMinRows) return Right{prepare_right_operand(b), {}};
    const bool few_rows = fewest < kDotProductMaxRows;
    if (tiled && few_rows && dot_product_operand(b)) return Right{{}, b};  // no copy of a weight
    if (tiled && (b.size(0) > b.size(1) || few_rows)) return Right{prepare_right_operand(b), {}};
    return Right{{}, b};
  }

  static void multiply(const at::Tensor& a, const Right& b, at::Tensor& c, bool accumulate) {
    if (b.tiled.data.defined()) {
      cpu_matmul(a, b.tiled, c, accumulate);
    } else if (a.size(0) < kDotProductMaxRows && dot_product_operand(b.plain)) {
      dot_product_matmul(a, b.plain, c, accumulate);
    } else {
      aten_multiply(a, b.plain, c, accumulate);
    }
  }

  // A scan of h0 and, where it is all zeros, of w_hh (B64 H512, by AVX-512: 0.05 ms, against
  // 0.6-1.2 ms for the GEMM it saves; compiled for the baseline, 0.14 ms).
  // h0 is contiguous (lstm_layer_forward's copy); w_hh is copied only where h0 is all zeros.
  static bool zero_state_products(const at::Tensor& h0, const at::Tensor& w_hh) {
    if (!cpu_matmul_supports(h0.scalar_type())) return false;
    bool zero = false;
    AT_DISPATCH_FLOATING_TYPES(h0.scalar_type(), "fastnets::zero_state_products", [&] {
      const scalar_t* h_values = h0.const_data_ptr<scalar_t>();
      const int64_t h_count = h0.numel();
      call_with_best_isa([&]() FASTNETS_INLINE_LAMBDA { zero = all_zero(h_values, h_count); });
      if (!zero) return;
      const at::Tensor w = w_hh.contiguous();
      const scalar_t* w_values = w.const_data_ptr<scalar_t>();
      const int64_t w_count = w.numel();
      call_with_best_isa([&]() FASTNETS_INLINE_LAMBDA { zero = all_finite(w_values, w_count); });
    });
    return zero;
  }

  static bool project_per_step(const LstmSteps& steps, const at::Tensor& gates) {
    const int64_t step_bytes = steps.batch * gates.size(1) * static_cast<int64_t>(gates.element_size());
    return cpu_matmul_supports(gates.scalar_type()) && steps.steps() > 0 &&
           steps.fewest() >= kPerStepProjectionMinRows && step_bytes <= kPerStepProjectionMaxBytes;
  }

  static constexpr auto forward = lstm_pointwise_forward_cpu;
  static constexpr auto backward = lstm_pointwise_backward_cpu;
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_cpu(
    const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    bool reverse, bool /*cudnn_tf32: float32 GEMMs are float32 on the CPU*/,
    const std::optional<at::Tensor>& batch_sizes) {
  return lstm_layer_forward(CpuLstm{}, input, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_backward_cpu(
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
    const std::optional<at::Tensor>& grad_c_n, const at::Tensor& input,
    const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& output, const at::Tensor& gates, const at::Tensor& cell_states, bool reverse,
    std::array<bool, 4> output_mask, bool /*cudnn_tf32*/,
    const std::optional<at::Tensor>& batch_sizes) {
  return lstm_layer_backward(CpuLstm{}, grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih, w_hh, output, gates,
                             cell_states, reverse, output_mask, batch_sizes);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastnets, m) {
  // One LSTM layer in one direction over input (time, batch, input_size) from states h0, c0
  // (batch, hidden_size); gates in torch.nn.LSTM's order (i, f, g, o), reverse: from the last
  // step to the first. Returns output (time, batch, hidden_size) = h of every step, the final
  // h_n and c_n, and what backward keeps: the activated gates (time, batch, 4 * hidden_size)
  // and the cell states (time, batch, hidden_size).
  // cudnn_tf32: float32 GEMMs on CUDA take TF32 as torch.nn.LSTM's cuDNN kernels would
  // (torch.backends.cudnn.allow_tf32, while cuDNN is enabled), not as torch.mm and
  // torch.nn.LSTMCell would (torch.backends.cuda.matmul.allow_tf32).
  // batch_sizes (an int64 tensor on the CPU, as in torch's PackedSequence): packed sequences
  // instead of a padded batch; input (rows, input_size) holds batch_sizes[t] rows for step t, one
  // step after the other, sorted longest sequence first; output, gates and cell_states are 2-D in
  // the same rows, h_n and c_n each sequence's state after its own last step.
  m.def(
      "lstm_layer(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih=None, "
      "Tensor? b_hh=None, bool reverse=False, bool cudnn_tf32=False, Tensor? batch_sizes=None) -> "
      "(Tensor output, Tensor h_n, Tensor c_n, Tensor gates, Tensor cell_states)");
  // Backward through time of lstm_layer: the gradients of input, h0, c0, w_ih, w_hh and the bias
  // (b_ih and b_hh alike), from those of output, h_n and c_n (None: zero) and the forward's saved
  // tensors; output_mask (input, weights, bias, initial states) leaves those not wanted
  // uncomputed (empty).
  m.def(
      "lstm_layer_backward(Tensor? grad_output, Tensor? grad_h_n, Tensor? grad_c_n, Tensor input, Tensor h0, "
      "Tensor c0, Tensor w_ih, Tensor w_hh, Tensor output, Tensor gates, Tensor cell_states, bool reverse=False, "
      "bool[4] output_mask=[True, True, True, True], bool cudnn_tf32=False, Tensor? batch_sizes=None) "
      "-> (Tensor grad_input, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih, Tensor grad_w_hh, "
      "Tensor grad_bias)");
}

TORCH_LIBRARY_IMPL(fastnets, CPU, m) {
  m.impl("lstm_layer", &lstm_layer_cpu);
  m.impl("lstm_layer_backward", &lstm_layer_backward_cpu);
}

}  // namespace fastnets
