// Entry points of the CPU kernels, registered as fastblocks_kernels::* ops for the CPU dispatch key
// in bindings.cpp (the CUDA kernels, fb_cuda_ops.h, have exactly these signatures).
// Shapes and return conventions mirror fastblocks/backends/eager/*.py (see fastblocks/backends/native.py).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <array>
#include <optional>
#include <tuple>

namespace fastblocks {
namespace cpu {

using TensorOpt = std::optional<at::Tensor>;
using Tensor3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// activation_cpu.cpp: y = act(x); dx = act'(x) * dy. Any shape; output has x's strides when dense.
at::Tensor act_forward(const at::Tensor& x, c10::string_view act);
at::Tensor act_backward(const at::Tensor& dy, const at::Tensor& x, c10::string_view act);

// bn_act_cpu.cpp: (y, mean, var), stats in float32 (float64 for float64 x);
// backward -> (dx, dgamma, dbeta), undefined where mask is false.
Tensor3 bn_act_forward(const at::Tensor& x, const TensorOpt& bn_weight, const TensorOpt& bn_bias,
                       const TensorOpt& running_mean, const TensorOpt& running_var, bool training, double eps,
                       c10::string_view act);
Tensor3 bn_act_backward(const at::Tensor& dy, const at::Tensor& x, const TensorOpt& bn_weight,
                        const TensorOpt& bn_bias, const at::Tensor& mean, const at::Tensor& var, bool training,
                        double eps, c10::string_view act, std::array<bool, 3> mask);

// dwconv_bn_act_cpu.cpp: (y, mean, var); backward -> (dx, dweight, dgamma, dbeta, dconv_bias).
Tensor3 dwconv_bn_act_forward(const at::Tensor& x, const at::Tensor& weight, const TensorOpt& bn_weight,
                              const TensorOpt& bn_bias, const TensorOpt& running_mean,
                              const TensorOpt& running_var, const TensorOpt& conv_bias, int64_t stride,
                              c10::string_view padding_mode, int64_t padding, bool training, double eps,
                              c10::string_view act);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dwconv_bn_act_backward(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight, const TensorOpt& bn_weight,
    const TensorOpt& bn_bias, const TensorOpt& conv_bias, const at::Tensor& mean, const at::Tensor& var,
    int64_t stride, c10::string_view padding_mode, int64_t padding, bool training, double eps,
    c10::string_view act, std::array<bool, 5> mask);

// gate_scale_cpu.cpp: pooled (N, C) mean over H, W; y = x * scale[n, c] (+ shift[n, c]);
// backward pass -> (dx = dy * scale[n, c] or undefined, sum over H, W of dy * x as (N, C)).
at::Tensor channel_pool(const at::Tensor& x);
at::Tensor channel_scale(const at::Tensor& x, const at::Tensor& scale, const TensorOpt& shift);
std::tuple<at::Tensor, at::Tensor> channel_scale_backward(const at::Tensor& dy, const at::Tensor& x,
                                                          const at::Tensor& scale, bool compute_dx);

}  // namespace cpu
}  // namespace fastblocks
