// RBM unit sampling: operator schema and CPU kernels. CUDA kernels: rbm_cuda.cu; the math: rbm.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "common/cpu_elementwise.h"
#include "common/cpu_generator.h"
#include "common/cpu_isa.h"
#include "common/cpu_matmul.h"
#include "common/philox.h"
#include "rbm/rbm.h"
#include "rbm/rbm_args.h"

namespace fastnets {
namespace {

// Chunks of the elementwise driver's size (a multiple of every SIMD group: groups start on Philox
// blocks).
using cpu_detail::kChunk;
constexpr int64_t kGrainChunks = (1 << 14) / kChunk;  // 16K units: below that one thread is faster

// Units [begin, end) (begin a multiple of 4): `mean` holds their total inputs on entry.
template <int kLanes, RbmUnit kUnit, bool kSample, typename scalar_t, typename Op>
FASTNETS_ALWAYS_INLINE void sample_range(scalar_t* mean, scalar_t* sample, int64_t begin, int64_t end,
                                         uint64_t second_block, uint64_t seed, uint64_t offset, Op op) {
  if constexpr (!kSample) {
    for (int64_t i = begin; i < end; ++i) mean[i] = op.mean(mean[i]);
  } else {
    constexpr bool kSecondWord = kUnit == RbmUnit::kGaussian;
    constexpr int64_t kGroup = 4 * kLanes;
    int64_t i = begin;
    for (; i + kGroup <= end; i += kGroup) {
      uint32_t words1[kGroup], words2[kGroup] = {};
      cpu_detail::philox_words<kLanes>(seed, offset, i, words1);
      // The second word of unit i is word i of the stream from block second_block on.
      if (kSecondWord) cpu_detail::philox_words<kLanes>(seed, offset, 4 * second_block + i, words2);
      for (int j = 0; j < kGroup; ++j) {
        // mean() twice (the compiler computes it once): a named copy of a c10::Half or BFloat16
        // would be stored as an aggregate, which GCC does not vectorize.
        const scalar_t total = mean[i + j];
        mean[i + j] = op.mean(total);
        sample[i + j] = op.sample(total, op.mean(total), words1[j], words2[j]);
      }
    }
    for (; i < end; i += 4) {
      const PhiloxWords block1 = philox_block(seed, offset, static_cast<uint64_t>(i / 4));
      const PhiloxWords block2 =
          kSecondWord ? philox_block(seed, offset, second_block + static_cast<uint64_t>(i / 4)) : PhiloxWords{};
      for (int j = 0; j < 4 && i + j < end; ++j) {
        const scalar_t total = mean[i + j];
        const scalar_t unit_mean = op.mean(total);
        mean[i + j] = unit_mean;
        sample[i + j] = op.sample(total, unit_mean, block1.w[j], block2.w[j]);
      }
    }
  }
}

template <RbmUnit kUnit, bool kSample, typename scalar_t>
void sample_units_cpu(scalar_t* mean, scalar_t* sample, int64_t n, uint64_t seed, uint64_t offset) {
  const RbmSampleOp<kUnit, scalar_t, at::opmath_type<scalar_t>> op;
  const uint64_t second_block = rbm_second_block(n);
  at::parallel_for(0, (n + kChunk - 1) / kChunk, kGrainChunks, [&](int64_t first_chunk, int64_t last_chunk) {
    const int64_t begin = first_chunk * kChunk;
    const int64_t end = std::min(last_chunk * kChunk, n);
    call_with_best_isa_tag([&](auto isa) FASTNETS_INLINE_LAMBDA {
      // The lane count only sets how many Philox blocks share registers; results do not depend on it.
      sample_range<cpu_detail::kPhiloxLanes<decltype(isa)::value>, kUnit, kSample>(mean, sample, begin, end,
                                                                                   second_block, seed, offset, op);
    });
  });
}

// The fused pass over `mean`, which holds the total inputs (contiguous, owned): means in place,
// samples into a new tensor.
std::tuple<at::Tensor, at::Tensor, at::Tensor> sample_units(at::Tensor mean, c10::string_view unit, bool sample,
                                                            const std::optional<at::Generator>& generator,
                                                            const std::optional<at::Tensor>& seed_offset) {
  const RbmUnit kind = parse_rbm_unit(unit);
  if (seed_offset.has_value()) check_seed_offset(*seed_offset, mean.device());
  const auto [seed, offset] = !sample                   ? std::pair<uint64_t, uint64_t>{0, 0}
                              : seed_offset.has_value() ? read_seed_offset(*seed_offset)
                                                        : cpu_seed_offset(generator);
  at::Tensor samples = at::empty(sample ? mean.sizes() : at::IntArrayRef{0}, mean.options());
  const int64_t n = mean.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mean.scalar_type(), "fastnets::rbm_sample", [&] {
    scalar_t* m = mean.mutable_data_ptr<scalar_t>();
    scalar_t* s = samples.mutable_data_ptr<scalar_t>();
    if (kind == RbmUnit::kBernoulli) {
      if (sample) {
        sample_units_cpu<RbmUnit::kBernoulli, true>(m, s, n, seed, offset);
      } else {
        sample_units_cpu<RbmUnit::kBernoulli, false>(m, s, n, seed, offset);
      }
    } else if (sample) {  // a Gaussian unit's mean is its total input: nothing to do without samples
      sample_units_cpu<RbmUnit::kGaussian, true>(m, s, n, seed, offset);
    }
  });
  return {mean, samples, cpu_seed_offset_tensor(seed, offset)};
}

// input @ weight^T (+ bias): float and double by fastnets' own GEMM (dot products of the weight's
// rows for a small batch), whose sums do not depend on the thread count (torch's float32 mm gives
// other bits for 1 and 2 threads at 5-7 and 9-11 rows, and a sample drawn from them could flip);
// 16-bit types by at::addmm.
at::Tensor rbm_total_input_cpu(const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias) {
  if (!cpu_matmul_supports(input.scalar_type())) return rbm_total_input(input, weight, bias);
  const int64_t rows = input.size(0), cols = weight.size(0);
  at::Tensor total = at::empty({rows, cols}, input.options());  // the kernels overwrite it: never bias itself
  if (bias.has_value()) total.copy_(bias->unsqueeze(0).expand({rows, cols}));
  if (rows < kDotProductMaxRows && dot_product_operand(weight.t())) {
    dot_product_matmul(input, weight.t(), total, bias.has_value());
  } else {
    cpu_matmul(input, prepare_right_operand(weight.t()), total, bias.has_value());
  }
  return total;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rbm_sample_cpu(const at::Tensor& input, const at::Tensor& weight,
                                                              const std::optional<at::Tensor>& bias,
                                                              c10::string_view unit, bool sample,
                                                              const std::optional<at::Generator>& generator,
                                                              const std::optional<at::Tensor>& seed_offset) {
  check_rbm_sample_args(input, weight, bias);
  parse_rbm_unit(unit);  // checked before the GEMM
  return sample_units(rbm_total_input_cpu(input, weight, bias), unit, sample, generator, seed_offset);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rbm_sample_units_cpu(const at::Tensor& total_input,
                                                                    c10::string_view unit, bool sample,
                                                                    const std::optional<at::Generator>& generator,
                                                                    const std::optional<at::Tensor>& seed_offset) {
  check_training_dtype(total_input, "total_input");
  return sample_units(total_input.clone(at::MemoryFormat::Contiguous), unit, sample, generator, seed_offset);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastnets, m) {
  // One layer of RBM units given the other layer's states `input` (batch, in_features):
  // total input a = input @ weight^T + bias (one GEMM), then one fused pass writing the means
  // (sigmoid(a) for "bernoulli", a for "gaussian" units of unit variance) and, when `sample`,
  // a sample of every unit from the Philox stream seed_offset (rbm.h; without `sample`, an
  // empty tensor and seed_offset [0, 0], and the generator is not advanced). A seed_offset
  // argument replays that stream instead of drawing one from the generator.
  m.def(
      "rbm_sample(Tensor input, Tensor weight, Tensor? bias=None, str unit=\"bernoulli\", bool sample=True, "
      "Generator? generator=None, Tensor? seed_offset=None) -> (Tensor mean, Tensor sample, Tensor seed_offset)",
      {at::Tag::nondeterministic_seeded});
  // The same units given their total input (any shape) instead of input, weight and bias: the
  // fused pass alone, on a copy.
  m.def(
      "rbm_sample_units(Tensor total_input, str unit=\"bernoulli\", bool sample=True, Generator? generator=None, "
      "Tensor? seed_offset=None) -> (Tensor mean, Tensor sample, Tensor seed_offset)",
      {at::Tag::nondeterministic_seeded});
}

TORCH_LIBRARY_IMPL(fastnets, CPU, m) {
  m.impl("rbm_sample", &rbm_sample_cpu);
  m.impl("rbm_sample_units", &rbm_sample_units_cpu);
}

}  // namespace fastnets
