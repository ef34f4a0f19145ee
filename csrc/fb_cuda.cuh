// Helpers shared by the CUDA kernels (csrc/*.cu): activation math, 16-byte vector access, the
// geometry of the per-channel passes (with or without a depthwise conv in front), block-level
// reductions in a fixed order, launch tiling, and host-side argument checks.
//
// Conventions:
//  - acc_t is float for float / half / bfloat16 and double for double (AccOf).
//  - A thread owns V consecutive channels of one pixel on channels-last data (V = 16 bytes /
//    sizeof(scalar_t) when C % V == 0 and every big pointer is 16-byte aligned, else V = 1), or one
//    element of an NCHW plane (V = 1).
//  - Reductions are deterministic: each block writes its partial to a buffer (no atomics), the
//    partials are combined in block order by reduce_partials.cu, in double.
#pragma once

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <limits>
#include <optional>
#include <type_traits>

#include "fb_common.h"
#include "fb_cuda_runtime.cuh"

namespace fastblocks {
namespace cuda {

// Elements of scalar_t in one 16-byte vector.
template <typename scalar_t>
constexpr int kVec = 16 / static_cast<int>(sizeof(scalar_t));

constexpr int kThreads = 256;        // threads per block of every 2-D tiled pass
constexpr int64_t kTargetBlocks = 1024;  // blocks per tiled pass (a fixed number: results do not depend on the GPU)

// std::min is host-only without --expt-relaxed-constexpr; the kernels use these.
__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// ------------------------------------------------------------------------------ activations
// Precise expf / exp (the extension is built without --use_fast_math: float32 tolerance 1e-5).
__device__ __forceinline__ float fb_exp(float x) { return expf(x); }
__device__ __forceinline__ double fb_exp(double x) { return exp(x); }

template <typename T>
__device__ __forceinline__ T fb_sigmoid(T u) {
  return T(1) / (T(1) + fb_exp(-u));
}

// Phi(u) from erfc: no cancellation in the negative tail (1 + erf would lose it).
__device__ __forceinline__ float fb_normal_cdf(float u) { return 0.5f * erfcf(-u * 0.70710678118654752f); }
__device__ __forceinline__ double fb_normal_cdf(double u) { return 0.5 * erfc(-u * 0.70710678118654752440); }
template <typename T>
__device__ __forceinline__ T fb_normal_pdf(T u) {
  return fb_exp(T(-0.5) * u * u) * T(0.398942280401432678);
}
template <typename T>
__device__ __forceinline__ T gelu_tanh_two_z(T u) {
  return T(kGeluTanhTwoBeta) * (u + T(kGeluTanhKappa) * u * u * u);
}

// act(u); same formulas as the CPU kernels (fb_cpu_math.h) and fastblocks/_act.py.
template <typename T>
__device__ __forceinline__ T act_fwd(Act act, T u) {
  switch (act) {
    case Act::Silu: return u * fb_sigmoid(u);
    case Act::Relu: return u > T(0) ? u : T(0);
    case Act::Relu6: return u > T(0) ? (u < T(6) ? u : T(6)) : T(0);
    case Act::Hardswish: {
      const T t = u + T(3);
      return u * (t > T(0) ? (t < T(6) ? t : T(6)) : T(0)) / T(6);
    }
    case Act::LeakyRelu: return u > T(0) ? u : u * T(kLeakyReluSlope);
    case Act::Gelu: return u * fb_normal_cdf(u);
    case Act::GeluTanh: return u * fb_sigmoid(gelu_tanh_two_z(u));
    default: return u;
  }
}

// d act(u) / du * g, from the pre-activation u.
template <typename T>
__device__ __forceinline__ T act_bwd(Act act, T u, T g) {
  switch (act) {
    case Act::Silu: {
      const T s = fb_sigmoid(u);
      return g * s * (T(1) + u * (T(1) - s));
    }
    case Act::Relu: return u > T(0) ? g : T(0);
    case Act::Relu6: return (u > T(0) && u < T(6)) ? g : T(0);
    case Act::Hardswish: return u < T(-3) ? T(0) : (u <= T(3) ? g * (u / T(3) + T(0.5)) : g);
    case Act::LeakyRelu: return u > T(0) ? g : g * T(kLeakyReluSlope);
    case Act::Gelu: return g * (fb_normal_cdf(u) + u * fb_normal_pdf(u));
    case Act::GeluTanh: {
      const T s = fb_sigmoid(gelu_tanh_two_z(u));
      const T dz2 = T(kGeluTanhTwoBeta) * (T(1) + T(3 * kGeluTanhKappa) * u * u);
      return g * (s + u * s * (T(1) - s) * dz2);
    }
    default: return g;
  }
}

// ------------------------------------------------------------------------------ vector access
// V consecutive elements at p, converted to A. When V * sizeof(T) is a multiple of 16 the loads
// are 16-byte vectors (the host guarantees alignment before choosing V > 1).
template <int V, typename T, typename A>
__device__ __forceinline__ void load_pack(const T* __restrict__ p, A (&out)[V]) {
  constexpr int kBytes = V * static_cast<int>(sizeof(T));
  if constexpr (V > 1 && kBytes % 16 == 0) {
    uint4 raw[kBytes / 16];
#pragma unroll
    for (int j = 0; j < kBytes / 16; ++j) raw[j] = reinterpret_cast<const uint4*>(p)[j];
    const T* e = reinterpret_cast<const T*>(raw);
#pragma unroll
    for (int v = 0; v < V; ++v) out[v] = static_cast<A>(e[v]);
  } else {
#pragma unroll
    for (int v = 0; v < V; ++v) out[v] = static_cast<A>(p[v]);
  }
}

template <int V, typename T, typename A>
__device__ __forceinline__ void store_pack(T* __restrict__ p, const A (&in)[V]) {
  constexpr int kBytes = V * static_cast<int>(sizeof(T));
  if constexpr (V > 1 && kBytes % 16 == 0) {
    uint4 raw[kBytes / 16];
    T* e = reinterpret_cast<T*>(raw);
#pragma unroll
    for (int v = 0; v < V; ++v) e[v] = static_cast<T>(in[v]);
#pragma unroll
    for (int j = 0; j < kBytes / 16; ++j) reinterpret_cast<uint4*>(p)[j] = raw[j];
  } else {
#pragma unroll
    for (int v = 0; v < V; ++v) p[v] = static_cast<T>(in[v]);
  }
}

// ------------------------------------------------------------------------------ geometry
// The per-channel passes run over output positions p in [0, N * Ho * Wo) and channels c.
//  K > 0: z(p, c) = depthwise K x K conv (stride S, pads top / left, dilation 1) of channels-last x
//         (N, H, W, C) with tap-major weights w[(kh * K + kw) * C + c]; outputs are channels-last.
//  K == 0: z(p, c) = x(p, c) * w[c] (w == nullptr: x itself); x and the outputs share the layout
//         `cl` (channels-last or NCHW), Ho = H, Wo = W.
struct PassGeo {
  int64_t N, C, H, W, Ho, Wo;
  int K, S, top, left;
  bool cl;
};

// Offset of output element (p, c).
__device__ __forceinline__ int64_t out_offset(const PassGeo& g, int64_t p, int64_t c) {
  if (g.cl) return p * g.C + c;
  const int64_t hw = g.Ho * g.Wo;
  return ((p / hw) * g.C + c) * hw + p % hw;
}

// z[v] += z(p, c0 + v) for v < V.
template <int V, typename scalar_t, typename acc_t>
__device__ __forceinline__ void accumulate_z(const PassGeo& g, const scalar_t* __restrict__ x,
                                             const acc_t* __restrict__ w, int64_t p, int64_t c0, acc_t (&z)[V]) {
  if (g.K == 0) {
    acc_t xv[V];
    load_pack<V>(x + out_offset(g, p, c0), xv);
    if (w != nullptr) {
      acc_t wv[V];
      load_pack<V>(w + c0, wv);  // w is in every pass's alignment check
#pragma unroll
      for (int v = 0; v < V; ++v) xv[v] *= wv[v];
    }
#pragma unroll
    for (int v = 0; v < V; ++v) z[v] += xv[v];
    return;
  }
  // Pixel coordinates fit in int32 (the host checks N * H * W < 2^31); element offsets are int64.
  const int pi = static_cast<int>(p);
  const int ow = pi % static_cast<int>(g.Wo);
  const int t = pi / static_cast<int>(g.Wo);
  const int oh = t % static_cast<int>(g.Ho);
  const int n = t / static_cast<int>(g.Ho);
  const int ih0 = oh * g.S - g.top, iw0 = ow * g.S - g.left;
  for (int kh = 0; kh < g.K; ++kh) {
    const int ih = ih0 + kh;
    if (ih < 0 || ih >= g.H) continue;
    const scalar_t* xrow = x + ((static_cast<int64_t>(n) * g.H + ih) * g.W) * g.C + c0;
    const acc_t* wrow = w + static_cast<int64_t>(kh) * g.K * g.C + c0;
    for (int kw = 0; kw < g.K; ++kw) {
      const int iw = iw0 + kw;
      if (iw < 0 || iw >= g.W) continue;
      acc_t xv[V], wv[V];
      load_pack<V>(xrow + static_cast<int64_t>(iw) * g.C, xv);
      load_pack<V>(wrow + static_cast<int64_t>(kw) * g.C, wv);
#pragma unroll
      for (int v = 0; v < V; ++v) z[v] += xv[v] * wv[v];
    }
  }
}

// ------------------------------------------------------------------------------ block reductions
// Dynamic shared memory, typed per kernel.
template <typename T>
__device__ __forceinline__ T* shared_buffer() {
  return reinterpret_cast<T*>(dynamic_shared_memory());
}

// 2-D blocks (blockDim.x channel groups x blockDim.y rows, blockDim.y a power of two): sums each
// thread's vals over threadIdx.y in a fixed tree order; row 0 ends with the totals. Every thread
// of the block must call it. Shared memory: blockDim.x * blockDim.y * NV acc_t.
template <int NV, typename acc_t>
__device__ __forceinline__ void block_sum_rows(acc_t (&vals)[NV]) {
  acc_t* sh = shared_buffer<acc_t>();
  const int tx = threadIdx.x, ty = threadIdx.y, TX = blockDim.x;
  acc_t* mine = sh + (static_cast<int>(ty) * TX + tx) * NV;
#pragma unroll
  for (int j = 0; j < NV; ++j) mine[j] = vals[j];
  __syncthreads();
  for (int s = blockDim.y / 2; s > 0; s >>= 1) {
    if (ty < s) {
      const acc_t* other = sh + ((ty + s) * TX + tx) * NV;
#pragma unroll
      for (int j = 0; j < NV; ++j) mine[j] += other[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int j = 0; j < NV; ++j) vals[j] = sh[tx * NV + j];
}

// Same tree for (count, mean[V], M2[V]) moments, merged with Chan et al.'s formula.
// Shared memory: blockDim.x * blockDim.y * (2 * V + 1) acc_t.
template <int V, typename acc_t>
__device__ __forceinline__ void block_merge_moments(acc_t& count, acc_t (&mean)[V], acc_t (&m2)[V]) {
  constexpr int NV = 2 * V + 1;
  acc_t* sh = shared_buffer<acc_t>();
  const int tx = threadIdx.x, ty = threadIdx.y, TX = blockDim.x;
  acc_t* mine = sh + (ty * TX + tx) * NV;
  mine[0] = count;
#pragma unroll
  for (int v = 0; v < V; ++v) mine[1 + v] = mean[v], mine[1 + V + v] = m2[v];
  __syncthreads();
  for (int s = blockDim.y / 2; s > 0; s >>= 1) {
    if (ty < s) {
      const acc_t* other = sh + ((ty + s) * TX + tx) * NV;
      const acc_t na = mine[0], nb = other[0], n = na + nb;
      if (nb > acc_t(0)) {
        const acc_t wb = nb / n, wab = na * nb / n;
#pragma unroll
        for (int v = 0; v < V; ++v) {
          const acc_t d = other[1 + v] - mine[1 + v];
          mine[1 + v] += d * wb;
          mine[1 + V + v] += other[1 + V + v] + d * d * wab;
        }
        mine[0] = n;
      }
    }
    __syncthreads();
  }
  count = sh[tx * NV];
#pragma unroll
  for (int v = 0; v < V; ++v) mean[v] = sh[tx * NV + 1 + v], m2[v] = sh[tx * NV + 1 + V + v];
}

// ------------------------------------------------------------------------------ host: tiling
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A 2-D tiled pass over `groups` channel groups x `rows` rows (x `depth` in gridDim.z): blocks of
// kThreads threads (tx channel groups x ty rows), each block owns rows [blockIdx.y * rows_per_block,
// + rows_per_block). The partition depends only on the sizes (never on the GPU): deterministic.
struct Tiling {
  dim3 grid, block;
  int64_t groups, rows, rows_per_block;
};

inline Tiling make_tiling(int64_t groups, int64_t rows, bool channels_contiguous, int64_t depth = 1) {
  int tx = 1;
  if (channels_contiguous)
    while (tx < 32 && tx < groups) tx *= 2;
  const int ty = kThreads / tx;
  const int64_t gx = ceil_div(groups, tx);
  const int64_t max_gy = std::max<int64_t>(1, ceil_div(rows, ty));
  int64_t gy = std::clamp<int64_t>(ceil_div(kTargetBlocks, std::max<int64_t>(gx * depth, 1)), 1, max_gy);
  const int64_t rpb = std::max<int64_t>(1, ceil_div(rows, gy));
  gy = std::max<int64_t>(1, ceil_div(rows, rpb));
  TORCH_CHECK(gx < (int64_t(1) << 31) && gy <= 65535 && depth <= 65535,
              "fastblocks_kernels: tensor too large for one launch (", groups, " channel groups x ", rows, " rows)");
  Tiling t;
  t.grid = dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy), static_cast<unsigned>(depth));
  t.block = dim3(tx, ty, 1);
  t.groups = groups;
  t.rows = rows;
  t.rows_per_block = rpb;
  return t;
}

// 1-D grid-stride launch over `work` items (capped: the kernels loop).
inline dim3 grid_1d(int64_t work, int threads = kThreads) {
  return dim3(static_cast<unsigned>(std::clamp<int64_t>(ceil_div(work, threads), 1, 65535 * 8)));
}

inline bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Whether 16-byte vectors of scalar_t over channels can be used: C a multiple of the vector
// width and every pointer accessed with vectors 16-byte aligned.
template <typename scalar_t>
inline bool channel_vectors_ok(int64_t C, std::initializer_list<const void*> ptrs) {
  if (C % kVec<scalar_t> != 0) return false;
  for (const void* p : ptrs)
    if (!aligned16(p)) return false;
  return true;
}

// Calls f(std::integral_constant<int, V>{}) with V = kVec<scalar_t> when `vec`, else V = 1.
template <typename scalar_t, typename F>
inline void with_vec(bool vec, F&& f) {
  if (vec) {
    f(std::integral_constant<int, kVec<scalar_t>>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

// ------------------------------------------------------------------------------ host: checks
inline void check_x(const at::Tensor& x, const char* op, const char* name = "x") {
  TORCH_CHECK(on_kernel_device(x), op, ": ", name, " must be a ", kKernelDevice, " tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 4, op, ": ", name, " must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf, op, ": ", name,
              " must be float32, float64, bfloat16 or float16, got ", t);
  TORCH_CHECK(x.size(0) * x.size(2) * x.size(3) < (int64_t(1) << 31), op, ": ", name,
              " has too many pixels (N * H * W must be < 2^31)");
}

inline void check_device(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on ", x.device(), " like x, got ", t.device());
}

inline void check_same_shape(const at::Tensor& a, const at::Tensor& x, const char* op, const char* name) {
  check_device(a, x, op, name);
  TORCH_CHECK(a.sizes() == x.sizes(), op, ": ", name, " must have shape ", x.sizes(), ", got ", a.sizes());
}

// A (C,) parameter on x's device as a contiguous tensor of the accumulation dtype, or `fill`.
inline at::Tensor per_channel(const std::optional<at::Tensor>& t, const at::Tensor& x, int64_t c, double fill,
                              const char* op, const char* name) {
  const auto acc = acc_type_of(x.scalar_type());
  if (!t.has_value() || !t->defined()) return at::full({c}, fill, x.options().dtype(acc));
  check_device(*t, x, op, name);
  TORCH_CHECK(t->numel() == c, op, ": ", name, " must have ", c, " elements, got ", t->numel());
  return t->reshape({c}).to(acc).contiguous();
}

// FASTBLOCKS_POISON=1: fill a kernel output with NaN before the kernel writes it, so that an
// element the kernel misses shows up in the tests (same switch as the triton backend).
inline void maybe_poison(at::Tensor& t) {
  const char* env = std::getenv("FASTBLOCKS_POISON");  // read per call: tests set it at run time
  const bool poison = env != nullptr && env[0] != '\0' && env[0] != '0';
  if (poison && t.defined()) t.fill_(std::numeric_limits<double>::quiet_NaN());
}

// ------------------------------------------------------------------------------ shared passes
// reduce_partials.cu: combine per-block partials in block order, in double.
// out[o, j] = sum_b part[o, b, j] for part (outer, nb, len).
at::Tensor sum_partials(const at::Tensor& part);
// Per-channel (mean, biased var) from per-block (mean, M2) [nb, C] over `rows` rows split in
// blocks of rows_per_block (the last block may be shorter).
std::tuple<at::Tensor, at::Tensor> merge_moments(const at::Tensor& mean_b, const at::Tensor& m2_b, int64_t rows,
                                                 int64_t rows_per_block);

// bn_act.cu: the BatchNorm passes over a PassGeo (bn_act with K == 0, dwconv_bn_act with K > 0).
// x: the (already laid out) input; w: tap-major weights / per-channel scale in acc dtype, or undefined.
// Per-channel (mean, biased var) of z as double (C,) tensors.
std::tuple<at::Tensor, at::Tensor> bn_stats_pass(const PassGeo& g, const at::Tensor& x, const at::Tensor& w);
// y = act(z(x; w) + shift).
void bn_apply_pass(const PassGeo& g, const at::Tensor& x, const at::Tensor& w, const at::Tensor& shift, Act act,
                   at::Tensor& y);
// Backward through act(BN(z)): zc = z(x; w) + zinit, zhat = zc * invstd, du = act'(zhat * gamma + beta) * dy.
// Returns (sum du, sum du * zhat, sum zhat) as a double (3, C) tensor when `reduce`, else undefined;
// writes out = k1 * (du - k2 - zc * k3) when `out` is defined (dtype x's or the acc dtype).
at::Tensor bn_backward_pass(const PassGeo& g, const at::Tensor& x, const at::Tensor& w, const at::Tensor& dy,
                            const at::Tensor& zinit, const at::Tensor& invstd, const at::Tensor& gamma,
                            const at::Tensor& beta, const at::Tensor& k1, const at::Tensor& k2, const at::Tensor& k3,
                            Act act, bool reduce, at::Tensor& out);

}  // namespace cuda
}  // namespace fastblocks
