// SGD with fixed-point roundings in one pass: operator schemas, the CPU kernel and the loop over
// parameters. CUDA kernel: fixed_point_sgd_cuda.cu; the math: fixed_point_sgd.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "common/cpu_elementwise.h"
#include "common/cpu_generator.h"
#include "common/cpu_isa.h"
#include "fixed_point/fixed_point_format.h"
#include "fixed_point/fixed_point_sgd.h"
#include "fixed_point/fixed_point_sgd_args.h"

namespace fastnets {
namespace {

// The three roundings' streams (grad, weight, state); only stochastic ones draw.
struct SgdStreams {
  uint64_t seed[3] = {0, 0, 0};
  uint64_t offset[3] = {0, 0, 0};
  bool draws[3] = {false, false, false};
};

// Words [first, first + 4 * kLanes) of stream s, drawn only for a stochastic rounding.
template <int kLanes>
FASTNETS_ALWAYS_INLINE void sgd_words(const SgdStreams& streams, int s, int64_t first, uint32_t* words) {
  if (streams.draws[s]) cpu_detail::philox_words<kLanes>(streams.seed[s], streams.offset[s], first, words);
}

// Elements [begin, end) of one parameter, begin a multiple of 4.
//  - Without stochastic rounding: one loop, the whole step per element.
//  - With it: per group of 4 * kLanes elements (in L1), the gradient's rounding, the step, then the
//    weights' and the buffer's roundings, each a loop of its own after its stream's words (16-bit
//    types round from the step's float values), and skipped where that rounding is off. On the
//    Gupta MLP's step (float32, <2,14>) 1.34 ms, against 1.45 ms for those passes by blocks of 4096
//    elements and 1.71 ms for one loop of the whole step per group (its three roundings in one loop
//    do not vectorize as well).
template <int kLanes, bool kMomentum, SgdRoundingMode kMode, typename scalar_t, typename Step>
FASTNETS_ALWAYS_INLINE void sgd_range(scalar_t* param, scalar_t* grad, scalar_t* buffer, int64_t begin, int64_t end,
                                      const SgdStreams& streams, Step step) {
  using real_t = typename Step::real_t;
  if constexpr (kMode == SgdRoundingMode::kNone || kMode == SgdRoundingMode::kNearest) {
    for (int64_t i = begin; i < end; ++i) {
      step.template update<kMomentum, kMode>(param[i], grad[i], buffer[i], 0u, 0u, 0u);
    }
  } else {
    constexpr int64_t kGroup = 4 * kLanes;
    uint32_t words[kGroup] = {};
    real_t moved[kGroup], next[kGroup];
    // A rounding that is off draws nothing and computes nothing: param and buffer only store their
    // values, and grad stays (16-bit types: goes through float and back, below).
    const auto round_into = [&](const auto& rounding, int s, int64_t i, int64_t count, const real_t* values,
                                scalar_t* out) FASTNETS_INLINE_LAMBDA {
      if (!rounding.enabled) {
        for (int64_t j = 0; j < count; ++j) out[j] = static_cast<scalar_t>(values[j]);
        return;
      }
      sgd_words<kLanes>(streams, s, i, words);
      for (int64_t j = 0; j < count; ++j) out[j] = step.template round<kMode>(rounding, values[j], words[j]);
    };
    for (int64_t i = begin; i < end; i += kGroup) {
      const int64_t count = std::min(kGroup, end - i);
      if (step.round_grad.enabled) {
        sgd_words<kLanes>(streams, 0, i, words);
        for (int64_t j = 0; j < count; ++j) {
          grad[i + j] = step.template round<kMode>(step.round_grad, static_cast<real_t>(grad[i + j]), words[j]);
        }
      } else if constexpr (!std::is_same_v<scalar_t, real_t>) {
        // Through float and back, as update() writes it: a 16-bit NaN comes back in its standard form.
        for (int64_t j = 0; j < count; ++j) grad[i + j] = static_cast<scalar_t>(static_cast<real_t>(grad[i + j]));
      }
      for (int64_t j = 0; j < count; ++j) {
        next[j] = kMomentum ? static_cast<real_t>(buffer[i + j]) : real_t(0);
        moved[j] = step.template move<kMomentum>(static_cast<real_t>(grad[i + j]), static_cast<real_t>(param[i + j]),
                                                 next[j]);
      }
      round_into(step.round_weight, 1, i, count, moved, param + i);
      if constexpr (kMomentum) round_into(step.round_state, 2, i, count, next, buffer + i);
    }
  }
}

template <bool kMomentum, SgdRoundingMode kMode, typename scalar_t, typename Step>
void sgd_cpu(scalar_t* param, scalar_t* grad, scalar_t* buffer, int64_t n, const SgdStreams& streams,
             const Step& step) {
  using cpu_detail::kChunk;
  at::parallel_for(0, (n + kChunk - 1) / kChunk, cpu_detail::kGrainChunks, [&](int64_t first, int64_t last) {
    const int64_t begin = first * kChunk;
    const int64_t end = std::min(last * kChunk, n);
    call_with_best_isa_tag([&](auto isa) FASTNETS_INLINE_LAMBDA {
      sgd_range<cpu_detail::kPhiloxLanes<decltype(isa)::value>, kMomentum, kMode>(param, grad, buffer, begin, end,
                                                                                  streams, step);
    });
  });
}

template <typename scalar_t, typename format_t>
void run_step(at::Tensor& param, at::Tensor& grad, at::Tensor* buffer, const SgdArgs& args, const SgdStreams& streams,
              format_t (*convert)(const FixedPointFormat&)) {
  const auto step = make_sgd_step<scalar_t, format_t>(args, convert);
  scalar_t* p = param.mutable_data_ptr<scalar_t>();
  scalar_t* g = grad.mutable_data_ptr<scalar_t>();
  scalar_t* b = buffer != nullptr ? buffer->mutable_data_ptr<scalar_t>() : p;  // without momentum never touched
  dispatch_sgd_mode(args.mode(), [&](auto mode) {
    if (buffer != nullptr) {
      sgd_cpu<true, decltype(mode)::value>(p, g, b, param.numel(), streams, step);
    } else {
      sgd_cpu<false, decltype(mode)::value>(p, g, b, param.numel(), streams, step);
    }
  });
}

FixedPointFormat same_format(const FixedPointFormat& format) { return format; }

// param, grad and buffer contiguous.
void step_contiguous(at::Tensor& param, at::Tensor& grad, at::Tensor* buffer, const SgdArgs& args,
                     const SgdStreams& streams) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, param.scalar_type(), "fastnets::fixed_point_sgd_", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      if (args.float_exact()) {
        run_step<scalar_t, FixedPointFormatFloat>(param, grad, buffer, args, streams, &fixed_point_format_float);
        return;
      }
    }
    run_step<scalar_t, FixedPointFormat>(param, grad, buffer, args, streams, &same_format);
  });
}

at::Tensor fixed_point_sgd_cpu(at::Tensor& param, at::Tensor& grad, const std::optional<at::Tensor>& momentum_buffer,
                               double lr, double momentum, double dampening, double weight_decay, bool nesterov,
                               bool maximize, bool first_step, c10::IntArrayRef grad_format,
                               c10::IntArrayRef weight_format, c10::IntArrayRef state_format,
                               const std::optional<at::Generator>& generator) {
  const SgdArgs args = parse_sgd_args(param, grad, momentum_buffer, lr, momentum, dampening, weight_decay, nesterov,
                                      maximize, first_step, grad_format, weight_format, state_format);
  SgdStreams streams;
  at::Tensor seed_offsets = at::zeros({3, 2}, at::TensorOptions().dtype(at::kLong));
  for (int s = 0; s < 3; ++s) {
    if (args.roundings[s].enabled && args.roundings[s].stochastic) {
      streams.draws[s] = true;
      std::tie(streams.seed[s], streams.offset[s]) = cpu_seed_offset(generator);
      seed_offsets.mutable_data_ptr<int64_t>()[2 * s] = static_cast<int64_t>(streams.seed[s]);
      seed_offsets.mutable_data_ptr<int64_t>()[2 * s + 1] = static_cast<int64_t>(streams.offset[s]);
    }
  }
  with_contiguous(param, grad, momentum_buffer, args, [&](at::Tensor& p, at::Tensor& g, at::Tensor& b) {
    step_contiguous(p, g, b.defined() ? &b : nullptr, args, streams);
  });
  return seed_offsets;
}

// fixed_point_sgd_ on each parameter in turn, so the same draws and bits as a loop of it, without a
// Python call per parameter (the host time of a small model's step on a GPU).
std::vector<at::Tensor> fixed_point_sgd_foreach(at::TensorList params, at::TensorList grads,
                                                at::TensorList momentum_buffers, double lr, double momentum,
                                                double dampening, double weight_decay, bool nesterov, bool maximize,
                                                bool first_step, c10::IntArrayRef grad_format,
                                                c10::IntArrayRef weight_format, c10::IntArrayRef state_format,
                                                const std::optional<at::Generator>& generator) {
  TORCH_CHECK(grads.size() == params.size(), "grads must have one tensor per param (", params.size(), "), got ",
              grads.size());
  TORCH_CHECK(momentum_buffers.empty() || momentum_buffers.size() == params.size(),
              "momentum_buffers must be empty or have one tensor per param (", params.size(), "), got ",
              momentum_buffers.size());
  static const auto step = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fastnets::fixed_point_sgd_", "")
                               .typed<at::Tensor(at::Tensor&, at::Tensor&, const std::optional<at::Tensor>&, double,
                                                 double, double, double, bool, bool, bool, c10::IntArrayRef,
                                                 c10::IntArrayRef, c10::IntArrayRef,
                                                 const std::optional<at::Generator>&)>();
  const auto buffer = [&](size_t i) {
    return momentum_buffers.empty() ? std::nullopt : std::optional<at::Tensor>(momentum_buffers[i]);
  };
  // Every parameter's arguments are checked before the first is written: a bad one steps none.
  for (size_t i = 0; i < params.size(); ++i) {
    const SgdArgs args = parse_sgd_args(params[i], grads[i], buffer(i), lr, momentum, dampening, weight_decay,
                                        nesterov, maximize, first_step, grad_format, weight_format, state_format);
    const bool draws = std::any_of(std::begin(args.roundings), std::end(args.roundings),
                                   [](const auto& rounding) { return rounding.enabled && rounding.stochastic; });
    TORCH_CHECK(!draws || !generator.has_value() || !generator->defined() ||
                    generator->device().type() == params[i].device().type(),
                "generator must be a ", params[i].device().type(), " generator for params[", i, "] on ",
                params[i].device(), ", got one on ", generator->device());
  }
  std::vector<at::Tensor> seed_offsets;
  seed_offsets.reserve(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    at::Tensor param = params[i], grad = grads[i];
    seed_offsets.push_back(step.call(param, grad, buffer(i), lr, momentum, dampening, weight_decay, nesterov,
                                     maximize, first_step, grad_format, weight_format, state_format, generator));
  }
  return seed_offsets;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastnets, m) {
  // One step of torch.optim.SGD on one parameter, in place, with three optional fixed-point
  // roundings fused into the same pass: of grad before the step (written back), of param and of
  // momentum_buffer after it. Each format is [] (no rounding) or [wl, fl, stochastic, clamp,
  // symmetric]; momentum_buffer is None exactly when momentum is 0, and is written whole on the
  // first step. Stochastic roundings draw from the generator in the order grad, weight, state.
  // Returns seed_offsets, int64 [3, 2]: their streams ([0, 0] for one that draws nothing).
  m.def("fixed_point_sgd_(Tensor(a!) param, Tensor(b!) grad, Tensor(c!)? momentum_buffer, float lr, "
        "float momentum=0., float dampening=0., float weight_decay=0., bool nesterov=False, bool maximize=False, "
        "bool first_step=False, int[] grad_format=[], int[] weight_format=[], int[] state_format=[], "
        "Generator? generator=None) -> Tensor",
        {at::Tag::nondeterministic_seeded});
  // fixed_point_sgd_ on params[i], grads[i] and momentum_buffers[i] (an empty list: momentum 0),
  // in order, with the same options; one seed_offsets per parameter. A composite: on every device
  // and under autograd, tracing and fake tensors, it is the loop of fixed_point_sgd_ calls.
  m.def("fixed_point_sgd_foreach_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] momentum_buffers, "
        "float lr, float momentum=0., float dampening=0., float weight_decay=0., bool nesterov=False, "
        "bool maximize=False, bool first_step=False, int[] grad_format=[], int[] weight_format=[], "
        "int[] state_format=[], Generator? generator=None) -> Tensor[]",
        {at::Tag::nondeterministic_seeded});
  m.impl("fixed_point_sgd_foreach_", c10::DispatchKey::CompositeImplicitAutograd, &fixed_point_sgd_foreach);
}

TORCH_LIBRARY_IMPL(fastnets, CPU, m) { m.impl("fixed_point_sgd_", &fixed_point_sgd_cpu); }

}  // namespace fastnets
