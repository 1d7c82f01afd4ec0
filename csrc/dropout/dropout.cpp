// Dropout: operator schemas and CPU kernels. CUDA kernels: dropout_cuda.cu; the math: dropout.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/cpu_elementwise.h"
#include "common/cpu_generator.h"
#include "common/cpu_memory.h"
#include "dropout/dropout.h"

namespace fastnets {
namespace {

// Forward and backward alike: the input times the mask of stream (seed, offset), scaled.
at::Tensor dropout_apply_cpu(const at::Tensor& input, uint64_t seed, uint64_t offset, double p) {
  const at::Tensor in = input.contiguous();
  at::Tensor out = at::empty_like(in);
  prefault_huge_pages(out.data_ptr(), out.nbytes());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "fastnets::dropout", [&] {
    const auto op = make_dropout_op<scalar_t, at::opmath_type<scalar_t>>(p);
    cpu_map_with_philox<true>(in.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), in.numel(), seed,
                              offset, op);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> dropout_cpu(const at::Tensor& input, double p,
                                               const std::optional<at::Generator>& generator) {
  check_training_dtype(input, "input");
  check_probability(p, "p");
  const auto [seed, offset] = cpu_seed_offset(generator);
  return {dropout_apply_cpu(input, seed, offset, p), cpu_seed_offset_tensor(seed, offset)};
}

at::Tensor dropout_backward_cpu(const at::Tensor& grad_output, const at::Tensor& seed_offset, double p) {
  check_training_dtype(grad_output, "grad_output");
  check_probability(p, "p");
  check_seed_offset(seed_offset, grad_output.device());
  const auto [seed, offset] = read_seed_offset(seed_offset);
  return dropout_apply_cpu(grad_output, seed, offset, p);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastnets, m) {
  // Training-mode dropout. Returns (output, seed_offset): seed_offset, an int64 tensor [2] on the
  // input's device, names the Philox stream the mask came from and is all that backward keeps.
  m.def("dropout(Tensor input, float p, Generator? generator=None) -> (Tensor, Tensor)",
        {at::Tag::nondeterministic_seeded});
  // grad_output times the mask of stream seed_offset, scaled: the backward of dropout (and a
  // forward replayed from a known seed_offset).
  m.def("dropout_backward(Tensor grad_output, Tensor seed_offset, float p) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastnets, CPU, m) {
  m.impl("dropout", &dropout_cpu);
  m.impl("dropout_backward", &dropout_backward_cpu);
}

}  // namespace fastnets
