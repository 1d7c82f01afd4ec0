// The compiled module fastnets._C. Importing it loads this shared library, whose static
// initialisers register every fastnets op with the PyTorch dispatcher (torch.ops.fastnets.*).
// The module itself only reports how it was built.
#include <pybind11/pybind11.h>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "common/cpu_isa.h"

#ifndef FASTNETS_VERSION
#define FASTNETS_VERSION "unknown"
#endif
#ifndef FASTNETS_CUDA_ARCHS
#define FASTNETS_CUDA_ARCHS ""
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastnets kernels; the ops themselves live in torch.ops.fastnets";
  m.def("build_info", [] {
    py::dict info;
    info["version"] = FASTNETS_VERSION;
#if defined(FASTNETS_WITH_CUDA)
    info["cuda"] = true;
    info["cuda_archs"] = FASTNETS_CUDA_ARCHS;
#else
    info["cuda"] = false;
    info["cuda_archs"] = "";
#endif
#if defined(_OPENMP)
    info["openmp"] = true;
    info["openmp_max_threads"] = omp_get_max_threads();
#else
    info["openmp"] = false;
    info["openmp_max_threads"] = 1;
#endif
    info["cpu_isa"] = fastnets::cpu_isa_name(fastnets::cpu_isa());
    return info;
  }, "How fastnets._C was built: version, CUDA and its architectures, OpenMP, the CPU SIMD level in use.");
}
