// fastblocks_kernels::act_forward / act_backward: silu, hardswish, relu, relu6, identity over dense
// memory of any shape (memory-efficient activation: backward recomputes from x).
// silu uses a vectorisable exp (about 2 ulp in float32); float64 uses std::exp.
#include "fb_cpu.h"
#include "fb_cpu_ops.h"

namespace fastblocks {
namespace cpu {

namespace {
void check_any(const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", x.device());
  auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf, op, ": ", name,
              " must be float32, float64, bfloat16 or float16, got ", t);
}

// x itself when its memory is dense (any permutation), else a contiguous copy.
at::Tensor dense(const at::Tensor& x) { return x.is_non_overlapping_and_dense() ? x : x.contiguous(); }
}  // namespace

at::Tensor act_forward(const at::Tensor& x_in, c10::string_view act_name) {
  const char* op = "fastblocks_kernels::act_forward";
  check_any(x_in, op, "x");
  const Act act = parse_act(act_name);
  const at::Tensor x = dense(x_in);
  at::Tensor y = at::empty_like(x);  // same strides as the dense x
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "act_forward", [&] {
    FB_ISA_CALL(ActKernels<scalar_t>::act_forward_flat, x.const_data_ptr<scalar_t>(), x.numel(), act,
                y.mutable_data_ptr<scalar_t>());
  });
  return y;
}

at::Tensor act_backward(const at::Tensor& dy_in, const at::Tensor& x_in, c10::string_view act_name) {
  const char* op = "fastblocks_kernels::act_backward";
  check_any(x_in, op, "x");
  TORCH_CHECK(dy_in.sizes() == x_in.sizes(), op, ": dy must have x's shape ", x_in.sizes(), ", got ",
              dy_in.sizes());
  const Act act = parse_act(act_name);
  const at::Tensor x = dense(x_in);
  at::Tensor dy = dy_in.to(x.scalar_type());
  if (dy.strides() != x.strides()) dy = at::empty_like(x).copy_(dy);
  at::Tensor dx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "act_backward", [&] {
    FB_ISA_CALL(ActKernels<scalar_t>::act_backward_flat, dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                x.numel(), act, dx.mutable_data_ptr<scalar_t>());
  });
  return dx;
}

}  // namespace cpu
}  // namespace fastblocks
