// The compiled module fastnets._C. Importing it loads this shared library, whose static
// initialisers register every fastnets op with the PyTorch dispatcher (torch.ops.fastnets.*).
// The module itself reports how it was built, and exposes the host/device index math that only
// the CUDA kernels call, so that the CPU tests cover it (tests/test_conv.py).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "common/cpu_isa.h"
#include "conv/conv.h"

#ifndef FASTNETS_VERSION
#define FASTNETS_VERSION "unknown"
#endif
#ifndef FASTNETS_CUDA_ARCHS
#define FASTNETS_CUDA_ARCHS ""
#endif

namespace py = pybind11;

namespace {

// Input channels, input size, kernel, stride, padding, dilation, output size: one group.
fastnets::Conv2dGeometry conv_geometry(const std::vector<int64_t>& v) {
  fastnets::Conv2dGeometry g{};
  g.batch = 1;
  g.in_channels = v.at(0);
  g.in_h = v.at(1);
  g.in_w = v.at(2);
  g.out_channels = 1;
  g.kernel_h = v.at(3);
  g.kernel_w = v.at(4);
  g.stride_h = v.at(5);
  g.stride_w = v.at(6);
  g.pad_h = v.at(7);
  g.pad_w = v.at(8);
  g.dilation_h = v.at(9);
  g.dilation_w = v.at(10);
  g.groups = 1;
  g.out_h = v.at(11);
  g.out_w = v.at(12);
  return g;
}

}  // namespace

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
#if defined(FASTNETS_WITH_CUBLAS)
    info["cublas"] = true;  // the LSTM's GEMMs call cuBLAS directly (else through at::mm)
#else
    info["cublas"] = false;
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
  }, "How fastnets._C was built: version, CUDA and its architectures, direct cuBLAS calls, OpenMP, the CPU SIMD "
     "level in use.");
  m.def("_conv_input_offsets", [](const std::vector<int64_t>& geometry) {
    const fastnets::Conv2dGeometry g = conv_geometry(geometry);
    std::vector<int64_t> offsets;  // [q][oh][ow]
    for (int64_t q = 0; q < g.patch_size(); ++q) {
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        for (int64_t ow = 0; ow < g.out_w; ++ow) offsets.push_back(fastnets::conv_input_offset(g, q, oh, ow));
      }
    }
    return offsets;
  }, "conv_input_offset for every (patch entry, output) of a geometry (test hook).");
  m.def("_conv_output_positions", [](const std::vector<int64_t>& geometry) {
    const fastnets::Conv2dGeometry g = conv_geometry(geometry);
    std::vector<int64_t> positions;  // [r][s][ih][iw]
    for (int64_t r = 0; r < g.kernel_h; ++r) {
      for (int64_t s = 0; s < g.kernel_w; ++s) {
        for (int64_t ih = 0; ih < g.in_h; ++ih) {
          for (int64_t iw = 0; iw < g.in_w; ++iw) positions.push_back(fastnets::conv_output_position(g, r, s, ih, iw));
        }
      }
    }
    return positions;
  }, "conv_output_position for every (tap, input) of a geometry (test hook).");
  m.def("_relu_max_pool_conv_grad", [](const std::vector<double>& grad, const std::vector<uint8_t>& argmax,
                                       const std::vector<int64_t>& pool_geometry, int64_t conv_h, int64_t conv_w) {
    const fastnets::ConvPoolGeometry pool{pool_geometry.at(0), pool_geometry.at(1), pool_geometry.at(2),
                                          pool_geometry.at(3), pool_geometry.at(4), pool_geometry.at(5)};
    if (static_cast<int64_t>(grad.size()) != pool.out_h * pool.out_w || argmax.size() != grad.size()) {
      throw std::invalid_argument("grad and argmax must hold out_h * out_w values");
    }
    std::vector<double> conv_grad;  // [oh][ow]
    for (int64_t oh = 0; oh < conv_h; ++oh) {
      for (int64_t ow = 0; ow < conv_w; ++ow) {
        conv_grad.push_back(fastnets::relu_max_pool_conv_grad<double, double>(grad.data(), argmax.data(), pool, oh, ow));
      }
    }
    return conv_grad;
  }, "relu_max_pool_conv_grad for every convolution output of one channel (test hook).");
}
