// fastblocks_kernels::act_forward / act_backward on CUDA: silu, hardswish, relu, relu6, identity
// over dense memory of any shape and layout (memory-efficient activation: backward recomputes from
// x). One 16-byte vector per thread when the size and alignment allow, else one element.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty_like.h>

#include "fb_cuda.cuh"
#include "fb_cuda_ops.h"

namespace fastblocks {
namespace cuda {
namespace {

template <typename scalar_t, int V>
__global__ void __launch_bounds__(kThreads)
    act_forward_kernel(const scalar_t* __restrict__ x, int64_t packs, Act act, scalar_t* __restrict__ y) {
  using acc_t = typename AccOf<scalar_t>::type;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < packs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t v[V];
    load_pack<V>(x + i * V, v);
#pragma unroll
    for (int j = 0; j < V; ++j) v[j] = act_fwd(act, v[j]);
    store_pack<V>(y + i * V, v);
  }
}

template <typename scalar_t, int V>
__global__ void __launch_bounds__(kThreads)
    act_backward_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, int64_t packs, Act act,
                        scalar_t* __restrict__ dx) {
  using acc_t = typename AccOf<scalar_t>::type;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < packs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t u[V], g[V];
    load_pack<V>(x + i * V, u);
    load_pack<V>(dy + i * V, g);
#pragma unroll
    for (int j = 0; j < V; ++j) g[j] = act_bwd(act, u[j], g[j]);
    store_pack<V>(dx + i * V, g);
  }
}

void check_any(const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(on_kernel_device(x), op, ": ", name, " must be a ", kKernelDevice, " tensor, got ", x.device());
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf, op, ": ", name,
              " must be float32, float64, bfloat16 or float16, got ", t);
}

// x itself when its memory is dense (any permutation), else a contiguous copy.
at::Tensor dense(const at::Tensor& x) { return x.is_non_overlapping_and_dense() ? x : x.contiguous(); }

template <typename scalar_t>
bool flat_vectors_ok(int64_t n, std::initializer_list<const void*> ptrs) {
  if (n % kVec<scalar_t> != 0) return false;
  for (const void* p : ptrs)
    if (!aligned16(p)) return false;
  return true;
}

}  // namespace

at::Tensor act_forward(const at::Tensor& x_in, c10::string_view act_name) {
  const char* op = "fastblocks_kernels::act_forward (CUDA)";
  check_any(x_in, op, "x");
  const Act act = parse_act(act_name);
  const DeviceGuard guard(x_in.device());
  const at::Tensor x = dense(x_in);
  at::Tensor y = at::empty_like(x);  // same strides as the dense x
  maybe_poison(y);
  const int64_t n = x.numel();
  if (n == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "act_forward_cuda", [&] {
    const bool vec = flat_vectors_ok<scalar_t>(n, {x.const_data_ptr(), y.const_data_ptr()});
    with_vec<scalar_t>(vec, [&](auto vtag) {
      constexpr int V = decltype(vtag)::value;
      launch_kernel(act_forward_kernel<scalar_t, V>, grid_1d(n / V), kThreads, 0,
          x.const_data_ptr<scalar_t>(), n / V, act, y.mutable_data_ptr<scalar_t>());
    });
  });
  return y;
}

at::Tensor act_backward(const at::Tensor& dy_in, const at::Tensor& x_in, c10::string_view act_name) {
  const char* op = "fastblocks_kernels::act_backward (CUDA)";
  check_any(x_in, op, "x");
  TORCH_CHECK(dy_in.device() == x_in.device(), op, ": dy must be on ", x_in.device(), " like x, got ",
              dy_in.device());
  TORCH_CHECK(dy_in.sizes() == x_in.sizes(), op, ": dy must have x's shape ", x_in.sizes(), ", got ",
              dy_in.sizes());
  const Act act = parse_act(act_name);
  const DeviceGuard guard(x_in.device());
  const at::Tensor x = dense(x_in);
  at::Tensor dy = dy_in.to(x.scalar_type());
  if (dy.strides() != x.strides()) dy = at::empty_like(x).copy_(dy);
  at::Tensor dx = at::empty_like(x);
  maybe_poison(dx);
  const int64_t n = x.numel();
  if (n == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "act_backward_cuda", [&] {
    const bool vec = flat_vectors_ok<scalar_t>(n, {x.const_data_ptr(), dy.const_data_ptr(), dx.const_data_ptr()});
    with_vec<scalar_t>(vec, [&](auto vtag) {
      constexpr int V = decltype(vtag)::value;
      launch_kernel(act_backward_kernel<scalar_t, V>, grid_1d(n / V), kThreads, 0,
          dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), n / V, act, dx.mutable_data_ptr<scalar_t>());
    });
  });
  return dx;
}

}  // namespace cuda
}  // namespace fastblocks
