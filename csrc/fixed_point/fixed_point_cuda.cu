// Fixed-point quantization: CUDA kernels. Schemas and CPU kernels: fixed_point.cpp; the math:
// fixed_point.h.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/cuda_elementwise.cuh"
#include "fixed_point/fixed_point_format.h"

namespace fastnets {
namespace {

// Stochastic rounding draws from the generator, and the kernel records the stream in
// seed_offset; nearest rounding draws nothing and leaves seed_offset at [0, 0].
PhiloxSource source_for(bool stochastic, const std::optional<at::Generator>& generator, at::Tensor& seed_offset) {
  return stochastic ? philox_from_generator(generator, seed_offset.get_device(), seed_offset.mutable_data_ptr<int64_t>())
                    : PhiloxSource();
}

// out (contiguous, in's dtype and size; it may be in itself) = in rounded to the format; with
// `keep` (contiguous bool flags, one per element), 0 where the flag is false.
void quantize_into(const at::Tensor& in, const bool* keep, at::Tensor& out, const FixedPointFormat& format,
                   bool stochastic, const PhiloxSource& source) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "fastnets::fixed_point_quantize_cuda", [&] {
    const scalar_t* x = in.const_data_ptr<scalar_t>();
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    const auto map = [&](auto op) {
      using Op = decltype(op);
      if (keep == nullptr) {
        cuda_map_with_philox<Op::kStochastic>(x, y, in.numel(), op, source);
      } else {
        cuda_map_with_philox<Op::kStochastic>(MaskedValues<scalar_t>{x, keep}, y, in.numel(),
                                              FixedPointQuantizeMaskedOp<Op>{op}, source);
      }
    };
    stochastic ? map(FixedPointQuantizeOp<scalar_t, true>{format}) : map(FixedPointQuantizeOp<scalar_t, false>{format});
  });
}

std::tuple<at::Tensor, at::Tensor> fixed_point_quantize_cuda(const at::Tensor& input, int64_t wl, int64_t fl,
                                                             c10::string_view rounding, bool clamp, bool symmetric,
                                                             const std::optional<at::Generator>& generator) {
  TORCH_CHECK(input.is_cuda(), "input must be on the generator's device (cuda), got ", input.device());
  check_training_dtype(input, "input");
  const FixedPointFormat format = make_fixed_point_format(wl, fl, clamp, symmetric);
  const bool stochastic = is_stochastic_rounding(rounding);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor in = input.contiguous();
  at::Tensor out = at::empty_like(in);
  at::Tensor seed_offset = at::zeros({2}, in.options().dtype(at::kLong));
  quantize_into(in, nullptr, out, format, stochastic, source_for(stochastic, generator, seed_offset));
  return {out, seed_offset};
}

std::tuple<at::Tensor, at::Tensor> fixed_point_quantize_masked_cuda(const at::Tensor& input, const at::Tensor& mask,
                                                                    int64_t wl, int64_t fl, c10::string_view rounding,
                                                                    bool clamp, bool symmetric,
                                                                    const std::optional<at::Generator>& generator) {
  check_training_dtype(input, "input");
  check_quantize_mask(input, mask);
  TORCH_CHECK(input.is_cuda(), "input must be on the generator's device (cuda), got ", input.device());
  const FixedPointFormat format = make_fixed_point_format(wl, fl, clamp, symmetric);
  const bool stochastic = is_stochastic_rounding(rounding);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor in = input.contiguous();
  const at::Tensor keep = mask.contiguous();
  at::Tensor out = at::empty_like(in);
  at::Tensor seed_offset = at::zeros({2}, in.options().dtype(at::kLong));
  quantize_into(in, keep.const_data_ptr<bool>(), out, format, stochastic,
                source_for(stochastic, generator, seed_offset));
  return {out, seed_offset};
}

at::Tensor fixed_point_quantize_inplace_cuda(at::Tensor& self, int64_t wl, int64_t fl, c10::string_view rounding,
                                             bool clamp, bool symmetric, const std::optional<at::Generator>& generator) {
  TORCH_CHECK(self.is_cuda(), "self must be on the generator's device (cuda), got ", self.device());
  check_training_dtype(self, "self");
  const FixedPointFormat format = make_fixed_point_format(wl, fl, clamp, symmetric);
  const bool stochastic = is_stochastic_rounding(rounding);
  const c10::cuda::CUDAGuard guard(self.device());
  at::Tensor seed_offset = at::zeros({2}, self.options().dtype(at::kLong));
  const PhiloxSource source = source_for(stochastic, generator, seed_offset);
  if (self.is_contiguous()) {
    quantize_into(self, nullptr, self, format, stochastic, source);
  } else {
    at::Tensor out = self.contiguous();
    quantize_into(out, nullptr, out, format, stochastic, source);
    self.copy_(out);
  }
  return seed_offset;
}

std::tuple<at::Tensor, at::Tensor> fixed_point_to_codes_cuda(const at::Tensor& input, int64_t wl, int64_t fl,
                                                             c10::string_view rounding, bool symmetric,
                                                             const std::optional<at::Generator>& generator) {
  TORCH_CHECK(input.is_cuda(), "input must be on the generator's device (cuda), got ", input.device());
  check_training_dtype(input, "input");
  check_code_word_length(wl);
  const FixedPointFormat format = make_fixed_point_format(wl, fl, /*clamp=*/true, symmetric);
  const bool stochastic = is_stochastic_rounding(rounding);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor in = input.contiguous();
  at::Tensor codes = at::empty(in.sizes(), in.options().dtype(fixed_point_code_dtype(wl)));
  at::Tensor seed_offset = at::zeros({2}, in.options().dtype(at::kLong));
  const PhiloxSource source = source_for(stochastic, generator, seed_offset);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "fastnets::fixed_point_to_codes_cuda", [&] {
    using input_t = scalar_t;
    const input_t* x = in.const_data_ptr<input_t>();
    dispatch_code_dtype(codes.scalar_type(), [&](auto code_tag) {
      using code_t = decltype(code_tag);
      code_t* y = codes.mutable_data_ptr<code_t>();
      if (stochastic) {
        cuda_map_with_philox<true>(x, y, in.numel(), FixedPointCodeOp<input_t, code_t, true>{format}, source);
      } else {
        cuda_map_with_philox<false>(x, y, in.numel(), FixedPointCodeOp<input_t, code_t, false>{format}, source);
      }
    });
  });
  return {codes, seed_offset};
}

at::Tensor fixed_point_in_range_cuda(const at::Tensor& input, int64_t wl, int64_t fl, bool symmetric) {
  TORCH_CHECK(input.is_cuda(), "input must be on a CUDA device, got ", input.device());
  check_training_dtype(input, "input");
  const FixedPointFormat format = make_fixed_point_format(wl, fl, /*clamp=*/true, symmetric);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor in = input.contiguous();
  at::Tensor inside = at::empty(in.sizes(), in.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "fastnets::fixed_point_in_range", [&] {
    cuda_map_with_philox<false>(in.const_data_ptr<scalar_t>(), inside.mutable_data_ptr<bool>(), in.numel(),
                                FixedPointInRangeOp<scalar_t>(format), PhiloxSource());
  });
  return inside;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnets, CUDA, m) {
  m.impl("fixed_point_quantize", &fixed_point_quantize_cuda);
  m.impl("fixed_point_quantize_", &fixed_point_quantize_inplace_cuda);
  m.impl("fixed_point_quantize_masked", &fixed_point_quantize_masked_cuda);
  m.impl("fixed_point_to_codes", &fixed_point_to_codes_cuda);
  m.impl("fixed_point_in_range", &fixed_point_in_range_cuda);
}

}  // namespace fastnets
