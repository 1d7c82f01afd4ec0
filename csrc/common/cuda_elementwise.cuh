#pragma once
// The CUDA driver of the elementwise ops: out[i] = op(in[i], word i of the Philox stream), the
// same functor the CPU driver (cpu_elementwise.h) calls. Each thread takes kElems consecutive
// elements (one 16-byte load, or 32 bytes for float64) per step of a grid-stride loop.
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <optional>
#include <type_traits>

#include "common/cuda_utils.cuh"
#include "common/philox.h"

namespace fastnets {

// Where a kernel's stream comes from: a seed_offset tensor on the device (`replay`: a backward
// pass, or a forward repeated), or the generator's state, which the first thread then writes to
// `record` so that a backward can replay it. Reading the state in the kernel keeps CUDA graph
// replays drawing fresh numbers.
struct PhiloxSource {
  at::PhiloxCudaState state;
  const int64_t* replay = nullptr;
  int64_t* record = nullptr;

  __device__ __forceinline__ void get(uint64_t& seed, uint64_t& offset) const {
    if (replay != nullptr) {
      seed = static_cast<uint64_t>(replay[0]);
      offset = static_cast<uint64_t>(replay[1]);
      return;
    }
    const auto unpacked = at::cuda::philox::unpack(state);
    seed = std::get<0>(unpacked);
    offset = stream_offset(std::get<1>(unpacked));
    if (record != nullptr && blockIdx.x == 0 && threadIdx.x == 0) {
      record[0] = static_cast<int64_t>(seed);
      record[1] = static_cast<int64_t>(offset);
    }
  }
};

inline PhiloxSource philox_from_generator(const std::optional<at::Generator>& generator, c10::DeviceIndex device,
                                          int64_t* record) {
  PhiloxSource source;
  source.state = cuda_philox_state(generator, device);
  source.record = record;
  return source;
}

inline PhiloxSource philox_replay(const int64_t* seed_offset) {
  PhiloxSource source;
  source.replay = seed_offset;
  return source;
}

namespace cuda_detail {

constexpr int kThreads = 256;

// `in` and `out` are pointers, or anything indexed like them (MaskedValues: two arrays read as
// one); only pointers take the vectorized loads and stores.
template <bool kWithWords, bool kVectorized, int kElems, typename In, typename Out, typename Op>
__global__ void __launch_bounds__(kThreads)
map_with_philox_kernel(In in, Out out, int64_t n, Op op, PhiloxSource source) {
  uint64_t seed = 0, offset = 0;
  if (kWithWords) source.get(seed, offset);
  const int64_t groups = (n + kElems - 1) / kElems;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t group = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; group < groups; group += stride) {
    const int64_t first = group * kElems;
    uint32_t words[kElems] = {};
    if (kWithWords) {
#pragma unroll
      for (int b = 0; b < kElems / 4; ++b) {
        const PhiloxWords block = philox_block(seed, offset, static_cast<uint64_t>(first / 4 + b));
#pragma unroll
        for (int w = 0; w < 4; ++w) words[4 * b + w] = block.w[w];
      }
    }
    if constexpr (kVectorized) {
      if (first + kElems <= n) {
        using in_t = std::remove_cv_t<std::remove_pointer_t<In>>;
        using out_t = std::remove_pointer_t<Out>;
        const AlignedVector<in_t, kElems> x = *reinterpret_cast<const AlignedVector<in_t, kElems>*>(in + first);
        AlignedVector<out_t, kElems> y;
#pragma unroll
        for (int j = 0; j < kElems; ++j) y.v[j] = op(x.v[j], words[j]);
        *reinterpret_cast<AlignedVector<out_t, kElems>*>(out + first) = y;
        continue;
      }
    }
#pragma unroll
    for (int j = 0; j < kElems; ++j) {
      if (first + j < n) out[first + j] = op(in[first + j], words[j]);
    }
  }
}

template <typename T, int kElems>
bool is_aligned(const T* pointer) {
  return reinterpret_cast<uintptr_t>(pointer) % sizeof(AlignedVector<T, kElems>) == 0;
}

}  // namespace cuda_detail

// out[i] = op(in[i], word) for i < n on the current stream, word i of `source`'s stream when
// kWithWords, else 0. With words the kernel runs even for n == 0, to record the stream.
template <bool kWithWords, typename In, typename Out, typename Op>
void cuda_map_with_philox(In in, Out out, int64_t n, const Op& op, const PhiloxSource& source) {
  using namespace cuda_detail;
  using in_value_t = std::decay_t<decltype(in[0])>;
  constexpr int kElems = sizeof(in_value_t) >= 4 ? 4 : 16 / sizeof(in_value_t);
  if (!kWithWords && n == 0) return;
  const int64_t blocks = grid_size((n + kElems - 1) / kElems, kThreads);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  bool vectorized = false;
  if constexpr (std::is_pointer_v<In> && std::is_pointer_v<Out>) {
    vectorized = is_aligned<in_value_t, kElems>(in) && is_aligned<std::remove_pointer_t<Out>, kElems>(out);
  }
  if (vectorized) {
    if constexpr (std::is_pointer_v<In> && std::is_pointer_v<Out>) {
      map_with_philox_kernel<kWithWords, true, kElems><<<blocks, kThreads, 0, stream>>>(in, out, n, op, source);
    }
  } else {
    map_with_philox_kernel<kWithWords, false, kElems><<<blocks, kThreads, 0, stream>>>(in, out, n, op, source);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace fastnets
