#pragma once
// One LSTM layer (one direction) over a whole sequence, forward and backward through time: the
// loop, shared by the CPU and CUDA ops, which pass in their GEMMs and pointwise kernels.
// As haste does: one GEMM for the input projections of all time steps, then per step the
// recurrent GEMM (accumulated into that step's gates) and the fused pointwise kernel, which adds
// the bias. Backward: per step the fused pointwise backward and one GEMM for dh; after the loop
// one GEMM for the input gradient and one for both weight gradients (two for short sequences),
// the bias gradient as a reduction.
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <array>
#include <optional>
#include <tuple>

#include "common/checks.h"

namespace fastnets {

// What a device provides (lstm.cpp, lstm_cuda.cu), as members of a class whose object the loops
// below are given (it may hold the GEMMs' settings):
//   Right prepare(const at::Tensor& b, int64_t rows): a right-hand GEMM operand (depth x cols)
//     made ready for the products below with `rows` rows of left-hand operands in all (the CPU
//     copies it into the layout of its tiled GEMM when that pays);
//   void multiply(const at::Tensor& a, const Right& b, at::Tensor& c, bool accumulate):
//     c (+)= a b, c with unit column stride;
//   void forward(at::Tensor& gates, const at::Tensor& bias, const at::Tensor& c_prev, at::Tensor& c,
//                at::Tensor& h): gates (B, 4H) plus bias (4H, in the opmath dtype: float for
//     16-bit types) the pre-activations, activated gates out; writes c and h (B, H);
//   void backward(grad_output, grad_h, grad_c, gates, c_prev, c, grad_gates): dh' = grad_output +
//     grad_h (grad_output may be undefined: zero); grad_c: dc' in, the gradient of c_prev out;
//     writes the pre-activations' gradients.
// The pointwise math is lstm.h's; all tensors contiguous.

// c (+)= a b by ATen (cuBLAS, or BLAS for what the CPU's own GEMM does not take).
inline void aten_multiply(const at::Tensor& a, const at::Tensor& b, at::Tensor& c, bool accumulate) {
  if (accumulate) {
    c.addmm_(a, b);
  } else {
    at::mm_out(c, a, b);
  }
}

inline void check_same(const at::Tensor& t, const at::Tensor& input, const char* name) {
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), name, " must have input's dtype ", input.scalar_type(),
              ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == input.device(), name, " must be on input's device ", input.device(), ", got ",
              t.device());
}

inline void check_lstm_layer_args(const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0,
                                  const at::Tensor& w_ih, const at::Tensor& w_hh,
                                  const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh) {
  check_training_dtype(input, "input");
  TORCH_CHECK(input.dim() == 3, "input must be 3-D (time, batch, input_size), got ", input.dim(), "-D of shape ",
              input.sizes());
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 4 * w_hh.size(1),
              "w_hh must be 2-D (4 * hidden_size, hidden_size), got shape ", w_hh.sizes());
  const int64_t hidden = w_hh.size(1);
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == 4 * hidden && w_ih.size(1) == input.size(2),
              "w_ih must be 2-D (4 * hidden_size, input_size) = (", 4 * hidden, ", ", input.size(2), "), got shape ",
              w_ih.sizes());
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{h0, "h0"}, {c0, "c0"}}) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == input.size(1) && t.size(1) == hidden, name,
                " must be 2-D (batch, hidden_size) = (", input.size(1), ", ", hidden, "), got shape ", t.sizes());
  }
  for (const auto& [b, name] : {std::pair<const std::optional<at::Tensor>&, const char*>{b_ih, "b_ih"},
                                {b_hh, "b_hh"}}) {
    if (b.has_value()) {
      TORCH_CHECK(b->dim() == 1 && b->size(0) == 4 * hidden, name, " must be 1-D of 4 * hidden_size = ", 4 * hidden,
                  " elements, got shape ", b->sizes());
      check_same(*b, input, name);
    }
  }
  check_same(h0, input, "h0");
  check_same(c0, input, "c0");
  check_same(w_ih, input, "w_ih");
  check_same(w_hh, input, "w_hh");
}

// Returns (output (T, B, H), h_n, c_n, gates (T, B, 4H) activated, cell_states (T, B, H): c of every step).
template <typename Device>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_forward(
    const Device& device, const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    bool reverse) {
  check_lstm_layer_args(input, h0, c0, w_ih, w_hh, b_ih, b_hh);
  const int64_t steps = input.size(0), batch = input.size(1), hidden = w_hh.size(1);
  at::Tensor gates = at::empty({steps * batch, 4 * hidden}, input.options());
  // The bias is added in each step's pointwise kernel, not copied into all the gates first; the
  // two are summed in the kernel's arithmetic (float for 16-bit types), as torch's cell does.
  // One kernel or none where there are biases (a cell's whole step is a handful of launches).
  const at::ScalarType opmath = at::toOpMathType(input.scalar_type());
  at::Tensor bias;
  if (b_ih.has_value() && b_hh.has_value()) {
    bias = at::add(b_ih->to(opmath), *b_hh);
  } else if (b_ih.has_value() || b_hh.has_value()) {
    bias = (b_ih.has_value() ? *b_ih : *b_hh).to(opmath).contiguous();
  } else {
    bias = at::zeros({4 * hidden}, input.options().dtype(opmath));
  }
  const at::Tensor flat_input = input.contiguous().view({steps * batch, input.size(2)});
  device.multiply(flat_input, device.prepare(w_ih.t(), steps * batch), gates, false);
  gates = gates.view({steps, batch, 4 * hidden});
  at::Tensor output = at::empty({steps, batch, hidden}, input.options());
  at::Tensor cell_states = at::empty({steps, batch, hidden}, input.options());
  at::Tensor h = h0.contiguous(), c = c0.contiguous();
  const auto w_hh_t = device.prepare(w_hh.t(), steps * batch);
  for (int64_t step = 0; step < steps; ++step) {
    const int64_t t = reverse ? steps - 1 - step : step;
    at::Tensor step_gates = gates.select(0, t);
    device.multiply(h, w_hh_t, step_gates, true);
    at::Tensor step_c = cell_states.select(0, t), step_h = output.select(0, t);
    device.forward(step_gates, bias, c, step_c, step_h);
    h = step_h;
    c = step_c;
  }
  // Outputs of an op may not alias each other: the final states are copies.
  return {output, h.clone(), c.clone(), gates, cell_states};
}

// Returns (grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias); grad_bias is the
// gradient of b_ih and of b_hh alike. An undefined gradient of output, h_n or c_n counts as zero
// (autograd passes none for outputs the loss did not use) and is never materialized.
// output_mask = (input, weights, bias): the gradients not wanted are not computed (empty tensors).
template <typename Device>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_backward(
    const Device& device, const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
    const std::optional<at::Tensor>& grad_c_n, const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& output, const at::Tensor& gates,
    const at::Tensor& cell_states, bool reverse, std::array<bool, 3> output_mask) {
  check_lstm_layer_args(input, h0, c0, w_ih, w_hh, std::nullopt, std::nullopt);
  const int64_t steps = input.size(0), batch = input.size(1), hidden = w_hh.size(1), features = input.size(2);
  const at::IntArrayRef state_shape = h0.sizes();
  TORCH_CHECK(output.sizes() == cell_states.sizes() && output.sizes() == at::IntArrayRef({steps, batch, hidden}) &&
                  gates.sizes() == at::IntArrayRef({steps, batch, 4 * hidden}),
              "lstm_layer_backward: the saved tensors must have the forward's shapes");
  for (const auto& [t, name, shape] :
       {std::tuple<const std::optional<at::Tensor>&, const char*, at::IntArrayRef>{grad_output, "grad_output",
                                                                                    output.sizes()},
        {grad_h_n, "grad_h_n", state_shape}, {grad_c_n, "grad_c_n", state_shape}}) {
    if (t.has_value() && t->defined()) {
      TORCH_CHECK(t->sizes() == shape, name, " must have shape ", shape, ", got ", t->sizes());
      check_same(*t, input, name);
    }
  }
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{output, "output"}, {gates, "gates"},
                                {cell_states, "cell_states"}}) {
    check_same(t, input, name);
  }
  const auto defined = [](const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); };
  const at::Tensor grad_out = defined(grad_output) ? grad_output->contiguous() : at::Tensor();
  const at::Tensor saved_gates = gates.contiguous();
  const at::Tensor saved_c = cell_states.contiguous(), saved_h = output.contiguous(), c_zero = c0.contiguous();
  at::Tensor grad_gates = at::empty({steps, batch, 4 * hidden}, input.options());
  at::Tensor grad_h = defined(grad_h_n) ? grad_h_n->contiguous().clone() : at::zeros(state_shape, input.options());
  at::Tensor grad_c = defined(grad_c_n) ? grad_c_n->contiguous().clone() : at::zeros(state_shape, input.options());
  const auto w_hh_right = device.prepare(w_hh, steps * batch);
  for (int64_t step = steps - 1; step >= 0; --step) {
    const int64_t t = reverse ? steps - 1 - step : step;
    const at::Tensor c_prev = step == 0 ? c_zero : saved_c.select(0, reverse ? t + 1 : t - 1);
    at::Tensor step_grad_gates = grad_gates.select(0, t);
    const at::Tensor step_grad_output = grad_out.defined() ? grad_out.select(0, t) : grad_out;
    device.backward(step_grad_output, grad_h, grad_c, saved_gates.select(0, t), c_prev, saved_c.select(0, t),
                     step_grad_gates);
    device.multiply(step_grad_gates, w_hh_right, grad_h, false);
  }
  const at::Tensor flat_grad = grad_gates.view({steps * batch, 4 * hidden});
  const at::Tensor none = at::empty({0}, input.options());
  at::Tensor grad_input = none, grad_w_ih = none, grad_w_hh = none;
  if (output_mask[0]) {
    grad_input = at::empty({steps * batch, features}, input.options());
    device.multiply(flat_grad, device.prepare(w_ih, steps * batch), grad_input, false);
    grad_input = grad_input.view({steps, batch, features});
  }
  if (output_mask[1]) {
    // h_prev of every step, in time order: [h0, h_0 .. h_{T-2}] (reverse: [h_1 .. h_{T-1}, h0]).
    const at::Tensor first = h0.contiguous().unsqueeze(0);
    const at::Tensor h_prev = steps == 0 ? saved_h
                              : reverse  ? at::cat({saved_h.narrow(0, 1, steps - 1), first})
                                         : at::cat({first, saved_h.narrow(0, 0, steps - 1)});
    const at::Tensor flat_input = input.contiguous().view({steps * batch, features});
    const at::Tensor flat_h_prev = h_prev.view({steps * batch, hidden});
    if (steps * batch >= features + hidden) {
      // Both in one GEMM, grad_gates^T [inputs | h_prev], then split: grad_gates^T is read (packed)
      // once, which outweighs copying the two halves out when the sequence is longer than a row.
      const at::Tensor inputs_and_states = at::cat({flat_input, flat_h_prev}, 1);
      at::Tensor grad_weights = at::empty({4 * hidden, features + hidden}, input.options());
      device.multiply(flat_grad.t(), device.prepare(inputs_and_states, 4 * hidden), grad_weights, false);
      grad_w_ih = grad_weights.narrow(1, 0, features).contiguous();
      grad_w_hh = grad_weights.narrow(1, features, hidden).contiguous();
    } else {
      grad_w_ih = at::empty({4 * hidden, features}, input.options());
      grad_w_hh = at::empty({4 * hidden, hidden}, input.options());
      device.multiply(flat_grad.t(), device.prepare(flat_input, 4 * hidden), grad_w_ih, false);
      device.multiply(flat_grad.t(), device.prepare(flat_h_prev, 4 * hidden), grad_w_hh, false);
    }
  }
  return {grad_input, grad_h, grad_c, grad_w_ih, grad_w_hh, output_mask[2] ? flat_grad.sum(0) : none};
}

}  // namespace fastnets
