// fastblocks_kernels::dwconv_bn_act_{forward,backward} on CUDA: depthwise k x k conv (k = 3, 5, 7;
// stride 1 or 2; padding same / tf_same / explicit applied in the index math, no padded copy) ->
// BatchNorm -> activation, on channels-last data (NCHW inputs are converted once and the result
// converted back).
//
// Forward, eval: BN folded into the conv weights and bias, one pass (bn_apply_pass with K > 0).
// Forward, training: statistics of the conv output (bn_stats_pass: Welford per thread, Chan merge,
//   double across blocks, fixed order), then the folded pass recomputing the conv. The conv
//   output is never stored.
// Backward (from x and the per-channel mean / var): training pass 1 recomputes the conv and
//   reduces sum du, sum du * zhat, sum zhat; pass 2 forms dz = dL/d(conv out) into a transient
//   acc-dtype buffer (only when dx or dweight is needed); dweight reduces dz * x per tap over
//   per-block partials; dx gathers dz through the transposed depthwise conv.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include "fb_cuda.cuh"
#include "fb_cuda_ops.h"

namespace fastblocks {
namespace cuda {
namespace {

constexpr const char* kFwd = "fastblocks_kernels::dwconv_bn_act_forward (CUDA)";
constexpr const char* kBwd = "fastblocks_kernels::dwconv_bn_act_backward (CUDA)";


// Per-block partials of dweight: part[(blockIdx.y * K * K + tap) * C + c] = sum over the block's
// output pixels p of dz[p, c] * x[input pixel under tap, c]. One tap per blockIdx.z.
template <typename scalar_t, int V>
__global__ void __launch_bounds__(kThreads)
    dweight_kernel(PassGeo g, const scalar_t* __restrict__ x, const acc_of<scalar_t>* __restrict__ dz, int64_t groups,
                   int64_t rows, int64_t rows_per_block, double* __restrict__ part) {
  using acc_t = acc_of<scalar_t>;
  const int tap = blockIdx.z, kh = tap / g.K, kw = tap % g.K;
  const int64_t group = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const bool valid = group < groups;
  const int64_t c0 = group * V;
  acc_t acc[V];
#pragma unroll
  for (int v = 0; v < V; ++v) acc[v] = 0;
  if (valid) {
    const int64_t r0 = blockIdx.y * rows_per_block, r1 = min64(rows, r0 + rows_per_block);
    for (int64_t p = r0 + threadIdx.y; p < r1; p += blockDim.y) {
      const int pi = static_cast<int>(p);
      const int ow = pi % static_cast<int>(g.Wo), t = pi / static_cast<int>(g.Wo);
      const int oh = t % static_cast<int>(g.Ho), n = t / static_cast<int>(g.Ho);
      const int ih = oh * g.S - g.top + kh, iw = ow * g.S - g.left + kw;
      if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
      acc_t d[V], xv[V];
      load_pack<V>(dz + p * g.C + c0, d);
      load_pack<V>(x + ((static_cast<int64_t>(n) * g.H + ih) * g.W + iw) * g.C + c0, xv);
#pragma unroll
      for (int v = 0; v < V; ++v) acc[v] += d[v] * xv[v];
    }
  }
  block_sum_rows<V>(acc);
  if (valid && threadIdx.y == 0) {
    const int64_t KK = static_cast<int64_t>(g.K) * g.K;
#pragma unroll
    for (int v = 0; v < V; ++v) part[(blockIdx.y * KK + tap) * g.C + c0 + v] = static_cast<double>(acc[v]);
  }
}

// dx[n, ih, iw, c] = sum over taps (kh, kw) and output pixels (oh, ow) with
// oh * S - top + kh == ih and ow * S - left + kw == iw of dz[n, oh, ow, c] * w[kh, kw, c]
// (the transposed depthwise conv, gathered: each thread owns its dx elements, no atomics).
template <typename scalar_t, int V>
__global__ void __launch_bounds__(kThreads)
    dx_kernel(PassGeo g, const acc_of<scalar_t>* __restrict__ dz, const acc_of<scalar_t>* __restrict__ w,
              int64_t groups, scalar_t* __restrict__ dx) {
  using acc_t = acc_of<scalar_t>;
  const int64_t items = g.N * g.H * g.W * groups;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < items;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t group = i % groups;
    const int q = static_cast<int>(i / groups);  // input pixel (n, ih, iw)
    const int iw = q % static_cast<int>(g.W), t = q / static_cast<int>(g.W);
    const int ih = t % static_cast<int>(g.H), n = t / static_cast<int>(g.H);
    const int64_t c0 = group * V;
    acc_t acc[V];
#pragma unroll
    for (int v = 0; v < V; ++v) acc[v] = 0;
    for (int kh = 0; kh < g.K; ++kh) {
      const int th = ih + g.top - kh;  // = oh * S
      if (th < 0 || th % g.S != 0 || th / g.S >= g.Ho) continue;
      const int oh = th / g.S;
      for (int kw = 0; kw < g.K; ++kw) {
        const int tw = iw + g.left - kw;  // = ow * S
        if (tw < 0 || tw % g.S != 0 || tw / g.S >= g.Wo) continue;
        const int ow = tw / g.S;
        acc_t d[V], wv[V];
        load_pack<V>(dz + ((static_cast<int64_t>(n) * g.Ho + oh) * g.Wo + ow) * g.C + c0, d);
        load_pack<V>(w + static_cast<int64_t>(kh * g.K + kw) * g.C + c0, wv);
#pragma unroll
        for (int v = 0; v < V; ++v) acc[v] += d[v] * wv[v];
      }
    }
    store_pack<V>(dx + static_cast<int64_t>(q) * g.C + c0, acc);
  }
}

PassGeo make_geo(const at::Tensor& x, const at::Tensor& weight, int64_t stride, c10::string_view padding_mode,
                 int64_t padding, const char* op) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  check_device(weight, x, op, "weight");
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == C && weight.size(1) == 1 && weight.size(2) == weight.size(3),
              op, ": weight must be a depthwise kernel (C, 1, k, k) with C = ", C, ", got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": weight must have x's dtype ", x.scalar_type(),
              ", got ", weight.scalar_type());
  const int64_t K = weight.size(2);
  TORCH_CHECK(K == 3 || K == 5 || K == 7, op, ": kernel size must be 3, 5 or 7, got ", K);
  TORCH_CHECK(stride == 1 || stride == 2, op, ": stride must be 1 or 2, got ", stride);
  TORCH_CHECK(padding >= 0 && padding < 4096, op, ": padding must be in [0, 4096), got ", padding);
  const Pads p = conv_pads(padding_mode, padding, K, stride, H, W);
  const int64_t Ho = (H + p.top + p.bottom - K) / stride + 1;
  const int64_t Wo = (W + p.left + p.right - K) / stride + 1;
  TORCH_CHECK(H + p.top + p.bottom >= K && W + p.left + p.right >= K && Ho > 0 && Wo > 0, op,
              ": input of spatial size (", H, ", ", W, ") is too small for a ", K, "x", K, " kernel");
  TORCH_CHECK(N * Ho * Wo < (int64_t(1) << 31), op, ": output has too many pixels (N * H_out * W_out must be < 2^31)");
  return PassGeo{N, C, H, W, Ho, Wo, static_cast<int>(K), static_cast<int>(stride), static_cast<int>(p.top),
                 static_cast<int>(p.left), /*cl=*/true};
}

// (K * K, C) tap-major weights in the accumulation dtype (a fresh, 16-byte aligned tensor).
at::Tensor tap_major(const at::Tensor& weight, const PassGeo& g) {
  return weight.reshape({g.C, static_cast<int64_t>(g.K) * g.K}).to(acc_type_of(weight.scalar_type())).t().contiguous();
}

// (C, 1, K, K) dweight from the per-block partials of dweight_kernel.
at::Tensor dweight_pass(const PassGeo& g, const at::Tensor& x, const at::Tensor& dz) {
  const int64_t KK = static_cast<int64_t>(g.K) * g.K;
  at::Tensor part;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dweight_pass", [&] {
    using acc_t = acc_of<scalar_t>;
    const bool vec = channel_vectors_ok<scalar_t>(g.C, {x.const_data_ptr(), dz.const_data_ptr()});
    with_vec<scalar_t>(vec, [&](auto vtag) {
      constexpr int V = decltype(vtag)::value;
      const Tiling t = make_tiling(g.C / V, g.N * g.Ho * g.Wo, /*channels_contiguous=*/true, KK);
      part = at::empty({1, static_cast<int64_t>(t.grid.y), KK * g.C}, x.options().dtype(at::kDouble));
      if (t.groups == 0) return;
      const size_t shmem = static_cast<size_t>(kThreads) * V * sizeof(acc_t);
      launch_kernel(dweight_kernel<scalar_t, V>, t.grid, t.block, shmem,
          g, x.const_data_ptr<scalar_t>(), dz.const_data_ptr<acc_t>(), t.groups, t.rows, t.rows_per_block,
          part.mutable_data_ptr<double>());
    });
  });
  const at::Tensor taps = sum_partials(part).reshape({g.K, g.K, g.C}).to(acc_type_of(x.scalar_type()));
  return taps.permute({2, 0, 1}).reshape({g.C, 1, g.K, g.K}).contiguous();
}

void dx_pass(const PassGeo& g, const at::Tensor& dz, const at::Tensor& wt, at::Tensor& dx) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dx.scalar_type(), "dx_pass", [&] {
    using acc_t = acc_of<scalar_t>;
    const bool vec =
        channel_vectors_ok<scalar_t>(g.C, {dz.const_data_ptr(), wt.const_data_ptr(), dx.const_data_ptr()});
    with_vec<scalar_t>(vec, [&](auto vtag) {
      constexpr int V = decltype(vtag)::value;
      const int64_t groups = g.C / V, items = g.N * g.H * g.W * groups;
      if (items == 0) return;
      launch_kernel(dx_kernel<scalar_t, V>, grid_1d(items), kThreads, 0,
          g, dz.const_data_ptr<acc_t>(), wt.const_data_ptr<acc_t>(), groups, dx.mutable_data_ptr<scalar_t>());
    });
  });
}

}  // namespace

Tensor3 dwconv_bn_act_forward(const at::Tensor& x_in, const at::Tensor& weight, const TensorOpt& bn_weight,
                              const TensorOpt& bn_bias, const TensorOpt& running_mean,
                              const TensorOpt& running_var, const TensorOpt& conv_bias, int64_t stride,
                              c10::string_view padding_mode, int64_t padding, bool training, double eps,
                              c10::string_view act_name) {
  check_x(x_in, kFwd);
  const Act act = parse_act(act_name);
  const DeviceGuard guard(x_in.device());
  const bool cl = is_channels_last(x_in);
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const PassGeo g = make_geo(x, weight, stride, padding_mode, padding, kFwd);
  const int64_t C = g.C;
  const auto acc = acc_type_of(x.scalar_type());
  const at::Tensor wt = tap_major(weight, g);
  const at::Tensor gamma = per_channel(bn_weight, x, C, 1.0, kFwd, "bn_weight");
  const at::Tensor beta = per_channel(bn_bias, x, C, 0.0, kFwd, "bn_bias");
  const at::Tensor cb = per_channel(conv_bias, x, C, 0.0, kFwd, "conv_bias");
  at::Tensor mean, var;
  if (training) {
    TORCH_CHECK(g.N * g.Ho * g.Wo > 1, kFwd, ": training needs more than 1 value per channel");
    auto [m, v] = bn_stats_pass(g, x, wt);  // statistics of conv(x) without its bias
    mean = (m + cb.to(at::kDouble)).to(acc);
    var = v.to(acc);
  } else {
    TORCH_CHECK(running_mean.has_value() && running_var.has_value(), kFwd,
                ": training=False needs running_mean and running_var");
    mean = per_channel(running_mean, x, C, 0.0, kFwd, "running_mean").clone();
    var = per_channel(running_var, x, C, 1.0, kFwd, "running_var").clone();
  }
  // u = (conv(x) + cb - mean) * scale + beta = conv(x; w * scale) + shift.
  const at::Tensor scale = gamma * (var + eps).rsqrt();
  const at::Tensor shift = (beta + (cb - mean) * scale).contiguous();
  const at::Tensor wf = (wt * scale.unsqueeze(0)).contiguous();
  at::Tensor y = at::empty({g.N, C, g.Ho, g.Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  maybe_poison(y);
  bn_apply_pass(g, x, wf, shift, act, y);
  if (!cl) y = y.contiguous();
  return {y, mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dwconv_bn_act_backward(
    const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& weight, const TensorOpt& bn_weight,
    const TensorOpt& bn_bias, const TensorOpt& conv_bias, const at::Tensor& mean_in, const at::Tensor& var_in,
    int64_t stride, c10::string_view padding_mode, int64_t padding, bool training, double eps,
    c10::string_view act_name, std::array<bool, 5> mask) {
  check_x(x_in, kBwd);
  const Act act = parse_act(act_name);
  const DeviceGuard guard(x_in.device());
  const bool cl = is_channels_last(x_in);
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const PassGeo g = make_geo(x, weight, stride, padding_mode, padding, kBwd);
  const int64_t C = g.C, M = g.N * g.Ho * g.Wo;
  check_device(dy_in, x, kBwd, "dy");
  TORCH_CHECK(dy_in.dim() == 4 && dy_in.size(0) == g.N && dy_in.size(1) == C && dy_in.size(2) == g.Ho &&
                  dy_in.size(3) == g.Wo,
              kBwd, ": dy must have shape (", g.N, ", ", C, ", ", g.Ho, ", ", g.Wo, "), got ", dy_in.sizes());
  const at::Tensor dy = dy_in.to(x.scalar_type()).contiguous(at::MemoryFormat::ChannelsLast);
  const auto acc = acc_type_of(x.scalar_type());
  const at::Tensor wt = tap_major(weight, g);
  const at::Tensor gamma = per_channel(bn_weight, x, C, 1.0, kBwd, "bn_weight");
  const at::Tensor beta = per_channel(bn_bias, x, C, 0.0, kBwd, "bn_bias");
  const at::Tensor cb = per_channel(conv_bias, x, C, 0.0, kBwd, "conv_bias");
  const at::Tensor mean = per_channel(mean_in, x, C, 0.0, kBwd, "mean");
  const at::Tensor var = per_channel(var_in, x, C, 1.0, kBwd, "var");
  const at::Tensor invstd = (var + eps).rsqrt().contiguous();
  const at::Tensor zinit = (cb - mean).contiguous();
  const at::Tensor k1 = (gamma * invstd).contiguous();
  const bool need_dx = mask[0], need_dw = mask[1], need_bn = mask[2] || mask[3] || mask[4];
  at::Tensor dx, dw, dgamma, dbeta, dcb, none;
  if (!need_dx && !need_dw && !need_bn) return {dx, dw, dgamma, dbeta, dcb};
  at::Tensor dz;  // dL/d(conv output), channels-last, acc dtype; only while this call runs
  if (need_dx || need_dw) {
    dz = at::empty({M * C}, x.options().dtype(acc));
    maybe_poison(dz);
  }
  if (training) {
    const at::Tensor sums = bn_backward_pass(g, x, wt, dy, zinit, invstd, gamma, beta, none, none, none, act,
                                             /*reduce=*/true, none);
    dbeta = sums[0].to(acc);
    dgamma = sums[1].to(acc);
    // sum over the batch of dz = k1 * (du - sum du / M - zhat * sum du zhat / M) (~0 in exact arithmetic).
    dcb = (-k1.to(at::kDouble) * sums[1] * sums[2] / static_cast<double>(M)).to(acc);
    if (dz.defined()) {
      const at::Tensor k2 = (dbeta / static_cast<double>(M)).contiguous();
      const at::Tensor k3 = (invstd * dgamma / static_cast<double>(M)).contiguous();
      bn_backward_pass(g, x, wt, dy, zinit, invstd, gamma, beta, k1, k2, k3, act, /*reduce=*/false, dz);
    }
  } else {
    const at::Tensor zero = at::zeros({C}, x.options().dtype(acc));
    const at::Tensor sums =
        bn_backward_pass(g, x, wt, dy, zinit, invstd, gamma, beta, k1, zero, zero, act, /*reduce=*/need_bn, dz);
    if (need_bn) {
      dbeta = sums[0].to(acc);
      dgamma = sums[1].to(acc);
      dcb = k1 * dbeta;
    }
  }
  if (need_dw) dw = dweight_pass(g, x, dz);
  if (need_dx) {
    dx = at::empty({g.N, C, g.H, g.W}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
    maybe_poison(dx);
    dx_pass(g, dz, wt, dx);
    if (!cl) dx = dx.contiguous();
  }
  if (!mask[2]) dgamma = at::Tensor();
  if (!mask[3]) dbeta = at::Tensor();
  if (!mask[4]) dcb = at::Tensor();
  return {dx, dw, dgamma, dbeta, dcb};
}

}  // namespace cuda
}  // namespace fastblocks
