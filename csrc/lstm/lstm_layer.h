#pragma once
// One LSTM layer (one direction) over a whole sequence, forward and backward through time: the
// loop, shared by the CPU and CUDA ops, which pass in their GEMMs and pointwise kernels.
// As haste does: one GEMM for the input projections of all time steps (or, where the device
// asks for it, each step's just before that step), then per step the recurrent GEMM (accumulated
// into that step's gates) and the fused pointwise kernel, which adds the bias. Backward: per step
// the fused pointwise backward and one GEMM for dh; after the loop one GEMM for the input
// gradient and one for both weight gradients (two for short sequences), the bias gradient as a
// reduction.
#include <ATen/OpMathType.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "common/checks.h"

namespace fastnets {

// What a device provides (lstm.cpp, lstm_cuda.cu), as members of a class whose object the loops
// below are given (it may hold the GEMMs' settings):
//   Right (a type; default-constructed: no operand) and
//   Right prepare(const at::Tensor& b, int64_t rows, int64_t fewest): a right-hand GEMM operand
//     (depth x cols) made ready for the products below with `rows` rows of left-hand operands in
//     all, `fewest` in the smallest product (the CPU copies it into the layout of its tiled GEMM
//     when that pays, or when BLAS's results would depend on the thread count);
//   void multiply(const at::Tensor& a, const Right& b, at::Tensor& c, bool accumulate):
//     c (+)= a b, c with unit column stride;
//   bool zero_state_products(const at::Tensor& h0, const at::Tensor& w_hh): whether h0 w_hh^T is
//     known to be exactly zero (h0 all zeros, w_hh finite), so that the first step leaves its
//     recurrent GEMM out (a device that would have to wait to read the values says false);
//   bool project_per_step(const LstmSteps& steps, const at::Tensor& gates): whether the forward
//     projects each step's inputs just before its recurrent GEMM, which then adds to gates still
//     in cache, instead of all steps' in one GEMM first;
//   void forward(at::Tensor& gates, const at::Tensor& bias, const at::Tensor& c_prev, at::Tensor& c,
//                at::Tensor& h, const at::Tensor& c_copy, const at::Tensor& h_copy): gates (B, 4H)
//     plus bias (4H, in the opmath dtype: float for 16-bit types) the pre-activations, activated
//     gates out; writes c and h (B, H), and the same values to c_copy and h_copy where defined;
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

// The time steps of a layer's input, as rows of its flat (rows, features) view: a padded batch
// (time, batch, features) has `batch` rows at every step; packed sequences (torch's
// PackedSequence: `batch_sizes[t]` rows at step t, one step after the other, the sequences
// sorted longest first) have their first batch_sizes[t] sequences at step t. Either way a step's
// sequences are the first rows of the batch, so a state of `rows` rows serves every step that
// has at most as many.
struct LstmSteps {
  std::vector<int64_t> rows, offsets;  // per time step
  int64_t total = 0, batch = 0;

  LstmSteps(const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes) {
    if (!batch_sizes.has_value()) {
      TORCH_CHECK(input.dim() == 3, "input must be 3-D (time, batch, input_size), got ", input.dim(),
                  "-D of shape ", input.sizes());
      batch = input.size(1);
      rows.assign(input.size(0), batch);
    } else {
      TORCH_CHECK(input.dim() == 2, "input must be 2-D (packed rows, input_size) with batch_sizes, got ",
                  input.dim(), "-D of shape ", input.sizes());
      // As torch's PackedSequence holds them: an int64 tensor on the CPU, read here on the host.
      TORCH_CHECK(batch_sizes->dim() == 1 && batch_sizes->scalar_type() == at::kLong && batch_sizes->is_cpu(),
                  "batch_sizes must be a 1-D int64 tensor on the CPU, got ", batch_sizes->scalar_type(), " of shape ",
                  batch_sizes->sizes(), " on ", batch_sizes->device());
      TORCH_CHECK(batch_sizes->numel() > 0, "batch_sizes must not be empty");
      const at::Tensor sizes = batch_sizes->contiguous();
      rows.assign(sizes.const_data_ptr<int64_t>(), sizes.const_data_ptr<int64_t>() + sizes.numel());
      for (size_t t = 0; t < rows.size(); ++t) {
        TORCH_CHECK(rows[t] >= 1 && (t == 0 || rows[t] <= rows[t - 1]),
                    "batch_sizes must be positive and non-increasing (sequences sorted longest first), got ",
                    at::IntArrayRef(rows));
      }
      batch = rows[0];  // h0 and c0 must have as many rows (check_lstm_layer_args)
    }
    offsets.resize(rows.size());
    for (size_t t = 0; t < rows.size(); ++t) {
      offsets[t] = total;
      total += rows[t];
    }
    TORCH_CHECK(!batch_sizes.has_value() || input.size(0) == total, "input must have sum(batch_sizes) = ", total,
                " rows, got ", input.size(0));
  }

  int64_t steps() const { return static_cast<int64_t>(rows.size()); }
  int64_t fewest() const { return rows.empty() ? batch : *std::min_element(rows.begin(), rows.end()); }
  bool uniform() const { return std::all_of(rows.begin(), rows.end(), [&](int64_t r) { return r == batch; }); }
  // The time step processed `step`-th (reverse: from the last time step to the first).
  int64_t time(int64_t step, bool reverse) const { return reverse ? steps() - 1 - step : step; }
  int64_t rows_at(int64_t step, bool reverse) const { return rows[time(step, reverse)]; }
  at::Tensor at_step(const at::Tensor& flat, int64_t step, bool reverse) const {
    const int64_t t = time(step, reverse);
    return flat.narrow(0, offsets[t], rows[t]);
  }
  // The state (h or c) entering the `step`-th step: the step before's rows (`saved`: every step's
  // state, flat), then, for sequences that start at this step, the initial state's rows.
  at::Tensor entering(const at::Tensor& saved, const at::Tensor& initial, int64_t step, bool reverse) const {
    const int64_t count = rows_at(step, reverse);
    // Every view costs host time that a GPU waits for: none where all rows are taken.
    const auto first_rows = [count](const at::Tensor& t) { return count == t.size(0) ? t : t.narrow(0, 0, count); };
    if (step == 0) return first_rows(initial);
    const at::Tensor before = at_step(saved, step - 1, reverse);
    if (count <= before.size(0)) return first_rows(before);
    return at::cat({before, initial.narrow(0, before.size(0), count - before.size(0))});
  }
};

inline void check_lstm_layer_args(const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0,
                                  const at::Tensor& w_ih, const at::Tensor& w_hh,
                                  const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
                                  const LstmSteps& steps) {
  check_training_dtype(input, "input");
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 4 * w_hh.size(1),
              "w_hh must be 2-D (4 * hidden_size, hidden_size), got shape ", w_hh.sizes());
  const int64_t hidden = w_hh.size(1), features = input.size(input.dim() - 1);
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == 4 * hidden && w_ih.size(1) == features,
              "w_ih must be 2-D (4 * hidden_size, input_size) = (", 4 * hidden, ", ", features, "), got shape ",
              w_ih.sizes());
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{h0, "h0"}, {c0, "c0"}}) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == steps.batch && t.size(1) == hidden, name,
                " must be 2-D (batch, hidden_size) = (", steps.batch, ", ", hidden, "), got shape ", t.sizes());
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

// Row blocks [begin, begin + size(0)) of a (batch, H) result, concatenated in row order. A single
// block is copied too (an op's outputs may not alias each other), unless `owned` says it is a
// buffer of the op's own that nothing else refers to, and it spans its whole storage.
inline at::Tensor assemble_rows(std::vector<std::pair<int64_t, at::Tensor>> blocks, bool owned = false) {
  std::sort(blocks.begin(), blocks.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  if (blocks.size() == 1) {
    const at::Tensor& block = blocks[0].second;
    const bool whole = block.is_contiguous() && block.storage_offset() == 0 &&
                       block.storage().nbytes() == static_cast<size_t>(block.numel()) * block.element_size();
    return owned && whole ? block : block.clone(at::MemoryFormat::Contiguous);
  }
  std::vector<at::Tensor> parts;
  for (auto& block : blocks) parts.push_back(block.second);
  return at::cat(parts);
}

// Returns (output, h_n, c_n, gates activated, cell_states: c of every step): output, gates and
// cell_states (time, batch, H or 4H) for a padded batch, (rows, H or 4H) for packed sequences.
template <typename Device>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_forward(
    const Device& device, const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    bool reverse, const std::optional<at::Tensor>& batch_sizes) {
  // The per-step views and products below are the kernel's own, never seen by autograd: skip its
  // view tracking, a few microseconds of host time per step where the GPU waits on the host.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const LstmSteps steps(input, batch_sizes);
  check_lstm_layer_args(input, h0, c0, w_ih, w_hh, b_ih, b_hh, steps);
  const int64_t hidden = w_hh.size(1), features = w_ih.size(1), total = steps.total;
  at::Tensor gates = at::empty({total, 4 * hidden}, input.options());
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
  at::Tensor flat_input = input.contiguous().view({total, features});
  const bool per_step = device.project_per_step(steps, gates);
  if (!per_step) {
    device.multiply(flat_input, device.prepare(w_ih.t(), total, total), gates, false);
    flat_input.reset();  // a copy, where the input was not contiguous: not kept through the loop
  }
  using Right = typename Device::Right;
  const Right w_ih_t = per_step ? device.prepare(w_ih.t(), total, steps.fewest()) : Right{};
  at::Tensor output = at::empty({total, hidden}, input.options());
  at::Tensor cell_states = at::empty({total, hidden}, input.options());
  const at::Tensor h_first = h0.contiguous(), c_first = c0.contiguous();
  const auto w_hh_t = device.prepare(w_hh.t(), total, steps.fewest());
  // The usual zero initial state (nn.LSTM without hx): the first step's recurrent GEMM would add
  // zeros (a gate of exactly -0 then stays -0 where the GEMM would make it +0).
  const bool zero_first_products = steps.steps() > 0 && device.zero_state_products(h_first, w_hh);
  // The final states: per sequence, its last step's (packed sequences end at different steps).
  // A padded batch's are the last step's, which its pointwise pass writes twice rather than
  // copies after the loop: two launches fewer per call on CUDA, where an LSTMCell's whole step
  // is a handful of them.
  const bool finals_by_last_step = steps.steps() > 0 && steps.uniform();
  at::Tensor h_n, c_n;
  if (finals_by_last_step) {
    h_n = at::empty({steps.batch, hidden}, input.options());
    c_n = at::empty({steps.batch, hidden}, input.options());
  }
  std::vector<std::pair<int64_t, at::Tensor>> h_final, c_final;
  at::Tensor h, c;
  for (int64_t step = 0; step < steps.steps(); ++step) {
    h = steps.entering(output, h_first, step, reverse);
    c = steps.entering(cell_states, c_first, step, reverse);
    if (step > 0 && h.size(0) < steps.rows_at(step - 1, reverse)) {  // sequences that ended a step before
      const int64_t ended = steps.rows_at(step - 1, reverse) - h.size(0);
      h_final.emplace_back(h.size(0), steps.at_step(output, step - 1, reverse).narrow(0, h.size(0), ended));
      c_final.emplace_back(h.size(0), steps.at_step(cell_states, step - 1, reverse).narrow(0, h.size(0), ended));
    }
    at::Tensor step_gates = steps.at_step(gates, step, reverse);
    if (per_step) device.multiply(steps.at_step(flat_input, step, reverse), w_ih_t, step_gates, false);
    if (step > 0 || !zero_first_products) device.multiply(h, w_hh_t, step_gates, true);
    at::Tensor step_c = steps.at_step(cell_states, step, reverse), step_h = steps.at_step(output, step, reverse);
    const bool last = finals_by_last_step && step == steps.steps() - 1;
    device.forward(step_gates, bias, c, step_c, step_h, last ? c_n : at::Tensor(), last ? h_n : at::Tensor());
  }
  if (!finals_by_last_step) {
    if (steps.steps() == 0) {
      h_final.emplace_back(0, h_first);
      c_final.emplace_back(0, c_first);
    } else {
      h_final.emplace_back(0, steps.at_step(output, steps.steps() - 1, reverse));
      c_final.emplace_back(0, steps.at_step(cell_states, steps.steps() - 1, reverse));
    }
    h_n = assemble_rows(std::move(h_final));
    c_n = assemble_rows(std::move(c_final));
  }
  if (!batch_sizes.has_value()) {
    const int64_t time = input.size(0), batch = input.size(1);
    output = output.view({time, batch, hidden});
    gates = gates.view({time, batch, 4 * hidden});
    cell_states = cell_states.view({time, batch, hidden});
  }
  return {output, h_n, c_n, gates, cell_states};
}

// Returns (grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias); grad_bias is the
// gradient of b_ih and of b_hh alike. An undefined gradient of output, h_n or c_n counts as zero
// (autograd passes none for outputs the loss did not use) and is never materialized.
// output_mask = (input, weights, bias, initial states h0 and c0): the gradients not wanted are
// not computed (empty tensors); without the states', the first step's GEMM for dh is left out
// (a cell's backward: one GEMM of its four, or of three where its rows outnumber input and
// hidden size together and one GEMM takes both weight gradients).
template <typename Device>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_backward(
    const Device& device, const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
    const std::optional<at::Tensor>& grad_c_n, const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& output, const at::Tensor& gates,
    const at::Tensor& cell_states, bool reverse, std::array<bool, 4> output_mask,
    const std::optional<at::Tensor>& batch_sizes) {
  // The per-step views and products below are the kernel's own, never seen by autograd: skip its
  // view tracking, a few microseconds of host time per step where the GPU waits on the host.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const LstmSteps steps(input, batch_sizes);
  check_lstm_layer_args(input, h0, c0, w_ih, w_hh, std::nullopt, std::nullopt, steps);
  const int64_t hidden = w_hh.size(1), features = w_ih.size(1), total = steps.total, batch = steps.batch;
  const at::IntArrayRef state_shape = h0.sizes();
  std::vector<int64_t> step_shape(input.sizes().begin(), input.sizes().end());
  step_shape.back() = hidden;
  std::vector<int64_t> gates_shape = step_shape;
  gates_shape.back() = 4 * hidden;
  TORCH_CHECK(output.sizes() == cell_states.sizes() && output.sizes() == at::IntArrayRef(step_shape) &&
                  gates.sizes() == at::IntArrayRef(gates_shape),
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
  const at::Tensor grad_out = defined(grad_output) ? grad_output->contiguous().view({total, hidden}) : at::Tensor();
  const at::Tensor saved_gates = gates.contiguous().view({total, 4 * hidden});
  const at::Tensor saved_c = cell_states.contiguous().view({total, hidden});
  const at::Tensor saved_h = output.contiguous().view({total, hidden});
  const at::Tensor h_first = h0.contiguous(), c_first = c0.contiguous();
  // The gradient reaching rows [first, first + count) of h_n (c_n): zero where none was given.
  const auto final_grad = [&](const std::optional<at::Tensor>& grad, int64_t first, int64_t count) {
    // clone(Contiguous), not contiguous().clone(): an empty expanded gradient is "contiguous" with
    // stride 0, which clone would keep and the GEMM cannot write.
    return defined(grad) ? grad->narrow(0, first, count).clone(at::MemoryFormat::Contiguous)
                         : at::zeros({count, hidden}, input.options());
  };
  at::Tensor grad_gates = at::empty({total, 4 * hidden}, input.options());
  // The gradients of the state leaving the step at hand, one row per sequence it has; the last
  // step's come from h_n and c_n.
  const int64_t last_rows = steps.steps() > 0 ? steps.rows_at(steps.steps() - 1, reverse) : batch;
  at::Tensor grad_h = final_grad(grad_h_n, 0, last_rows), grad_c = final_grad(grad_c_n, 0, last_rows);
  std::vector<std::pair<int64_t, at::Tensor>> grad_h_first, grad_c_first;  // blocks of grad_h0, grad_c0
  const bool grad_states = output_mask[3];
  {  // w_hh's copy lives through the loop only: the CPU's packing buffer then serves the weight gradients
    using Right = typename Device::Right;
    const bool recurrent_gemms = steps.steps() > 1 || (grad_states && steps.steps() > 0);
    const Right w_hh_right = recurrent_gemms ? device.prepare(w_hh, total, steps.fewest()) : Right{};
    for (int64_t step = steps.steps() - 1; step >= 0; --step) {
      const at::Tensor c_prev = steps.entering(saved_c, c_first, step, reverse);
      at::Tensor step_grad_gates = steps.at_step(grad_gates, step, reverse);
      const at::Tensor step_grad_output = grad_out.defined() ? steps.at_step(grad_out, step, reverse) : grad_out;
      device.backward(step_grad_output, grad_h, grad_c, steps.at_step(saved_gates, step, reverse), c_prev,
                      steps.at_step(saved_c, step, reverse), step_grad_gates);
      if (step > 0 || grad_states) device.multiply(step_grad_gates, w_hh_right, grad_h, false);
      // grad_h and grad_c now hold the gradients of the state entering this step: the step
      // before's rows, and the initial state's for sequences that started here (grad_h at the
      // first step only where the states' gradient is wanted).
      const int64_t rows = grad_h.size(0), before = step > 0 ? steps.rows_at(step - 1, reverse) : 0;
      if (step == 0 || rows > before) {
        grad_h_first.emplace_back(before, grad_h.narrow(0, before, rows - before));
        grad_c_first.emplace_back(before, grad_c.narrow(0, before, rows - before));
        grad_h = grad_h.narrow(0, 0, before);
        grad_c = grad_c.narrow(0, 0, before);
      } else if (rows < before) {  // the step before's other sequences ended there: their h_n, c_n
        grad_h = at::cat({grad_h, final_grad(grad_h_n, rows, before - rows)});
        grad_c = at::cat({grad_c, final_grad(grad_c_n, rows, before - rows)});
      }
    }
  }
  if (steps.steps() == 0) {
    grad_h_first.emplace_back(0, grad_h);
    grad_c_first.emplace_back(0, grad_c);
  }
  // An empty tensor apiece for the gradients not wanted: an op's outputs must not alias each other.
  const auto none = [&input] { return at::empty({0}, input.options()); };
  at::Tensor grad_input = none(), grad_w_ih = none(), grad_w_hh = none();
  if (output_mask[0]) {
    grad_input = at::empty({total, features}, input.options());
    device.multiply(grad_gates, device.prepare(w_ih, total, total), grad_input, false);
    grad_input = grad_input.view(input.sizes());
  }
  if (output_mask[1]) {
    // h entering every step, in the rows of its step: for a padded batch [h0, h_0 .. h_{T-2}]
    // (reverse: [h_1 .. h_{T-1}, h0]).
    at::Tensor h_prev;
    if (steps.uniform()) {
      const at::Tensor first = h_first.narrow(0, 0, batch);
      const int64_t rest = total - batch;
      h_prev = steps.steps() == 0 ? saved_h
               : steps.steps() == 1 ? first  // a cell's step: h0 alone, no copy
               : reverse            ? at::cat({saved_h.narrow(0, batch, rest), first})
                                    : at::cat({first, saved_h.narrow(0, 0, rest)});
    } else {
      std::vector<at::Tensor> parts(steps.steps());
      for (int64_t step = 0; step < steps.steps(); ++step) {
        parts[steps.time(step, reverse)] = steps.entering(saved_h, h_first, step, reverse);
      }
      h_prev = at::cat(parts);
    }
    const at::Tensor flat_input = input.contiguous().view({total, features});
    if (total >= features + hidden) {
      // Both in one GEMM, grad_gates^T [inputs | h_prev], then split: grad_gates^T is read (packed)
      // once, which outweighs copying the two halves out when the sequence is longer than a row.
      const at::Tensor inputs_and_states = at::cat({flat_input, h_prev}, 1);
      at::Tensor grad_weights = at::empty({4 * hidden, features + hidden}, input.options());
      device.multiply(grad_gates.t(), device.prepare(inputs_and_states, 4 * hidden, 4 * hidden), grad_weights,
                      false);
      grad_w_ih = grad_weights.narrow(1, 0, features).contiguous();
      grad_w_hh = grad_weights.narrow(1, features, hidden).contiguous();
    } else {
      grad_w_ih = at::empty({4 * hidden, features}, input.options());
      grad_w_hh = at::empty({4 * hidden, hidden}, input.options());
      device.multiply(grad_gates.t(), device.prepare(flat_input, 4 * hidden, 4 * hidden), grad_w_ih, false);
      device.multiply(grad_gates.t(), device.prepare(h_prev, 4 * hidden, 4 * hidden), grad_w_hh, false);
    }
  }
  return {grad_input,
          grad_states ? assemble_rows(std::move(grad_h_first), /*owned=*/true) : none(),  // the running
          grad_states ? assemble_rows(std::move(grad_c_first), /*owned=*/true) : none(),  // gradients' buffers
          grad_w_ih,
          grad_w_hh,
          output_mask[2] ? grad_gates.sum(0) : none()};
}

}  // namespace fastnets
