// fastblocks_kernels::bn_act_{forward,backward} on CUDA, and the BatchNorm passes that
// dwconv_bn_act.cu shares (a PassGeo with K > 0 puts a depthwise conv in front; see fb_cuda.cuh).
//
// Forward, eval: one pass, y = act(x * scale + shift) (for the conv: BN folded into the weights).
// Forward, training: a statistics pass (per-thread Welford in acc dtype, Chan merge over the block
// in a fixed tree, per-block partials merged in double in block order: deterministic), then the
// same normalise pass. Nothing full-size is stored between the two.
// Backward from x and the per-channel mean / var: training reduces sum du, sum du * zhat,
// sum zhat (pass 1), then writes dx (pass 2); eval does both in one pass.
// Layouts: channels-last (16-byte vectors over C when C allows) and NCHW (one element per thread,
// coalesced along H * W), both native.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include "fb_cuda.cuh"
#include "fb_cuda_ops.h"

namespace fastblocks {
namespace cuda {
namespace {

constexpr const char* kFwd = "fastblocks_kernels::bn_act_forward (CUDA)";
constexpr const char* kBwd = "fastblocks_kernels::bn_act_backward (CUDA)";


// Per-block (mean, M2) of z over the block's rows, for its V channels per thread.
template <typename scalar_t, int V>
__global__ void __launch_bounds__(kThreads)
    bn_stats_kernel(PassGeo g, const scalar_t* __restrict__ x, const acc_of<scalar_t>* __restrict__ w, int64_t groups,
                    int64_t rows, int64_t rows_per_block, double* __restrict__ mean_b, double* __restrict__ m2_b) {
  using acc_t = acc_of<scalar_t>;
  const int64_t group = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const bool valid = group < groups;
  const int64_t c0 = group * V;
  const int64_t r0 = blockIdx.y * rows_per_block, r1 = min64(rows, r0 + rows_per_block);
  acc_t count = 0, mean[V], m2[V];
#pragma unroll
  for (int v = 0; v < V; ++v) mean[v] = 0, m2[v] = 0;
  if (valid) {
    for (int64_t p = r0 + threadIdx.y; p < r1; p += blockDim.y) {
      acc_t z[V];
#pragma unroll
      for (int v = 0; v < V; ++v) z[v] = 0;
      accumulate_z<V>(g, x, w, p, c0, z);
      count += acc_t(1);
      const acc_t inv = acc_t(1) / count;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const acc_t d = z[v] - mean[v];
        mean[v] += d * inv;
        m2[v] += d * (z[v] - mean[v]);
      }
    }
  }
  block_merge_moments<V>(count, mean, m2);
  if (valid && threadIdx.y == 0) {
#pragma unroll
    for (int v = 0; v < V; ++v) {
      mean_b[blockIdx.y * g.C + c0 + v] = static_cast<double>(mean[v]);
      m2_b[blockIdx.y * g.C + c0 + v] = static_cast<double>(m2[v]);
    }
  }
}

// y = act(z(x; w) + shift).
template <typename scalar_t, int V>
__global__ void __launch_bounds__(kThreads)
    bn_apply_kernel(PassGeo g, const scalar_t* __restrict__ x, const acc_of<scalar_t>* __restrict__ w,
                    const acc_of<scalar_t>* __restrict__ shift, Act act, int64_t groups, int64_t rows,
                    int64_t rows_per_block, scalar_t* __restrict__ y) {
  using acc_t = acc_of<scalar_t>;
  const int64_t group = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (group >= groups) return;  // no block-level sync in this kernel
  const int64_t c0 = group * V;
  acc_t sh[V];
#pragma unroll
  for (int v = 0; v < V; ++v) sh[v] = shift[c0 + v];
  const int64_t r0 = blockIdx.y * rows_per_block, r1 = min64(rows, r0 + rows_per_block);
  for (int64_t p = r0 + threadIdx.y; p < r1; p += blockDim.y) {
    acc_t z[V];
#pragma unroll
    for (int v = 0; v < V; ++v) z[v] = sh[v];
    accumulate_z<V>(g, x, w, p, c0, z);
#pragma unroll
    for (int v = 0; v < V; ++v) z[v] = act_fwd(act, z[v]);
    store_pack<V>(y + out_offset(g, p, c0), z);
  }
}

// Backward through act(BN(z)); see bn_backward_pass in fb_cuda.cuh. red: [blocks][3][C] or null;
// out: [same layout as dy] or null (then k1..k3 may be null).
template <typename scalar_t, typename out_t, int V>
__global__ void __launch_bounds__(kThreads)
    bn_backward_kernel(PassGeo g, const scalar_t* __restrict__ x, const acc_of<scalar_t>* __restrict__ w,
                       const scalar_t* __restrict__ dy, const acc_of<scalar_t>* __restrict__ zinit,
                       const acc_of<scalar_t>* __restrict__ invstd, const acc_of<scalar_t>* __restrict__ gamma,
                       const acc_of<scalar_t>* __restrict__ beta, const acc_of<scalar_t>* __restrict__ k1,
                       const acc_of<scalar_t>* __restrict__ k2, const acc_of<scalar_t>* __restrict__ k3, Act act,
                       int64_t groups, int64_t rows, int64_t rows_per_block, double* __restrict__ red,
                       out_t* __restrict__ out) {
  using acc_t = acc_of<scalar_t>;
  const int64_t group = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const bool valid = group < groups;
  const int64_t c0 = group * V;
  acc_t sums[3 * V];
#pragma unroll
  for (int j = 0; j < 3 * V; ++j) sums[j] = 0;
  if (valid) {
    acc_t zi[V], is[V], ga[V], be[V], a1[V], a2[V], a3[V];
#pragma unroll
    for (int v = 0; v < V; ++v) {
      zi[v] = zinit[c0 + v], is[v] = invstd[c0 + v], ga[v] = gamma[c0 + v], be[v] = beta[c0 + v];
      a1[v] = out != nullptr ? k1[c0 + v] : acc_t(0);
      a2[v] = out != nullptr ? k2[c0 + v] : acc_t(0);
      a3[v] = out != nullptr ? k3[c0 + v] : acc_t(0);
    }
    const int64_t r0 = blockIdx.y * rows_per_block, r1 = min64(rows, r0 + rows_per_block);
    for (int64_t p = r0 + threadIdx.y; p < r1; p += blockDim.y) {
      acc_t z[V], d[V];
#pragma unroll
      for (int v = 0; v < V; ++v) z[v] = zi[v];
      accumulate_z<V>(g, x, w, p, c0, z);
      const int64_t off = out_offset(g, p, c0);
      load_pack<V>(dy + off, d);
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const acc_t zh = z[v] * is[v];
        const acc_t du = act_bwd(act, zh * ga[v] + be[v], d[v]);
        sums[v] += du;
        sums[V + v] += du * zh;
        sums[2 * V + v] += zh;
        d[v] = a1[v] * (du - a2[v] - z[v] * a3[v]);
      }
      if (out != nullptr) store_pack<V>(out + off, d);
    }
  }
  if (red == nullptr) return;  // uniform over the block
  block_sum_rows<3 * V>(sums);
  if (valid && threadIdx.y == 0) {
#pragma unroll
    for (int j = 0; j < 3; ++j)
#pragma unroll
      for (int v = 0; v < V; ++v) red[(blockIdx.y * 3 + j) * g.C + c0 + v] = static_cast<double>(sums[j * V + v]);
  }
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

// Channel vectors are used on channels-last data when C and every pointer allow.
template <typename scalar_t>
bool use_vectors(const PassGeo& g, std::initializer_list<const void*> ptrs) {
  return g.cl && channel_vectors_ok<scalar_t>(g.C, ptrs);
}

Tiling pass_tiling(const PassGeo& g, int vec) {
  return make_tiling(g.C / vec, g.N * g.Ho * g.Wo, g.cl);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> bn_stats_pass(const PassGeo& g, const at::Tensor& x, const at::Tensor& w) {
  at::Tensor mean_b, m2_b;
  int64_t rows = 0, rpb = 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bn_stats_pass", [&] {
    using acc_t = acc_of<scalar_t>;
    const bool vec = use_vectors<scalar_t>(g, {x.const_data_ptr(), w.defined() ? w.const_data_ptr() : nullptr});
    with_vec<scalar_t>(vec, [&](auto vtag) {
      constexpr int V = decltype(vtag)::value;
      const Tiling t = pass_tiling(g, V);
      rows = t.rows;
      rpb = t.rows_per_block;
      mean_b = at::empty({static_cast<int64_t>(t.grid.y), g.C}, x.options().dtype(at::kDouble));
      m2_b = at::empty_like(mean_b);
      if (t.groups == 0) return;
      const size_t shmem = static_cast<size_t>(kThreads) * (2 * V + 1) * sizeof(acc_t);
      launch_kernel(bn_stats_kernel<scalar_t, V>, t.grid, t.block, shmem,
          g, x.const_data_ptr<scalar_t>(), ptr_or_null<acc_t>(w), t.groups, t.rows, t.rows_per_block,
          mean_b.mutable_data_ptr<double>(), m2_b.mutable_data_ptr<double>());
    });
  });
  return merge_moments(mean_b, m2_b, rows, rpb);
}

void bn_apply_pass(const PassGeo& g, const at::Tensor& x, const at::Tensor& w, const at::Tensor& shift, Act act,
                   at::Tensor& y) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bn_apply_pass", [&] {
    using acc_t = acc_of<scalar_t>;
    const bool vec = use_vectors<scalar_t>(
        g, {x.const_data_ptr(), y.const_data_ptr(), w.defined() ? w.const_data_ptr() : nullptr});
    with_vec<scalar_t>(vec, [&](auto vtag) {
      constexpr int V = decltype(vtag)::value;
      const Tiling t = pass_tiling(g, V);
      if (t.groups == 0 || t.rows == 0) return;
      launch_kernel(bn_apply_kernel<scalar_t, V>, t.grid, t.block, 0,
          g, x.const_data_ptr<scalar_t>(), ptr_or_null<acc_t>(w), shift.const_data_ptr<acc_t>(), act, t.groups,
          t.rows, t.rows_per_block, y.mutable_data_ptr<scalar_t>());
    });
  });
}

at::Tensor bn_backward_pass(const PassGeo& g, const at::Tensor& x, const at::Tensor& w, const at::Tensor& dy,
                            const at::Tensor& zinit, const at::Tensor& invstd, const at::Tensor& gamma,
                            const at::Tensor& beta, const at::Tensor& k1, const at::Tensor& k2, const at::Tensor& k3,
                            Act act, bool reduce, at::Tensor& out) {
  at::Tensor red_b;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bn_backward_pass", [&] {
    using acc_t = acc_of<scalar_t>;
    const bool vec = use_vectors<scalar_t>(g, {x.const_data_ptr(), dy.const_data_ptr(),
                                               w.defined() ? w.const_data_ptr() : nullptr,
                                               out.defined() ? out.const_data_ptr() : nullptr});
    with_vec<scalar_t>(vec, [&](auto vtag) {
      constexpr int V = decltype(vtag)::value;
      const Tiling t = pass_tiling(g, V);
      if (reduce) red_b = at::empty({1, static_cast<int64_t>(t.grid.y), 3 * g.C}, x.options().dtype(at::kDouble));
      if (t.groups == 0) return;
      double* red = reduce ? red_b.mutable_data_ptr<double>() : nullptr;
      const size_t shmem = reduce ? static_cast<size_t>(kThreads) * 3 * V * sizeof(acc_t) : 0;
      auto launch = [&](auto* out_ptr) {
        using out_t = std::remove_pointer_t<decltype(out_ptr)>;
        launch_kernel(bn_backward_kernel<scalar_t, out_t, V>, t.grid, t.block, shmem,
            g, x.const_data_ptr<scalar_t>(), ptr_or_null<acc_t>(w), dy.const_data_ptr<scalar_t>(),
            zinit.const_data_ptr<acc_t>(), invstd.const_data_ptr<acc_t>(), gamma.const_data_ptr<acc_t>(),
            beta.const_data_ptr<acc_t>(), ptr_or_null<acc_t>(k1), ptr_or_null<acc_t>(k2), ptr_or_null<acc_t>(k3), act,
            t.groups, t.rows, t.rows_per_block, red, out_ptr);
      };
      if (!out.defined()) {
        launch(static_cast<scalar_t*>(nullptr));
      } else if (out.scalar_type() == x.scalar_type()) {
        launch(out.mutable_data_ptr<scalar_t>());
      } else {
        TORCH_CHECK(out.scalar_type() == acc_type_of(x.scalar_type()),
                    "fastblocks_kernels: internal error, backward output must have x's dtype or the acc dtype");
        launch(out.mutable_data_ptr<acc_t>());
      }
    });
  });
  // (1, blocks, 3C) partials -> (3, C) sums in block order.
  return reduce ? sum_partials(red_b).reshape({3, g.C}) : at::Tensor();
}

// ------------------------------------------------------------------------------ bn_act entry points
Tensor3 bn_act_forward(const at::Tensor& x_in, const TensorOpt& bn_weight, const TensorOpt& bn_bias,
                       const TensorOpt& running_mean, const TensorOpt& running_var, bool training, double eps,
                       c10::string_view act_name) {
  check_x(x_in, kFwd);
  const Act act = parse_act(act_name);
  const DeviceGuard guard(x_in.device());
  const bool cl = is_channels_last(x_in);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = x_in.contiguous(fmt);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const auto acc = acc_type_of(x.scalar_type());
  const at::Tensor gamma = per_channel(bn_weight, x, C, 1.0, kFwd, "bn_weight");
  const at::Tensor beta = per_channel(bn_bias, x, C, 0.0, kFwd, "bn_bias");
  const PassGeo g{N, C, H, W, H, W, 0, 1, 0, 0, cl};
  at::Tensor mean, var;
  if (training) {
    TORCH_CHECK(N * H * W > 1, kFwd, ": training needs more than 1 value per channel");
    auto [m, v] = bn_stats_pass(g, x, at::Tensor());
    mean = m.to(acc);
    var = v.to(acc);
  } else {
    TORCH_CHECK(running_mean.has_value() && running_var.has_value(), kFwd,
                ": training=False needs running_mean and running_var");
    mean = per_channel(running_mean, x, C, 0.0, kFwd, "running_mean").clone();
    var = per_channel(running_var, x, C, 1.0, kFwd, "running_var").clone();
  }
  const at::Tensor scale = (gamma * (var + eps).rsqrt()).contiguous();
  const at::Tensor shift = (beta - mean * scale).contiguous();
  at::Tensor y = at::empty_like(x, x.options().memory_format(fmt));
  maybe_poison(y);
  bn_apply_pass(g, x, scale, shift, act, y);
  return {y, mean, var};
}

Tensor3 bn_act_backward(const at::Tensor& dy_in, const at::Tensor& x_in, const TensorOpt& bn_weight,
                        const TensorOpt& bn_bias, const at::Tensor& mean_in, const at::Tensor& var_in, bool training,
                        double eps, c10::string_view act_name, std::array<bool, 3> mask) {
  check_x(x_in, kBwd);
  check_same_shape(dy_in, x_in, kBwd, "dy");
  const Act act = parse_act(act_name);
  const DeviceGuard guard(x_in.device());
  const bool cl = is_channels_last(x_in);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor dy = dy_in.to(x.scalar_type()).contiguous(fmt);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), M = N * H * W;
  const auto acc = acc_type_of(x.scalar_type());
  const at::Tensor gamma = per_channel(bn_weight, x, C, 1.0, kBwd, "bn_weight");
  const at::Tensor beta = per_channel(bn_bias, x, C, 0.0, kBwd, "bn_bias");
  const at::Tensor mean = per_channel(mean_in, x, C, 0.0, kBwd, "mean");
  const at::Tensor var = per_channel(var_in, x, C, 1.0, kBwd, "var");
  const at::Tensor invstd = (var + eps).rsqrt().contiguous();
  const at::Tensor k1 = (gamma * invstd).contiguous();
  const at::Tensor zinit = (-mean).contiguous();
  const bool need_dx = mask[0], need_bn = mask[1] || mask[2];
  at::Tensor dx, dgamma, dbeta, none;
  if (!need_dx && !need_bn) return {dx, dgamma, dbeta};
  const PassGeo g{N, C, H, W, H, W, 0, 1, 0, 0, cl};
  if (need_dx) {
    dx = at::empty_like(x, x.options().memory_format(fmt));
    maybe_poison(dx);
  }
  if (training) {
    const at::Tensor sums = bn_backward_pass(g, x, none, dy, zinit, invstd, gamma, beta, none, none, none, act,
                                             /*reduce=*/true, none);
    dbeta = sums[0].to(acc);
    dgamma = sums[1].to(acc);
    if (need_dx) {
      const at::Tensor k2 = (dbeta / static_cast<double>(M)).contiguous();
      const at::Tensor k3 = (invstd * dgamma / static_cast<double>(M)).contiguous();
      bn_backward_pass(g, x, none, dy, zinit, invstd, gamma, beta, k1, k2, k3, act, /*reduce=*/false, dx);
    }
  } else {
    const at::Tensor zero = at::zeros({C}, x.options().dtype(acc));
    const at::Tensor sums = bn_backward_pass(g, x, none, dy, zinit, invstd, gamma, beta, k1, zero, zero, act,
                                             /*reduce=*/need_bn, dx);
    if (need_bn) {
      dbeta = sums[0].to(acc);
      dgamma = sums[1].to(acc);
    }
  }
  if (!mask[1]) dgamma = at::Tensor();
  if (!mask[2]) dbeta = at::Tensor();
  return {dx, dgamma, dbeta};
}

}  // namespace cuda
}  // namespace fastblocks
