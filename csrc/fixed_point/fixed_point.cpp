// Fixed-point quantization: operator schemas and CPU kernels. CUDA kernels: fixed_point_cuda.cu;
// the math: fixed_point.h.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <type_traits>

#include "common/checks.h"
#include "common/cpu_elementwise.h"
#include "common/cpu_generator.h"
#include "common/cpu_memory.h"
#include "fixed_point/fixed_point_format.h"

namespace fastnets {
namespace {

// The stream (seed, offset) for the call: drawn from the generator for stochastic rounding only.
std::pair<uint64_t, uint64_t> draw_for(bool stochastic, const std::optional<at::Generator>& generator) {
  return stochastic ? cpu_seed_offset(generator) : std::pair<uint64_t, uint64_t>{0, 0};
}

// out (contiguous, in's dtype and size; it may be in itself) = in rounded to the format; with
// `keep` (contiguous bool flags, one per element), 0 where the flag is false.
void quantize_into(const at::Tensor& in, const bool* keep, at::Tensor& out, const FixedPointFormat& format,
                   bool stochastic, uint64_t seed, uint64_t offset) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "fastnets::fixed_point_quantize", [&] {
    const scalar_t* x = in.const_data_ptr<scalar_t>();
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    const auto map = [&](auto op) {
      using Op = decltype(op);
      if (keep == nullptr) {
        cpu_map_with_philox<Op::kStochastic>(x, y, in.numel(), seed, offset, op);
      } else {
        cpu_map_with_philox<Op::kStochastic>(MaskedValues<scalar_t>{x, keep}, y, in.numel(), seed, offset,
                                             FixedPointQuantizeMaskedOp<Op>{op});
      }
    };
    if constexpr (!std::is_same_v<scalar_t, double>) {
      if (format.float_exact) {
        stochastic ? map(FixedPointQuantizeFloatOp<scalar_t, true>{fixed_point_format_float(format)})
                   : map(FixedPointQuantizeFloatOp<scalar_t, false>{fixed_point_format_float(format)});
        return;
      }
    }
    stochastic ? map(FixedPointQuantizeOp<scalar_t, true>{format}) : map(FixedPointQuantizeOp<scalar_t, false>{format});
  });
}

std::tuple<at::Tensor, at::Tensor> fixed_point_quantize_cpu(const at::Tensor& input, int64_t wl, int64_t fl,
                                                            c10::string_view rounding, bool clamp, bool symmetric,
                                                            const std::optional<at::Generator>& generator) {
  check_training_dtype(input, "input");
  const FixedPointFormat format = make_fixed_point_format(wl, fl, clamp, symmetric);
  const bool stochastic = is_stochastic_rounding(rounding);
  const auto [seed, offset] = draw_for(stochastic, generator);
  const at::Tensor in = input.contiguous();
  at::Tensor out = at::empty_like(in);
  prefault_huge_pages(out.data_ptr(), out.nbytes());
  quantize_into(in, nullptr, out, format, stochastic, seed, offset);
  return {out, cpu_seed_offset_tensor(seed, offset)};
}

// fixed_point_quantize where mask is true, 0 where it is false, in one pass; the numbers drawn
// are those of fixed_point_quantize.
std::tuple<at::Tensor, at::Tensor> fixed_point_quantize_masked_cpu(const at::Tensor& input, const at::Tensor& mask,
                                                                   int64_t wl, int64_t fl, c10::string_view rounding,
                                                                   bool clamp, bool symmetric,
                                                                   const std::optional<at::Generator>& generator) {
  check_training_dtype(input, "input");
  check_quantize_mask(input, mask);
  const FixedPointFormat format = make_fixed_point_format(wl, fl, clamp, symmetric);
  const bool stochastic = is_stochastic_rounding(rounding);
  const auto [seed, offset] = draw_for(stochastic, generator);
  const at::Tensor in = input.contiguous();
  const at::Tensor keep = mask.contiguous();
  at::Tensor out = at::empty_like(in);
  quantize_into(in, keep.const_data_ptr<bool>(), out, format, stochastic, seed, offset);
  return {out, cpu_seed_offset_tensor(seed, offset)};
}

// In place: a contiguous self is rounded where it lies (one pass, no allocation); any other
// layout through a contiguous copy. The numbers drawn are those of fixed_point_quantize.
at::Tensor fixed_point_quantize_inplace_cpu(at::Tensor& self, int64_t wl, int64_t fl, c10::string_view rounding,
                                            bool clamp, bool symmetric, const std::optional<at::Generator>& generator) {
  check_training_dtype(self, "self");
  const FixedPointFormat format = make_fixed_point_format(wl, fl, clamp, symmetric);
  const bool stochastic = is_stochastic_rounding(rounding);
  const auto [seed, offset] = draw_for(stochastic, generator);
  if (self.is_contiguous()) {
    quantize_into(self, nullptr, self, format, stochastic, seed, offset);
  } else {
    at::Tensor out = self.contiguous();
    quantize_into(out, nullptr, out, format, stochastic, seed, offset);
    self.copy_(out);
  }
  return cpu_seed_offset_tensor(seed, offset);
}

std::tuple<at::Tensor, at::Tensor> fixed_point_to_codes_cpu(const at::Tensor& input, int64_t wl, int64_t fl,
                                                            c10::string_view rounding, bool symmetric,
                                                            const std::optional<at::Generator>& generator) {
  check_training_dtype(input, "input");
  check_code_word_length(wl);
  const FixedPointFormat format = make_fixed_point_format(wl, fl, /*clamp=*/true, symmetric);
  const bool stochastic = is_stochastic_rounding(rounding);
  const auto [seed, offset] = draw_for(stochastic, generator);
  const at::Tensor in = input.contiguous();
  at::Tensor codes = at::empty(in.sizes(), in.options().dtype(fixed_point_code_dtype(wl)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "fastnets::fixed_point_to_codes", [&] {
    using input_t = scalar_t;
    const input_t* x = in.const_data_ptr<input_t>();
    dispatch_code_dtype(codes.scalar_type(), [&](auto code_tag) {
      using code_t = decltype(code_tag);
      code_t* y = codes.mutable_data_ptr<code_t>();
      if (stochastic) {
        cpu_map_with_philox<true>(x, y, in.numel(), seed, offset, FixedPointCodeOp<input_t, code_t, true>{format});
      } else {
        cpu_map_with_philox<false>(x, y, in.numel(), seed, offset, FixedPointCodeOp<input_t, code_t, false>{format});
      }
    });
  });
  return {codes, cpu_seed_offset_tensor(seed, offset)};
}

at::Tensor fixed_point_in_range_cpu(const at::Tensor& input, int64_t wl, int64_t fl, bool symmetric) {
  check_training_dtype(input, "input");
  const FixedPointFormat format = make_fixed_point_format(wl, fl, /*clamp=*/true, symmetric);
  const at::Tensor in = input.contiguous();
  at::Tensor inside = at::empty(in.sizes(), in.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "fastnets::fixed_point_in_range", [&] {
    cpu_map_with_philox<false>(in.const_data_ptr<scalar_t>(), inside.mutable_data_ptr<bool>(), in.numel(), 0, 0,
                               FixedPointInRangeOp<scalar_t>(format));
  });
  return inside;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastnets, m) {
  // x rounded to the fixed-point format <wl - fl, fl> (rounding "nearest" or "stochastic"),
  // saturated unless clamp is false, in x's dtype. Returns (output, seed_offset): the Philox
  // stream of stochastic rounding ([0, 0] for nearest, which draws nothing).
  m.def("fixed_point_quantize(Tensor input, int wl, int fl, str rounding=\"stochastic\", bool clamp=True, "
        "bool symmetric=False, Generator? generator=None) -> (Tensor, Tensor)",
        {at::Tag::nondeterministic_seeded});
  // fixed_point_quantize in place: self rounded to the format, the same numbers drawn. Returns
  // seed_offset. Not differentiable (for weights and optimizer state, under no_grad).
  m.def("fixed_point_quantize_(Tensor(a!) self, int wl, int fl, str rounding=\"stochastic\", bool clamp=True, "
        "bool symmetric=False, Generator? generator=None) -> Tensor",
        {at::Tag::nondeterministic_seeded});
  // fixed_point_quantize(input) where mask (bool, input's size) is true and 0 where it is false,
  // in one pass (the backward of quant.quantize with zero_outside_range). Returns (output,
  // seed_offset); the numbers drawn are those of fixed_point_quantize.
  m.def("fixed_point_quantize_masked(Tensor input, Tensor mask, int wl, int fl, str rounding=\"stochastic\", "
        "bool clamp=True, bool symmetric=False, Generator? generator=None) -> (Tensor, Tensor)",
        {at::Tag::nondeterministic_seeded});
  // The integer codes of x in the format (always saturated): int8, int16 or int32, the smallest
  // that holds wl bits; x = code * 2^-fl on the grid. Returns (codes, seed_offset).
  m.def("fixed_point_to_codes(Tensor input, int wl, int fl, str rounding=\"nearest\", bool symmetric=False, "
        "Generator? generator=None) -> (Tensor, Tensor)",
        {at::Tag::nondeterministic_seeded});
  // Whether each value of x lies in the format's range [min, max] (compared exactly; NaN does
  // not), as bool: where a saturating rounding keeps the gradient (quant.quantize's
  // zero_outside_range), in one pass.
  m.def("fixed_point_in_range(Tensor input, int wl, int fl, bool symmetric=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastnets, CPU, m) {
  m.impl("fixed_point_quantize", &fixed_point_quantize_cpu);
  m.impl("fixed_point_quantize_", &fixed_point_quantize_inplace_cpu);
  m.impl("fixed_point_quantize_masked", &fixed_point_quantize_masked_cpu);
  m.impl("fixed_point_to_codes", &fixed_point_to_codes_cpu);
  m.impl("fixed_point_in_range", &fixed_point_in_range_cpu);
}

}  // namespace fastnets
