// fastnets::matmul: the CPU GEMM that the LSTM layer uses (common/cpu_matmul.h), as an op of its
// own, so that tests and benchmarks can hold it against torch.mm. CUDA and 16-bit types: at::mm.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/cpu_matmul.h"

namespace fastnets {
namespace {

void check_matmul_args(const at::Tensor& a, const at::Tensor& b) {
  check_training_dtype(a, "a");
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "a and b must be 2-D, got ", a.dim(), "-D and ", b.dim(), "-D");
  TORCH_CHECK(a.size(1) == b.size(0), "b must have a.size(1) = ", a.size(1), " rows, got shape ", b.sizes());
  TORCH_CHECK(b.scalar_type() == a.scalar_type(), "b must have a's dtype ", a.scalar_type(), ", got ",
              b.scalar_type());
  TORCH_CHECK(b.device() == a.device(), "b must be on a's device ", a.device(), ", got ", b.device());
}

at::Tensor matmul_cpu(const at::Tensor& a, const at::Tensor& b) {
  check_matmul_args(a, b);
  if (!cpu_matmul_supports(a.scalar_type())) return at::mm(a, b);
  at::Tensor c = at::empty({a.size(0), b.size(1)}, a.options());
  cpu_matmul(a, usable_in_place(b) ? right_operand_in_place(b) : prepare_right_operand(b), c, false);
  return c;
}

[[maybe_unused]] at::Tensor matmul_any(const at::Tensor& a, const at::Tensor& b) {
  check_matmul_args(a, b);
  return at::mm(a, b);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastnets, m) {
  // a (m, k) @ b (k, n): on the CPU in float32 and float64 by fastnets' own tiled GEMM.
  m.def("matmul(Tensor a, Tensor b) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastnets, CPU, m) {
  m.impl("matmul", &matmul_cpu);
}

#if defined(FASTNETS_WITH_CUDA)
TORCH_LIBRARY_IMPL(fastnets, CUDA, m) {
  m.impl("matmul", &matmul_any);
}
#endif

}  // namespace fastnets
