// Convolution and the fused Conv2d + bias + ReLU + MaxPool2d: CUDA kernels. Schemas and CPU kernels:
// conv.cpp; the index math and the pooling epilogue: conv.h.
//
// Every GEMM of the ops runs in one tiled kernel, conv_gemm_kernel: a block computes a BM x BN tile
// of C[m][col] = sum_k A(m, k) * B(k, col) for one group (and split) blockIdx.z, reading A and B
// through an op's loaders (implicit GEMM: no im2col buffer) into shared memory, and hands the
// finished tile, in shared memory, to the op's epilogue.
//   forward       m: output channel, col: output position (n, oh, ow), k: patch entry q = (c, r, s)
//   fused forward as forward, but a block's columns are the convolution outputs of a rectangular
//                 region under a tile of pooled outputs; the epilogue pools it (relu_max_pool_window)
//                 and writes only the pooled output and argmax
//   grad_input    m: input channel, col: input position (n, ih, iw), k: (output channel, r, s)
//   grad_weight   m: output channel, col: patch entry q, k: output position (n, oh, ow), split into
//                 fixed chunks whose partial sums a second kernel adds in order (no atomics)
// grad_bias is a per-channel tree reduction. The fused backward first writes the convolution output's
// gradient (relu_max_pool_conv_grad) to a buffer and then runs the plain backward GEMMs on it.
//
// The inner product runs on tensor cores (WMMA) for float16, bfloat16 and, when
// torch.backends.cudnn.allow_tf32 is set, float32 as TF32; otherwise (float32, float64) as FMAs on a
// register tile. Both paths accumulate in float (double for float64) in a fixed order and round once.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <climits>
#include <optional>
#include <tuple>
#include <type_traits>

#include "common/cuda_utils.cuh"
#include "conv/conv_shape.h"

namespace fastnets {
namespace {

namespace wmma = nvcuda::wmma;

// ---- Device code ----

constexpr int kThreads = 256;  // every kernel here; the GEMM's thread mappings assume it

FASTNETS_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A GEMM reduction index over (channel, r, s), as conv_patch_entry splits its patch entry q.
struct ChannelTap {
  int64_t channel, r, s;
};

__device__ __forceinline__ ChannelTap split_channel_tap(const Conv2dGeometry& g, int64_t index) {
  const int64_t taps = g.kernel_h * g.kernel_w;
  return {index / taps, index % taps / g.kernel_w, index % g.kernel_w};
}

// Conversion of a loaded element to the type the inner product reads (mma_t).
template <typename mma_t>
struct MmaCast {  // float (FMA or TF32), double
  template <typename T>
  static __device__ __forceinline__ mma_t of(T v) { return static_cast<mma_t>(v); }
  static __device__ __forceinline__ mma_t zero() { return mma_t(0); }
};
template <>
struct MmaCast<__half> {
  static __device__ __forceinline__ __half of(c10::Half v) { return static_cast<__half>(v); }
  static __device__ __forceinline__ __half zero() { return static_cast<__half>(c10::Half(0.0f)); }
};
template <>
struct MmaCast<__nv_bfloat16> {
  static __device__ __forceinline__ __nv_bfloat16 of(c10::BFloat16 v) { return static_cast<__nv_bfloat16>(v); }
  static __device__ __forceinline__ __nv_bfloat16 zero() {
    return static_cast<__nv_bfloat16>(c10::BFloat16(0.0f));
  }
};

// Tile shapes. Shared memory holds A as [BM][kLda] (k fastest) and B as [BK][kLdb] during the main
// loop, then the accumulators as [BM][kLdc] for the epilogue (the same bytes). BN >= 128 so that a
// fused block holds the largest pooling window (kMaxFusedPoolWindow positions).
template <typename mma_type, typename acc_type, int BM, int BN, int BK, int kPadA, int kPadB,
          int kPadC>
struct TileConfig {
  using mma_t = mma_type;
  using acc_t = acc_type;
  static constexpr int kBM = BM, kBN = BN, kBK = BK;
  static constexpr int kLda = BK + kPadA, kLdb = BN + kPadB, kLdc = BN + kPadC;
  static constexpr int kABytes = BM * kLda * static_cast<int>(sizeof(mma_t));
  static constexpr int kBBytes = BK * kLdb * static_cast<int>(sizeof(mma_t));
  static constexpr int kCBytes = BM * kLdc * static_cast<int>(sizeof(acc_t));
  static constexpr int kSmemBytes = kABytes + kBBytes > kCBytes ? kABytes + kBBytes : kCBytes;
  static_assert(kSmemBytes <= 48 * 1024, "static shared memory limit");
  static_assert(BN >= kMaxFusedPoolWindow, "a fused block must hold a whole pooling window");
  // Loader mappings (conv_gemm_kernel): A by k-columns, B by 32-column warps or by k-columns.
  static_assert(kThreads % BK == 0 && BM % (kThreads / BK) == 0 && BN % (kThreads / BK) == 0, "mapping");
  static_assert(BN % 32 == 0 && BK % (kThreads / 32) == 0, "mapping");
};

// FMA: the 16 x 16 threads each accumulate a (BM / 16) x (BN / 16) register tile. Odd kLda and
// kLdb spread the loaders' shared-memory stores over the banks.
template <typename T>
struct FmaConfig : TileConfig<T, T, sizeof(T) == 8 ? 32 : 64, 128, 16, 1, 1, sizeof(T) == 8 ? 8 : 16> {
  static constexpr bool kTensorCores = false;
  static constexpr int kMinBlocks = 1;  // its register tiles need more than 128 registers
};

// WMMA: 8 warps as 2 x 4, each a 32 x 32 tile of 16 x 16 fragments. Fragment pointers must be
// 32-byte aligned and leading dimensions multiples of 16 bytes: the pads are 16 bytes.
template <typename T>  // __half, __nv_bfloat16, or float for TF32
struct WmmaConfig : TileConfig<T, float, 64, 128, 16, 16 / sizeof(T), 16 / sizeof(T), 16> {
  static constexpr bool kTensorCores = true;
  // Blocks per multiprocessor that ops whose state allows it ask __launch_bounds__ room for (at
  // most 128 registers a thread): one block of 8 warps leaves the tensor cores waiting on loads.
  static constexpr int kMinBlocks = 2;
  static constexpr int kFragK = sizeof(T) == 2 ? 16 : 8;  // m16n16k16 (half, bf16), m16n16k8 (tf32)
  static constexpr int kBytes = static_cast<int>(sizeof(T));
  static_assert(WmmaConfig::kBM % 32 == 0 && WmmaConfig::kBN % 64 == 0 && WmmaConfig::kBK % kFragK == 0, "warps");
  static_assert(WmmaConfig::kABytes % 32 == 0, "B tile alignment");
  static_assert(16 * WmmaConfig::kLda * kBytes % 32 == 0 && kFragK * kBytes % 32 == 0, "A fragment alignment");
  static_assert(kFragK * WmmaConfig::kLdb * kBytes % 32 == 0 && 16 * kBytes % 32 == 0, "B fragment alignment");
  static_assert(16 * WmmaConfig::kLdc * 4 % 32 == 0, "accumulator fragment alignment");
  static_assert(WmmaConfig::kLda * kBytes % 16 == 0 && WmmaConfig::kLdb * kBytes % 16 == 0 &&
                    WmmaConfig::kLdc * 4 % 16 == 0, "leading dimensions");
};

template <class Cfg>
struct FmaTile {
  using T = typename Cfg::acc_t;
  static constexpr int TM = Cfg::kBM / 16, TN = Cfg::kBN / 16;
  static_assert(kThreads == 256 && Cfg::kBM % 16 == 0 && Cfg::kBN % 16 == 0, "16 x 16 threads");
  // Thread (ty, tx) owns rows ty + 16 i and columns tx + 16 j: a warp reads 16 consecutive B
  // columns and two A rows per k (broadcasts).
  T c[TM][TN];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < TM; ++i) {
#pragma unroll
      for (int j = 0; j < TN; ++j) c[i][j] = T(0);
    }
  }

  // A tile's kBK products are summed apart and then added to c: rounding error then grows with
  // kBK + K / kBK terms rather than K (conv2's K is 800), as blocked GEMMs such as cuDNN's do.
  __device__ __forceinline__ void step(const T* As, const T* Bs, int tid) {
    const int ty = tid / 16, tx = tid % 16;
    T partial[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i) {
#pragma unroll
      for (int j = 0; j < TN; ++j) partial[i][j] = T(0);
    }
#pragma unroll
    for (int k = 0; k < Cfg::kBK; ++k) {
      T a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = As[(ty + 16 * i) * Cfg::kLda + k];
#pragma unroll
      for (int j = 0; j < TN; ++j) b[j] = Bs[k * Cfg::kLdb + tx + 16 * j];
#pragma unroll
      for (int i = 0; i < TM; ++i) {
#pragma unroll
        for (int j = 0; j < TN; ++j) partial[i][j] += a[i] * b[j];
      }
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
#pragma unroll
      for (int j = 0; j < TN; ++j) c[i][j] += partial[i][j];
    }
  }

  __device__ __forceinline__ void store(T* Cs, int tid) const {
    const int ty = tid / 16, tx = tid % 16;
#pragma unroll
    for (int i = 0; i < TM; ++i) {
#pragma unroll
      for (int j = 0; j < TN; ++j) Cs[(ty + 16 * i) * Cfg::kLdc + tx + 16 * j] = c[i][j];
    }
  }
};

// bfloat16 and TF32 fragments need sm_80; builds for older GPUs get a stub (the host never picks
// this path there: see tensor_cores_available).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
template <class Cfg>
struct WmmaTile {
  using T = typename Cfg::mma_t;
  using In = std::conditional_t<std::is_same_v<T, float>, wmma::precision::tf32, T>;
  static constexpr int FK = Cfg::kFragK;
  static constexpr int kWarpRows = Cfg::kBM / 2, kWarpCols = Cfg::kBN / 4;
  static constexpr int FM = kWarpRows / 16, FN = kWarpCols / 16;
  wmma::fragment<wmma::accumulator, 16, 16, FK, float> c[FM][FN];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < FM; ++i) {
#pragma unroll
      for (int j = 0; j < FN; ++j) wmma::fill_fragment(c[i][j], 0.0f);
    }
  }

  __device__ __forceinline__ void step(const T* As, const T* Bs, int tid) {
    const int warp = tid / 32, warp_row = warp / 4, warp_col = warp % 4;
#pragma unroll
    for (int kk = 0; kk < Cfg::kBK; kk += FK) {
      wmma::fragment<wmma::matrix_a, 16, 16, FK, In, wmma::row_major> a[FM];
      wmma::fragment<wmma::matrix_b, 16, 16, FK, In, wmma::row_major> b[FN];
#pragma unroll
      for (int i = 0; i < FM; ++i) {
        wmma::load_matrix_sync(a[i], As + (warp_row * kWarpRows + 16 * i) * Cfg::kLda + kk, Cfg::kLda);
        if constexpr (std::is_same_v<T, float>) {
#pragma unroll
          for (int e = 0; e < a[i].num_elements; ++e) a[i].x[e] = wmma::__float_to_tf32(a[i].x[e]);
        }
      }
#pragma unroll
      for (int j = 0; j < FN; ++j) {
        wmma::load_matrix_sync(b[j], Bs + kk * Cfg::kLdb + warp_col * kWarpCols + 16 * j, Cfg::kLdb);
        if constexpr (std::is_same_v<T, float>) {
#pragma unroll
          for (int e = 0; e < b[j].num_elements; ++e) b[j].x[e] = wmma::__float_to_tf32(b[j].x[e]);
        }
      }
#pragma unroll
      for (int i = 0; i < FM; ++i) {
#pragma unroll
        for (int j = 0; j < FN; ++j) wmma::mma_sync(c[i][j], a[i], b[j], c[i][j]);
      }
    }
  }

  __device__ __forceinline__ void store(float* Cs, int tid) const {
    const int warp = tid / 32, warp_row = warp / 4, warp_col = warp % 4;
#pragma unroll
    for (int i = 0; i < FM; ++i) {
#pragma unroll
      for (int j = 0; j < FN; ++j) {
        wmma::store_matrix_sync(Cs + (warp_row * kWarpRows + 16 * i) * Cfg::kLdc + warp_col * kWarpCols + 16 * j,
                                c[i][j], Cfg::kLdc, wmma::mem_row_major);
      }
    }
  }
};
#else
template <class Cfg>
struct WmmaTile {
  __device__ void zero() { __trap(); }
  __device__ void step(const typename Cfg::mma_t*, const typename Cfg::mma_t*, int) { __trap(); }
  __device__ void store(float*, int) const { __trap(); }
};
#endif

// C[m][col] = sum over k in [op.k_begin(z), op.k_end(z)) of A(m, k) B(k, col) for the tile
// (blockIdx.y, blockIdx.x) of batch z = blockIdx.z, then op.epilogue on the tile.
//
// The op provides Row a_row(z, m) and Col b_col(z, col_block, j) (per-thread state for a row of A
// and a column of B, fixed for the whole loop), a_k(z, k) and b_k(z, k) (what the elements of
// reduction index k have in common: computed once per k for all of a thread's rows or columns, since
// the index math, with its divisions, costs more than the loads), a_at(z, row, a_k) and
// b_at(z, col, b_k) (the elements, zero for rows or columns past the matrix; the kernel masks k),
// and kBAlongK: whether B is contiguous along k (load it like A) or along columns (a warp loads 32
// consecutive columns).
// Each thread holds its share of the next k-tile in registers while the block multiplies the
// current one.
template <class Cfg, class Op>
__global__ void __launch_bounds__(kThreads, Op::kMinBlocks) conv_gemm_kernel(const Op op) {
  using mma_t = typename Cfg::mma_t;
  using acc_t = typename Cfg::acc_t;
  using Tile = std::conditional_t<Cfg::kTensorCores, WmmaTile<Cfg>, FmaTile<Cfg>>;
  constexpr int BM = Cfg::kBM, BK = Cfg::kBK;
  // A: thread t loads k = t % BK of rows t / BK + i * kARowStep.
  constexpr int kARowStep = kThreads / BK, kARows = BM / kARowStep;
  // B along k: k = t % BK of columns t / BK + j * kBColStep; along columns: columns t % 32 + 32 j
  // of rows t / 32 + r * kBRowStep (the columns of one row share its k's index math).
  constexpr bool kAlongK = Op::kBAlongK;
  constexpr int kBColStep = kAlongK ? kThreads / BK : 32, kBCols = Cfg::kBN / kBColStep;
  constexpr int kBRowStep = kAlongK ? BK : kThreads / 32, kBRows = BK / kBRowStep;

  __shared__ __align__(128) unsigned char smem[Cfg::kSmemBytes];
  mma_t* const As = reinterpret_cast<mma_t*>(smem);
  mma_t* const Bs = reinterpret_cast<mma_t*>(smem + Cfg::kABytes);
  acc_t* const Cs = reinterpret_cast<acc_t*>(smem);

  const int tid = static_cast<int>(threadIdx.x);
  const int64_t z = blockIdx.z, row_block = blockIdx.y, col_block = blockIdx.x;
  const int64_t k_begin = op.k_begin(z), k_end = op.k_end(z);
  const int a_k = tid % BK, a_m = tid / BK;
  const int b_k = kAlongK ? tid % BK : tid / 32, b_n = kAlongK ? tid / BK : tid % 32;

  typename Op::Row rows[kARows];
#pragma unroll
  for (int i = 0; i < kARows; ++i) rows[i] = op.a_row(z, row_block * BM + a_m + i * kARowStep);
  typename Op::Col cols[kBCols];
#pragma unroll
  for (int j = 0; j < kBCols; ++j) cols[j] = op.b_col(z, col_block, b_n + j * kBColStep);

  const mma_t zero = MmaCast<mma_t>::zero();
  mma_t a_next[kARows], b_next[kBRows][kBCols];
  const auto load = [&](int64_t k0) {
    const int64_t ka = k0 + a_k;
    const auto a_shared = op.a_k(z, ka);
#pragma unroll
    for (int i = 0; i < kARows; ++i) a_next[i] = ka < k_end ? op.a_at(z, rows[i], a_shared) : zero;
#pragma unroll
    for (int r = 0; r < kBRows; ++r) {
      const int64_t kb = k0 + b_k + r * kBRowStep;
      const auto b_shared = op.b_k(z, kb);
#pragma unroll
      for (int j = 0; j < kBCols; ++j) b_next[r][j] = kb < k_end ? op.b_at(z, cols[j], b_shared) : zero;
    }
  };
  const auto store = [&]() {
#pragma unroll
    for (int i = 0; i < kARows; ++i) As[(a_m + i * kARowStep) * Cfg::kLda + a_k] = a_next[i];
#pragma unroll
    for (int r = 0; r < kBRows; ++r) {
#pragma unroll
      for (int j = 0; j < kBCols; ++j) Bs[(b_k + r * kBRowStep) * Cfg::kLdb + b_n + j * kBColStep] = b_next[r][j];
    }
  };

  Tile tile;
  tile.zero();
  load(k_begin);
  for (int64_t k0 = k_begin; k0 < k_end; k0 += BK) {  // block-uniform bounds
    store();
    __syncthreads();
    if (k0 + BK < k_end) load(k0 + BK);
    tile.step(As, Bs, tid);
    __syncthreads();  // before the next store (or Cs) overwrites the tiles
  }
  tile.store(Cs, tid);
  __syncthreads();
  op.epilogue(z, row_block, col_block, Cs, tid);
}

// The pooled outputs a fused block covers: tile_h x tile_w of them, over a region_h x region_w
// region of the convolution output (at most `columns` positions), tiles_h x tiles_w tiles per plane.
struct PoolTile {
  int64_t tile_h, tile_w, region_h, region_w, tiles_h, tiles_w;
};

// The tile whose region fits in `columns` with the fewest tiles per pooled plane (each tile is a
// block's full GEMM, however many of its columns the plane's edge leaves unused), then the most
// pooled outputs, then the wider (longer input rows); no larger than the pooled plane.
inline PoolTile choose_pool_tile(const ConvPoolGeometry& pool, int64_t columns) {
  PoolTile best{0, 0, 0, 0, 0, 0};
  int64_t best_tiles = 0;
  for (int64_t th = 1; th <= pool.out_h; ++th) {
    if (th > 1 && pool.stride_h > columns) break;
    const int64_t rh = (th - 1) * pool.stride_h + pool.kernel_h;
    if (rh > columns) break;
    for (int64_t tw = 1; tw <= pool.out_w; ++tw) {
      if (tw > 1 && pool.stride_w > columns) break;
      const int64_t rw = (tw - 1) * pool.stride_w + pool.kernel_w;
      if (rh * rw > columns) break;
      const int64_t tiles = ceil_div(pool.out_h, th) * ceil_div(pool.out_w, tw);
      const bool better = best_tiles == 0 || tiles < best_tiles ||
                          (tiles == best_tiles && (th * tw > best.tile_h * best.tile_w ||
                                                   (th * tw == best.tile_h * best.tile_w && tw > best.tile_w)));
      if (better) {
        best = {th, tw, rh, rw, 0, 0};
        best_tiles = tiles;
      }
    }
  }
  TORCH_INTERNAL_ASSERT(best.tile_h > 0, "no pooling tile fits ", columns, " columns");
  best.tiles_h = ceil_div(pool.out_h, best.tile_h);
  best.tiles_w = ceil_div(pool.out_w, best.tile_w);
  return best;
}

// Forward: rows are the group's output channels, k the patch entries. Plain: columns are (n, oh, ow)
// over the batch; the epilogue adds the bias and stores. Fused: col_block is (n, pooled tile), its
// columns the tile's region; the epilogue adds the bias and pools.
template <typename scalar_t, class Cfg>
struct ForwardOp {
  using mma_t = typename Cfg::mma_t;
  using acc_t = typename Cfg::acc_t;
  static constexpr bool kBAlongK = false;
  static constexpr int kMinBlocks = Cfg::kMinBlocks;
  Conv2dGeometry g;
  const scalar_t* x;
  const scalar_t* w;
  const scalar_t* bias;  // nullptr: none
  scalar_t* out;
  bool fused;
  ConvPoolGeometry pool;  // fused only, as the rest
  PoolTile pt;
  uint8_t* argmax;

  struct Row {
    const scalar_t* w;  // the channel's filter; nullptr past the group's channels
  };
  struct Col {
    const scalar_t* x;  // the image's group of input channels; nullptr for masked columns
    int64_t ih0, iw0;   // the output's window origin (oh * stride_h, ow * stride_w)
  };

  __device__ __forceinline__ int64_t k_begin(int64_t) const { return 0; }
  __device__ __forceinline__ int64_t k_end(int64_t) const { return g.patch_size(); }
  __device__ __forceinline__ int64_t a_k(int64_t, int64_t q) const { return q; }
  __device__ __forceinline__ ConvPatchEntry b_k(int64_t, int64_t q) const { return conv_patch_entry(g, q); }

  __device__ __forceinline__ Row a_row(int64_t group, int64_t m) const {
    const int64_t kg = g.group_out_channels();
    return {m < kg ? w + (group * kg + m) * g.patch_size() : nullptr};
  }
  __device__ __forceinline__ mma_t a_at(int64_t, const Row& row, int64_t q) const {
    return row.w != nullptr ? MmaCast<mma_t>::of(row.w[q]) : MmaCast<mma_t>::zero();
  }

  __device__ __forceinline__ Col b_col(int64_t group, int64_t col_block, int j) const {
    int64_t n, oh, ow;
    if (fused) {
      const int64_t tiles = pt.tiles_h * pt.tiles_w, t = col_block % tiles;
      if (j >= pt.region_h * pt.region_w) return {nullptr, 0, 0};
      n = col_block / tiles;
      oh = t / pt.tiles_w * pt.tile_h * pool.stride_h + j / pt.region_w;
      ow = t % pt.tiles_w * pt.tile_w * pool.stride_w + j % pt.region_w;
      if (oh >= g.out_h || ow >= g.out_w) return {nullptr, 0, 0};
    } else {
      const int64_t col = col_block * Cfg::kBN + j;
      if (col >= g.batch * g.out_plane()) return {nullptr, 0, 0};
      n = col / g.out_plane();
      const int64_t p = col % g.out_plane();
      oh = p / g.out_w;
      ow = p % g.out_w;
    }
    return {x + (n * g.in_channels + group * g.group_in_channels()) * g.in_plane(), oh * g.stride_h,
            ow * g.stride_w};
  }
  __device__ __forceinline__ mma_t b_at(int64_t, const Col& col, const ConvPatchEntry& entry) const {
    if (col.x == nullptr) return MmaCast<mma_t>::zero();
    const int64_t offset = conv_entry_offset(g, entry, col.ih0, col.iw0);
    return offset < 0 ? MmaCast<mma_t>::zero() : MmaCast<mma_t>::of(col.x[offset]);
  }

  __device__ __forceinline__ void epilogue(int64_t group, int64_t row_block, int64_t col_block, acc_t* tile,
                                           int tid) const {
    constexpr int BM = Cfg::kBM, BN = Cfg::kBN;
    const int64_t kg = g.group_out_channels();
    if (!fused) {
      const int64_t columns = g.batch * g.out_plane();
      for (int e = tid; e < BM * BN; e += kThreads) {  // consecutive threads: consecutive positions
        const int i = e / BN, j = e % BN;
        const int64_t m = row_block * BM + i, col = col_block * BN + j;
        if (m >= kg || col >= columns) continue;
        const int64_t k = group * kg + m, n = col / g.out_plane(), p = col % g.out_plane();
        acc_t v = tile[i * Cfg::kLdc + j];
        if (bias != nullptr) v += static_cast<acc_t>(bias[k]);
        out[(n * g.out_channels + k) * g.out_plane() + p] = static_cast<scalar_t>(v);
      }
      return;
    }
    if (bias != nullptr) {  // relu_max_pool_window takes the convolution output with its bias
      for (int e = tid; e < BM * BN; e += kThreads) {
        const int i = e / BN, j = e % BN;
        const int64_t m = row_block * BM + i;
        if (m < kg) tile[i * Cfg::kLdc + j] += static_cast<acc_t>(bias[group * kg + m]);
      }
    }
    __syncthreads();  // uniform: `fused` and `bias` are the same for the whole grid
    const int64_t tiles = pt.tiles_h * pt.tiles_w, n = col_block / tiles, t = col_block % tiles;
    const int64_t ph0 = t / pt.tiles_w * pt.tile_h, pw0 = t % pt.tiles_w * pt.tile_w;
    const int64_t per_row = pt.tile_h * pt.tile_w;
    for (int64_t e = tid; e < BM * per_row; e += kThreads) {
      const int64_t i = e / per_row, local = e % per_row, lph = local / pt.tile_w, lpw = local % pt.tile_w;
      const int64_t m = row_block * BM + i, ph = ph0 + lph, pw = pw0 + lpw;
      if (m >= kg || ph >= pool.out_h || pw >= pool.out_w) continue;
      // The region starts at the tile's first window: the tile-local (lph, lpw) addresses it.
      uint8_t winner;
      const acc_t v = relu_max_pool_window(tile + i * Cfg::kLdc, pt.region_w, pool, lph, lpw, winner);
      const int64_t o = ((n * g.out_channels + group * kg + m) * pool.out_h + ph) * pool.out_w + pw;
      out[o] = static_cast<scalar_t>(v);
      argmax[o] = winner;
    }
  }
};

// grad_input: rows are the group's input channels, columns (n, ih, iw) over the batch, k the group's
// (output channel, r, s): A = weight[k][c][r][s], B = dconv at the output that reads (ih, iw)
// through (r, s), if any.
template <typename scalar_t, class Cfg>
struct GradInputOp {
  using mma_t = typename Cfg::mma_t;
  using acc_t = typename Cfg::acc_t;
  static constexpr bool kBAlongK = false;
  static constexpr int kMinBlocks = Cfg::kMinBlocks;
  Conv2dGeometry g;
  const scalar_t* w;
  const scalar_t* dconv;  // (N, K, OH, OW)
  scalar_t* grad_input;

  struct Row {
    int64_t c;  // -1 past the group's channels
  };
  struct Col {
    const scalar_t* d;  // the image's group of dconv channels; nullptr for masked columns
    int64_t ih, iw;
  };
  struct KTap {  // reduction index (channel k, tap)
    int64_t k, tap;
  };

  __device__ __forceinline__ int64_t k_begin(int64_t) const { return 0; }
  __device__ __forceinline__ int64_t k_end(int64_t) const {
    return g.group_out_channels() * g.kernel_h * g.kernel_w;
  }
  __device__ __forceinline__ KTap a_k(int64_t, int64_t index) const {
    const int64_t taps = g.kernel_h * g.kernel_w;
    return {index / taps, index % taps};
  }
  __device__ __forceinline__ ChannelTap b_k(int64_t, int64_t index) const { return split_channel_tap(g, index); }

  __device__ __forceinline__ Row a_row(int64_t, int64_t m) const { return {m < g.group_in_channels() ? m : -1}; }
  __device__ __forceinline__ mma_t a_at(int64_t group, const Row& row, const KTap& kt) const {
    if (row.c < 0) return MmaCast<mma_t>::zero();
    const int64_t taps = g.kernel_h * g.kernel_w;
    return MmaCast<mma_t>::of(
        w[((group * g.group_out_channels() + kt.k) * g.group_in_channels() + row.c) * taps + kt.tap]);
  }

  __device__ __forceinline__ Col b_col(int64_t group, int64_t col_block, int j) const {
    const int64_t col = col_block * Cfg::kBN + j;
    if (col >= g.batch * g.in_plane()) return {nullptr, 0, 0};
    const int64_t n = col / g.in_plane(), position = col % g.in_plane();
    return {dconv + (n * g.out_channels + group * g.group_out_channels()) * g.out_plane(), position / g.in_w,
            position % g.in_w};
  }
  __device__ __forceinline__ mma_t b_at(int64_t, const Col& col, const ChannelTap& t) const {
    if (col.d == nullptr) return MmaCast<mma_t>::zero();
    const int64_t p = conv_output_position(g, t.r, t.s, col.ih, col.iw);
    return p < 0 ? MmaCast<mma_t>::zero() : MmaCast<mma_t>::of(col.d[t.channel * g.out_plane() + p]);
  }

  __device__ __forceinline__ void epilogue(int64_t group, int64_t row_block, int64_t col_block, acc_t* tile,
                                           int tid) const {
    constexpr int BM = Cfg::kBM, BN = Cfg::kBN;
    const int64_t columns = g.batch * g.in_plane();
    for (int e = tid; e < BM * BN; e += kThreads) {
      const int i = e / BN, j = e % BN;
      const int64_t m = row_block * BM + i, col = col_block * BN + j;
      if (m >= g.group_in_channels() || col >= columns) continue;
      const int64_t n = col / g.in_plane(), position = col % g.in_plane();
      grad_input[(n * g.in_channels + group * g.group_in_channels() + m) * g.in_plane() + position] =
          static_cast<scalar_t>(tile[i * Cfg::kLdc + j]);
    }
  }
};

// grad_weight: rows are the group's output channels, columns the patch entries q, k the outputs
// (n, oh, ow) of split z % splits: [split * chunk, split * chunk + chunk). z = group * splits + split.
// The epilogue writes the split's sums to partial[split][channel][q] (accumulator precision).
template <typename scalar_t, class Cfg>
struct GradWeightOp {
  using mma_t = typename Cfg::mma_t;
  using acc_t = typename Cfg::acc_t;
  static constexpr bool kBAlongK = true;  // B (the input at (n, oh, ow)) is contiguous along k
  // One block per multiprocessor: the patch entries of a thread's 8 columns (kept to spare the loads
  // their divisions) take more than 128 registers, and fewer spill.
  static constexpr int kMinBlocks = 1;
  Conv2dGeometry g;
  const scalar_t* x;
  const scalar_t* dconv;  // (N, K, OH, OW)
  acc_t* partial;         // (splits, K, patch)
  int64_t splits, chunk;

  struct Row {
    const scalar_t* d;  // image 0's plane of the channel; nullptr past the group's channels
  };
  struct Col {
    ConvPatchEntry entry;  // of patch entry q
    bool inside;           // q is inside the patch
  };
  struct Output {  // reduction index (n, oh, ow)
    int64_t n, p, ih0, iw0;
  };

  __device__ __forceinline__ int64_t k_begin(int64_t z) const { return z % splits * chunk; }
  __device__ __forceinline__ int64_t k_end(int64_t z) const {
    const int64_t end = k_begin(z) + chunk, length = g.batch * g.out_plane();
    return end < length ? end : length;
  }

  __device__ __forceinline__ Row a_row(int64_t z, int64_t m) const {
    const int64_t kg = g.group_out_channels();
    return {m < kg ? dconv + (z / splits * kg + m) * g.out_plane() : nullptr};
  }
  __device__ __forceinline__ Output output_of(int64_t index) const {
    const int64_t n = index / g.out_plane(), p = index % g.out_plane();
    return {n, p, p / g.out_w * g.stride_h, p % g.out_w * g.stride_w};
  }
  __device__ __forceinline__ Output a_k(int64_t, int64_t index) const { return output_of(index); }
  __device__ __forceinline__ Output b_k(int64_t, int64_t index) const { return output_of(index); }

  __device__ __forceinline__ mma_t a_at(int64_t, const Row& row, const Output& o) const {
    if (row.d == nullptr) return MmaCast<mma_t>::zero();
    return MmaCast<mma_t>::of(row.d[o.n * g.out_channels * g.out_plane() + o.p]);
  }

  __device__ __forceinline__ Col b_col(int64_t, int64_t col_block, int j) const {
    const int64_t q = col_block * Cfg::kBN + j;
    const bool inside = q < g.patch_size();
    return {conv_patch_entry(g, inside ? q : 0), inside};
  }
  __device__ __forceinline__ mma_t b_at(int64_t z, const Col& col, const Output& o) const {
    if (!col.inside) return MmaCast<mma_t>::zero();
    const int64_t offset = conv_entry_offset(g, col.entry, o.ih0, o.iw0);
    if (offset < 0) return MmaCast<mma_t>::zero();
    return MmaCast<mma_t>::of(x[(o.n * g.in_channels + z / splits * g.group_in_channels()) * g.in_plane() + offset]);
  }

  __device__ __forceinline__ void epilogue(int64_t z, int64_t row_block, int64_t col_block, acc_t* tile,
                                           int tid) const {
    constexpr int BM = Cfg::kBM, BN = Cfg::kBN;
    const int64_t kg = g.group_out_channels(), patch = g.patch_size(), group = z / splits, split = z % splits;
    for (int e = tid; e < BM * BN; e += kThreads) {
      const int i = e / BN, j = e % BN;
      const int64_t m = row_block * BM + i, q = col_block * BN + j;
      if (m >= kg || q >= patch) continue;
      partial[((split * g.out_channels) + group * kg + m) * patch + q] = tile[i * Cfg::kLdc + j];
    }
  }
};

// The splits of grad_weight's reduction over `length` outputs: enough blocks (with `blocks` per
// split) to fill a large GPU, chunks of at least kMinChunk outputs, a multiple of 32 (any tile's
// BK). A function of the problem only, so the sums' order never depends on the device or timing.
struct SplitK {
  int64_t splits, chunk;
};

inline SplitK choose_splits(int64_t length, int64_t blocks, int64_t groups) {
  constexpr int64_t kTargetBlocks = 1024, kMinChunk = 1024, kMaxGridZ = 65535;
  int64_t splits = std::min(ceil_div(kTargetBlocks, std::max<int64_t>(blocks, 1)), ceil_div(length, kMinChunk));
  splits = std::max<int64_t>(1, std::min(splits, kMaxGridZ / std::max<int64_t>(groups, 1)));
  const int64_t chunk = std::max<int64_t>(32, ceil_div(ceil_div(length, splits), 32) * 32);
  return {std::max<int64_t>(1, ceil_div(length, chunk)), chunk};
}

// grad_weight = the splits' partial sums added in split order, rounded once.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
sum_splits_kernel(const acc_t* __restrict__ partial, scalar_t* __restrict__ out, int64_t elements, int64_t splits) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; e < elements; e += stride) {
    acc_t sum = acc_t(0);
    for (int64_t s = 0; s < splits; ++s) sum += partial[s * elements + e];
    out[e] = static_cast<scalar_t>(sum);
  }
}

// The gradient of the convolution output at (n, k, p): grad_output itself (conv2d) ...
template <typename scalar_t, typename acc_t>
struct PlainConvGrad {
  const scalar_t* grad;  // (N, K, OH, OW)
  int64_t channels, plane;
  __device__ __forceinline__ acc_t operator()(int64_t n, int64_t k, int64_t p) const {
    return static_cast<acc_t>(grad[(n * channels + k) * plane + p]);
  }
};

// ... or through the pooling's argmax (the fused layer).
template <typename scalar_t, typename acc_t>
struct PooledConvGrad {
  const scalar_t* grad;    // (N, K, PH, PW)
  const uint8_t* argmax;  // (N, K, PH, PW)
  ConvPoolGeometry pool;
  int64_t channels, out_w;
  __device__ __forceinline__ acc_t operator()(int64_t n, int64_t k, int64_t p) const {
    const int64_t plane = (n * channels + k) * pool.out_h * pool.out_w;
    return relu_max_pool_conv_grad<scalar_t, acc_t>(grad + plane, argmax + plane, pool, p / out_w, p % out_w);
  }
};

// The fused layer's dconv (N, K, OH, OW), in the input dtype: the GEMMs' tensor-core inputs round
// it to that anyway, and float and double keep it exact.
template <typename scalar_t, class Source>
__global__ void __launch_bounds__(kThreads)
conv_grad_kernel(const Source source, scalar_t* __restrict__ dconv, int64_t elements, int64_t channels,
                 int64_t plane) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; e < elements; e += stride) {
    const int64_t p = e % plane, nk = e / plane;
    dconv[e] = static_cast<scalar_t>(source(nk / channels, nk % channels, p));
  }
}

// grad_bias[k] = sum over (n, p) of the convolution output's gradient, one block per channel:
// per-thread sums in a fixed order, then a fixed tree.
template <typename scalar_t, typename acc_t, class Source>
__global__ void __launch_bounds__(kThreads)
bias_grad_kernel(const Source source, scalar_t* __restrict__ grad_bias, int64_t batch, int64_t plane) {
  __shared__ acc_t sums[kThreads];
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t k = blockIdx.x;
  acc_t sum = acc_t(0);
  for (int64_t e = tid; e < batch * plane; e += kThreads) sum += source(e / plane, k, e % plane);
  sums[tid] = sum;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (tid < width) sums[tid] += sums[tid + width];
    __syncthreads();
  }
  if (tid == 0) grad_bias[k] = static_cast<scalar_t>(sums[0]);
}

// ---- Host entry points ----

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

// WMMA with bfloat16 and TF32 needs compute capability 8.0 (cached per device).
bool tensor_cores_available() {
  static std::array<std::atomic<int>, C10_COMPILE_TIME_MAX_GPUS> cache{};  // 0: not read yet
  const c10::DeviceIndex device = c10::cuda::current_device();
  int major = cache.at(device).load(std::memory_order_relaxed);
  if (major == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    cache[device].store(major, std::memory_order_relaxed);
  }
  return major >= 8;
}

// Calls f(Cfg{}) with the tile configuration, and so the compute path, of scalar_t.
template <typename scalar_t, class F>
void with_config(const F& f) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    f(FmaConfig<double>{});
  } else if constexpr (std::is_same_v<scalar_t, float>) {
    if (at::globalContext().allowTF32CuDNN() && tensor_cores_available()) {
      f(WmmaConfig<float>{});
    } else {
      f(FmaConfig<float>{});
    }
  } else {
    TORCH_CHECK(tensor_cores_available(), "fastnets convolutions in ", c10::CppTypeToScalarType<scalar_t>::value,
                " need a GPU of compute capability 8.0 or newer");
    if constexpr (std::is_same_v<scalar_t, c10::Half>) {
      f(WmmaConfig<__half>{});
    } else {
      static_assert(std::is_same_v<scalar_t, c10::BFloat16>, "float32, float64, float16 or bfloat16");
      f(WmmaConfig<__nv_bfloat16>{});
    }
  }
}

template <class Cfg, class Op>
void launch_gemm(const Op& op, int64_t col_blocks, int64_t rows, int64_t batches) {
  const int64_t row_blocks = ceil_div(rows, Cfg::kBM);
  if (col_blocks == 0 || row_blocks == 0 || batches == 0) return;
  TORCH_CHECK(col_blocks <= INT_MAX && row_blocks <= 65535 && batches <= 65535,
              "convolution too large for one CUDA grid: ", col_blocks, " x ", row_blocks, " x ", batches, " blocks");
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(row_blocks),
                  static_cast<unsigned>(batches));
  conv_gemm_kernel<Cfg, Op><<<grid, kThreads, 0, current_stream()>>>(op);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor optional_contiguous(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->contiguous() : at::Tensor();
}

template <typename scalar_t>
const scalar_t* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}

// The plain convolution's forward op; the fused layer adds its pooling.
template <typename scalar_t, class Cfg>
ForwardOp<scalar_t, Cfg> forward_op(const Conv2dGeometry& g, const at::Tensor& x, const at::Tensor& w,
                                    const at::Tensor& b, at::Tensor& out) {
  ForwardOp<scalar_t, Cfg> op{};
  op.g = g;
  op.x = x.const_data_ptr<scalar_t>();
  op.w = w.const_data_ptr<scalar_t>();
  op.bias = data_or_null<scalar_t>(b);
  op.out = out.mutable_data_ptr<scalar_t>();
  op.fused = false;
  return op;
}

at::Tensor conv2d_cuda(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const Conv2dGeometry g = conv2d_geometry(input, weight, bias, stride, padding, dilation, groups);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous(), w = weight.contiguous(), b = optional_contiguous(bias);
  at::Tensor out = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, x.options());
  if (g.batch == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastnets::conv2d_cuda", [&] {
    with_config<scalar_t>([&](auto cfg) {
      using Cfg = decltype(cfg);
      ForwardOp<scalar_t, Cfg> op = forward_op<scalar_t, Cfg>(g, x, w, b, out);
      launch_gemm<Cfg>(op, ceil_div(g.batch * g.out_plane(), Cfg::kBN), g.group_out_channels(), g.groups);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> conv_relu_pool2d_cuda(const at::Tensor& input, const at::Tensor& weight,
                                                         const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                                         at::IntArrayRef padding, at::IntArrayRef dilation,
                                                         int64_t groups, at::IntArrayRef pool_kernel,
                                                         at::IntArrayRef pool_stride) {
  const Conv2dGeometry g = conv2d_geometry(input, weight, bias, stride, padding, dilation, groups);
  const ConvPoolGeometry pool = conv_pool_geometry(g, pool_kernel, pool_stride);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous(), w = weight.contiguous(), b = optional_contiguous(bias);
  at::Tensor out = at::empty({g.batch, g.out_channels, pool.out_h, pool.out_w}, x.options());
  at::Tensor argmax = at::empty(out.sizes(), x.options().dtype(at::kByte));
  if (g.batch == 0) return {out, argmax};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastnets::conv_relu_pool2d_cuda", [&] {
    with_config<scalar_t>([&](auto cfg) {
      using Cfg = decltype(cfg);
      ForwardOp<scalar_t, Cfg> op = forward_op<scalar_t, Cfg>(g, x, w, b, out);
      op.fused = true;
      op.pool = pool;
      op.pt = choose_pool_tile(pool, Cfg::kBN);
      op.argmax = argmax.mutable_data_ptr<uint8_t>();
      launch_gemm<Cfg>(op, g.batch * op.pt.tiles_h * op.pt.tiles_w, g.group_out_channels(), g.groups);
    });
  });
  return {out, argmax};
}

// grad_input and grad_weight from the convolution output's gradient dconv (N, K, OH, OW), and
// grad_bias from `source` (the same gradient in accumulator precision), as output_mask asks.
template <typename scalar_t, class Source>
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_from(const Conv2dGeometry& g, const at::Tensor& x,
                                                                    const at::Tensor& w, const at::Tensor& dconv,
                                                                    const Source& source,
                                                                    std::array<bool, 3> output_mask) {
  using acc_t = at::opmath_type<scalar_t>;
  const at::TensorOptions options = x.options();
  at::Tensor grad_input = at::empty({0}, options), grad_weight = at::empty({0}, options);
  at::Tensor grad_bias = at::empty({0}, options);
  if (output_mask[0]) grad_input = at::empty({g.batch, g.in_channels, g.in_h, g.in_w}, options);
  if (output_mask[1]) {
    grad_weight = at::empty({g.out_channels, g.group_in_channels(), g.kernel_h, g.kernel_w}, options);
  }
  if (output_mask[2]) grad_bias = at::empty({g.out_channels}, options);

  with_config<scalar_t>([&](auto cfg) {
    using Cfg = decltype(cfg);
    if (output_mask[0]) {
      GradInputOp<scalar_t, Cfg> op{};
      op.g = g;
      op.w = w.const_data_ptr<scalar_t>();
      op.dconv = dconv.const_data_ptr<scalar_t>();
      op.grad_input = grad_input.mutable_data_ptr<scalar_t>();
      launch_gemm<Cfg>(op, ceil_div(g.batch * g.in_plane(), Cfg::kBN), g.group_in_channels(), g.groups);
    }
    if (output_mask[1] && grad_weight.numel() > 0) {
      const int64_t tiles = ceil_div(g.group_out_channels(), Cfg::kBM) * ceil_div(g.patch_size(), Cfg::kBN);
      const SplitK split = choose_splits(g.batch * g.out_plane(), tiles * g.groups, g.groups);
      const at::Tensor partial =
          at::empty({split.splits, g.out_channels, g.patch_size()}, options.dtype(c10::CppTypeToScalarType<acc_t>::value));
      GradWeightOp<scalar_t, Cfg> op{};
      op.g = g;
      op.x = x.const_data_ptr<scalar_t>();
      op.dconv = dconv.const_data_ptr<scalar_t>();
      op.partial = partial.mutable_data_ptr<acc_t>();
      op.splits = split.splits;
      op.chunk = split.chunk;
      launch_gemm<Cfg>(op, ceil_div(g.patch_size(), Cfg::kBN), g.group_out_channels(), g.groups * split.splits);
      const int64_t elements = grad_weight.numel();
      sum_splits_kernel<scalar_t, acc_t><<<grid_size(elements, kThreads), kThreads, 0, current_stream()>>>(
          op.partial, grad_weight.mutable_data_ptr<scalar_t>(), elements, split.splits);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  if (output_mask[2]) {
    TORCH_CHECK(g.out_channels <= INT_MAX, "too many channels for one CUDA grid: ", g.out_channels);
    bias_grad_kernel<scalar_t, acc_t><<<static_cast<unsigned>(g.out_channels), kThreads, 0, current_stream()>>>(
        source, grad_bias.mutable_data_ptr<scalar_t>(), g.batch, g.out_plane());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {grad_input, grad_weight, grad_bias};
}

// The results of an empty batch: an empty grad_input, zero grad_weight and grad_bias.
std::tuple<at::Tensor, at::Tensor, at::Tensor> empty_batch_grads(const Conv2dGeometry& g, const at::Tensor& input,
                                                                 std::array<bool, 3> output_mask) {
  const at::TensorOptions options = input.options();
  return {output_mask[0] ? at::empty({g.batch, g.in_channels, g.in_h, g.in_w}, options) : at::empty({0}, options),
          output_mask[1] ? at::zeros({g.out_channels, g.group_in_channels(), g.kernel_h, g.kernel_w}, options)
                         : at::empty({0}, options),
          output_mask[2] ? at::zeros({g.out_channels}, options) : at::empty({0}, options)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cuda(const at::Tensor& grad_output,
                                                                    const at::Tensor& input, const at::Tensor& weight,
                                                                    at::IntArrayRef stride, at::IntArrayRef padding,
                                                                    at::IntArrayRef dilation, int64_t groups,
                                                                    std::array<bool, 3> output_mask) {
  const Conv2dGeometry g = conv2d_geometry(input, weight, std::nullopt, stride, padding, dilation, groups);
  check_conv_grad(grad_output, input, "grad_output", {g.batch, g.out_channels, g.out_h, g.out_w});
  const c10::cuda::CUDAGuard guard(input.device());
  if (g.batch == 0) return empty_batch_grads(g, input, output_mask);
  const at::Tensor x = input.contiguous(), w = weight.contiguous(), dy = grad_output.contiguous();
  std::tuple<at::Tensor, at::Tensor, at::Tensor> grads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastnets::conv2d_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const PlainConvGrad<scalar_t, acc_t> source{dy.const_data_ptr<scalar_t>(), g.out_channels, g.out_plane()};
    grads = conv2d_backward_from<scalar_t>(g, x, w, dy, source, output_mask);
  });
  return grads;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_relu_pool2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& argmax, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride, std::array<bool, 3> output_mask) {
  ConvPoolGeometry pool;
  const Conv2dGeometry g = conv_relu_pool2d_backward_geometry(grad_output, argmax, input, weight, stride, padding,
                                                              dilation, groups, pool_kernel, pool_stride, pool);
  const c10::cuda::CUDAGuard guard(input.device());
  if (g.batch == 0) return empty_batch_grads(g, input, output_mask);
  const at::Tensor x = input.contiguous(), w = weight.contiguous(), dy = grad_output.contiguous();
  const at::Tensor a = argmax.contiguous();
  std::tuple<at::Tensor, at::Tensor, at::Tensor> grads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "fastnets::conv_relu_pool2d_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const PooledConvGrad<scalar_t, acc_t> source{dy.const_data_ptr<scalar_t>(), a.const_data_ptr<uint8_t>(), pool,
                                                 g.out_channels, g.out_w};
    // grad_input and grad_weight read dconv many times: materialize it once.
    at::Tensor dconv = at::empty({0}, x.options());
    if (output_mask[0] || output_mask[1]) {
      dconv = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, x.options());
      const int64_t elements = dconv.numel();
      conv_grad_kernel<scalar_t><<<grid_size(elements, kThreads), kThreads, 0, current_stream()>>>(
          source, dconv.mutable_data_ptr<scalar_t>(), elements, g.out_channels, g.out_plane());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    grads = conv2d_backward_from<scalar_t>(g, x, w, dconv, source, output_mask);
  });
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnets, CUDA, m) {
  m.impl("conv2d", &conv2d_cuda);
  m.impl("conv2d_backward", &conv2d_backward_cuda);
  m.impl("conv_relu_pool2d", &conv_relu_pool2d_cuda);
  m.impl("conv_relu_pool2d_backward", &conv_relu_pool2d_backward_cuda);
}

}  // namespace fastnets
