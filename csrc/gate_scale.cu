// fastblocks_kernels::channel_pool / channel_scale / channel_scale_backward on CUDA: the full-size
// passes of gate_scale, squeeze_excite and eca (the (N, C) MLP / 1-D conv and the gate stay in ATen).
//  - channel_pool: mean over H, W per (n, c): per-block partial sums (acc dtype within a thread and
//    a block, fixed tree order) combined in double in block order (reduce_partials.cu).
//  - channel_scale: y = x * scale[n, c] (+ shift[n, c]): the gated output (forward) and, with
//    shift = dpooled / (H * W), SE / ECA's dx = dy * gate + the pooling gradient in one pass.
//  - channel_scale_backward: one pass over dy and x: dx = dy * scale[n, c] and sum_hw dy * x.
// Channels-last (16-byte vectors over C when C allows) and NCHW (coalesced along H * W), native.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include "fb_cuda.cuh"
#include "fb_cuda_ops.h"

namespace fastblocks {
namespace cuda {
namespace {


// part[(n * gridDim.y + blockIdx.y) * C + c] = sum over the block's rows r (pixels of sample
// n = blockIdx.z) of x (dy == nullptr) or dy * x; writes dx = dy * scale[n, c] when dx != nullptr.
template <typename scalar_t, int V>
__global__ void __launch_bounds__(kThreads)
    channel_reduce_kernel(PassGeo g, const scalar_t* __restrict__ x, const scalar_t* __restrict__ dy,
                          const acc_of<scalar_t>* __restrict__ scale, int64_t groups, int64_t rows_per_block,
                          double* __restrict__ part, scalar_t* __restrict__ dx) {
  using acc_t = acc_of<scalar_t>;
  const int64_t n = blockIdx.z, HW = g.H * g.W;
  const int64_t group = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const bool valid = group < groups;
  const int64_t c0 = group * V;
  acc_t acc[V];
#pragma unroll
  for (int v = 0; v < V; ++v) acc[v] = 0;
  if (valid) {
    acc_t sc[V];
#pragma unroll
    for (int v = 0; v < V; ++v) sc[v] = dx != nullptr ? scale[n * g.C + c0 + v] : acc_t(0);
    const int64_t r0 = blockIdx.y * rows_per_block, r1 = min64(HW, r0 + rows_per_block);
    for (int64_t r = r0 + threadIdx.y; r < r1; r += blockDim.y) {
      const int64_t off = out_offset(g, n * HW + r, c0);
      acc_t xv[V];
      load_pack<V>(x + off, xv);
      if (dy == nullptr) {
#pragma unroll
        for (int v = 0; v < V; ++v) acc[v] += xv[v];
      } else {
        acc_t d[V];
        load_pack<V>(dy + off, d);
#pragma unroll
        for (int v = 0; v < V; ++v) {
          acc[v] += d[v] * xv[v];
          d[v] *= sc[v];
        }
        if (dx != nullptr) store_pack<V>(dx + off, d);
      }
    }
  }
  block_sum_rows<V>(acc);
  if (valid && threadIdx.y == 0) {
#pragma unroll
    for (int v = 0; v < V; ++v) part[(n * gridDim.y + blockIdx.y) * g.C + c0 + v] = static_cast<double>(acc[v]);
  }
}

// y = x * scale[n, c] + shift[n, c] (shift may be null), any element order of the layout.
template <typename scalar_t, int V>
__global__ void __launch_bounds__(kThreads)
    channel_scale_kernel(PassGeo g, const scalar_t* __restrict__ x, const acc_of<scalar_t>* __restrict__ scale,
                         const acc_of<scalar_t>* __restrict__ shift, int64_t packs, scalar_t* __restrict__ y) {
  using acc_t = acc_of<scalar_t>;
  const int64_t HW = g.H * g.W;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < packs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = i * V;
    acc_t v[V];
    load_pack<V>(x + e, v);
    // (n, c) index n * C + c of each element: channels-last packs span V channels (C % V == 0),
    // NCHW packs stay in one plane (HW % V == 0).
    const int64_t nc0 = g.cl ? (e / (HW * g.C)) * g.C + e % g.C : e / HW;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int64_t nc = g.cl ? nc0 + j : nc0;
      v[j] = v[j] * scale[nc] + (shift != nullptr ? shift[nc] : acc_t(0));
    }
    store_pack<V>(y + e, v);
  }
}

// An (N, C) tensor (or (N, C, 1, 1)) on x's device as contiguous acc dtype.
at::Tensor nc_param(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name) {
  const int64_t N = x.size(0), C = x.size(1);
  check_device(t, x, op, name);
  TORCH_CHECK(t.dim() >= 1 && t.numel() == N * C && t.size(0) == N, op, ": ", name, " must have shape (", N, ", ", C,
              "), got ", t.sizes());
  return t.reshape({N, C}).to(acc_type_of(x.scalar_type())).contiguous();
}

PassGeo nc_geo(const at::Tensor& x, bool cl) {
  return PassGeo{x.size(0), x.size(1), x.size(2), x.size(3), x.size(2), x.size(3), 0, 1, 0, 0, cl};
}

// (N, C) double sums over H, W of x (dy undefined) or dy * x; writes dx = dy * scale if defined.
at::Tensor channel_reduce(const PassGeo& g, const at::Tensor& x, const at::Tensor& dy, const at::Tensor& scale,
                          at::Tensor& dx) {
  at::Tensor part;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "channel_reduce_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    const bool vec = g.cl && channel_vectors_ok<scalar_t>(
                                 g.C, {x.const_data_ptr(), dy.defined() ? dy.const_data_ptr() : nullptr,
                                       dx.defined() ? dx.const_data_ptr() : nullptr});
    with_vec<scalar_t>(vec, [&](auto vtag) {
      constexpr int V = decltype(vtag)::value;
      const Tiling t = make_tiling(g.C / V, g.H * g.W, g.cl, g.N);
      part = at::zeros({g.N, static_cast<int64_t>(t.grid.y), g.C}, x.options().dtype(at::kDouble));
      if (t.groups == 0 || g.N == 0) return;
      const size_t shmem = static_cast<size_t>(kThreads) * V * sizeof(acc_t);
      launch_kernel(channel_reduce_kernel<scalar_t, V>, t.grid, t.block, shmem,
          g, x.const_data_ptr<scalar_t>(), dy.defined() ? dy.const_data_ptr<scalar_t>() : nullptr,
          scale.defined() ? scale.const_data_ptr<acc_t>() : nullptr, t.groups, t.rows_per_block,
          part.mutable_data_ptr<double>(), dx.defined() ? dx.mutable_data_ptr<scalar_t>() : nullptr);
    });
  });
  return sum_partials(part);
}

}  // namespace

at::Tensor channel_pool(const at::Tensor& x_in) {
  const char* op = "fastblocks_kernels::channel_pool (CUDA)";
  check_x(x_in, op);
  const DeviceGuard guard(x_in.device());
  const bool cl = is_channels_last(x_in);
  const at::Tensor x = cl ? x_in : x_in.contiguous();
  const int64_t HW = x.size(2) * x.size(3);
  TORCH_CHECK(HW > 0, op, ": x must have a non-empty spatial extent");
  at::Tensor none;
  const at::Tensor sums = channel_reduce(nc_geo(x, cl), x, none, none, none);
  return (sums / static_cast<double>(HW)).to(acc_type_of(x.scalar_type()));
}

at::Tensor channel_scale(const at::Tensor& x_in, const at::Tensor& scale, const TensorOpt& shift) {
  const char* op = "fastblocks_kernels::channel_scale (CUDA)";
  check_x(x_in, op);
  const DeviceGuard guard(x_in.device());
  const bool cl = is_channels_last(x_in);
  const at::Tensor x = cl ? x_in : x_in.contiguous();
  const at::Tensor g = nc_param(scale, x, op, "scale");
  const at::Tensor b = shift.has_value() && shift->defined() ? nc_param(*shift, x, op, "shift") : at::Tensor();
  at::Tensor y = at::empty_like(x, x.options().memory_format(cl ? at::MemoryFormat::ChannelsLast
                                                               : at::MemoryFormat::Contiguous));
  maybe_poison(y);
  const PassGeo geo = nc_geo(x, cl);
  const int64_t n = x.numel(), HW = geo.H * geo.W;
  if (n == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "channel_scale_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    constexpr int VW = kVec<scalar_t>;
    const bool vec = (cl ? geo.C % VW == 0 : HW % VW == 0) && aligned16(x.const_data_ptr()) &&
                     aligned16(y.const_data_ptr());
    with_vec<scalar_t>(vec, [&](auto vtag) {
      constexpr int V = decltype(vtag)::value;
      launch_kernel(channel_scale_kernel<scalar_t, V>, grid_1d(n / V), kThreads, 0,
          geo, x.const_data_ptr<scalar_t>(), g.const_data_ptr<acc_t>(),
          b.defined() ? b.const_data_ptr<acc_t>() : nullptr, n / V, y.mutable_data_ptr<scalar_t>());
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> channel_scale_backward(const at::Tensor& dy_in, const at::Tensor& x_in,
                                                          const at::Tensor& scale, bool compute_dx) {
  const char* op = "fastblocks_kernels::channel_scale_backward (CUDA)";
  check_x(x_in, op);
  check_same_shape(dy_in, x_in, op, "dy");
  const DeviceGuard guard(x_in.device());
  const bool cl = is_channels_last(x_in);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor dy = dy_in.to(x.scalar_type()).contiguous(fmt);
  const at::Tensor g = nc_param(scale, x, op, "scale");
  at::Tensor dx;
  if (compute_dx) {
    dx = at::empty_like(x, x.options().memory_format(fmt));
    maybe_poison(dx);
  }
  const at::Tensor sums = channel_reduce(nc_geo(x, cl), x, dy, g, dx);
  return {dx, sums.to(acc_type_of(x.scalar_type()))};
}

}  // namespace cuda
}  // namespace fastblocks
