#pragma once
// The host side shared by the CPU and CUDA fixed_point_sgd_ kernels: argument checks and the
// per-element step (fixed_point_sgd.h) built from the arguments.
#include <ATen/MemoryOverlap.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>
#include <type_traits>

#include "common/checks.h"
#include "fixed_point/fixed_point_format.h"
#include "fixed_point/fixed_point_sgd.h"

namespace fastnets {

struct SgdArgs {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize, first_step;
  OptionalFixedPointFormat roundings[3];  // of grad, weight and state

  SgdRoundingMode mode() const {
    bool nearest = false, stochastic = false;
    for (const auto& rounding : roundings) {
      nearest |= rounding.enabled && !rounding.stochastic;
      stochastic |= rounding.enabled && rounding.stochastic;
    }
    if (nearest && stochastic) return SgdRoundingMode::kAny;
    return stochastic ? SgdRoundingMode::kStochastic : (nearest ? SgdRoundingMode::kNearest : SgdRoundingMode::kNone);
  }

  // Whether every rounding gives the same bits in float arithmetic (fixed_point.h).
  bool float_exact() const {
    for (const auto& rounding : roundings) {
      if (rounding.enabled && !rounding.format.float_exact) return false;
    }
    return true;
  }
};

inline void check_like_param(const at::Tensor& tensor, const at::Tensor& param, const char* name) {
  TORCH_CHECK(tensor.scalar_type() == param.scalar_type(), name, " must have param's dtype ", param.scalar_type(),
              ", got ", tensor.scalar_type());
  TORCH_CHECK(tensor.sizes() == param.sizes(), name, " must have param's size ", param.sizes(), ", got ",
              tensor.sizes());
  TORCH_CHECK(tensor.device() == param.device(), name, " must be on param's device ", param.device(), ", got ",
              tensor.device());
}

// Two of the step's tensors share no element. Where torch cannot tell (strided views of one
// storage), they are refused too: one written over the other would silently undo part of a step.
inline void check_apart(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name) {
  const at::MemOverlapStatus status = at::get_overlap_status(a, b);
  const bool apart = status == at::MemOverlapStatus::No ||
                     (status == at::MemOverlapStatus::TooHard && !a.storage().is_alias_of(b.storage()));
  TORCH_CHECK(apart, a_name, " and ", b_name, " must not share memory (", b_name, " is written or read while ", a_name,
              " is written)");
}

// The tensors written (param, the buffer, grad when it is rounded) must not overlap themselves,
// nor each other or grad: checked before anything is written, so that a step is never half
// applied.
inline void check_no_overlap(const at::Tensor& param, const at::Tensor& grad,
                             const std::optional<at::Tensor>& momentum_buffer, bool grad_written) {
  // Fake tensors of symbolic shape (fixed_point_sgd_foreach_, a composite, traced with dynamic
  // shapes) hold no memory, and torch 2.11 cannot count their elements: the real call checks.
  const auto symbolic = [](const at::Tensor& t) { return t.unsafeGetTensorImpl()->has_symbolic_sizes_strides(); };
  if (symbolic(param) || symbolic(grad) || (momentum_buffer.has_value() && symbolic(*momentum_buffer))) return;
  at::assert_no_internal_overlap(param);
  check_apart(param, "param", grad, "grad");
  if (grad_written) at::assert_no_internal_overlap(grad);
  if (momentum_buffer.has_value()) {
    at::assert_no_internal_overlap(*momentum_buffer);
    check_apart(param, "param", *momentum_buffer, "momentum_buffer");
    check_apart(*momentum_buffer, "momentum_buffer", grad, "grad");
  }
}

inline SgdArgs parse_sgd_args(const at::Tensor& param, const at::Tensor& grad,
                              const std::optional<at::Tensor>& momentum_buffer, double lr, double momentum,
                              double dampening, double weight_decay, bool nesterov, bool maximize, bool first_step,
                              c10::IntArrayRef grad_format, c10::IntArrayRef weight_format,
                              c10::IntArrayRef state_format) {
  check_training_dtype(param, "param");
  check_like_param(grad, param, "grad");
  TORCH_CHECK(momentum_buffer.has_value() == (momentum != 0.0),
              "momentum_buffer must be given exactly when momentum != 0, got momentum = ", momentum, " and ",
              momentum_buffer.has_value() ? "a buffer" : "None");
  if (momentum_buffer.has_value()) check_like_param(*momentum_buffer, param, "momentum_buffer");
  for (const auto& [value, name] : {std::pair{lr, "lr"}, std::pair{momentum, "momentum"},
                                    std::pair{dampening, "dampening"}, std::pair{weight_decay, "weight_decay"}}) {
    TORCH_CHECK(std::isfinite(value), name, " must be finite, got ", value);
  }
  SgdArgs args{lr, momentum, dampening, weight_decay, nesterov, maximize, first_step, {}};
  args.roundings[0] = parse_optional_format(grad_format, "grad_format");
  args.roundings[1] = parse_optional_format(weight_format, "weight_format");
  args.roundings[2] = parse_optional_format(state_format, "state_format");
  check_no_overlap(param, grad, momentum_buffer, args.roundings[0].enabled);
  return args;
}

// fn(std::integral_constant<SgdRoundingMode, mode>{}) for a mode known at run time.
template <typename Fn>
void dispatch_sgd_mode(SgdRoundingMode mode, const Fn& fn) {
  using M = SgdRoundingMode;
  switch (mode) {
    case M::kNone: fn(std::integral_constant<M, M::kNone>{}); break;
    case M::kNearest: fn(std::integral_constant<M, M::kNearest>{}); break;
    case M::kStochastic: fn(std::integral_constant<M, M::kStochastic>{}); break;
    case M::kAny: fn(std::integral_constant<M, M::kAny>{}); break;
  }
}

// fn(param, grad, buffer) on contiguous tensors (buffer undefined without momentum): the tensors
// themselves, or contiguous copies that are copied back afterwards (grad only when it is rounded).
template <typename Fn>
void with_contiguous(at::Tensor& param, at::Tensor& grad, const std::optional<at::Tensor>& momentum_buffer,
                     const SgdArgs& args, const Fn& fn) {
  at::Tensor buffer = momentum_buffer.has_value() ? *momentum_buffer : at::Tensor();
  if (param.is_contiguous() && grad.is_contiguous() && (!buffer.defined() || buffer.is_contiguous())) {
    fn(param, grad, buffer);
    return;
  }
  at::Tensor p = param.contiguous(), g = grad.contiguous(), b = buffer.defined() ? buffer.contiguous() : buffer;
  fn(p, g, b);
  param.copy_(p);
  if (args.roundings[0].enabled) grad.copy_(g);
  if (b.defined()) buffer.copy_(b);
}

template <typename format_t>
SgdRounding<format_t> make_sgd_rounding(const OptionalFixedPointFormat& rounding,
                                                  format_t (*convert)(const FixedPointFormat&)) {
  return {convert(rounding.format), rounding.enabled, rounding.stochastic};
}

// The hyperparameters in the opmath type, as torch's kernels take a Scalar: cast from double.
template <typename scalar_t, typename format_t>
FixedPointSgdStep<scalar_t, format_t> make_sgd_step(const SgdArgs& args, format_t (*convert)(const FixedPointFormat&)) {
  using real_t = at::opmath_type<scalar_t>;
  FixedPointSgdStep<scalar_t, format_t> step;
  step.neg_lr = static_cast<real_t>(-args.lr);
  step.momentum = static_cast<real_t>(args.momentum);
  step.dampening_keep = static_cast<real_t>(1.0 - args.dampening);
  step.weight_decay = static_cast<real_t>(args.weight_decay);
  step.decays = args.weight_decay != 0.0;
  step.nesterov = args.nesterov;
  step.maximize = args.maximize;
  step.first_step = args.first_step;
  step.round_grad = make_sgd_rounding(args.roundings[0], convert);
  step.round_weight = make_sgd_rounding(args.roundings[1], convert);
  step.round_state = make_sgd_rounding(args.roundings[2], convert);
  return step;
}

}  // namespace fastnets
